"""Deterministic batches of random contiguous windows from a tokenized corpus.

The global batch at step t is a pure function of (seed, stream, t): resuming needs only the step,
and the split into ranks and micro-batches never changes which sequences a step sees
(2 ranks x 1 micro-batch = 1 rank x 2 micro-batches, exactly). Sequence i of the global batch
belongs to micro-step i // (micro_batch_size * world_size) on rank
(i // micro_batch_size) % world_size.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

# Independent random streams: training batches, the fresh batch of a Hessian estimate, validation.
STREAMS = {"train": 0, "hessian": 1, "val": 2}


class CorpusError(ValueError):
    """The prepared corpus is missing or inconsistent; the message says how to fix it."""


def load_split(data_dir: str | Path, split: str) -> np.memmap:
    """Memory-map `<data_dir>/<split>.bin` after checking it against meta.json."""
    data_dir = Path(data_dir)
    meta_path = data_dir / "meta.json"
    path = data_dir / f"{split}.bin"
    if not meta_path.exists() or not path.exists():
        raise CorpusError(
            f"no prepared corpus in {data_dir}: run `python -m data.prepare data=<name>` first"
        )
    meta = json.loads(meta_path.read_text())
    dtype = np.dtype(meta.get("dtype", "uint16"))
    expected = meta["tokens"][split]
    actual = path.stat().st_size // dtype.itemsize
    if path.stat().st_size % dtype.itemsize or actual != expected:
        raise CorpusError(
            f"{path} holds {actual} tokens but meta.json says {expected}: the file is truncated "
            f"or stale; re-run `python -m data.prepare` with force=true"
        )
    return np.memmap(path, dtype=dtype, mode="r")


class TokenWindows:
    """Random windows of block_size + 1 tokens (inputs and shifted targets) from one split."""

    def __init__(self, tokens: np.ndarray, block_size: int, seed: int, stream: str) -> None:
        if len(tokens) < block_size + 1:
            raise CorpusError(
                f"the corpus split has {len(tokens)} tokens, fewer than one window of "
                f"block_size + 1 = {block_size + 1}: lower block_size or prepare a larger corpus"
            )
        self.tokens = tokens
        self.block_size = block_size
        self.seed = seed
        self.stream = STREAMS[stream]

    def window_starts(self, step: int, batch_size: int) -> np.ndarray:
        """Start offsets of the global batch at `step`: a pure function of (seed, stream, step)."""
        rng = np.random.default_rng([self.seed, self.stream, step])
        return rng.integers(0, len(self.tokens) - self.block_size, size=batch_size)

    def micro_batch(
        self,
        step: int,
        batch_size: int,
        micro_batch_size: int,
        micro_step: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's slice (inputs, targets) of the global batch for one micro-step."""
        first = (micro_step * world_size + rank) * micro_batch_size
        starts = self.window_starts(step, batch_size)[first : first + micro_batch_size]
        windows = np.stack([self.tokens[s : s + self.block_size + 1] for s in starts])
        windows = torch.from_numpy(windows.astype(np.int64))
        return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()
