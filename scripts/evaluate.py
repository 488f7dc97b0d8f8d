"""Score a model on a prepared corpus with the fixed batches train.py evaluates on; JSON out.

    python scripts/evaluate.py runs/<run>                          # its corpus, its settings
    python scripts/evaluate.py hf/<name> --like runs/<run>          # an export, a run's batches
    python scripts/evaluate.py path/to/gpt2 --data data/cache/shakespeare --split val train

MODEL is a run dir (its latest checkpoint), a checkpoint dir, or any local Hugging Face GPT-2
folder (an export, or a downloaded GPT-2). The loss is train.py's `val/loss` (`train/loss`):
the mean token cross-entropy in nats over batches 0..eval_iters-1 of the evaluation stream
(training/evaluate.py), so at the same weights and settings it equals the run's metrics.jsonl.
The settings (data dir, block_size, batch_size, eval_iters, micro batch, dtype) come from the
checkpoint's run, or from --like RUN, else train.py's defaults; each flag overrides one.
Perplexity is exp(loss); on a byte-level corpus (meta.json "tokenizer": "bytes") bits per byte
is loss / ln 2.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere, no install

from omegaconf import OmegaConf  # noqa: E402
from tqdm import tqdm  # noqa: E402

from configs.schema import TrainConfig  # noqa: E402
from data.batches import load_split  # noqa: E402
from data.tokenizer import TOKENIZERS  # noqa: E402
from training.build import DTYPES, autocast_context, resolve_dtype  # noqa: E402
from training.checkpoint import CheckpointError, find_checkpoint  # noqa: E402
from training.distributed import Distributed, pick_device  # noqa: E402
from training.evaluate import evaluate, evaluation_windows  # noqa: E402
from training.loading import TrainedModel, load_trained_model  # noqa: E402

SETTINGS = ("block_size", "batch_size", "eval_iters", "micro_batch_size", "dtype")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="run dir, checkpoints/step_* dir or HF GPT-2 folder")
    parser.add_argument("--data", help="prepared corpus dir (train.bin, val.bin, meta.json)")
    parser.add_argument("--split", nargs="+", choices=["val", "train"], default=["val"])
    parser.add_argument("--like", help="take the corpus and settings from this run dir")
    parser.add_argument("--block-size", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--eval-iters", type=int, help="batches per split")
    parser.add_argument("--micro-batch-size", type=int, help="sequences per forward")
    parser.add_argument(
        "--dtype", choices=["auto", *DTYPES], help="autocast dtype (auto: as train.py picks it)"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    args = parser.parse_args(argv)
    for name in ("block_size", "batch_size", "eval_iters", "micro_batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    return args


def run_config(run: str | Path) -> dict[str, Any]:
    """A run's resolved config: from its latest checkpoint, else from .hydra/config.yaml."""
    run = Path(run)
    try:
        config = find_checkpoint(run).meta.get("config")
    except CheckpointError:
        config = None
    if config is None and (run / ".hydra" / "config.yaml").is_file():
        config = OmegaConf.to_container(OmegaConf.load(run / ".hydra" / "config.yaml"))
    if config is None:
        raise ValueError(f"--like {run}: no run config there (checkpoints/ or .hydra/config.yaml)")
    return with_run_micro_batch(config, run)


def with_run_micro_batch(config: dict[str, Any], path: Path) -> dict[str, Any]:
    """The config with the per-rank micro batch the run used (run.json, beside its checkpoints/),
    so each batch splits into the micro-batches its evaluation summed."""
    for directory in (path, *path.parents[:3]):
        facts = directory / "run.json"
        if facts.is_file():
            micro = json.loads(facts.read_text()).get("micro_batch_size")
            return {**config, "micro_batch_size": micro}
    return config


def settings_for(args: argparse.Namespace, trained: TrainedModel) -> dict[str, Any]:
    """Data dir and batch settings: flags, else the run's (--like or the checkpoint's), else
    train.py's defaults (float32 on the CPU and bfloat16 on CUDA when no run says)."""
    if args.like:
        source = run_config(args.like)
    elif trained.train_config is not None:
        source = with_run_micro_batch(trained.train_config, trained.path)
    else:
        source = {}
    defaults = TrainConfig.__dataclass_fields__
    settings = {key: source.get(key, defaults[key].default) for key in SETTINGS}
    if "dtype" not in source:
        settings["dtype"] = "auto"  # resolved for the device below, as train.py does
    settings["data"] = source.get("data", {}).get("dir")
    for key in (*SETTINGS, "data"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    if settings["data"] is None:
        raise ValueError(
            f"{trained.path} names no corpus: give --data DIR (a prepared corpus) or --like RUN"
        )
    micro = settings["micro_batch_size"] or settings["batch_size"]
    if args.batch_size is not None and args.micro_batch_size is None:
        micro = math.gcd(micro, args.batch_size)  # a new batch size: the run's micro or less
    settings["micro_batch_size"] = micro
    return settings


def check_fits(trained: TrainedModel, meta: dict, settings: dict, data: Path) -> None:
    """The corpus's tokens mean to the model what they meant in training; the context fits."""
    corpus_tokenizer = meta.get("tokenizer")
    known = corpus_tokenizer in TOKENIZERS and trained.tokenizer in TOKENIZERS
    if known and corpus_tokenizer != trained.tokenizer:
        raise ValueError(
            f"{data} is tokenized with {corpus_tokenizer}, the model was trained on "
            f"{trained.tokenizer} tokens: prepare one with data.tokenizer={trained.tokenizer}"
        )
    config = trained.model.config
    if settings["block_size"] > config.block_size:
        raise ValueError(
            f"block_size {settings['block_size']} exceeds the model's context {config.block_size}:"
            f" lower --block-size"
        )
    if meta.get("vocab_size", 0) > config.vocab_size:
        raise ValueError(
            f"{data} uses {meta['vocab_size']} token ids, the model has {config.vocab_size}: "
            f"the corpus was prepared with another tokenizer than the model's"
        )
    batch, micro = settings["batch_size"], settings["micro_batch_size"]
    if batch % micro:
        raise ValueError(f"--batch-size {batch} is not a multiple of --micro-batch-size {micro}")


def score(args: argparse.Namespace) -> dict[str, Any]:
    trained = load_trained_model(args.model)
    settings = settings_for(args, trained)
    data = Path(settings["data"])
    meta_path = data / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    check_fits(trained, meta, settings, data)
    tokens = {split: load_split(data, split) for split in ("train", "val")}
    windows = evaluation_windows(tokens["train"], tokens["val"], settings["block_size"])
    windows = {split: windows[split] for split in args.split}

    device = pick_device(args.device, 0)
    dtype = resolve_dtype(settings["dtype"], device)
    autocast = autocast_context(device, dtype)
    micro, batch = settings["micro_batch_size"], settings["batch_size"]
    accum = batch // micro
    with tqdm(total=len(windows) * settings["eval_iters"] * accum, desc="evaluate") as bar:
        losses = evaluate(
            trained.model.to(device),
            windows,
            batch,
            settings["eval_iters"],
            micro,
            accum,
            Distributed(device=device),
            autocast,
            on_micro_batch=bar.update,
        )
    result: dict[str, Any] = {
        "model": str(trained.path),
        "kind": trained.kind,
        "step": trained.step,
        "data": str(data),
        "tokenizer": meta.get("tokenizer"),
        **{key: settings[key] for key in SETTINGS},
        "device": str(device),
        "tokens_per_split": settings["eval_iters"] * batch * settings["block_size"],
    }
    for split in args.split:
        loss = losses[f"{split}/loss"]
        result[f"{split}/loss"] = loss
        result[f"{split}/perplexity"] = math.exp(loss)
        if meta.get("tokenizer") == "bytes":  # one token per byte
            result[f"{split}/bits_per_byte"] = loss / math.log(2)
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = score(args)
    except (OSError, ValueError) as err:  # missing or incompatible model or corpus: one line
        print(f"evaluate: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
