import importlib.util
import json
import math
from pathlib import Path

import pytest
import yaml

from study.comparison import analyze
from study.fits import PowerLaw
from study.plots import write_all_plots
from study.report import lr_sweep_table, render_report, side_table, speedup_table, verdict
from study.runs import load_study

ADAMW = PowerLaw(alpha=40.0, beta=0.5, gamma=3.0)
HORIZONS = (200, 400, 800)
SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "analyze_study.py"


def write_run(
    study: Path, optimizer, lr, max_steps, seed, final_loss, last_step=None, rho=None,
    seconds_per_step=0.01, win_rate=0.3, diagnostics=None, compile_s=None, tokenizer=None,
    optim_knobs=None,
):  # fmt: skip
    """A run directory as Hydra and the trainer leave it; val loss falls linearly to the end.
    Sophia runs log `win_rate` and any extra `diagnostics` (metrics keys) on their train lines."""
    directory = study / f"{optimizer}_lr{lr}_steps{max_steps}_seed{seed}"
    (directory / ".hydra").mkdir(parents=True)
    optim = {"name": optimizer, "lr": lr, "warmup_steps": 10, **({"rho": rho} if rho else {})}
    optim.update(optim_knobs or {})
    config = {"optim": optim, "max_steps": max_steps, "seed": seed, "model": {"name": "tiny"}}
    if tokenizer:
        config["data"] = {"name": "corpus", "tokenizer": tokenizer}
    (directory / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    (directory / "run.json").write_text(json.dumps({"tokens_per_step": 256}))
    sophia = optimizer.startswith("sophia")
    lines = []
    for i in range(1, 5):
        step = max_steps * i // 4
        time_s = seconds_per_step * step
        cost = {"step": step, "tokens": 256 * step, "flops": 1e6 * step, "time_s": time_s}
        if compile_s is not None:
            cost["compile_s"] = compile_s
        hess = {"hess/flops": 1e5 * step if sophia else 0.0, "hess/time_s": 0.0}
        logged = {"optim/win_rate": win_rate, **(diagnostics or {})} if sophia else {}
        lines.append({"event": "train", **cost, "train/loss": 6.0, **hess, **logged})
        lines.append({"event": "eval", **cost, "val/loss": final_loss + 0.3 * (1 - i / 4)})
    lines = [line for line in lines if last_step is None or line["step"] <= last_step]
    (directory / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


def write_study(
    study: Path, sophia_seeds=(-0.01, 0.0, 0.01), speed=2.0, adamw_seconds=None, **sophia
) -> Path:
    """AdamW on its law at three horizons (two lrs), Sophia reaching at D what AdamW does at
    speed * D. `adamw_seconds` maps a horizon to AdamW's seconds per step there."""
    for horizon in HORIZONS:
        seconds = (adamw_seconds or {}).get(horizon, 0.01)
        for seed, offset in enumerate((-0.01, 0.0, 0.01)):
            loss = ADAMW.loss(horizon) + offset
            write_run(study, "adamw", 6e-4, horizon, seed, loss, seconds_per_step=seconds)
            write_run(study, "adamw", 2e-3, horizon, seed, loss + 0.2, seconds_per_step=seconds)
        for seed, offset in enumerate(sophia_seeds):
            loss = ADAMW.loss(speed * horizon) + offset
            write_run(study, "sophia", 3e-4, horizon, seed, loss, rho=0.04, **sophia)
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
    assert sophia_400[3] == "lr 0.0003, rho 0.04"  # the setting: lr and Sophia's knob
    assert sophia_400[4].endswith("± 0.010 (n=3)")
    assert sophia_400[6].startswith("2.00x [")  # speedup in steps, with its interval
    assert rows[1][6].startswith("1.00x")  # AdamW against its own fit
    assert len(rows[0]) == 9  # the other measures live in the second table


def test_side_table_holds_tokens_hessian_and_compile_columns(analysis):
    rows = table_rows(side_table(analysis))
    sophia_400 = rows[4]
    assert sophia_400[3].startswith("2.00x [")  # tokens: equal tokens per step
    assert sophia_400[5] == "10.0%"  # Hessian FLOPs share: 1e5 of the 1e6 per step
    assert sophia_400[-1] == "–"  # no compile_s logged


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
    assert "AdamW fit L(D) = 40·D^-0.5 + 3 (nats/token), D in steps" in report
    assert "in nats per token" in report
    assert "± is the standard deviation of the final loss over the n seeds" in report
    assert "| chosen |" in report  # the lr table's last header is filled
    assert "the fit has 3 parameters and 3 horizons" in report


def test_plots_write_one_png_per_figure(tmp_path):
    study = tmp_path / "study"
    for seed in (0, 1):  # one horizon keeps this quick: curves, LR sweep, win rate, baseline
        write_run(study, "adamw", 6e-4, 200, seed, 4.0 + 0.01 * seed)
        write_run(study, "adamw", 2e-3, 200, seed, 4.1 + 0.01 * seed)
        write_run(study, "sophia", 3e-4, 200, seed, 3.9 + 0.01 * seed, rho=0.04,
                  seconds_per_step=0.02)  # fmt: skip
    runs, _ = load_study(study)
    paths = write_all_plots(analyze(runs, n_resamples=0), tmp_path / "figures")
    # tokens and FLOPs are steps times one factor for every run here: those figures are left out
    assert sorted(path.name for path in paths) == [
        "baseline_fit_tiny.png",
        "lr_sweep_tiny_200steps.png",
        "val_loss_vs_seconds_tiny_200steps.png",
        "val_loss_vs_steps_tiny_200steps.png",
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


def test_verdict_never_calls_a_higher_loss_faster(tmp_path):
    """AdamW's longest point below its own fit: a slightly worse optimizer gets a fit-based
    speedup above 1x, and the verdict must side with neither reading."""
    study = tmp_path / "study"
    off_the_law = {800: 0.1, 1600: -0.05}  # AdamW above its law at 800, below it at 1600
    for horizon in (200, 400, 800, 1600):
        for seed, offset in enumerate((-0.002, 0.0, 0.002)):
            adamw = ADAMW.loss(horizon) + off_the_law.get(horizon, 0.0) + offset
            write_run(study, "adamw", 6e-4, horizon, seed, adamw)
            write_run(study, "adahessian", 0.03, horizon, seed, adamw + 0.01)
    runs, _ = load_study(study)
    analysis = analyze(runs, n_resamples=50)
    (row,) = [
        c
        for c in analysis.comparisons
        if c.result.setting.optimizer == "adahessian" and c.result.setting.max_steps == 1600
    ]
    assert row.speedups["steps"].value > 1 and row.loss_gap > 0  # the two readings disagree
    text = verdict(analysis)
    sentence = text[text.index("At this scale (tiny, 1600 steps), AdaHessian") :]
    assert "faster than AdamW" not in sentence.split(". ")[0]
    assert "yet its final loss is 0.010 above AdamW's at the same horizon" in sentence
    assert "neither faster nor slower" in sentence
    assert "AdamW against its own fit is" in sentence
    speedup_cell = next(
        r[6] for r in table_rows(speedup_table(analysis)) if r[1] == "AdaHessian" and r[2] == "1600"
    )
    assert speedup_cell.endswith("‡")


def test_verdict_never_calls_a_level_loss_slower(tmp_path):
    """AdamW's own point above its fit makes an optimizer with AdamW's loss read "slower" by the
    fit; with the loss level within the seed noise the verdict must side with neither reading."""
    study = tmp_path / "study"
    off_the_law = {800: 0.1}  # AdamW above its law at 800
    for horizon in (200, 400, 800, 1600):
        for seed, offset in enumerate((-0.002, 0.0, 0.002)):
            adamw = ADAMW.loss(horizon) + off_the_law.get(horizon, 0.0) + offset
            write_run(study, "adamw", 6e-4, horizon, seed, adamw)
            if horizon == 800:
                write_run(study, "lion", 3e-4, horizon, seed, adamw + 0.0005)
    runs, _ = load_study(study)
    analysis = analyze(runs, n_resamples=50)
    (row,) = [c for c in analysis.comparisons if c.result.setting.optimizer == "lion"]
    assert row.speedups["steps"].verdict_vs_one() == "slower" and row.exceeds_noise is False
    sentence = verdict(analysis)[verdict(analysis).index("At this scale (tiny, 800 steps), Lion") :]
    assert "slower than AdamW" not in sentence.split(". ")[0]
    assert "neither faster nor slower" in sentence


def test_win_rate_outside_the_authors_band_is_flagged(tmp_path):
    runs, _ = load_study(write_study(tmp_path / "low", win_rate=0.03))
    text = verdict(analyze(runs, n_resamples=0))
    assert "Its win rate (0.03, share of unclipped coordinates" in text
    assert "is below the 0.1-0.5 band the authors tune rho for" in text
    runs, _ = load_study(write_study(tmp_path / "inside", win_rate=0.3))
    assert "inside the authors' 0.1-0.5 band" in verdict(analyze(runs, n_resamples=0))


def test_per_group_win_rates_and_warmed_share_are_reported(tmp_path):
    groups = {
        "optim/win_rate_matrices": 0.2,
        "optim/win_rate_embeddings": 0.05,
        "optim/win_rate_vectors": 0.9,
        "optim/hessian_warmed": 0.65,
    }
    runs, _ = load_study(write_study(tmp_path / "study", diagnostics=groups))
    report = render_report(analyze(runs, n_resamples=0))
    section = report[report.index("## Sophia's diagnostics") :]
    row = next(r for r in table_rows(section.split("\n\n")[1]) if r[2] == "800")
    assert row[3:] == ["0.30", "0.20", "0.05", "0.90", "0.65", "inside"]


def test_wall_clock_caveat_when_the_baselines_own_speed_varies(tmp_path):
    study = write_study(tmp_path / "study", adamw_seconds={200: 0.01, 400: 0.01, 800: 0.02})
    runs, _ = load_study(study)
    report = render_report(analyze(runs, n_resamples=0))
    assert "## Wall-clock caveats" in report
    assert "the seconds columns are unreliable here" in report
    assert "The wall-clock numbers are unreliable in this study" in report
    runs, _ = load_study(write_study(tmp_path / "steady"))
    assert "## Wall-clock caveats" not in render_report(analyze(runs, n_resamples=0))


def test_compile_time_is_reported_apart(tmp_path):
    runs, _ = load_study(write_study(tmp_path / "study", compile_s=21.0))
    analysis = analyze(runs, n_resamples=0)
    assert "torch.compile took 21 s per run on average" in render_report(analysis)
    sophia = next(r for r in table_rows(side_table(analysis)) if r[1] == "Sophia-G")
    assert sophia[-1] == "21 s"


def test_byte_level_losses_are_shown_in_bits_per_byte(tmp_path):
    study = tmp_path / "study"
    for horizon in HORIZONS:
        for seed, offset in enumerate((-0.01, 0.0, 0.01)):
            loss = ADAMW.loss(horizon) + offset
            write_run(study, "adamw", 6e-4, horizon, seed, loss, tokenizer="bytes")
    runs, _ = load_study(study)
    report = render_report(analyze(runs, n_resamples=0))
    assert "in bits per byte" in report
    bits = ADAMW.loss(800) / math.log(2)
    assert f"| {bits:.3f} ± " in report


def test_a_min_lr_that_follows_the_lr_is_not_shown_as_a_knob(tmp_path):
    study = tmp_path / "study"
    for lr, warmup in ((1e-3, 10), (3e-3, 20)):
        knobs = {"min_lr": 0.05 * lr, "warmup_steps": warmup}
        write_run(study, "adamw", lr, 200, 0, 4.0 + lr, optim_knobs=knobs)
    runs, _ = load_study(study)
    rows = table_rows(speedup_table(analyze(runs, n_resamples=0)))
    assert rows[0][3] == "lr 0.001, warmup_steps 10"
