"""GPT-2 as specified: parameter count, FLOPs, initialisation, causality, config checks."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from model import mfu
from model.gpt import GPT, GPTConfig


def tiny_config(**overrides) -> GPTConfig:
    fields = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=96)
    return GPTConfig(**{**fields, **overrides})


def expected_num_params(cfg: GPTConfig) -> int:
    """Counted by hand: embeddings, per block 12 d^2 of weights plus LayerNorms (and biases)."""
    d = cfg.n_embd
    per_block = 12 * d * d + (13 * d if cfg.bias else 2 * d)  # biases: 3d + d + 4d + d, LN: 2 x d
    final_norm = 2 * d if cfg.bias else d
    return cfg.vocab_size * d + cfg.block_size * d + cfg.n_layer * per_block + final_norm


@pytest.mark.parametrize("bias", [True, False])
def test_num_params_matches_the_formula(bias: bool) -> None:
    cfg = tiny_config(bias=bias)
    model = GPT(cfg)
    assert model.num_params(non_embedding=False) == expected_num_params(cfg)
    assert model.num_params() == expected_num_params(cfg) - cfg.block_size * cfg.n_embd


def test_gpt2_small_has_hf_gpt2_parameter_count() -> None:
    # HF's "gpt2" (vocab 50257, biases, 1024 positions) has 124,439,808 parameters.
    cfg = GPTConfig(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50257, bias=True)
    with torch.device("meta"):  # shapes only: no memory, no init time
        model = GPT(cfg)
    assert model.num_params(non_embedding=False) == 124_439_808


def test_lm_head_is_tied_to_token_embedding() -> None:
    model = GPT(tiny_config())
    assert model.lm_head.weight is model.transformer.wte.weight


def test_flops_per_token_is_six_n_plus_attention() -> None:
    # PaLM appendix B / nanoGPT estimate_mfu: 6 N + 12 L T d (QK^T and attention x V are each
    # 2 T d FLOPs per token per layer in the forward pass; x3 for forward + backward).
    cfg = tiny_config(block_size=64)
    model = GPT(cfg)
    T = cfg.block_size
    assert model.flops_per_token(T) == 6 * model.num_params() + 12 * cfg.n_layer * T * cfg.n_embd


def test_flops_per_token_matches_counted_matmuls() -> None:
    """An independent count: torch's FLOP counter on the forward weight matmuls, plus the two
    attention matmuls counted on explicit q @ k^T and att @ v (CPU SDPA is invisible to the
    counter), times 3 for forward + backward. Equal up to the LayerNorm/bias parameters in N."""
    cfg = tiny_config(block_size=64, n_embd=64)
    model = GPT(cfg)
    T, head_dim = cfg.block_size, cfg.n_embd // cfg.n_head
    idx = torch.zeros(1, T, dtype=torch.long)
    with FlopCounterMode(display=False) as weights_counter:
        model.forward_logits(idx)
    q = k = v = torch.randn(1, cfg.n_head, T, head_dim)
    with FlopCounterMode(display=False) as attention_counter:
        (q @ k.transpose(-2, -1)).softmax(dim=-1) @ v
    forward = weights_counter.get_total_flops() + cfg.n_layer * attention_counter.get_total_flops()
    assert model.flops_per_token(T) == pytest.approx(3 * forward / T, rel=0.01)


def test_residual_projections_are_initialised_with_depth_scaled_std() -> None:
    torch.manual_seed(0)
    cfg = tiny_config(n_layer=4, n_embd=128)
    model = GPT(cfg)
    residual_std = 0.02 / math.sqrt(2 * cfg.n_layer)
    for name, p in model.named_parameters():
        if name.endswith("c_proj.weight"):  # 16k-65k samples: the std estimate is within ~1%
            assert p.std().item() == pytest.approx(residual_std, rel=0.05), name
        elif name.endswith("c_attn.weight") or name.endswith("c_fc.weight"):
            assert p.std().item() == pytest.approx(0.02, rel=0.05), name


def test_logits_at_a_position_ignore_later_tokens() -> None:
    torch.manual_seed(0)
    model = GPT(tiny_config()).eval()
    idx = torch.randint(0, 96, (2, 16))
    changed = idx.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % 96
    with torch.no_grad():
        before, after = model.forward_logits(idx), model.forward_logits(changed)
    torch.testing.assert_close(after[:, :10], before[:, :10], atol=1e-6, rtol=0)
    assert not torch.allclose(after[:, 10:], before[:, 10:])


def test_n_embd_not_divisible_by_n_head_names_both_keys() -> None:
    with pytest.raises(ValueError, match=r"n_embd.*n_head"):
        GPTConfig(n_embd=100, n_head=3)


def test_sequence_longer_than_block_size_raises() -> None:
    model = GPT(tiny_config(block_size=8))
    with pytest.raises(ValueError, match="block_size"):
        model.forward_logits(torch.zeros(1, 9, dtype=torch.long))


@pytest.mark.parametrize("n_layer, changes", [(1, False), (2, True)])
def test_inverse_layer_idx_scaling_only_changes_deeper_layers(n_layer: int, changes: bool) -> None:
    # Layer i divides its attention logits by i + 1: layer 0 is untouched, so a one-layer model
    # computes the same function with or without the flag.
    torch.manual_seed(0)
    plain = GPT(tiny_config(n_layer=n_layer)).eval()
    scaled = GPT(tiny_config(n_layer=n_layer, scale_attn_by_inverse_layer_idx=True)).eval()
    scaled.load_state_dict(plain.state_dict())
    idx = torch.randint(0, 96, (2, 16))
    with torch.no_grad():
        same = torch.allclose(plain.forward_logits(idx), scaled.forward_logits(idx), atol=1e-6)
    assert same != changes


def test_the_cpu_peak_is_measured_in_the_runs_dtype_once_per_process():
    """No datasheet applies to a CPU (bf16 native on some, emulated on others): MFU divides by a
    matmul measured in the run's dtype, once per dtype and thread count."""
    cpu = torch.device("cpu")
    peak = mfu.peak_flops(cpu, torch.float32)
    assert peak > 1e8 and mfu.peak_flops(cpu, torch.float32) == peak  # cached
    assert (torch.float32, torch.get_num_threads()) in mfu._measured_cpu_peaks
    assert "measured: a 1024x1024 float32 matmul" in mfu.peak_source(cpu, torch.float32)
    assert mfu.mfu(1e6, 10.0, 1, peak) == pytest.approx(1e7 / peak)
