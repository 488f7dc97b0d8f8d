"""Decay and no-decay groups, and the kinds of parameters the diagnostics split by."""

from __future__ import annotations

import pytest
import torch

from model.gpt import GPT, GPTConfig
from optim.plan import parameter_groups, parameter_kinds


def tiny_model() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, vocab_size=32, block_size=8))


@pytest.mark.parametrize("decay_embeddings", [True, False])
def test_embedding_decay_is_a_choice(decay_embeddings):
    """nanoGPT decays every matrix (embeddings too); the official Sophia script Linear weights
    only. Either way biases and LayerNorm gains never decay."""
    model = tiny_model()
    decayed, undecayed = parameter_groups(model, 0.1, decay_embeddings)
    embedding = model.transformer.wte.weight
    assert any(p is embedding for p in decayed["params"]) == decay_embeddings
    assert all(p.dim() == 2 for p in decayed["params"])
    assert all(p.dim() >= 1 for p in undecayed["params"])


def test_kinds_split_embeddings_block_matrices_and_vectors():
    model = tiny_model()
    kinds = parameter_kinds(model)
    assert kinds[id(model.transformer.wte.weight)] == "embeddings"
    assert kinds[id(model.transformer.wpe.weight)] == "embeddings"
    assert kinds[id(model.transformer.h[0].attn.c_attn.weight)] == "matrices"
    assert {kinds[id(p)] for p in model.parameters() if p.dim() == 1} == {"vectors"}
