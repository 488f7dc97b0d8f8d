"""init_from: a fresh run starts from a local HF GPT-2 folder; a resumed one from its checkpoint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from model.gpt import GPT, GPTConfig
from model.hf import to_hf
from tests.conftest import read_metrics, run_train
from tests.train.test_evaluate import load_script

# The shape of conftest.TINY_RUN's model (gpt2-tiny scales layer i's attention by 1 / (i + 1)).
TINY_SHAPE = dict(
    n_layer=1,
    n_head=2,
    n_embd=32,
    block_size=64,
    vocab_size=512,
    scale_attn_by_inverse_layer_idx=True,
)


def export_random_model(folder: Path, seed: int) -> Path:
    """A randomly initialised model of TINY_RUN's shape, exported as an HF folder."""
    torch.manual_seed(seed)
    to_hf(GPT(GPTConfig(**TINY_SHAPE))).save_pretrained(folder)
    return folder


def val_losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["val/loss"] for r in read_metrics(run_dir, "eval")}


def test_a_run_starts_from_the_folders_weights(tmp_path, corpus_dir, capsys) -> None:
    folder = export_random_model(tmp_path / "hf", seed=123)
    run_train(tmp_path / "run", corpus_dir, "max_steps=1", f"init_from={folder}")

    script = load_script("evaluate")
    assert script.main([str(folder), "--like", str(tmp_path / "run")]) == 0
    folder_loss = json.loads(capsys.readouterr().out)["val/loss"]
    # Bit-equal: the run's step-0 eval scored the folder's weights (its own init has seed 0).
    assert val_losses(tmp_path / "run")[0] == folder_loss


@pytest.mark.slow
def test_resume_after_init_from_continues_from_the_runs_checkpoint(tmp_path, corpus_dir) -> None:
    folder = export_random_model(tmp_path / "hf", seed=123)
    common = [
        "optim.decay_steps=6",
        "ckpt_interval=100",
        "eval_interval=100",
        f"init_from={folder}",
    ]
    run_train(tmp_path / "whole", corpus_dir, "max_steps=6", *common)
    run_train(tmp_path / "split", corpus_dir, "max_steps=3", *common)
    # Other weights in the folder now: a resume that re-imported them would change the losses.
    shutil.rmtree(folder)
    export_random_model(folder, seed=456)
    run_train(tmp_path / "split", corpus_dir, "max_steps=6", *common)

    def train_losses(run_dir: Path) -> dict[int, float]:
        return {r["step"]: r["train/loss"] for r in read_metrics(run_dir)}

    whole, split = train_losses(tmp_path / "whole"), train_losses(tmp_path / "split")
    assert list(split) == list(range(1, 7))
    for step in range(4, 7):
        assert split[step] == whole[step]


def test_init_from_a_gpt2_with_biases_refuses_a_model_without(tmp_path, corpus_dir) -> None:
    config = GPT2Config(
        n_layer=1,
        n_head=2,
        n_embd=32,
        n_positions=64,
        vocab_size=512,
        scale_attn_by_inverse_layer_idx=True,
        bos_token_id=0,
        eos_token_id=0,
    )
    torch.manual_seed(0)
    hf_model = GPT2LMHeadModel(config)
    with torch.no_grad():
        for p in hf_model.parameters():
            p.add_(0.01 * torch.randn_like(p))  # non-zero biases, as GPT-2's own
    hf_model.save_pretrained(tmp_path / "gpt2")
    init = f"init_from={tmp_path / 'gpt2'}"

    refused = run_train(tmp_path / "no_bias", corpus_dir, "max_steps=1", init, check=False)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [refused.stderr.strip()]
    assert "non-zero biases" in refused.stderr and "model.bias=false" in refused.stderr


def test_init_from_a_path_without_a_model_fails_in_one_line(tmp_path, corpus_dir) -> None:
    proc = run_train(
        tmp_path / "run", corpus_dir, "max_steps=1", f"init_from={tmp_path}", check=False
    )
    assert proc.returncode == 2
    assert "not a Hugging Face GPT-2 folder (no config.json)" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run" / "checkpoints").exists()
