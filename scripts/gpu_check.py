"""Every CUDA path of the repo in one command, for the day a GPU is lent (one H100/H200, < 8 min).

    python scripts/gpu_check.py --out runs/gpu_check           # on the GPU host
    python scripts/gpu_check.py --smoke --out /tmp/gpu_check   # CPU, tiny model, seconds (CI)

Needs no data and no network: it writes a synthetic corpus (uniform random tokens; throughput
does not depend on what the tokens say). Four checks, each timed against a baseline in the same
run:
  1. training: train.py on gpt2-small, bf16 autocast, torch.compile, as users run it; tokens/s
     and MFU against the device's peak (model/mfu.py); and a forward/backward of the same model
     forced onto the flash SDPA kernel (fails loudly where flash cannot run);
  2. ddp: `torchrun --nproc_per_node=1` over nccl (gloo in smoke mode): a process group, an
     all-reduce and a DDP forward/backward/step;
  3. optimizers: every optim= choice (optim.config.OPTIMIZERS: adamw, lion, sophia, sophiah,
     adahessian, and any added later) a few steps on gpt2-small with a Hessian refresh (the
     Hutchinson pass runs eager under the math SDPA backend, as optim/hessian.py does), the
     optimizer step timed against fused AdamW's, the first step (compilation) apart, the
     refresh's seconds, and the peak CUDA memory of the whole loop per optimizer;
  4. one JSON (`<out>/gpu_check.json`) and a table (`<out>/gpu_check.md`, also printed).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.attention import SDPBackend, sdpa_kernel

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from model.gpt import GPT, GPTConfig  # noqa: E402
from model.mfu import peak_flops  # noqa: E402
from optim.registry import OPTIMIZERS  # noqa: E402
from training.distributed import Distributed  # noqa: E402
from training.hessian_pass import EstimationBatch, run_estimate  # noqa: E402

GPT2_SMALL = GPTConfig(
    name="gpt2-small", n_layer=12, n_head=12, n_embd=768, vocab_size=50304, block_size=1024
)
TINY = GPTConfig(name="tiny", n_layer=1, n_head=2, n_embd=32, vocab_size=512, block_size=64)


@dataclasses.dataclass(frozen=True)
class Plan:
    """What one invocation runs: the full GPU check or the CPU smoke version of it."""

    device: str
    model: GPTConfig
    dtype: str
    compile: bool
    batch_size: int  # sequences per step
    block_size: int
    train_steps: int  # train.py steps (the first ones compile)
    optim_steps: int  # steps per optimizer, a refresh after the second (k = 2)
    backend: str  # torch.distributed backend of the DDP check

    def model_overrides(self) -> list[str]:
        return [f"model.{k}={v}" for k, v in dataclasses.asdict(self.model).items()]


FULL = Plan("cuda", GPT2_SMALL, "bfloat16", True, 16, 1024, 40, 6, "nccl")
SMOKE = Plan("cpu", TINY, "float32", False, 4, 32, 3, 4, "gloo")


def write_synthetic_corpus(directory: Path, vocab_size: int, tokens: int) -> Path:
    """train.bin / val.bin / meta.json in data/prepare's format, uniform random token ids."""
    rng = np.random.default_rng(0)
    directory.mkdir(parents=True, exist_ok=True)
    counts = {"train": tokens, "val": max(tokens // 10, 4096)}
    for split, count in counts.items():
        rng.integers(0, vocab_size, size=count, dtype=np.uint16).tofile(directory / f"{split}.bin")
    meta = {"tokenizer": "synthetic", "vocab_size": vocab_size, "dtype": "uint16", "tokens": counts}
    (directory / "meta.json").write_text(json.dumps(meta))
    return directory


def autocast_for(plan: Plan):
    if plan.dtype == "float32":
        return nullcontext
    dtype = getattr(torch, plan.dtype)
    return lambda: torch.autocast(device_type=plan.device, dtype=dtype)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------
# 1. Training throughput through train.py, and the flash kernel


def check_training(plan: Plan, corpus: Path, work: Path) -> dict:
    run_dir = work / "train"
    cmd = [
        sys.executable, "train.py", f"hydra.run.dir={run_dir}", "resume=never",
        f"data.dir={corpus}", *plan.model_overrides(), f"device={plan.device}",
        f"dtype={plan.dtype}", f"compile={str(plan.compile).lower()}",
        f"batch_size={plan.batch_size}", f"block_size={plan.block_size}",
        f"max_steps={plan.train_steps}", "log_interval=1", f"eval_interval={10**9}",
        "eval_iters=1", f"ckpt_interval={10**9}", "wandb.mode=disabled", "optim=adamw",
    ]  # fmt: skip
    started = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, text=True)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["event"] == "train"]
    steady = steps[len(steps) // 2 :]  # the first half holds compilation and warm-up
    mfus = [r["mfu"] for r in steady if r.get("mfu") is not None]
    return {
        "command": " ".join(cmd[1:]),
        "wall_s": time.perf_counter() - started,
        "tokens_per_s": statistics.median(r["tokens_per_s"] for r in steady),
        "mfu": statistics.median(mfus) if mfus else None,
        "peak_flops": peak_flops(torch.device(plan.device)),
        "final_loss": steps[-1]["train/loss"],
    }


def check_flash_attention(plan: Plan) -> dict:
    """A forward/backward of the model with SDPA restricted to the flash kernel (CUDA only)."""
    if plan.device != "cuda":
        return {"flash_sdpa": None, "note": "no flash kernel on CPU"}
    device = torch.device(plan.device)
    model = GPT(plan.model).to(device)
    x = torch.randint(0, plan.model.vocab_size, (2, plan.block_size), device=device)
    try:
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION), autocast_for(plan)():
            _, loss = model(x, x)
        loss.backward()
        sync(device)
    except RuntimeError as err:
        return {"flash_sdpa": False, "error": str(err).splitlines()[0]}
    return {"flash_sdpa": True}


# ---------------------------------------------------------------------------------------------
# 2. torchrun over nccl


def ddp_worker(plan: Plan) -> None:
    """Run under torchrun: process group, all-reduce, one DDP step; prints one JSON line."""
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    device = torch.device(plan.device, local_rank) if plan.device == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=plan.backend)
    value = torch.ones(1, device=device) * (rank + 1)
    dist.all_reduce(value)
    model = torch.nn.parallel.DistributedDataParallel(
        GPT(plan.model).to(device), device_ids=[local_rank] if device.type == "cuda" else None
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(0, plan.model.vocab_size, (2, plan.block_size), device=device)
    with autocast_for(plan)():
        _, loss = model(x, x)
    loss.backward()
    optimizer.step()
    sync(device)
    world = dist.get_world_size()
    result = {
        "backend": dist.get_backend(),
        "world_size": world,
        "all_reduce_ok": value.item() == world * (world + 1) / 2,
        "ddp_loss": loss.item(),
    }
    dist.destroy_process_group()
    if rank == 0:
        print("DDP_RESULT " + json.dumps(result), flush=True)


def check_ddp(plan: Plan, smoke: bool) -> dict:
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
        str(Path(__file__).resolve()), "--ddp-worker", *(["--smoke"] if smoke else []),
    ]  # fmt: skip
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, text=True)
    line = next(x for x in proc.stdout.splitlines() if x.startswith("DDP_RESULT "))
    return {**json.loads(line.partition(" ")[2]), "wall_s": time.perf_counter() - started}


# ---------------------------------------------------------------------------------------------
# 3. Every optimizer: steps, a Hessian refresh, step time vs fused AdamW, peak memory


def optimizer_config(name: str):
    """The optimizer's own defaults, a refresh every 2 steps where it has a Hessian estimate."""
    schema = OPTIMIZERS[name]
    fields = {f.name for f in dataclasses.fields(schema)}
    return schema(**({"hess_interval": 2} if "hess_interval" in fields else {}))


def check_optimizer(name: str, plan: Plan) -> dict:
    device = torch.device(plan.device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    torch.manual_seed(0)
    model = GPT(plan.model).to(device)
    tokens = plan.batch_size * plan.block_size
    opt = optimizer_config(name).build(model, device=device, estimation_tokens=tokens)
    autocast = autocast_for(plan)
    generator = torch.Generator().manual_seed(0)

    def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (plan.batch_size, plan.block_size + 1)
        seq = torch.randint(0, plan.model.vocab_size, shape, generator=generator).to(device)
        return seq[:, :-1], seq[:, 1:]

    def refresh(step: int) -> float:
        x, y = batch(step)
        estimation = EstimationBatch(
            model=model, raw_model=model, micro_batches=lambda: iter([(x, y)]),
            num_micro_batches=1, autocast=autocast, world=Distributed(device=device), seed=0,
            step=step, tokens=tokens,
        )  # fmt: skip
        sync(device)
        started = time.perf_counter()
        stats = run_estimate(opt.estimator, estimation, opt.optimizer)
        sync(device)
        if stats.get("skipped"):
            raise RuntimeError(f"optim={name}: the Hessian estimate was not finite")
        return time.perf_counter() - started

    step_s, refresh_s, losses = [], [], []
    for step in range(plan.optim_steps):
        # An estimate on the training batch (optim.hess_source=train) is timed here as the
        # separate pass over that batch: its cost plus the gradient the step would share.
        if opt.refreshes_hessian_before(step) or opt.estimates_on_training_batch(step):
            refresh_s.append(refresh(step))
        x, y = batch(step)
        with autocast():
            _, loss = model(x, y)
        loss.backward()
        losses.append(loss.item())
        sync(device)
        started = time.perf_counter()
        opt.step()
        sync(device)
        step_s.append(time.perf_counter() - started)
        opt.zero_grad()
        if opt.refreshes_hessian(step):
            refresh_s.append(refresh(step))
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {
        "step_ms": 1e3 * statistics.median(step_s[1:]),
        "first_step_s": step_s[0],  # holds the compilation of a compiled step
        "refreshes": len(refresh_s),
        "refresh_s": statistics.mean(refresh_s) if refresh_s else None,
        "peak_mib": peak,
        "losses_finite": all(math.isfinite(v) for v in losses),
    }


def check_optimizers(plan: Plan) -> dict:
    results = {name: check_optimizer(name, plan) for name in OPTIMIZERS}
    baseline = results["adamw"]["step_ms"]
    for result in results.values():
        result["step_x_fused_adamw"] = result["step_ms"] / baseline
    return results


# ---------------------------------------------------------------------------------------------
# 4. The report


def table(report: dict) -> str:
    training, ddp = report["training"], report["ddp"]
    mfu = f"{100 * training['mfu']:.1f}%" if training["mfu"] is not None else "n/a"
    lines = [
        f"device: {report['device']} | torch {report['torch']} | smoke: {report['smoke']}",
        f"training ({report['plan']['model']}, {report['plan']['dtype']}, compile="
        f"{report['plan']['compile']}): {training['tokens_per_s']:,.0f} tokens/s, MFU {mfu}; "
        f"flash SDPA: {report['flash']['flash_sdpa']}",
        f"torchrun --nproc_per_node=1: backend {ddp['backend']}, all-reduce ok "
        f"{ddp['all_reduce_ok']}",
        "",
        "| optim | step ms | x fused AdamW | first step s | refreshes | refresh s | peak MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in report["optimizers"].items():
        refresh = f"{r['refresh_s']:.3f}" if r["refresh_s"] is not None else "-"
        peak = f"{r['peak_mib']:.0f}" if r["peak_mib"] is not None else "n/a (CPU)"
        lines.append(
            f"| {name} | {r['step_ms']:.2f} | {r['step_x_fused_adamw']:.2f} | "
            f"{r['first_step_s']:.2f} | {r['refreshes']} | {refresh} | {peak} |"
        )
    lines.append(f"\ntotal wall-clock: {report['wall_s']:.0f} s")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "gpu_check")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny model: the CI version")
    parser.add_argument("--ddp-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    plan = SMOKE if args.smoke else FULL
    if args.ddp_worker:
        ddp_worker(plan)
        return
    if plan.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device visible: run on the GPU host, or --smoke on a CPU")
    started = time.perf_counter()
    device_name = torch.cuda.get_device_name() if plan.device == "cuda" else platform.processor()
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        corpus = write_synthetic_corpus(
            work / "corpus", plan.model.vocab_size, 64 * plan.batch_size * plan.block_size
        )
        report = {
            "device": device_name or plan.device,
            "torch": torch.__version__,
            "smoke": args.smoke,
            "plan": {**dataclasses.asdict(plan), "model": plan.model.name},
            "training": check_training(plan, corpus, work),
            "flash": check_flash_attention(plan),
            "ddp": check_ddp(plan, args.smoke),
            "optimizers": check_optimizers(plan),
        }
    report["wall_s"] = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    text = table(report)
    (args.out / "gpu_check.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
