"""AdaHessian (Yao et al. 2021, arXiv 2006.00719): Adam with the squared gradient replaced by a
spatially averaged Hutchinson estimate of the Hessian diagonal.

Every k steps (k = 1 in the paper's main results; section 3.4 describes the delayed update),
`update_hessian(estimates)` receives ĥ = u ⊙ (∇²L·u) per parameter and refreshes

    D ← spatial_average(|ĥ|)                  (paper eq. 10)
    v ← β2·v + (1 − β2)·D⊙D

and every step
    m ← β1·m + (1 − β1)·g
    m̂ = m / (1 − β1^t),  v̂ = v / (1 − β2^r)   (t counts steps, r counts Hessian refreshes)
    θ ← θ − lr·( m̂ / ((√v̂)^p + ε) + wd·θ )  (p = hessian_power; decoupled weight decay)

v's bias correction counts refreshes, not steps: v is an EMA over refreshes, so its zero-init bias
after r refreshes is β2^r; counting steps would under-correct by a factor of k early on. With
k = 1 both counts agree with the official code.

Spatial averaging (the official fairseq `--block-length`): tensors of 1 dimension are not
averaged; tensors of ≥ 2 dimensions are averaged over blocks of `block_length` consecutive elements
along the last dimension, a trailing remainder shorter than `block_length` forming its own block;
`block_length` None or 0 averages whole rows (the last dimension).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor
from torch.optim import Optimizer

from optim.common import (
    check_hyperparameters,
    estimates_by_group,
    group_by_device,
    group_by_device_and_dtype,
)
from optim.compiled import resolve_compiled, run_compiled, scalar


def spatial_average(diagonal: Tensor, block_length: int | None) -> Tensor:
    """Replace each entry by the mean over its block along the last dimension (see module doc)."""
    if diagonal.dim() < 2:
        return diagonal
    length = diagonal.shape[-1]
    block = min(block_length, length) if block_length else length
    full = length - length % block
    averaged = torch.empty_like(diagonal)
    if full:
        blocks = diagonal[..., :full].unflatten(-1, (full // block, block))
        averaged[..., :full] = blocks.mean(-1, keepdim=True).expand_as(blocks).flatten(-2)
    if full < length:
        averaged[..., full:] = diagonal[..., full:].mean(-1, keepdim=True)
    return averaged


def adahessian_update(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_hessian_diag_sqs: list[Tensor],
    state_steps: list[Tensor],
    hessian_steps: list[Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    hessian_power: float,
    foreach: bool = True,
    compiled: bool = False,
) -> None:
    """One AdaHessian step on lists of tensors, in place (see the module docstring for the rule).

    Paths: single-tensor (the reference loop), multi-tensor (`torch._foreach_*`) and `compiled`,
    the whole step as one torch.compile graph (multi-tensor where compile fails).
    """
    if not params:
        return
    torch._foreach_add_(state_steps, 1.0)
    if compiled:
        impl = _compiled_adahessian_update
    elif foreach:
        impl = _multi_tensor_adahessian_update
    else:
        impl = _single_tensor_adahessian_update
    impl(
        params, grads, exp_avgs, exp_hessian_diag_sqs, state_steps, hessian_steps, lr=lr,
        beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay, hessian_power=hessian_power,
    )  # fmt: skip


def _bias_corrections(steps: list[Tensor], beta: float) -> list[float]:
    return [1 - beta ** step.item() for step in steps]


def _single_tensor_adahessian_update(
    params, grads, exp_avgs, exp_hessian_diag_sqs, state_steps, hessian_steps, *, lr, beta1,
    beta2, eps, weight_decay, hessian_power,
) -> None:  # fmt: skip
    corrections1 = _bias_corrections(state_steps, beta1)
    corrections2 = _bias_corrections(hessian_steps, beta2)
    for i, param in enumerate(params):
        exp_avg = exp_avgs[i]
        exp_avg.mul_(beta1).add_(grads[i], alpha=1 - beta1)
        hessian = (exp_hessian_diag_sqs[i] / corrections2[i]).sqrt_()
        denom = hessian.pow_(hessian_power).add_(eps)
        param.mul_(1 - lr * weight_decay)
        param.addcdiv_(exp_avg, denom, value=-lr / corrections1[i])


def _multi_tensor_adahessian_update(
    params, grads, exp_avgs, exp_hessian_diag_sqs, state_steps, hessian_steps, *, lr, beta1,
    beta2, eps, weight_decay, hessian_power,
) -> None:  # fmt: skip
    for indices in group_by_device_and_dtype(params).values():
        device_params = [params[i] for i in indices]
        device_exp_avgs = [exp_avgs[i] for i in indices]
        corrections1 = _bias_corrections([state_steps[i] for i in indices], beta1)
        corrections2 = _bias_corrections([hessian_steps[i] for i in indices], beta2)
        torch._foreach_lerp_(device_exp_avgs, [grads[i] for i in indices], 1 - beta1)
        denom = torch._foreach_div([exp_hessian_diag_sqs[i] for i in indices], corrections2)
        torch._foreach_sqrt_(denom)
        if hessian_power != 1:
            torch._foreach_pow_(denom, hessian_power)
        torch._foreach_add_(denom, eps)
        if weight_decay != 0:
            torch._foreach_mul_(device_params, 1 - lr * weight_decay)
        step_sizes = [-lr / correction for correction in corrections1]
        torch._foreach_addcdiv_(device_params, device_exp_avgs, denom, step_sizes)


def _fused_adahessian_body(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_hessian_diag_sqs: list[Tensor],
    corrections1: Tensor,
    corrections2: Tensor,
    lr: Tensor,
    decay: Tensor,
    beta1: float,
    eps: float,
    hessian_power: float,
) -> None:
    """The whole update as one graph for torch.compile: θ, g, m, v read once, θ and m written
    once (6 tensors of traffic to fused AdamW's 7). corrections1/2[i]: 1 − β1^t and 1 − β2^r of
    tensor i; decay: 1 − lr·wd. The arithmetic follows the eager step's order (m/denom, then
    times the step size) so the two agree to rounding."""
    for i, (param, grad, exp_avg, square) in enumerate(
        zip(params, grads, exp_avgs, exp_hessian_diag_sqs, strict=True)
    ):
        exp_avg.lerp_(grad, 1 - beta1)
        hessian = (square / corrections2[i]).sqrt()
        if hessian_power != 1:
            hessian = hessian.pow(hessian_power)
        param.copy_(param * decay - (lr / corrections1[i]) * (exp_avg / (hessian + eps)))


def _compiled_adahessian_update(
    params, grads, exp_avgs, exp_hessian_diag_sqs, state_steps, hessian_steps, *, lr, beta1,
    beta2, eps, weight_decay, hessian_power,
) -> None:  # fmt: skip
    for indices in group_by_device(params).values():
        device = params[indices[0]].device
        tensors = [[t[i] for i in indices] for t in (params, grads, exp_avgs, exp_hessian_diag_sqs)]
        # In float64, rounded once, as the eager step's Python-float corrections are.
        steps = torch.stack([state_steps[i] for i in indices]).double()
        refreshes = torch.stack([hessian_steps[i] for i in indices]).double()
        corrections1 = (1 - beta1**steps).float().to(device)
        corrections2 = (1 - beta2**refreshes).float().to(device)
        if run_compiled(
            _fused_adahessian_body, *tensors, corrections1, corrections2, scalar(lr, device),
            scalar(1 - lr * weight_decay, device), beta1, eps, hessian_power,
        ):  # fmt: skip
            continue
        _multi_tensor_adahessian_update(
            *tensors, [state_steps[i] for i in indices], [hessian_steps[i] for i in indices],
            lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
            hessian_power=hessian_power,
        )  # fmt: skip


class AdaHessian(Optimizer):
    """AdaHessian with an external Hutchinson estimate, refreshed through `update_hessian`.

    State keys: `step`, `hessian_step` (refresh count), `exp_avg`, `exp_hessian_diag_sq`.
    Nothing is tied to a device; each param group is handled on its own. `compiled` None
    (default): torch.compile the step on first use when the parameters hold >= 8M elements
    (optim/compiled.py), True / False: always / never; `foreach=False`: the reference loop.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 0.15,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-4,
        weight_decay: float = 0.0,
        hessian_power: float = 1.0,
        block_length: int | None = 32,
        *,
        foreach: bool | None = None,
        compiled: bool | None = None,
    ) -> None:
        check_hyperparameters(lr, betas, weight_decay)
        if not eps > 0.0:
            raise ValueError(f"Invalid eps: {eps} (must be > 0; the paper uses 1e-4)")
        if not 0.0 <= hessian_power <= 1.0:
            raise ValueError(f"Invalid hessian_power: {hessian_power} (must be in [0, 1])")
        if block_length is not None and block_length < 0:
            raise ValueError(f"Invalid block_length: {block_length} (>= 1, or 0/None for rows)")
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            hessian_power=hessian_power,
            block_length=block_length,
            foreach=foreach,
            compiled=compiled,
        )
        super().__init__(params, defaults)

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("foreach", None)
            group.setdefault("compiled", None)

    def _init_state(self, p: Tensor) -> dict:
        """The only place state is created (lazily, on the first refresh or step)."""
        state = self.state[p]
        if len(state) == 0:
            state["step"] = torch.zeros((), dtype=torch.float32)
            state["hessian_step"] = torch.zeros((), dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_hessian_diag_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    @torch.no_grad()
    def update_hessian(self, estimates: Sequence[Tensor | None]) -> None:
        """Refresh v ← β2·v + (1 − β2)·D⊙D, D = spatial_average(|ĥ|).

        estimates: one Hutchinson estimate ĥ = u ⊙ Hu (or None to skip) per parameter of every
        group, in group order.
        """
        for group, group_estimates in zip(
            self.param_groups, estimates_by_group(self.param_groups, estimates), strict=True
        ):
            beta2 = group["betas"][1]
            squares, diagonals, steps = [], [], []
            for p, estimate in zip(group["params"], group_estimates, strict=True):
                if estimate is None:
                    continue
                state = self._init_state(p)
                squares.append(state["exp_hessian_diag_sq"])
                diagonals.append(spatial_average(estimate.abs().to(p.dtype), group["block_length"]))
                steps.append(state["hessian_step"])
            if squares:
                torch._foreach_mul_(squares, beta2)
                torch._foreach_addcmul_(squares, diagonals, diagonals, value=1 - beta2)
                torch._foreach_add_(steps, 1.0)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One update; every parameter with a gradient must have had an `update_hessian` first."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        every_param = [p for group in self.param_groups for p in group["params"]]
        for group in self.param_groups:
            params, grads, exp_avgs, squares, steps, hessian_steps = [], [], [], [], [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("AdaHessian does not support sparse gradients")
                state = self._init_state(p)
                if state["hessian_step"].item() == 0:
                    # v = 0 with zero bias correction would be 0/0: fail here, not with NaNs later.
                    raise RuntimeError(
                        "AdaHessian.step() on a parameter with no Hessian estimate yet: call "
                        "update_hessian(estimates) before the first step"
                    )
                params.append(p)
                grads.append(p.grad)
                exp_avgs.append(state["exp_avg"])
                squares.append(state["exp_hessian_diag_sq"])
                steps.append(state["step"])
                hessian_steps.append(state["hessian_step"])
            beta1, beta2 = group["betas"]
            adahessian_update(
                params,
                grads,
                exp_avgs,
                squares,
                steps,
                hessian_steps,
                lr=group["lr"],
                beta1=beta1,
                beta2=beta2,
                eps=group["eps"],
                weight_decay=group["weight_decay"],
                hessian_power=group["hessian_power"],
                foreach=group["foreach"] is not False,
                compiled=resolve_compiled(group["compiled"], group["foreach"], every_param),
            )
        return loss

    @torch.no_grad()
    def diagnostics(self) -> dict[str, float]:
        """Computed from the state on demand: update_rms (RMS over all coordinates of lr·m̂/denom,
        the last step before weight decay) and hessian_l1 / hessian_l2 (norms of √v̂, the
        bias-corrected Hessian-diagonal magnitude the update divides by)."""
        update_sq, hessian_l1, hessian_sq, coordinates = 0.0, 0.0, 0.0, 0
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                state = self.state.get(p)
                if not state or state["step"].item() == 0 or state["hessian_step"].item() == 0:
                    continue
                exp_avg = state["exp_avg"].float() / (1 - beta1 ** state["step"].item())
                square = state["exp_hessian_diag_sq"].float()
                hessian = (square / (1 - beta2 ** state["hessian_step"].item())).sqrt()
                update = exp_avg / (hessian.pow(group["hessian_power"]) + group["eps"])
                update_sq += float(update.square().sum()) * group["lr"] ** 2
                hessian_l1 += float(hessian.sum())
                hessian_sq += float(hessian.square().sum())
                coordinates += p.numel()
        if coordinates == 0:
            return {}
        return {
            "update_rms": (update_sq / coordinates) ** 0.5,
            "hessian_l1": hessian_l1,
            "hessian_l2": hessian_sq**0.5,
        }
