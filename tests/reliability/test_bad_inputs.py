"""Bad input: a non-zero exit, one clear stderr line naming the fix, no traceback, nothing changed.

One table row per case: (id, overrides, setup, expected substring of the error line). A setup
builds the case's `corpus/` (default: the shared synthetic corpus) and/or `run/` (the run dir).
All cases run in one interpreter, forked per case (fork_runner.py), to pay torch's import once.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import REPO, TINY_RUN, write_corpus
from tests.reliability.conftest import REFERENCE, assert_one_line_error


def copy_corpus(case: Path, corpus: Path, reference: Path) -> Path:
    return Path(shutil.copytree(corpus, case / "corpus"))


def edit_meta(**changes):
    def setup(case: Path, corpus: Path, reference: Path) -> None:
        meta_path = copy_corpus(case, corpus, reference) / "meta.json"
        meta = json.loads(meta_path.read_text())
        for key, value in changes.items():
            meta[key] = {**meta[key], **value} if isinstance(value, dict) else value
        meta_path.write_text(json.dumps(meta))

    return setup


def replace_meta(text: str):
    def setup(case: Path, corpus: Path, reference: Path) -> None:
        (copy_corpus(case, corpus, reference) / "meta.json").write_text(text)

    return setup


def meta_directory(case: Path, corpus: Path, reference: Path) -> None:
    meta_path = copy_corpus(case, corpus, reference) / "meta.json"
    meta_path.unlink()
    meta_path.mkdir()


def empty_train_bin(case: Path, corpus: Path, reference: Path) -> None:
    (copy_corpus(case, corpus, reference) / "train.bin").write_bytes(b"")


def no_corpus(case: Path, corpus: Path, reference: Path) -> None:
    (case / "corpus").mkdir()


def truncated_bin(case: Path, corpus: Path, reference: Path) -> None:
    path = copy_corpus(case, corpus, reference) / "train.bin"
    path.write_bytes(path.read_bytes()[:-101])


def corrupted_bin(case: Path, corpus: Path, reference: Path) -> None:
    """Same size, one token changed, with meta.json recording the original sha256."""
    data_dir = copy_corpus(case, corpus, reference)
    original = (data_dir / "train.bin").read_bytes()
    meta = json.loads((data_dir / "meta.json").read_text())
    meta["sha256"] = {"train": hashlib.sha256(original).hexdigest()}
    (data_dir / "meta.json").write_text(json.dumps(meta))
    (data_dir / "train.bin").write_bytes(original[:1000] + b"\x07\x00" + original[1002:])


def token_out_of_range(case: Path, corpus: Path, reference: Path) -> None:
    path = copy_corpus(case, corpus, reference) / "train.bin"
    tokens = np.fromfile(path, dtype=np.uint16)
    tokens[500] = 600  # >= meta.json's vocab_size 64 (and the model's 512)
    tokens.tofile(path)


def short_corpus(case: Path, corpus: Path, reference: Path) -> None:
    write_corpus(case / "corpus", n_train=20, n_val=2_000)


def existing_run(case: Path, corpus: Path, reference: Path) -> None:
    shutil.copytree(reference, case / "run")


def run_dir_is_a_file(case: Path, corpus: Path, reference: Path) -> None:
    (case / "run").write_text("a file where the run dir should be\n")


FINITE = "(|x| <= 3.4e38, float32's range), got"  # the finite-number check's wording
HELD_LOCKS = []  # open while the cases run: a flock held by this (pytest's) process


def run_in_use(case: Path, corpus: Path, reference: Path) -> None:
    existing_run(case, corpus, reference)
    handle = open(case / "run" / ".lock", "w")  # noqa: SIM115 (held until the module ends)
    handle.write("pid 4242 on testhost\n")
    handle.flush()
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    HELD_LOCKS.append(handle)


def newest_checkpoint(case: Path, corpus: Path, reference: Path) -> Path:
    existing_run(case, corpus, reference)
    return max((case / "run" / "checkpoints").glob("step_*"))


def checkpoint_meta_without_counters(case: Path, corpus: Path, reference: Path) -> None:
    meta_path = newest_checkpoint(case, corpus, reference) / "meta.json"
    meta = json.loads(meta_path.read_text())
    del meta["counters"]
    meta_path.write_text(json.dumps(meta))


def checkpoint_file_holding(name: str, value):
    def setup(case: Path, corpus: Path, reference: Path) -> None:
        torch.save(value, newest_checkpoint(case, corpus, reference) / name)

    return setup


CASES = [
    ("unknown-optimizer", ["optim=adamx"], None, "choose one of adahessian, adamw, lion"),
    ("unknown-model", ["model=gpt5"], None, "choose one of gpt2-large"),
    ("unknown-key", ["optim.lrr=1e-3"], None, "unknown key optim.lrr: optim has name, lr,"),
    ("unknown-top-level-key", ["max_step=5"], None, "unknown key max_step: the top level has"),
    ("wrong-type", ["optim.lr=fast"], None, "optim.lr=fast"),
    ("zero-lr", ["optim.lr=0"], None, "optim.lr must be > 0"),
    ("negative-lr", ["optim.lr=-1e-3"], None, "optim.lr must be > 0"),
    ("zero-rho", ["optim=sophia", "optim.rho=0"], None, "optim.rho must be > 0"),
    ("negative-rho", ["optim=sophiah", "optim.rho=-1"], None, "optim.rho must be > 0"),
    ("beta-one", ["optim.betas=[0.9,1.0]"], None, "optim.betas must be two numbers in [0, 1)"),
    ("beta-negative", ["optim=lion", "optim.betas=[-0.1,0.9]"], None, "in [0, 1)"),
    ("infinite-lr", ["optim.lr=inf"], None, f"optim.lr must be a finite number {FINITE} inf"),
    (
        "lr-past-float32",
        ["optim=muon", "optim.lr=1e39"],
        None,
        f"optim.lr must be a finite number {FINITE} 1e+39",
    ),
    ("nan-weight-decay", ["optim.weight_decay=nan"], None, "optim.weight_decay must be a finite"),
    ("infinite-rho", ["optim=sophia", "optim.rho=inf"], None, "optim.rho must be a finite"),
    ("nan-grad-clip", ["grad_clip=nan"], None, f"grad_clip must be a finite number {FINITE} nan"),
    ("infinite-eps", ["optim.eps=inf"], None, f"optim.eps must be a finite number {FINITE} inf"),
    ("nan-beta", ["optim.betas=[0.9,nan]"], None, "optim.betas must be finite numbers"),
    ("negative-seed", ["seed=-1"], None, "seed must be in [0, 2**32 - 1"),
    ("seed-over-64-bits", [f"seed={2**64}"], None, "seed must be in [0, 2**32 - 1"),
    ("zero-steps", ["max_steps=0"], None, "max_steps must be > 0"),
    ("negative-ckpt-interval", ["ckpt_interval=-2"], None, "ckpt_interval must be > 0"),
    ("zero-log-interval", ["log_interval=0"], None, "log_interval must be > 0"),
    ("zero-hess-interval", ["optim=sophia", "optim.hess_interval=0"], None, "hess_interval"),
    ("zero-probes", ["optim=adahessian", "optim.n_probes=0"], None, "optim.n_probes must be >= 1"),
    ("probes-on-sophia-g", ["optim=sophia", "optim.n_probes=2"], None, "n_probes"),
    (
        "hess-source-typo",
        ["optim=sophiah", "optim.hess_source=trian"],
        None,
        "optim.hess_source must be one of train, fresh, got 'trian'",
    ),
    ("hess-source-on-sophia-g", ["optim=sophia", "optim.hess_source=train"], None, "hess_source"),
    (
        "hess-batch-over-batch",
        ["optim=adahessian", "optim.hess_batch_size=8"],
        None,
        "optim.hess_batch_size=8 exceeds batch_size=4: with optim.hess_source=train",
    ),
    ("batch-not-divisible", ["batch_size=6", "micro_batch_size=4"], None, "not a multiple of"),
    ("block-size-over-context", ["block_size=128"], None, "exceeds the model's context"),
    ("data-not-prepared", [], no_corpus, "run `python -m data.prepare"),
    ("truncated-bin", [], truncated_bin, "truncated"),
    ("corrupted-bin", [], corrupted_bin, "does not match the sha256"),
    ("meta-dtype-unsupported", [], edit_meta(dtype="uint32"), "dtype 'uint32' is not supported"),
    ("meta-dtype-signed", [], edit_meta(dtype="int16"), "(readers accept uint16)"),
    ("meta-is-a-list", [], replace_meta("[]"), "holds a JSON list, not an object"),
    ("meta-is-a-directory", [], meta_directory, "meta.json is not a file"),
    ("meta-unparseable", [], replace_meta('{"vocab_size": 6'), "meta.json is not valid JSON"),
    ("meta-vocab-string", [], edit_meta(vocab_size="64"), "vocab_size must be a positive"),
    ("meta-vocab-null", [], edit_meta(vocab_size=None), "got None"),
    ("meta-vocab-negative", [], edit_meta(vocab_size=-1), "got -1"),
    ("meta-tokens-missing", [], replace_meta('{"vocab_size": 64}'), "tokens must map train"),
    ("empty-train-bin", [], empty_train_bin, "train.bin holds 0 uint16 tokens"),
    ("meta-token-count-disagrees", [], edit_meta(tokens={"train": 19_000}), "says 19000"),
    ("meta-vocab-over-model", [], edit_meta(vocab_size=1000), "set model.vocab_size >= 1000"),
    ("token-id-over-vocab", [], token_out_of_range, "holds token id 600"),
    ("corpus-shorter-than-window", [], short_corpus, "exceeds the whole train split (20 tokens)"),
    ("checkpoint-other-shape", REFERENCE + ["model.n_embd=64"], existing_run, "model shape"),
    ("checkpoint-other-optimizer", ["optim=adamw"], existing_run, "trained with optim=sophia"),
    (
        "checkpoint-meta-without-counters",
        REFERENCE + ["max_steps=14"],
        checkpoint_meta_without_counters,
        "lacks the run's counters",
    ),
    (
        "checkpoint-optimizer-empty",
        REFERENCE + ["max_steps=14"],
        checkpoint_file_holding("optimizer.pt", {}),
        "optimizer.pt holds no optimizer state",
    ),
    (
        "checkpoint-rng-empty",
        REFERENCE + ["max_steps=14"],
        checkpoint_file_holding("rng_rank0.pt", {}),
        "rng_rank0.pt holds no RNG state",
    ),
    ("resume-path-missing", ["resume=/nonexistent/run"], None, "does not exist"),
    ("fresh-start-into-a-run", ["resume=never"], existing_run, "already holds a run"),
    # A finished run resumed with settings that change what is trained (its .hydra/ untouched).
    ("resume-other-lr", REFERENCE + ["optim.lr=1e-3"], existing_run, "(optim.lr=0.0006 -> 0.001)"),
    ("resume-other-seed", REFERENCE + ["seed=7"], existing_run, "other settings (seed=0 -> 7)"),
    ("resume-other-batch", REFERENCE + ["batch_size=2"], existing_run, "(batch_size=4 -> 2)"),
    ("run-dir-in-use", REFERENCE + ["max_steps=14"], run_in_use, "in use by pid 4242 on testhost"),
    ("run-dir-is-a-file", [], run_dir_is_a_file, "is a file, not a directory: choose another"),
    ("unquoted-non-ascii", ["wandb.name=rün"], None, "quote the value, e.g. \"wandb.name='rün'\""),
]


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under `directory`, the run's record (.hydra/) and log included, except the
    run-dir lock: taking it (before anything is checked, so two writers cannot race) writes the
    taker's pid into it, and it is not part of the record."""
    return {
        str(path.relative_to(directory)): path.read_bytes()
        for path in sorted(directory.rglob("*"))
        if path.is_file() and path.name != ".lock"
    }


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory, corpus_dir, reference_run) -> dict[str, tuple]:
    """Each case's (completed process, snapshot before, snapshot after)."""
    root = tmp_path_factory.mktemp("bad_inputs")
    batch, before = [], {}
    for name, overrides, setup, _ in CASES:
        case = root / name
        case.mkdir()
        if setup is not None:
            setup(case, corpus_dir, reference_run)
        data_dir = case / "corpus" if (case / "corpus").exists() else corpus_dir
        argv = [f"hydra.run.dir={case / 'run'}", f"data.dir={data_dir}", *TINY_RUN, *overrides]
        batch.append({"argv": argv, "out": str(case)})
        before[name] = snapshot(case)
    cases_file = root / "cases.json"
    cases_file.write_text(json.dumps(batch))
    subprocess.run(
        [sys.executable, str(Path(__file__).parent / "fork_runner.py"), str(cases_file)],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"},
        check=True,
    )
    for handle in HELD_LOCKS:
        handle.close()
    results = {}
    for name, *_ in CASES:
        case = root / name
        proc = subprocess.CompletedProcess(
            args=name,
            returncode=int((case / "returncode").read_text()),
            stdout=(case / "stdout").read_text(),
            stderr=(case / "stderr").read_text(),
        )
        for output in ("returncode", "stdout", "stderr"):
            (case / output).unlink()
        results[name] = (proc, before[name], snapshot(case))
    return results


@pytest.mark.parametrize(
    ("overrides", "setup", "expected"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_bad_input_is_one_clear_line(outcomes, request, overrides, setup, expected):
    proc, before, after = outcomes[request.node.callspec.id]
    assert_one_line_error(proc, expected)
    assert after == before  # nothing written, nothing overwritten
