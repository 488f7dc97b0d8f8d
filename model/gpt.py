"""GPT-2, as in Radford et al. 2019 and nanoGPT: read top to bottom.

LayerNorm -> CausalSelfAttention -> MLP -> Block -> GPT. Learned positions, pre-LayerNorm blocks,
tanh-GELU, tied input/output embeddings, residual projections initialised with std
0.02 / sqrt(2 * n_layer) (GPT-2 paper, section 2.3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F

from configs.validation import reject_non_finite


@dataclass
class GPTConfig:
    """Model shape. Also the Hydra schema of the `model` config group."""

    name: str = "gpt2-tiny"
    n_layer: int = 2
    n_head: int = 2
    n_embd: int = 128
    block_size: int = 1024  # the longest context the position table holds
    vocab_size: int = 50304  # GPT-2's 50257 padded up to a multiple of 64 for fast matmuls
    dropout: float = 0.0
    bias: bool = False  # biases in Linear and LayerNorm; GPT-2 had them, the Sophia runs do not
    # The official Sophia model divides layer i's attention logits by (i + 1), as HF's
    # GPT2Config flag of the same name; one key so every optimizer in a comparison gets one model.
    scale_attn_by_inverse_layer_idx: bool = False

    def __post_init__(self) -> None:
        reject_non_finite(self, "model.")
        for key in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size"):
            if getattr(self, key) <= 0:
                raise ValueError(f"model.{key} must be > 0, got {getattr(self, key)}")
        if self.n_embd % self.n_head:
            raise ValueError(
                f"model.n_embd ({self.n_embd}) must be divisible by model.n_head ({self.n_head})"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout}")


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (torch's only has bias=False since 2.1)."""

    def __init__(self, ndim: int, bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)
        head_dim = config.n_embd // config.n_head
        layer_scale = (layer_idx + 1) if config.scale_attn_by_inverse_layer_idx else 1
        self.scale = 1.0 / (math.sqrt(head_dim) * layer_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            is_causal=True,
            dropout_p=self.attn_dropout if self.training else 0.0,
            scale=self.scale,
        )
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int) -> None:
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.ln_2 = LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
                ln_f=LayerNorm(config.n_embd, bias=config.bias),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying (Press & Wolf 2017)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; by default without the position table (Kaplan et al. count)."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding else n

    def forward_logits(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits at every position, shape (B, T, vocab_size)."""
        _, T = idx.size()
        if self.config.block_size < T:
            raise ValueError(
                f"sequence length {T} exceeds model.block_size {self.config.block_size}"
            )
        pos = torch.arange(T, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        return self.lm_head(self.transformer.ln_f(x))

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits and, when targets are given, the mean token cross-entropy (in float32)."""
        logits = self.forward_logits(idx)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss

    def flops_per_token(self, seq_len: int) -> int:
        """Training FLOPs per token: forward + backward = 3 x forward (PaLM appendix B).

        forward = 2 * N (every weight is one multiply-add per token, N without the position
        table, the tied head counted once as the output projection)
                + 4 * n_layer * seq_len * n_embd (QK^T and attention x V, 2 * seq_len * n_embd
        each per token and layer; causal masking not discounted, as PaLM and nanoGPT count it).
        So training = 6 * N + 12 * n_layer * seq_len * n_embd.
        """
        cfg = self.config
        return 6 * self.num_params() + 12 * cfg.n_layer * seq_len * cfg.n_embd

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
    ) -> torch.Tensor:
        for _ in range(max_new_tokens):
            context = idx[:, -self.config.block_size :]
            logits = self.forward_logits(context)[:, -1, :] / temperature
            if top_k is not None:
                v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                logits[logits < v[:, [-1]]] = -float("inf")
            next_token = torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)
            idx = torch.cat((idx, next_token), dim=1)
        return idx
