"""torchrun: each process takes its device before any collective, and rank 0's decisions (reuse,
resume, the lock) reach every rank."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

from .config import TrainConfig
from .devices import pick_device
from .runs import RunError


def start_processes(config: TrainConfig) -> tuple[int, int, torch.device, bool]:
    """(rank, world size, device, whether this call made the process group). Every refusal comes
    before the group exists, on every rank alike; then each rank takes the GPU of its LOCAL_RANK."""
    world, device = int(os.environ.get("WORLD_SIZE", "1")), pick_device(config.device)
    if world == 1:
        return 0, 1, device, False
    if config.batch_size % world:
        raise ValueError(f"batch_size {config.batch_size} must be divisible by the {world} processes")
    if config.wait:
        raise RunError("wait=True is for single-process runs; a torchrun job cannot wait on another process's run")
    if config.sync_bn and device.type != "cuda":
        raise RunError("sync_bn needs CUDA devices (SyncBatchNorm only runs on GPUs); set sync_bn=False for a CPU run.")
    if config.compile and config.compile_mode in ("reduce-overhead", "max-autotune"):
        # BatchNorm's running statistics are inputs the step mutates: under DDP, CUDA graphs are then
        # skipped and the step runs >10x slower (a known PyTorch limitation)
        raise ValueError(f"compile_mode={config.compile_mode!r} (CUDA graphs) does not work with torchrun's "
                         f"DistributedDataParallel and BatchNorm; use compile_mode='default'")
    if device.type == "cuda":  # NCCL needs one GPU per process
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    made = not dist.is_initialized()
    if made:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                device_id=device if device.type == "cuda" else None)
    return dist.get_rank(), world, device, made


def on_rank0(world: int, rank: int, fn):
    """fn() on rank 0, its result (or its exception) handed to every rank: a lock rank 0 cannot
    take stops every process at once instead of leaving the others waiting."""
    if world == 1:
        return fn()
    box = [None]
    if rank == 0:
        try:
            box[0] = fn()
        except Exception as e:
            box[0] = e
    dist.broadcast_object_list(box, src=0)
    if isinstance(box[0], Exception):
        raise box[0]
    return box[0]
