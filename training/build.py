"""Build a run from its config: data streams, model, optimizer plan, precision, checkpointer.

Everything a run needs is validated here, before anything is written: a bad combination of
batch sizes, world size and corpus stops the run with one line, the run dir untouched.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import hydra
import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from configs.schema import TrainConfig
from data.batches import TokenWindows, load_split
from data.config import prepare_command
from model.gpt import GPT
from model.mfu import peak_flops
from optim.plan import OptimizerPlan
from training.checkpoint import Checkpointer
from training.distributed import Distributed
from training.errors import RunError
from training.evaluate import evaluation_windows

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def native_bfloat16(device: torch.device) -> bool:
    """Whether `device` computes bfloat16 matmuls in hardware: CUDA GPUs from Ampere on, CPUs
    with AVX512-BF16 or AMX. Elsewhere CPU autocast emulates bfloat16, about 20x slower than
    float32 (gpt2-tiny on a 2-core AVX2 EPYC: 47 against 1,007 tokens/s)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


def resolve_dtype(requested: str, device: torch.device) -> torch.dtype:
    """`dtype=auto`: bfloat16 where native, else float16 (with a GradScaler) on CUDA and
    float32 on CPU; any other value as given."""
    if requested != "auto":
        return DTYPES[requested]
    if native_bfloat16(device):
        return torch.bfloat16
    return torch.float16 if device.type == "cuda" else torch.float32


@dataclass(frozen=True)
class BatchShape:
    """How a global batch of `sequences` splits over ranks and micro-batches."""

    sequences: int  # global sequences
    micro: int  # sequences per rank per forward
    accumulation: int  # micro-batches per rank

    @classmethod
    def split(cls, sequences: int, micro: int, world: Distributed, key: str) -> BatchShape:
        per_step = micro * world.world_size
        if micro == 0 or sequences % per_step:
            raise RunError(
                f"{key}={sequences} is not a multiple of micro_batch_size={micro} x "
                f"world_size={world.world_size}: change {key} or micro_batch_size"
            )
        return cls(sequences, micro, sequences // per_step)


@dataclass
class Streams:
    """The run's deterministic token streams (data/batches.py)."""

    train: TokenWindows
    hessian: TokenWindows  # the fresh batch of each Hessian estimate
    evaluation: dict[str, TokenWindows]  # fixed batches, the same for every run


@dataclass
class Run:
    """Everything built once for a run; the loop's state lives in TrainState."""

    cfg: TrainConfig
    world: Distributed
    run_dir: Path
    batch: BatchShape
    hess_batch: BatchShape
    streams: Streams
    raw_model: GPT  # the plain module: weights, checkpoints, double backward
    model: nn.Module  # what forward is called on: compiled and/or DDP-wrapped
    optimizer: OptimizerPlan
    dtype: torch.dtype  # the autocast dtype, `dtype=auto` resolved for this device
    autocast: Callable[[], AbstractContextManager]
    scaler: torch.amp.GradScaler
    checkpointer: Checkpointer
    peak_flops: float
    wandb_run_id: str | None = None  # the W&B run a resumed run continues (from its checkpoint)

    @property
    def device(self) -> torch.device:
        return self.world.device

    @property
    def tokens_per_step(self) -> int:
        return self.cfg.batch_size * self.cfg.block_size

    @property
    def flops_per_token(self) -> float:
        return self.raw_model.flops_per_token(self.cfg.block_size)

    def micro_batch(
        self, stream: TokenWindows, shape: BatchShape, step: int, micro_step: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's micro-batch `micro_step` of `stream`'s global batch at `step`, on the
        run's device (data/batches.py's layout over ranks and micro-batches)."""
        world = self.world
        x, y = stream.micro_batch(
            step, shape.sequences, shape.micro, micro_step, world.rank, world.world_size
        )
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    @property
    def decay_steps(self) -> int:
        return self.cfg.optim.decay_steps or self.cfg.max_steps


def autocast_context(device: torch.device, dtype: torch.dtype) -> Callable:
    if dtype == torch.float32:
        return nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def build_streams(cfg: TrainConfig, overrides: Sequence[str] = ()) -> Streams:
    """Three independent deterministic streams over the prepared corpus, checked against it."""
    data_dir = Path(hydra.utils.to_absolute_path(cfg.data.dir))
    prepare = prepare_command(cfg.data, overrides)
    train_tokens = load_split(data_dir, "train", prepare)
    val_tokens = load_split(data_dir, "val", prepare)
    corpus_vocab = json.loads((data_dir / "meta.json").read_text()).get("vocab_size", 0)
    if corpus_vocab > cfg.model.vocab_size:
        raise RunError(
            f"the corpus uses {corpus_vocab} token ids but model.vocab_size={cfg.model.vocab_size}:"
            f" set model.vocab_size >= {corpus_vocab} or point data.dir at the corpus of this model"
        )
    check_batch_fits_corpus(cfg, train_tokens)
    return Streams(
        train=TokenWindows(train_tokens, cfg.block_size, cfg.seed, "train"),
        hessian=TokenWindows(train_tokens, cfg.block_size, cfg.seed, "hessian"),
        evaluation=evaluation_windows(train_tokens, val_tokens, cfg.block_size),
    )


def check_batch_fits_corpus(cfg: TrainConfig, train_tokens: np.ndarray) -> None:
    """A global batch larger than the whole train split is a typo (batch_size=10000000), not a
    plan: refuse it before allocating it, which would hang the first step for minutes."""
    if cfg.batch_size * cfg.block_size > len(train_tokens):
        raise RunError(
            f"batch_size={cfg.batch_size} x block_size={cfg.block_size} = "
            f"{cfg.batch_size * cfg.block_size:,} tokens per step exceeds the whole train split "
            f"({len(train_tokens):,} tokens): lower batch_size"
        )


def build_run(
    cfg: TrainConfig, world: Distributed, run_dir: Path, overrides: Sequence[str] = ()
) -> Run:
    """The run `cfg` describes on `world`, ready to resume or start; `overrides` are the
    command line's (they go into the prepare command an error names)."""
    device = world.device
    batch = BatchShape.split(
        cfg.batch_size, cfg.micro_batch_size or cfg.batch_size // world.world_size, world,
        "batch_size",
    )  # fmt: skip
    hess_sequences = getattr(cfg.optim, "hess_batch_size", None) or cfg.batch_size
    hess_batch = BatchShape.split(hess_sequences, batch.micro, world, "optim.hess_batch_size")
    if getattr(cfg.optim, "hess_source", None) == "train" and hess_sequences > cfg.batch_size:
        raise RunError(
            f"optim.hess_batch_size={hess_sequences} exceeds batch_size={cfg.batch_size}: with "
            "optim.hess_source=train the estimate uses the training step's own micro-batches; "
            "lower it or set optim.hess_source=fresh"
        )
    streams = build_streams(cfg, overrides)

    # The seed is the same on every rank: DDP starts from identical weights.
    torch.manual_seed(cfg.seed)
    raw_model = GPT(cfg.model).to(device)
    optimizer = cfg.optim.build(
        raw_model, device=device, estimation_tokens=hess_batch.sequences * cfg.block_size
    )
    model = torch.compile(raw_model) if cfg.compile else raw_model
    if world.enabled:
        model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    dtype = resolve_dtype(cfg.dtype.value, device)
    return Run(
        cfg=cfg,
        world=world,
        run_dir=run_dir,
        batch=batch,
        hess_batch=hess_batch,
        streams=streams,
        raw_model=raw_model,
        model=model,
        optimizer=optimizer,
        dtype=dtype,
        autocast=autocast_context(device, dtype),
        scaler=torch.amp.GradScaler(device.type, enabled=dtype == torch.float16),
        checkpointer=Checkpointer(run_dir, cfg.ckpt_keep, world),
        peak_flops=peak_flops(device, dtype),
    )
