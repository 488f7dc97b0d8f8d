"""Record train.py's behaviour for each optim= choice: metrics.jsonl without timing fields.

    python -m tests.train.behaviour.record    # rewrites tests/train/behaviour/*.jsonl

The committed records were made at commit 047515a, the last one before train.py was split into
training/ (issue 12); tests/train/test_behaviour.py holds every later commit to them.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
sys.path.insert(0, str(REPO))

from tests.conftest import run_train, write_corpus  # noqa: E402

# Seconds and what is derived from them differ run to run; everything else must not.
TIMING_KEYS = {"time_s", "compile_s", "tokens_per_s", "mfu", "hess/time_s", "hess/refresh_seconds"}
# Per optimizer: a learning rate the tiny model trains at, and a Hessian refresh every 3 steps.
SETTINGS = {
    "adamw": ["optim.lr=3e-3"],
    "lion": ["optim.lr=3e-3"],
    "sophia": ["optim.lr=3e-3", "optim.hess_interval=3"],
    # Recorded when a separate batch was the only source (optim.hess_source=fresh).
    "sophiah": ["optim.lr=3e-3", "optim.hess_interval=3", "optim.hess_source=fresh"],
    "adahessian": ["optim.lr=0.15", "optim.hess_interval=3", "optim.hess_source=fresh"],
    "muon": ["optim.lr=3e-3"],
}
STEPS = 12


def without_timing(line: str) -> dict:
    record = json.loads(line)
    return {k: v for k, v in record.items() if k not in TIMING_KEYS}


def run(optim: str, workdir: Path, corpus: Path) -> list[dict]:
    run_dir = workdir / optim
    run_train(run_dir, corpus, f"optim={optim}", f"max_steps={STEPS}", *SETTINGS[optim])
    return [without_timing(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        corpus = write_corpus(Path(tmp) / "corpus")
        for optim in SETTINGS:
            records = run(optim, Path(tmp), corpus)
            (HERE / f"{optim}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
            print(f"{optim}: {len(records)} lines")


if __name__ == "__main__":
    main()
