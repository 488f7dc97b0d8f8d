"""One entry point for the model a user points at: a run dir, a checkpoint dir or an HF folder.

scripts/sample.py and scripts/evaluate.py take any of the three (scripts/export_hf.py and
scripts/noise_scale.py a checkpoint); this module finds out which it is, loads our GPT from it
(an HF GPT-2 folder through model/hf.py's conversion, so the same code runs every model) and
reports what the source says about how it was trained.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors.torch import load_file

from data.tokenizer import TOKENIZERS, ByteTokenizer, GPT2Tokenizer
from model.gpt import GPT, GPTConfig
from model.hf import from_hf, gpt_from_state_dict, load_hf_model
from training.checkpoint import Checkpoint, find_checkpoint


@dataclass
class TrainedModel:
    model: GPT  # eval mode, float32, on the CPU
    path: Path
    kind: str  # "checkpoint" or "hf"
    step: int | None  # optimizer steps behind a checkpoint; None for an HF folder
    train_config: dict[str, Any] | None  # the run's resolved config (checkpoints that carry it)
    tokenizer: str | None  # gpt2 | bytes, when the source tells or the vocabulary implies it


def is_hf_folder(path: Path) -> bool:
    return (path / "config.json").is_file()


def load_trained_model(path: str | Path) -> TrainedModel:
    """Our GPT from a run dir (its latest checkpoint), a checkpoint dir or a local HF folder."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist: give a run dir, a checkpoint dir (checkpoints/step_*) "
            "or a Hugging Face GPT-2 folder (config.json)"
        )
    if is_hf_folder(path):
        model = from_hf(load_hf_model(path))
        tokenizer = tokenizer_of_vocab(model.config.vocab_size)
        return TrainedModel(model, path, "hf", None, None, tokenizer)
    checkpoint = find_checkpoint(path)
    model = model_from_checkpoint(checkpoint)
    train_config = checkpoint.meta.get("config")
    tokenizer = None
    if train_config is not None:
        # Runs from before data.tokenizer existed were all GPT-2 BPE.
        tokenizer = train_config.get("data", {}).get("tokenizer", "gpt2")
    if tokenizer not in TOKENIZERS:
        tokenizer = tokenizer_of_vocab(model.config.vocab_size)
    return TrainedModel(
        model, checkpoint.path, "checkpoint", checkpoint.step, train_config, tokenizer
    )


def tokenizer_of_vocab(vocab_size: int) -> str | None:
    """The tokenizer a vocabulary size implies: GPT-2's (50257, or padded beyond), bytes (256)."""
    if vocab_size >= GPT2Tokenizer.vocab_size:
        return "gpt2"
    if vocab_size == ByteTokenizer.vocab_size:
        return "bytes"
    return None


def load_model_from_checkpoint(path: str | Path) -> GPT:
    """Our GPT (eval mode) from a checkpoint dir, or from the latest checkpoint of a run dir.

    A checkpoint is `<run_dir>/checkpoints/step_XXXXXXXX/` holding `model.safetensors` and
    `meta.json` with the GPTConfig fields under "model_config" (see training/checkpoint.py).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist: expected a run dir (with checkpoints/step_*/) "
            "or a checkpoint dir (with model.safetensors and meta.json)"
        )
    return model_from_checkpoint(find_checkpoint(path))


def model_from_checkpoint(checkpoint: Checkpoint) -> GPT:
    """Our GPT (eval mode) from a checkpoint found by `find_checkpoint`."""
    weights = checkpoint.path / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"{checkpoint.path} has no model.safetensors")
    fields = checkpoint.meta.get("model_config")
    if fields is None:
        raise ValueError(
            f"{checkpoint.path / 'meta.json'} has no 'model_config' (the GPTConfig fields)"
        )
    known = set(GPTConfig.__dataclass_fields__)
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(
            f"{checkpoint.path / 'meta.json'} model_config has unknown keys {unknown}; "
            f"GPTConfig has {sorted(known)}"
        )
    model = gpt_from_state_dict(GPTConfig(**fields), load_file(str(weights)))
    return model.eval()
