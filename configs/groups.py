"""The config groups a user selects on train.py's command line, for `python train.py --help`.

Hydra's own help lists every group it can find, including the schema groups of the ConfigStore
(`schema/*`) and `configs/study/` (run_study.py's, not train.py's): neither can be picked with
`group=option`. The help template in configs/train.yaml lists these instead, through the
`selectable_groups` resolver registered here.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

CONFIG_DIR = Path(__file__).resolve().parent
# Groups of train.py's command line, in the order a user composes a run.
SELECTABLE_GROUPS = ("model", "data", "optim", "experiment", "hydra/launcher")


def group_options(group: str, config_dir: Path = CONFIG_DIR) -> list[str]:
    """The options of a group: the yaml files of configs/<group>/, sorted."""
    return sorted(path.stem for path in (config_dir / group).glob("*.yaml"))


def selectable_groups(config_dir: Path = CONFIG_DIR) -> str:
    """One 'group: option, option' line per selectable group (Hydra's help format)."""
    return "\n".join(
        f"{group}: {', '.join(group_options(group, config_dir))}" for group in SELECTABLE_GROUPS
    )


def register_help_resolver() -> None:
    """Make `${selectable_groups:}` available to the help template (idempotent)."""
    if not OmegaConf.has_resolver("selectable_groups"):
        OmegaConf.register_new_resolver("selectable_groups", selectable_groups)
