import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from study.runs import keep_finished, load_study, load_wandb_study, run_from_wandb

CONFIG = {
    "optim": {"name": "sophia", "lr": 3e-4, "rho": 0.04, "warmup_steps": 20},
    "max_steps": 100,
    "seed": 1,
    "model": {"name": "gpt2-tiny"},
    "batch_size": 8,
    "block_size": 64,
}
FACTS = {"params": 1000, "flops_per_token": 6000, "tokens_per_step": 512, "world_size": 1}


def metrics(last_step: int = 100) -> list[dict]:
    """Train lines every 10 steps, eval lines every 50, up to `last_step`."""
    lines = []
    for step in range(10, last_step + 1, 10):
        cost = {"step": step, "tokens": 512 * step, "flops": 4e6 * step, "time_s": 0.5 * step}
        lines.append(
            {
                "event": "train",
                **cost,
                "train/loss": 5.0,
                "optim/win_rate": 0.3,
                "hess/flops": 4e5 * step,
                "hess/time_s": 0.05 * step,
            }
        )
        if step % 50 == 0:
            lines.append({"event": "eval", **cost, "val/loss": 6.0 - step / 100})
    return lines


def write_run(directory: Path, config=CONFIG, lines=None) -> Path:
    (directory / ".hydra").mkdir(parents=True)
    (directory / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    (directory / "run.json").write_text(json.dumps(FACTS))
    lines = metrics() if lines is None else lines
    (directory / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return directory


def test_load_study_reads_settings_facts_and_curves(tmp_path):
    write_run(tmp_path / "study" / "sophia_lr0.0003_steps100_seed1")
    (run,), warnings = load_study(tmp_path / "study")
    assert warnings == []
    assert (run.name, run.model, run.optimizer, run.lr) == (
        "sophia_lr0.0003_steps100_seed1",
        "gpt2-tiny",
        "sophia",
        3e-4,
    )
    assert (run.max_steps, run.seed, run.rho) == (100, 1, 0.04)
    assert dict(run.knobs) == {"rho": 0.04, "warmup_steps": 20, "batch_size": 8, "block_size": 64}
    assert run.facts["tokens_per_step"] == 512
    assert run.finished and run.final_loss == pytest.approx(5.0)
    assert [run.final(u) for u in ("steps", "tokens", "flops", "seconds")] == [100, 51200, 4e8, 50]
    assert (run.hess_flops, run.hess_seconds) == (4e7, 5.0)
    assert np.allclose(run.win_rate.value, 0.3) and len(run.win_rate) == 10


def test_runs_are_found_at_any_depth(tmp_path):
    write_run(tmp_path / "a" / "b" / "run0")
    write_run(tmp_path / "run1")
    runs, _ = load_study(tmp_path)
    assert sorted(run.name for run in runs) == ["a/b/run0", "run1"]


def test_unfinished_runs_are_skipped_with_a_warning_naming_them(tmp_path):
    write_run(tmp_path / "done")
    write_run(tmp_path / "crashed", lines=metrics(last_step=70))
    runs, warnings = load_study(tmp_path)
    assert [run.name for run in runs] == ["done"]
    assert warnings == ["skipping unfinished run crashed (last eval at step 50 of 100)"]


def test_run_without_config_is_skipped_with_a_warning(tmp_path):
    write_run(tmp_path / "good")
    (tmp_path / "stray").mkdir()
    (tmp_path / "stray" / "metrics.jsonl").write_text("")
    runs, warnings = load_study(tmp_path)
    assert [run.name for run in runs] == ["good"]
    assert "stray" in warnings[0] and "config.yaml" in warnings[0]


def test_no_runs_found_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no runs found in"):
        load_study(tmp_path)


def test_resumed_run_keeps_the_last_line_of_a_replayed_step(tmp_path):
    crashed = metrics(last_step=70)  # crashed after step 70, resumed from a checkpoint at 40
    for line in crashed:
        line["val/loss"] = 9.0 if line["event"] == "eval" else None
    resumed = [line for line in metrics() if line["step"] > 40]
    (run,), _ = load_study(write_run(tmp_path / "run", lines=crashed + resumed).parent)
    assert run.val_loss.steps.tolist() == [50, 100]
    assert run.val_loss.value.tolist() == [5.5, 5.0]


def test_wandb_history_converts_to_the_same_run(tmp_path):
    (from_disk,), _ = load_study(write_run(tmp_path / "run").parent)
    # W&B rows carry no `event`, configs are wrapped as {"value": ...}, facts sit in the summary
    history = [{k: v for k, v in line.items() if k != "event"} for line in metrics()]
    config = {key: {"value": value, "desc": None} for key, value in CONFIG.items()}
    from_wandb = run_from_wandb("run", config, {**FACTS, "_runtime": 3}, history)
    assert from_wandb.knobs == from_disk.knobs
    assert from_wandb.facts == from_disk.facts
    for name in ("model", "optimizer", "lr", "max_steps", "seed", "hess_flops", "hess_seconds"):
        assert getattr(from_wandb, name) == getattr(from_disk, name), name
    for unit in ("steps", "tokens", "flops", "seconds", "value"):
        assert np.array_equal(getattr(from_wandb.val_loss, unit), getattr(from_disk.val_loss, unit))


def test_load_wandb_study_reads_the_group_and_skips_unfinished():
    def fake_run(name, last_step):
        rows = metrics(last_step)
        return SimpleNamespace(
            name=name, config=CONFIG, summary=FACTS, scan_history=lambda: iter(rows)
        )

    class FakeApi:
        def runs(self, project, filters):
            assert (project, filters) == ("me/sophia", {"group": "study1"})
            return [fake_run("done", 100), fake_run("crashed", 60)]

    runs, warnings = load_wandb_study("me/sophia", "study1", api=FakeApi())
    assert [run.name for run in runs] == ["done"]
    assert "crashed" in warnings[0]


def test_keep_finished_names_runs_without_evals(tmp_path):
    (run,), _ = load_study(write_run(tmp_path / "run").parent)
    empty = run_from_wandb("empty", CONFIG, {}, [])
    finished, warnings = keep_finished([run, empty])
    assert finished == [run]
    assert warnings == ["skipping unfinished run empty (no eval yet of 100)"]


def test_diagnostics_compile_time_and_tokenizer_are_read(tmp_path):
    lines = metrics()
    for i, line in enumerate(lines):
        line["compile_s"] = 0.0 if i == 0 else 21.5  # cumulative, as train.py logs it
        if line["event"] == "train":
            line.update({"optim/win_rate_matrices": 0.2, "optim/hessian_warmed": 0.5})
    config = {**CONFIG, "data": {"name": "shakespeare_bytes", "tokenizer": "bytes"}}
    (run,), _ = load_study(write_run(tmp_path / "study" / "run", config=config, lines=lines).parent)
    assert run.compile_seconds == 21.5 and run.tokenizer == "bytes"
    assert set(run.diagnostics) == {
        "optim/win_rate", "optim/win_rate_matrices", "optim/hessian_warmed",
    }  # fmt: skip
    assert np.allclose(run.diagnostics["optim/hessian_warmed"].value, 0.5)


def test_a_run_that_compiled_nothing_has_no_compile_time(tmp_path):
    lines = [{**line, "compile_s": 0.0} for line in metrics()]
    (run,), _ = load_study(write_run(tmp_path / "study" / "run", lines=lines).parent)
    assert run.compile_seconds is None and run.tokenizer == "gpt2"
