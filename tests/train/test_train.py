"""train.py end to end on a tiny model: learning, DDP equality, exact resume."""

from __future__ import annotations

import pytest

from tests.conftest import read_metrics, run_train


def losses(run_dir) -> dict[int, float]:
    return {r["step"]: r["train/loss"] for r in read_metrics(run_dir)}


def test_loss_falls(tmp_path, corpus_dir):
    run_train(tmp_path / "run", corpus_dir, "max_steps=30", "optim.lr=1e-2")
    train_losses = losses(tmp_path / "run")
    assert train_losses[30] < train_losses[1] - 0.5
    evals = read_metrics(tmp_path / "run", "eval")
    assert evals[0]["step"] == 0 and evals[-1]["step"] == 30
    assert evals[-1]["val/loss"] < evals[0]["val/loss"]


def test_metrics_carry_the_contract_fields(tmp_path, corpus_dir):
    run_train(tmp_path / "run", corpus_dir, "max_steps=3")
    for record in read_metrics(tmp_path / "run"):
        for key in ("step", "tokens", "time_s", "flops", "train/loss", "lr", "grad_norm"):
            assert key in record
    assert (tmp_path / "run" / ".hydra" / "config.yaml").exists()


@pytest.mark.slow
@pytest.mark.parametrize("optim", ["adamw", "sophiah"])
def test_two_ranks_equal_one_rank_with_accumulation(tmp_path, corpus_dir, optim):
    """Sophia-H estimates on the training batch of steps 2 and 4 (k = 2): those steps' backward
    bypasses DDP (double backward), so their gradient and estimate are averaged by hand."""
    common = [f"optim={optim}", "max_steps=4", "micro_batch_size=2", "optim.lr=3e-3"]
    if optim == "sophiah":
        common.append("optim.hess_interval=2")
    run_train(tmp_path / "one", corpus_dir, *common)
    run_train(tmp_path / "two", corpus_dir, *common, nproc=2)
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert one.keys() == two.keys()
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-5, abs=1e-6)


def test_resume_continues_exactly(tmp_path, corpus_dir):
    common = ["optim.decay_steps=10", "ckpt_interval=100", "eval_interval=100"]
    run_train(tmp_path / "whole", corpus_dir, "max_steps=10", *common)
    run_train(tmp_path / "split", corpus_dir, "max_steps=6", *common)
    run_train(tmp_path / "split", corpus_dir, "max_steps=10", *common)
    whole, split = losses(tmp_path / "whole"), losses(tmp_path / "split")
    assert list(split) == list(range(1, 11))
    for step in range(7, 11):
        assert split[step] == whole[step]
