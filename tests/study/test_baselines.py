"""Unigram and bigram loss floors against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from study.baselines import bigram_loss, unigram_loss


def test_unigram_loss_is_the_smoothed_frequency_cross_entropy():
    train, val = np.array([0, 0, 0, 1]), np.array([0, 1])
    # counts + 1 = [4, 2, 1] over vocab 3 -> p = [4/7, 2/7, 1/7]
    expected = -(math.log(4 / 7) + math.log(2 / 7)) / 2
    assert unigram_loss(train, val, 3) == pytest.approx(expected)


def test_bigram_beats_unigram_on_a_deterministic_sequence():
    train = np.tile(np.arange(4), 100)  # 0 1 2 3 0 1 2 3 ...: the next token is certain
    val = np.tile(np.arange(4), 10)
    assert (
        bigram_loss(train, val, 4)
        < 0.05
        < math.log(4)
        == pytest.approx(unigram_loss(train, val, 4), rel=1e-3)
    )


def test_bigram_refuses_a_bpe_sized_vocabulary():
    with pytest.raises(ValueError, match="too large"):
        bigram_loss(np.array([1, 2]), np.array([1, 2]), 50257)
