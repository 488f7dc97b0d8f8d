"""Batches are a pure function of (seed, stream, step), whatever the world size or split."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from data.batches import CorpusError, TokenWindows, load_split


def windows(seed: int = 0, stream: str = "train", n: int = 5_000) -> TokenWindows:
    tokens = np.arange(n, dtype=np.uint16) % 1000
    return TokenWindows(tokens, block_size=16, seed=seed, stream=stream)


def global_batch(source: TokenWindows, step: int, batch: int, micro: int, world: int):
    """Concatenate every rank's micro-batches in global sequence order."""
    accum = batch // (micro * world)
    parts = [
        source.micro_batch(step, batch, micro, micro_step, rank, world)[0]
        for micro_step in range(accum)
        for rank in range(world)
    ]
    return torch.cat(parts)


def test_same_step_gives_the_same_batch():
    a, b = windows(), windows()
    assert torch.equal(a.micro_batch(7, 8, 8, 0)[0], b.micro_batch(7, 8, 8, 0)[0])


def test_batches_differ_across_steps_seeds_and_streams():
    first = windows().micro_batch(0, 8, 8, 0)[0]
    assert not torch.equal(first, windows().micro_batch(1, 8, 8, 0)[0])
    assert not torch.equal(first, windows(seed=1).micro_batch(0, 8, 8, 0)[0])
    assert not torch.equal(first, windows(stream="hessian").micro_batch(0, 8, 8, 0)[0])


@pytest.mark.parametrize(("micro", "world"), [(8, 1), (4, 1), (4, 2), (2, 2), (1, 4), (2, 4)])
def test_global_batch_is_independent_of_world_size_and_accumulation(micro, world):
    source = windows()
    reference = global_batch(source, step=3, batch=8, micro=8, world=1)
    assert torch.equal(global_batch(source, step=3, batch=8, micro=micro, world=world), reference)


def test_targets_are_inputs_shifted_by_one():
    x, y = windows().micro_batch(0, 4, 4, 0)
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert x.dtype == torch.int64 and x.is_contiguous() and y.is_contiguous()


def test_a_corpus_shorter_than_one_window_is_refused():
    with pytest.raises(CorpusError, match="fewer than one window"):
        TokenWindows(np.zeros(10, dtype=np.uint16), block_size=16, seed=0, stream="train")


def test_a_truncated_bin_is_refused(tmp_path):
    np.arange(100, dtype=np.uint16).tofile(tmp_path / "train.bin")
    meta = {"vocab_size": 100, "dtype": "uint16", "tokens": {"train": 200, "val": 0}}
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CorpusError, match="truncated"):
        load_split(tmp_path, "train")


def test_a_missing_corpus_names_the_prepare_command(tmp_path):
    with pytest.raises(CorpusError, match="python -m data.prepare"):
        load_split(tmp_path, "train")
