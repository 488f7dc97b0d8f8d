"""Every float key of every config schema refuses NaN and infinity at start, naming the key;
the seed is refused outside numpy's and torch's seeding range. Direct construction: no train.py."""

from __future__ import annotations

import dataclasses
import math
import re

import pytest

from configs.schema import TrainConfig, WandbConfig
from data.config import DataConfig
from model.gpt import GPTConfig
from optim.registry import OPTIMIZERS


def train_config(**changes) -> TrainConfig:
    model = GPTConfig(block_size=256)
    return TrainConfig(
        model=model, data=DataConfig(name="shakespeare"), optim=OPTIMIZERS["adamw"](), **changes
    )


def defaults() -> list[tuple[str, object]]:
    """(key prefix, a valid default instance) of every schema."""
    return [
        ("", train_config()),
        ("wandb.", WandbConfig()),
        ("model.", GPTConfig()),
        ("data.", DataConfig(name="shakespeare")),
        *[("optim.", schema()) for schema in OPTIMIZERS.values()],
    ]


def float_keys() -> list[tuple[str, object, str]]:
    cases = []
    for prefix, config in defaults():
        for field in dataclasses.fields(config):
            value = getattr(config, field.name)
            is_floats = isinstance(value, list) and value and isinstance(value[0], float)
            if isinstance(value, float) or is_floats:
                cases.append((prefix, config, field.name))
    return cases


CASES = float_keys()


def test_the_table_covers_the_keys_the_issue_names():
    keys = {f"{prefix}{name}" for prefix, _, name in CASES}
    expected = {"optim.lr", "optim.weight_decay", "optim.rho", "grad_clip", "optim.eps"}
    assert expected | {"optim.betas", "model.dropout", "data.val_fraction"} <= keys


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize(
    ("prefix", "config", "name"),
    CASES,
    ids=[f"{type(config).__name__}.{name}" for _, config, name in CASES],
)
def test_non_finite_float_key_is_refused_by_name(prefix, config, name, bad):
    value = getattr(config, name)
    replacement = [value[0], bad] if isinstance(value, list) else bad
    expected = rf"^{re.escape(prefix + name)} must be (a )?finite"
    with pytest.raises(ValueError, match=expected) as raised:
        dataclasses.replace(config, **{name: replacement})
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("seed", [-1, 2**32, 2**64])
def test_seed_outside_the_seeding_range_is_refused(seed):
    with pytest.raises(ValueError, match=rf"^seed must be in \[0, 2\*\*32 - 1.*got {seed}$"):
        train_config(seed=seed)


@pytest.mark.parametrize("seed", [0, 2**32 - 1])
def test_seed_at_the_ends_of_the_range_is_accepted(seed):
    assert train_config(seed=seed).seed == seed
