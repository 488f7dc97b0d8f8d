"""Deterministic batches of random contiguous windows from a tokenized corpus.

The global batch at step t is a pure function of (seed, stream, t): resuming needs only the step,
and the split into ranks and micro-batches never changes which sequences a step sees
(2 ranks x 1 micro-batch = 1 rank x 2 micro-batches, exactly). Sequence i of the global batch
belongs to micro-step i // (micro_batch_size * world_size) on rank
(i // micro_batch_size) % world_size.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from data.corpus import GENERIC_PREPARE, CorpusError, CorpusMeta, load_corpus_meta

# Independent random streams: training batches, the fresh batch of a Hessian estimate, validation.
STREAMS = {"train": 0, "hessian": 1, "val": 2, "noise": 3}  # noise: scripts/noise_scale.py


# Splits up to this size are read in full at every start: sha256 against meta.json and every
# token id below its vocab_size (Shakespeare: ~3 MB, milliseconds). Larger ones (OpenWebText's
# 17 GB train split would take minutes) are checked by size only; data.prepare verifies them.
FULL_CHECK_MAX_BYTES = 1 << 30


def load_split(data_dir: str | Path, split: str, prepare: str = GENERIC_PREPARE) -> np.memmap:
    """Memory-map `<data_dir>/<split>.bin` after checking it against meta.json.

    Always: meta.json is valid (data.corpus.load_corpus_meta) and the file holds exactly the
    token count it states, at least one. Up to FULL_CHECK_MAX_BYTES also the sha256 (when
    meta.json records it) and the token id range. `prepare` is the command that makes this
    corpus (data.config.prepare_command), named in every error.
    """
    reprepare = f"re-run `{prepare} force=true`"
    path = Path(data_dir) / f"{split}.bin"
    meta = load_corpus_meta(data_dir, prepare)
    if not path.is_file():
        raise CorpusError(
            f"no prepared corpus in {data_dir} (no {path.name}): run `{prepare}` first"
        )
    expected = meta.tokens[split]
    size = path.stat().st_size
    actual = size // meta.dtype.itemsize
    if size % meta.dtype.itemsize or actual != expected:
        raise CorpusError(
            f"{path} holds {actual} {meta.dtype} tokens but meta.json says {expected}: the file "
            f"is truncated or stale; {reprepare}"
        )
    if actual == 0:  # np.memmap's own error ("cannot mmap an empty file") names no file
        raise CorpusError(f"{path} is empty (meta.json agrees): {reprepare} on a larger corpus")
    tokens = np.memmap(path, dtype=meta.dtype, mode="r")
    if size <= FULL_CHECK_MAX_BYTES:
        check_contents(tokens, path, meta, split, reprepare)
    return tokens


def check_contents(tokens: np.ndarray, path: Path, meta: CorpusMeta, split: str, fix: str) -> None:
    """The sha256 and token id range of a split agree with meta.json (reads the whole file);
    `fix` is the advice an error ends with."""
    expected_sha = meta.sha256.get(split)
    if expected_sha and hashlib.sha256(path.read_bytes()).hexdigest() != expected_sha:
        raise CorpusError(f"{path} does not match the sha256 in meta.json (corrupt): {fix}")
    # Only unsigned dtypes are accepted (data.corpus), so the maximum alone bounds the range.
    if len(tokens) and (largest := int(tokens.max())) >= meta.vocab_size:
        raise CorpusError(
            f"{path} holds token id {largest} >= meta.json's vocab_size {meta.vocab_size} "
            f"(corrupt or from another tokenizer): {fix}"
        )


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
