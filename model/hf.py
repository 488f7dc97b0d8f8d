"""Conversion between our GPT and Hugging Face's GPT2LMHeadModel, both ways, and HF loading.

`load_hf_model` reads a local HF GPT-2 folder and `import_hf_weights` copies such a folder into
a model built from our config (`init_from`); training/loading.py reads our own checkpoints.

The two are the same network with different storage:
- HF keeps its projections in `Conv1D`, which computes x @ W + b with W of shape (in, out): the
  transpose of our `nn.Linear` weights (out, in). Embeddings and LayerNorms are stored alike.
- HF GPT-2 always has biases. Our `bias=False` model exports zero biases (the same function); a
  model imported from HF gets `bias=True`.
- Our embedding has 50304 rows (GPT-2's 50257 padded to a multiple of 64 for fast matmuls). The
  padded ids are never produced by the tokenizer, so they are never targets: training only pushes
  their logits down. `to_hf(model, vocab_size=50257)` drops those rows, giving the tokenizer's vocab
  and identical logits for every real token; the softmax then renormalises over real tokens only.
- HF's attention is chosen by the `attn_implementation` config argument (not saved in config.json;
  `from_pretrained` picks "sdpa" by default). We ask for "sdpa" too, the kernel our model runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.utils import logging as hf_logging

from configs.messages import first_line
from model.gpt import GPT, GPTConfig

GPT2_EOT_TOKEN = 50256  # <|endoftext|>, GPT-2's bos and eos
COMPILE_PREFIX = "_orig_mod."  # torch.compile's wrapper module prefixes every key with this
TIED_KEYS = ("transformer.wte.weight", "lm_head.weight")
# Our nn.Linear weights that HF stores transposed in Conv1D, per block.
CONV1D_WEIGHTS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
LAYER_NORMS = ("ln_1", "ln_2")


def hf_config(cfg: GPTConfig, vocab_size: int | None = None) -> GPT2Config:
    """The GPT2Config of our model shape; `vocab_size` defaults to ours (padded)."""
    vocab_size = cfg.vocab_size if vocab_size is None else vocab_size
    eot = GPT2_EOT_TOKEN if vocab_size > GPT2_EOT_TOKEN else None
    return GPT2Config(
        vocab_size=vocab_size,
        n_positions=cfg.block_size,
        n_ctx=cfg.block_size,  # dropped by transformers 5, still read by older versions
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        n_inner=None,  # 4 * n_embd, as ours
        activation_function="gelu_new",  # tanh-approximated GELU, as ours
        resid_pdrop=cfg.dropout,
        embd_pdrop=cfg.dropout,
        attn_pdrop=cfg.dropout,
        layer_norm_epsilon=1e-5,
        scale_attn_weights=True,
        scale_attn_by_inverse_layer_idx=cfg.scale_attn_by_inverse_layer_idx,
        tie_word_embeddings=True,
        bos_token_id=eot,
        eos_token_id=eot,
        attn_implementation="sdpa",
    )


def strip_compile_prefix(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict of a torch.compile'd model with the `_orig_mod.` prefix removed."""
    return {key.replace(COMPILE_PREFIX, "", 1): value for key, value in state_dict.items()}


def to_hf(model: GPT, vocab_size: int | None = None) -> GPT2LMHeadModel:
    """An HF GPT2LMHeadModel (float32, eval mode) computing the same logits as `model`.

    `vocab_size` keeps the first rows of the embedding (e.g. 50257 to drop our padding).
    """
    model = getattr(model, "_orig_mod", model)  # unwrap torch.compile
    cfg = model.config
    vocab_size = cfg.vocab_size if vocab_size is None else vocab_size
    if not 0 < vocab_size <= cfg.vocab_size:
        raise ValueError(
            f"vocab_size must be in [1, model.vocab_size={cfg.vocab_size}], got {vocab_size}"
        )
    ours = {k: v.detach().float() for k, v in model.state_dict().items()}

    def bias(key: str, size: int) -> torch.Tensor:
        return ours[key] if key in ours else torch.zeros(size)

    wte = ours["transformer.wte.weight"][:vocab_size]
    theirs = {
        "transformer.wte.weight": wte,
        "lm_head.weight": wte,
        "transformer.wpe.weight": ours["transformer.wpe.weight"],
    }
    for i in range(cfg.n_layer):
        block = f"transformer.h.{i}."
        for name in (*LAYER_NORMS, *CONV1D_WEIGHTS):
            weight = ours[block + name + ".weight"]
            is_conv1d = name in CONV1D_WEIGHTS
            theirs[block + name + ".weight"] = weight.t() if is_conv1d else weight
            theirs[block + name + ".bias"] = bias(block + name + ".bias", weight.shape[0])
    theirs["transformer.ln_f.weight"] = ours["transformer.ln_f.weight"]
    theirs["transformer.ln_f.bias"] = bias("transformer.ln_f.bias", cfg.n_embd)

    hf_model = GPT2LMHeadModel(hf_config(cfg, vocab_size))
    hf_model.load_state_dict(theirs, strict=True)  # copies in place, so the tie survives
    if hf_model.lm_head.weight is not hf_model.transformer.wte.weight:
        raise RuntimeError("HF model lost its tied embedding: lm_head would drift from wte")
    return hf_model.eval()


def from_hf(hf_model: GPT2LMHeadModel) -> GPT:
    """Our GPT (bias=True, eval mode) computing the same logits as an HF GPT-2 model."""
    hf_cfg = hf_model.config
    problems = []
    if hf_cfg.activation_function != "gelu_new":
        problems.append(f"activation_function={hf_cfg.activation_function!r} (ours: 'gelu_new')")
    if hf_cfg.n_inner not in (None, 4 * hf_cfg.n_embd):
        problems.append(f"n_inner={hf_cfg.n_inner} (ours: 4 * n_embd)")
    if not hf_cfg.scale_attn_weights:
        problems.append("scale_attn_weights=False (ours always scales by 1/sqrt(head_dim))")
    if hf_cfg.layer_norm_epsilon != 1e-5:
        problems.append(f"layer_norm_epsilon={hf_cfg.layer_norm_epsilon} (ours: 1e-5)")
    if not hf_cfg.tie_word_embeddings:
        problems.append("tie_word_embeddings=False (ours ties lm_head to wte)")
    if len({hf_cfg.resid_pdrop, hf_cfg.embd_pdrop, hf_cfg.attn_pdrop}) != 1:
        problems.append("resid/embd/attn_pdrop differ (ours has one dropout)")
    if problems:
        raise ValueError("cannot convert this HF GPT-2 config: " + "; ".join(problems))

    cfg = GPTConfig(
        name="gpt2-from-hf",
        n_layer=hf_cfg.n_layer,
        n_head=hf_cfg.n_head,
        n_embd=hf_cfg.n_embd,
        block_size=hf_cfg.n_positions,
        vocab_size=hf_cfg.vocab_size,
        dropout=float(hf_cfg.resid_pdrop),
        bias=True,
        scale_attn_by_inverse_layer_idx=hf_cfg.scale_attn_by_inverse_layer_idx,
    )
    theirs = {k: v.detach().float() for k, v in hf_model.state_dict().items()}
    ours = {}
    for key, value in theirs.items():
        is_conv1d = key.endswith(".weight") and any(f".{n}." in key for n in CONV1D_WEIGHTS)
        ours[key] = value.t() if is_conv1d else value
    model = GPT(cfg)
    model.load_state_dict(ours, strict=True)
    return model.eval()


def gpt_from_state_dict(cfg: GPTConfig, state_dict: dict[str, torch.Tensor]) -> GPT:
    """Our GPT with these weights; the tied embedding may be stored under either name, or both."""
    state_dict = strip_compile_prefix(state_dict)
    present = [key for key in TIED_KEYS if key in state_dict]
    if not present:
        raise ValueError(f"state dict has no embedding: expected one of {TIED_KEYS}")
    for key in TIED_KEYS:
        state_dict.setdefault(key, state_dict[present[0]])
    model = GPT(cfg)
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"weights do not fit model config {cfg}: missing {sorted(missing)[:3]}, "
            f"unexpected {sorted(unexpected)[:3]}"
        )
    return model


def load_hf_model(folder: str | Path) -> GPT2LMHeadModel:
    """A GPT2LMHeadModel (float32, eval mode) from a local Hugging Face folder, offline.

    The folder is one `save_pretrained` wrote (scripts/export_hf.py, or a downloaded GPT-2:
    config.json and its weights); nothing is fetched from the hub.
    """
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(
            f"{folder} has no config.json: expected a Hugging Face GPT-2 folder "
            "(config.json and model.safetensors, as save_pretrained writes)"
        )
    try:
        model_type = json.loads(config_path.read_text()).get("model_type")
    except ValueError as err:
        raise ValueError(f"{config_path} is not valid JSON ({err})") from None
    if model_type != "gpt2":
        raise ValueError(
            f"{folder} holds a {model_type!r} model (config.json model_type); only GPT-2 converts"
        )
    bar_was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a bar per load is noise in training logs and scripts
    try:
        model = GPT2LMHeadModel.from_pretrained(folder, local_files_only=True)
    except OSError as err:  # no weights file, or a truncated one
        raise ValueError(f"cannot load the weights of {folder}: {first_line(err)}") from None
    finally:
        if bar_was_on:
            hf_logging.enable_progress_bar()
    return model.float().eval()


def import_hf_weights(model: GPT, folder: str | Path) -> None:
    """Overwrite `model`'s weights in place with those of a local HF GPT-2 folder (`init_from`).

    The layer shape must match. The folder may have fewer vocabulary rows than `model` (GPT-2's
    50257 into our padded 50304: the padded rows keep their initialisation; no token maps to
    them) and a longer position table (its first `model.block_size` rows are kept, as nanoGPT's
    crop_block_size). A model without biases takes the folder's only if they are all zero
    (an export of such a model); GPT-2's own weights need `model.bias=true`.
    """
    source = from_hf(load_hf_model(folder))
    ours, theirs = model.config, source.config
    problems, fixes = [], []  # what differs, and the override that makes the model fit
    for key in ("n_layer", "n_head", "n_embd", "scale_attn_by_inverse_layer_idx"):
        if getattr(theirs, key) != getattr(ours, key):
            problems.append(f"{key}={getattr(theirs, key)} (model.{key}={getattr(ours, key)})")
            fixes.append(f"model.{key}={str(getattr(theirs, key)).lower()}")
    if theirs.vocab_size > ours.vocab_size:
        problems.append(f"vocab_size={theirs.vocab_size} (model.vocab_size={ours.vocab_size})")
        fixes.append(f"model.vocab_size={theirs.vocab_size}")
    if theirs.block_size < ours.block_size:
        problems.append(f"n_positions={theirs.block_size} (model.block_size={ours.block_size})")
        fixes.append(f"model.block_size={theirs.block_size}")
    weights = source.state_dict()
    if not ours.bias:
        nonzero = [k for k, v in weights.items() if k.endswith(".bias") and v.any()]
        if nonzero:
            problems.append(f"non-zero biases such as {nonzero[0]} (model.bias=false drops them)")
            fixes.append("model.bias=true")
    if problems:
        raise ValueError(
            f"init_from={folder} does not fit model={ours.name}: {'; '.join(problems)}; "
            f"set {' '.join(fixes)} or pick the model= of that shape"
        )
    with torch.no_grad():
        for key, target in model.state_dict().items():  # shares storage with the parameters
            value = weights[key]
            if key in TIED_KEYS:
                target[: value.shape[0]].copy_(value)
            elif key == "transformer.wpe.weight":
                target.copy_(value[: target.shape[0]])
            else:
                target.copy_(value)
