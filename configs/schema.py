"""Structured-config schemas of train.py, registered in Hydra's ConfigStore.

Each config group has a dataclass schema: the model group uses `GPTConfig`, data `DataConfig`,
optim one dataclass per update rule (optim/config.py). A yaml in a group pulls its schema in
through its defaults list (`- /schema/optim/sophia@_here_`), so an unknown key or a wrong type in
a yaml or on the command line fails at start-up, and `__post_init__` checks ranges when train.py
converts the composed config to these objects.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.errors import MissingConfigException, OverrideParseException
from omegaconf import MISSING
from omegaconf.errors import ConfigAttributeError, ConfigKeyError

from configs.groups import register_help_resolver
from configs.messages import first_line
from configs.run_name import register_run_name_resolver
from configs.validation import check_seed, reject_non_finite
from data.config import DataConfig
from model.gpt import GPTConfig
from optim.registry import OPTIMIZERS


class Dtype(Enum):
    auto = "auto"  # bfloat16 where the device computes it natively, else float16 / float32
    bfloat16 = "bfloat16"
    float16 = "float16"
    float32 = "float32"


class WandbMode(Enum):
    online = "online"
    offline = "offline"
    disabled = "disabled"


@dataclass
class WandbConfig:
    mode: WandbMode = WandbMode.disabled
    project: str = "sophia-repro"
    entity: str | None = None
    group: str | None = None  # e.g. the study name, so W&B overlays a study in one click
    name: str | None = None
    tags: list[str] = field(default_factory=list)
    init_timeout: float = 60.0

    def __post_init__(self) -> None:
        reject_non_finite(self, "wandb.")
        if not self.init_timeout > 0:
            raise ValueError(f"wandb.init_timeout must be > 0 seconds, got {self.init_timeout}")


@dataclass
class TrainConfig:
    model: GPTConfig = MISSING
    data: DataConfig = MISSING
    optim: Any = MISSING  # one of optim.registry.OPTIMIZERS, chosen by the `optim` group
    wandb: WandbConfig = field(default_factory=WandbConfig)

    seed: int = 0
    max_steps: int = 200
    batch_size: int = 16  # global sequences per optimizer step
    micro_batch_size: int | None = None  # sequences per rank per forward; None: no accumulation
    block_size: int = 128  # training context length (<= model.block_size)
    dtype: Dtype = Dtype.auto  # training/build.py resolve_dtype
    compile: bool = False
    device: str = "auto"  # auto | cpu | cuda
    grad_clip: float = 1.0  # 0 disables clipping
    log_interval: int = 10
    eval_interval: int = 50
    eval_iters: int = 4  # fixed validation batches of batch_size sequences
    ckpt_interval: int = 1000
    ckpt_keep: int = 2
    resume: str = "auto"  # auto | never | a checkpoint or run directory
    init_from: str | None = None  # a local Hugging Face GPT-2 folder: a fresh run starts from it
    max_bad_steps: int = 10  # consecutive non-finite steps before the run stops

    def __post_init__(self) -> None:
        reject_non_finite(self)
        check_seed(self.seed)
        positive = (
            "max_steps",
            "batch_size",
            "block_size",
            "log_interval",
            "eval_interval",
            "eval_iters",
            "ckpt_interval",
            "ckpt_keep",
            "max_bad_steps",
        )
        for key in positive:
            if getattr(self, key) <= 0:
                raise ValueError(f"{key} must be > 0, got {getattr(self, key)}")
        if self.micro_batch_size is not None and self.micro_batch_size <= 0:
            raise ValueError(f"micro_batch_size must be > 0 or null, got {self.micro_batch_size}")
        if self.block_size > self.model.block_size:
            raise ValueError(
                f"block_size={self.block_size} exceeds the model's context "
                f"model.block_size={self.model.block_size}: lower block_size"
            )
        if self.grad_clip < 0:
            raise ValueError(f"grad_clip must be >= 0 (0 disables it), got {self.grad_clip}")
        if self.init_from is not None and not (Path(self.init_from) / "config.json").is_file():
            raise ValueError(
                f"init_from={self.init_from} is not a Hugging Face GPT-2 folder (no config.json):"
                f" give a folder save_pretrained wrote (a downloaded GPT-2, scripts/export_hf.py)"
            )


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(group="schema/model", name="base", node=GPTConfig)
    cs.store(group="schema/data", name="base", node=DataConfig)
    for name, schema in OPTIMIZERS.items():
        cs.store(group="schema/optim", name=name, node=schema)
    register_help_resolver()
    register_run_name_resolver()


def describe_config_error(err: Exception) -> str:
    """One line for a Hydra composition error (Hydra's own text spans many): the bad choice or
    key and the valid ones, so the fix is in the message."""
    if isinstance(err, MissingConfigException) and err.options and err.missing_cfg_file:
        group, _, choice = err.missing_cfg_file.rpartition("/")
        return (
            f"{group}={choice} does not exist: choose one of {', '.join(err.options)} "
            f"(files of configs/{group}/)"
        )
    if isinstance(err, OverrideParseException):
        override = first_line(err).rpartition(": ")[2]
        key, _, value = override.partition("=")
        hint = ""
        if value and not value.isascii():
            # Hydra's unquoted values are ASCII; a quoted one takes any character.
            hint = f": quote the value, e.g. \"{key}='{value}'\" in the shell"
        return f"cannot parse the override: {first_line(err)} (Hydra override grammar){hint}"
    cause = err.__cause__
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and cause.full_key:
        where = cause.full_key.rpartition(".")[0]
        schema = cause.object_type
        if dataclasses.is_dataclass(schema):
            valid = ", ".join(f.name for f in dataclasses.fields(schema))
            message = f"unknown key {cause.full_key}: {where or 'the top level'} has {valid}"
            return message + _other_optimizers_hint(cause.full_key, schema)
    if cause is not None:
        return f"{first_line(err)}: {first_line(cause)}"
    return first_line(err)


def _other_optimizers_hint(full_key: str, schema: type) -> str:
    """'; rho belongs to optim=sophia, sophiah: add optim=sophia' when an optimizer key was set
    on an optimizer that lacks it (e.g. optim.rho with the default AdamW); else ''."""
    group, _, key = full_key.partition(".")
    if group != "optim" or "." in key or schema not in OPTIMIZERS.values():
        return ""
    owners = [
        name
        for name, other in OPTIMIZERS.items()
        if any(f.name == key for f in dataclasses.fields(other))
    ]
    if not owners:
        return ""
    return f"; {key} belongs to optim={', '.join(owners)}: add optim={owners[0]}"
