"""Muon on the blocks' hidden matrices, AdamW on everything else: the study's positive control.

Muon (Jordan et al. 2024; `torch.optim.Muon`) replaces each 2-D weight's momentum by its nearest
semi-orthogonal matrix (five Newton-Schulz iterations), so every direction of the update moves
at the same rate. It set the modded-nanogpt speed records and measures ~1.3-1.4x over a tuned
AdamW at 0.1B parameters (Wen et al. 2025, arXiv 2509.02046). The usual recipe, followed here:
Muon only on the 2-D matrices inside the transformer blocks; the token and position embeddings
(and the head tied to them), LayerNorm gains and biases train with AdamW.

Learning rates: `adjust_lr_fn="match_rms_adamw"` (Liu et al. 2025, "Muon is scalable for LLM
training") scales each matrix's step to the RMS of an AdamW update, so Muon's lr lives on AdamW's
scale and one lr can serve both halves; `adamw_lr_ratio` sets the AdamW half apart if wanted.

`MuonAdamW` is one `torch.optim.Optimizer` over both halves (so GradScaler, zero_grad, the lr
schedule and checkpoints treat it like any optimizer); the math is torch's own Muon and fused
AdamW, each stepping the param groups it owns.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def newton_schulz_flops(shape: torch.Size, ns_steps: int) -> float:
    """FLOPs of torch's Newton-Schulz orthogonalization of one (A, B) matrix.

    Per iteration, with m = min(A, B), n = max(A, B): X X^T (2 m^2 n), (X X^T)^2 (2 m^3) and that
    times X (2 m^2 n). Counted as training compute: at small batches it is not negligible.
    """
    m, n = sorted(shape[:2])
    return float(ns_steps * (4 * m * m * n + 2 * m**3))


class MuonAdamW(torch.optim.Optimizer):
    """torch.optim.Muon on `muon_params`, torch.optim.AdamW on `adamw_groups`.

    `param_groups` is the union of the two inner optimizers' groups (the same dicts), so setting
    a group's lr reaches the inner optimizer that steps it. Each group carries `lr_ratio`, its lr
    relative to the scheduled lr (1 for Muon's matrices, `adamw_lr_ratio` for the rest).
    """

    def __init__(
        self,
        muon_params: list[nn.Parameter],
        adamw_groups: list[dict[str, Any]],
        *,
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        adjust_lr_fn: str = "match_rms_adamw",
        adamw_lr_ratio: float = 1.0,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        fused: bool | None = None,
    ) -> None:
        if not lr > 0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not adamw_lr_ratio > 0:
            raise ValueError(f"Invalid adamw_lr_ratio: {adamw_lr_ratio}")
        self.muon = torch.optim.Muon(
            [{"params": muon_params, "lr_ratio": 1.0}], lr=lr, weight_decay=weight_decay,
            momentum=momentum, nesterov=nesterov, ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn,
        )  # fmt: skip
        adamw_groups = [{**g, "lr": lr * adamw_lr_ratio, "lr_ratio": adamw_lr_ratio}
                        for g in adamw_groups if g["params"]]  # fmt: skip
        self.adamw = torch.optim.AdamW(adamw_groups, lr=lr, betas=betas, eps=eps, fused=fused)
        self.ns_steps = ns_steps
        super().__init__(self.muon.param_groups + self.adamw.param_groups, defaults={})

    def newton_schulz_flops(self) -> float:
        """FLOPs one step spends orthogonalizing (on top of the model's forward/backward)."""
        return sum(
            newton_schulz_flops(p.shape, self.ns_steps)
            for g in self.muon.param_groups
            for p in g["params"]
        )

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.muon.step()
        self.adamw.step()
        return loss

    def state_dict(self) -> dict[str, Any]:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if set(state_dict) != {"muon", "adamw"}:
            raise ValueError(
                f"not a MuonAdamW state (keys {sorted(state_dict)}): resume with the optimizer "
                "the checkpoint was trained with"
            )
        self.muon.load_state_dict(state_dict["muon"])
        self.adamw.load_state_dict(state_dict["adamw"])
        # Loading replaces the inner optimizers' group dicts: share the new ones again, or the
        # lr schedule would write into the old ones after a resume.
        self.param_groups = self.muon.param_groups + self.adamw.param_groups
