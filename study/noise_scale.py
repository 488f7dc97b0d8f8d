"""The gradient noise scale B_simple = tr(Sigma) / |G|^2 (McCandlish et al. 2018, arXiv 1812.06162).

From n gradients g_1..g_n, each the mean over an independent batch of B tokens:
E[g_i . g_j] = |G|^2 for i != j, and E[|g_i|^2] = |G|^2 + tr(Sigma)/B. So the mean of the
off-diagonal entries of the Gram matrix estimates |G|^2, B times (mean of the diagonal minus it)
estimates tr(Sigma), and their ratio B_simple: the batch (in the unit of B) above which a bigger
batch stops buying proportionally fewer steps. This is the paper's two-batch-size estimator
(Appendix A) with the n small batches as the small size and their union as the big one.
The standard error is a jackknife over the n batches (leave one out).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class NoiseScale:
    batch: float  # the unit: tokens (or sequences) per gradient g_i
    num_batches: int
    gradient_sq: float  # |G|^2, the squared norm of the true gradient
    trace_sigma: float  # tr(Sigma), the per-token gradient covariance's trace
    b_simple: float  # tr(Sigma) / |G|^2, in the unit of `batch`
    b_simple_stderr: float  # jackknife standard error over the batches

    def describe(self, unit: str = "tokens") -> str:
        return (
            f"B_simple = tr(Sigma)/|G|^2 = {self.b_simple:,.0f} +- {self.b_simple_stderr:,.0f} "
            f"{unit} (|G|^2 = {self.gradient_sq:.4g}, tr(Sigma) = {self.trace_sigma:.4g}; "
            f"{self.num_batches} independent batches of {self.batch:,.0f} {unit}, "
            "McCandlish et al. 2018's two-batch estimator, jackknife standard error)"
        )


def _from_gram(gram: torch.Tensor, batch: float) -> tuple[float, float, float]:
    n = gram.shape[0]
    diagonal = gram.diagonal().mean()
    off_diagonal = (gram.sum() - gram.diagonal().sum()) / (n * (n - 1))
    trace_sigma = batch * (diagonal - off_diagonal)
    return float(off_diagonal), float(trace_sigma), float(trace_sigma / off_diagonal)


def noise_scale_from_gram(gram: torch.Tensor, batch: float) -> NoiseScale:
    """B_simple from the Gram matrix (g_i . g_j) of n >= 3 independent batch-mean gradients."""
    n = gram.shape[0]
    if gram.shape != (n, n) or n < 3:
        raise ValueError(f"need the n x n Gram matrix of n >= 3 gradients, got {tuple(gram.shape)}")
    gram = gram.double()
    gradient_sq, trace_sigma, b_simple = _from_gram(gram, batch)
    keep = torch.ones(n, dtype=torch.bool)
    leave_one_out = []
    for i in range(n):
        keep[i] = False
        leave_one_out.append(_from_gram(gram[keep][:, keep], batch)[2])
        keep[i] = True
    loo = torch.tensor(leave_one_out, dtype=torch.float64)
    stderr = float(((n - 1) / n * (loo - loo.mean()).square().sum()).sqrt())
    return NoiseScale(batch, n, gradient_sq, trace_sigma, b_simple, stderr)


def gram_matrix(gradients: list[torch.Tensor]) -> torch.Tensor:
    """(g_i . g_j) of flat gradient vectors, in float64."""
    stacked = torch.stack([g.double() for g in gradients])
    return stacked @ stacked.T
