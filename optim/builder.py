"""Build the optimizer (and its Hessian estimator, if any) that a config names.

train.py stays optimizer-agnostic: it calls `TrainingOptimizer.step()`, asks
`refreshes_hessian(step)` after each step and, when true, hands one `EstimationBatch` to
`refresh_hessian()`. Adding an optimizer means: an update rule in optim/<name>.py, a schema in
optim/config.py, a yaml in configs/optim/, and a branch in `build_optimizer` below.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from optim.adahessian import AdaHessian
from optim.config import (
    AdaHessianConfig,
    AdamWConfig,
    LionConfig,
    OptimConfig,
    SophiaConfig,
    SophiaHConfig,
)
from optim.hessian import GaussNewtonBartlett, Hutchinson
from optim.lion import Lion
from optim.sophia import SophiaG, SophiaH
from training.distributed import Distributed


@dataclass
class EstimationBatch:
    """Everything a Hessian estimator needs from the training loop for one refresh."""

    model: nn.Module  # what the loop calls forward on: DDP-wrapped and/or compiled
    raw_model: nn.Module  # the plain module, for double backward (DDP and compile have none)
    micro_batches: Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]]  # this rank's share
    num_micro_batches: int
    autocast: Callable[[], AbstractContextManager]
    world: Distributed
    seed: int
    step: int  # the optimizer step just taken; with seed, fixes label samples and probes
    tokens: int  # tokens in the global estimation batch


@dataclass
class TrainingOptimizer:
    """An update rule, and optionally the Hessian estimator that feeds it every k steps."""

    optimizer: torch.optim.Optimizer
    estimator: Any = None  # an optim.hessian estimator, or None for first-order rules
    hess_interval: int = 0
    step_kwargs: dict[str, Any] = field(default_factory=dict)
    # AdaHessian divides by its Hessian from the first step on (Sophia starts with h = 0).
    hessian_before_first_step: bool = False

    def step(self) -> None:
        self.optimizer.step(**self.step_kwargs)

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def refreshes_hessian(self, step: int) -> bool:
        """True after optimizer step `step` (0-based) at k-1, 2k-1, ... as the official loop."""
        return self.estimator is not None and step % self.hess_interval == self.hess_interval - 1

    def needs_initial_hessian(self) -> bool:
        """True before the first update of a rule that needs an estimate for it (AdaHessian):
        refresh once before that step. False after a resume (the state holds the estimate)."""
        return self.hessian_before_first_step and not self.optimizer.state

    def refresh_hessian(self, batch: EstimationBatch) -> dict[str, float]:
        return self.estimator.refresh(batch, self.optimizer)

    def diagnostics(self) -> dict[str, float]:
        report = getattr(self.optimizer, "diagnostics", None)
        return report() if report is not None else {}

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """nanoGPT's split: decay matrices and embeddings (dim >= 2), not biases or LayerNorm gains."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def build_optimizer(
    cfg: OptimConfig,
    model: nn.Module,
    *,
    tokens_per_step: int,
    device: torch.device,
    estimation_tokens: int | None = None,
) -> TrainingOptimizer:
    """The update rule `cfg` names on nanoGPT's decay/no-decay groups, with its Hessian estimator.

    tokens_per_step: tokens in the training global batch; estimation_tokens: tokens in the global
    batch the Hessian is estimated on (`optim.hess_batch_size` sequences; default: the training
    batch). Sophia-G's `bs` is the latter: ĝ is a mean over those B tokens and B·ĝ⊙ĝ estimates
    the Gauss-Newton diagonal, so rho keeps its meaning whatever the estimation batch is (the
    official script hard-wires 480 x 1024, which silently changes rho whenever the batch differs).
    """
    groups = parameter_groups(model, cfg.weight_decay)
    betas = tuple(getattr(cfg, "betas", ()))
    if isinstance(cfg, AdamWConfig):
        fused = cfg.fused if cfg.fused is not None else device.type in ("cuda", "cpu")
        optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=betas, eps=cfg.eps, fused=fused)
        return TrainingOptimizer(optimizer)
    if isinstance(cfg, LionConfig):
        return TrainingOptimizer(Lion(groups, lr=cfg.lr, betas=betas))
    # SophiaHConfig subclasses SophiaConfig: test it first.
    if isinstance(cfg, SophiaHConfig):
        # Hutchinson estimates the Hessian of the mean loss itself, with no batch-size factor, so
        # rho applies to h directly (Levanter's gamma = 0.01) and SophiaH.step() takes no bs.
        optimizer = SophiaH(groups, lr=cfg.lr, betas=betas, rho=cfg.rho, compiled=cfg.compiled)
        return TrainingOptimizer(optimizer, Hutchinson(cfg.n_probes), cfg.hess_interval)
    if isinstance(cfg, SophiaConfig):
        # GNB: B * g_hat * g_hat estimates the Hessian diagonal; the optimizer keeps g_hat * g_hat
        # and multiplies by bs = B, the tokens in the global estimation batch, in its step.
        optimizer = SophiaG(groups, lr=cfg.lr, betas=betas, rho=cfg.rho, compiled=cfg.compiled)
        bs = estimation_tokens or tokens_per_step
        return TrainingOptimizer(optimizer, GaussNewtonBartlett(), cfg.hess_interval, {"bs": bs})
    if isinstance(cfg, AdaHessianConfig):
        optimizer = AdaHessian(
            groups, lr=cfg.lr, betas=betas, eps=cfg.eps, hessian_power=cfg.hessian_power,
            block_length=cfg.block_length,
        )  # fmt: skip
        return TrainingOptimizer(
            optimizer, Hutchinson(cfg.n_probes), cfg.hess_interval, hessian_before_first_step=True
        )
    raise ValueError(f"optim={cfg.name} has no builder: add a branch to optim/builder.py")
