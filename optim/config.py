"""What every optimizer schema shares: the base dataclasses of the `optim` config group.

Each optimizer's own dataclass (its keys, defaults and `build`) is in optim/registry.py.
`lr` is the peak of a linear warmup + cosine decay to `min_lr` over `decay_steps` (default: the
run's `max_steps`, so every run's schedule is fully decayed at its own horizon).
Validation happens in `__post_init__`, which runs when train.py turns the composed config into
these objects, so a bad value stops the run before any work with a message naming the fix.
This module imports no torch: study/ reads the registry's names and colours without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from omegaconf import MISSING

from configs.validation import reject_non_finite

if TYPE_CHECKING:
    import torch
    from torch import nn

    from optim.plan import OptimizerPlan


def check_betas(name: str, betas: list[float]) -> None:
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise ValueError(f"optim.betas must be two numbers in [0, 1), got {list(betas)} ({name})")


def check_n_probes(n_probes: int) -> None:
    if n_probes < 1:
        raise ValueError(
            f"optim.n_probes must be >= 1, got {n_probes} (Rademacher probes per micro-batch; "
            "each costs about two training steps)"
        )


@dataclass
class OptimConfig:
    # Shown in reports and figures (study/report.py, study/plots.py); not config keys.
    display_name: ClassVar[str] = ""
    color: ClassVar[str] = "tab:gray"

    name: str = MISSING
    lr: float = 6e-4
    min_lr: float = 3e-5
    warmup_steps: int = 100
    decay_steps: int | None = None  # None: the run's max_steps
    weight_decay: float = 0.1
    # Two choices where this repo and the official Sophia loop differ (docs/CONTRACTS.md):
    # warmup_from_zero: false takes lr*(t+1)/W at step t, so the first step already moves; true
    # takes lr*t/W as the official loop and nanoGPT do (step 0 at lr 0).
    warmup_from_zero: bool = False
    # decay_embeddings: true decays every matrix, the tied token embedding and the position table
    # included (nanoGPT's dim >= 2 rule); false decays Linear weights only, as the official script.
    decay_embeddings: bool = True

    def __post_init__(self) -> None:
        # fields(self) holds the subclass's keys too: one call covers every optimizer schema.
        reject_non_finite(self, "optim.")
        if not self.lr > 0:
            raise ValueError(f"optim.lr must be > 0, got {self.lr}")
        if not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"optim.min_lr must be in [0, optim.lr={self.lr}], got {self.min_lr}")
        if self.warmup_steps < 0:
            raise ValueError(f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.decay_steps is not None and self.decay_steps <= 0:
            raise ValueError(f"optim.decay_steps must be > 0 or null, got {self.decay_steps}")
        if self.weight_decay < 0:
            raise ValueError(f"optim.weight_decay must be >= 0, got {self.weight_decay}")

    def build(
        self, model: nn.Module, *, device: torch.device, estimation_tokens: int
    ) -> OptimizerPlan:
        """The update rule on `model`'s parameters, with its Hessian estimator if it has one.

        estimation_tokens: tokens in the global batch a Hessian estimate averages over."""
        raise NotImplementedError(f"optim={self.name} has no build(): see optim/registry.py")


@dataclass
class SecondOrderConfig(OptimConfig):
    """Keys every optimizer with a Hessian estimate shares."""

    hess_interval: int = 10  # k: refresh the Hessian estimate every k optimizer steps
    hess_batch_size: int | None = None  # sequences in the global estimation batch; None: batch_size

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.hess_interval < 1:
            raise ValueError(
                f"optim.hess_interval must be >= 1, got {self.hess_interval} "
                "(1 refreshes every step; the Sophia paper uses 10)"
            )
        if self.hess_batch_size is not None and self.hess_batch_size < 1:
            raise ValueError(
                f"optim.hess_batch_size must be >= 1 or null (= the training batch), "
                f"got {self.hess_batch_size}"
            )


# Where a Hutchinson estimate's batch comes from (optim.hess_source).
HESS_SOURCES = ("train", "fresh")


@dataclass
class HutchinsonConfig(SecondOrderConfig):
    """Keys of the optimizers fed by Hutchinson's estimate (Sophia-H, AdaHessian)."""

    n_probes: int = 1  # Rademacher probes per micro-batch: variance / n_probes, cost x n_probes
    # train: on a refresh step the training step's own forward/backward keeps its graph and the
    # probes differentiate it (AdaHessian's official code; Levanter's Sophia-H estimates on the
    # current batch): a probe costs its Hessian-vector product alone, ~2 training steps.
    # fresh: a separate batch at the same weights, as Sophia-G's official loop does (~3 steps:
    # its gradient with the graph, then the product). Either way the estimate is taken at the
    # weights of the step that first uses it.
    hess_source: str = "train"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_n_probes(self.n_probes)
        if self.hess_source not in HESS_SOURCES:
            raise ValueError(
                f"optim.hess_source must be one of {', '.join(HESS_SOURCES)}, got "
                f"{self.hess_source!r} (train: the training step's batch and graph; fresh: a "
                "separate batch)"
            )
