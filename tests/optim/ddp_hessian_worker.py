"""One refresh of GNB (into SophiaG) and Hutchinson (into SophiaH) on a tiny GPT, as a process of
a torchrun job or alone; rank 0 saves the resulting Hessian states to the path in argv[1].

The global estimation batch is always the same 2 micro-batches of 2 sequences: alone, this process
takes both (gradient accumulation); with 2 ranks, rank r takes micro-batch r, the layout of
data/batches.py (chunk = micro_step * world_size + rank).
"""

from __future__ import annotations

import sys
from contextlib import nullcontext

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from model.gpt import GPT, GPTConfig
from optim.hessian import GaussNewtonBartlett, Hutchinson
from optim.sophia import SophiaG, SophiaH
from training import distributed
from training.hessian_pass import EstimationBatch, run_estimate

GLOBAL_MICRO_BATCHES = 2


def main(out_path: str) -> None:
    world = distributed.setup("cpu")
    results = estimate(world)
    if world.is_main:
        torch.save(results, out_path)
    world.barrier()  # leave together: a rank exiting while gloo still runs can abort the other
    distributed.teardown(world)


def estimate(world: distributed.Distributed) -> dict:
    """Both refreshes; the DDP wrapper is gone when this returns (before the teardown)."""
    torch.manual_seed(0)
    raw_model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, vocab_size=64, block_size=16))
    model = DDP(raw_model) if world.enabled else raw_model
    generator = torch.Generator().manual_seed(1)
    chunks = [
        torch.randint(0, 64, (2, 17), generator=generator) for _ in range(GLOBAL_MICRO_BATCHES)
    ]
    local = GLOBAL_MICRO_BATCHES // world.world_size

    def micro_batches():
        for micro_step in range(local):
            tokens = chunks[micro_step * world.world_size + world.rank]
            yield tokens[:, :-1], tokens[:, 1:]

    batch = EstimationBatch(
        model=model, raw_model=raw_model, micro_batches=micro_batches, num_micro_batches=local,
        autocast=nullcontext, world=world, seed=0, step=4, tokens=GLOBAL_MICRO_BATCHES * 2 * 16,
    )  # fmt: skip
    results = {}
    for name, optimizer, estimator in [
        ("gnb", SophiaG(raw_model.parameters(), betas=(0.9, 0.5)), GaussNewtonBartlett()),
        ("hutchinson", SophiaH(raw_model.parameters(), betas=(0.9, 0.5)), Hutchinson(n_probes=2)),
    ]:
        stats = run_estimate(estimator, batch, optimizer)
        results[name] = {
            "hessian": [optimizer.state[p]["hessian"] for p in raw_model.parameters()],
            "stats": stats,
        }
    return results


if __name__ == "__main__":
    main(sys.argv[1])
