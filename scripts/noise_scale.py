"""Measure the gradient noise scale B_simple = tr(Sigma)/|G|^2 of a checkpoint (McCandlish et al.).

    python scripts/noise_scale.py --checkpoint RUN_DIR_OR_CKPT_DIR [--batches 32 --sequences 4]

Takes `--batches` independent batches of `--sequences` training sequences (the run's block size,
its corpus, a random stream of its own), computes each batch's mean-loss gradient at the
checkpoint's weights in float32, and estimates B_simple from their Gram matrix
(study/noise_scale.py): the batch, in tokens, above which doubling it no longer halves the steps.
A batch well below B_simple is noise-dominated: sign-like updates and Adam behave there very
differently from the large-batch regime of the Sophia paper. Prints the estimate with its method;
`--json` for scripts.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from anywhere, no install

import torch  # noqa: E402

from data.batches import TokenWindows, load_split  # noqa: E402
from study.noise_scale import gram_matrix, noise_scale_from_gram  # noqa: E402
from training.checkpoint import CheckpointError, find_checkpoint  # noqa: E402
from training.loading import model_from_checkpoint  # noqa: E402


def batch_gradients(model, windows: TokenWindows, batches: int, sequences: int):
    """Flat float32 gradients of the mean loss over each of `batches` independent batches."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    gradients = []
    for index in range(batches):
        x, y = windows.micro_batch(index, sequences, sequences, 0)
        model.zero_grad(set_to_none=True)
        _, loss = model(x, y)
        loss.backward()
        gradients.append(torch.cat([p.grad.flatten() for p in params]).clone())
    return gradients


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a run dir or a checkpoint dir")
    parser.add_argument("--batches", type=int, default=32, help="independent batches (>= 3)")
    parser.add_argument("--sequences", type=int, default=4, help="sequences per batch")
    parser.add_argument("--data-dir", help="prepared corpus (default: the run's data.dir)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the batches drawn")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    if args.batches < 3 or args.sequences < 1:
        raise SystemExit("error: --batches must be >= 3 and --sequences >= 1")
    try:
        checkpoint = find_checkpoint(args.checkpoint)
        model = model_from_checkpoint(checkpoint)
    except (CheckpointError, FileNotFoundError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    config = checkpoint.meta.get("config", {})
    block_size = config.get("block_size", model.config.block_size)
    data_dir = Path(args.data_dir or config.get("data", {}).get("dir", ""))
    if not data_dir.is_absolute():
        data_dir = REPO / data_dir
    torch.manual_seed(args.seed)
    windows = TokenWindows(load_split(data_dir, "train"), block_size, args.seed, "noise")
    model.float()
    gradients = batch_gradients(model, windows, args.batches, args.sequences)
    tokens = args.sequences * block_size
    estimate = noise_scale_from_gram(gram_matrix(gradients), tokens)
    step = checkpoint.meta.get("counters", {}).get("step")
    if args.json:
        print(json.dumps({"checkpoint": str(checkpoint.path), "step": step,
                          "block_size": block_size, **estimate.__dict__}))  # fmt: skip
        return
    print(f"{checkpoint.path} (step {step}):")
    print(estimate.describe("tokens"))
    print(f"= {estimate.b_simple / block_size:,.1f} sequences of {block_size} tokens")


if __name__ == "__main__":
    main()
