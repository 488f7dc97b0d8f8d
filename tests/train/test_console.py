"""What a run prints and keeps: console lines, train.log, one-time warnings, error hints, --help."""

from __future__ import annotations

import os
import subprocess
import sys

from configs.groups import SELECTABLE_GROUPS, selectable_groups
from tests.conftest import REPO, run_train
from training.console import eval_line, train_line, warmup_warning

RECORD = {"train/loss": 5.0, "lr": 6e-4, "grad_norm": 1.0, "tokens_per_s": 1000.0, "mfu": None}


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "train.py", *args], cwd=REPO, capture_output=True, text=True, env=env
    )


def test_train_line_shows_sophia_diagnostics_only_when_reported():
    plain = train_line(10, 200, RECORD, eta_s=60)
    assert plain == (
        "step     10/200 | loss 5.0000 | lr 6.00e-04 | grad 1.000 | 1,000 tok/s | eta 1.0 min"
    )
    diagnostics = {"optim/win_rate": 0.31, "optim/hessian_warmed": 0.65}
    sophia = train_line(10, 200, {**RECORD, **diagnostics}, eta_s=0)
    assert "| win 0.31 | h warm 0.65 | eta" in sophia


def test_eval_line_has_train_and_val_loss_like_nanogpt():
    line = eval_line(0, 200, {"train/loss": 10.8123, "val/loss": 10.8456})
    assert line == "step      0/200 | eval: train loss 10.8123, val loss 10.8456"


def test_warmup_warning_only_when_warmup_outlasts_the_run():
    assert warmup_warning(10, 30, 6e-4) is None
    text = warmup_warning(100, 30, 6e-4)
    assert "optim.warmup_steps=100 >= max_steps=30" in text
    assert "at most 30% of optim.lr=0.0006" in text and "optim.warmup_steps=3" in text


def test_console_lines_land_in_train_log_with_step0_eval_and_one_warmup_warning(
    tmp_path, corpus_dir
):
    run = tmp_path / "run"
    proc = run_train(
        run, corpus_dir, "optim=sophia", "optim.hess_interval=1", "max_steps=3",
        "optim.warmup_steps=5", "eval_interval=100",
    )  # fmt: skip
    assert proc.stdout.count("warning: optim.warmup_steps=5 >= max_steps=3") == 1
    assert "step      0/3 | eval: train loss " in proc.stdout
    assert "step      3/3 | eval: train loss " in proc.stdout
    assert "| win " in proc.stdout and "| h warm " in proc.stdout
    log = (run / "train.log").read_text()
    for line in proc.stdout.splitlines():
        assert line in log, f"console line missing from train.log: {line}"


def test_missing_corpus_names_the_prepare_command_and_leaves_the_run_dir_empty(tmp_path):
    run, missing = tmp_path / "run", tmp_path / "no-corpus"
    proc = run_cli(f"hydra.run.dir={run}", f"data.dir={missing}", "device=cpu")
    assert proc.returncode == 2
    assert f"run `python -m data.prepare data=shakespeare data.dir={missing}` first" in proc.stderr
    assert "<name>" not in proc.stderr
    assert not [path for path in run.rglob("*") if path.is_file() and path.name != ".lock"]


def test_an_accepted_run_that_stops_on_an_error_keeps_it_in_train_log(tmp_path, corpus_dir):
    run = tmp_path / "run"
    proc = run_train(
        run, corpus_dir, "optim.lr=1e6", "optim.warmup_steps=1", "max_bad_steps=2",
        "max_steps=20", check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "2 steps in a row had a non-finite loss or gradient" in proc.stderr
    assert "there is no earlier checkpoint" in proc.stderr
    assert "2 steps in a row had a non-finite" in (run / "train.log").read_text()


def test_a_sophia_key_on_adamw_hints_optim_sophia(tmp_path):
    proc = run_cli(f"hydra.run.dir={tmp_path / 'run'}", "optim.rho=0.1")
    assert proc.returncode == 2
    assert "rho belongs to optim=sophia, sophiah: add optim=sophia" in proc.stderr


def test_help_lists_only_the_groups_a_user_can_select():
    proc = run_cli("--help")
    assert proc.returncode == 0, proc.stderr
    groups = proc.stdout.split("== Configuration groups ==")[1].split("== Config ==")[0]
    listed = [line.split(":")[0] for line in groups.splitlines() if ": " in line]
    assert listed == list(SELECTABLE_GROUPS)
    assert "study" not in groups and "schema/" not in groups
    optim_line = next(line for line in selectable_groups().splitlines() if line[:6] == "optim:")
    assert {"adamw", "lion", "sophia", "sophiah", "adahessian"} <= set(optim_line[7:].split(", "))
