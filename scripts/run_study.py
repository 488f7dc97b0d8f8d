"""Run a comparison study: every optimizer tuned on its own, at several horizons and seeds.

    python scripts/run_study.py quick                   # the README's first command: minutes
    python scripts/run_study.py cpu-bytes --jobs 2      # two one-thread runs side by side
    python scripts/run_study.py cpu-bytes --dry-run     # what it would run now, nothing run
    python scripts/run_study.py cpu-bytes --records docs/results/cpu-bytes/runs
    python scripts/run_study.py cpu-bytes -- hydra/launcher=slurm   # overrides for every run

A study is a yaml in configs/study/ (schema: study/config.py): the corpus, overrides shared by
all runs, the horizons (each run's max_steps, its schedule fully decayed there), the seeds, the
warmup as a share of each horizon, and per optimizer its lr grid and knobs. With `tune:`, each
optimizer is tuned at every horizon on one seed (its grid grown past an edge that wins), then its
chosen setting runs on every seed (study/plan.py). Runs land in
runs/study/<name>/<optimizer>/<knobs>/lr<lr>_steps<n>_seed<s>/.

`--records DIR` copies each finished run's record (metrics.jsonl, resolved config, run.json,
train.log; never checkpoints) to DIR as it finishes, and counts a run found there as done: a
study can grow over several sessions and machines with its records committed as it goes.
Re-running skips finished runs and continues interrupted ones. Then scripts/analyze_study.py
writes the report and figures.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from anywhere, no install

from study.config import StudyConfig, StudyConfigError, load_study_config  # noqa: E402
from study.plan import Progress, RunSpec, next_runs, stages  # noqa: E402
from study.runs import Run, load_run_dir  # noqa: E402

STUDIES = REPO / "configs" / "study"
RECORD_FILES = ("metrics.jsonl", "run.json", "train.log", ".hydra/config.yaml",
                ".hydra/overrides.yaml")  # fmt: skip


def study_path(name: str) -> Path:
    path = Path(name) if name.endswith(".yaml") else STUDIES / f"{name}.yaml"
    if not path.is_file():
        choices = ", ".join(sorted(p.stem for p in STUDIES.glob("*.yaml")))
        raise SystemExit(f"error: no study {name!r}: choose one of {choices} or give a yaml path")
    return path


def train_command(spec: RunSpec, study: StudyConfig, study_dir: Path, extra: list[str]):
    """One run as a one-job Hydra multirun, so `hydra/launcher=slurm` in `extra` works too."""
    return [
        sys.executable, "train.py", "-m", *spec.overrides(study), "resume=auto",
        f"hydra.sweep.dir={study_dir / spec.optimizer / spec.knob_dir}",
        "hydra.sweep.subdir=" + Path(spec.relative_dir).name, *extra,
    ]  # fmt: skip


class Records:
    """Finished runs, found in the study dir or in the committed records dir."""

    def __init__(self, study_dir: Path, records_dir: Path | None) -> None:
        self.roots = [study_dir] + ([records_dir] if records_dir else [])
        self._cache: dict[RunSpec, Run] = {}

    def finished(self, spec: RunSpec) -> Run | None:
        if spec in self._cache:
            return self._cache[spec]
        for root in self.roots:
            run_dir = root / spec.relative_dir
            if (run_dir / "metrics.jsonl").is_file():
                try:
                    run = load_run_dir(run_dir, name=spec.relative_dir)
                except (ValueError, OSError):
                    continue
                if run.finished:
                    self._cache[spec] = run
                    return run
        return None


def copy_record(spec: RunSpec, study_dir: Path, records_dir: Path) -> None:
    source, target = study_dir / spec.relative_dir, records_dir / spec.relative_dir
    for name in RECORD_FILES:
        if (source / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / name, target / name)


class Runner:
    """Keeps up to `jobs` runs going, in the plan's priority order, printing progress."""

    def __init__(self, study, study_dir, records_dir, extra, jobs, threads) -> None:
        self.study, self.study_dir, self.records_dir = study, study_dir, records_dir
        self.extra, self.jobs, self.threads = extra, jobs, threads
        self.records = Records(study_dir, records_dir)
        self.plan, self.progress = stages(study), Progress()
        self.running: dict[RunSpec, tuple[subprocess.Popen, float]] = {}
        self.done = 0

    def env(self) -> dict[str, str]:
        env = {**os.environ}
        if self.threads:
            env.update(OMP_NUM_THREADS=str(self.threads), TORCHINDUCTOR_COMPILE_THREADS="1")
        return env

    def start(self, spec: RunSpec) -> None:
        log_dir = self.study_dir / spec.relative_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        cmd = train_command(spec, self.study, self.study_dir, self.extra)
        with open(log_dir / "console.log", "a") as console:  # the child keeps its own handle
            process = subprocess.Popen(cmd, cwd=REPO, stdout=console, stderr=subprocess.STDOUT,
                                       env=self.env())  # fmt: skip
        self.running[spec] = (process, time.time())
        print(f"[study] start {spec.describe()}", flush=True)

    def finish(self, spec: RunSpec, process: subprocess.Popen, started: float) -> None:
        del self.running[spec]
        minutes = (time.time() - started) / 60
        run = self.records.finished(spec)
        if process.returncode != 0 or run is None:
            log = self.study_dir / spec.relative_dir / "console.log"
            tail = log.read_text().splitlines()[-15:] if log.is_file() else []
            sys.stderr.write("\n".join(tail) + "\n")
            raise SystemExit(f"error: run failed ({spec.describe()}); its log: {log}")
        if self.records_dir is not None:
            copy_record(spec, self.study_dir, self.records_dir)
        self.done += 1
        print(f"[study] done {spec.describe()}: val loss {run.final_loss:.4f} in "
              f"{minutes:.1f} min | {self.done} finished this session", flush=True)  # fmt: skip

    def report_choices(self, reported: set) -> None:
        for index, choice in self.progress.choices.items():
            if index in reported:
                continue
            reported.add(index)
            stage = self.plan[index]
            knobs = " ".join(f"{k.removeprefix('optim.')}={v}" for k, v in choice.knobs)
            band = ""
            if choice.in_band is not None:
                outside = "" if choice.in_band else " (outside the band)"
                band = f", win rate {choice.win_rate:.2f}{outside}"
            print(f"[study] {stage.optimizer} at {stage.horizons}: chose lr={choice.lr} {knobs}"
                  f" (tuning loss {choice.loss:.4f}{band})", flush=True)  # fmt: skip

    def run(self, dry_run: bool) -> None:
        reported: set[int] = set()
        while True:
            ready, all_done = next_runs(self.study, self.plan, self.records.finished,
                                        self.progress)  # fmt: skip
            self.report_choices(reported)
            if dry_run:
                for spec in ready:
                    cmd = train_command(spec, self.study, self.study_dir, self.extra)
                    print(" ".join(cmd[1:]))
                if not all_done:
                    print("# later: the chosen settings on every seed, grids grown past an edge")
                return
            if all_done and not self.running:
                return
            for spec in ready:
                if len(self.running) >= self.jobs:
                    break
                if spec not in self.running:
                    self.start(spec)
            if not self.running:
                raise SystemExit("error: nothing can run and the study is not done (a bug)")
            self.wait_one()

    def wait_one(self) -> None:
        while True:
            for spec, (process, started) in list(self.running.items()):
                if process.poll() is not None:
                    self.finish(spec, process, started)
                    return
            time.sleep(2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("study", help="a name in configs/study/ or a yaml path")
    parser.add_argument("--out", type=Path, help="study dir (default runs/study/<name>)")
    parser.add_argument("--records", type=Path, help="copy finished records here; count as done")
    parser.add_argument("--jobs", type=int, default=1, help="runs side by side (default 1)")
    parser.add_argument("--threads", type=int, help="OMP threads per run (default: torch's)")
    parser.add_argument("--dry-run", action="store_true", help="print the runs ready now")
    parser.add_argument("--skip-analysis", action="store_true")
    parser.add_argument("extra", nargs="*", help="overrides for every run, after --")
    args = parser.parse_args()
    if args.jobs < 1:
        raise SystemExit("error: --jobs must be >= 1")
    try:
        study = load_study_config(study_path(args.study))
    except StudyConfigError as err:
        raise SystemExit(f"error: {err}") from None
    study_dir = (args.out or REPO / "runs" / "study" / study.name).resolve()
    records = args.records.resolve() if args.records else None
    prepare = [sys.executable, "-m", "data.prepare", f"data={study.data}"]
    started = time.time()
    if args.dry_run:
        print(" ".join(prepare[1:]))
    else:
        subprocess.run(prepare, cwd=REPO, check=True)
    threads = args.threads or (1 if args.jobs > 1 else None)
    Runner(study, study_dir, records, args.extra, args.jobs, threads).run(args.dry_run)
    if args.dry_run:
        return
    print(f"[study] runs done in {(time.time() - started) / 60:.1f} min under {study_dir}")
    if not args.skip_analysis:
        analysis = [sys.executable, "scripts/analyze_study.py", str(records or study_dir)]
        subprocess.run(analysis, cwd=REPO, check=True)


if __name__ == "__main__":
    main()
