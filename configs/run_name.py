"""The default run dir's name: a function of what the run trains (training/run_dir.py has the
rest of the run dir's rules). A Hydra resolver, so configs/train.yaml can name the dir with it."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence

from omegaconf import OmegaConf

# Keys that leave what is trained unchanged: out of the default dir's name.
IDENTITY_EXEMPT = (
    "hydra.",
    "resume",
    "wandb.",
    "device",
    "compile",
    "micro_batch_size",
    "log_interval",
    "eval_interval",
    "ckpt_interval",
    "ckpt_keep",
    "max_bad_steps",
    "optim.compiled",
    "data.dir",
    "data.num_workers",
    "data.batch_docs",
    "data.download_dir",
    "data.hf_cache_dir",
    "init_from",  # read by a fresh start only
)
GROUP_KEYS = ("optim", "model", "data")  # already in the name's prefix
MAX_NAME_OVERRIDES = 80  # characters of overrides in a dir name; longer ones become a hash


def matches(key: str, patterns: Iterable[str]) -> bool:
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in patterns)


def run_name(optim: str, model: str, data: str, overrides: Sequence[str]) -> str:
    """`<optim>_<model>_<data>` plus the run-defining overrides (sorted, filesystem-safe)."""
    defining = sorted(
        o.lstrip("+~")
        for o in overrides
        if not matches(o.lstrip("+~").partition("=")[0], (*IDENTITY_EXEMPT, *GROUP_KEYS))
    )
    name = f"{optim}_{model}_{data}"
    if not defining:
        return name
    text = ",".join(defining)
    safe = re.sub(r"[^A-Za-z0-9._=,+-]", "_", text)
    if len(safe) > MAX_NAME_OVERRIDES or safe != text:
        # A readable prefix, and a hash so that distinct overrides never share a dir.
        digest = hashlib.sha1(text.encode()).hexdigest()[:8]
        safe = f"{safe[: MAX_NAME_OVERRIDES - 9]}~{digest}"
    return f"{name}_{safe}"


def register_run_name_resolver() -> None:
    """`${run_name:optim,model,data,overrides}` for configs/train.yaml's hydra.run.dir."""
    if not OmegaConf.has_resolver("run_name"):
        OmegaConf.register_new_resolver(
            "run_name", lambda optim, model, data, overrides: run_name(
                optim, model, data, list(overrides)
            )
        )  # fmt: skip
