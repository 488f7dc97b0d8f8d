"""A 2-rank Hessian estimate equals the 1-rank estimate of the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO

WORKER = "tests/optim/ddp_hessian_worker.py"


def run_worker(out_path, nproc: int) -> dict:
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [*launcher, WORKER, str(out_path)], cwd=REPO, capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, f"worker failed:\n{proc.stdout}\n{proc.stderr}"
    return torch.load(out_path)


@pytest.mark.slow
def test_two_ranks_estimate_the_same_hessian_as_one_rank_with_accumulation(tmp_path):
    one = run_worker(tmp_path / "one.pt", nproc=1)
    two = run_worker(tmp_path / "two.pt", nproc=2)
    for name in ("gnb", "hutchinson"):
        assert one[name]["stats"]["skipped"] == two[name]["stats"]["skipped"] == 0
        assert one[name]["stats"]["loss"] == pytest.approx(two[name]["stats"]["loss"], rel=1e-6)
        assert one[name]["stats"]["flops"] == two[name]["stats"]["flops"]
        for single, split in zip(one[name]["hessian"], two[name]["hessian"], strict=True):
            assert single.abs().sum() > 0
            torch.testing.assert_close(split, single, rtol=1e-5, atol=1e-9)
