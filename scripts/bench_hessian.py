"""What a Hessian estimate costs inside a real training run, against AdamW measured alongside.

    python scripts/bench_hessian.py                       # gpt2-tiny, 16 x 128 tokens, bf16, CPU
    python scripts/bench_hessian.py model=gpt2-small batch_size=8 device=cuda --steps 40

Runs train.py (as users do) for each optimizer setting below and reads its metrics.jsonl:
the mean seconds per training step (after the first `--warmup` steps) relative to AdamW's, and
the share of the run's time spent estimating the Hessian (hess/time_s over the rest), which is
the amortized estimation overhead the Sophia paper quotes (about 5% at k = 10).
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
    "sophia (GNB, k=10, half batch)": ["optim=sophia", "optim.hess_interval=10", "HALF_BATCH"],
    "sophiah (Hutchinson, k=10)": ["optim=sophiah", "optim.hess_interval=10"],
    "adahessian (Hutchinson, k=1)": ["optim=adahessian", "optim.hess_interval=1"],
    "adahessian (Hutchinson, k=10)": ["optim=adahessian", "optim.hess_interval=10"],
}


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
    args = parser.parse_args()
    base = ["batch_size=16", "block_size=128", "dtype=bfloat16", "device=cpu", *args.overrides]
    print(f"train.py {' '.join(base)} max_steps={args.steps}")
    print(f"{'setting':<32} {'s/step':>8} {'x AdamW':>8} {'Hessian share':>14}")
    adamw_seconds = None
    batch_size = int([o for o in base if o.startswith("batch_size=")][-1].partition("=")[2])
    # The estimation batch must be whole micro-batches: halve those too (accumulation 2).
    half_batch = [f"optim.hess_batch_size={batch_size // 2}", f"micro_batch_size={batch_size // 2}"]
    for name, extra in SETTINGS.items():
        extra = [o for x in extra for o in (half_batch if x == "HALF_BATCH" else [x])]
        records = run([*base, *extra], args.steps)
        first, last = records[args.warmup - 1], records[-1]
        steps = last["step"] - first["step"]
        seconds = (last["time_s"] - first["time_s"]) / steps
        hess = last["hess/time_s"] - first["hess/time_s"]
        train_only = last["time_s"] - first["time_s"] - hess
        adamw_seconds = adamw_seconds or seconds
        print(f"{name:<32} {seconds:8.3f} {seconds / adamw_seconds:8.2f} {hess / train_only:13.1%}")


if __name__ == "__main__":
    main()
