"""Peak memory of a training process per optimizer, against AdamW on the same model and batch.

    python scripts/bench_memory.py                                 # gpt2-mini, sophia vs adamw
    python scripts/bench_memory.py model=gpt2-small batch_size=4 --optims adamw sophia lion
    python scripts/bench_memory.py dtype=float32 --optims sophiah sophiah:optim.hess_source=fresh

Runs train.py (as users do) once per optimizer, for `--steps` steps (enough for one Hessian
refresh at k = 10), and reads the process's peak resident set size from the kernel
(`os.wait4`'s ru_maxrss: everything the process ever held at once, weights, gradients,
optimizer state, activations, the Hessian refresh, the compiler). Prints MiB and the ratio to
AdamW measured in the same invocation. On a GPU host, CUDA memory is not in the RSS: use
scripts/gpu_check.py, which reports torch.cuda.max_memory_allocated per optimizer.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULTS = ["model=gpt2-mini", "batch_size=8", "block_size=128", "dtype=bfloat16", "device=cpu"]


def peak_rss_mib(overrides: list[str], steps: int) -> float:
    """Run train.py with `overrides` for `steps` steps; its peak RSS in MiB."""
    with tempfile.TemporaryDirectory() as run_dir:
        cmd = [
            sys.executable, "train.py", f"hydra.run.dir={run_dir}", "resume=never",
            f"max_steps={steps}", f"log_interval={steps}", f"eval_interval={10**9}",
            f"ckpt_interval={10**9}", "wandb.mode=disabled", *overrides,
        ]  # fmt: skip
        process = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(process.pid, 0)
        stderr = process.stderr.read().decode() if process.stderr else ""
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            raise RuntimeError(f"train.py {' '.join(overrides)} failed:\n{stderr[-2000:]}")
    return usage.ru_maxrss / 1024  # KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("overrides", nargs="*", help="train.py overrides for every run")
    parser.add_argument(
        "--steps", type=int, default=11,
        help="steps per run (k = 10: one refresh, after step 9 or, on the training batch, in 10)",
    )  # fmt: skip
    parser.add_argument(
        "--optims", nargs="+", default=["adamw", "sophia"],
        help="optim= choices, each optionally with its own overrides after colons, e.g. "
        "sophiah:optim.hess_source=fresh",
    )  # fmt: skip
    args = parser.parse_args()
    given = {o.partition("=")[0] for o in args.overrides}
    base = [o for o in DEFAULTS if o.partition("=")[0] not in given] + args.overrides
    optims = ["adamw"] + [o for o in args.optims if o != "adamw"]
    print(f"train.py {' '.join(base)} max_steps={args.steps}")
    print(f"{'optim':<34} {'peak RSS MiB':>13} {'x AdamW':>8}")
    adamw_mib = None
    for choice in optims:
        optim, *own = choice.split(":")
        mib = peak_rss_mib([*base, f"optim={optim}", *own], args.steps)
        adamw_mib = adamw_mib or mib
        print(f"{choice:<34} {mib:13.0f} {mib / adamw_mib:8.3f}", flush=True)


if __name__ == "__main__":
    main()
