"""Pretrain GPT-2 with AdamW, Lion, Sophia-G, Sophia-H, AdaHessian or Muon: the story of one run.

    python train.py                                   # tiny model, Shakespeare, AdamW, CPU
    python train.py optim=sophia max_steps=400        # Sophia-G
    torchrun --standalone --nproc_per_node=8 train.py experiment=gpt2-small-sophia  # 125M recipe

Config: configs/train.yaml and its groups (model/, data/, optim/, experiment/); schemas in
configs/schema.py and optim/registry.py. The run directory (by default named by the run's
identity, training/run_dir.py) holds the resolved config, metrics.jsonl, run.json, train.log
and checkpoints/; running the same command again continues the run found there.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

from configs.schema import TrainConfig, describe_config_error, register_configs
from data.batches import CorpusError
from training import console, distributed
from training.build import build_run
from training.checkpoint import CheckpointError, NonFiniteCheckpointError
from training.errors import RunError
from training.loop import train_loop
from training.metrics import MetricsWriteError
from training.resume import resume
from training.run_dir import RunDirLock, agree_on_run_dir, check_run_dir_argument, write_record
from training.start import open_metrics, start_message

register_configs()
USER_ERRORS = (RunError, CorpusError, CheckpointError, NonFiniteCheckpointError, MetricsWriteError)


def train(cfg: TrainConfig, run_dir: Path, overrides: list[str]) -> None:
    """Build the run, take the run dir, resume or start, and train to cfg.max_steps."""
    world = distributed.setup(cfg.device)
    lock = RunDirLock(run_dir)
    try:
        run_dir = agree_on_run_dir(run_dir, world)
        run = build_run(cfg, world, run_dir, overrides)  # validates everything; writes nothing
        world.share_outcome(lock.acquire if world.is_main else None)  # one writer per run dir
        config = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True, enum_to_str=True)
        state, checkpoint = resume(run, config)
        world.barrier()  # every rank has checked the dir before rank 0 writes into it
        if world.is_main:
            write_record(run_dir, config, overrides, checkpoint and checkpoint.step)
        try:
            logger = open_metrics(run, state, checkpoint, config)
            start_message(run, state, checkpoint)
            train_loop(run, state, logger)
        except USER_ERRORS as err:  # the run was accepted: its log says why it stopped
            console.write_to_log_files(f"error: {err}")
            raise
        world.barrier()  # ranks leave together (gloo can abort a rank whose peer already exited)
    finally:
        lock.release()
        distributed.teardown(world)


@hydra.main(config_path="configs", config_name="train", version_base="1.3")
def main(dict_cfg: DictConfig) -> None:
    """User errors end in one line (exit 2); anything else is a bug and keeps its traceback."""
    try:
        cfg: TrainConfig = OmegaConf.to_object(dict_cfg)  # the schemas' __post_init__ checks
    except ValueError as err:
        fail(err)
    hydra_cfg = HydraConfig.get()
    try:
        train(cfg, Path(hydra_cfg.runtime.output_dir), list(hydra_cfg.overrides.task))
    except USER_ERRORS as err:
        fail(err)


def fail(err: Exception) -> None:
    """One line on stderr; a refused command leaves the run dir as it found it."""
    print(f"error: {err}", file=sys.stderr)
    sys.exit(2)


def cli() -> None:
    """`python train.py ...`: Hydra's main, its config errors (unknown key or option) on one line.

    Hydra prints its own errors over several lines unless HYDRA_FULL_ERROR=1, which makes it
    raise them instead: set it here and condense them, unless the user asked for the full trace.
    """
    full_trace = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        check_run_dir_argument(sys.argv[1:])
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
