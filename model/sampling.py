"""Autoregressive sampling from our GPT, one token at a time, and text that streams as it comes.

`sample_tokens` yields each new token as soon as it is drawn (temperature 0: the argmax, i.e.
greedy decoding; otherwise softmax(logits / temperature) over the top_k logits, drawn with an
explicit torch.Generator so a seed fixes the text). `TextStream` turns those ids into text that
can be printed at once without ever printing half a UTF-8 character.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import nullcontext

import torch
from torch.nn import functional as F

from model.gpt import GPT

# A byte-level BPE token can end inside a multi-byte character; its decoded text then ends in
# U+FFFD until the next token completes the character. Hold such text back, but not forever: a
# model can emit bytes that never form a character.
REPLACEMENT_CHAR = "\ufffd"
MAX_HELD_TOKENS = 4


def next_token(
    logits: torch.Tensor,
    temperature: float,
    top_k: int | None,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Ids (B, 1) drawn from the last-position logits (B, vocab)."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth_largest = torch.topk(logits, top_k, dim=-1).values[:, [-1]]
        logits = logits.masked_fill(logits < kth_largest, -float("inf"))
    return torch.multinomial(F.softmax(logits, dim=-1), num_samples=1, generator=generator)


@torch.no_grad()
def sample_tokens(
    model: GPT,
    prompt: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
    vocab_size: int | None = None,
    autocast: Callable = nullcontext,
) -> Iterator[torch.Tensor]:
    """Yield the next ids (B,) for `max_new_tokens` steps after `prompt` (B, T).

    The context is the last `model.config.block_size` tokens. `vocab_size` (the tokenizer's)
    excludes the embedding's padding rows, which no text decodes to.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0: greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 or None (no cut), got {top_k}")
    idx = prompt
    for _ in range(max_new_tokens):
        with autocast():
            logits = model.forward_logits(idx[:, -model.config.block_size :])[:, -1, :]
        logits = logits.float()[:, :vocab_size]
        token = next_token(logits, temperature, top_k, generator)
        idx = torch.cat((idx, token), dim=1)
        yield token[:, 0]


class TextStream:
    """Decodes ids pushed one at a time into text that is safe to print immediately."""

    def __init__(self, decode: Callable[[list[int]], str]) -> None:
        self.decode = decode
        self.pending: list[int] = []

    def push(self, token_id: int) -> str:
        """The text that became printable with this token ('' while a character is cut)."""
        self.pending.append(token_id)
        text = self.decode(self.pending)
        if text.endswith(REPLACEMENT_CHAR) and len(self.pending) < MAX_HELD_TOKENS:
            return ""
        self.pending = []
        return text

    def flush(self) -> str:
        """Whatever is still held back, at the end of a sample."""
        text = self.decode(self.pending) if self.pending else ""
        self.pending = []
        return text
