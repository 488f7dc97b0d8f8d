import importlib.util
import json
from pathlib import Path

import pytest
import yaml

from study.plots import write_all_plots
from study.report import lr_sweep_table, render_report, speedup_table, verdict
from study.runs import load_study
from study.speedup import PowerLaw, analyze

ADAMW = PowerLaw(alpha=40.0, beta=0.5, gamma=3.0)
HORIZONS = (200, 400, 800)
SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "analyze_study.py"


def write_run(study: Path, optimizer, lr, max_steps, seed, final_loss, last_step=None, rho=None):
    """A run directory as Hydra and the trainer leave it; val loss falls linearly to the end."""
    directory = study / f"{optimizer}_lr{lr}_steps{max_steps}_seed{seed}"
    (directory / ".hydra").mkdir(parents=True)
    optim = {"name": optimizer, "lr": lr, "warmup_steps": 10, **({"rho": rho} if rho else {})}
    config = {"optim": optim, "max_steps": max_steps, "seed": seed, "model": {"name": "tiny"}}
    (directory / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    (directory / "run.json").write_text(json.dumps({"tokens_per_step": 256}))
    sophia = optimizer.startswith("sophia")
    lines = []
    for i in range(1, 5):
        step = max_steps * i // 4
        cost = {"step": step, "tokens": 256 * step, "flops": 1e6 * step, "time_s": 0.01 * step}
        hess = {"hess/flops": 1e5 * step if sophia else 0.0, "hess/time_s": 0.0}
        win_rate = {"optim/win_rate": 0.3} if sophia else {}
        lines.append({"event": "train", **cost, "train/loss": 6.0, **hess, **win_rate})
        lines.append({"event": "eval", **cost, "val/loss": final_loss + 0.3 * (1 - i / 4)})
    lines = [line for line in lines if last_step is None or line["step"] <= last_step]
    (directory / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


def write_study(study: Path, sophia_seeds=(-0.01, 0.0, 0.01), speed=2.0) -> Path:
    """AdamW on its law at three horizons (two lrs), Sophia reaching at D what AdamW does at
    speed * D."""
    for horizon in HORIZONS:
        for seed, offset in enumerate((-0.01, 0.0, 0.01)):
            write_run(study, "adamw", 6e-4, horizon, seed, ADAMW.loss(horizon) + offset)
            write_run(study, "adamw", 2e-3, horizon, seed, ADAMW.loss(horizon) + 0.2 + offset)
        for seed, offset in enumerate(sophia_seeds):
            loss = ADAMW.loss(speed * horizon) + offset
            write_run(study, "sophia", 3e-4, horizon, seed, loss, rho=0.04)
    return study


def load_script():
    spec = importlib.util.spec_from_file_location("analyze_study", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def analysis(tmp_path_factory):
    runs, _ = load_study(write_study(tmp_path_factory.mktemp("study")))
    return analyze(runs, n_resamples=200)


def table_rows(table: str) -> list[list[str]]:
    return [
        [cell.strip() for cell in line.strip("|").split("|")] for line in table.splitlines()[2:]
    ]


def test_speedup_table_has_one_row_per_optimizer_and_horizon(analysis):
    rows = table_rows(speedup_table(analysis))
    assert [(row[1], row[2]) for row in rows] == [
        ("AdamW", "200"),
        ("AdamW", "400"),
        ("AdamW", "800"),
        ("Sophia-G", "200"),
        ("Sophia-G", "400"),
        ("Sophia-G", "800"),
    ]
    sophia_400 = rows[4]
    assert sophia_400[3:5] == ["0.0003", "0.04"]  # best lr, rho
    assert sophia_400[5].endswith("± 0.010 (n=3)")
    assert sophia_400[7].startswith("2.00x [")  # speedup in steps, with its interval
    assert sophia_400[-2] == "10.0%"  # Hessian FLOPs share: 1e5 of the 1e6 per step
    assert rows[1][7].startswith("1.00x")  # AdamW against its own fit


def test_lr_sweep_table_marks_each_best_setting(analysis):
    rows = table_rows(lr_sweep_table(analysis))
    adamw = [row for row in rows if row[2] == "AdamW"]
    assert len(adamw) == 6
    assert {row[3] for row in adamw if row[-1] == "best"} == {"0.0006"}


def test_verdict_calls_a_clear_speedup_faster(analysis):
    text = verdict(analysis)
    assert "Sophia-G's speedup over AdamW is 2.00x [" in text
    assert "faster than AdamW (the interval excludes 1x)" in text
    assert "middle of a schedule" in text


def test_verdict_calls_equal_losses_not_distinguishable(tmp_path):
    runs, _ = load_study(write_study(tmp_path, speed=1.0))
    text = verdict(analyze(runs, n_resamples=200))
    assert "is 1.00x [" in text and "not distinguishable from 1x" in text
    assert "within AdamW's seed noise" in text


def test_verdict_gives_no_interval_for_one_seed(tmp_path):
    runs, _ = load_study(write_study(tmp_path, sophia_seeds=(0.0,)))
    text = verdict(analyze(runs, n_resamples=200))
    assert "is 2.00x in steps: a single seed, so no confidence interval" in text


def test_report_lists_left_out_runs(analysis):
    report = render_report(analysis, ["skipping unfinished run x (last eval at step 5 of 10)"])
    assert "## Runs left out\n\n- skipping unfinished run x" in report
    assert "AdamW fit L(D) = 40·D^-0.5 + 3, D in steps" in report


def test_plots_write_one_png_per_figure(tmp_path):
    study = tmp_path / "study"
    for seed in (0, 1):  # one horizon keeps this quick: 4 curves, LR sweep, win rate, baseline
        write_run(study, "adamw", 6e-4, 200, seed, 4.0 + 0.01 * seed)
        write_run(study, "sophia", 3e-4, 200, seed, 3.9 + 0.01 * seed, rho=0.04)
    runs, _ = load_study(study)
    paths = write_all_plots(analyze(runs, n_resamples=0), tmp_path / "figures")
    assert sorted(path.name for path in paths) == [
        "baseline_fit_tiny.png",
        "lr_sweep_tiny_200steps.png",
        "val_loss_vs_flops_tiny_200steps.png",
        "val_loss_vs_seconds_tiny_200steps.png",
        "val_loss_vs_steps_tiny_200steps.png",
        "val_loss_vs_tokens_tiny_200steps.png",
        "win_rate_tiny_200steps.png",
    ]
    assert all(path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for path in paths)


def test_cli_writes_report_and_warns_about_unfinished_runs(tmp_path, capsys):
    study = write_study(tmp_path / "study")
    write_run(study, "sophia", 3e-4, 800, 7, 3.5, last_step=400, rho=0.04)
    out = tmp_path / "analysis"
    args = [str(study), "--out", str(out), "--resamples", "50", "--no-plots"]
    assert load_script().main(args) == 0
    captured = capsys.readouterr()
    assert "skipping unfinished run sophia_lr0.0003_steps800_seed7" in captured.err
    assert "| tiny | Sophia-G | 800 |" in captured.out
    assert "sophia_lr0.0003_steps800_seed7" in (out / "report.md").read_text()


def test_cli_fails_with_one_line_when_no_runs(tmp_path):
    with pytest.raises(SystemExit, match=r"^error: no runs found in"):
        load_script().main([str(tmp_path)])


def test_cli_fails_with_one_line_without_baseline_runs(tmp_path):
    write_run(tmp_path, "lion", 1e-4, 200, 0, 4.0)
    with pytest.raises(SystemExit, match=r"^error: no baseline runs"):
        load_script().main([str(tmp_path), "--baseline", "adamw"])
