"""The run's pieces in-process on a tiny model: train_step, the Hessian pass, evaluation and the
update guard (the subprocess tests in test_train.py hold the whole command)."""

from __future__ import annotations

import math
from contextlib import nullcontext

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from configs.schema import TrainConfig, register_configs
from tests.conftest import REPO, TINY_RUN
from training import build
from training.build import Run, build_run
from training.distributed import Distributed
from training.errors import RunError
from training.hessian_pass import (
    EstimationBatch,
    forward_backward_estimating,
    refresh_hessian,
    run_estimate,
)
from training.loop import evaluate_and_log
from training.state import TrainState
from training.step import StepClocks, check_update_finite, forward_backward, train_step

SINGLE_CPU = Distributed(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))


def make_run(tmp_path, corpus_dir, *overrides: str) -> Run:
    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        dict_cfg = compose(
            config_name="train", overrides=[f"data.dir={corpus_dir}", *TINY_RUN, *overrides]
        )
    cfg: TrainConfig = OmegaConf.to_object(dict_cfg)
    return build_run(cfg, SINGLE_CPU, tmp_path / "run")


def weights(run: Run) -> list[torch.Tensor]:
    return [p.detach().clone() for p in run.raw_model.parameters()]


def test_a_step_updates_the_weights_and_advances_the_counters(tmp_path, corpus_dir):
    run = make_run(tmp_path, corpus_dir, "max_steps=10")
    state, before = TrainState(), weights(run)
    result = train_step(run, state, StepClocks())
    assert result.finite and math.isfinite(result.grad_norm)
    assert result.lr == pytest.approx(run.cfg.optim.lr / run.cfg.optim.warmup_steps)
    assert (state.step, state.tokens, state.skipped_steps) == (1, run.tokens_per_step, 0)
    assert state.flops >= run.flops_per_token * run.tokens_per_step
    assert all(not torch.equal(a, b) for a, b in zip(before, weights(run), strict=True))
    assert all(p.grad is None for p in run.raw_model.parameters())  # zeroed for the next step


def test_a_non_finite_gradient_skips_the_step_and_touches_nothing(tmp_path, corpus_dir):
    run = make_run(tmp_path, corpus_dir, "max_steps=10")
    state = TrainState()
    train_step(run, state, StepClocks())  # the optimizer now holds state
    before, moments = weights(run), [t.clone() for t in run.optimizer.state_tensors()]
    poisoned = next(run.raw_model.parameters())
    poisoned.register_hook(lambda grad: grad * float("nan"))
    result = train_step(run, state, StepClocks())
    assert not result.finite
    assert (state.step, state.skipped_steps, state.bad_steps_in_a_row) == (2, 1, 1)
    assert all(torch.equal(a, b) for a, b in zip(before, weights(run), strict=True))
    after = run.optimizer.state_tensors()
    assert all(torch.equal(a, b) for a, b in zip(moments, after, strict=True))


def test_the_update_guard_stops_on_non_finite_weights_or_optimizer_state(tmp_path, corpus_dir):
    run = make_run(tmp_path, corpus_dir, "max_steps=10")
    train_step(run, TrainState(), StepClocks())
    check_update_finite(run, 0)  # a finite update passes
    moment = run.optimizer.state_tensors()[0]
    moment[0] = float("inf")
    with pytest.raises(RunError, match="made the optimizer's state non-finite.*no earlier"):
        check_update_finite(run, 0)
    moment[0] = 0.0
    with torch.no_grad():
        next(run.raw_model.parameters())[0] = float("nan")
    with pytest.raises(RunError, match="update of step 1 made parameters non-finite"):
        check_update_finite(run, 0)


@pytest.mark.parametrize("optim", ["sophia", "sophiah", "adahessian"])
def test_the_hessian_pass_fills_h_and_counts_the_refresh(tmp_path, corpus_dir, optim):
    run = make_run(tmp_path, corpus_dir, f"optim={optim}", "max_steps=10")
    stats = refresh_hessian(run, step=0)
    assert stats["skipped"] == 0 and stats["flops"] > 0
    assert run.optimizer.hessian_refreshes == 1
    key = "exp_hessian_diag_sq" if optim == "adahessian" else "hessian"  # AdaHessian: EMA of D^2
    hessians = [s[key] for s in run.optimizer.optimizer.state.values() if key in s]
    assert hessians and all(bool(torch.isfinite(h).all()) for h in hessians)
    assert any(bool((h != 0).any()) for h in hessians)
    assert all(p.grad is None for p in run.raw_model.parameters())  # the pass leaves no gradient


def training_batch_estimate(run: Run, step: int) -> tuple[list[torch.Tensor], list, dict]:
    """(p.grad, the committed h, the stats) of optim.hess_source=train at `step`."""
    loss_sum, stats = forward_backward_estimating(run, step, nullcontext)
    grads = [p.grad.clone() for p in run.raw_model.parameters()]
    return grads, [s["hessian"] for s in run.optimizer.optimizer.state.values()], stats


def test_the_training_batch_estimate_is_a_fresh_pass_on_the_steps_own_batch(tmp_path, corpus_dir):
    """hess_source=train reuses the step's gradient graph: its estimate equals the separate
    Hutchinson pass over the same micro-batches with the same probes, its gradient equals the
    plain training gradient, and it charges the probes alone (no second gradient)."""
    overrides = ["optim=sophiah", "optim.betas=[0.9,0.0]", "micro_batch_size=2", "max_steps=10"]
    run = make_run(tmp_path / "train", corpus_dir, *overrides)  # beta2 = 0: h is the estimate
    grads, hessians, stats = training_batch_estimate(run, step=3)
    assert stats["skipped"] == 0 and run.optimizer.hessian_refreshes == 1

    fresh = make_run(tmp_path / "fresh", corpus_dir, *overrides, "optim.hess_source=fresh")
    shape = fresh.batch
    batch = EstimationBatch(
        model=fresh.model, raw_model=fresh.raw_model, num_micro_batches=shape.accumulation,
        micro_batches=lambda: (fresh.micro_batch(fresh.streams.train, shape, 3, i)
                               for i in range(2)),
        autocast=fresh.autocast, world=SINGLE_CPU, seed=fresh.cfg.seed, step=3,
        tokens=shape.sequences * fresh.cfg.block_size,
    )  # fmt: skip
    fresh_stats = run_estimate(fresh.optimizer.estimator, batch, fresh.optimizer.optimizer)
    fresh_hessians = [s["hessian"] for s in fresh.optimizer.optimizer.state.values()]
    assert shape.accumulation == 2 and len(hessians) == len(fresh_hessians)
    for mine, reference in zip(hessians, fresh_hessians, strict=True):
        torch.testing.assert_close(mine, reference, rtol=1e-4, atol=1e-7)
    assert any(bool((h != 0).any()) for h in hessians)
    assert stats["loss"] == pytest.approx(fresh_stats["loss"], rel=1e-5)
    # A probe alone: the fresh pass also pays the gradient with its graph (one training step).
    probe = fresh.optimizer.estimator.probe_step_equivalents
    assert stats["flops"] == pytest.approx(fresh_stats["flops"] * probe / (1 + probe))

    forward_backward(fresh, 3)
    for mine, reference in zip(grads, fresh.raw_model.parameters(), strict=True):
        torch.testing.assert_close(mine, reference.grad, rtol=1e-4, atol=1e-7)


def test_a_training_batch_estimate_on_part_of_the_batch_uses_its_first_micro_batches(
    tmp_path, corpus_dir
):
    """optim.hess_batch_size=2 of 4: the first of two micro-batches carries the estimate, the
    second trains only; the gradient is still the whole batch's."""
    overrides = ["optim=adahessian", "micro_batch_size=2", "max_steps=10"]
    run = make_run(tmp_path / "half", corpus_dir, *overrides, "optim.hess_batch_size=2")
    _, stats = forward_backward_estimating(run, 0, nullcontext)
    half_flops, grads = stats["flops"], [p.grad.clone() for p in run.raw_model.parameters()]
    whole = make_run(tmp_path / "whole", corpus_dir, *overrides)
    _, stats = forward_backward_estimating(whole, 0, nullcontext)
    assert half_flops == pytest.approx(stats["flops"] / 2)
    for mine, reference in zip(grads, whole.raw_model.parameters(), strict=True):
        torch.testing.assert_close(mine, reference.grad, rtol=1e-4, atol=1e-7)


def test_a_non_finite_training_batch_estimate_leaves_the_hessian_untouched(tmp_path, corpus_dir):
    """A NaN in the step's gradient makes its estimate non-finite: skipped and not counted, on
    every rank alike (the estimate is reduced before the check), and the step skips too."""
    run = make_run(tmp_path, corpus_dir, "optim=adahessian", "max_steps=10")
    state = TrainState()
    train_step(run, state, StepClocks())  # step 0 commits its first estimate
    assert run.optimizer.hessian_refreshes == 1
    hessians = [t.clone() for t in run.optimizer.state_tensors()]
    next(run.raw_model.parameters()).register_hook(lambda grad: grad * float("nan"))
    result = train_step(run, state, StepClocks())
    assert result.hess_stats["skipped"] == 1 and not result.finite
    assert run.optimizer.hessian_refreshes == 1
    after = run.optimizer.state_tensors()
    assert all(torch.equal(a, b) for a, b in zip(hessians, after, strict=True))


def test_a_training_batch_estimate_cannot_exceed_the_batch(tmp_path, corpus_dir):
    with pytest.raises(RunError, match="optim.hess_batch_size=8 exceeds batch_size=4: with "
                                       "optim.hess_source=train"):  # fmt: skip
        make_run(tmp_path, corpus_dir, "optim=sophiah", "optim.hess_batch_size=8")


def test_evaluation_is_deterministic_and_logged_at_the_step(tmp_path, corpus_dir):
    run = make_run(tmp_path, corpus_dir, "max_steps=10", "eval_iters=2")

    class Recorder:
        records: list = []

        def log(self, event, step, record):
            self.records.append((event, step, record))

    logger, state = Recorder(), TrainState(step=3)
    evaluate_and_log(run, state, logger)
    evaluate_and_log(run, state, logger)
    (event, step, first), (_, _, second) = logger.records
    assert (event, step) == ("eval", 3)
    assert first["val/loss"] == second["val/loss"] and first["train/loss"] == second["train/loss"]
    assert math.log(run.cfg.model.vocab_size) == pytest.approx(first["val/loss"], rel=0.1)
    assert run.raw_model.training  # evaluation puts the model back into training mode


@pytest.mark.parametrize(
    ("device", "native", "expected"),
    [("cpu", True, torch.bfloat16), ("cpu", False, torch.float32),
     ("cuda", True, torch.bfloat16), ("cuda", False, torch.float16)],
)  # fmt: skip
def test_dtype_auto_is_bfloat16_only_where_the_device_computes_it(
    monkeypatch, device, native, expected
):
    monkeypatch.setattr(build, "native_bfloat16", lambda _: native)
    assert build.resolve_dtype("auto", torch.device(device)) == expected
    assert build.resolve_dtype("bfloat16", torch.device(device)) == torch.bfloat16  # as asked
