"""Process-group setup from torchrun's environment, in one place.

Every other module receives a `Distributed` value and never reads RANK/WORLD_SIZE itself.
"""

from __future__ import annotations

import gc
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from training.errors import RunError


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """In-place mean over ranks (a no-op on one process)."""
        if self.enabled:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
            tensor /= self.world_size
        return tensor

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def share_outcome(self, check: Callable[[], object] | None) -> None:
        """Run `check` (given on rank 0 only) and raise its RunError on every rank, so a
        refusal that rank 0 alone can see (the run dir's lock) stops all ranks in one line."""
        message = None
        if check is not None:
            try:
                check()
            except RunError as err:
                message = str(err)
        message = self.broadcast_object(message)
        if message is not None:
            raise RunError(message)

    def broadcast_object(self, value: Any) -> Any:
        """Rank 0's `value` (a picklable object) on every rank."""
        if not self.enabled:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def pick_device(requested: str, local_rank: int) -> torch.device:
    """`auto` is the local GPU when there is one, else the CPU."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda":
        if not torch.cuda.is_available():
            raise RunError("device=cuda but no CUDA device is visible: use device=cpu or auto")
        return torch.device("cuda", local_rank)
    if requested == "cpu":
        return torch.device("cpu")
    raise RunError(f"device must be auto, cpu or cuda, got {requested!r}")


def adopt_slurm_task_env() -> None:
    """Map Slurm's one-process-per-task variables to torchrun's (srun or submitit, no torchrun).

    Only when torchrun has not set RANK and Slurm runs several tasks; the rendezvous is the first
    host of the allocation on a port derived from the job id, so concurrent jobs do not collide.
    """
    if "RANK" in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) <= 1:
        return
    os.environ["RANK"] = os.environ["SLURM_PROCID"]
    os.environ["LOCAL_RANK"] = os.environ.get("SLURM_LOCALID", "0")
    os.environ["WORLD_SIZE"] = os.environ["SLURM_NTASKS"]
    if "MASTER_ADDR" not in os.environ:
        hosts = subprocess.run(
            ["scontrol", "show", "hostnames", os.environ["SLURM_JOB_NODELIST"]],
            capture_output=True, text=True, check=True,
        ).stdout.split()  # fmt: skip
        os.environ["MASTER_ADDR"] = hosts[0]
    os.environ.setdefault("MASTER_PORT", str(29500 + int(os.environ["SLURM_JOB_ID"]) % 1000))


def setup(requested_device: str) -> Distributed:
    """Join torchrun's process group (nccl on CUDA, gloo on CPU), or run as a single process."""
    adopt_slurm_task_env()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(requested_device, local_rank)
    if world_size > 1:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Distributed(rank=rank, local_rank=local_rank, world_size=world_size, device=device)


def teardown(world: Distributed) -> None:
    if world.enabled and dist.is_initialized():
        # DDP wrappers sit in reference cycles and keep the process group's gloo threads alive;
        # left to interpreter shutdown they can abort the process ("terminate called without an
        # active exception"). Free them while Python is whole, then destroy the group.
        gc.collect()
        dist.destroy_process_group()
