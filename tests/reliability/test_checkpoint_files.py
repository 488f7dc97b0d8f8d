"""Checkpoints on disk as a kill, a copy or a hand left them: stray names, incomplete and corrupt
directories, missing pieces, non-finite state. Each is one CheckpointError line or a fallback to
the newest complete checkpoint that says so; nothing non-finite is ever saved. In-process, tiny."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch

from model.gpt import GPT, GPTConfig
from training.checkpoint import (
    Checkpointer,
    CheckpointError,
    CheckpointWriteError,
    NonFiniteCheckpointError,
    find_checkpoint,
    load_into,
)
from training.distributed import Distributed

WORLD = Distributed()


def tiny_model(dropout: float = 0.0) -> GPT:
    torch.manual_seed(0)
    config = GPTConfig(n_layer=1, n_head=1, n_embd=8, vocab_size=16, block_size=8, dropout=dropout)
    return GPT(config)


def optimizer_state(model: GPT) -> dict:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long))[1].backward()
    opt.step()
    return {"optimizer": opt.state_dict(), "hessian_refreshes": 0}


def save(checkpointer: Checkpointer, model: GPT, step: int) -> Path:
    return checkpointer.save(step, model, optimizer_state(model), {"counters": {"step": step}})


@pytest.fixture
def run(tmp_path) -> tuple[Checkpointer, GPT]:
    """A run dir with checkpoints at steps 1 and 2."""
    model = tiny_model()
    checkpointer = Checkpointer(tmp_path, keep=5, world=WORLD)
    save(checkpointer, model, 1)
    save(checkpointer, model, 2)
    return checkpointer, model


def one_line(err: pytest.ExceptionInfo) -> str:
    assert "\n" not in str(err.value)
    return str(err.value)


@pytest.mark.parametrize(
    "stray", ["step_latest", "step_4.bak", "step_", "step_-3", "step_00000009"]
)
def test_stray_names_in_checkpoints_are_ignored(run, stray):
    checkpointer, _ = run
    target = checkpointer.root / stray
    if stray == "step_00000009":
        target.write_text("a file, not a checkpoint dir")
    else:
        target.mkdir()
    assert checkpointer.latest().path.name == "step_00000002"
    assert checkpointer.skipped == []


@pytest.mark.parametrize("lost", ["model.safetensors", "optimizer.pt", "meta.json"])
def test_incomplete_newest_falls_back_to_the_previous_and_says_so(run, lost, caplog):
    checkpointer, _ = run
    (checkpointer.root / "step_00000002" / lost).unlink()
    with caplog.at_level(logging.WARNING):
        checkpoint = checkpointer.latest()
    assert checkpoint.path.name == "step_00000001"
    assert checkpointer.skipped == [f"step_00000002 lacks {lost}"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert "step_00000002 lacks" in warnings[0] and "using step_00000001" in warnings[0]


@pytest.mark.parametrize("content", ["{not json", "[]", '{"counters": {}}', '{"step": "2"}'])
def test_unreadable_newest_meta_falls_back(run, content):
    checkpointer, _ = run
    (checkpointer.root / "step_00000002" / "meta.json").write_text(content)
    assert checkpointer.latest().path.name == "step_00000001"
    assert "step_00000002" in checkpointer.skipped[0]


def test_no_complete_checkpoint_at_all_is_refused_not_a_fresh_start(run):
    checkpointer, _ = run
    for step_dir in checkpointer.root.iterdir():
        (step_dir / "optimizer.pt").unlink()
    with pytest.raises(CheckpointError, match="no complete checkpoint in") as raised:
        checkpointer.latest()
    assert "step_00000002 lacks optimizer.pt" in one_line(raised)


def test_a_corrupt_meta_named_directly_names_the_file(run):
    checkpointer, _ = run
    meta_path = checkpointer.root / "step_00000002" / "meta.json"
    meta_path.write_text('{"step": 2, "x": "\x01"}')
    with pytest.raises(CheckpointError, match="is corrupt") as raised:
        find_checkpoint(meta_path.parent, files=("model.safetensors", "meta.json"))
    assert str(meta_path) in one_line(raised)


def test_weights_only_readers_do_not_need_optimizer_or_rng_files(run):
    checkpointer, _ = run
    newest = checkpointer.root / "step_00000002"
    (newest / "optimizer.pt").unlink()
    (newest / "rng_rank0.pt").unlink()
    assert find_checkpoint(checkpointer.root.parent).path == newest
    assert find_checkpoint(newest).path == newest


def rewrite_meta(path: Path, **changes) -> None:
    meta = json.loads((path / "meta.json").read_text())
    meta.update(changes)
    for key in [k for k, v in changes.items() if v is None]:
        del meta[key]
    (path / "meta.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("counters", [None, {}, {"step": 1}, "2"])
def test_meta_lacking_counters_is_one_line(run, counters):
    checkpointer, model = run
    rewrite_meta(checkpointer.root / "step_00000002", counters=counters)
    with pytest.raises(CheckpointError, match="lacks the run's counters") as raised:
        load_into(checkpointer.latest(), model, WORLD)
    assert "meta.json" in one_line(raised)


@pytest.mark.parametrize(
    "state", [{}, {"hessian_refreshes": 0}, {"optimizer": {}}, {"optimizer": {"state": {}}}, []]
)
def test_optimizer_state_lacking_keys_is_one_line(run, state):
    checkpointer, model = run
    torch.save(state, checkpointer.root / "step_00000002" / "optimizer.pt")
    with pytest.raises(CheckpointError, match="optimizer.pt holds no optimizer state") as raised:
        load_into(checkpointer.latest(), model, WORLD)
    one_line(raised)


@pytest.mark.parametrize("rng", [{}, {"cuda": torch.zeros(3)}, [1]])
def test_rng_state_lacking_the_cpu_state_is_one_line(run, rng):
    checkpointer, model = run
    torch.save(rng, checkpointer.root / "step_00000002" / "rng_rank0.pt")
    with pytest.raises(CheckpointError, match="rng_rank0.pt holds no RNG state") as raised:
        load_into(checkpointer.latest(), model, WORLD)
    one_line(raised)


def test_missing_rng_is_refused_when_dropout_needs_it(tmp_path):
    model = tiny_model(dropout=0.1)
    checkpointer = Checkpointer(tmp_path, keep=2, world=WORLD)
    path = save(checkpointer, model, 3)
    (path / "rng_rank0.pt").unlink()
    with pytest.raises(CheckpointError, match="rng_rank0.pt is missing and the model uses dropout"):
        load_into(checkpointer.latest(), model, WORLD)
    with pytest.raises(CheckpointError, match="rng_rank0.pt is missing"):
        load_into(checkpointer.latest(), tiny_model(), WORLD, need_rng=True)


def test_missing_rng_without_dropout_resumes_with_none(run):
    checkpointer, model = run
    (checkpointer.root / "step_00000002" / "rng_rank0.pt").unlink()
    state, rng = load_into(checkpointer.latest(), model, WORLD)
    assert rng is None and state["optimizer"]["state"]
    _, rng = load_into(checkpointer.latest(), tiny_model(dropout=0.1), WORLD, need_rng=False)
    assert rng is None


def poison_weight(model: GPT) -> None:
    with torch.no_grad():
        model.transformer.h[0].mlp.c_fc.weight[0, 0] = math.nan


def test_save_refuses_non_finite_weights_and_writes_nothing(run):
    checkpointer, model = run
    state = optimizer_state(model)
    poison_weight(model)
    before = sorted(p.name for p in checkpointer.root.iterdir())
    with pytest.raises(NonFiniteCheckpointError) as raised:
        checkpointer.save(3, model, state, {"counters": {"step": 3}})
    message = one_line(raised)
    assert "model tensor transformer.h.0.mlp.c_fc.weight holds NaN or inf" in message
    assert "the previous checkpoint is intact (step_00000002)" in message
    assert raised.value.previous == checkpointer.root / "step_00000002"
    assert sorted(p.name for p in checkpointer.root.iterdir()) == before


def test_save_refuses_non_finite_optimizer_state(tmp_path):
    model = tiny_model()
    state = optimizer_state(model)
    next(iter(state["optimizer"]["state"].values()))["exp_avg_sq"][0] = math.inf
    checkpointer = Checkpointer(tmp_path, keep=2, world=WORLD)
    with pytest.raises(NonFiniteCheckpointError, match="exp_avg_sq holds NaN or inf") as raised:
        checkpointer.save(1, model, state, {"counters": {"step": 1}})
    assert "there is no earlier checkpoint" in one_line(raised)
    assert raised.value.previous is None
    assert not checkpointer.root.exists() or not any(checkpointer.root.iterdir())


def test_write_failure_names_the_previous_checkpoint_only_when_there_is_one(tmp_path, monkeypatch):
    model = tiny_model()
    checkpointer = Checkpointer(tmp_path, keep=2, world=WORLD)

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(torch, "save", full_disk)
        with pytest.raises(CheckpointWriteError) as first:
            save(checkpointer, model, 1)
    assert first.value.previous is None and "there is no earlier checkpoint" in str(first.value)
    assert "intact" not in str(first.value)
    save(checkpointer, model, 1)
    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointWriteError) as second:
        save(checkpointer, model, 2)
    assert second.value.previous == checkpointer.root / "step_00000001"
    assert "the previous checkpoint is intact (step_00000001)" in str(second.value)
