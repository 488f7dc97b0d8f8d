"""Lion: evolved sign momentum (Chen et al. 2023, arXiv 2302.06675, Algorithm 2).

Per parameter tensor, decoupled weight decay:

    c ← β1·m + (1 − β1)·g                  (the interpolation that is signed)
    θ ← θ·(1 − lr·wd) − lr·sign(c)
    m ← β2·m + (1 − β2)·g                  (the momentum that is kept)

Every coordinate moves by exactly lr (before decay), so lr is 3-10x smaller than AdamW's and wd
correspondingly larger to keep lr·wd (the paper's advice, section 5).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor
from torch.optim import Optimizer

from optim.common import check_hyperparameters, group_by_device, group_by_device_and_dtype
from optim.compiled import resolve_compiled, run_compiled, scalar


def lion_update(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    weight_decay: float,
    foreach: bool = True,
    compiled: bool = False,
) -> None:
    """One Lion step on lists of tensors, in place (see the module docstring for the rule).

    Paths: single-tensor (the reference loop), multi-tensor (`torch._foreach_*`) and `compiled`,
    the whole step as one torch.compile graph (multi-tensor where compile fails).
    """
    if not params:
        return
    if compiled:
        impl = _compiled_lion_update
    elif foreach:
        impl = _multi_tensor_lion_update
    else:
        impl = _single_tensor_lion_update
    impl(params, grads, exp_avgs, lr=lr, beta1=beta1, beta2=beta2, weight_decay=weight_decay)


def _single_tensor_lion_update(params, grads, exp_avgs, *, lr, beta1, beta2, weight_decay) -> None:
    for param, grad, exp_avg in zip(params, grads, exp_avgs, strict=True):
        param.mul_(1 - lr * weight_decay)
        direction = exp_avg.mul(beta1).add_(grad, alpha=1 - beta1).sign_()
        param.add_(direction, alpha=-lr)
        exp_avg.mul_(beta2).add_(grad, alpha=1 - beta2)


def _multi_tensor_lion_update(params, grads, exp_avgs, *, lr, beta1, beta2, weight_decay) -> None:
    for indices in group_by_device_and_dtype(params).values():
        device_params = [params[i] for i in indices]
        device_grads = [grads[i] for i in indices]
        device_exp_avgs = [exp_avgs[i] for i in indices]
        if weight_decay != 0:
            torch._foreach_mul_(device_params, 1 - lr * weight_decay)
        direction = torch._foreach_lerp(device_exp_avgs, device_grads, 1 - beta1)
        torch._foreach_sign_(direction)
        torch._foreach_add_(device_params, direction, alpha=-lr)
        del direction
        torch._foreach_lerp_(device_exp_avgs, device_grads, 1 - beta2)


def _fused_lion_body(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    lr: Tensor,
    decay: Tensor,
    beta1: float,
    beta2: float,
) -> None:
    """The whole update as one graph for torch.compile: θ, g and m read once, θ and m written
    once (5 tensors of traffic to fused AdamW's 7). decay: 1 − lr·wd."""
    for param, grad, exp_avg in zip(params, grads, exp_avgs, strict=True):
        direction = exp_avg.lerp(grad, 1 - beta1).sign()
        param.copy_(param * decay - lr * direction)
        exp_avg.lerp_(grad, 1 - beta2)


def _compiled_lion_update(params, grads, exp_avgs, *, lr, beta1, beta2, weight_decay) -> None:
    for indices in group_by_device(params).values():
        tensors = [[t[i] for i in indices] for t in (params, grads, exp_avgs)]
        device = params[indices[0]].device
        lr_tensor, decay = scalar(lr, device), scalar(1 - lr * weight_decay, device)
        if not run_compiled(_fused_lion_body, *tensors, lr_tensor, decay, beta1, beta2):
            _multi_tensor_lion_update(
                *tensors, lr=lr, beta1=beta1, beta2=beta2, weight_decay=weight_decay
            )


class Lion(Optimizer):
    """Lion (Chen et al. 2023). State key: `exp_avg`.

    `compiled` None (default): torch.compile the step on first use when the parameters hold >=
    8M elements (optim/compiled.py), True / False: always / never; `foreach` picks the eager
    path: multi-tensor (default) or the single-tensor reference loop.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        *,
        foreach: bool | None = None,
        compiled: bool | None = None,
    ) -> None:
        check_hyperparameters(lr, betas, weight_decay)
        defaults = dict(
            lr=lr, betas=tuple(betas), weight_decay=weight_decay, foreach=foreach,
            compiled=compiled,
        )  # fmt: skip
        super().__init__(params, defaults)

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("foreach", None)
            group.setdefault("compiled", None)

    def _init_state(self, p: Tensor) -> dict:
        """The only place state is created (lazily, on the first step)."""
        state = self.state[p]
        if len(state) == 0:
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One Lion update of every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        every_param = [p for group in self.param_groups for p in group["params"]]
        for group in self.param_groups:
            params, grads, exp_avgs = [], [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("Lion does not support sparse gradients")
                params.append(p)
                grads.append(p.grad)
                exp_avgs.append(self._init_state(p)["exp_avg"])
            beta1, beta2 = group["betas"]
            lion_update(
                params,
                grads,
                exp_avgs,
                lr=group["lr"],
                beta1=beta1,
                beta2=beta2,
                weight_decay=group["weight_decay"],
                foreach=group["foreach"] is not False,
                compiled=resolve_compiled(group["compiled"], group["foreach"], every_param),
            )
        return loss

    @torch.no_grad()
    def diagnostics(self) -> dict[str, float]:
        """update_rms: RMS of the step before weight decay over all coordinates with state.

        Every coordinate of sign(c) is ±1 (0 only where c is exactly 0), so this is the
        coordinate-weighted RMS of the groups' lr: no pass over the tensors is needed.
        """
        total_sq, coordinates = 0.0, 0
        for group in self.param_groups:
            numel = sum(p.numel() for p in group["params"] if self.state.get(p))
            total_sq += numel * group["lr"] ** 2
            coordinates += numel
        return {"update_rms": (total_sq / coordinates) ** 0.5} if coordinates else {}
