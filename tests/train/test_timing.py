"""Step seconds without torch.compile's one-time compilation (training/timing.py)."""

from __future__ import annotations

import pytest

from training import timing


class FakeTime:
    """perf_counter and the compiled-graph count under the test's control."""

    def __init__(self, monkeypatch) -> None:
        self.now, self.graphs = 0.0, 0
        monkeypatch.setattr(timing.time, "perf_counter", lambda: self.now)
        monkeypatch.setattr(timing, "compiled_graphs", lambda: self.graphs)

    def step(self, clock: timing.StepClock, seconds: float, compiles: bool = False):
        clock.start()
        self.now += seconds
        self.graphs += compiles
        return clock.stop()


def test_a_compiling_step_is_charged_the_next_steady_steps_time(monkeypatch):
    fake, clock = FakeTime(monkeypatch), timing.StepClock()
    assert fake.step(clock, 30.0, compiles=True) == (0.0, 0.0)  # held back
    charged, compile_s = fake.step(clock, 1.0)
    assert (charged, compile_s) == pytest.approx((2.0, 29.0))
    assert fake.step(clock, 1.5) == pytest.approx((1.5, 0.0))


def test_a_paused_part_and_its_compilation_stay_out_of_the_step(monkeypatch):
    """The Hessian refresh has its own clock: its compile must not make the step look compiling."""
    fake, clock = FakeTime(monkeypatch), timing.StepClock()
    clock.start()
    fake.now += 1.0
    clock.pause()
    fake.now += 20.0
    fake.graphs += 1  # the refresh compiled its graph
    clock.resume()
    fake.now += 0.5
    assert clock.stop() == pytest.approx((1.5, 0.0))
