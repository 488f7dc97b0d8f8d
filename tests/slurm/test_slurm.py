"""scripts/slurm and the Slurm launcher on a real one-node Slurm (scripts/slurm/local_cluster.sh).

Training runs on CPU with gloo and the tiny model of tests/conftest.py. The module starts the
daemons it needs and stops, by PID, the ones it started.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, TINY_RUN, read_metrics, write_corpus

pytestmark = pytest.mark.slurm

if not (shutil.which("sbatch") and shutil.which("slurmctld") and shutil.which("munged")):
    pytest.skip(
        "Slurm is not installed (run scripts/slurm/local_cluster.sh install)",
        allow_module_level=True,
    )
if os.geteuid() != 0:
    pytest.skip("the local Slurm daemons run as root; run as root", allow_module_level=True)

CLUSTER_SCRIPT = REPO / "scripts" / "slurm" / "local_cluster.sh"
SBATCH_SCRIPT = REPO / "scripts" / "slurm" / "train.sbatch"
STATE_DIR = Path(os.environ.get("SLURM_LOCAL_DIR", "/tmp/slurm-local"))
DAEMONS = ("munged", "slurmctld", "slurmd")
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"}
# Long enough that a signal sent at step 3 lands mid-run (delivery takes up to ~2 s here).
STEPS = 150
TRAIN_ARGS = [*TINY_RUN, "micro_batch_size=2", f"max_steps={STEPS}", "eval_interval=50"]


def _daemon_pid(name: str) -> int | None:
    """PID of a daemon local_cluster.sh started, if it is alive."""
    try:
        pid = int((STATE_DIR / f"{name}.pid").read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def _stop(pids: list[int], timeout_s: float = 10.0) -> None:
    """SIGTERM all at once (each daemon takes ~2 s to exit), then SIGKILL what is left."""
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while pids and time.monotonic() < deadline:
        time.sleep(0.1)
        pids = [pid for pid in pids if _alive(pid)]
    for pid in pids:
        os.kill(pid, signal.SIGKILL)


def _wait_for_no_job_steps(timeout_s: float = 20.0) -> None:
    """Wait for every slurmstepd (ours: this module started slurmd) to exit."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        comms = []
        for comm in Path("/proc").glob("[0-9]*/comm"):
            try:
                comms.append(comm.read_text().strip())
            except OSError:
                continue  # the process ended while we looked
        if "slurmstepd" not in comms:
            return
        time.sleep(0.2)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class Cluster:
    """The running local cluster: submit jobs, read their state, cancel the ones we submitted."""

    def __init__(self, env: dict[str, str], work_dir: Path) -> None:
        self.env = env
        self.work_dir = work_dir
        self.corpus = write_corpus(work_dir / "corpus")
        self.job_ids: list[str] = []

    def run(self, *cmd: str, env: dict[str, str] | None = None) -> str:
        proc = subprocess.run(
            cmd, env={**self.env, **(env or {})}, capture_output=True, text=True, cwd=REPO
        )
        if proc.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
        return proc.stdout

    def submit_training(self, run_dir: Path) -> str:
        """The project's sbatch script: 2 gloo processes on CPU, the tiny model."""
        job_id = self.run(
            "sbatch",
            "--parsable",
            "--cpus-per-task=2",
            f"--chdir={REPO}",
            f"--output={run_dir}.log",
            str(SBATCH_SCRIPT),
            f"data.dir={self.corpus}",
            *TRAIN_ARGS,
            env={"RUN_DIR": str(run_dir), "NPROC_PER_NODE": "2", "DEVICE": "cpu"},
        ).strip()
        self.job_ids.append(job_id)
        return job_id

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job` as a dict (JobState, Restarts, ExitCode, ...)."""
        fields = self.run("scontrol", "show", "job", "--oneliner", job_id).split()
        return dict(field.split("=", 1) for field in fields if "=" in field)

    def wait(self, job_id: str, timeout_s: float = 120.0) -> dict[str, str]:
        """Poll until the job ends (a requeued job passes through PENDING and runs again)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if job["JobState"] in FINAL_STATES:
                return job
            time.sleep(0.2)
        raise AssertionError(f"job {job_id} still {job['JobState']} after {timeout_s} s")

    def cancel_all(self, timeout_s: float = 60.0) -> None:
        if not self.job_ids:
            return
        subprocess.run(["scancel", *self.job_ids], env=self.env, capture_output=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.queued():
            time.sleep(0.2)

    def queued(self) -> bool:
        """Whether any job we submitted is still pending, running or completing."""
        squeue = ["squeue", "-h", "-j", ",".join(self.job_ids)]
        return bool(subprocess.run(squeue, env=self.env, capture_output=True).stdout.strip())


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    running_before = {name for name in DAEMONS if _daemon_pid(name)}
    env = {**os.environ, "SLURM_LOCAL_DIR": str(STATE_DIR)}
    started = subprocess.run(
        [str(CLUSTER_SCRIPT), "start"], env=env, capture_output=True, text=True
    )
    ours = [_daemon_pid(name) for name in DAEMONS if name not in running_before]
    try:
        if started.returncode != 0:
            pytest.fail(f"local Slurm did not start:\n{started.stdout}\n{started.stderr}")
        env.update(
            SLURM_CONF=str(STATE_DIR / "slurm.conf"),
            PYTHON=sys.executable,
            OMP_NUM_THREADS="1",
            HYDRA_FULL_ERROR="0",
        )
        cluster = Cluster(env, tmp_path_factory.mktemp("slurm"))
        yield cluster
        # A job step still running when slurmd stops would hang forever: end them all first.
        cluster.cancel_all()
        if "slurmd" not in running_before:
            _wait_for_no_job_steps()
    finally:
        _stop([pid for pid in ours if pid])


@pytest.fixture(scope="module")
def uninterrupted_run(cluster) -> tuple[Path, dict[str, str]]:
    run_dir = cluster.work_dir / "uninterrupted"
    job_id = cluster.submit_training(run_dir)
    return run_dir, cluster.wait(job_id)


def train_losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["train/loss"] for r in read_metrics(run_dir)}


def test_sbatch_script_trains_on_two_gloo_ranks(uninterrupted_run):
    run_dir, job = uninterrupted_run
    log = Path(f"{run_dir}.log").read_text()
    assert (job["JobState"], job["ExitCode"]) == ("COMPLETED", "0:0"), log
    assert list(train_losses(run_dir)) == list(range(1, STEPS + 1))
    assert json.loads((run_dir / "run.json").read_text())["world_size"] == 2
    assert job["Restarts"] == "0"


def test_usr1_checkpoints_requeues_and_resumes_exactly(cluster, uninterrupted_run):
    run_dir = cluster.work_dir / "interrupted"
    job_id = cluster.submit_training(run_dir)
    deadline = time.monotonic() + 60
    while not (run_dir / "metrics.jsonl").exists() or len(read_metrics(run_dir)) < 3:
        assert cluster.job(job_id)["JobState"] in {"PENDING", "RUNNING"}, "job ended early"
        assert time.monotonic() < deadline, "training did not reach step 3 within 60 s"
        time.sleep(0.1)
    # What Slurm does before the time limit with --signal=B:USR1@N, without the wait.
    cluster.run("scancel", "--signal=USR1", "--batch", job_id)
    job = cluster.wait(job_id)

    log = Path(f"{run_dir}.log").read_text()
    assert (job["JobState"], job["Restarts"]) == ("COMPLETED", "1"), log
    assert "received: checkpoint at step" in log and "restart 1:" in log
    stop_step = int(log.split("received: checkpoint at step ")[1].split()[0])
    assert 3 <= stop_step < STEPS, f"the signal landed at step {stop_step}, not mid-run"
    assert f"resumed from {run_dir}/checkpoints/step_{stop_step:08d}" in log

    reference, resumed = train_losses(uninterrupted_run[0]), train_losses(run_dir)
    assert list(resumed) == list(range(1, STEPS + 1))
    assert resumed == reference


def test_hydra_sweep_runs_one_slurm_job_per_point(cluster):
    sweep_dir = cluster.work_dir / "sweep"
    cluster.run(
        sys.executable,
        "train.py",
        "-m",
        "hydra/launcher=slurm_local",
        f"hydra.sweep.dir={sweep_dir}",
        "hydra.sweep.subdir=${optim.name}",
        f"data.dir={cluster.corpus}",
        *TINY_RUN,
        "max_steps=3",
        "optim=adamw,lion",
    )
    for name in ("adamw", "lion"):
        records = read_metrics(sweep_dir / name)
        assert [r["step"] for r in records] == [1, 2, 3]
    # submitit's per-job folders (<array job id>_<index>): the points ran as Slurm jobs.
    results = list((sweep_dir / ".submitit").glob("*/*_result.pkl"))
    cluster.job_ids.extend({path.parent.name.split("_")[0] for path in results})
    assert len(results) == 2
