"""Sampling: greedy equals HF's generate on the export, a seed fixes the text, streaming is safe."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_model
from transformers import GPT2LMHeadModel

from data.tokenizer import ByteTokenizer
from model.gpt import GPT, GPTConfig
from model.hf import to_hf
from model.sampling import TextStream, next_token, sample_tokens

REPO = Path(__file__).resolve().parents[2]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def byte_model(seed: int = 0) -> GPT:
    """A tiny random byte-level GPT (vocab 256) with weights perturbed away from their init."""
    torch.manual_seed(seed)
    config = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=48, vocab_size=256)
    model = GPT(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


def write_run(run_dir: Path, model: GPT, tokenizer: str = "bytes") -> Path:
    """A run dir holding one checkpoint, laid out as training/checkpoint.py writes it."""
    path = run_dir / "checkpoints" / "step_00000007"
    path.mkdir(parents=True)
    save_model(model, str(path / "model.safetensors"))
    meta = {
        "step": 7,
        "model_config": dataclasses.asdict(model.config),
        "config": {"data": {"tokenizer": tokenizer}},
    }
    (path / "meta.json").write_text(json.dumps(meta))
    return run_dir


def export(model: GPT, folder: Path) -> Path:
    to_hf(model).save_pretrained(folder)
    return folder


def test_greedy_sampling_equals_hf_generate_on_the_export(tmp_path) -> None:
    model = byte_model()
    hf_model = GPT2LMHeadModel.from_pretrained(export(model, tmp_path / "hf")).eval()
    prompt = torch.tensor([list(b"ROMEO:")])
    ours = torch.stack(list(sample_tokens(model, prompt, 20, temperature=0)), dim=1)
    theirs = hf_model.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=20,
        do_sample=False,
        pad_token_id=0,
    )[:, prompt.shape[1] :]
    assert torch.equal(ours, theirs)


def test_sample_script_greedy_prints_what_hf_generate_picks(tmp_path, capsys) -> None:
    model = byte_model()
    folder = export(model, tmp_path / "hf")
    script = load_script("sample")
    args = [str(folder), "--prompt", "ab", "--max-new-tokens", "15", "--temperature", "0"]
    assert script.main(args) == 0
    printed = capsys.readouterr().out

    prompt = torch.tensor([list(b"ab")])
    ids = GPT2LMHeadModel.from_pretrained(folder).generate(
        prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=15, do_sample=False
    )[0, 2:]
    stream = TextStream(ByteTokenizer().decode)
    expected = "ab" + "".join(stream.push(int(i)) for i in ids) + stream.flush() + "\n"
    assert printed == expected


def test_sample_script_is_deterministic_with_a_seed(tmp_path, capsys) -> None:
    run = write_run(tmp_path / "run", byte_model())
    script = load_script("sample")

    def sample(seed: int) -> str:
        args = [str(run), "--prompt", "x", "--num-samples", "2", "--max-new-tokens", "30"]
        assert script.main([*args, "--temperature", "1.0", "--seed", str(seed)]) == 0
        return capsys.readouterr().out

    first = sample(seed=3)
    assert sample(seed=3) == first
    assert sample(seed=4) != first
    assert first.count("-" * 40) == 1  # two samples, one separator


def test_sample_script_reads_the_prompt_from_a_file(tmp_path, capsys) -> None:
    run = write_run(tmp_path / "run", byte_model())
    (tmp_path / "prompt.txt").write_text("KING:\n")
    args = ["--max-new-tokens", "3", "--temperature", "0"]
    assert (
        load_script("sample").main([str(run), "--prompt-file", str(tmp_path / "prompt.txt"), *args])
        == 0
    )
    assert capsys.readouterr().out.startswith("KING:\n")


@pytest.mark.parametrize(
    "make_source, message",
    [
        (lambda tmp: tmp / "nope", "does not exist"),
        (lambda tmp: write_run(tmp / "run", byte_model(), tokenizer="gpt2"), "another tokenizer"),
        (lambda tmp: tmp / "empty_run", "no checkpoint"),
        (lambda tmp: llama_folder(tmp / "llama"), "only GPT-2"),
    ],
)
def test_sample_script_explains_a_missing_or_incompatible_model_in_one_line(
    tmp_path, capsys, make_source, message
) -> None:
    (tmp_path / "empty_run").mkdir()
    source = make_source(tmp_path)
    assert load_script("sample").main([str(source), "--prompt", "hello"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err


def llama_folder(folder: Path) -> Path:
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return folder


def test_top_k_one_is_greedy() -> None:
    logits = torch.randn(3, 50)
    generator = torch.Generator().manual_seed(0)
    sampled = next_token(logits, temperature=1.5, top_k=1, generator=generator)
    assert torch.equal(sampled, logits.argmax(dim=-1, keepdim=True))


class PaddingLovingModel(torch.nn.Module):
    """Puts all probability on the embedding's padding rows (ids >= 250 of 256)."""

    config = GPTConfig(n_layer=1, n_head=1, n_embd=8, block_size=8, vocab_size=256)

    def forward_logits(self, idx: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(*idx.shape, 256)
        logits[..., 250:] = 100.0
        return logits


def test_padding_rows_of_the_embedding_are_never_sampled() -> None:
    prompt = torch.tensor([[1, 2, 3]])
    for temperature in (0.0, 1.0):
        tokens = sample_tokens(
            PaddingLovingModel(), prompt, 20, temperature=temperature, vocab_size=250
        )
        assert all(int(t) < 250 for t in tokens)


def test_text_stream_never_prints_half_a_character() -> None:
    text = "héllo 日本 🙂!"
    stream = TextStream(ByteTokenizer().decode)
    pieces = [stream.push(b) for b in text.encode()] + [stream.flush()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in piece for piece in pieces)
