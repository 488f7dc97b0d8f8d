"""Sample text from a trained model: a run dir, a checkpoint dir or a Hugging Face GPT-2 folder.

    python scripts/sample.py runs/<run>                              # the run's latest checkpoint
    python scripts/sample.py hf/<name> --prompt "ROMEO:" --num-samples 3 --max-new-tokens 200
    python scripts/sample.py runs/<run> --prompt-file prompt.txt --temperature 0   # greedy

Tokens are printed as they are drawn. The tokenizer is the run's (`data.tokenizer`: gpt2 or
bytes); an HF folder's follows from its vocabulary (>= 50257: gpt2, 256: bytes), or give
--tokenizer. An empty prompt starts from the end-of-text token, as every document in a prepared
corpus does. The model runs under bfloat16 autocast where the device computes it natively
(--dtype), else in float32 on CPU and float16 on CUDA.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere, no install

import torch  # noqa: E402

from data.tokenizer import TOKENIZERS, load_tokenizer  # noqa: E402
from model.sampling import TextStream, sample_tokens  # noqa: E402
from training.build import DTYPES, autocast_context, resolve_dtype  # noqa: E402
from training.distributed import pick_device  # noqa: E402
from training.loading import TrainedModel, load_trained_model  # noqa: E402

SEPARATOR = "\n" + "-" * 40


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="run dir, checkpoints/step_* dir or HF GPT-2 folder")
    prompt = parser.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", default="", help="text to continue (default: none)")
    prompt.add_argument("--prompt-file", type=Path, help="read the prompt from this file")
    parser.add_argument("--num-samples", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument(
        "--temperature", type=float, default=0.8, help="0: greedy (argmax) decoding"
    )
    parser.add_argument("--top-k", type=int, default=200, help="0: no cut")
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument(
        "--dtype", choices=["auto", *DTYPES], default="auto", help="auto: as train.py picks it"
    )
    parser.add_argument(
        "--tokenizer", choices=TOKENIZERS, help="override the one the model's source implies"
    )
    args = parser.parse_args(argv)
    for name in ("num_samples", "max_new_tokens"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.temperature < 0:
        parser.error(f"--temperature must be >= 0 (0: greedy), got {args.temperature}")
    if args.top_k < 0:
        parser.error(f"--top-k must be >= 0 (0: no cut), got {args.top_k}")
    return args


def prompt_ids(text: str, tokenizer, trained: TrainedModel) -> list[int]:
    """The prompt's ids, checked against the model's vocabulary."""
    ids = tokenizer.encode(text) if text else [tokenizer.eot_id]
    vocab = trained.model.config.vocab_size
    if max(ids) >= vocab:
        raise ValueError(
            f"the {tokenizer.name} tokenizer gives id {max(ids)} but {trained.path} has "
            f"{vocab} token ids: the model was trained with another tokenizer (--tokenizer)"
        )
    return ids


def sample(args: argparse.Namespace) -> None:
    trained = load_trained_model(args.model)
    name = args.tokenizer or trained.tokenizer
    if name is None:
        raise ValueError(
            f"cannot tell the tokenizer of {trained.path} (vocab "
            f"{trained.model.config.vocab_size}): pass --tokenizer gpt2 or --tokenizer bytes"
        )
    try:
        tokenizer = load_tokenizer(name)
    except RuntimeError as err:  # no GPT-2 BPE files here: its message says what to install
        raise ValueError(str(err)) from None
    text = args.prompt_file.read_text() if args.prompt_file else args.prompt
    ids = prompt_ids(text, tokenizer, trained)

    device = pick_device(args.device, 0)
    dtype = resolve_dtype(args.dtype, device)
    autocast = autocast_context(device, dtype)
    model = trained.model.to(device)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    prompt = torch.tensor([ids], dtype=torch.long, device=device)

    for index in range(args.num_samples):
        if index:
            print(SEPARATOR, flush=True)
        print(text, end="", flush=True)
        stream = TextStream(tokenizer.decode)
        for token in sample_tokens(
            model,
            prompt,
            args.max_new_tokens,
            temperature=args.temperature,
            top_k=args.top_k or None,
            generator=generator,
            vocab_size=min(tokenizer.vocab_size, model.config.vocab_size),
            autocast=autocast,
        ):
            print(stream.push(int(token)), end="", flush=True)
        print(stream.flush(), flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        sample(args)
    except (OSError, ValueError) as err:  # missing or incompatible model: one line
        print(f"sample: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
