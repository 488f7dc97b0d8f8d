"""Training throughput: tokens/s, MFU and where a step's time goes, for any train.py config.

    python scripts/bench_train.py model=gpt2-tiny dtype=bfloat16 compile=true --steps 30

Prints three things for the same model and batch:
  1. the time split of one training step: data, forward+backward, optimizer;
  2. a plain nanoGPT-style loop (batch already in memory, no logging, no checks): the baseline;
  3. train.py itself, run as a user runs it, read from its metrics.jsonl.
The ratio (3) / (2) is the overhead the repo's loop adds; it should be ~1.0.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


from configs.schema import TrainConfig, register_configs  # noqa: E402
from data.batches import TokenWindows, load_split  # noqa: E402
from model.gpt import GPT  # noqa: E402
from model.mfu import dtype_name, mfu, peak_flops, peak_source  # noqa: E402
from training.build import autocast_context, resolve_dtype  # noqa: E402
from training.distributed import pick_device  # noqa: E402


def load_config(overrides: list[str]) -> TrainConfig:
    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return OmegaConf.to_object(compose("train", overrides=overrides))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def build_step_pieces(cfg: TrainConfig):
    """(device, raw model, model to call, optimizer, autocast context factory) as train.py
    builds them."""
    device = pick_device(cfg.device, 0)
    torch.manual_seed(cfg.seed)
    raw = GPT(cfg.model).to(device)
    model = torch.compile(raw) if cfg.compile else raw
    tokens_per_step = cfg.batch_size * cfg.block_size
    opt = cfg.optim.build(raw, device=device, estimation_tokens=tokens_per_step)
    dtype = resolve_dtype(cfg.dtype.value, device)
    autocast = autocast_context(device, dtype)
    return device, raw, model, opt, autocast


def split_step_time(cfg: TrainConfig, steps: int, warmup: int) -> dict[str, float]:
    """Median seconds per step spent in data, forward+backward and the optimizer."""
    device, raw, model, opt, autocast = build_step_pieces(cfg)
    windows = TokenWindows(
        load_split(REPO / cfg.data.dir, "train"), cfg.block_size, cfg.seed, "train"
    )
    micro = cfg.micro_batch_size or cfg.batch_size
    accum = cfg.batch_size // micro
    timings: dict[str, list[float]] = {"data": [], "forward_backward": [], "optimizer": []}
    for step in range(warmup + steps):
        t_data = t_compute = 0.0
        for micro_step in range(accum):
            t0 = time.perf_counter()
            x, y = windows.micro_batch(step, cfg.batch_size, micro, micro_step)
            x, y = x.to(device), y.to(device)
            sync(device)
            t1 = time.perf_counter()
            with autocast():
                _, loss = model(x, y)
            (loss / accum).backward()
            sync(device)
            t_data += t1 - t0
            t_compute += time.perf_counter() - t1
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(raw.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad()
        sync(device)
        if step >= warmup:
            timings["data"].append(t_data)
            timings["forward_backward"].append(t_compute)
            timings["optimizer"].append(time.perf_counter() - t2)
    return {k: statistics.median(v) for k, v in timings.items()}


def plain_loop_tokens_per_s(cfg: TrainConfig, steps: int, warmup: int) -> float:
    """nanoGPT's loop at its barest: fixed in-memory batch, forward, backward, clip, step."""
    device, raw, model, opt, autocast = build_step_pieces(cfg)
    x = torch.randint(0, cfg.model.vocab_size, (cfg.batch_size, cfg.block_size), device=device)
    times = []
    for step in range(warmup + steps):
        t0 = time.perf_counter()
        with autocast():
            _, loss = model(x, x)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(raw.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad()
        sync(device)
        if step >= warmup:
            times.append(time.perf_counter() - t0)
    return cfg.batch_size * cfg.block_size / statistics.median(times)


def train_py_tokens_per_s(overrides: list[str], steps: int, warmup: int) -> float:
    """train.py as a user runs it; median tokens/s of the steps after warmup."""
    with tempfile.TemporaryDirectory() as run_dir:
        cmd = [
            sys.executable, "train.py", f"hydra.run.dir={run_dir}", *overrides,
            f"max_steps={warmup + steps}", "log_interval=1", f"eval_interval={10**9}",
            f"ckpt_interval={10**9}", "resume=never", "wandb.mode=disabled",
        ]  # fmt: skip
        subprocess.run(cmd, cwd=REPO, check=True, capture_output=True)
        lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
        records = [r for r in map(json.loads, lines) if r["event"] == "train"]
    return statistics.median(r["tokens_per_s"] for r in records[warmup:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("overrides", nargs="*", help="train.py overrides, e.g. model=gpt2-mini")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps (compile, caches)")
    args = parser.parse_args()
    cfg = load_config(args.overrides)
    device = pick_device(cfg.device, 0)
    dtype = resolve_dtype(cfg.dtype.value, device)
    model = GPT(cfg.model)
    flops_per_token = model.flops_per_token(cfg.block_size)
    tokens_per_step = cfg.batch_size * cfg.block_size
    print(
        f"{cfg.model.name}: {model.num_params() / 1e6:.1f}M params, optim={cfg.optim.name}, "
        f"batch {cfg.batch_size} x {cfg.block_size}, dtype={cfg.dtype.value} "
        f"({dtype_name(dtype)}), compile={cfg.compile}, "
        f"{device}, torch threads {torch.get_num_threads()}"
    )
    del model

    split = split_step_time(cfg, args.steps, args.warmup)
    total = sum(split.values())
    print("time split of a step (median):")
    for part, seconds in split.items():
        print(f"  {part:<17} {1000 * seconds:8.1f} ms  {100 * seconds / total:5.1f}%")

    peak = peak_flops(device, dtype)
    print(f"MFU against the {dtype_name(dtype)} dense peak of {device.type}: {peak / 1e9:,.0f} "
          f"GFLOP/s ({peak_source(device, dtype)})")  # fmt: skip
    plain = plain_loop_tokens_per_s(cfg, args.steps, args.warmup)
    ours = train_py_tokens_per_s(args.overrides, args.steps, args.warmup)
    for name, tps in (("plain nanoGPT-style loop", plain), ("train.py", ours)):
        util = mfu(flops_per_token, tps, 1, peak)
        util_text = f", MFU {100 * util:.1f}%" if util is not None else ""
        ms_per_step = tokens_per_step / tps * 1000
        print(f"{name:<25} {tps:10,.0f} tokens/s ({ms_per_step:.0f} ms/step{util_text})")
    print(f"train.py / plain loop: {ours / plain:.3f}")


if __name__ == "__main__":
    main()
