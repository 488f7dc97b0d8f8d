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
    MuonConfig,
    OptimConfig,
    SophiaConfig,
    SophiaHConfig,
)
from optim.hessian import GaussNewtonBartlett, Hutchinson
from optim.lion import Lion
from optim.muon import MuonAdamW
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
    # AdaHessian divides by its Hessian from the first step on (Sophia starts with h = 0), so it
    # refreshes before its steps, at the weights the step uses; Sophia refreshes after them.
    refresh_before_step: bool = False
    step_flops: float = 0.0  # compute of one update itself when not negligible (Muon's NS)
    # {id(param): "embeddings" | "matrices" | "vectors"}, for per-kind diagnostics
    parameter_kinds: dict[int, str] = field(default_factory=dict)
    hessian_refreshes: int = 0  # estimates taken into the optimizer's state so far

    def step(self) -> None:
        self.optimizer.step(**self.step_kwargs)

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def set_lr(self, lr: float) -> None:
        """The scheduled lr into every group, times the group's `lr_ratio` where it has one."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_ratio", 1.0)

    def refreshes_hessian(self, step: int) -> bool:
        """True after optimizer step `step` (0-based) at k-1, 2k-1, ... as the official Sophia
        loop does (Sophia's first k steps are sign steps with h = 0)."""
        if self.estimator is None or self.refresh_before_step:
            return False
        return step % self.hess_interval == self.hess_interval - 1

    def refreshes_hessian_before(self, step: int) -> bool:
        """True before optimizer step `step` at 0, k, 2k, ... for a rule that needs an estimate
        from its first update on (AdaHessian): each refresh is estimated at the weights of the
        step that uses it, once per k steps (with k = 1, exactly one refresh per step)."""
        return self.refresh_before_step and step % self.hess_interval == 0

    def refresh_hessian(self, batch: EstimationBatch) -> dict[str, float]:
        stats = self.estimator.refresh(batch, self.optimizer)
        self.hessian_refreshes += not stats.get("skipped", 0.0)
        return stats

    def diagnostics(self) -> dict[str, float]:
        """The update rule's own statistics (Sophia: win rates per kind of parameter) and, for
        Sophia, `hessian_warmed` = 1 - beta2^refreshes: the share of its stationary value the
        EMA h holds (h starts at 0 and is not bias-corrected, so rho means less until then)."""
        report = getattr(self.optimizer, "diagnostics", None)
        if report is None:
            return {}
        if not isinstance(self.optimizer, (SophiaG, SophiaH)):
            return report()
        values = report(self.parameter_kinds)
        beta2 = self.optimizer.param_groups[0]["betas"][1]
        values["hessian_warmed"] = 1.0 - beta2**self.hessian_refreshes
        return values

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "hessian_refreshes": self.hessian_refreshes,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.hessian_refreshes = int(state.get("hessian_refreshes", 0))


def parameter_kinds(model: nn.Module) -> dict[int, str]:
    """{id(param): kind}: embeddings (token and position tables, and a head tied or not),
    matrices (the blocks' 2-D weights), vectors (LayerNorm gains, biases)."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    head = getattr(model, "lm_head", None)
    if head is not None:
        embeddings.add(id(head.weight))
    kinds = {}
    for p in model.parameters():
        if id(p) in embeddings:
            kinds[id(p)] = "embeddings"
        else:
            kinds[id(p)] = "matrices" if p.dim() >= 2 else "vectors"
    return kinds


def parameter_groups(
    model: nn.Module,
    weight_decay: float,
    decay_embeddings: bool = True,
    kinds: dict[int, str] | None = None,
) -> list[dict[str, Any]]:
    """Decay and no-decay groups. decay_embeddings: nanoGPT's split (every dim >= 2 tensor
    decays, the tied embedding and the position table too); False: the official Sophia script's
    split (Linear weights only; embeddings, biases and LayerNorm gains do not decay).
    `kinds`: parameter_kinds(model), when the caller has it already."""
    params = [p for p in model.parameters() if p.requires_grad]
    kinds = kinds or parameter_kinds(model)
    decays = lambda p: p.dim() >= 2 and (decay_embeddings or kinds[id(p)] != "embeddings")
    return [
        {"params": [p for p in params if decays(p)], "weight_decay": weight_decay},
        {"params": [p for p in params if not decays(p)], "weight_decay": 0.0},
    ]


def build_optimizer(
    cfg: OptimConfig,
    model: nn.Module,
    *,
    tokens_per_step: int,
    device: torch.device,
    estimation_tokens: int | None = None,
) -> TrainingOptimizer:
    """The update rule `cfg` names, with its Hessian estimator (see `_build`)."""
    kinds = parameter_kinds(model)
    built = _build(cfg, model, kinds, tokens_per_step=tokens_per_step, device=device,
                   estimation_tokens=estimation_tokens)  # fmt: skip
    built.parameter_kinds = kinds
    return built


def _build(
    cfg: OptimConfig,
    model: nn.Module,
    kinds: dict[int, str],
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
    groups = parameter_groups(model, cfg.weight_decay, cfg.decay_embeddings, kinds)
    betas = tuple(getattr(cfg, "betas", ()))
    if isinstance(cfg, AdamWConfig):
        fused = cfg.fused if cfg.fused is not None else device.type in ("cuda", "cpu")
        optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=betas, eps=cfg.eps, fused=fused)
        return TrainingOptimizer(optimizer)
    if isinstance(cfg, MuonConfig):
        # Muon owns the blocks' 2-D matrices; AdamW the embeddings, the tied head and vectors.
        matrices = {id(p) for p in model.parameters() if kinds[id(p)] == "matrices"}
        rest = [{**g, "params": [p for p in g["params"] if id(p) not in matrices]} for g in groups]
        optimizer = MuonAdamW(
            [p for p in model.parameters() if id(p) in matrices], rest, lr=cfg.lr,
            weight_decay=cfg.weight_decay, momentum=cfg.momentum, nesterov=cfg.nesterov,
            ns_steps=cfg.ns_steps, adjust_lr_fn=cfg.adjust_lr_fn,
            adamw_lr_ratio=cfg.adamw_lr_ratio, betas=betas, eps=cfg.eps,
            fused=device.type in ("cuda", "cpu"),
        )  # fmt: skip
        return TrainingOptimizer(optimizer, step_flops=optimizer.newton_schulz_flops())
    if isinstance(cfg, LionConfig):
        return TrainingOptimizer(Lion(groups, lr=cfg.lr, betas=betas, compiled=cfg.compiled))
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
            block_length=cfg.block_length, compiled=cfg.compiled,
        )  # fmt: skip
        return TrainingOptimizer(
            optimizer, Hutchinson(cfg.n_probes), cfg.hess_interval, refresh_before_step=True
        )
    raise ValueError(f"optim={cfg.name} has no builder: add a branch to optim/builder.py")
