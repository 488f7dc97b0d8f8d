"""What a study runs, in which order, and how each optimizer's setting is chosen.

A study is a list of stages, one per (optimizer, horizon) when tuning per horizon. A stage first
runs its tuning grid (every lr x knob setting on the tuning seed); when those are finished it
picks the best setting, grows the grid if the best value sits on an edge (the same ratio one
step further, so no chosen value is a grid edge), and then runs the chosen setting on every
seed. The runner (scripts/run_study.py) asks `next_runs` for what can start now, so several runs
go side by side and a study resumes wherever it stopped: a run is done when its record is.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from study.config import StudyConfig
from study.runs import Run

# knobs whose values are numbers on a geometric grid and get extended past an edge
EXTENDABLE = ("lr", "optim.rho")


@dataclass(frozen=True)
class RunSpec:
    """One training run of a study: its overrides and where it lives in the study tree."""

    optimizer: str
    lr: float
    horizon: int
    seed: int
    knobs: tuple[tuple[str, object], ...]  # extra overrides of the setting, e.g. optim.rho

    @property
    def knob_dir(self) -> str:
        joined = "_".join(f"{k}{v}" for k, v in self.knobs)
        return joined.replace("optim.", "") or "default"

    @property
    def relative_dir(self) -> str:
        return f"{self.optimizer}/{self.knob_dir}/lr{self.lr}_steps{self.horizon}_seed{self.seed}"

    def overrides(self, study: StudyConfig) -> list[str]:
        warmup = []
        if study.warmup_fraction is not None:
            warmup = [f"optim.warmup_steps={round(study.warmup_fraction * self.horizon)}"]
        if study.min_lr_ratio is not None:
            warmup.append(f"optim.min_lr={float(f'{study.min_lr_ratio * self.lr:.4g}')}")
        return [
            f"optim={self.optimizer}", f"optim.lr={self.lr}", f"max_steps={self.horizon}",
            f"seed={self.seed}", *(f"{k}={v}" for k, v in self.knobs), *study.common,
            *study.optimizers[self.optimizer].get("fixed", []), *warmup,
            f"wandb.group={study.name}",
        ]  # fmt: skip

    def describe(self) -> str:
        knobs = " ".join(f"{k.removeprefix('optim.')}={v}" for k, v in self.knobs)
        return f"{self.optimizer} lr={self.lr}{' ' + knobs if knobs else ''} " \
               f"steps={self.horizon} seed={self.seed}"  # fmt: skip


@dataclass
class Stage:
    """One optimizer at one horizon (or at all horizons, when tuned once)."""

    optimizer: str
    horizons: tuple[int, ...]  # the horizons its chosen setting runs at
    tune_horizon: int | None  # where it is tuned; None: no tuning, the whole grid everywhere
    grid: dict[str, list]  # "lr" and knob override keys -> values (growing when extended)
    extensions: dict[tuple[str, str], int] = field(default_factory=dict)  # (key, side) -> count


def _values(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def stages(study: StudyConfig) -> list[Stage]:
    """The study's stages in run order: `schedule` ("optimizer@horizon" entries) first, then
    the rest in yaml order of optimizers, by optimizer or by horizon (`order`)."""
    result = []
    for name, raw in study.optimizers.items():
        grid = {key: _values(v) for key, v in raw.items() if key not in ("horizons", "fixed")}
        horizons = tuple(raw.get("horizons") or study.horizons)  # an optimizer's own horizons
        if study.tune is None:
            result.append(Stage(name, horizons, None, grid))
        elif study.tune.per_horizon:
            result += [Stage(name, (h,), h, {k: list(v) for k, v in grid.items()})
                       for h in horizons]  # fmt: skip
        else:
            result.append(Stage(name, horizons, study.tune.horizon, grid))
    if study.order == "horizon":
        result.sort(key=lambda s: s.horizons[0])  # stable: yaml order within a horizon
    scheduled = {entry: i for i, entry in enumerate(study.schedule)}
    last = len(scheduled)
    result.sort(key=lambda s: scheduled.get(f"{s.optimizer}@{s.horizons[0]}", last))
    return result


def grid_settings(stage: Stage) -> list[tuple[float, tuple[tuple[str, object], ...]]]:
    """Every (lr, knobs) of the stage's current grid."""
    knob_keys = [k for k in stage.grid if k != "lr"]
    settings = [((), lr) for lr in stage.grid["lr"]]
    for key in knob_keys:
        settings = [(knobs + ((key, v),), lr) for knobs, lr in settings for v in stage.grid[key]]
    return [(lr, knobs) for knobs, lr in settings]


def tuning_runs(stage: Stage, study: StudyConfig) -> list[RunSpec]:
    if stage.tune_horizon is None:
        return [RunSpec(stage.optimizer, lr, h, seed, knobs) for lr, knobs in grid_settings(stage)
                for h in stage.horizons for seed in study.seeds]  # fmt: skip
    seed = study.tune.seed
    return [RunSpec(stage.optimizer, lr, stage.tune_horizon, seed, knobs)
            for lr, knobs in grid_settings(stage)]  # fmt: skip


@dataclass(frozen=True)
class Choice:
    lr: float
    knobs: tuple[tuple[str, object], ...]
    loss: float
    win_rate: float | None  # mean post-warmup win rate of the chosen tuning run (Sophia)
    in_band: bool | None  # whether that win rate lies in tune.win_rate_band (None: no win rate)


def post_warmup_win_rate(run: Run) -> float | None:
    """Mean win rate over the train lines after the warmup (None without a win rate)."""
    if run.win_rate is None:
        return None
    warmup = dict(run.knobs).get("warmup_steps", 0) or 0
    values = [v for s, v in zip(run.win_rate.steps, run.win_rate.value, strict=True)
              if s > warmup and math.isfinite(v)]  # fmt: skip
    return sum(values) / len(values) if values else None


def choose(runs: Sequence[tuple[RunSpec, Run]], band: Sequence[float]) -> Choice:
    """The tuning run with the lowest final loss; where runs report a win rate (Sophia), only
    among those whose post-warmup win rate lies in `band`, if any does."""
    rated = [(spec, run, post_warmup_win_rate(run)) for spec, run in runs]
    in_band = [r for r in rated if r[2] is not None and band[0] <= r[2] <= band[1]]
    pool = in_band or rated
    spec, run, win_rate = min(pool, key=lambda r: r[1].final_loss)
    flag = None if win_rate is None else bool(in_band)
    return Choice(spec.lr, spec.knobs, run.final_loss, win_rate, flag)


def extend_grid(
    stage: Stage, choice: Choice, max_extensions: int, band: Sequence[float] = (0.0, 1.0)
) -> bool:
    """Add the next value past an edge where the choice sits on it; True if the grid grew.

    When no setting reached the win-rate band, rho grows toward it instead (a higher rho
    clips less): up when the chosen win rate is below the band, down when above."""
    grew = False
    chosen = {"lr": choice.lr, **dict(choice.knobs)}
    toward_band = None
    if choice.in_band is False and choice.win_rate is not None:
        toward_band = "high" if choice.win_rate < band[0] else "low"
    for key in EXTENDABLE:
        values = sorted(stage.grid.get(key, []))
        if len(values) < 2 or chosen.get(key) not in values:
            continue
        for side, index, neighbour in (("low", 0, 1), ("high", -1, -2)):
            used = stage.extensions.get((key, side), 0)
            at_edge = chosen[key] == values[index]
            if key == "optim.rho" and toward_band is not None:
                at_edge = side == toward_band
            if not at_edge or used >= max_extensions:
                continue
            ratio = values[index] / values[neighbour]
            stage.grid[key].append(float(f"{values[index] * ratio:.3g}"))
            stage.extensions[(key, side)] = used + 1
            grew = True
    return grew


def seed_runs(stage: Stage, choice: Choice, study: StudyConfig) -> list[RunSpec]:
    return [RunSpec(stage.optimizer, choice.lr, h, seed, choice.knobs)
            for h in stage.horizons for seed in study.seeds]  # fmt: skip


@dataclass
class Progress:
    """Where each stage stands, rebuilt from the finished records on every call."""

    choices: dict[int, Choice] = field(default_factory=dict)  # stage index -> chosen setting


def next_runs(
    study: StudyConfig,
    plan: list[Stage],
    finished: Callable[[RunSpec], Run | None],
    progress: Progress,
) -> tuple[list[RunSpec], bool]:
    """(runs that can start now in priority order, whether the whole study is done).

    `finished(spec)` returns the finished Run of a spec, or None. A stage's seed runs become
    ready once its tuning runs are finished and no grid extension is pending.
    """
    ready: list[RunSpec] = []
    all_done = True
    for index, stage in enumerate(plan):
        stage_ready = _stage_ready(index, stage, study, finished, progress)
        ready += stage_ready
        all_done = all_done and not stage_ready
    return _unique(ready), all_done


def _stage_ready(
    index: int,
    stage: Stage,
    study: StudyConfig,
    finished: Callable[[RunSpec], Run | None],
    progress: Progress,
) -> list[RunSpec]:
    """The stage's runs that can start now; empty when the stage is done."""
    while True:
        tuning = tuning_runs(stage, study)
        pending = [spec for spec in tuning if finished(spec) is None]
        if pending or stage.tune_horizon is None:
            return pending
        choice = choose([(spec, finished(spec)) for spec in tuning], study.tune.win_rate_band)
        # A grown grid's new runs may be finished already (a resumed study): look again.
        band = study.tune.win_rate_band
        if not extend_grid(stage, choice, study.tune.max_extensions, band):
            break
    progress.choices[index] = choice
    return [spec for spec in seed_runs(stage, choice, study) if finished(spec) is None]


def _unique(specs: Iterable[RunSpec]) -> list[RunSpec]:
    seen, result = set(), []
    for spec in specs:
        if spec not in seen:
            seen.add(spec)
            result.append(spec)
    return result
