"""What a built optimizer hands the training loop: the update rule, its Hessian estimator and
when to refresh it (`OptimizerPlan`), and the parameter kinds and decay groups every rule uses.

The loop stays optimizer-agnostic: it calls `step()`, asks `refreshes_hessian(step)` (after the
step, Sophia) or `refreshes_hessian_before(step)` (AdaHessian) and then runs the estimation pass
(training/hessian_pass.py) with `estimator`, or asks `estimates_on_training_batch(step)` and takes
the estimate from the training step's own graph. Built by each schema's `build` (optim/registry.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass
class OptimizerPlan:
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
    # Sophia: beta2 of its EMA h, which starts at 0 without bias correction (see diagnostics)
    hessian_beta: float | None = None
    hessian_refreshes: int = 0  # estimates taken into the optimizer's state so far
    # "fresh": a separate estimation pass on its own batch; "train": the training step's own
    # forward/backward yields the estimate (Hutchinson only, optim.hess_source)
    hess_source: str = "fresh"

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
        if self.estimator is None or self.refresh_before_step or self.hess_source == "train":
            return False
        return step % self.hess_interval == self.hess_interval - 1

    def refreshes_hessian_before(self, step: int) -> bool:
        """True before optimizer step `step` at 0, k, 2k, ... for a rule that needs an estimate
        from its first update on (AdaHessian): each refresh is estimated at the weights of the
        step that uses it, once per k steps (with k = 1, exactly one refresh per step)."""
        if self.hess_source == "train":
            return False
        return self.refresh_before_step and step % self.hess_interval == 0

    def estimates_on_training_batch(self, step: int) -> bool:
        """True when optimizer step `step`'s own forward/backward also yields the estimate
        (hess_source="train"), committed before the step: at the weights and steps a fresh
        refresh would use, before steps 0, k, 2k, ... (AdaHessian) or k, 2k, ... (Sophia, whose
        first k steps run with h = 0)."""
        if self.estimator is None or self.hess_source != "train":
            return False
        return step % self.hess_interval == 0 and (self.refresh_before_step or step > 0)

    def diagnostics(self) -> dict[str, float]:
        """The update rule's own statistics (Sophia: win rates per kind of parameter) and, for
        Sophia, `hessian_warmed` = 1 - beta2^refreshes: the share of its stationary value the
        EMA h holds (h starts at 0 and is not bias-corrected, so rho means less until then)."""
        report = getattr(self.optimizer, "diagnostics", None)
        if report is None:
            return {}
        if self.hessian_beta is None:
            return report()
        values = report(self.parameter_kinds)
        values["hessian_warmed"] = 1.0 - self.hessian_beta**self.hessian_refreshes
        return values

    def state_tensors(self) -> list[torch.Tensor]:
        """Every floating-point tensor of the per-parameter state (moments, h; not the scalar
        step counts), those of the optimizers it wraps (MuonAdamW) included."""
        inner = [self.optimizer] + [v for v in vars(self.optimizer).values()
                                    if isinstance(v, torch.optim.Optimizer)]  # fmt: skip
        return [
            value
            for optimizer in inner
            for per_param in optimizer.state.values()
            for value in per_param.values()
            if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dim() > 0
        ]

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
