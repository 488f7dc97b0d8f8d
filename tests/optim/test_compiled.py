"""The compiled path of Sophia, Lion and AdaHessian: when it is taken, what it computes, and the
fallback to the eager step where torch.compile fails."""

from __future__ import annotations

import warnings

import pytest
import torch

import optim.compiled
from optim.adahessian import AdaHessian
from optim.compiled import COMPILE_MIN_ELEMENTS, resolve_compiled
from optim.lion import Lion
from optim.sophia import SophiaG, SophiaH

SHAPES = [(4, 3), (5,), (2, 3, 2), (7,)]


def make_params(seed: int = 0) -> list[torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(shape, generator=generator)) for shape in SHAPES]


def build(rule: str, params, **kwargs) -> torch.optim.Optimizer:
    groups = [{"params": params[:2]}, {"params": params[2:], "weight_decay": 0.0, "lr": 0.05}]
    if rule == "sophiag":
        return SophiaG(groups, lr=0.1, weight_decay=0.1, **kwargs)
    if rule == "sophiah":
        return SophiaH(groups, lr=0.1, weight_decay=0.1, **kwargs)
    if rule == "lion":
        return Lion(groups, lr=0.1, weight_decay=0.1, **kwargs)
    return AdaHessian(groups, lr=0.1, weight_decay=0.1, **kwargs)


def run(rule: str, optimizer, params, steps: int = 4) -> None:
    """`steps` updates with fixed gradients, and a Hessian refresh before steps 0 and 2."""
    generator = torch.Generator().manual_seed(1)
    for step in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=generator)
        if step % 2 == 0 and rule != "lion":
            estimates = [torch.randn(p.shape, generator=generator) for p in params]
            optimizer.update_hessian(None if rule == "sophiag" else estimates)
        optimizer.step(bs=64) if rule == "sophiag" else optimizer.step()


@pytest.fixture
def fresh_compile_registry(monkeypatch):
    """Each test sees a process in which nothing was compiled or failed yet."""
    monkeypatch.setattr(optim.compiled, "_compiled_bodies", {})
    monkeypatch.setattr(optim.compiled, "_failed_bodies", set())


def test_auto_compiles_large_models_only():
    small = [torch.empty(1000, device="meta")]
    large = [torch.empty(COMPILE_MIN_ELEMENTS // 2, device="meta") for _ in range(2)]
    assert resolve_compiled(None, None, small) is False
    assert resolve_compiled(None, None, large) is True
    assert resolve_compiled(None, False, large) is False  # foreach=False: the reference loop
    assert resolve_compiled(False, None, large) is False
    assert resolve_compiled(True, None, small) is True


RULES = ["sophiag", "sophiah", "lion", "adahessian"]


@pytest.mark.parametrize("rule", RULES)
def test_default_constructor_takes_the_compiled_path_on_large_models(
    rule, monkeypatch, fresh_compile_registry
):
    """No flag: above the size threshold the step runs the compiled body (here a stand-in for
    torch.compile that records the call and runs the body eagerly, so no compilation happens)."""
    compiled_bodies = []

    def fake_compile(body, **_kwargs):
        compiled_bodies.append(body.__name__)
        return body

    monkeypatch.setattr(torch, "compile", fake_compile)
    monkeypatch.setattr(optim.compiled, "COMPILE_MIN_ELEMENTS", 10)
    params = make_params()
    run(rule, build(rule, params), params, steps=1)
    assert compiled_bodies and compiled_bodies[0].startswith("_fused_")


@pytest.mark.parametrize("rule", RULES)
def test_failed_compile_warns_once_and_steps_exactly_as_foreach(
    rule, monkeypatch, fresh_compile_registry
):
    def failing_compile(_body, **_kwargs):
        def call(*_args):
            raise RuntimeError("no working C++ compiler")

        return call

    monkeypatch.setattr(torch, "compile", failing_compile)
    reference = make_params()
    run(rule, build(rule, reference, compiled=False), reference)
    params = make_params()
    with pytest.warns(RuntimeWarning, match="no working C\\+\\+ compiler") as caught:
        run(rule, build(rule, params, compiled=True), params)
    assert len([w for w in caught if issubclass(w.category, RuntimeWarning)]) == 1
    for p, r in zip(params, reference, strict=True):
        assert torch.equal(p, r)


def test_small_models_never_compile(monkeypatch, fresh_compile_registry):
    def forbidden_compile(*_args, **_kwargs):
        raise AssertionError("a small model must keep the eager step")

    monkeypatch.setattr(torch, "compile", forbidden_compile)
    for rule in RULES:
        params = make_params()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            run(rule, build(rule, params), params, steps=1)


@pytest.mark.slow
@pytest.mark.parametrize("rule", RULES)
def test_compiled_step_matches_foreach(rule):
    """torch.compile for real: the same trajectory as the eager foreach step to float precision
    (not bit for bit: eager kernels fuse multiply-adds that the compiled graph rounds apart)."""
    reference = make_params()
    run(rule, build(rule, reference, compiled=False), reference)
    params = make_params()
    run(rule, build(rule, params, compiled=True), params)
    for p, r in zip(params, reference, strict=True):
        torch.testing.assert_close(p, r, rtol=1e-5, atol=1e-6)
