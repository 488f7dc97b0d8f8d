"""Loss floors a language model must beat to be past the n-gram stage: unigram and bigram.

A model whose validation loss sits near the unigram cross-entropy has learned token frequencies
and little else; optimizer comparisons there measure how fast each one fits a frequency table.
Both are maximum-likelihood estimates on the train split with add-one smoothing, scored on val,
in nats per token (the unit of train.py's losses).
"""

from __future__ import annotations

import numpy as np


def unigram_loss(train: np.ndarray, val: np.ndarray, vocab_size: int) -> float:
    """Cross-entropy on `val` of train's add-one-smoothed token frequencies (nats/token)."""
    counts = np.bincount(train, minlength=vocab_size).astype(np.float64) + 1.0
    log_probs = np.log(counts / counts.sum())
    return float(-log_probs[val].mean())


def bigram_loss(train: np.ndarray, val: np.ndarray, vocab_size: int) -> float:
    """Cross-entropy on `val` of p(next | previous) from train, add-one smoothed (nats/token).

    A vocab_size^2 table: fine for bytes (256^2), too big for a 50k BPE vocabulary."""
    if vocab_size > 4096:
        raise ValueError(f"a bigram table of vocab_size={vocab_size} is too large; use bytes")
    pairs = train[:-1].astype(np.int64) * vocab_size + train[1:]
    counts = np.bincount(pairs, minlength=vocab_size * vocab_size).astype(np.float64) + 1.0
    counts = counts.reshape(vocab_size, vocab_size)
    log_probs = np.log(counts / counts.sum(axis=1, keepdims=True))
    return float(-log_probs[val[:-1], val[1:]].mean())
