"""Helpers of the reliability tests: a reference run, fault injection, comparable metrics.

Faults are injected by tests/reliability/shim/sitecustomize.py, which Python loads at start-up
when its folder is on PYTHONPATH; the training code runs unmodified.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import REPO, TINY_RUN, run_train

SHIM = Path(__file__).resolve().parent / "shim"

# The run every interrupted run is compared with: Sophia-G (its Hessian estimate draws random
# labels, so resume must restore it exactly), checkpoints every 2 steps, old ones pruned.
REFERENCE = [
    "optim=sophia",
    "optim.hess_interval=2",
    "max_steps=12",
    "ckpt_interval=2",
    "eval_interval=4",
    "optim.decay_steps=12",
]

# Metrics that measure the machine, not the computation: dropped before comparing runs.
TIMING_KEYS = {"time_s", "tokens_per_s", "mfu", "hess/time_s", "hess/refresh_seconds"}


def fault_env(**faults) -> dict[str, str]:
    """Environment that makes the shim inject `faults` (see the shim's docstring)."""
    return {"PYTHONPATH": f"{SHIM}{os.pathsep}{REPO}", "RELIABILITY_FAULTS": json.dumps(faults)}


def train_command(run_dir: Path, corpus: Path, *overrides: str) -> list[str]:
    return [
        sys.executable,
        "train.py",
        f"hydra.run.dir={run_dir}",
        f"data.dir={corpus}",
        *TINY_RUN,
        *overrides,
    ]


def run_with_faults(run_dir: Path, corpus: Path, *overrides: str, **faults):
    """train.py with the shim injecting `faults`; returns the completed process, never raises."""
    return run_train(run_dir, corpus, *overrides, check=False, env=fault_env(**faults))


def comparable_metrics(run_dir: Path) -> list[str]:
    """metrics.jsonl with the timing fields dropped, one JSON string per line."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    return [json.dumps({k: v for k, v in r.items() if k not in TIMING_KEYS}) for r in records]


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.strip()]


def assert_one_line_error(proc: subprocess.CompletedProcess, expected: str) -> None:
    """Non-zero exit, no traceback, and exactly one non-empty stderr line containing `expected`."""
    report = f"rc={proc.returncode}\nstdout:\n{proc.stdout[-2000:]}\nstderr:\n{proc.stderr}"
    assert proc.returncode not in (0, None), report
    assert "Traceback" not in proc.stderr, report
    lines = error_lines(proc)
    assert len(lines) == 1, report
    assert expected in lines[0], report


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step_{step:08d}"


def latest_step(run_dir: Path) -> int:
    names = [p.name for p in (run_dir / "checkpoints").glob("step_*")]
    return max(int(name[len("step_") :]) for name in names)


def load_checkpoint(path: Path) -> tuple[dict, dict, dict]:
    """(weights, optimizer state, meta) of a checkpoint dir, loaded as resume loads them."""
    weights = load_file(path / "model.safetensors")
    optimizer = torch.load(path / "optimizer.pt", weights_only=True)
    meta = json.loads((path / "meta.json").read_text())
    return weights, optimizer, meta


def assert_loadable(run_dir: Path, step: int) -> None:
    weights, optimizer, meta = load_checkpoint(checkpoint_dir(run_dir, step))
    inner = optimizer["optimizer"]
    states = [inner["state"]] if "state" in inner else [half["state"] for half in inner.values()]
    assert meta["step"] == step and weights and all(states)


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory, corpus_dir) -> Path:
    """An uninterrupted run of REFERENCE (read-only for the tests: copy it to change it)."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    run_train(run_dir, corpus_dir, *REFERENCE)
    return run_dir
