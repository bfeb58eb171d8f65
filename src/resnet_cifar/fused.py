"""Fused training: runs of one architecture trained together as one model, in one process
(`run --fuse 16`, `train_group(configs)`). Each run keeps its own model, optimizer, batches and
folder, built as when it trains alone, and steps in `train.fit` with `train.train_step`. Only the
forward pass is shared: `FusedModel` calls the architecture once under `torch.func.vmap` on the
runs' stacked weights, so each convolution and BatchNorm is one over N x C channels (a few large
kernels instead of N small ones), and each run's gradient lands on its own weights.
"""
from __future__ import annotations

import copy
import math
import os

import torch
from torch import nn
from torch.func import functional_call, vmap

from . import train
from .config import TrainConfig
from .data import CIFAR10
from .devices import pick_device
from .runs import RunError, RunResult

# What the runs of one fused model share: the network and BN eps (one network under vmap), the batch
# size (one stacked batch), the iterations, the numerics, the optimizer kind, the device.
GROUP_KEY = ("arch", "depth", "shortcut", "final_relu", "bn_eps", "batch_size", "iterations",
             "dtype", "optimizer", "device")
# Runs per group by default. On a CPU fusing does not pay: `bench --fused 1 2` (ResNet-32, batch
# 128, 2 threads; book/records/bench-cpu.json) measured two fused at 0.88x one alone. On CUDA
# fused groups fill the GPU with larger kernels: 16 is a guess, not yet measured.
DEFAULT_FUSE = {"cpu": 1, "cuda": 16}


def default_fuse(device: str = "auto") -> int:
    return DEFAULT_FUSE.get(pick_device(device).type, 1)


def check_fuse(fuse) -> int:
    if isinstance(fuse, bool) or not isinstance(fuse, int) or fuse < 1:
        raise ValueError(f"fuse must be a whole number of runs per group, at least 1 (1: each run "
                         f"alone), got {fuse!r}")
    return fuse


def groups(configs: list[TrainConfig], max_size: int) -> list[list[TrainConfig]]:
    """The configs in groups that can train fused: runs of one GROUP_KEY, in their order, split into
    the fewest groups of at most `max_size` (of sizes that differ by at most one)."""
    check_fuse(max_size)
    by_key: dict[tuple, list[TrainConfig]] = {}
    for c in configs:
        by_key.setdefault(tuple(getattr(c, k) for k in GROUP_KEY), []).append(c)
    out = []
    for members in by_key.values():
        n, k = len(members), math.ceil(len(members) / max_size)
        out += [members[i * n // k:(i + 1) * n // k] for i in range(k)]
    return out


class FusedModel:
    """Models of one architecture called as one: `fused(models, xs)`, xs (runs, batch, 3, 32, 32) ->
    logits (runs, batch, classes). BatchNorm: the shared copy runs at momentum 1, so its buffers
    receive the batch statistics, and each run blends them into its own at its own bn_momentum
    (bn_eps is one per call)."""

    def __init__(self, model: nn.Module):
        self.shared = copy.deepcopy(model)
        for m in self.shared.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = 1.0
        self.call = vmap(lambda p, b, x: functional_call(self.shared, (p, b), (x,)))

    def __call__(self, models: list[nn.Module], xs: torch.Tensor) -> torch.Tensor:
        params = [dict(m.named_parameters()) for m in models]
        buffers = [dict(m.named_buffers()) for m in models]
        stats = {n: torch.stack([b[n] for b in buffers]) for n in buffers[0]}
        logits = self.call({n: torch.stack([p[n] for p in params]) for n in params[0]}, stats, xs)
        with torch.no_grad():
            for i, (model, own) in enumerate(zip(models, buffers)):
                modules = dict(model.named_modules())
                for name, buffer in own.items():
                    module, _, kind = name.rpartition(".")
                    if kind in ("running_mean", "running_var"):
                        buffer.lerp_(stats[name][i].to(buffer.dtype), modules[module].momentum)
                    else:
                        buffer.copy_(stats[name][i])
        return logits


def train_group(configs: list[TrainConfig], dataset: CIFAR10 | None = None) -> list[RunResult]:
    """Train (or reuse, or resume) the runs `configs` describe as one fused model; their records, in
    order. Each run is decided, locked, resumed and recorded as `train.train` does it alone."""
    configs = [c.validate() for c in configs]  # (the errors below name valid runs)
    if not configs:
        return []
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise RunError("fused training runs in one process; under torchrun train each run with "
                       "train()")
    if any(c.stop_at for c in configs):
        raise ValueError("stop_at stops a single run: train it alone with train(), not in a fused "
                         "group")
    for c in configs[1:]:
        if diff := [k for k in GROUP_KEY if getattr(c, k) != getattr(configs[0], k)]:
            raise ValueError(f"runs {configs[0].run_name()} and {c.run_name()} differ in "
                             f"{', '.join(diff)}: they cannot train as one fused model; group them "
                             f"with fused.groups()")
    names = [c.run_name() for c in configs]
    if len(set(names)) < len(names):
        raise ValueError(f"a group names one run twice: {', '.join(names)}")
    return train.train_runs(configs, dataset, fused_model=FusedModel)
