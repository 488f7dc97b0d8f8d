"""What a Hessian estimate costs inside a real training run, against AdamW measured alongside.

    python scripts/bench_hessian.py                       # gpt2-tiny, 16 x 128 tokens, bf16, CPU
    python scripts/bench_hessian.py model=gpt2-small batch_size=4 block_size=256 --only GNB
    python scripts/bench_hessian.py dtype=float32 --only Hutchinson  # CPUs without native bf16
    python scripts/bench_hessian.py model=gpt2-small batch_size=8 device=cuda --steps 40

Runs train.py (as users do) for each optimizer setting below and reads its metrics.jsonl:
the mean seconds per training step (after the first `--warmup` steps) relative to AdamW's, and
the share of the run's time spent estimating the Hessian (hess/time_s over the rest), which is
the amortized estimation overhead the Sophia paper quotes (about 5% at k = 10), next to the same
share in FLOPs (exact: the estimator's forward/backward over the training step's).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SETTINGS = {
    "adamw": ["optim=adamw"],
    "sophia (GNB, k=10)": ["optim=sophia", "optim.hess_interval=10"],
    "sophia (GNB, k=10, half batch)": ["optim=sophia", "optim.hess_interval=10", "HALF"],
    "sophia (GNB, k=10, quarter batch)": ["optim=sophia", "optim.hess_interval=10", "QUARTER"],
    "sophiah (Hutchinson, k=10, fresh)": ["optim=sophiah", "optim.hess_interval=10", "FRESH"],
    "sophiah (Hutchinson, k=10)": ["optim=sophiah", "optim.hess_interval=10"],
    "sophiah (Hutchinson, k=10, half)": ["optim=sophiah", "optim.hess_interval=10", "HALF"],
    "adahessian (Hutchinson, k=1, fresh)": ["optim=adahessian", "optim.hess_interval=1", "FRESH"],
    "adahessian (Hutchinson, k=1)": ["optim=adahessian", "optim.hess_interval=1"],
    "adahessian (Hutchinson, k=10)": ["optim=adahessian", "optim.hess_interval=10"],
}
# Hutchinson's rows estimate on the training step's own batch and graph (optim.hess_source=train,
# the default) unless marked fresh (a separate batch, as Sophia-G's official loop does).


def run(overrides: list[str], steps: int) -> list[dict]:
    with tempfile.TemporaryDirectory() as run_dir:
        cmd = [
            sys.executable, "train.py", f"hydra.run.dir={run_dir}", "resume=never",
            f"max_steps={steps}", "log_interval=1", f"eval_interval={10**9}",
            f"ckpt_interval={10**9}", "wandb.mode=disabled", *overrides,
        ]  # fmt: skip
        subprocess.run(cmd, cwd=REPO, check=True, capture_output=True)
        lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == "train"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("overrides", nargs="*", help="train.py overrides for every run")
    parser.add_argument("--steps", type=int, default=40, help="a multiple of 10")
    parser.add_argument("--warmup", type=int, default=10, help="steps left out (compile, caches)")
    parser.add_argument(
        "--only", nargs="+", default=[], help="settings whose name contains one of these words"
    )
    args = parser.parse_args()
    settings = {
        name: extra
        for name, extra in SETTINGS.items()
        if name == "adamw" or not args.only or any(word in name for word in args.only)
    }
    defaults = ["batch_size=16", "block_size=128", "dtype=bfloat16", "device=cpu"]
    given = {o.partition("=")[0] for o in args.overrides}
    base = [o for o in defaults if o.partition("=")[0] not in given] + args.overrides
    print(f"train.py {' '.join(base)} max_steps={args.steps}")
    print(f"{'setting':<38} {'s/step':>8} {'x AdamW':>8} {'Hessian time':>13} {'FLOPs':>7}")
    adamw_seconds = None
    batch_size = int([o for o in base if o.startswith("batch_size=")][-1].partition("=")[2])
    # The estimation batch must be whole micro-batches: shrink those too (accumulation 2 or 4).
    fractions = {
        word: [f"optim.hess_batch_size={size}", f"micro_batch_size={size}"]
        for word, size in (("HALF", batch_size // 2), ("QUARTER", batch_size // 4))
    }
    fractions["FRESH"] = ["optim.hess_source=fresh"]
    for name, extra in settings.items():
        extra = [o for x in extra for o in fractions.get(x, [x])]
        records = run([*base, *extra], args.steps)
        first, last = records[args.warmup - 1], records[-1]
        steps = last["step"] - first["step"]
        seconds = (last["time_s"] - first["time_s"]) / steps
        hess = last["hess/time_s"] - first["hess/time_s"]
        train_only = last["time_s"] - first["time_s"] - hess
        hess_flops = last["hess/flops"] - first["hess/flops"]
        train_flops = last["flops"] - first["flops"] - hess_flops
        adamw_seconds = adamw_seconds or seconds
        print(
            f"{name:<38} {seconds:8.3f} {seconds / adamw_seconds:8.2f} "
            f"{hess / train_only:12.1%} {hess_flops / train_flops:7.1%}",
            flush=True,
        )


if __name__ == "__main__":
    main()
