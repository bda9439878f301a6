"""Running one training job as several processes under torchrun (DistributedDataParallel).

`torchrun --nproc_per_node=N train.py ...` starts N copies of train.py with RANK, WORLD_SIZE and
LOCAL_RANK set; `init_from_env` joins them into one process group (NCCL on CUDA, gloo on the
CPU). Plain `python train.py` sets none of these and runs as a group of one: every helper here
is then a no-op, so the training code has a single path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes checkpoints, plots, progress and W&B."""
        return self.rank == 0


def init_from_env(device: torch.device) -> tuple[World, torch.device]:
    """Join the process group torchrun describes (if any); return it and this rank's device."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World(), device
    world = World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "mps":
        raise ValueError("torchrun with --device mps is not supported (gloo cannot reduce MPS tensors)")
    if device.type == "cuda" and world.local_rank >= torch.cuda.device_count():
        raise ValueError(
            f"local rank {world.local_rank} has no GPU: this machine has {torch.cuda.device_count()}"
        )
    if device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return world, device


def current() -> World:
    if not dist.is_initialized():
        return World()
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over all ranks, in place (unchanged in a group of one)."""
    if dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank if it is true on one (e.g. Ctrl-C reached only some ranks)."""
    if not dist.is_initialized():
        return flag
    tensor = torch.tensor([float(flag)], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


def from_main(value):
    """Rank 0's `value` on every rank (a picklable object), so all ranks decide alike."""
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
