"""The compiled path of the update rules: each rule's functional core as one torch.compile graph.

On CPU, an eager foreach step passes over memory once per foreach op (Sophia: about ten), while
torch's fused AdamW makes one pass: at GPT-2 124M shapes the eager Sophia step takes ~4x fused
AdamW's time, the compiled one ~0.9x (scripts/bench_optim.py). So the rules compile by default
(`compiled=None`, "auto") once they hold COMPILE_MIN_ELEMENTS elements or more, where the
one-time cost (measured on this project's CPU machines for GPT-2 124M shapes: ~33 s in a fresh
process, ~5 s when inductor's on-disk cache already holds the kernels) is repaid within a few
hundred steps; smaller models (and the tests' tiny ones) keep the eager foreach step. Where
compile is unavailable or fails, the step falls back to foreach with one warning.

Each body is compiled once per process and input signature (list lengths, shapes, dtypes, the
Python-scalar hyperparameters); learning rates and other values that change step to step go in
as 0-dim tensors, so a schedule never triggers a recompile.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable

import torch
from torch import Tensor

# Elements (over all parameters of an optimizer) from which `compiled=None` compiles the step:
# below it the eager step costs a few milliseconds at most on CPU and compiling does not pay off
# in a short run. gpt2-mini (16M) and larger compile; gpt2-tiny (6.8M) and test models do not.
COMPILE_MIN_ELEMENTS = 1 << 23

_compiled_bodies: dict[Callable, Callable] = {}
_failed_bodies: set[Callable] = set()


def resolve_compiled(compiled: bool | None, foreach: bool | None, params: Iterable[Tensor]) -> bool:
    """Whether a step compiles: an explicit `compiled` wins; None (auto) compiles when the
    parameters hold >= COMPILE_MIN_ELEMENTS elements, unless `foreach=False` asked for the
    single-tensor reference loop."""
    if compiled is not None:
        return compiled
    if foreach is False:
        return False
    return sum(p.numel() for p in params) >= COMPILE_MIN_ELEMENTS


def run_compiled(body: Callable, *args) -> bool:
    """Call torch.compile(body)(*args); False, after one warning per body and process, when
    compile is unavailable or fails (the caller then runs its eager step instead).

    Compilation happens before the graph touches any tensor, so a failure leaves the state as
    it was and the eager step can run in its place.
    """
    if body in _failed_bodies:
        return False
    compiled = _compiled_bodies.get(body)
    if compiled is None:
        compiled = torch.compile(body, fullgraph=True, dynamic=False)
        _compiled_bodies[body] = compiled
    try:
        compiled(*args)
    except Exception as err:  # noqa: BLE001 (any compiler failure means: use the eager step)
        _failed_bodies.add(body)
        reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
        warnings.warn(
            f"torch.compile of the optimizer step failed ({type(err).__name__}: {reason[:200]}); "
            "using the eager foreach step instead (pass compiled=False, or optim.compiled=false, "
            "to skip compiling)",
            RuntimeWarning,
            stacklevel=3,
        )
        return False
    return True


def scalar(value: float, device: torch.device) -> Tensor:
    """A float32 0-dim tensor on `device`: a value that changes between steps, as a graph input."""
    return torch.tensor(value, dtype=torch.float32, device=device)
