"""The study plan: per-horizon tuning, grids grown past a winning edge, rho by win rate."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

from study.config import StudyConfig, StudyConfigError, TuneConfig, load_study_config
from study.plan import Progress, RunSpec, next_runs, stages
from study.runs import Curve, Run


def fake_run(spec: RunSpec, loss: float, win_rate: float | None = None) -> Run:
    steps = np.array([0.0, spec.horizon])
    curve = Curve(steps, steps, steps, steps, np.array([5.0, loss]))
    rate = None if win_rate is None else Curve(steps, steps, steps, steps, np.full(2, win_rate))
    return Run(spec.relative_dir, "m", spec.optimizer, spec.lr, spec.horizon, spec.seed,
               tuple(sorted((k.removeprefix("optim."), v) for k, v in spec.knobs)), curve, rate,
               0.0, 0.0, {})  # fmt: skip


def study(**overrides) -> StudyConfig:
    fields = {"name": "t", "data": "shakespeare", "horizons": [100, 400], "seeds": [0, 1, 2],
              "optimizers": {"adamw": {"lr": [1e-3, 3e-3, 1e-2]}}, "tune": TuneConfig(),
              **overrides}  # fmt: skip
    return StudyConfig(**fields)


def drive(config: StudyConfig, loss_of, win_rate_of=lambda spec: None) -> dict[RunSpec, Run]:
    """Run the plan to the end with `loss_of(spec)` as every run's final loss."""
    done: dict[RunSpec, Run] = {}
    plan, progress = stages(config), Progress()
    for _ in range(100):
        ready, all_done = next_runs(config, plan, done.get, progress)
        if all_done:
            return done
        for spec in ready:
            done[spec] = fake_run(spec, loss_of(spec), win_rate_of(spec))
    raise AssertionError("the plan never finished")


def test_each_horizon_is_tuned_on_its_own_then_run_on_every_seed():
    best = {100: 1e-2, 400: 3e-3}  # the best lr shrinks with the horizon
    done = drive(study(), lambda s: abs(np.log(s.lr / best[s.horizon])) + 1)
    for horizon, lr in best.items():
        chosen = {s.seed for s in done if s.horizon == horizon and s.lr == lr}
        assert chosen == {0, 1, 2}
        others = {s for s in done if s.horizon == horizon and s.lr != lr}
        assert all(s.seed == 0 for s in others)  # tuning runs only on the tuning seed


def test_a_grid_edge_that_wins_grows_the_grid_until_the_choice_is_interior():
    done = drive(study(horizons=[100]), lambda s: abs(np.log(s.lr / 0.05)))
    lrs = sorted({s.lr for s in done})
    assert lrs == [1e-3, 3e-3, 1e-2, 0.0333, 0.111]  # grown by the grid's own ratio, twice
    assert {s.seed for s in done if s.lr == 0.0333} == {0, 1, 2}  # chosen, now interior


def test_rho_is_chosen_among_settings_whose_win_rate_lies_in_the_band():
    config = study(
        horizons=[100],
        optimizers={"sophia": {"lr": [1e-3, 3e-3, 1e-2], "optim.rho": [0.05, 0.2, 1.0]}},
    )
    rates = {0.05: 0.02, 0.2: 0.15, 1.0: 0.6}
    losses = {0.05: 1.0, 0.2: 1.1, 1.0: 1.2}  # the lowest loss is outside the band

    def loss_of(spec):
        return losses[dict(spec.knobs)["optim.rho"]] + abs(np.log(spec.lr / 3e-3))

    done = drive(config, loss_of, lambda s: rates[dict(s.knobs)["optim.rho"]])
    chosen = {dict(s.knobs)["optim.rho"] for s in done if s.seed == 1}
    assert chosen == {0.2}


def test_the_records_of_a_previous_session_count_as_done():
    config = study(horizons=[100])
    first = drive(config, lambda s: s.lr)
    ready, all_done = next_runs(config, stages(config), first.get, Progress())
    assert ready == [] and all_done


def test_warmup_is_a_share_of_each_horizon_and_min_lr_a_share_of_each_lr():
    spec = RunSpec("adamw", 3e-3, 400, 0, ())
    overrides = spec.overrides(study(warmup_fraction=0.05, min_lr_ratio=0.1))
    assert "optim.warmup_steps=20" in overrides and "optim.min_lr=0.0003" in overrides


def test_an_optimizers_fixed_overrides_reach_its_runs_but_not_their_directories():
    config = study(
        horizons=[100],
        optimizers={"sophiah": {"lr": [1e-3, 3e-3, 1e-2], "fixed": ["optim.hess_source=fresh"]}},
    )
    done = drive(config, lambda s: abs(np.log(s.lr / 3e-3)))
    for spec in done:
        assert "optim.hess_source=fresh" in spec.overrides(config)
        assert spec.knobs == () and spec.relative_dir.startswith("sophiah/default/")
    with pytest.raises(StudyConfigError, match="optimizers.adamw.fixed must list key=value"):
        study(optimizers={"adamw": {"lr": [1e-3], "fixed": "optim.eps=1e-8"}})


def test_a_typo_in_a_study_yaml_names_the_valid_keys(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(
        textwrap.dedent("""
        name: s
        data: shakespeare
        horizon: [100]
        optimizers: {adamw: {lr: [1e-3]}}
    """)
    )
    with pytest.raises(StudyConfigError, match="horizon.*valid keys: name, data, common, horizons"):
        load_study_config(path)


def test_an_optimizer_without_an_lr_grid_is_refused():
    with pytest.raises(StudyConfigError, match="optimizers.adamw needs an lr grid"):
        study(optimizers={"adamw": {"optim.rho": [1]}})


def test_rho_grows_toward_the_band_when_no_setting_reaches_it():
    config = study(horizons=[100], optimizers={"sophia": {"lr": [1e-3], "optim.rho": [0.1, 0.3]}})

    def win_rate_of(spec):
        return min(0.9, dict(spec.knobs)["optim.rho"] / 4)  # reaches 0.1 only at rho >= 0.4

    done = drive(config, lambda s: 1.0, win_rate_of)
    rhos = sorted({dict(s.knobs)["optim.rho"] for s in done})
    # 0.9 is the first rho in the band; as an edge it is checked against 2.7 (above the band)
    assert rhos == [0.1, 0.3, 0.9, 2.7]
    assert {dict(s.knobs)["optim.rho"] for s in done if s.seed == 2} == {0.9}


def test_the_schedule_runs_named_stages_first_and_optimizers_may_add_horizons():
    config = study(
        optimizers={"adamw": {"lr": [1e-3], "horizons": [50, 100, 400]}, "muon": {"lr": [1e-3]}},
        schedule=["muon@400", "adamw@100"],
    )
    order = [(s.optimizer, s.horizons[0]) for s in stages(config)]
    assert order == [("muon", 400), ("adamw", 100), ("adamw", 50), ("adamw", 400), ("muon", 100)]
    with pytest.raises(StudyConfigError, match="schedule entry 'muon@50'"):
        study(schedule=["muon@50"], optimizers={"muon": {"lr": [1e-3]}})
