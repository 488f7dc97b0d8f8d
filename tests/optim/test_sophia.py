"""SophiaG / SophiaH against a reference written from the official update rule."""

from __future__ import annotations

import copy

import pytest
import torch

from optim.sophia import SophiaG, SophiaH

TOKENS = 64  # bs passed to step


def make_params(seed: int = 0) -> list[torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    shapes = [(4, 3), (5,), (2, 3, 2), (7,)]
    return [torch.nn.Parameter(torch.randn(shape, generator=generator)) for shape in shapes]


def make_grads(params, seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(p.shape, generator=generator) for p in params]


def two_groups(params) -> list[dict]:
    """A decayed group with the group defaults and a no-decay group with its own lr and rho."""
    return [
        {"params": params[:2]},
        {"params": params[2:], "weight_decay": 0.0, "lr": 0.05, "rho": 0.02},
    ]


def reference_sophia(params, groups, grads_per_step, hessian_steps, bs, b1, b2):
    """The official per-tensor rule, written out: returns the parameters after all steps."""
    params = [p.detach().clone() for p in params]
    state = [(torch.zeros_like(p), torch.zeros_like(p)) for p in params]  # (m, h)
    for step, grads in enumerate(grads_per_step):
        if step in hessian_steps:  # GNB refresh from the gradient, before this step's update
            for (_, h), g in zip(state, grads, strict=True):
                h.mul_(b2).add_((1 - b2) * g * g)
        for index, (p, (m, h), g) in enumerate(zip(params, state, grads, strict=True)):
            group = groups[0] if index < 2 else groups[1]
            lr, rho, wd = group["lr"], group["rho"], group["weight_decay"]
            p.mul_(1 - lr * wd)
            m.mul_(b1).add_((1 - b1) * g)
            ratio = (m.abs() / (rho * bs * h + 1e-15)).clamp(max=1)
            p.add_(-lr * torch.sign(m) * ratio)
    return params


def run_sophia(optimizer, params, grads_per_step, hessian_steps, bs=TOKENS):
    for step, grads in enumerate(grads_per_step):
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        if step in hessian_steps:
            optimizer.update_hessian()
        optimizer.step(bs=bs)


@pytest.mark.parametrize("foreach", [True, False], ids=["foreach", "single_tensor"])
def test_step_matches_official_rule(foreach):
    params = make_params()
    grads = [make_grads(params, seed) for seed in range(6)]
    hessian_steps = {0, 3}
    expected = reference_sophia(
        params,
        [
            {"lr": 0.1, "rho": 0.04, "weight_decay": 0.1},
            {"lr": 0.05, "rho": 0.02, "weight_decay": 0.0},
        ],
        grads,
        hessian_steps,
        TOKENS,
        0.965,
        0.99,
    )
    optimizer = SophiaG(two_groups(params), lr=0.1, rho=0.04, weight_decay=0.1, foreach=foreach)
    run_sophia(optimizer, params, grads, hessian_steps)
    for p, e in zip(params, expected, strict=True):
        torch.testing.assert_close(p.detach(), e, rtol=1e-6, atol=1e-7)


def test_coordinate_step_bounded_by_lr():
    params = make_params()
    before = [p.detach().clone() for p in params]
    optimizer = SophiaG(params, lr=0.1, weight_decay=0.0)
    grads = make_grads(params, 1)
    for p, g in zip(params, grads, strict=True):
        p.grad = g * 1e3  # large gradients: clipping must still bound the move
    optimizer.update_hessian()
    optimizer.step(bs=TOKENS)
    for p, b in zip(params, before, strict=True):
        assert (p.detach() - b).abs().max() <= 0.1 * (1 + 1e-6)


def test_steps_before_first_refresh_are_sign_steps():
    params = make_params()
    optimizer = SophiaG(params, lr=0.01, betas=(0.9, 0.99), weight_decay=0.0)
    momenta = [torch.zeros_like(p) for p in params]
    for seed in range(3):
        before = [p.detach().clone() for p in params]
        grads = make_grads(params, seed)
        for p, g, m in zip(params, grads, momenta, strict=True):
            p.grad = g
            m.mul_(0.9).add_(0.1 * g)
        optimizer.step(bs=TOKENS)
        for p, b, m in zip(params, before, momenta, strict=True):
            torch.testing.assert_close(p.detach() - b, -0.01 * torch.sign(m))


def test_update_hessian_from_grad_is_ema_of_squared_grad():
    params = make_params()
    optimizer = SophiaG(params, betas=(0.9, 0.8))
    expected = [torch.zeros_like(p) for p in params]
    for seed in range(3):
        for p, g, e in zip(params, make_grads(params, seed), expected, strict=True):
            p.grad = g
            e.mul_(0.8).add_(0.2 * g * g)
        optimizer.update_hessian()
    for p, e in zip(params, expected, strict=True):
        torch.testing.assert_close(optimizer.state[p]["hessian"], e)


def test_update_hessian_with_estimates_is_ema_of_estimates():
    params = make_params()
    optimizer = SophiaG(two_groups(params), betas=(0.9, 0.8))
    estimates = make_grads(params, 5)  # signed, as a Hutchinson estimate can be
    optimizer.update_hessian(estimates)
    optimizer.update_hessian(estimates)
    for p, e in zip(params, estimates, strict=True):
        torch.testing.assert_close(optimizer.state[p]["hessian"], (1 - 0.8**2) * e)


def test_update_hessian_rejects_misordered_estimates():
    params = make_params()
    optimizer = SophiaG(params)
    with pytest.raises(ValueError, match="out of parameter order"):
        optimizer.update_hessian(list(reversed(make_grads(params, 0))))
    with pytest.raises(ValueError, match="one tensor"):
        optimizer.update_hessian(make_grads(params, 0)[:2])


def test_state_dict_round_trip_continues_identically():
    params = make_params()
    grads = [make_grads(params, seed) for seed in range(6)]
    optimizer = SophiaG(two_groups(params), lr=0.1, weight_decay=0.1)
    run_sophia(optimizer, params, grads[:3], hessian_steps={0})

    resumed_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    resumed = SophiaG(two_groups(resumed_params), lr=0.1, weight_decay=0.1)
    resumed.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    assert set(resumed.state[resumed_params[0]]) == {"step", "exp_avg", "hessian"}

    run_sophia(optimizer, params, grads[3:], hessian_steps={4})
    run_sophia(resumed, resumed_params, grads[3:], hessian_steps={4})
    for p, r in zip(params, resumed_params, strict=True):
        assert torch.equal(p, r)


def test_loads_a_state_dict_without_the_implementation_keys():
    """An official SophiaG checkpoint has no foreach/compiled keys in its param groups."""
    params = make_params()
    optimizer = SophiaG(params)
    state_dict = optimizer.state_dict()
    for group in state_dict["param_groups"]:
        del group["foreach"], group["compiled"]
    optimizer.load_state_dict(state_dict)
    for p, g in zip(params, make_grads(params, 0), strict=True):
        p.grad = g
    optimizer.step(bs=TOKENS)
    assert optimizer.param_groups[0]["foreach"] is None


@pytest.mark.parametrize(
    "kwargs, key",
    [({"lr": -1.0}, "lr"), ({"betas": (1.0, 0.99)}, "betas"), ({"betas": (0.9, -0.1)}, "betas"),
     ({"rho": -0.1}, "rho"), ({"weight_decay": -0.1}, "weight_decay")],
)  # fmt: skip
def test_bad_hyperparameters_raise_naming_the_key(kwargs, key):
    with pytest.raises(ValueError, match=key):
        SophiaG(make_params(), **kwargs)


def test_bad_bs_raises():
    params = make_params()
    optimizer = SophiaG(params)
    for p, g in zip(params, make_grads(params, 0), strict=True):
        p.grad = g
    with pytest.raises(ValueError, match="bs"):
        optimizer.step(bs=0)


def test_diagnostics_win_rate_counts_unclipped_coordinates():
    param = torch.nn.Parameter(torch.zeros(4))
    optimizer = SophiaG([param], lr=0.1, betas=(0.0, 0.5), rho=0.5, weight_decay=0.0)
    optimizer.update_hessian([torch.tensor([2.0, 2.0, 0.0, 2.0])])  # h = [1, 1, 0, 1]
    param.grad = torch.tensor([0.5, -3.0, 0.5, 0.25])  # m = g; |m| < ρ·bs·h for coordinates 0, 3
    optimizer.step(bs=2)  # ρ·bs = 1
    diagnostics = optimizer.diagnostics()
    assert diagnostics["win_rate"] == pytest.approx(0.5)
    assert diagnostics["hessian_l1"] == pytest.approx(3.0)
    assert diagnostics["hessian_l2"] == pytest.approx(3**0.5)
    # The step actually taken: -lr·clamp(m/h) = -0.1·[0.5, -1, 1, 0.25].
    step = torch.tensor([0.5, -1.0, 1.0, 0.25]) * 0.1
    torch.testing.assert_close(param.detach(), -step)
    assert diagnostics["update_rms"] == pytest.approx(float(step.square().mean().sqrt()))


def test_win_rate_counts_rows_never_estimated_as_clipped():
    """The official definition |m| < rho*bs*h: a row with h = 0 and m = 0 (a token or position
    never seen) steps lr*sign(m) once it gets a gradient, so it is clipped, not 0/eps "won"."""
    table = torch.nn.Parameter(torch.zeros(3, 2))  # an embedding: row 2 never occurs
    gain = torch.nn.Parameter(torch.zeros(2))
    optimizer = SophiaG([table, gain], lr=0.1, betas=(0.0, 0.5), rho=0.5, weight_decay=0.0)
    optimizer.update_hessian(
        [torch.tensor([[2.0, 2.0], [2.0, 2.0], [0.0, 0.0]]), torch.tensor([2.0, 2.0])]
    )  # h = 1 where estimated, 0 on row 2
    table.grad = torch.tensor([[0.5, 0.5], [3.0, 0.5], [0.0, 0.0]])
    gain.grad = torch.tensor([0.5, 3.0])
    optimizer.step(bs=2)  # rho*bs*h = 1: unclipped where |m| < 1
    report = optimizer.diagnostics({id(table): "embeddings", id(gain): "vectors"})
    assert report["win_rate"] == pytest.approx(4 / 8)
    assert report["win_rate_embeddings"] == pytest.approx(3 / 6)
    assert report["win_rate_vectors"] == pytest.approx(1 / 2)


def test_sophia_h_uses_bias_corrected_momentum_and_nonnegative_hessian():
    param = torch.nn.Parameter(torch.zeros(3))
    optimizer = SophiaH([param], lr=0.1, betas=(0.9, 0.0), rho=0.5, weight_decay=0.0)
    optimizer.update_hessian([torch.tensor([4.0, -4.0, 4.0])])  # h = ĥ (β2 = 0)
    param.grad = torch.tensor([0.4, 0.4, -8.0])
    optimizer.step()
    # m̂ = g after bias correction; denominators ρ·max(h, 0) = [2, 0, 2]; clamp(m̂/d, ±1).
    torch.testing.assert_close(param.detach(), -0.1 * torch.tensor([0.2, 1.0, -1.0]))


def test_maximize_ascends():
    param = torch.nn.Parameter(torch.zeros(2))
    optimizer = SophiaG([param], lr=0.1, weight_decay=0.0, maximize=True)
    param.grad = torch.tensor([1.0, -1.0])
    optimizer.step(bs=1)
    torch.testing.assert_close(param.detach(), torch.tensor([0.1, -0.1]))


@pytest.mark.slow
def test_compiled_step_matches_foreach():
    params = make_params()
    grads = [make_grads(params, seed) for seed in range(4)]
    reference = [torch.nn.Parameter(p.detach().clone()) for p in params]
    run_sophia(SophiaG(two_groups(reference), lr=0.1), reference, grads, hessian_steps={1})
    run_sophia(SophiaG(two_groups(params), lr=0.1, compiled=True), params, grads, {1})
    for p, r in zip(params, reference, strict=True):
        torch.testing.assert_close(p, r, rtol=1e-6, atol=1e-7)
