"""Hydra schemas of the `optim` config group: one dataclass per update rule.

`lr` is the peak of a linear warmup + cosine decay to `min_lr` over `decay_steps` (default: the
run's `max_steps`, so every run's schedule is fully decayed at its own horizon).
Validation happens in `__post_init__`, which runs when train.py turns the composed config into
these objects, so a bad value stops the run before any work with a message naming the fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import MISSING

from configs.validation import reject_non_finite


def _check_betas(name: str, betas: list[float]) -> None:
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise ValueError(f"optim.betas must be two numbers in [0, 1), got {list(betas)} ({name})")


def _check_n_probes(n_probes: int) -> None:
    if n_probes < 1:
        raise ValueError(
            f"optim.n_probes must be >= 1, got {n_probes} (Rademacher probes per micro-batch; "
            "each costs about two training steps)"
        )


@dataclass
class OptimConfig:
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


@dataclass
class AdamWConfig(OptimConfig):
    name: str = "adamw"
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    fused: bool | None = None  # None: fused wherever torch has the kernel for the device

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_betas(self.name, self.betas)
        if not self.eps > 0:
            raise ValueError(f"optim.eps must be > 0, got {self.eps}")


@dataclass
class LionConfig(OptimConfig):
    """Lion (Chen et al. 2023) as the Sophia paper's 125M baseline: betas (0.95, 0.98), lr 1e-4."""

    name: str = "lion"
    lr: float = 1e-4
    min_lr: float = 5e-6  # 0.05 x peak, the Sophia paper's cosine floor
    # lr·wd kept equal to AdamW's 6e-4 x 0.1 (the Lion paper's advice: wd 3-10x AdamW's).
    weight_decay: float = 0.6
    betas: list[float] = field(default_factory=lambda: [0.95, 0.98])
    # None: torch.compile the update step when the model has >= 8M parameters (optim/compiled.py)
    compiled: bool | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_betas(self.name, self.betas)


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


@dataclass
class SophiaConfig(SecondOrderConfig):
    """Sophia-G (GNB estimator), the official 125M GPT-2 settings."""

    name: str = "sophia"
    lr: float = 6e-4
    min_lr: float = 1.5e-5
    weight_decay: float = 0.2
    betas: list[float] = field(default_factory=lambda: [0.965, 0.99])
    rho: float = 0.05  # multiplies bs·h, bs = tokens in the global batch
    # None: torch.compile the update step when the model has >= 8M parameters (optim/compiled.py)
    compiled: bool | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_betas(self.name, self.betas)
        if not self.rho > 0:
            usual = (
                "Levanter's Sophia-H uses 0.01"
                if self.name == "sophiah"
                else "the paper uses 0.03-0.05"
            )
            raise ValueError(f"optim.rho must be > 0, got {self.rho} ({usual})")


@dataclass
class SophiaHConfig(SophiaConfig):
    """Sophia-H (Hutchinson estimator), Levanter's small-model settings: rho is Levanter's γ,
    applied to h directly (no batch-size factor)."""

    name: str = "sophiah"
    rho: float = 0.01
    n_probes: int = 1  # Hutchinson probes per micro-batch: variance / n_probes, cost x n_probes

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_n_probes(self.n_probes)


@dataclass
class AdaHessianConfig(SecondOrderConfig):
    """AdaHessian, the paper's transformer settings (IWSLT14) with the Hessian every step."""

    name: str = "adahessian"
    lr: float = 0.047
    min_lr: float = 2.35e-3  # 0.05 x peak, the Sophia paper's cosine floor
    weight_decay: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-4
    hessian_power: float = 1.0
    block_length: int = 32  # spatial averaging along the last dim; 0 averages whole rows
    hess_interval: int = 1
    n_probes: int = 1  # Hutchinson probes per micro-batch (the paper uses one)
    # None: torch.compile the update step when the model has >= 8M parameters (optim/compiled.py)
    compiled: bool | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_betas(self.name, self.betas)
        _check_n_probes(self.n_probes)
        if not self.eps > 0:
            raise ValueError(f"optim.eps must be > 0, got {self.eps} (the paper uses 1e-4)")
        if not 0 <= self.hessian_power <= 1:
            raise ValueError(
                f"optim.hessian_power must be in [0, 1], got {self.hessian_power} "
                "(1 is the paper's default)"
            )
        if self.block_length < 0:
            raise ValueError(
                f"optim.block_length must be >= 0, got {self.block_length} "
                "(32 for transformers, 0 for whole rows)"
            )


@dataclass
class MuonConfig(OptimConfig):
    """Muon on the blocks' 2-D matrices, AdamW on embeddings, head and norms (optim/muon.py).

    `lr` is on AdamW's scale (match_rms_adamw) and serves both halves unless adamw_lr_ratio says
    otherwise; weight_decay applies to Muon's matrices and the AdamW matrices alike."""

    name: str = "muon"
    lr: float = 6e-4
    min_lr: float = 3e-5
    momentum: float = 0.95
    nesterov: bool = True
    ns_steps: int = 5
    adjust_lr_fn: str = "match_rms_adamw"  # or "original" (Keller Jordan's scaling, lr ~ 0.02)
    adamw_lr_ratio: float = 1.0  # the AdamW half's lr / Muon's lr
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])  # the AdamW half
    eps: float = 1e-8

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_betas(self.name, self.betas)
        if not 0 <= self.momentum < 1:
            raise ValueError(f"optim.momentum must be in [0, 1), got {self.momentum} (Muon: 0.95)")
        if self.ns_steps < 1:
            raise ValueError(f"optim.ns_steps must be >= 1, got {self.ns_steps} (Muon uses 5)")
        if self.adjust_lr_fn not in ("match_rms_adamw", "original"):
            raise ValueError(
                f"optim.adjust_lr_fn must be match_rms_adamw or original, got {self.adjust_lr_fn!r}"
            )
        if not self.adamw_lr_ratio > 0:
            raise ValueError(f"optim.adamw_lr_ratio must be > 0, got {self.adamw_lr_ratio}")
        if not self.eps > 0:
            raise ValueError(f"optim.eps must be > 0, got {self.eps}")


# The `optim=` choices and their schemas; configs/schema.py registers each in the ConfigStore.
OPTIM_SCHEMAS: dict[str, type[OptimConfig]] = {
    "adamw": AdamWConfig,
    "lion": LionConfig,
    "sophia": SophiaConfig,
    "sophiah": SophiaHConfig,
    "adahessian": AdaHessianConfig,
    "muon": MuonConfig,
}
