"""Sophia: clipped, diagonal-Hessian-preconditioned momentum (Liu et al. 2023, arXiv 2305.14342).

Per parameter tensor, at every step (the official `SophiaG`, decoupled weight decay):

    θ ← θ · (1 − lr·wd)
    m ← β1·m + (1 − β1)·g
    θ ← θ − lr · sign(m) · min(|m| / (ρ·bs·h + ε), 1)          (paper eq. 9, ε = 1e-15)

and every k steps an estimator refreshes the Hessian EMA, h ← β2·h + (1 − β2)·ĥ (paper eq. 8),
through `update_hessian`:

- Sophia-G (`SophiaG`): ĥ = ĝ⊙ĝ, the gradient of the loss against labels sampled from the model,
  read from `p.grad` as the official code does. B·ĝ⊙ĝ is the Gauss-Newton-Bartlett estimate
  (B = tokens in the global batch), which is why `step(bs=B)` multiplies h by bs.
- Sophia-H (`SophiaH`): ĥ = u⊙(∇²L·u), Hutchinson's estimate of the mean loss's Hessian diagonal,
  passed in as `update_hessian(estimates)`. No factor B, and entries can be negative, so the
  denominator uses max(h, 0); momentum is bias-corrected, as in Levanter's working Sophia-H.

Because ε > 0 and h ≥ 0, sign(m)·min(|m|/d, 1) = clamp(m/d, −1, 1) exactly (IEEE division is
symmetric in sign), which is the form the code uses: one division and one clamp.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

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

# The official denominator's guard against h = 0: until the first refresh every step is a sign step.
SOPHIA_EPS = 1e-15


# ---------------------------------------------------------------------------------------------
# Functional core


def sophia_update(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    hessians: list[Tensor],
    state_steps: list[Tensor],
    *,
    lr: float,
    beta1: float,
    rho: float,
    bs: float,
    weight_decay: float,
    maximize: bool = False,
    bias_correction: bool = False,
    nonnegative_hessian: bool = False,
    foreach: bool = True,
    compiled: bool = False,
) -> None:
    """One Sophia step on lists of tensors, in place (see the module docstring for the rule).

    `bias_correction` divides m by (1 − β1^t) in the update (Sophia-H, Levanter);
    `nonnegative_hessian` uses max(h, 0) in the denominator (Sophia-H: Hutchinson can be negative).
    Paths: single-tensor (the reference, a loop like the official code), multi-tensor
    (`torch._foreach_*`) and `compiled`: the whole step as one torch.compile graph
    (optim/compiled.py; where compile fails it warns once and takes the multi-tensor path).
    """
    if not params:
        return
    if maximize:
        grads = torch._foreach_neg(grads) if foreach or compiled else [-g for g in grads]
    torch._foreach_add_(state_steps, 1.0)
    kwargs = dict(
        lr=lr,
        beta1=beta1,
        rho_bs=rho * bs,
        weight_decay=weight_decay,
        bias_correction=bias_correction,
        nonnegative_hessian=nonnegative_hessian,
    )
    if compiled:
        impl = _compiled_sophia_update
    elif foreach:
        impl = _multi_tensor_sophia_update
    else:
        impl = _single_tensor_sophia_update
    impl(params, grads, exp_avgs, hessians, state_steps, **kwargs)


def _momentum_scales(state_steps: list[Tensor], beta1: float, bias_correction: bool) -> list[float]:
    if not bias_correction:
        return [1.0] * len(state_steps)
    return [1.0 / (1.0 - beta1 ** step.item()) for step in state_steps]


def _single_tensor_sophia_update(
    params, grads, exp_avgs, hessians, state_steps, *, lr, beta1, rho_bs, weight_decay,
    bias_correction, nonnegative_hessian,
) -> None:  # fmt: skip
    scales = _momentum_scales(state_steps, beta1, bias_correction)
    for param, grad, exp_avg, hessian, scale in zip(
        params, grads, exp_avgs, hessians, scales, strict=True
    ):
        param.mul_(1 - lr * weight_decay)
        exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
        if nonnegative_hessian:
            hessian = hessian.clamp_min(0)
        ratio = (exp_avg.abs() * scale / (rho_bs * hessian + SOPHIA_EPS)).clamp(max=1)
        param.addcmul_(exp_avg.sign(), ratio, value=-lr)


def _multi_tensor_sophia_update(
    params, grads, exp_avgs, hessians, state_steps, *, lr, beta1, rho_bs, weight_decay,
    bias_correction, nonnegative_hessian,
) -> None:  # fmt: skip
    for indices in group_by_device_and_dtype(params).values():
        device_params = [params[i] for i in indices]
        device_grads = [grads[i] for i in indices]
        device_exp_avgs = [exp_avgs[i] for i in indices]
        device_hessians = [hessians[i] for i in indices]
        if weight_decay != 0:
            torch._foreach_mul_(device_params, 1 - lr * weight_decay)
        # lerp is m + (1 − β1)(g − m): the same EMA in one pass instead of two.
        torch._foreach_lerp_(device_exp_avgs, device_grads, 1 - beta1)
        # One temporary (a parameter-sized buffer per tensor) instead of two: d, then d/m, then
        # its reciprocal m/d (d/±0 = ±inf gives ±0 = m/d; NaN stays NaN). On CPU every fresh
        # buffer this large costs page faults, so fewer temporaries is most of the speed.
        if nonnegative_hessian:
            ratio = torch._foreach_clamp_min(device_hessians, 0.0)
            torch._foreach_mul_(ratio, rho_bs)
        else:
            ratio = torch._foreach_mul(device_hessians, rho_bs)
        torch._foreach_add_(ratio, SOPHIA_EPS)
        if bias_correction:
            # Dividing the denominator by the per-tensor scale is dividing m̂ = m·scale by it.
            scales = _momentum_scales([state_steps[i] for i in indices], beta1, True)
            torch._foreach_div_(ratio, scales)
        torch._foreach_div_(ratio, device_exp_avgs)
        torch._foreach_reciprocal_(ratio)
        torch._foreach_clamp_min_(ratio, -1.0)
        torch._foreach_clamp_max_(ratio, 1.0)
        torch._foreach_add_(device_params, ratio, alpha=-lr)


def _fused_sophia_body(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    hessians: list[Tensor],
    scales: Tensor | None,
    lr: Tensor,
    decay: Tensor,
    rho_bs: Tensor,
    beta1: float,
    nonnegative_hessian: bool,
) -> None:
    """The whole update as one graph for torch.compile: each tensor is read and written once.
    `scales` (bias correction, Sophia-H: one entry per tensor) is None for Sophia-G: no multiply,
    no per-step tensors. decay: 1 − lr·wd."""
    for i, (param, grad, exp_avg, hessian) in enumerate(
        zip(params, grads, exp_avgs, hessians, strict=True)
    ):
        exp_avg.lerp_(grad, 1 - beta1)
        if nonnegative_hessian:
            hessian = hessian.clamp_min(0)
        momentum = exp_avg if scales is None else exp_avg * scales[i]
        ratio = (momentum / (rho_bs * hessian + SOPHIA_EPS)).clamp(-1, 1)
        param.copy_(param * decay - lr * ratio)


def _compiled_sophia_update(
    params, grads, exp_avgs, hessians, state_steps, *, lr, beta1, rho_bs, weight_decay,
    bias_correction, nonnegative_hessian,
) -> None:  # fmt: skip
    """The compiled step, one graph per device; a device whose graph failed to compile takes the
    multi-tensor path (the failure happens before anything is updated)."""
    for indices in group_by_device(params).values():
        device = params[indices[0]].device
        tensors = [[t[i] for i in indices] for t in (params, grads, exp_avgs, hessians)]
        scales = None
        if bias_correction:
            # In float64, rounded once, as the eager step's Python-float scales are.
            steps = torch.stack([state_steps[i] for i in indices]).double()
            scales = (1.0 / (1.0 - beta1**steps)).float().to(device)
        if run_compiled(
            _fused_sophia_body, *tensors, scales, scalar(lr, device),
            scalar(1 - lr * weight_decay, device), scalar(rho_bs, device), beta1,
            nonnegative_hessian,
        ):  # fmt: skip
            continue
        _multi_tensor_sophia_update(
            *tensors, [state_steps[i] for i in indices], lr=lr, beta1=beta1, rho_bs=rho_bs,
            weight_decay=weight_decay, bias_correction=bias_correction,
            nonnegative_hessian=nonnegative_hessian,
        )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# The optimizers


class _Sophia(Optimizer):
    """State, Hessian refresh and diagnostics shared by SophiaG and SophiaH."""

    _bias_correction = False
    _nonnegative_hessian = False

    def __init__(
        self,
        params: Iterable,
        lr: float,
        betas: tuple[float, float],
        rho: float,
        weight_decay: float,
        *,
        maximize: bool,
        capturable: bool,
        foreach: bool | None,
        compiled: bool | None,
    ) -> None:
        check_hyperparameters(lr, betas, weight_decay)
        if not rho >= 0.0:
            raise ValueError(f"Invalid rho: {rho} (must be >= 0; the paper uses 0.03-0.05)")
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            rho=rho,
            weight_decay=weight_decay,
            maximize=maximize,
            capturable=capturable,
            foreach=foreach,
            compiled=compiled,
        )
        super().__init__(params, defaults)
        # Scalars of the last step, per group, for diagnostics(); not part of the state_dict.
        self._last_step: dict[int, tuple[float, float]] = {}

    def __setstate__(self, state: dict) -> None:
        # An official SophiaG state_dict has no foreach/compiled keys: fill in the defaults.
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("maximize", False)
            group.setdefault("capturable", False)
            group.setdefault("foreach", None)
            group.setdefault("compiled", None)
        self.__dict__.setdefault("_last_step", {})

    def _init_state(self, p: Tensor, capturable: bool) -> dict:
        """The only place state is created (lazily, on the first step or refresh)."""
        state = self.state[p]
        if len(state) == 0:
            # A float tensor, as the official code (and torch.optim) keep it; on the parameter's
            # device only when capturable (CUDA graphs), where a host scalar would not be captured.
            device = p.device if capturable else "cpu"
            state["step"] = torch.zeros((), dtype=torch.float32, device=device)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["hessian"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    @torch.no_grad()
    def update_hessian(self, estimates: Sequence[Tensor | None] | None = None) -> None:
        """Refresh the Hessian EMA: h ← β2·h + (1 − β2)·ĥ.

        estimates=None: ĥ = p.grad ⊙ p.grad for every parameter with a gradient (Sophia-G, the
        official `update_hessian()`: the GNB estimator leaves ĝ in p.grad). Otherwise one tensor
        ĥ (or None to skip) per parameter of every group, in group order (Sophia-H: u ⊙ Hu).
        """
        if estimates is None:
            per_group = [[p.grad for p in group["params"]] for group in self.param_groups]
        else:
            per_group = estimates_by_group(self.param_groups, estimates)
        for group, group_estimates in zip(self.param_groups, per_group, strict=True):
            beta2 = group["betas"][1]
            hessians, values = [], []
            for p, estimate in zip(group["params"], group_estimates, strict=True):
                if estimate is None:
                    continue
                hessians.append(self._init_state(p, group["capturable"])["hessian"])
                values.append(estimate)
            if not hessians:
                continue
            if estimates is None:
                torch._foreach_mul_(hessians, beta2)
                torch._foreach_addcmul_(hessians, values, values, value=1 - beta2)
            else:
                torch._foreach_lerp_(
                    hessians,
                    [v.to(h.dtype) for v, h in zip(values, hessians, strict=True)],
                    1 - beta2,
                )

    def _step(self, closure: Callable[[], float] | None, bs: float) -> float | None:
        if not bs > 0:
            raise ValueError(f"Invalid bs: {bs} (tokens in the global batch, must be > 0)")
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        every_param = [p for group in self.param_groups for p in group["params"]]
        for index, group in enumerate(self.param_groups):
            params, grads, exp_avgs, hessians, steps = [], [], [], [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
                state = self._init_state(p, group["capturable"])
                params.append(p)
                grads.append(p.grad)
                exp_avgs.append(state["exp_avg"])
                hessians.append(state["hessian"])
                steps.append(state["step"])
            beta1, _ = group["betas"]
            sophia_update(
                params,
                grads,
                exp_avgs,
                hessians,
                steps,
                lr=group["lr"],
                beta1=beta1,
                rho=group["rho"],
                bs=bs,
                weight_decay=group["weight_decay"],
                maximize=group["maximize"],
                bias_correction=self._bias_correction,
                nonnegative_hessian=self._nonnegative_hessian,
                foreach=group["foreach"] is not False,
                compiled=resolve_compiled(group["compiled"], group["foreach"], every_param),
            )
            self._last_step[index] = (group["lr"], bs)
        return loss

    @torch.no_grad()
    def diagnostics(self, kinds: Mapping[int, str] | None = None) -> dict[str, float]:
        """Statistics of the last step, computed from the state on demand (the step pays nothing).

        win_rate: the official definition, the share of coordinates with |m| < ρ·bs·h, i.e. not
        clipped (the authors keep it in 0.1-0.5; near 0 Sophia has degenerated into sign
        momentum). A coordinate whose h is 0 (an embedding row never seen, a position never
        used) counts as clipped: its step is lr·sign(m), whatever m is. With `kinds`
        ({id(param): kind}), also `win_rate_<kind>` per kind of parameter (e.g. embeddings,
        matrices, vectors). update_rms: RMS over all coordinates of lr·clamp(m/(ρ·bs·h + ε),
        −1, 1), the step before weight decay. hessian_l1 / hessian_l2: norms of h over all
        parameters. Exact for the last step as long as h was not refreshed after it.
        """
        unclipped: dict[str, int] = {}
        coordinates: dict[str, int] = {}
        update_sq = hessian_l1 = hessian_sq = 0.0
        for index, group in enumerate(self.param_groups):
            if index not in self._last_step:
                continue
            lr, bs = self._last_step[index]
            beta1 = group["betas"][0]
            for p in group["params"]:
                state = self.state.get(p)
                if not state:
                    continue
                hessian = state["hessian"].float()
                if self._nonnegative_hessian:
                    hessian = hessian.clamp_min(0)
                exp_avg = state["exp_avg"].float()
                if self._bias_correction:
                    exp_avg = exp_avg / (1 - beta1 ** state["step"].item())
                threshold = group["rho"] * bs * hessian
                hits = int((exp_avg.abs() < threshold).sum())
                for kind in ("all", (kinds or {}).get(id(p))):
                    if kind is not None:
                        unclipped[kind] = unclipped.get(kind, 0) + hits
                        coordinates[kind] = coordinates.get(kind, 0) + p.numel()
                ratio = exp_avg / (threshold + SOPHIA_EPS)
                update_sq += float(ratio.clamp(-1, 1).square().sum()) * lr**2
                hessian_l1 += float(state["hessian"].float().abs().sum())
                hessian_sq += float(state["hessian"].float().square().sum())
        if not coordinates:
            return {}
        report = {
            "win_rate": unclipped["all"] / coordinates["all"],
            "update_rms": (update_sq / coordinates["all"]) ** 0.5,
            "hessian_l1": hessian_l1,
            "hessian_l2": hessian_sq**0.5,
        }
        for kind in sorted(set(coordinates) - {"all"}):
            report[f"win_rate_{kind}"] = unclipped[kind] / coordinates[kind]
        return report


class SophiaG(_Sophia):
    """Sophia with the Gauss-Newton-Bartlett estimator: a drop-in for the official `SophiaG`.

    Same constructor, state keys (`step`, `exp_avg`, `hessian`) and update as the official code.
    Extras: `update_hessian(estimates)` for external estimates, `diagnostics()`, and the
    implementation switches `compiled` (None, the default: torch.compile the step on first use
    when the parameters hold >= 8M elements, optim/compiled.py; True / False: always / never)
    and `foreach` (the eager path: multi-tensor by default, False for the per-tensor loop).
    `capturable` is accepted for compatibility; it only keeps `step` on the parameter's device.

    Speed on 2 CPU cores, GPT-2 124M shapes (scripts/bench_optim.py): the compiled step reads and
    writes every tensor once, ≈ 0.9x the time of torch's fused AdamW (its memory floor); the eager
    foreach step ≈ torch's foreach AdamW but ≈ 4x the fused one; the per-tensor loop 8-12x. The
    compilation costs ≈ 33 s once per process (≈ 5 s with inductor's kernel cache warm).
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.965, 0.99),
        rho: float = 0.04,
        weight_decay: float = 1e-1,
        *,
        maximize: bool = False,
        capturable: bool = False,
        foreach: bool | None = None,
        compiled: bool | None = None,
    ) -> None:
        super().__init__(
            params, lr, betas, rho, weight_decay, maximize=maximize, capturable=capturable,
            foreach=foreach, compiled=compiled,
        )  # fmt: skip

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None, bs: int = 5120) -> float | None:
        """One update. bs: tokens in the global batch (the official default 5120 is a placeholder;
        pass the real count, or ρ silently changes meaning)."""
        return self._step(closure, bs)


class SophiaH(_Sophia):
    """Sophia with Hutchinson's estimator (u ⊙ Hu), following Levanter's working version.

    Differences from SophiaG: the estimate is the Hessian of the mean loss (no batch-size factor,
    so `step` takes no `bs` and ρ is Levanter's γ, 0.01); negative entries of h count as 0 in the
    denominator (a sign step there); momentum is bias-corrected. h itself is not bias-corrected
    (neither is it in Levanter), so the first refreshes under-estimate it and clip more.
    Feed it with `update_hessian(estimates)`.
    """

    _bias_correction = True
    _nonnegative_hessian = True

    def __init__(
        self,
        params: Iterable,
        lr: float = 6e-4,
        betas: tuple[float, float] = (0.965, 0.99),
        rho: float = 0.01,
        weight_decay: float = 0.2,
        *,
        maximize: bool = False,
        capturable: bool = False,
        foreach: bool | None = None,
        compiled: bool | None = None,
    ) -> None:
        super().__init__(
            params, lr, betas, rho, weight_decay, maximize=maximize, capturable=capturable,
            foreach=foreach, compiled=compiled,
        )  # fmt: skip

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One update (no bs: the Hutchinson estimate needs no batch-size factor)."""
        return self._step(closure, bs=1.0)
