"""The Hessian estimators: unbiasedness, Gauss-Newton expectation, refusals, FLOPs accounting."""

from __future__ import annotations

import itertools
from contextlib import nullcontext

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from model.gpt import GPT, GPTConfig
from optim.hessian import (
    GaussNewtonBartlett,
    Hutchinson,
    SampledLabelCrossEntropy,
    TwiceDifferentiableCrossEntropy,
    generator_for,
    hutchinson_diagonal,
    sample_labels,
)
from optim.sophia import SophiaG, SophiaH
from training.distributed import Distributed
from training.hessian_pass import EstimationBatch, run_estimate


class Quadratic(nn.Module):
    """loss = ½ xᵀAx: its Hessian is A."""

    def __init__(self, matrix: torch.Tensor) -> None:
        super().__init__()
        self.matrix = matrix
        self.x = nn.Parameter(torch.linspace(-1.0, 1.0, matrix.size(0), dtype=matrix.dtype))

    def loss(self) -> torch.Tensor:
        return 0.5 * self.x @ self.matrix @ self.x


class SoftmaxClassifier(nn.Module):
    """logits = W x at every position: the smallest model with a softmax output for GNB."""

    def __init__(self, features: int, classes: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(0.5 * torch.randn(classes, features))

    def forward(self, x: torch.Tensor, targets: torch.Tensor | None = None):
        return x @ self.weight.T, None

    def flops_per_token(self, seq_len: int) -> int:
        return 6 * self.weight.numel()


class HessianRecorder(torch.optim.Optimizer):
    """Keeps every estimate it is handed: p.grad² (GNB) or the given estimates (Hutchinson)."""

    def __init__(self, params) -> None:
        super().__init__(params, {})
        self.estimates: list[list[torch.Tensor]] = []

    def update_hessian(self, estimates=None) -> None:
        params = [p for g in self.param_groups for p in g["params"]]
        if estimates is None:
            estimates = [p.grad.square() for p in params]
        self.estimates.append([e.detach().clone() for e in estimates])


def estimation_batch(model, micro_batches, step=0, tokens=None) -> EstimationBatch:
    return EstimationBatch(
        model=model, raw_model=model, micro_batches=lambda: iter(micro_batches),
        num_micro_batches=len(micro_batches), autocast=nullcontext, world=Distributed(),
        seed=0, step=step, tokens=tokens or sum(x.shape[0] * x.shape[1] for x, _ in micro_batches),
    )  # fmt: skip


def quadratic_matrix(n: int = 5) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    off_diagonal = 0.3 * torch.randn(n, n, generator=generator, dtype=torch.float64)
    return torch.diag(torch.arange(1.0, n + 1, dtype=torch.float64)) + off_diagonal + off_diagonal.T


def test_hutchinson_is_exact_for_a_diagonal_hessian():
    model = Quadratic(torch.diag(torch.tensor([3.0, -1.0, 0.5], dtype=torch.float64)))
    (estimate,) = hutchinson_diagonal(model.loss(), [model.x], generator_for("cpu", 1), n_probes=1)
    torch.testing.assert_close(estimate, torch.tensor([3.0, -1.0, 0.5]))


def test_hutchinson_is_unbiased():
    matrix = quadratic_matrix()
    model = Quadratic(matrix)
    n = 4000
    (estimate,) = hutchinson_diagonal(model.loss(), [model.x], generator_for("cpu", 2), n_probes=n)
    # u_i (Au)_i = A_ii + Σ_{j≠i} A_ij u_i u_j: variance Σ_{j≠i} A_ij² per probe.
    variance = (matrix.square().sum(1) - matrix.diagonal().square()) / n
    error = (estimate.double() - matrix.diagonal()).abs()
    assert (error < 5 * variance.sqrt()).all(), (estimate, matrix.diagonal())
    assert (error > 0).any()  # the off-diagonal part really is there: this is a statistical test


def test_the_hessian_ready_cross_entropy_has_the_exact_loss_gradient_and_hessian():
    """Loss, gradient and Hessian-vector product equal F.cross_entropy's in float64, through a
    layer below the logits (the product reaches the weights through the logits' HVP)."""
    generator = torch.Generator().manual_seed(3)
    weight = torch.randn(8, 5, dtype=torch.float64, generator=generator, requires_grad=True)
    features = torch.randn(6, 8, dtype=torch.float64, generator=generator)
    targets = torch.randint(0, 5, (6,), generator=generator)
    direction = torch.randn(8, 5, dtype=torch.float64, generator=generator)
    results = []
    for loss_of in (F.cross_entropy, lambda *a: TwiceDifferentiableCrossEntropy.apply(*a)[0]):
        loss = loss_of(features @ weight, targets)
        (grad,) = torch.autograd.grad(loss, weight, create_graph=True)
        (product,) = torch.autograd.grad(grad, weight, direction)
        results.append((loss, grad, product))
    for reference, mine in zip(*results, strict=True):
        torch.testing.assert_close(mine, reference, rtol=1e-12, atol=1e-14)


def gauss_newton_diagonal(model: SoftmaxClassifier, x: torch.Tensor) -> torch.Tensor:
    """diag(1/B Σ_i J_iᵀ (diag p_i − p_i p_iᵀ) J_i) for logits W x_i: entry (c, k) is
    mean_i x_ik² p_ic (1 − p_ic)."""
    features = x.reshape(-1, x.size(-1))
    probs = torch.softmax(features @ model.weight.detach().T, dim=-1)
    return (probs * (1 - probs)).T @ features.square() / features.size(0)


def test_gnb_expectation_is_the_gauss_newton_diagonal():
    """E[B·ĝ⊙ĝ] over all label draws at B = 2 positions, 3 classes, summed exactly."""
    torch.manual_seed(0)
    model = SoftmaxClassifier(features=4, classes=3)
    x = torch.randn(1, 2, 4)
    probs = torch.softmax(model(x)[0], dim=-1).detach()[0]
    expectation = torch.zeros_like(model.weight)
    for labels in itertools.product(range(3), repeat=2):
        logits, _ = model(x)
        loss = F.cross_entropy(logits[0], torch.tensor(labels))
        (grad,) = torch.autograd.grad(loss, [model.weight])
        expectation += probs[0, labels[0]] * probs[1, labels[1]] * 2 * grad.square()
    torch.testing.assert_close(expectation, gauss_newton_diagonal(model, x))


def test_sampled_labels_follow_the_softmax():
    logits = torch.tensor([[2.0, 0.0, -1.0]]).expand(20_000, 3)
    labels = sample_labels(logits, generator_for("cpu", 3))
    frequencies = torch.bincount(labels, minlength=3) / labels.numel()
    torch.testing.assert_close(frequencies, torch.softmax(logits[0], -1), atol=0.01, rtol=0)


def test_sampled_labels_follow_the_softmax_across_vocabulary_chunks():
    """300 classes: two whole chunks of SAMPLE_CHUNK = 128 and a remainder of 44; the mass sits
    in classes of every chunk, and classes of probability zero are never drawn."""
    logits = torch.full((300,), -2.0)
    logits[[0, 127, 128, 299]] = torch.tensor([1.0, 2.0, 0.5, 1.5])
    logits[[1, 200, 298]] = float("-inf")
    labels = sample_labels(logits.expand(40_000, 300), generator_for("cpu", 4))
    frequencies = torch.bincount(labels, minlength=300) / labels.numel()
    torch.testing.assert_close(frequencies, torch.softmax(logits, -1), atol=0.006, rtol=0)
    assert frequencies[[1, 200, 298]].sum() == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("classes", [5, 300])
def test_sampled_label_loss_is_cross_entropy_against_its_labels(dtype, classes):
    """Loss and gradient equal F.cross_entropy's against the labels the loss drew."""
    logits = (3 * torch.randn(4, 6, classes, generator=torch.Generator().manual_seed(0))).to(dtype)
    ours = logits.clone().requires_grad_()
    loss, labels = SampledLabelCrossEntropy.apply(ours, generator_for("cpu", 5))
    (3 * loss).backward()
    reference = logits.clone().requires_grad_()
    expected = F.cross_entropy(reference.float().view(-1, classes), labels.view(-1))
    (3 * expected).backward()
    assert labels.shape == (4, 6)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(ours.grad, reference.grad)
    assert ours.grad.dtype == dtype


def test_gnb_estimator_averages_to_the_gauss_newton_diagonal():
    torch.manual_seed(0)
    model = SoftmaxClassifier(features=3, classes=4)
    x = 0.5 * torch.randn(2, 2, 3)
    recorder = HessianRecorder(model.parameters())
    estimator = GaussNewtonBartlett()
    samples = []
    for step in range(3000):
        stats = run_estimate(estimator, estimation_batch(model, [(x, None)], step=step), recorder)
        assert stats["clipped"] == 0  # clipping would bias the estimate: keep ĝ small here
        samples.append(x.shape[0] * x.shape[1] * recorder.estimates.pop()[0])
    samples = torch.stack(samples)
    standard_error = samples.std(0) / len(samples) ** 0.5
    error = (samples.mean(0) - gauss_newton_diagonal(model, x)).abs()
    assert (error < 5 * standard_error).all(), (samples.mean(0), gauss_newton_diagonal(model, x))


def test_gnb_draws_depend_on_seed_and_step_not_on_the_global_rng():
    torch.manual_seed(0)
    model = SoftmaxClassifier(features=3, classes=4)
    x = torch.randn(2, 3, 3)

    def estimate(step: int, global_seed: int) -> torch.Tensor:
        torch.manual_seed(global_seed)
        recorder = HessianRecorder(model.parameters())
        batch = estimation_batch(model, [(x, None)], step=step)
        run_estimate(GaussNewtonBartlett(), batch, recorder)
        return recorder.estimates[0][0]

    assert torch.equal(estimate(step=5, global_seed=1), estimate(step=5, global_seed=2))
    assert not torch.equal(estimate(step=5, global_seed=1), estimate(step=6, global_seed=1))


def test_gnb_feeds_sophia_and_clears_the_gradient():
    torch.manual_seed(0)
    model = SoftmaxClassifier(features=3, classes=4)
    optimizer = SophiaG(model.parameters(), betas=(0.9, 0.5))
    stats = run_estimate(
        GaussNewtonBartlett(), estimation_batch(model, [(torch.randn(2, 3, 3), None)]), optimizer
    )
    assert stats["skipped"] == 0 and stats["flops"] == 6 * 12 * 6
    assert optimizer.state[model.weight]["hessian"].gt(0).all()
    assert model.weight.grad is None


def test_gnb_leaves_the_hessian_untouched_when_the_estimate_is_not_finite():
    torch.manual_seed(0)
    model = SoftmaxClassifier(features=3, classes=4)
    optimizer = SophiaG(model.parameters(), betas=(0.9, 0.5))
    run_estimate(
        GaussNewtonBartlett(), estimation_batch(model, [(torch.randn(2, 3, 3), None)]), optimizer
    )
    before = optimizer.state[model.weight]["hessian"].clone()
    poisoned = torch.randn(2, 3, 3)
    poisoned[0, 1, 2] = float("inf")
    stats = run_estimate(
        GaussNewtonBartlett(), estimation_batch(model, [(poisoned, None)], step=1), optimizer
    )
    assert stats["skipped"] == 1
    assert torch.equal(optimizer.state[model.weight]["hessian"], before)
    assert model.weight.grad is None


def tiny_gpt() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, vocab_size=64, block_size=16))


def token_batches(count: int, batch: int = 2, seq_len: int = 16) -> list:
    generator = torch.Generator().manual_seed(7)
    make = lambda: torch.randint(0, 64, (batch, seq_len), generator=generator)
    return [(make(), make()) for _ in range(count)]


def test_hutchinson_feeds_sophiah_as_the_mean_over_micro_batches():
    model = tiny_gpt()
    micro_batches = token_batches(2)
    optimizer = SophiaH(model.parameters(), betas=(0.9, 0.0))  # β2 = 0: h is the last estimate
    stats = run_estimate(Hutchinson(), estimation_batch(model, micro_batches, step=3), optimizer)
    assert stats["skipped"] == 0
    params = [p for g in optimizer.param_groups for p in g["params"]]
    expected = [torch.zeros_like(p) for p in params]
    for micro_step, (x, y) in enumerate(micro_batches):
        with sdpa_kernel(SDPBackend.MATH):
            _, loss = model(x, y)  # the model's own F.cross_entropy
        generator = generator_for("cpu", 0, 3, micro_step)  # (seed, step, chunk), as refresh draws
        for total, estimate in zip(
            expected, hutchinson_diagonal(loss, params, generator), strict=True
        ):
            total += estimate / 2
    for p, total in zip(params, expected, strict=True):
        torch.testing.assert_close(optimizer.state[p]["hessian"], total)


def test_hutchinson_leaves_the_hessian_untouched_when_the_estimate_is_not_finite():
    model = tiny_gpt()
    optimizer = SophiaH(model.parameters())
    run_estimate(Hutchinson(), estimation_batch(model, token_batches(1)), optimizer)
    before = {p: optimizer.state[p]["hessian"].clone() for p in model.parameters()}
    with torch.no_grad():
        model.transformer.wpe.weight[3, 0] = float("nan")
    stats = run_estimate(Hutchinson(), estimation_batch(model, token_batches(1), step=1), optimizer)
    assert stats["skipped"] == 1
    for p in model.parameters():
        assert torch.equal(optimizer.state[p]["hessian"], before[p])


@pytest.mark.parametrize(
    "estimator", [GaussNewtonBartlett(), Hutchinson(n_probes=2)], ids=["gnb", "hutchinson"]
)
def test_reported_flops_match_the_flop_counter(estimator):
    """The FLOPs a refresh reports are what torch's counter sees (matmuls and attention)."""
    model = tiny_gpt()
    optimizer = SophiaG(model.parameters())
    with FlopCounterMode(display=False) as counter:
        stats = run_estimate(estimator, estimation_batch(model, token_batches(2)), optimizer)
    assert stats["flops"] == pytest.approx(counter.get_total_flops(), rel=0.1)


def test_gnb_on_a_compiled_model_matches_eager():
    """The training model may be compiled: GNB only needs its plain backward."""
    model = tiny_gpt()
    micro_batches = token_batches(2)
    estimates = []
    for forward in (model, torch.compile(model, backend="eager")):  # dynamo without inductor
        recorder = HessianRecorder(model.parameters())
        batch = estimation_batch(model, micro_batches)
        batch.model = forward
        run_estimate(GaussNewtonBartlett(), batch, recorder)
        estimates.append(recorder.estimates[0])
    for eager, compiled in zip(*estimates, strict=True):
        torch.testing.assert_close(compiled, eager)
