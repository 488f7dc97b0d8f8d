"""A checkpoint is data, never code; secrets never reach the run directory."""

from __future__ import annotations

import os
import shutil
import zipfile

import torch

from tests.conftest import run_train
from tests.reliability.conftest import (
    REFERENCE,
    assert_one_line_error,
    checkpoint_dir,
    latest_step,
)

SECRET = "some-secret-0123456789abcdef0123456789abcdef"  # W&B wants 40+ characters


class Payload:
    """Unpickling this runs a shell command that creates `marker`."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_resume_refuses_a_malicious_pickle_and_never_runs_it(tmp_path, corpus_dir, reference_run):
    run, marker = tmp_path / "run", tmp_path / "payload-ran"
    shutil.copytree(reference_run, run)
    planted = checkpoint_dir(run, latest_step(run)) / "optimizer.pt"
    torch.save({"optimizer": Payload(marker)}, planted)
    with zipfile.ZipFile(planted) as archive:  # the planted pickle really calls os.system
        pickled = next(archive.read(n) for n in archive.namelist() if n.endswith("data.pkl"))
    assert b"system" in pickled

    proc = run_train(run, corpus_dir, *REFERENCE, "max_steps=14", check=False)
    assert_one_line_error(proc, f"refusing {planted}: not a plain tensor checkpoint")
    assert not marker.exists()


def test_wandb_api_key_reaches_no_file_of_the_run(tmp_path, corpus_dir):
    run = tmp_path / "run"
    env = {
        "WANDB_API_KEY": SECRET,
        "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"),
        "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"),
        "WANDB_DATA_DIR": str(tmp_path / "wandb-data"),
    }
    proc = run_train(
        run, corpus_dir, "max_steps=2", "ckpt_interval=1", "wandb.mode=offline", env=env
    )
    files = [path for path in tmp_path.rglob("*") if path.is_file()]
    assert any(path.suffix == ".wandb" for path in files)  # W&B's offline run is checked too
    assert [path for path in files if SECRET.encode() in path.read_bytes()] == []
    assert SECRET not in proc.stdout + proc.stderr
