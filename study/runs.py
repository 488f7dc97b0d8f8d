"""Load a study's runs: settings from the config, facts from run.json, curves from metrics.jsonl.

A run directory follows docs/CONTRACTS.md. Runs are found by searching a study folder for
`metrics.jsonl`, so any layout Hydra's multirun writes works. The same `Run` objects come from
the W&B public API (`load_wandb_study`) so the analysis does not care where runs were stored.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

# The four ways to measure how long a run trained; every curve carries all of them.
UNITS = ("steps", "tokens", "flops", "seconds")

# Settings that identify a run but are not knobs of its setting.
_NOT_KNOBS = ("optim.name", "optim.lr")
# Top-level config keys that are knobs of a setting (they change what a step means).
_GLOBAL_KNOBS = ("batch_size", "block_size")
# run.json facts looked up in a W&B run's summary when the config has no `run` section.
_FACT_KEYS = ("params", "flops_per_token", "tokens_per_step", "world_size")
# Optimizer diagnostics kept as curves (train lines), when the optimizer logs them: Sophia's win
# rate overall and per parameter group, and the share of h warmed up (1 - beta2^refreshes).
DIAGNOSTICS = (
    "optim/win_rate",
    "optim/win_rate_matrices",
    "optim/win_rate_embeddings",
    "optim/win_rate_vectors",
    "optim/hessian_warmed",
)


@dataclass(frozen=True, eq=False)
class Curve:
    """One metric at the logged steps, with the cumulative training cost at each point."""

    steps: np.ndarray
    tokens: np.ndarray
    flops: np.ndarray
    seconds: np.ndarray
    value: np.ndarray

    def __len__(self) -> int:
        return len(self.steps)

    def at(self, unit: str) -> np.ndarray:
        """The x values of this curve in `unit` (one of UNITS)."""
        if unit not in UNITS:
            raise ValueError(f"unit must be one of {UNITS}, got {unit!r}")
        return getattr(self, unit)


@dataclass(frozen=True, eq=False)
class Run:
    """One training run: its setting, its validation curve and its Hessian-estimation cost."""

    name: str
    model: str
    optimizer: str
    lr: float
    max_steps: int
    seed: int
    knobs: tuple[tuple[str, Any], ...]  # every other setting (rho, warmup_steps, ...), sorted
    val_loss: Curve
    win_rate: Curve | None  # Sophia's fraction of unclipped coordinates, from train lines
    hess_flops: float  # final cumulative FLOPs spent estimating the Hessian
    hess_seconds: float  # final cumulative seconds spent estimating the Hessian
    facts: Mapping[str, Any]  # run.json
    diagnostics: Mapping[str, Curve] = field(default_factory=dict)  # DIAGNOSTICS it logged
    compile_seconds: float | None = None  # one-time torch.compile seconds (`compile_s`), if any
    compiled: bool = False  # the run's config had compile=true
    tokenizer: str = "gpt2"  # data.tokenizer: gpt2 (BPE tokens) or bytes (one token per byte)

    @property
    def finished(self) -> bool:
        """The trainer always evaluates at the end: a finished run's last eval is at max_steps."""
        return len(self.val_loss) > 0 and int(self.val_loss.steps[-1]) == self.max_steps

    @property
    def final_loss(self) -> float:
        """Final validation loss; a diverged run (NaN) counts as infinitely bad."""
        loss = float(self.val_loss.value[-1])
        return loss if math.isfinite(loss) else math.inf

    def final(self, unit: str) -> float:
        """How long the run trained, in `unit`, read off its last eval line."""
        return float(self.val_loss.at(unit)[-1])

    @property
    def rho(self) -> float | None:
        return dict(self.knobs).get("rho")


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"optim": {"lr": 1}} -> {"optim.lr": 1}; lists become tuples so settings are hashable."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and set(value) <= {"value", "desc"} and "value" in value:
            value = value["value"]  # W&B wraps config values as {"value": ..., "desc": ...}
        if isinstance(value, Mapping):
            flat.update(flatten_config(value, prefix=f"{name}."))
        elif isinstance(value, list):
            flat[name] = tuple(value)
        else:
            flat[name] = value
    return flat


def _event_of(record: Mapping[str, Any]) -> str | None:
    """The line's event; W&B history rows may lack it, so infer it from the keys they carry."""
    if "event" in record:
        return record["event"]
    if record.get("val/loss") is not None:
        return "eval"
    if record.get("train/loss") is not None:
        return "train"
    return None


def _curve(records: list[Mapping[str, Any]], key: str) -> Curve:
    """Curve of `key`; a step logged twice (a resumed run replays steps) keeps its last line."""
    by_step = {int(r["step"]): r for r in records if r.get(key) is not None}
    rows = [by_step[step] for step in sorted(by_step)]

    def column(name: str) -> np.ndarray:
        return np.array([_as_float(r.get(name)) for r in rows], dtype=float)

    return Curve(
        steps=column("step"),
        tokens=column("tokens"),
        flops=column("flops"),
        seconds=column("time_s"),
        value=column(key),
    )


def _as_float(value: Any) -> float:
    return math.nan if value is None else float(value)


def run_from_records(
    name: str,
    config: Mapping[str, Any],
    facts: Mapping[str, Any],
    records: Iterable[Mapping[str, Any]],
) -> Run:
    """Build a Run from a resolved config, run.json facts and metrics lines (or W&B rows)."""
    flat = flatten_config(config)

    def required(key: str) -> Any:
        if flat.get(key) is None:
            raise ValueError(f"run {name}: config has no {key} (is it a training run's config?)")
        return flat[key]

    knobs = {k.removeprefix("optim."): v for k, v in flat.items() if k.startswith("optim.")}
    for key in _NOT_KNOBS:
        knobs.pop(key.removeprefix("optim."), None)
    knobs.update({k: flat[k] for k in _GLOBAL_KNOBS if k in flat})

    records = list(records)
    evals = [r for r in records if _event_of(r) == "eval"]
    trains = [r for r in records if _event_of(r) == "train"]
    win_rate = _curve(trains, "optim/win_rate") if trains else None
    last_train = max(trains, key=lambda r: r["step"]) if trains else {}
    diagnostics = {key: _curve(trains, key) for key in DIAGNOSTICS}
    # compile_s is on every line (0 without compile=true): a run that compiled nothing has none
    compile_seconds = [r["compile_s"] for r in records if r.get("compile_s")]
    return Run(
        name=name,
        model=str(flat.get("model.name", "model")),
        optimizer=str(required("optim.name")),
        lr=float(required("optim.lr")),
        max_steps=int(required("max_steps")),
        seed=int(required("seed")),
        knobs=tuple(sorted(knobs.items())),
        val_loss=_curve(evals, "val/loss"),
        win_rate=win_rate if win_rate is not None and len(win_rate) else None,
        hess_flops=_as_float(last_train.get("hess/flops", 0.0)),
        hess_seconds=_as_float(last_train.get("hess/time_s", 0.0)),
        facts=dict(facts),
        diagnostics={key: curve for key, curve in diagnostics.items() if len(curve)},
        compile_seconds=float(max(compile_seconds)) if compile_seconds else None,
        tokenizer=str(flat.get("data.tokenizer") or "gpt2"),
        compiled=bool(flat.get("compile", False)),
    )


def load_run_dir(run_dir: Path, name: str | None = None) -> Run:
    """Read one run directory: .hydra/config.yaml, run.json (optional) and metrics.jsonl."""
    run_dir = Path(run_dir)
    config_path = run_dir / ".hydra" / "config.yaml"
    if not config_path.is_file():
        raise ValueError(f"run {run_dir}: no .hydra/config.yaml beside metrics.jsonl")
    config = yaml.safe_load(config_path.read_text()) or {}
    facts_path = run_dir / "run.json"
    facts = json.loads(facts_path.read_text()) if facts_path.is_file() else {}
    with open(run_dir / "metrics.jsonl") as lines:
        records = [json.loads(line) for line in lines if line.strip()]
    return run_from_records(name or str(run_dir), config, facts, records)


def keep_finished(runs: Iterable[Run]) -> tuple[list[Run], list[str]]:
    """Finished runs, and one warning naming each unfinished run left out."""
    finished, warnings = [], []
    for run in runs:
        if run.finished:
            finished.append(run)
        else:
            last = int(run.val_loss.steps[-1]) if len(run.val_loss) else None
            where = "no eval yet" if last is None else f"last eval at step {last}"
            warnings.append(f"skipping unfinished run {run.name} ({where} of {run.max_steps})")
    return finished, warnings


def load_study(study_dir: Path) -> tuple[list[Run], list[str]]:
    """All finished runs under `study_dir`, and warnings for the runs left out."""
    study_dir = Path(study_dir)
    if not study_dir.is_dir():
        raise FileNotFoundError(f"study directory {study_dir} does not exist")
    metrics_files = sorted(study_dir.rglob("metrics.jsonl"))
    if not metrics_files:
        raise FileNotFoundError(f"no runs found in {study_dir} (no metrics.jsonl below it)")
    runs, warnings = [], []
    for path in metrics_files:
        run_dir = path.parent
        name = str(run_dir.relative_to(study_dir)) if run_dir != study_dir else study_dir.name
        try:
            runs.append(load_run_dir(path.parent, name=name))
        except (ValueError, json.JSONDecodeError, yaml.YAMLError) as error:
            warnings.append(f"skipping unreadable run {name}: {error}")
    finished, unfinished = keep_finished(runs)
    return finished, warnings + unfinished


def run_from_wandb(
    name: str,
    config: Mapping[str, Any],
    summary: Mapping[str, Any],
    history: Iterable[Mapping[str, Any]],
) -> Run:
    """Convert a W&B run (its config, summary and history rows with the metrics.jsonl keys).

    run.json's facts are read from the config's `run` section if the trainer logged one there,
    else from the summary keys of the same names.
    """
    run_section = config.get("run")
    if isinstance(run_section, Mapping):
        facts = dict(flatten_config({"run": run_section}))
        facts = {k.removeprefix("run."): v for k, v in facts.items()}
    else:
        facts = {k: summary[k] for k in _FACT_KEYS if k in summary}
    config = {k: v for k, v in config.items() if k != "run"}
    return run_from_records(name, config, facts, history)


def load_wandb_study(project: str, group: str, api: Any = None) -> tuple[list[Run], list[str]]:
    """All finished runs of a W&B group (`project` is ENTITY/PROJECT), and skip warnings."""
    if api is None:
        import wandb  # only needed for this path; it talks to the network

        api = wandb.Api()
    runs = [
        run_from_wandb(r.name, dict(r.config), dict(r.summary), r.scan_history())
        for r in api.runs(project, filters={"group": group})
    ]
    if not runs:
        raise FileNotFoundError(f"no runs found in W&B {project} group {group}")
    return keep_finished(runs)
