"""AdaHessian against a reference written from the paper's update rule."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from optim.adahessian import AdaHessian, spatial_average


def make_params(seed: int = 0) -> list[torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    shapes = [(3, 10), (6,), (2, 2, 7), (4, 4)]  # last dims 10 and 7: remainder blocks with 4
    return [torch.nn.Parameter(torch.randn(s, generator=generator)) for s in shapes]


def make_tensors(params, seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(p.shape, generator=generator) for p in params]


def reference_block_average(x: torch.Tensor, block: int) -> torch.Tensor:
    """Element by element: each entry becomes the mean of its block along the last dim."""
    if x.dim() < 2:
        return x.clone()
    out = torch.empty_like(x)
    rows, length = x.reshape(-1, x.shape[-1]), x.shape[-1]
    out_rows = out.view(-1, length)
    for start in range(0, length, block):
        stop = min(start + block, length)
        out_rows[:, start:stop] = rows[:, start:stop].mean(dim=1, keepdim=True)
    return out


def test_spatial_average_blocks_with_a_remainder_block():
    x = torch.arange(10.0).repeat(2, 1)
    expected = torch.tensor([1.5] * 4 + [5.5] * 4 + [8.5] * 2).repeat(2, 1)
    torch.testing.assert_close(spatial_average(x, 4), expected)


def test_spatial_average_rows_and_vectors():
    x = torch.arange(6.0).view(2, 3)
    torch.testing.assert_close(spatial_average(x, 0), torch.tensor([[1.0] * 3, [4.0] * 3]))
    torch.testing.assert_close(spatial_average(x, None), spatial_average(x, 0))
    vector = torch.arange(5.0)
    torch.testing.assert_close(spatial_average(vector, 4), vector)


def reference_adahessian(params, groups, grads_per_step, estimates_per_step, refresh_steps):
    """The paper's rule with per-group hyperparameters; v's bias correction counts refreshes."""
    params = [p.detach().clone() for p in params]
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    refreshes = 0
    for t, (grads, estimates) in enumerate(
        zip(grads_per_step, estimates_per_step, strict=True), start=1
    ):
        if t - 1 in refresh_steps:
            refreshes += 1
        for i, p in enumerate(params):
            group = groups[0] if i < 2 else groups[1]
            b1, b2 = group["betas"]
            if t - 1 in refresh_steps:
                d = reference_block_average(estimates[i].abs(), group["block_length"])
                v[i] = b2 * v[i] + (1 - b2) * d * d
            m[i] = b1 * m[i] + (1 - b1) * grads[i]
            m_hat = m[i] / (1 - b1**t)
            v_hat = v[i] / (1 - b2**refreshes)
            denom = v_hat.sqrt() ** group["hessian_power"] + group["eps"]
            p.sub_(group["lr"] * (m_hat / denom + group["weight_decay"] * p))
    return params


def run_adahessian(optimizer, params, grads_per_step, estimates_per_step, refresh_steps):
    for step, (grads, estimates) in enumerate(zip(grads_per_step, estimates_per_step, strict=True)):
        if step in refresh_steps:
            optimizer.update_hessian(estimates)
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        optimizer.step()


@pytest.mark.parametrize("foreach", [True, False], ids=["foreach", "single_tensor"])
@pytest.mark.parametrize("hessian_power", [1.0, 0.5])
def test_step_matches_paper_rule(foreach, hessian_power):
    params = make_params()
    grads = [make_tensors(params, seed) for seed in range(5)]
    estimates = [make_tensors(params, 100 + seed) for seed in range(5)]
    refresh_steps = {0, 2}  # delayed Hessian: refreshed every other step
    group0 = dict(lr=0.1, betas=(0.9, 0.98), eps=1e-4, weight_decay=0.01,
                  hessian_power=hessian_power, block_length=4)  # fmt: skip
    group1 = dict(group0, lr=0.05, weight_decay=0.0, block_length=3)
    expected = reference_adahessian(params, [group0, group1], grads, estimates, refresh_steps)
    optimizer = AdaHessian(
        [{"params": params[:2]}, {"params": params[2:], **group1}], **group0, foreach=foreach
    )
    run_adahessian(optimizer, params, grads, estimates, refresh_steps)
    for p, e in zip(params, expected, strict=True):
        torch.testing.assert_close(p.detach(), e, rtol=1e-5, atol=1e-6)


def test_state_dict_round_trip_continues_identically():
    params = make_params()
    grads = [make_tensors(params, seed) for seed in range(5)]
    estimates = [make_tensors(params, 100 + seed) for seed in range(5)]
    optimizer = AdaHessian(params, lr=0.1, weight_decay=0.01, block_length=4)
    run_adahessian(optimizer, params, grads[:2], estimates[:2], {0, 1})
    resumed_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    resumed = AdaHessian(resumed_params, lr=0.1, weight_decay=0.01, block_length=4)
    resumed.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    run_adahessian(optimizer, params, grads[2:], estimates[2:], {0, 2})
    run_adahessian(resumed, resumed_params, grads[2:], estimates[2:], {0, 2})
    for p, r in zip(params, resumed_params, strict=True):
        assert torch.equal(p, r)


def test_state_lives_on_the_parameter_device():
    """No device is hard-coded (the official code put its random vectors on 'cuda')."""
    params = make_params()
    optimizer = AdaHessian(params)
    run_adahessian(optimizer, params, [make_tensors(params, 0)], [make_tensors(params, 1)], {0})
    for p in params:
        assert optimizer.state[p]["exp_hessian_diag_sq"].device == p.device
        assert torch.isfinite(p).all()


def test_step_before_any_hessian_raises():
    params = make_params()
    optimizer = AdaHessian(params)
    for p, g in zip(params, make_tensors(params, 0), strict=True):
        p.grad = g
    with pytest.raises(RuntimeError, match="update_hessian"):
        optimizer.step()


def test_diagnostics_report_the_last_update():
    param = torch.nn.Parameter(torch.zeros(2))
    optimizer = AdaHessian([param], lr=0.1, betas=(0.5, 0.5), eps=1e-4)
    optimizer.update_hessian([torch.tensor([2.0, -4.0])])  # √v̂ = |ĥ| after bias correction
    param.grad = torch.tensor([1.0, 1.0])
    optimizer.step()
    diagnostics = optimizer.diagnostics()
    update = 0.1 * torch.tensor([1 / (2 + 1e-4), 1 / (4 + 1e-4)])
    torch.testing.assert_close(param.detach(), -update)
    assert diagnostics["update_rms"] == pytest.approx(float(update.square().mean().sqrt()))
    assert diagnostics["hessian_l1"] == pytest.approx(6.0)
    assert diagnostics["hessian_l2"] == pytest.approx(math.sqrt(20.0))


@pytest.mark.parametrize(
    "kwargs, key",
    [({"lr": -1.0}, "lr"), ({"betas": (0.9, 1.0)}, "betas"), ({"eps": 0.0}, "eps"),
     ({"weight_decay": -1.0}, "weight_decay"), ({"hessian_power": 1.5}, "hessian_power"),
     ({"block_length": -2}, "block_length")],
)  # fmt: skip
def test_bad_hyperparameters_raise_naming_the_key(kwargs, key):
    with pytest.raises(ValueError, match=key):
        AdaHessian(make_params(), **kwargs)
