"""What the study's report and figures say about optimizer diagnostics and units.

Sophia's win rate is the share of coordinates its clipping leaves alone (|m| < rho·bs·h); the
authors tune rho to keep it in 0.1-0.5 (Liu et al. 2023, arXiv 2305.14342; the tuning notes of
the official repo's README, github.com/Liuhong99/Sophia). Near 0 every coordinate is clipped and
Sophia is sign momentum (Lion-like); near 1 it is an unclipped diagonal-Newton step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from study.runs import Curve
from study.settings import SettingResult

WIN_RATE_BAND = (0.1, 0.5)
WIN_RATE_SOURCE = "Liu et al. 2023; official Sophia README"
WIN_RATE_KEYS = {
    "optim/win_rate": "all",
    "optim/win_rate_matrices": "matrices",
    "optim/win_rate_embeddings": "embeddings",
    "optim/win_rate_vectors": "vectors",
}
HESSIAN_WARMED_KEY = "optim/hessian_warmed"
# The part of training a diagnostic is summarised over: the second half, after the start-up.
LATE_FRACTION = 0.5


def late_mean(curve: Curve, fraction: float = LATE_FRACTION) -> float:
    """Mean of a curve over its last `fraction` of steps (at least its last point)."""
    start = curve.steps[-1] * (1 - fraction)
    late = curve.value[curve.steps >= start]
    return float(np.mean(late if len(late) else curve.value[-1:]))


def diagnostic_summary(result: SettingResult, key: str, at_end: bool = False) -> float | None:
    """Mean over seeds of a diagnostic's late mean (or its last value); None if not logged."""
    curves = [run.diagnostics.get(key) for run in result.runs]
    if not curves or any(curve is None for curve in curves):
        return None
    values = [float(c.value[-1]) if at_end else late_mean(c) for c in curves]
    return float(np.mean(values))


def win_rate_flag(win_rate: float) -> str | None:
    """'below' or 'above' the authors' band, None inside it."""
    low, high = WIN_RATE_BAND
    if win_rate < low:
        return "below"
    if win_rate > high:
        return "above"
    return None


@dataclass(frozen=True)
class LossUnit:
    """How losses are shown: metrics.jsonl holds nats per token; byte-level corpora read better
    in bits per byte (one token is one byte, bits = nats / ln 2)."""

    name: str
    scale: float  # shown value = logged nats * scale

    @property
    def note(self) -> str:
        if self.name == "bits/byte":
            return (
                "Losses are validation cross-entropy in bits per byte (the corpus is byte-level: "
                "metrics.jsonl's nats per token / ln 2)."
            )
        return "Losses are validation cross-entropy in nats per token (natural log)."


NATS_PER_TOKEN = LossUnit("nats/token", 1.0)
BITS_PER_BYTE = LossUnit("bits/byte", 1.0 / math.log(2))


def loss_unit(tokenizers: set[str]) -> LossUnit:
    """Bits per byte when every run trained on a byte-level corpus, else nats per token."""
    return BITS_PER_BYTE if tokenizers == {"bytes"} else NATS_PER_TOKEN
