"""Run a comparison study: every optimizer over its own lr grid, at several horizons and seeds.

    python scripts/run_study.py quick              # the README's first command: a few minutes
    python scripts/run_study.py cpu --dry-run      # print the Hydra multirun commands only
    python scripts/run_study.py cpu -- hydra/launcher=slurm   # extra overrides for every run

A study is a yaml in configs/study/: the corpus to prepare, overrides shared by all runs, the
horizons (each run's max_steps, its schedule fully decayed there), the seeds and, per optimizer,
its lr grid and any extra knobs. The engine is Hydra multirun: one `train.py -m` sweep per
optimizer and knob setting, landing in
runs/study/<name>/<optimizer>/<knobs>/lr<lr>_steps<n>_seed<s>/.
Re-running skips finished runs (resume=auto finds their final checkpoint) and continues
interrupted ones. Then scripts/analyze_study.py writes the report and figures.
"""

from __future__ import annotations

import argparse
import itertools
import subprocess
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from study.runs import load_study as load_runs  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
STUDIES = REPO / "configs" / "study"


def load_study(name: str):
    path = Path(name) if name.endswith(".yaml") else STUDIES / f"{name}.yaml"
    if not path.is_file():
        choices = ", ".join(sorted(p.stem for p in STUDIES.glob("*.yaml")))
        raise SystemExit(f"error: no study {name!r}: choose one of {choices} or give a yaml path")
    return OmegaConf.load(path)


def knob_settings(knobs: dict) -> list[list[str]]:
    """The cartesian product of an optimizer's non-lr knobs, as lists of overrides."""
    if not knobs:
        return [[]]
    keys = list(knobs)
    values = [v if isinstance(v, list) else [v] for v in (knobs[k] for k in keys)]
    return [
        [f"{k}={v}" for k, v in zip(keys, combo, strict=True)]
        for combo in itertools.product(*values)
    ]


def sweep_command(
    study, study_dir: Path, optim_name: str, lrs, horizons, seeds, knobs: list[str], extra
) -> list[str]:
    """One Hydra multirun over lr x horizon x seed for one optimizer and knob setting."""
    knob_dir = knob_dir_name(knobs)
    joined = lambda values: ",".join(str(v) for v in values)
    return [
        sys.executable, "train.py", "-m", f"optim={optim_name}", f"optim.lr={joined(lrs)}",
        f"max_steps={joined(horizons)}", f"seed={joined(seeds)}", *knobs, *study.common,
        f"wandb.group={study.name}", "resume=auto",
        f"hydra.sweep.dir={study_dir / optim_name / knob_dir}",
        "hydra.sweep.subdir=lr${optim.lr}_steps${max_steps}_seed${seed}",
        *extra,
    ]  # fmt: skip


def run_sweep(cmd: list[str], dry_run: bool) -> None:
    if dry_run:
        print(" ".join(repr(c) if "$" in c or " " in c else c for c in cmd[1:]))
        return
    print(f"[study] {' '.join(cmd[2:8])} ...", flush=True)
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        sys.stderr.write(result.stdout[-3000:] + result.stderr[-3000:])
        raise SystemExit(f"error: a sweep failed ({' '.join(cmd[2:8])}); see the output above")


def knob_dir_name(knobs: list[str]) -> str:
    return "_".join(knobs).replace("optim.", "").replace("=", "") or "default"


def best_setting(study, study_dir: Path, optim_name: str, settings: list[list[str]]):
    """(lr, knobs) of the tuning run (tune horizon and seed) with the lowest final val loss."""
    runs, _ = load_runs(study_dir / optim_name)
    tuned = [r for r in runs if r.max_steps == study.tune.horizon and r.seed == study.tune.seed]
    if not tuned:
        raise SystemExit(f"error: no finished tuning runs under {study_dir / optim_name}")
    best = min(tuned, key=lambda r: r.final_loss)
    by_dir = {knob_dir_name(knobs): knobs for knobs in settings}
    return best.lr, by_dir[Path(best.name).parts[0]]


def run_study(study, study_dir: Path, extra: list[str], dry_run: bool) -> None:
    """Per optimizer: tune (lr, knobs) at one horizon and seed if the study says so, then run
    the chosen setting at every horizon and seed; without `tune`, the whole grid everywhere."""
    for optim_name, grid in study.optimizers.items():
        grid = OmegaConf.to_container(grid)
        lrs = grid.pop("lr")
        settings = knob_settings(grid)
        if "tune" not in study:
            for knobs in settings:
                cmd = sweep_command(study, study_dir, optim_name, lrs, study.horizons,
                                    study.seeds, knobs, extra)  # fmt: skip
                run_sweep(cmd, dry_run)
            continue
        # Tuning and final runs share one tree: the tuned setting's run at the tuning horizon and
        # seed is then found finished and not run twice.
        for knobs in settings:
            cmd = sweep_command(study, study_dir, optim_name, lrs, [study.tune.horizon],
                                [study.tune.seed], knobs, extra)  # fmt: skip
            run_sweep(cmd, dry_run)
        if dry_run:
            print(f"# then {optim_name}'s best (lr, knobs) at every horizon and seed")
            continue
        lr, knobs = best_setting(study, study_dir, optim_name, settings)
        print(f"[study] {optim_name}: tuned lr={lr} {' '.join(knobs)}", flush=True)
        cmd = sweep_command(study, study_dir, optim_name, [lr], study.horizons,
                            study.seeds, knobs, extra)  # fmt: skip
        run_sweep(cmd, dry_run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("study", help="a name in configs/study/ or a yaml path")
    parser.add_argument("--out", type=Path, help="study dir (default runs/study/<name>)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("--skip-analysis", action="store_true")
    parser.add_argument("extra", nargs="*", help="overrides for every run, after --")
    args = parser.parse_args()
    study = load_study(args.study)
    study_dir = (args.out or REPO / "runs" / "study" / study.name).resolve()
    prepare = [sys.executable, "-m", "data.prepare", f"data={study.data}"]
    started = time.time()
    if args.dry_run:
        print(" ".join(prepare[1:]))
    else:
        subprocess.run(prepare, cwd=REPO, check=True)
    run_study(study, study_dir, args.extra, args.dry_run)
    if args.dry_run:
        return
    print(f"[study] runs done in {(time.time() - started) / 60:.1f} min under {study_dir}")
    if not args.skip_analysis:
        analysis = [sys.executable, "scripts/analyze_study.py", str(study_dir)]
        subprocess.run(analysis, cwd=REPO, check=True)


if __name__ == "__main__":
    main()
