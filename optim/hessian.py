"""Diagonal Hessian estimators that feed Sophia and AdaHessian: the math, apart from the update
rules and from the pass over micro-batches and ranks that runs them (training/hessian_pass.py).

- `GaussNewtonBartlett` (Sophia-G, paper section 2.3 / Algorithm 2): ĝ is the gradient of the
  mean cross-entropy against labels ŷ ~ softmax(logits) sampled at every position. For B tokens,
  E[B·ĝ⊙ĝ] is the Gauss-Newton diagonal of the mean loss,
  diag(1/B Σ_i J_iᵀ(diag p_i − p_i p_iᵀ)J_i): the cross terms vanish because
  E_ŷ[∇ℓ_i] = J_iᵀ(p_i − E[e_ŷ]) = 0. ĝ must be the gradient of the whole global batch before it
  is squared, so the pass sums gradients over micro-batches and ranks first (`reduces =
  "gradients"`); the optimizer squares p.grad itself (`update_hessian()`) and multiplies h by
  bs = B in its step.
- `Hutchinson` (Sophia-H, AdaHessian): ĥ = u ⊙ (∇²L u) with Rademacher u, E[ĥ] = diag(∇²L).
  Linear in the loss, so each micro-batch's estimate is averaged afterwards (`reduces =
  "estimates"`).

Random draws (labels, probes) come from generators seeded by (seed, step, chunk), where chunk =
micro_step·world_size + rank is the index data/batches.py gives that slice of the global batch
(`draw_generator`): the estimate depends on the global batch alone, not on how it is split over
ranks and micro-batches, and a resumed run draws the same labels and probes as an uninterrupted
one. Each estimator's `commit` returns statistics with 'skipped' (1 when the estimate was not
finite and the Hessian state was left untouched; every rank decides alike because the estimate
is reduced first).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

# FLOPs of one Hutchinson probe's Hessian-vector product, in units of a training step's FLOPs
# (forward + backward). Reverse-over-reverse differentiates the whole gradient graph, which holds
# the forward and the backward: torch.utils.flop_counter measured 2.07-2.11x a training step on
# GPT-2 shapes (the gradient with create_graph=True costs exactly 1x). tests/optim/test_hessian.py
# checks the accounting against the flop counter.
HVP_STEP_EQUIVALENTS = 2.0

Autocast = Callable[[], AbstractContextManager]


def generator_for(device: torch.device, *parts: int) -> torch.Generator:
    """A generator on `device` seeded from integers (seed, step, chunk, ...), stable across runs."""
    digest = hashlib.sha256(repr(tuple(int(p) for p in parts)).encode()).digest()
    generator = torch.Generator(device=device)
    generator.manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return generator


def draw_generator(
    seed: int, step: int, micro_step: int, rank: int, world_size: int, device: torch.device
) -> torch.Generator:
    """The generator of one micro-batch's labels or probes: seeded by (seed, step, chunk), chunk
    being the global index data/batches.py gives this rank's micro-batch."""
    return generator_for(device, seed, step, micro_step * world_size + rank)


def optimizer_params(optimizer: torch.optim.Optimizer) -> list[Tensor]:
    """Parameters in `update_hessian(estimates)` order: every group, in group order."""
    return [p for group in optimizer.param_groups for p in group["params"]]


# ---------------------------------------------------------------------------------------------
# Gauss-Newton-Bartlett (Sophia-G)


# Vocabulary entries per chunk in the two-level inverse-CDF draw below.
SAMPLE_CHUNK = 128


def sample_from_weights(weights: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """One index per row of `weights` (N, C), drawn with probability weights / row total.

    The CDF is inverted in two levels: the sums of chunks of SAMPLE_CHUNK entries (one read of
    `weights`), a binary search among the chunks, then a cumulative sum and a search inside the
    chosen chunk only. A full cumsum over a 50k vocabulary costs as much as the softmax itself and
    torch.multinomial took six training steps per refresh on CPU; this costs one read. One
    uniform per row, scaled by the row's total so rounding cannot point past the last entry;
    zero-weight entries are never drawn (right-sided searches skip them). Indices stay in range
    even for non-finite rows, so every rank still runs its backward (a hang under DDP otherwise).
    Returns (indices (N,), row totals (N,)).
    """
    rows, classes = weights.shape
    chunk = min(SAMPLE_CHUNK, classes)
    whole = classes - classes % chunk
    chunk_sums = weights[:, :whole].reshape(rows, whole // chunk, chunk).sum(-1)
    if whole < classes:
        chunk_sums = torch.cat([chunk_sums, weights[:, whole:].sum(-1, keepdim=True)], dim=1)
    chunk_cdf = chunk_sums.cumsum(-1)
    u = torch.rand(rows, 1, generator=generator, device=weights.device) * chunk_cdf[:, -1:]
    picked = torch.searchsorted(chunk_cdf, u, right=True).clamp_(max=chunk_sums.size(1) - 1)
    below = chunk_cdf.gather(1, picked) - chunk_sums.gather(1, picked)
    columns = picked * chunk + torch.arange(chunk, device=weights.device)
    inside = weights.gather(1, columns.clamp(max=classes - 1)).masked_fill_(columns >= classes, 0)
    offset = torch.searchsorted(inside.cumsum(-1), (u - below).clamp_(min=0), right=True)
    labels = (picked * chunk + offset.clamp_(max=chunk - 1)).clamp_(max=classes - 1)
    return labels.squeeze(1), chunk_cdf[:, -1]


def shifted_exp(logits: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(flat logits (N, C), shift = max z per row as float32, exp(z − shift) in float32).

    The weights are softmax(z) up to each row's total; float32 by type promotion even for bf16
    logits, so no float32 copy of the logits is made first.
    """
    flat = logits.detach().reshape(-1, logits.size(-1))
    shift = flat.amax(dim=-1, keepdim=True).float()
    return flat, shift, torch.sub(flat, shift).exp_()


class SampledLabelCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of logits against labels ŷ ~ softmax(logits) drawn at every position.

    One float32 buffer, exp(z − max z), serves the draw, the loss (log Σ exp(z) − z_ŷ) and, in
    backward, the gradient (softmax(z) − onehot(ŷ)) / N, computed in place. Sampling and then
    calling F.cross_entropy computed the softmax twice and made float32 copies besides; on
    gpt2-tiny (scripts/bench_hessian.py, k = 10) the refresh's share of the training time fell from
    16.7% to 6.8% with this. Returns (loss, labels).
    """

    @staticmethod
    def forward(ctx, logits: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        flat, shift, weights = shifted_exp(logits)
        labels, totals = sample_from_weights(weights, generator)
        picked = flat.gather(1, labels.unsqueeze(1)).float().squeeze(1)
        loss = (shift.squeeze(1) + totals.log() - picked).mean()
        ctx.save_for_backward(weights, totals, labels)
        ctx.logits_shape, ctx.logits_dtype, ctx.spent = logits.shape, logits.dtype, False
        ctx.mark_non_differentiable(labels)
        return loss, labels.view(logits.shape[:-1])

    @staticmethod
    def backward(ctx, grad_loss: Tensor, _grad_labels: Tensor) -> tuple[Tensor, None]:
        if ctx.spent:
            raise RuntimeError("SampledLabelCrossEntropy reuses its buffer: backward runs once")
        ctx.spent = True
        weights, totals, labels = ctx.saved_tensors
        grad = weights.div_(totals.unsqueeze(1))  # softmax(z), in place: the buffer is not reused
        grad.scatter_add_(1, labels.unsqueeze(1), grad.new_full((grad.size(0), 1), -1.0))
        grad.mul_(grad_loss / grad.size(0))
        return grad.to(ctx.logits_dtype).view(ctx.logits_shape), None


def sample_labels(logits: Tensor, generator: torch.Generator) -> Tensor:
    """ŷ ~ Categorical(softmax(logits)) at every position, drawn in float32."""
    _, _, weights = shifted_exp(logits)
    return sample_from_weights(weights, generator)[0].view(logits.shape[:-1])


def sampled_label_loss(logits: Tensor, generator: torch.Generator) -> Tensor:
    """Mean token cross-entropy of `logits` against labels sampled from the model itself."""
    return SampledLabelCrossEntropy.apply(logits, generator)[0]


class GaussNewtonBartlett:
    """Sophia-G's estimator, as the official training loop runs it (train_sophiag.py).

    Per micro-batch of a fresh batch (`loss`): full-sequence logits under the training autocast,
    sampled labels, mean cross-entropy; the pass backpropagates loss / num_micro_batches through
    the training model as it is (DDP, compiled: a plain backward), so p.grad ends as ĝ of the
    global batch. `commit` then clips ‖ĝ‖ to clip_norm as the official loop does with its
    grad_clip of 1.0 and calls `optimizer.update_hessian()`, which reads ĝ from p.grad. Not a
    training step: the gradients are cleared afterwards. No loss scaling: under float16 autocast
    small ĝ entries can underflow (use bfloat16).
    FLOPs per token: one training step. Stats: grad_norm (‖ĝ‖ before the clip), clipped (0/1).
    """

    reduces = "gradients"
    step_equivalents = 1.0

    def __init__(self, clip_norm: float = 1.0) -> None:
        if not clip_norm > 0:
            raise ValueError(f"GNB clip_norm must be > 0 (inf disables it), got {clip_norm}")
        self.clip_norm = clip_norm

    def loss(
        self, model: nn.Module, x: Tensor, generator: torch.Generator, autocast: Autocast
    ) -> Tensor:
        """The sampled-label loss of one micro-batch, ready for backward."""
        with autocast():
            # No targets: the training loss would be one more vocabulary-sized pass. A compiled
            # model compiles this graph once more, on the first refresh.
            logits, _ = model(x)
        return sampled_label_loss(logits, generator)

    def commit(self, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        """ĝ (the reduced gradient in p.grad) into the optimizer's h, unless it is not finite."""
        grad_norm = torch.nn.utils.clip_grad_norm_(optimizer_params(optimizer), self.clip_norm)
        grad_norm = grad_norm.item()
        skipped = not math.isfinite(grad_norm)
        if not skipped:
            optimizer.update_hessian()
        optimizer.zero_grad(set_to_none=True)
        return {
            "skipped": float(skipped),
            "grad_norm": grad_norm,
            "clipped": float(grad_norm > self.clip_norm),
        }


# ---------------------------------------------------------------------------------------------
# Hutchinson (Sophia-H, AdaHessian)


class _CrossEntropyGradient(torch.autograd.Function):
    """The mean cross-entropy's gradient in logit space, (p − onehot(y)) · g / N, as a function
    of p = softmax(z), the loss's own saved output: linear in p, so its backward is v · g / N,
    which the loss's backward then carries through the softmax."""

    @staticmethod
    def forward(ctx, probs: Tensor, targets: Tensor, grad_loss: Tensor) -> Tensor:
        ctx.save_for_backward(grad_loss)
        grad = probs.clone()
        grad.scatter_add_(1, targets.unsqueeze(1), grad.new_full((grad.size(0), 1), -1.0))
        return grad.mul_(grad_loss / grad.size(0))

    @staticmethod
    def backward(ctx, v: Tensor) -> tuple[Tensor, None, None]:
        (grad_loss,) = ctx.saved_tensors
        return v * (grad_loss / v.size(0)), None, None


class TwiceDifferentiableCrossEntropy(torch.autograd.Function):
    """(mean token cross-entropy of (N, C) logits against targets, p = softmax(logits)).

    The gradient is a `_CrossEntropyGradient` of p, which this function returns and saves as an
    output (no copy, and the logits are not kept): differentiating the gradient once more runs
    this backward for p, the softmax's Jacobian p ⊙ (u − p·u), so the Hessian-vector product in
    logit space, H v = p ⊙ (v − p·v) · g / N, takes four passes over the vocabulary-sized
    logits. autograd's double backward of log_softmax + nll took about ten (the exponential
    twice, several products): on gpt2-tiny a Hessian-vector product fell from 2.8-3.3 to 1.4-1.7
    training steps of time (one thread). Equal to F.cross_entropy and its derivatives to float
    rounding (tests/optim/test_hessian.py)."""

    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        ctx.set_materialize_grads(False)
        log_probs = torch.log_softmax(logits, dim=-1)
        loss = -log_probs.gather(1, targets.unsqueeze(1)).mean()
        probs = log_probs.exp_()
        ctx.save_for_backward(probs, targets)
        return loss, probs

    @staticmethod
    def backward(ctx, grad_loss: Tensor | None, grad_probs: Tensor | None):
        probs, targets = ctx.saved_tensors
        grad = None
        if grad_loss is not None:
            # An autograd.Function of the saved output p: under create_graph it joins the graph.
            grad = _CrossEntropyGradient.apply(probs, targets, grad_loss)
        if grad_probs is not None:  # the softmax's Jacobian-vector product
            weighted = probs * grad_probs
            through = weighted.sub_(probs * weighted.sum(-1, keepdim=True))
            grad = through if grad is None else grad + through
        return grad, None


def hessian_ready_loss(model: nn.Module, x: Tensor, y: Tensor, autocast: Autocast) -> Tensor:
    """The model's mean token cross-entropy (as `model(x, y)` computes it, in at least float32)
    built for a Hessian-vector product: call under the math SDPA backend."""
    with autocast():
        logits, _ = model(x)
    flat = logits.to(torch.promote_types(logits.dtype, torch.float32))
    flat = flat.reshape(-1, flat.size(-1))
    return TwiceDifferentiableCrossEntropy.apply(flat, y.reshape(-1))[0]


def rademacher_like(param: Tensor, generator: torch.Generator) -> Tensor:
    """A vector of independent ±1 entries shaped like `param` (Hutchinson's probe)."""
    bits = torch.randint(0, 2, param.shape, generator=generator, device=param.device)
    return bits.to(param.dtype).mul_(2).sub_(1)


def hutchinson_diagonal(
    loss: Tensor, params: list[Tensor], generator: torch.Generator, n_probes: int = 1
) -> list[Tensor]:
    """Mean over `n_probes` Rademacher u of u ⊙ (∇²loss · u), one float32 tensor per parameter.

    E[u ⊙ Hu]_i = Σ_j H_ij E[u_i u_j] = H_ii (Hutchinson 1989; Bekas et al. 2007); the variance of
    coordinate i is Σ_{j≠i} H_ij², so a diagonal H is recovered exactly by any single probe.
    The gradient graph is built once (create_graph=True) and differentiated once per probe.
    """
    if n_probes < 1:
        raise ValueError(f"n_probes must be >= 1, got {n_probes}")
    grads = torch.autograd.grad(loss, params, create_graph=True)
    return hutchinson_from_gradient(grads, params, generator, n_probes)


def hutchinson_from_gradient(
    grads: Sequence[Tensor], params: list[Tensor], generator: torch.Generator, n_probes: int = 1
) -> list[Tensor]:
    """`hutchinson_diagonal` from a gradient already made with its graph (create_graph=True):
    the training step's own gradient, when the estimate uses the training batch. Frees the
    graph after the last probe."""
    estimates = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    for probe in range(n_probes):
        probes = [rademacher_like(p, generator) for p in params]
        products = torch.autograd.grad(
            grads, params, grad_outputs=probes, retain_graph=probe < n_probes - 1
        )
        for estimate, u, hu in zip(estimates, probes, products, strict=True):
            estimate.add_(u.float() * hu.float(), alpha=1.0 / n_probes)
    return estimates


class Hutchinson:
    """Hutchinson's diagonal estimate of the mean loss's Hessian on the estimation batch.

    `estimate` runs on the unwrapped model, eager, with the math SDPA backend: DDP and compiled
    modules have no double backward, nor do the flash / memory-efficient attention kernels on
    CUDA. The pass averages the micro-batches' and ranks' estimates into one flat float32 buffer
    (the official AdaHessian reduced a temporary, so its ranks never averaged) and hands it to
    `commit`. The forward runs under the training autocast: on CPU bf16 double backward works and
    is within ~1% of float32.

    FLOPs per token: one training step for the gradient with its graph, plus
    HVP_STEP_EQUIVALENTS (≈ 2) training steps per probe: ≈ 3x a training step with one probe on a
    fresh batch; on the training batch (`optim.hess_source=train`) the training step's gradient
    is reused and only the probes count (≈ 2x).
    Stats: negative_share (share of negative estimate entries).
    """

    reduces = "estimates"

    def __init__(self, n_probes: int = 1) -> None:
        if n_probes < 1:
            raise ValueError(f"optim.n_probes must be >= 1, got {n_probes}")
        self.n_probes = n_probes

    @property
    def step_equivalents(self) -> float:
        """On a fresh batch: the gradient with its graph, then the probes."""
        return 1 + self.probe_step_equivalents

    @property
    def probe_step_equivalents(self) -> float:
        """On the training batch: the probes alone (the gradient is the training step's)."""
        return HVP_STEP_EQUIVALENTS * self.n_probes

    def estimate(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        params: list[Tensor],
        generator: torch.Generator,
        autocast: Autocast,
    ) -> tuple[Tensor, list[Tensor]]:
        """(mean loss, one float32 estimate per parameter) on one micro-batch."""
        with sdpa_kernel(SDPBackend.MATH):
            loss = hessian_ready_loss(model, x, y, autocast)
            estimates = hutchinson_diagonal(loss, params, generator, self.n_probes)
        return loss.detach(), estimates

    def estimate_from_gradient(
        self, grads: Sequence[Tensor], params: list[Tensor], generator: torch.Generator
    ) -> list[Tensor]:
        """One float32 estimate per parameter from a gradient made with its graph under the
        math SDPA backend (the training step's, when the estimate uses the training batch)."""
        return hutchinson_from_gradient(grads, params, generator, self.n_probes)

    def commit(
        self, optimizer: torch.optim.Optimizer, flat: Tensor, views: Sequence[Tensor]
    ) -> dict[str, float]:
        """The reduced estimate (`views` of the flat buffer `flat`, in `optimizer_params`
        order) into the optimizer, unless it is not finite."""
        skipped = not bool(torch.isfinite(flat).all())
        if not skipped:
            optimizer.update_hessian(estimates=views)
        return {
            "skipped": float(skipped),
            "negative_share": 0.0 if skipped else (flat < 0).float().mean().item(),
        }
