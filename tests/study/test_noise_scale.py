"""The gradient noise scale estimator on problems with a known answer."""

from __future__ import annotations

import pytest
import torch

from study.noise_scale import gram_matrix, noise_scale_from_gram


def test_recovers_trace_sigma_over_gradient_norm_of_synthetic_gradients():
    """g_i = G + noise with covariance Sigma / B: B_simple must be tr(Sigma) / |G|^2."""
    generator = torch.Generator().manual_seed(0)
    dim, batch, n = 2_000, 64, 400
    true_gradient = torch.full((dim,), 0.05)  # |G|^2 = 5
    sigma_diagonal = torch.linspace(0.5, 1.5, dim)  # tr(Sigma) = 2000
    gradients = [
        true_gradient + torch.randn(dim, generator=generator) * (sigma_diagonal / batch).sqrt()
        for _ in range(n)
    ]
    estimate = noise_scale_from_gram(gram_matrix(gradients), batch)
    assert estimate.gradient_sq == pytest.approx(5.0, rel=0.05)
    assert estimate.trace_sigma == pytest.approx(2000.0, rel=0.05)
    assert estimate.b_simple == pytest.approx(400.0, rel=0.08)
    assert 0 < estimate.b_simple_stderr < 0.1 * estimate.b_simple
    assert "B_simple" in estimate.describe() and "jackknife" in estimate.describe()


def test_per_example_gradients_of_linear_regression():
    """Least squares with label noise: the estimate from batch means must match tr(Sigma) and
    |G|^2 computed directly from all per-example gradients."""
    generator = torch.Generator().manual_seed(1)
    dim, batch, n = 20, 32, 300
    w_star = torch.randn(dim, generator=generator)
    x = torch.randn(n * batch, dim, generator=generator)
    y = x @ w_star + 0.5 * torch.randn(n * batch, generator=generator)
    per_example = -x * y[:, None]  # gradient of 0.5 (x.w - y)^2 at w = 0
    direct_trace = per_example.var(dim=0, unbiased=True).sum()
    direct_gradient_sq = per_example.mean(dim=0).square().sum()
    gradients = list(per_example.view(n, batch, dim).mean(dim=1))
    estimate = noise_scale_from_gram(gram_matrix(gradients), batch)
    assert estimate.b_simple == pytest.approx(float(direct_trace / direct_gradient_sq), rel=0.15)


def test_too_few_batches_are_refused():
    with pytest.raises(ValueError, match="n >= 3"):
        noise_scale_from_gram(torch.eye(2), batch=8)
