"""Muon on the hidden matrices, AdamW on the rest: the split, the math, the state."""

from __future__ import annotations

import copy

import pytest
import torch

from model.gpt import GPT, GPTConfig
from optim.muon import MuonAdamW, newton_schulz_flops
from optim.plan import parameter_kinds
from optim.registry import MuonConfig


def tiny_model() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, vocab_size=32, block_size=8))


def fake_gradients(model: GPT, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=generator)


def test_muon_owns_the_block_matrices_and_adamw_the_embeddings_and_vectors():
    model = tiny_model()
    opt = MuonConfig().build(model, device=torch.device("cpu"), estimation_tokens=8)
    muon_params = {id(p) for g in opt.optimizer.muon.param_groups for p in g["params"]}
    adamw_params = {id(p) for g in opt.optimizer.adamw.param_groups for p in g["params"]}
    kinds = parameter_kinds(model)
    assert muon_params == {i for i, kind in kinds.items() if kind == "matrices"}
    assert adamw_params == {i for i, kind in kinds.items() if kind != "matrices"}
    assert id(model.transformer.wte.weight) in adamw_params  # the embedding tied to the head


def test_step_is_torch_muon_plus_torch_adamw():
    model, reference = tiny_model(), tiny_model()
    cfg = MuonConfig(lr=0.01, adamw_lr_ratio=0.5)
    opt = cfg.build(model, device=torch.device("cpu"), estimation_tokens=8)
    kinds = parameter_kinds(reference)
    matrices = [p for p in reference.parameters() if kinds[id(p)] == "matrices"]
    embeddings = [p for p in reference.parameters() if kinds[id(p)] == "embeddings"]
    vectors = [p for p in reference.parameters() if kinds[id(p)] == "vectors"]
    muon = torch.optim.Muon(matrices, lr=0.01, weight_decay=cfg.weight_decay,
                            adjust_lr_fn="match_rms_adamw")  # fmt: skip
    adamw = torch.optim.AdamW(
        [{"params": embeddings, "weight_decay": cfg.weight_decay},
         {"params": vectors, "weight_decay": 0.0}], lr=0.005, betas=(0.9, 0.95),
    )  # fmt: skip
    for seed in range(3):
        fake_gradients(model, seed)
        fake_gradients(reference, seed)
        opt.step()
        muon.step()
        adamw.step()
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q)


def test_schedule_reaches_both_halves_after_a_state_round_trip():
    model = tiny_model()
    opt = MuonConfig(adamw_lr_ratio=0.5).build(
        model, device=torch.device("cpu"), estimation_tokens=8
    )
    fake_gradients(model, 0)
    opt.step()
    state = copy.deepcopy(opt.state_dict())
    fresh = MuonConfig(adamw_lr_ratio=0.5).build(
        model, device=torch.device("cpu"), estimation_tokens=8
    )
    fresh.load_state_dict(state)
    fresh.set_lr(1e-2)
    assert [g["lr"] for g in fresh.optimizer.muon.param_groups] == [1e-2]
    assert [g["lr"] for g in fresh.optimizer.adamw.param_groups] == [5e-3, 5e-3]
    momentum = fresh.optimizer.muon.state[next(iter(fresh.optimizer.muon.state))]
    assert momentum["momentum_buffer"].abs().sum() > 0


def test_loading_another_optimizers_state_names_the_problem():
    model = tiny_model()
    opt = MuonConfig().build(model, device=torch.device("cpu"), estimation_tokens=8)
    with pytest.raises(ValueError, match="not a MuonAdamW state"):
        opt.optimizer.load_state_dict(torch.optim.SGD(model.parameters(), lr=1).state_dict())


def test_newton_schulz_flops_count_the_three_products_per_iteration():
    # (A, B) = (6, 4): m = 4, n = 6 -> per iteration 2*16*6 + 2*64 + 2*16*6 = 512
    assert newton_schulz_flops(torch.Size([6, 4]), ns_steps=5) == 5 * 512
    model = tiny_model()
    opt = MuonConfig().build(model, device=torch.device("cpu"), estimation_tokens=8)
    assert isinstance(opt.optimizer, MuonAdamW)
    assert opt.step_flops == sum(newton_schulz_flops(p.shape, 5)
                                 for p in opt.optimizer.muon.param_groups[0]["params"])  # fmt: skip


@pytest.mark.parametrize(
    ("overrides", "message"),
    [({"momentum": 1.0}, "optim.momentum"), ({"ns_steps": 0}, "optim.ns_steps"),
     ({"adjust_lr_fn": "rms"}, "match_rms_adamw or original"),
     ({"adamw_lr_ratio": 0.0}, "optim.adamw_lr_ratio")],
)  # fmt: skip
def test_bad_muon_settings_are_refused_with_the_key(overrides, message):
    with pytest.raises(ValueError, match=message):
        MuonConfig(**overrides)
