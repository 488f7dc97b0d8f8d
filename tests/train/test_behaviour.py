"""Each optim= choice trains as it did before train.py was split into training/ (issue 12).

The records in tests/train/behaviour/ were made at the commit before the split; on the machine
that made them the metrics are bit-identical. Floats are compared to 1e-6 relative so that a CPU
with other vector kernels (summation order) does not fail a behaviour that did not change.
"""

from __future__ import annotations

import json
import math

import pytest

from optim.registry import OPTIMIZERS
from tests.train.behaviour.record import HERE, SETTINGS, run


def same(expected, actual) -> bool:
    if isinstance(expected, float) and isinstance(actual, float):
        return math.isclose(expected, actual, rel_tol=1e-6, abs_tol=1e-9)
    return expected == actual


def test_every_optimizer_has_a_record():
    assert set(SETTINGS) == set(OPTIMIZERS)


@pytest.mark.parametrize("optim", list(SETTINGS))
def test_metrics_equal_the_pre_split_record(tmp_path, corpus_dir, optim):
    expected = [json.loads(line) for line in (HERE / f"{optim}.jsonl").read_text().splitlines()]
    actual = run(optim, tmp_path, corpus_dir)
    assert len(actual) == len(expected)
    for want, got in zip(expected, actual, strict=True):
        assert want.keys() == got.keys(), (want["step"], set(want) ^ set(got))
        diff = {k: (want[k], got[k]) for k in want if not same(want[k], got[k])}
        assert not diff, f"{optim} at step {want['step']} ({want['event']}): {diff}"
