"""Lion against a reference written from the paper's Algorithm 2."""

from __future__ import annotations

import copy

import pytest
import torch

from optim.lion import Lion


def make_params(seed: int = 0) -> list[torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=generator)) for s in [(4, 3), (5,), (2, 2)]]


def make_grads(params, seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(p.shape, generator=generator) for p in params]


def run_lion(optimizer, params, grads_per_step):
    for grads in grads_per_step:
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        optimizer.step()


@pytest.mark.parametrize("foreach", [True, False], ids=["foreach", "single_tensor"])
def test_step_matches_paper_rule(foreach):
    params = make_params()
    grads = [make_grads(params, seed) for seed in range(4)]
    lr, wd, b1, b2 = 0.01, 0.5, 0.9, 0.99
    expected = [p.detach().clone() for p in params]
    momenta = [torch.zeros_like(p) for p in params]
    for step_grads in grads:
        for p, m, g in zip(expected, momenta, step_grads, strict=True):
            c = b1 * m + (1 - b1) * g
            p.mul_(1 - lr * wd).sub_(lr * torch.sign(c))
            m.mul_(b2).add_((1 - b2) * g)
    optimizer = Lion(params, lr=lr, betas=(b1, b2), weight_decay=wd, foreach=foreach)
    run_lion(optimizer, params, grads)
    for p, e in zip(params, expected, strict=True):
        torch.testing.assert_close(p.detach(), e)


def test_param_groups_use_their_own_hyperparameters():
    params = make_params()
    grads = make_grads(params, 0)
    optimizer = Lion(
        [{"params": params[:1]}, {"params": params[1:], "lr": 0.5, "weight_decay": 0.0}],
        lr=0.01,
        weight_decay=1.0,
    )
    before = [p.detach().clone() for p in params]
    run_lion(optimizer, params, [grads])
    # First step: m = 0, so c = (1 − β1)·g and sign(c) = sign(g).
    torch.testing.assert_close(params[0].detach(), before[0] * 0.99 - 0.01 * grads[0].sign())
    for p, b, g in zip(params[1:], before[1:], grads[1:], strict=True):
        torch.testing.assert_close(p.detach(), b - 0.5 * g.sign())


def test_state_dict_round_trip_continues_identically():
    params = make_params()
    grads = [make_grads(params, seed) for seed in range(5)]
    optimizer = Lion(params, lr=0.01, weight_decay=0.1)
    run_lion(optimizer, params, grads[:2])
    resumed_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    resumed = Lion(resumed_params, lr=0.01, weight_decay=0.1)
    resumed.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    assert set(resumed.state[resumed_params[0]]) == {"exp_avg"}
    run_lion(optimizer, params, grads[2:])
    run_lion(resumed, resumed_params, grads[2:])
    for p, r in zip(params, resumed_params, strict=True):
        assert torch.equal(p, r)


def test_diagnostics_update_rms_is_the_coordinate_weighted_lr():
    params = make_params()  # 12 + 5 + 4 coordinates
    optimizer = Lion([{"params": params[:1], "lr": 0.3}, {"params": params[1:]}], lr=0.1)
    run_lion(optimizer, params, [make_grads(params, 0)])
    expected = ((12 * 0.3**2 + 9 * 0.1**2) / 21) ** 0.5
    assert optimizer.diagnostics()["update_rms"] == pytest.approx(expected)


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"lr": -1.0}, "lr"),
        ({"betas": (1.0, 0.99)}, "betas"),
        ({"weight_decay": -1.0}, "weight_decay"),
    ],
)
def test_bad_hyperparameters_raise_naming_the_key(kwargs, key):
    with pytest.raises(ValueError, match=key):
        Lion(make_params(), **kwargs)
