"""The optimizers of `optim=`: one dataclass each (its keys, defaults, checks and `build`).

Adding an optimizer takes four places: its update rule (optim/<name>.py), its dataclass here
(listed in OPTIMIZERS), its yaml (configs/optim/<name>.yaml) and its test. The schema registry
(configs/schema.py), the study's names and colours (study/report.py, study/plots.py) and the
tests' lists all read OPTIMIZERS.

`build` imports torch and the update rule inside the method: study/ reads this table for names
and colours on machines without torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from optim.config import (
    HutchinsonConfig,
    OptimConfig,
    SecondOrderConfig,
    check_betas,
)

if TYPE_CHECKING:
    import torch

    from optim.plan import OptimizerPlan


def _fused(device: torch.device) -> bool:
    """torch has fused AdamW kernels on CUDA and CPU."""
    return device.type in ("cuda", "cpu")


@dataclass
class AdamWConfig(OptimConfig):
    display_name = "AdamW"
    color = "tab:blue"

    name: str = "adamw"
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    fused: bool | None = None  # None: fused wherever torch has the kernel for the device

    def __post_init__(self) -> None:
        super().__post_init__()
        check_betas(self.name, self.betas)
        if not self.eps > 0:
            raise ValueError(f"optim.eps must be > 0, got {self.eps}")

    def build(self, model, *, device, estimation_tokens) -> OptimizerPlan:
        import torch

        from optim.plan import OptimizerPlan, parameter_groups, parameter_kinds

        kinds = parameter_kinds(model)
        groups = parameter_groups(model, self.weight_decay, self.decay_embeddings, kinds)
        fused = self.fused if self.fused is not None else _fused(device)
        optimizer = torch.optim.AdamW(
            groups, lr=self.lr, betas=tuple(self.betas), eps=self.eps, fused=fused
        )
        return OptimizerPlan(optimizer, parameter_kinds=kinds)


@dataclass
class LionConfig(OptimConfig):
    """Lion (Chen et al. 2023) as the Sophia paper's 125M baseline: betas (0.95, 0.98), lr 1e-4."""

    display_name = "Lion"
    color = "tab:green"

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
        check_betas(self.name, self.betas)

    def build(self, model, *, device, estimation_tokens) -> OptimizerPlan:
        from optim.lion import Lion
        from optim.plan import OptimizerPlan, parameter_groups, parameter_kinds

        kinds = parameter_kinds(model)
        groups = parameter_groups(model, self.weight_decay, self.decay_embeddings, kinds)
        optimizer = Lion(groups, lr=self.lr, betas=tuple(self.betas), compiled=self.compiled)
        return OptimizerPlan(optimizer, parameter_kinds=kinds)


def _check_rho(rho: float, usual: str) -> None:
    if not rho > 0:
        raise ValueError(f"optim.rho must be > 0, got {rho} ({usual})")


@dataclass
class SophiaConfig(SecondOrderConfig):
    """Sophia-G (GNB estimator), the official 125M GPT-2 settings."""

    display_name = "Sophia-G"
    color = "tab:red"

    name: str = "sophia"
    lr: float = 6e-4
    min_lr: float = 1.5e-5
    weight_decay: float = 0.2
    betas: list[float] = field(default_factory=lambda: [0.965, 0.99])
    rho: float = 0.05  # multiplies bs·h, bs = tokens in the global estimation batch
    # None: torch.compile the update step when the model has >= 8M parameters (optim/compiled.py)
    compiled: bool | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_betas(self.name, self.betas)
        _check_rho(self.rho, "the paper uses 0.03-0.05")

    def build(self, model, *, device, estimation_tokens) -> OptimizerPlan:
        """GNB: B·ĝ⊙ĝ estimates the Hessian diagonal; the optimizer keeps ĝ⊙ĝ and multiplies by
        bs = B, the tokens of the global estimation batch, in its step. So rho keeps its meaning
        whatever the estimation batch is (the official script hard-wires 480 x 1024, which
        silently changes rho whenever the batch differs)."""
        from optim.hessian import GaussNewtonBartlett
        from optim.plan import OptimizerPlan, parameter_groups, parameter_kinds
        from optim.sophia import SophiaG

        kinds = parameter_kinds(model)
        groups = parameter_groups(model, self.weight_decay, self.decay_embeddings, kinds)
        optimizer = SophiaG(
            groups, lr=self.lr, betas=tuple(self.betas), rho=self.rho, compiled=self.compiled
        )
        return OptimizerPlan(
            optimizer, GaussNewtonBartlett(), self.hess_interval, {"bs": estimation_tokens},
            parameter_kinds=kinds, hessian_beta=self.betas[1],
        )  # fmt: skip


@dataclass
class SophiaHConfig(HutchinsonConfig):
    """Sophia-H (Hutchinson estimator), Levanter's small-model settings: rho is Levanter's γ,
    applied to h directly (no batch-size factor)."""

    display_name = "Sophia-H"
    color = "tab:purple"

    name: str = "sophiah"
    lr: float = 6e-4
    min_lr: float = 1.5e-5
    weight_decay: float = 0.2
    betas: list[float] = field(default_factory=lambda: [0.965, 0.99])
    rho: float = 0.01
    # None: torch.compile the update step when the model has >= 8M parameters (optim/compiled.py)
    compiled: bool | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_betas(self.name, self.betas)
        _check_rho(self.rho, "Levanter's Sophia-H uses 0.01")

    def build(self, model, *, device, estimation_tokens) -> OptimizerPlan:
        """Hutchinson estimates the Hessian of the mean loss itself, with no batch-size factor,
        so rho applies to h directly (Levanter's gamma = 0.01) and SophiaH.step() takes no bs."""
        from optim.hessian import Hutchinson
        from optim.plan import OptimizerPlan, parameter_groups, parameter_kinds
        from optim.sophia import SophiaH

        kinds = parameter_kinds(model)
        groups = parameter_groups(model, self.weight_decay, self.decay_embeddings, kinds)
        optimizer = SophiaH(
            groups, lr=self.lr, betas=tuple(self.betas), rho=self.rho, compiled=self.compiled
        )
        return OptimizerPlan(
            optimizer, Hutchinson(self.n_probes), self.hess_interval,
            parameter_kinds=kinds, hessian_beta=self.betas[1], hess_source=self.hess_source,
        )  # fmt: skip


@dataclass
class AdaHessianConfig(HutchinsonConfig):
    """AdaHessian, the paper's transformer settings (IWSLT14) with the Hessian every step."""

    display_name = "AdaHessian"
    color = "tab:orange"

    name: str = "adahessian"
    lr: float = 0.047
    min_lr: float = 2.35e-3  # 0.05 x peak, the Sophia paper's cosine floor
    weight_decay: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-4
    hessian_power: float = 1.0
    block_length: int = 32  # spatial averaging along the last dim; 0 averages whole rows
    hess_interval: int = 1
    # None: torch.compile the update step when the model has >= 8M parameters (optim/compiled.py)
    compiled: bool | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_betas(self.name, self.betas)
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

    def build(self, model, *, device, estimation_tokens) -> OptimizerPlan:
        """AdaHessian divides by its Hessian from the first step on (Sophia starts with h = 0),
        so it refreshes before its steps, at the weights the step uses."""
        from optim.adahessian import AdaHessian
        from optim.hessian import Hutchinson
        from optim.plan import OptimizerPlan, parameter_groups, parameter_kinds

        kinds = parameter_kinds(model)
        groups = parameter_groups(model, self.weight_decay, self.decay_embeddings, kinds)
        optimizer = AdaHessian(
            groups, lr=self.lr, betas=tuple(self.betas), eps=self.eps,
            hessian_power=self.hessian_power, block_length=self.block_length,
            compiled=self.compiled,
        )  # fmt: skip
        return OptimizerPlan(
            optimizer, Hutchinson(self.n_probes), self.hess_interval,
            refresh_before_step=True, parameter_kinds=kinds, hess_source=self.hess_source,
        )  # fmt: skip


@dataclass
class MuonConfig(OptimConfig):
    """Muon on the blocks' 2-D matrices, AdamW on embeddings, head and norms (optim/muon.py).

    `lr` is on AdamW's scale (match_rms_adamw) and serves both halves unless adamw_lr_ratio says
    otherwise; weight_decay applies to Muon's matrices and the AdamW matrices alike."""

    display_name = "Muon"
    color = "tab:brown"

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
        check_betas(self.name, self.betas)
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

    def build(self, model, *, device, estimation_tokens) -> OptimizerPlan:
        """Muon owns the blocks' 2-D matrices; AdamW the embeddings, the tied head and vectors."""
        from optim.muon import MuonAdamW
        from optim.plan import OptimizerPlan, parameter_groups, parameter_kinds

        kinds = parameter_kinds(model)
        groups = parameter_groups(model, self.weight_decay, self.decay_embeddings, kinds)
        matrices = {id(p) for p in model.parameters() if kinds[id(p)] == "matrices"}
        rest = [{**g, "params": [p for p in g["params"] if id(p) not in matrices]} for g in groups]
        optimizer = MuonAdamW(
            [p for p in model.parameters() if id(p) in matrices], rest, lr=self.lr,
            weight_decay=self.weight_decay, momentum=self.momentum, nesterov=self.nesterov,
            ns_steps=self.ns_steps, adjust_lr_fn=self.adjust_lr_fn,
            adamw_lr_ratio=self.adamw_lr_ratio, betas=tuple(self.betas), eps=self.eps,
            fused=_fused(device),
        )  # fmt: skip
        return OptimizerPlan(
            optimizer, step_flops=optimizer.newton_schulz_flops(), parameter_kinds=kinds
        )


# The `optim=` choices, in the order tables and figures list them.
OPTIMIZERS: dict[str, type[OptimConfig]] = {
    cls.name: cls
    for cls in (AdamWConfig, LionConfig, SophiaConfig, SophiaHConfig, AdaHessianConfig, MuonConfig)
}


def display_name(optimizer: str) -> str:
    """'Sophia-G' for 'sophia'; an unknown name (a record from elsewhere) as it is."""
    schema = OPTIMIZERS.get(optimizer)
    return schema.display_name if schema else optimizer


def color(optimizer: str) -> str:
    schema = OPTIMIZERS.get(optimizer)
    return schema.color if schema else OptimConfig.color
