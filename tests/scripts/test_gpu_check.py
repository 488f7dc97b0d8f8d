"""scripts/gpu_check.py's CPU smoke mode: every check of the GPU command runs, so it cannot rot
before a GPU is lent."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from optim.registry import OPTIMIZERS
from tests.conftest import REPO


@pytest.mark.slow
def test_smoke_mode_runs_every_check_and_writes_json_and_table(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "scripts/gpu_check.py", "--smoke", "--out", str(tmp_path)]
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, text=True, env=env)
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["smoke"] is True
    assert report["training"]["tokens_per_s"] > 0 and report["training"]["mfu"] is not None
    assert report["ddp"]["backend"] == "gloo" and report["ddp"]["all_reduce_ok"]
    assert set(report["optimizers"]) == set(OPTIMIZERS)  # a new optim= is checked too
    for name, result in report["optimizers"].items():
        assert result["losses_finite"], name
        assert result["step_ms"] > 0 and result["step_x_fused_adamw"] > 0
        has_hessian = "hess_interval" in OPTIMIZERS[name].__dataclass_fields__
        assert (result["refreshes"] > 0) == has_hessian, name
    table = (tmp_path / "gpu_check.md").read_text()
    assert all(f"| {name} |" in table for name in OPTIMIZERS)
