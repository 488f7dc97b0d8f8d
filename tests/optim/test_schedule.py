"""The warmup + cosine schedule, both warmup conventions."""

from __future__ import annotations

import pytest

from optim.schedule import warmup_cosine_lr


def test_warmup_from_one_moves_on_the_first_step_and_from_zero_as_the_official_loop():
    kwargs = {"lr": 1.0, "min_lr": 0.1, "warmup_steps": 4, "decay_steps": 20}
    assert [warmup_cosine_lr(t, **kwargs) for t in range(4)] == [0.25, 0.5, 0.75, 1.0]
    official = [warmup_cosine_lr(t, from_zero=True, **kwargs) for t in range(5)]
    assert official == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert warmup_cosine_lr(20, **kwargs) == pytest.approx(0.1)
