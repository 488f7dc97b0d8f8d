"""Shared fixtures: a small synthetic corpus and a helper that runs train.py as users do."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]

# A tiny model and batch that train in well under a second per step on 2 CPU cores.
TINY_RUN = [
    "model.n_layer=1",
    "model.n_head=2",
    "model.n_embd=32",
    "model.vocab_size=512",
    "model.block_size=64",
    "block_size=32",
    "batch_size=4",
    "dtype=float32",
    "device=cpu",
    "log_interval=1",
    "eval_interval=5",
    "eval_iters=1",
    "optim.warmup_steps=2",
    "wandb.mode=disabled",
]


def write_corpus(
    directory: Path, n_train: int = 20_000, n_val: int = 2_000, vocab: int = 64
) -> Path:
    """A corpus in prepare's format whose tokens follow a sparse Markov chain (learnable)."""
    rng = np.random.default_rng(0)
    successors = rng.integers(0, vocab, size=(vocab, 2))
    tokens = np.empty(n_train + n_val, dtype=np.uint16)
    tokens[0] = 0
    choices = rng.integers(0, 2, size=len(tokens))
    for i in range(1, len(tokens)):
        tokens[i] = successors[tokens[i - 1], choices[i]]
    directory.mkdir(parents=True, exist_ok=True)
    tokens[:n_train].tofile(directory / "train.bin")
    tokens[n_train:].tofile(directory / "val.bin")
    meta = {
        "tokenizer": "synthetic",
        "vocab_size": vocab,
        "dtype": "uint16",
        "tokens": {"train": n_train, "val": n_val},
    }
    (directory / "meta.json").write_text(json.dumps(meta))
    return directory


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


def run_train(
    run_dir: Path, corpus: Path, *overrides: str, nproc: int = 1, check: bool = True, env=None
) -> subprocess.CompletedProcess:
    """Run train.py (or torchrun over it) in a subprocess; returns the completed process."""
    args = [f"hydra.run.dir={run_dir}", f"data.dir={corpus}", *TINY_RUN, *overrides]
    if nproc > 1:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={nproc}",
            "train.py",
            *args,
        ]
    else:
        cmd = [sys.executable, "train.py", *args]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0", **(env or {})}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=full_env)
    if check and proc.returncode != 0:
        raise AssertionError(f"train.py failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def read_metrics(run_dir: Path, event: str = "train") -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == event]
