"""Step seconds with torch.compile's one-time compilation kept apart.

A study compares optimizers in wall-clock, so a step's seconds must not include compiling: the
first step of every process (and the first Hessian refresh, the first compiled optimizer step)
traces and compiles graphs for tens of seconds, which would charge the first run of each sweep,
and each resumed segment, time the others are not charged. A step during which torch._dynamo
made a new graph is charged what the next step without compilation takes; the excess goes to
`compile_s`, reported apart.
"""

from __future__ import annotations

import time

import torch._dynamo.utils as dynamo_utils


def compiled_graphs() -> int:
    """Graphs torch._dynamo has compiled in this process so far."""
    return dynamo_utils.counters["stats"].get("unique_graphs", 0)


class StepClock:
    """`start()` before a step, `stop()` after it: (seconds charged to the step, compile seconds).

    A compiling step is held back and settled by the next steady step; until then it is charged
    nothing, so at most a few steps' seconds are in flight at any time. `pause()`/`resume()`
    leave out a part timed by another clock (the Hessian refresh inside a training step).
    """

    def __init__(self) -> None:
        self._held: list[float] = []  # raw seconds of compiling steps not yet settled
        self._elapsed = 0.0
        self._new_graphs = 0
        self._since = 0.0
        self._graphs_at = 0
        self.last_seconds = 0.0  # raw seconds of the last step, compiling or not

    def start(self) -> None:
        self._elapsed, self._new_graphs = 0.0, 0
        self.resume()

    def pause(self) -> None:
        self._elapsed += time.perf_counter() - self._since
        self._new_graphs += compiled_graphs() - self._graphs_at

    def resume(self) -> None:
        self._graphs_at = compiled_graphs()
        self._since = time.perf_counter()

    def stop(self) -> tuple[float, float]:
        self.pause()
        seconds = self.last_seconds = self._elapsed
        if self._new_graphs > 0:
            self._held.append(seconds)
            return 0.0, 0.0
        compile_s = sum(max(0.0, held - seconds) for held in self._held)
        charged = seconds * (1 + len(self._held))
        self._held.clear()
        return charged, compile_s
