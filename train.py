"""Pretrain GPT-2 with AdamW, Lion, Sophia-G, Sophia-H or AdaHessian: the story of one run.

    python train.py                                   # tiny model, Shakespeare, AdamW, CPU
    python train.py optim=sophia max_steps=400        # Sophia-G
    torchrun --standalone --nproc_per_node=8 train.py experiment=gpt2-small-sophia  # 125M recipe

Config: configs/train.yaml and its groups (model/, data/, optim/, experiment/); schemas in
configs/schema.py. The run directory (Hydra's output dir) holds the resolved config,
metrics.jsonl, run.json and checkpoints/; `resume=auto` continues a run found there.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import sys
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from torch.nn.parallel import DistributedDataParallel as DDP

from configs.schema import TrainConfig, describe_config_error, register_configs
from data.batches import CorpusError, TokenWindows, load_split
from data.config import prepare_command
from model.gpt import GPT
from model.hf import import_hf_weights
from model.mfu import mfu, peak_flops
from optim.builder import EstimationBatch, build_optimizer
from optim.schedule import warmup_cosine_lr
from training import console, distributed
from training.checkpoint import (
    Checkpointer,
    CheckpointError,
    find_checkpoint,
    load_into,
    restore_rng,
)
from training.distributed import Distributed
from training.evaluate import evaluate, evaluation_windows
from training.metrics import MetricsLogger
from training.timing import StepClock

register_configs()
log = logging.getLogger("train")  # console and the run dir's train.log (training/console.py)

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


class RunError(ValueError):
    """A run cannot start or go on; the message says what to do."""


class StopRequest:
    """Turns SIGTERM/SIGUSR1 (Slurm preemption, time limit) into a flag checked between steps."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, _frame) -> None:
        self.signal_name = signal.Signals(signum).name

    def agreed(self, world: Distributed) -> bool:
        """True on every rank when any rank was signalled, so all stop at the same step."""
        flag = torch.tensor([1.0 if self.signal_name else 0.0], device=world.device)
        if world.enabled:
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())


def accumulation_steps(cfg: TrainConfig, world: Distributed) -> tuple[int, int]:
    """(micro_batch_size, gradient-accumulation steps) for this world size."""
    micro = cfg.micro_batch_size or cfg.batch_size // world.world_size
    per_step = micro * world.world_size
    if micro == 0 or cfg.batch_size % per_step:
        raise RunError(
            f"batch_size={cfg.batch_size} is not a multiple of micro_batch_size={micro} x "
            f"world_size={world.world_size}: change batch_size or micro_batch_size"
        )
    return micro, cfg.batch_size // per_step


def autocast_context(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def check_fresh_run_dir(run_dir: Path) -> None:
    """resume=never must not clobber a run that is already there."""
    if (run_dir / "metrics.jsonl").exists() or (run_dir / "checkpoints").exists():
        raise RunError(
            f"{run_dir} already holds a run and resume=never would overwrite it: "
            f"use resume=auto to continue it or choose another hydra.run.dir"
        )


def check_compatible(meta: dict, cfg: TrainConfig, path: Path) -> None:
    """A checkpoint must come from the same model shape and update rule as this run."""
    theirs, ours = meta.get("model_config", {}), asdict(cfg.model)
    shape_keys = ("n_layer", "n_head", "n_embd", "vocab_size", "block_size", "bias")
    diff = [k for k in shape_keys if theirs.get(k) != ours[k]]
    if diff:
        raise RunError(
            f"checkpoint {path} has a different model shape "
            f"({', '.join(f'{k}={theirs.get(k)}' for k in diff)}) than this run: "
            f"pick the matching model= or resume=never in a new run dir"
        )
    if meta.get("optimizer") != cfg.optim.name:
        raise RunError(
            f"checkpoint {path} was trained with optim={meta.get('optimizer')}, this run uses "
            f"optim={cfg.optim.name}: resume with the same optimizer or start a new run"
        )


def train(cfg: TrainConfig, run_dir: Path) -> None:
    world = distributed.setup(cfg.device)
    try:
        _train(cfg, run_dir, world)
        world.barrier()  # ranks leave together (gloo can abort a rank whose peer already exited)
    finally:
        distributed.teardown(world)


def _train(cfg: TrainConfig, run_dir: Path, world: Distributed) -> None:
    device = world.device
    dtype = DTYPES[cfg.dtype.value]
    autocast = autocast_context(device, dtype)
    micro, accum = accumulation_steps(cfg, world)
    tokens_per_step = cfg.batch_size * cfg.block_size

    # Data: three independent deterministic streams over the prepared corpus.
    data_dir = Path(hydra.utils.to_absolute_path(cfg.data.dir))
    prepare = prepare_command(cfg.data, HydraConfig.get().overrides.task)
    train_tokens = load_split(data_dir, "train", prepare)
    val_tokens = load_split(data_dir, "val", prepare)
    corpus_vocab = json.loads((data_dir / "meta.json").read_text()).get("vocab_size", 0)
    if corpus_vocab > cfg.model.vocab_size:
        raise RunError(
            f"the corpus uses {corpus_vocab} token ids but model.vocab_size={cfg.model.vocab_size}:"
            f" set model.vocab_size >= {corpus_vocab} or point data.dir at the corpus of this model"
        )
    train_windows = TokenWindows(train_tokens, cfg.block_size, cfg.seed, "train")
    hessian_windows = TokenWindows(train_tokens, cfg.block_size, cfg.seed, "hessian")
    eval_windows = evaluation_windows(train_tokens, val_tokens, cfg.block_size)

    # Model and optimizer. The seed is the same on every rank: DDP starts from identical weights.
    torch.manual_seed(cfg.seed)
    raw_model = GPT(cfg.model).to(device)
    hess_batch = getattr(cfg.optim, "hess_batch_size", None) or cfg.batch_size
    opt = build_optimizer(
        cfg.optim,
        raw_model,
        tokens_per_step=tokens_per_step,
        device=device,
        estimation_tokens=hess_batch * cfg.block_size,
    )
    flops_per_token = raw_model.flops_per_token(cfg.block_size)
    decay_steps = cfg.optim.decay_steps or cfg.max_steps

    # Resume: everything a step depends on is (weights, optimizer state, step, RNG).
    checkpointer = Checkpointer(run_dir, cfg.ckpt_keep, world)
    checkpoint = None
    if cfg.resume == "auto":
        checkpoint = checkpointer.latest()
    elif cfg.resume != "never":
        checkpoint = find_checkpoint(hydra.utils.to_absolute_path(cfg.resume))
    elif world.is_main:
        check_fresh_run_dir(run_dir)
    counters = {
        "step": 0,
        "tokens": 0,
        "time_s": 0.0,
        "flops": 0.0,
        "hess/time_s": 0.0,
        "hess/flops": 0.0,
        "compile_s": 0.0,
        "skipped_steps": 0,
        "clipped_steps": 0,
    }
    wandb_run_id = None
    if checkpoint is not None:
        check_compatible(checkpoint.meta, cfg, checkpoint.path)
        optimizer_state, rng = load_into(checkpoint, raw_model, world)
        opt.load_state_dict(optimizer_state)
        restore_rng(rng, world)
        counters.update(checkpoint.meta["counters"])
        wandb_run_id = checkpoint.meta.get("wandb_run_id")
    if checkpoint is None:
        if cfg.init_from:  # a fresh run only: a resumed one continues from its own checkpoint
            import_hf_weights(raw_model, hydra.utils.to_absolute_path(cfg.init_from))
        torch.manual_seed(cfg.seed + world.rank)  # dropout masks differ per rank
    start_step = counters["step"]

    model = torch.compile(raw_model) if cfg.compile else raw_model
    if world.enabled:
        model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    run_facts = {
        "params": raw_model.num_params(),
        "flops_per_token": flops_per_token,
        "tokens_per_step": tokens_per_step,
        "world_size": world.world_size,
        "micro_batch_size": micro,
        "accumulation_steps": accum,
        "optimizer": cfg.optim.name,
        "seed": cfg.seed,
        "device": str(device),
        "dtype": cfg.dtype.value,
    }
    logger = MetricsLogger(
        run_dir,
        enabled=world.is_main,
        wandb_settings={
            **OmegaConf.to_container(OmegaConf.structured(cfg.wandb)),
            "mode": cfg.wandb.mode.value,
        },
        # The run's static facts ride along under `run`, where study/runs.py reads them from W&B.
        run_config={
            **OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True, enum_to_str=True),
            "run": run_facts,
        },
        resume_step=start_step if checkpoint is not None else None,
        wandb_run_id=wandb_run_id,
    )
    if world.is_main:
        (run_dir / "run.json").write_text(json.dumps(run_facts, indent=2))
        where = (
            f"resumed from {checkpoint.path} at step {start_step}" if checkpoint else "fresh start"
        )
        log.info(
            f"{cfg.model.name}: {raw_model.num_params() / 1e6:.2f}M params, "
            f"optim={cfg.optim.name}, "
            f"{world.world_size} x {device.type}, accumulation {accum}, {where}; run dir {run_dir}"
        )
        if warning := console.warmup_warning(cfg.optim.warmup_steps, cfg.max_steps, cfg.optim.lr):
            log.warning(warning)

    def save_checkpoint(step: int) -> None:
        meta = {
            "counters": counters,
            "model_config": asdict(cfg.model),
            "optimizer": cfg.optim.name,
            "config": OmegaConf.to_container(
                OmegaConf.structured(cfg), resolve=True, enum_to_str=True
            ),
            "wandb_run_id": logger.wandb_run_id or wandb_run_id,
        }
        try:
            checkpointer.save(step, raw_model, opt.state_dict(), meta)
        except OSError as err:
            raise RunError(
                f"could not write a checkpoint in {checkpointer.root} ({err.strerror or err}); the "
                f"previous checkpoint is intact: free disk space or fix permissions, then resume"
            ) from None

    def estimation_batch(step: int) -> EstimationBatch:
        hess_micro, hess_accum = micro, hess_batch // (micro * world.world_size)
        if hess_accum == 0 or hess_batch % (micro * world.world_size):
            raise RunError(
                f"optim.hess_batch_size={hess_batch} is not a multiple of micro_batch_size={micro}"
                f" x world_size={world.world_size}"
            )

        def micro_batches():
            for micro_step in range(hess_accum):
                x, y = hessian_windows.micro_batch(
                    step, hess_batch, hess_micro, micro_step, world.rank, world.world_size
                )
                yield x.to(device), y.to(device)

        return EstimationBatch(
            model=model,
            raw_model=raw_model,
            micro_batches=micro_batches,
            num_micro_batches=hess_accum,
            autocast=autocast,
            world=world,
            seed=cfg.seed,
            step=step,
            tokens=hess_batch * cfg.block_size,
        )

    # Seconds without torch.compile's one-time compilation (training/timing.py): the Hessian
    # refresh has its own clock, paused out of the step's, so each is charged a steady time.
    step_clock, hess_clock = StepClock(), StepClock()

    def refresh_hessian(step: int) -> dict:
        step_clock.pause()
        hess_clock.start()
        stats = opt.refresh_hessian(estimation_batch(step))
        hess_s, compile_s = hess_clock.stop()
        step_clock.resume()
        counters["hess/time_s"] += hess_s
        counters["time_s"] += hess_s
        counters["compile_s"] += compile_s
        counters["hess/flops"] += stats.get("flops", 0.0)
        counters["flops"] += stats.get("flops", 0.0)
        return stats

    stop = StopRequest()
    peak = peak_flops(device)
    params = [p for p in raw_model.parameters()]
    bad_steps_in_a_row = 0
    step = start_step

    def evaluate_and_log(step: int) -> None:
        losses = evaluate(
            model, eval_windows, cfg.batch_size, cfg.eval_iters, micro, accum, world, autocast
        )
        logger.log("eval", step, {**counters_view(counters), **losses})
        if world.is_main:
            log.info(console.eval_line(step, cfg.max_steps, losses))

    if step == 0:
        evaluate_and_log(0)

    while step < cfg.max_steps:
        step_clock.start()
        lr = warmup_cosine_lr(
            step,
            lr=cfg.optim.lr,
            min_lr=cfg.optim.min_lr,
            warmup_steps=cfg.optim.warmup_steps,
            decay_steps=decay_steps,
            from_zero=cfg.optim.warmup_from_zero,
        )
        opt.set_lr(lr)
        hess_stats = {}
        if opt.refreshes_hessian_before(step):  # AdaHessian: from its first step on
            hess_stats = refresh_hessian(step)

        # Forward/backward over the micro-batches; DDP syncs gradients on the last one only.
        loss_sum = torch.zeros(1, device=device)
        for micro_step in range(accum):
            x, y = train_windows.micro_batch(
                step, cfg.batch_size, micro, micro_step, world.rank, world.world_size
            )
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            sync = micro_step == accum - 1 or not world.enabled
            with nullcontext() if sync else model.no_sync(), autocast():
                _, loss = model(x, y)
            scaler.scale(loss / accum).backward()
            loss_sum += loss.detach()

        # Clip, then step unless the loss or gradient is not finite (skip: nothing is touched).
        scaler.unscale_(opt.optimizer)
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm).item()
        finite = math.isfinite(grad_norm) and math.isfinite(loss_sum.item())
        if finite:
            scaler.step(opt.optimizer, **opt.step_kwargs) if scaler.is_enabled() else opt.step()
            bad_steps_in_a_row = 0
        else:
            counters["skipped_steps"] += 1
            bad_steps_in_a_row += 1
            if world.is_main:
                log.warning(
                    f"step {step + 1}: non-finite loss or gradient, update skipped "
                    f"({bad_steps_in_a_row} in a row, {counters['skipped_steps']} in all)"
                )
        scaler.update()
        opt.zero_grad()
        counters["clipped_steps"] += int(cfg.grad_clip > 0 and grad_norm > cfg.grad_clip)

        if finite and opt.refreshes_hessian(step):
            hess_stats = refresh_hessian(step)

        step += 1
        step_time, compile_s = step_clock.stop()
        counters.update(
            step=step,
            tokens=counters["tokens"] + tokens_per_step,
            time_s=counters["time_s"] + step_time,
            compile_s=counters["compile_s"] + compile_s,
            flops=counters["flops"] + flops_per_token * tokens_per_step + opt.step_flops * finite,
        )

        if step % cfg.log_interval == 0 or step == cfg.max_steps:
            train_loss = world.all_reduce_mean(loss_sum / accum).item()
            tokens_per_s = tokens_per_step / (step_time or step_clock.last_seconds)
            utilisation = mfu(flops_per_token, tokens_per_s, world.world_size, peak)
            record = {
                **counters_view(counters),
                "skipped_steps": counters["skipped_steps"],
                "train/loss": train_loss,
                "lr": lr,
                "grad_norm": grad_norm,
                "grad_clipped": int(cfg.grad_clip > 0 and grad_norm > cfg.grad_clip),
                "tokens_per_s": tokens_per_s,
                "mfu": utilisation,
                **{f"optim/{k}": v for k, v in opt.diagnostics().items()},
                **{f"hess/refresh_{k}": v for k, v in hess_stats.items()},
            }
            logger.log("train", step, record)
            if world.is_main:
                eta = (
                    (cfg.max_steps - step) * counters["time_s"] / max(1, step - start_step)
                    if step > start_step
                    else 0
                )
                log.info(console.train_line(step, cfg.max_steps, record, eta))
        if not finite and bad_steps_in_a_row >= cfg.max_bad_steps:
            raise RunError(
                f"{bad_steps_in_a_row} steps in a row had a non-finite loss or gradient (last at "
                f"step {step}); the last good checkpoint is in {checkpointer.root}: lower optim.lr"
                f" or raise warmup, then resume"
            )
        if step % cfg.eval_interval == 0 or step == cfg.max_steps:
            evaluate_and_log(step)
        stopping = stop.agreed(world)
        if step % cfg.ckpt_interval == 0 or step == cfg.max_steps or stopping:
            save_checkpoint(step)
        if stopping:
            if world.is_main:
                log.info(
                    f"{stop.signal_name or 'signal'} received: checkpoint at step {step} written,"
                    f" exiting; resume=auto continues"
                )
            logger.close()
            raise SystemExit(0)
    logger.close()


def counters_view(counters: dict) -> dict:
    """The contract fields every metrics line carries (docs/CONTRACTS.md)."""
    keys = ("tokens", "time_s", "flops", "hess/time_s", "hess/flops", "compile_s")
    return {k: counters.get(k, 0.0) for k in keys}


@hydra.main(config_path="configs", config_name="train", version_base="1.3")
def main(dict_cfg: DictConfig) -> None:
    try:
        cfg: TrainConfig = OmegaConf.to_object(dict_cfg)
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        train(cfg, run_dir)
    except (RunError, CorpusError, CheckpointError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        console.write_to_log_files(f"error: {err}")
        sys.exit(2)


def refuse_clobbering_before_hydra(args: list[str]) -> None:
    """resume=never into an existing run: refuse before Hydra rewrites the run's .hydra/ files."""
    if "resume=never" not in args:
        return
    for arg in args:
        if arg.startswith("hydra.run.dir="):
            check_fresh_run_dir(Path(arg.partition("=")[2]))


def cli() -> None:
    """`python train.py ...`: Hydra's main, its config errors (unknown key or option) on one line.

    Hydra prints its own errors over several lines unless HYDRA_FULL_ERROR=1, which makes it
    raise them instead: set it here and condense them, unless the user asked for the full trace.
    """
    full_trace = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        refuse_clobbering_before_hydra(sys.argv[1:])
        main()
    except RunError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except HydraException as err:
        if full_trace:
            raise
        print(f"error: {describe_config_error(err)}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path.home() / ".cache" / "torchinductor"))
    cli()
