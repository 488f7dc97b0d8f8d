"""Fault injection for tests/reliability: Python imports this at start-up when the test puts this
folder on PYTHONPATH. Production code knows nothing of it.

Inert unless RELIABILITY_FAULTS holds a JSON object; its keys (all optional):
    poison           "nan" or "inf": what the poisoned forwards multiply their output by
    loss_steps       [i, ...]: training forwards of loop step i (0-based) return a poisoned loss
    hessian_steps    [i, ...]: forwards of the Hessian estimate after step i are poisoned
    signals          {"i": "SIGTERM", ...}: this process sends itself the signal as the training
                     batch of loop step i is read (SIGKILL there is a kill -9 mid-step)
    kill_in_save     {"step": s, "at": where}: SIGKILL this process while checkpoint step_s is
                     written; where = "model" | "optimizer" (half the file written, then kill),
                     "rename" (every file written, before the rename), "prune" (after the rename,
                     while an old checkpoint is being removed)
    enospc_at_step   s: writing optimizer.pt of checkpoint step_s fails with ENOSPC
"""

from __future__ import annotations

import errno
import io
import json
import os
import signal
from pathlib import Path

FAULTS = json.loads(os.environ.get("RELIABILITY_FAULTS") or "{}")


def _step_of(path) -> int | None:
    """The step of a checkpoint file being written, from its `.tmp_step_XXXXXXXX` directory."""
    parent = Path(path).parent.name
    return int(parent[len(".tmp_step_") :]) if parent.startswith(".tmp_step_") else None


def _kill_now() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _write_half_and_kill(data: bytes, path) -> None:
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
        f.flush()
        os.fsync(f.fileno())
    _kill_now()


def _install() -> None:
    import torch

    from data import batches
    from model import gpt
    from training import checkpoint

    poison = float(FAULTS.get("poison", "nan"))
    poisoned = {
        batches.STREAMS["train"]: set(FAULTS.get("loss_steps", [])),
        batches.STREAMS["hessian"]: set(FAULTS.get("hessian_steps", [])),
    }
    last_batch = {"stream": None, "step": None}  # the batch the next forward will see

    original_micro_batch = batches.TokenWindows.micro_batch

    signals = {int(step): signal.Signals[name] for step, name in FAULTS.get("signals", {}).items()}

    def micro_batch(self, step, *args, **kwargs):
        last_batch.update(stream=self.stream, step=step)
        if self.stream == batches.STREAMS["train"] and step in signals:
            os.kill(os.getpid(), signals.pop(step))
        return original_micro_batch(self, step, *args, **kwargs)

    original_forward = gpt.GPT.forward

    def forward(self, idx, targets=None):
        logits, loss = original_forward(self, idx, targets)
        if last_batch["step"] in poisoned.get(last_batch["stream"], ()):
            logits = logits * poison  # GNB backpropagates through sampled-label logits
            loss = loss * poison if loss is not None else None
        return logits, loss

    batches.TokenWindows.micro_batch = micro_batch
    gpt.GPT.forward = forward

    kill = FAULTS.get("kill_in_save")
    enospc_step = FAULTS.get("enospc_at_step")
    original_torch_save = torch.save
    original_save_model = checkpoint.save_model
    original_replace = os.replace

    def torch_save(obj, f, *args, **kwargs):
        target = f if isinstance(f, (str, os.PathLike)) else getattr(f, "name", "")
        step, name = _step_of(target), Path(target).name
        if name == "optimizer.pt" and step is not None and step == enospc_step:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))
        if kill and name == "optimizer.pt" and step == kill["step"] and kill["at"] == "optimizer":
            buffer = io.BytesIO()
            original_torch_save(obj, buffer, *args, **kwargs)
            _write_half_and_kill(buffer.getvalue(), target)
        return original_torch_save(obj, f, *args, **kwargs)

    def save_model(model, filename, *args, **kwargs):
        if kill and _step_of(filename) == kill["step"] and kill["at"] == "model":
            from safetensors.torch import save

            state = {k: v.contiguous() for k, v in model.state_dict().items()}
            state.pop("lm_head.weight", None)  # tied to the embedding
            _write_half_and_kill(save(state), filename)
        return original_save_model(model, filename, *args, **kwargs)

    saving = {"step": None}

    def replace(src, dst, *args, **kwargs):
        src_name, dst_name = Path(src).name, Path(dst).name
        if src_name.startswith(".tmp_step_"):
            saving["step"] = int(src_name[len(".tmp_step_") :])
            if kill and saving["step"] == kill["step"] and kill["at"] == "rename":
                _kill_now()
        elif dst_name.startswith(".trash_") and kill == {"step": saving["step"], "at": "prune"}:
            original_replace(src, dst, *args, **kwargs)
            _kill_now()
        return original_replace(src, dst, *args, **kwargs)

    torch.save = torch_save
    checkpoint.save_model = save_model
    os.replace = replace


if FAULTS:
    _install()
