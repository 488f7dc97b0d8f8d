"""scripts/evaluate.py scores a checkpoint or an export exactly as train.py's eval lines do."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_model

from model.gpt import GPT, GPTConfig
from tests.conftest import REPO, read_metrics, run_train


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def score(capsys, *args: str) -> dict:
    assert load_script("evaluate").main([str(a) for a in args]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, corpus_dir) -> Path:
    """A finished tiny run with micro-batches, its last eval at its last checkpoint (step 5)."""
    run_dir = tmp_path_factory.mktemp("evaluate") / "run"
    run_train(run_dir, corpus_dir, "max_steps=5", "eval_iters=2", "micro_batch_size=2")
    return run_dir


def test_evaluate_equals_the_runs_logged_losses(trained_run, capsys) -> None:
    logged = read_metrics(trained_run, "eval")[-1]
    assert logged["step"] == 5
    result = score(capsys, trained_run, "--split", "val", "train")
    assert result["step"] == 5
    assert result["micro_batch_size"] == 2 and result["eval_iters"] == 2
    assert result["val/loss"] == logged["val/loss"]
    assert result["train/loss"] == logged["train/loss"]
    assert result["val/perplexity"] == pytest.approx(math.exp(logged["val/loss"]))
    assert "val/bits_per_byte" not in result  # not a byte-level corpus


def test_evaluate_an_export_on_the_runs_batches(trained_run, tmp_path, capsys) -> None:
    out = tmp_path / "hf"
    assert load_script("export_hf").main(["--checkpoint", str(trained_run), "--out", str(out)]) == 0
    capsys.readouterr()
    result = score(capsys, out, "--like", trained_run)
    assert result["kind"] == "hf"
    logged = read_metrics(trained_run, "eval")[-1]
    assert result["val/loss"] == pytest.approx(logged["val/loss"], abs=1e-5)


def byte_corpus(directory: Path) -> Path:
    """A prepared byte-level corpus (meta.json "tokenizer": "bytes")."""
    text = np.frombuffer(b"to be or not to be, that is the question. " * 60, dtype=np.uint8)
    directory.mkdir()
    text.astype(np.uint16)[:2000].tofile(directory / "train.bin")
    text.astype(np.uint16)[2000:].tofile(directory / "val.bin")
    meta = {
        "tokenizer": "bytes",
        "vocab_size": 256,
        "dtype": "uint16",
        "tokens": {"train": 2000, "val": len(text) - 2000},
    }
    (directory / "meta.json").write_text(json.dumps(meta))
    return directory


def byte_checkpoint(run_dir: Path, tokenizer: str = "bytes") -> Path:
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=32, vocab_size=256))
    path = run_dir / "checkpoints" / "step_00000001"
    path.mkdir(parents=True)
    save_model(model, str(path / "model.safetensors"))
    config = {"data": {"tokenizer": tokenizer}, "dtype": "float32"}
    meta = {"step": 1, "model_config": dataclasses.asdict(model.config), "config": config}
    (path / "meta.json").write_text(json.dumps(meta))
    return path


def test_evaluate_reports_bits_per_byte_on_a_byte_corpus(tmp_path, capsys) -> None:
    checkpoint = byte_checkpoint(tmp_path / "run")
    data = byte_corpus(tmp_path / "bytes")
    result = score(capsys, checkpoint, "--data", data, "--block-size", "16", "--batch-size", "4")
    assert result["tokenizer"] == "bytes"
    assert result["val/bits_per_byte"] == pytest.approx(result["val/loss"] / math.log(2))
    assert result["tokens_per_split"] == 4 * 4 * 16  # train.py's default eval_iters=4


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data", "{tmp}/nowhere"], "no prepared corpus"),
        (["--block-size", "64"], "exceeds the model's context 32"),
        (["--batch-size", "6", "--micro-batch-size", "4"], "not a multiple"),
    ],
)
def test_evaluate_explains_a_bad_setting_in_one_line(tmp_path, capsys, args, message) -> None:
    checkpoint = byte_checkpoint(tmp_path / "run")
    data = byte_corpus(tmp_path / "bytes")
    args = [a.format(tmp=tmp_path) for a in args]
    full = [str(checkpoint), "--data", str(data), "--block-size", "16", *args]
    assert load_script("evaluate").main(full) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err


def test_evaluate_refuses_a_corpus_of_another_tokenizer(tmp_path, capsys) -> None:
    checkpoint = byte_checkpoint(tmp_path / "run", tokenizer="gpt2")
    data = byte_corpus(tmp_path / "bytes")
    assert load_script("evaluate").main([str(checkpoint), "--data", str(data)]) == 2
    assert "tokenized with bytes, the model was trained on gpt2" in capsys.readouterr().err


def test_evaluate_needs_a_corpus_for_an_hf_folder(tmp_path, capsys) -> None:
    from model.hf import to_hf

    to_hf(GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=32))).save_pretrained(
        tmp_path / "hf"
    )
    assert load_script("evaluate").main([str(tmp_path / "hf")]) == 2
    assert "give --data DIR" in capsys.readouterr().err
