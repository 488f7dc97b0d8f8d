"""The run dir: named by the run's identity (the same command resumes), one writer, one dir for
all ranks, and a record written only for accepted segments."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from configs.run_name import run_name
from tests.conftest import REPO, TINY_RUN, read_metrics, run_train
from training.errors import RunError
from training.run_dir import RunDirLock, check_resume_changes


def test_the_name_is_the_runs_identity_and_ignores_how_it_runs():
    base = run_name("sophia", "gpt2-tiny", "shakespeare", ["optim.lr=1e-3", "max_steps=50"])
    assert base == "sophia_gpt2-tiny_shakespeare_max_steps=50,optim.lr=1e-3"
    reordered = run_name("sophia", "gpt2-tiny", "shakespeare", ["max_steps=50", "optim.lr=1e-3"])
    how_it_runs = [
        "device=cpu", "compile=true", "eval_interval=7", "wandb.mode=online", "resume=auto",
        "hydra.run.dir=x", "data.dir=/elsewhere", "optim=sophia",
    ]  # fmt: skip
    same_run = run_name(
        "sophia", "gpt2-tiny", "shakespeare", ["optim.lr=1e-3", "max_steps=50", *how_it_runs]
    )
    assert base == reordered == same_run
    assert run_name("sophia", "gpt2-tiny", "shakespeare", ["optim.lr=3e-3", "max_steps=50"]) != base
    assert run_name("adamw", "gpt2-tiny", "shakespeare", []) == "adamw_gpt2-tiny_shakespeare"


def test_long_or_unsafe_overrides_keep_a_readable_prefix_and_a_distinguishing_hash():
    long_a = run_name("adamw", "m", "d", [f"model.n_layer={i}" for i in range(30)])
    long_b = run_name("adamw", "m", "d", [f"model.n_layer={i}" for i in range(31)])
    assert long_a != long_b and "~" in long_a and len(long_a) < 100
    unsafe = run_name("adamw", "m", "d", ["data.files=[/a b/c.txt]"])
    assert "/" not in unsafe and " " not in unsafe


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    first, second = RunDirLock(tmp_path), RunDirLock(tmp_path)
    first.acquire()
    try:
        with pytest.raises(RunError, match=rf"{tmp_path} is in use by pid {os.getpid()} on "):
            second.acquire()
    finally:
        first.release()
    second.acquire()  # released: the dir is free again
    second.release()


def test_resume_refuses_a_changed_setting_and_allows_the_exempt_ones(tmp_path):
    saved = {"seed": 0, "max_steps": 10, "optim": {"lr": 1e-3}, "wandb": {"mode": "disabled"}}
    allowed = {**saved, "max_steps": 20, "wandb": {"mode": "online"}}
    assert check_resume_changes(saved, allowed, tmp_path) == ["max_steps", "wandb.mode"]
    with pytest.raises(RunError, match=r"other settings \(optim.lr=0.001 -> 0.003\)"):
        check_resume_changes(saved, {**saved, "optim": {"lr": 3e-3}}, tmp_path)


def test_the_same_command_resumes_in_its_identity_dir_and_another_gets_its_own(
    tmp_path, corpus_dir
):
    """The default hydra.run.dir (runs/<identity> under the working directory)."""
    command = [sys.executable, str(REPO / "train.py"), f"data.dir={corpus_dir}", *TINY_RUN,
               "max_steps=4", "ckpt_interval=2"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def launch(*extra: str) -> subprocess.CompletedProcess:
        proc = subprocess.run([*command, *extra], cwd=tmp_path, capture_output=True, text=True,
                              env=env)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        return proc

    assert "fresh start" in launch().stdout
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert run_dir.name.startswith("adamw_gpt2-tiny_shakespeare_")
    assert f"resumed from {run_dir}/checkpoints/step_00000004 at step 4" in launch().stdout
    assert "fresh start" in launch("optim.lr=1e-3").stdout
    assert len(list((tmp_path / "runs").iterdir())) == 2


def test_a_resumed_segment_keeps_its_config_beside_the_first(tmp_path, corpus_dir):
    run_dir = tmp_path / "run"
    run_train(run_dir, corpus_dir, "max_steps=4", "ckpt_interval=2")
    proc = run_train(run_dir, corpus_dir, "max_steps=6", "ckpt_interval=2")
    assert "max_steps changed to 6 on resume" in proc.stdout
    segments = sorted((run_dir / ".hydra" / "segments").iterdir())
    assert [p.name for p in segments] == ["step_00000000.yaml", "step_00000004.yaml"]
    first, second = (yaml.safe_load(p.read_text()) for p in segments)
    assert (first["config"]["max_steps"], second["config"]["max_steps"]) == (4, 6)
    assert yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())["max_steps"] == 6
    assert [r["step"] for r in read_metrics(run_dir)][-1] == 6


def test_ranks_that_resolve_different_dirs_all_use_rank_0s(tmp_path, corpus_dir):
    """Ranks resolving `${now:...}` in different seconds disagree; forced here with the rank."""
    proc = run_train(Path(f"{tmp_path}/r${{oc.env:RANK}}"), corpus_dir, "max_steps=2", nproc=2)
    assert (tmp_path / "r0" / "metrics.jsonl").exists(), proc.stdout
    assert not (tmp_path / "r1").exists()
    assert [r["step"] for r in read_metrics(tmp_path / "r0")][-1] == 2
