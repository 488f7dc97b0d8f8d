"""Time one optimizer step on GPT-2 124M parameter shapes, against torch's fused AdamW.

    python scripts/bench_optim.py --device cpu --steps 10 --warmup 3

Every optimizer steps the same parameters with fixed random gradients; second-order optimizers
get one Hessian refresh first, so h ≠ 0 (a realistic, not a sign-only, Sophia step). "default"
rows are the constructors with no implementation flag, as users and train.py get them (at these
shapes: the compiled step, optim/compiled.py); "foreach" rows the eager multi-tensor step
(`compiled=False`). The row "floor: sophia's bytes" is a compiled pass that moves exactly the
memory a Sophia step moves (reads θ, g, m, h; writes θ, m) with almost no arithmetic: how fast a
Sophia step can be here. The timing is the step alone (no estimator). All optimizers are built
up front and stepped in turn, one step each per round, so background load hits all of them
alike; the table reports the median step, and "first s" the first step, which holds the
one-time compilation (in a fresh process; less when inductor's on-disk cache is warm).
Memory: the bytes of optimizer state, and on CUDA also the step's transient peak
(torch.cuda.max_memory_allocated during the step, above what was allocated before it).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.gpt import GPT, GPTConfig  # noqa: E402
from optim.adahessian import AdaHessian  # noqa: E402
from optim.lion import Lion  # noqa: E402
from optim.sophia import SophiaG, SophiaH  # noqa: E402

TOKENS_PER_STEP = 480 * 1024  # the official global batch, for Sophia's bs


def make_optimizers(include_floor: bool, include_single_tensor: bool) -> dict[str, Callable]:
    """Name -> (params -> (optimizer, step function)). The fused AdamW is the baseline."""

    def adamw(fused: bool) -> Callable:
        def build(params):
            opt = torch.optim.AdamW(params, lr=6e-4, betas=(0.9, 0.95), fused=fused,
                                    foreach=None if fused else True)  # fmt: skip
            return opt, opt.step

        return build

    def sophia(**kwargs) -> Callable:
        def build(params):
            opt = SophiaG(params, lr=6e-4, rho=0.05, weight_decay=0.2, **kwargs)
            opt.update_hessian()
            return opt, lambda: opt.step(bs=TOKENS_PER_STEP)

        return build

    def sophiah(params):
        opt = SophiaH(params, lr=6e-4, rho=0.01, weight_decay=0.2)
        opt.update_hessian([p.grad for p in params])
        return opt, opt.step

    def lion(**kwargs) -> Callable:
        def build(params):
            opt = Lion(params, lr=1e-4, betas=(0.95, 0.98), weight_decay=0.6, **kwargs)
            return opt, opt.step

        return build

    def adahessian(**kwargs) -> Callable:
        def build(params):
            opt = AdaHessian(params, lr=0.15, betas=(0.9, 0.98), weight_decay=1e-4, **kwargs)
            opt.update_hessian([p.grad for p in params])
            return opt, opt.step

        return build

    def memory_floor(params):
        """Sophia's memory traffic (read θ, g, m, h; write θ, m) with almost no arithmetic, as
        one compiled pass: the fastest any Sophia step can be on this device."""
        exp_avgs = [torch.zeros_like(p) for p in params]
        hessians = [torch.rand_like(p) for p in params]
        grads = [p.grad for p in params]

        def stream(ps, gs, ms, hs):
            for param, grad, exp_avg, hessian in zip(ps, gs, ms, hs, strict=True):
                exp_avg.lerp_(grad, 0.035)
                param.sub_(1e-9 * exp_avg * hessian)

        compiled = torch.compile(stream, fullgraph=True, dynamic=False)

        @torch.no_grad()
        def step():
            compiled(params, grads, exp_avgs, hessians)

        return None, step

    builders = {
        "adamw fused": adamw(fused=True),
        "adamw foreach": adamw(fused=False),
        "sophiag default": sophia(),
        "sophiag foreach": sophia(compiled=False),
    }
    if include_single_tensor:  # the official code's per-tensor loop
        builders["sophiag single-tensor"] = sophia(foreach=False)
    if include_floor:
        builders["floor: sophia's bytes"] = memory_floor
    builders["sophiah default"] = sophiah
    builders["lion default"] = lion()
    builders["lion foreach"] = lion(compiled=False)
    builders["adahessian default"] = adahessian()
    builders["adahessian foreach"] = adahessian(compiled=False)
    return builders


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    return sum(
        t.numel() * t.element_size()
        for state in optimizer.state.values()
        for t in state.values()
        if isinstance(t, torch.Tensor)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=10, help="timed steps of each optimizer")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compiles)")
    parser.add_argument("--no-floor", action="store_true", help="skip the memory-floor row")
    parser.add_argument("--no-single-tensor", action="store_true", help="skip the slow loop")
    args = parser.parse_args()

    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    torch.manual_seed(0)
    config = GPTConfig(n_layer=12, n_head=12, n_embd=768, vocab_size=50304, block_size=1024)
    params = list(GPT(config).to(device).parameters())
    for p in params:
        p.grad = torch.randn_like(p)
    numel = sum(p.numel() for p in params)
    print(f"{len(params)} tensors, {numel / 1e6:.1f}M parameters, device {device}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")  # fmt: skip

    builders = make_optimizers(not args.no_floor, not args.no_single_tensor)
    steps, state_mib, step_peak_mib, first_s = {}, {}, {}, {}
    for name, build in builders.items():
        optimizer, steps[name] = build(params)
        for warmup_step in range(max(1, args.warmup)):
            start = time.perf_counter()
            steps[name]()
            sync()
            if warmup_step == 0:
                first_s[name] = time.perf_counter() - start
        state_mib[name] = state_bytes(optimizer) / 2**20 if optimizer is not None else 0.0

    # Interleaved: one step of each optimizer in turn, so background load hits all alike.
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.steps):
        for name, step in steps.items():
            if device.type == "cuda":
                before = torch.cuda.memory_allocated(device)
                torch.cuda.reset_peak_memory_stats(device)
            start = time.perf_counter()
            step()
            sync()
            times[name].append((time.perf_counter() - start) * 1e3)
            if device.type == "cuda":
                peak = torch.cuda.max_memory_allocated(device) - before
                step_peak_mib[name] = max(step_peak_mib.get(name, 0.0), peak / 2**20)

    baseline = statistics.median(times["adamw fused"])
    extra = f" {'step peak MiB':>14s}" if device.type == "cuda" else ""
    print(f"{'optimizer':24s} {'ms/step':>9s} {'min ms':>8s} {'x fused AdamW':>14s} "
          f"{'first s':>8s} {'state MiB':>10s}{extra}")  # fmt: skip
    for name, values in times.items():
        ms = statistics.median(values)
        peak = f" {step_peak_mib[name]:14.0f}" if device.type == "cuda" else ""
        print(f"{name:24s} {ms:9.1f} {min(values):8.1f} {ms / baseline:14.2f} "
              f"{first_s[name]:8.1f} {state_mib[name]:10.0f}{peak}")  # fmt: skip


if __name__ == "__main__":
    main()
