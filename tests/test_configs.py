"""The config groups: one yaml per registered optimizer, each default written once (in its
schema), and every option composes into its validated dataclass."""

from __future__ import annotations

import dataclasses
import enum
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from configs.schema import DataConfig, GPTConfig, TrainConfig, register_configs
from optim.registry import OPTIMIZERS
from tests.conftest import REPO

CONFIGS = REPO / "configs"
GROUP_SCHEMAS = {
    "model": lambda _: GPTConfig,
    "data": lambda _: DataConfig,
    "optim": lambda name: OPTIMIZERS[name],
}


def schema_defaults(schema) -> dict:
    values = {}
    for f in dataclasses.fields(schema):
        if f.default is not dataclasses.MISSING:
            values[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            values[f.name] = f.default_factory()
    return {k: v.value if isinstance(v, enum.Enum) else v for k, v in values.items()}


def group_files() -> list[tuple[str, Path]]:
    return [
        (group, path)
        for group in GROUP_SCHEMAS
        for path in sorted((CONFIGS / group).glob("*.yaml"))
    ]


def test_every_registered_optimizer_has_a_yaml_and_every_yaml_a_schema():
    assert {p.stem for p in (CONFIGS / "optim").glob("*.yaml")} == set(OPTIMIZERS)


@pytest.mark.parametrize(("group", "path"), group_files(), ids=lambda x: getattr(x, "stem", x))
def test_a_group_yaml_never_restates_its_schemas_default(group, path):
    defaults = schema_defaults(GROUP_SCHEMAS[group](path.stem))
    written = OmegaConf.to_container(OmegaConf.load(path))
    restated = [k for k, v in written.items() if k in defaults and defaults[k] == v]
    assert not restated, f"{path.name} restates {restated}: the default lives in the schema"


def test_train_yaml_leaves_the_top_level_defaults_to_the_schema():
    written = OmegaConf.to_container(OmegaConf.load(CONFIGS / "train.yaml"))
    assert set(written) <= {"defaults", "hydra"}, set(written) & set(schema_defaults(TrainConfig))


@pytest.mark.parametrize("optim", sorted(OPTIMIZERS))
def test_each_optim_option_composes_to_its_dataclass_defaults(optim):
    register_configs()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"optim={optim}"])
    built = OmegaConf.to_object(cfg)
    assert isinstance(built.optim, OPTIMIZERS[optim])
    assert dataclasses.asdict(built.optim) == dataclasses.asdict(OPTIMIZERS[optim]())
    assert built.eval_interval == schema_defaults(TrainConfig)["eval_interval"]
