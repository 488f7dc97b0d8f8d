"""Print a prepared corpus's unigram and bigram validation losses (nats/token), the floors to beat.

python scripts/corpus_baselines.py data/cache/shakespeare_bytes
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere, no install

import numpy as np  # noqa: E402

from study.baselines import bigram_loss, unigram_loss  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data_dir", type=Path, help="a prepared corpus (train.bin, val.bin)")
    args = parser.parse_args()
    meta_path = args.data_dir / "meta.json"
    if not meta_path.is_file():
        raise SystemExit(
            f"error: no prepared corpus in {args.data_dir}: run `python -m data.prepare` first"
        )
    meta = json.loads(meta_path.read_text())
    vocab = int(meta["vocab_size"])
    train = np.fromfile(args.data_dir / "train.bin", dtype=meta.get("dtype", "uint16"))
    val = np.fromfile(args.data_dir / "val.bin", dtype=meta.get("dtype", "uint16"))
    print(f"{args.data_dir} ({meta.get('tokenizer')}, vocab {vocab}): val loss in nats/token")
    print(f"  uniform  {np.log(vocab):.4f}")
    print(f"  unigram  {unigram_loss(train, val, vocab):.4f}")
    if vocab <= 4096:
        print(f"  bigram   {bigram_loss(train, val, vocab):.4f}")


if __name__ == "__main__":
    main()
