"""Fused training: several runs of one architecture trained together as one model, in one process.

    python -m resnet_cifar run --fuse 16      # the plan, up to 16 runs per group
    fused.train_group([config_seed0, config_seed1, ...])

Mechanism: `torch.func.vmap` over `torch.func.functional_call` of the architecture. Every run keeps
its own ordinary model and optimizer (built by `train.build_training`, so its initial weights are
bit for bit those of the run alone, and its checkpoint and model.pt are a solo run's); each step
stacks the runs' weights and calls the architecture once under vmap, which turns every convolution
into one grouped convolution over N x C channels and every BatchNorm into one over N x C channels:
a few large kernels instead of N small ones. The stack is differentiable, so the backward pass
leaves each run's gradient on its own weights and each run's optimizer steps them with its own lr,
momentum and weight decay. Stacking (rather than `stack_module_state` once) is what keeps the
runs' weights the leaves of their own optimizers; it copies the weights once per step, small next
to the activations.

BatchNorm: the shared module runs with momentum 1, so its running buffers receive the batch
statistics, and each run blends them into its own buffers with its own bn_momentum. bn_eps is one
number per BatchNorm call, so it is part of the group key. Each run draws its batches from its own
`data.TrainBatches` (bit for bit the batches it draws alone), is evaluated alone with
`train.evaluation`, and writes its own run folder through `runs.Record`; a run's wall time is its
share of the group's (the group's time / the runs stepping). compile and channels_last (execution
settings) are not applied to the fused step.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from . import runs
from . import train as T
from .config import TrainConfig
from .data import CIFAR10, TrainBatches, load_cifar10, prepare_data
from .devices import pick_device, set_numerics
from .progress import Progress
from .runs import RunError, RunResult, load_run

# What one fused model needs its runs to share: one architecture and BatchNorm eps (one network
# under vmap), one batch size (one stacked batch), the iterations, the numerics, the optimizer kind.
GROUP_KEY = ("arch", "depth", "shortcut", "final_relu", "bn_eps", "batch_size", "iterations", "dtype", "optimizer",
             "device")
# Runs per group by default. On a CPU fusing does not pay: `bench --fused 1 2` (ResNet-32, batch 128,
# 2 threads; book/records/bench-cpu.json) measured two runs fused at 0.88x one alone, the rounds' ranges
# apart. So each run trains alone. On CUDA fused groups fill the GPU with larger kernels: 16 is a
# guess, not yet measured on a GPU.
DEFAULT_FUSE = {"cpu": 1, "cuda": 16}


def default_fuse(device: str = "auto") -> int:
    return DEFAULT_FUSE.get(pick_device(device).type, 1)


def check_fuse(fuse) -> int:
    if isinstance(fuse, bool) or not isinstance(fuse, int) or fuse < 1:
        raise ValueError(f"fuse must be a whole number of runs per group, at least 1 (1: each run alone), got {fuse!r}")
    return fuse


def group_key(config: TrainConfig) -> tuple:
    return tuple(getattr(config, k) for k in GROUP_KEY)


def groups(configs: list[TrainConfig], max_size: int) -> list[list[TrainConfig]]:
    """The configs in groups that can train fused: runs of one GROUP_KEY, in their order, split
    into the fewest groups of at most `max_size` (of sizes that differ by at most one)."""
    check_fuse(max_size)
    by_key: dict[tuple, list[TrainConfig]] = {}
    for c in configs:
        by_key.setdefault(group_key(c), []).append(c)
    out = []
    for members in by_key.values():
        n, k = len(members), math.ceil(len(members) / max_size)
        out += [members[i * n // k:(i + 1) * n // k] for i in range(k)]
    return out


# ---------------------------------------------------------------- the fused step

class FusedStep:
    """One SGD step of several runs of one architecture (see the module docstring).
    `step(models, optimizers, xs, ys, lrs)`: xs (N, batch, 3, 32, 32), ys (N, batch); returns an
    (N, 3) float64 tensor of [loss x batch, wrong predictions, batch] per run, as `train_step`."""

    def __init__(self, model: nn.Module, autocast_dtype: torch.dtype | None = None):
        self.shared = copy.deepcopy(model)
        self.momenta = {}  # running-statistic buffer -> the BatchNorm it belongs to (for its momentum)
        for prefix, m in model.named_modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                self.momenta.update({f"{prefix}.running_mean": prefix, f"{prefix}.running_var": prefix})
        for m in self.shared.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = 1.0  # its running buffers receive the batch statistics
        self.param_names = [n for n, _ in model.named_parameters()]
        self.buffer_names = [n for n, _ in model.named_buffers()]
        self.autocast_dtype = autocast_dtype
        self.call = vmap(lambda p, b, x: functional_call(self.shared, (p, b), (x,)))

    def __call__(self, models, optimizers, xs, ys, lrs) -> torch.Tensor:
        params = [dict(m.named_parameters()) for m in models]
        buffers = [dict(m.named_buffers()) for m in models]
        stacked = {n: torch.stack([p[n] for p in params]) for n in self.param_names}
        stats = {n: torch.stack([b[n] for b in buffers]) for n in self.buffer_names}
        if xs.is_cuda:
            torch.compiler.cudagraph_mark_step_begin()
        with torch.autocast(xs.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            logits = self.call(stacked, stats, xs)
        logits = logits.float() if self.autocast_dtype else logits
        n, batch = ys.shape
        losses = F.cross_entropy(logits.flatten(0, 1), ys.flatten(), reduction="none").view(n, batch).mean(1)
        for opt, lr in zip(optimizers, lrs):
            opt.zero_grad(set_to_none=True)
            for group in opt.param_groups:
                group["lr"] = lr
        losses.sum().backward()  # each run's loss reaches only its own weights
        for opt in optimizers:
            opt.step()
        with torch.no_grad():
            modules = [dict(m.named_modules()) for m in models]
            for name in self.buffer_names:
                for i, b in enumerate(buffers):
                    if name in self.momenta:
                        b[name].lerp_(stats[name][i].to(b[name].dtype), modules[i][self.momenta[name]].momentum)
                    else:
                        b[name].copy_(stats[name][i])
        wrong = (logits.argmax(-1) != ys).sum(1)
        return torch.stack([losses.detach().double() * batch, wrong.double(),
                            torch.full((n,), batch, dtype=torch.float64, device=ys.device)], 1)


# ---------------------------------------------------------------- a run of the group

@dataclasses.dataclass
class Member(T.RunLoop):
    """One run of a group: its side of the loop (train.RunLoop, as when it trains alone), its
    folder, lock and batches."""
    run_dir: Path | None = None
    lock: runs.RunLock | None = None
    batches: TrainBatches | None = None

    @property
    def it(self) -> int:
        return self.state.iteration

    def finish(self) -> None:
        self.record.finish(self.state, self.status, self.model, self.optimizer, self.plateau)
        if self.status != "complete":
            self.progress.message(f"[{self.run_dir.name}] {self.status}")
        self.progress.close()


def build_member(config, run_dir, lock, resume, dataset, device, numerics, prepared: dict, names) -> Member:
    dtype, _ = T.step_dtypes(config)
    key = (config.val_size, config.split_seed, config.subset, config.normalization, config.normalize_eval)
    if key not in prepared:  # runs that normalize alike share one copy of the data on the device
        prepared[key] = prepare_data(config, device, dataset)
    data = prepared[key]
    batches = TrainBatches(data, config, 0, 1, dtype)
    model, _, optimizer, plateau = T.build_training(dataclasses.replace(config, compile=False,
                                                                        channels_last=False), device, 1, dtype)
    state, record = T.open_record(config, run_dir, resume, data, device, numerics, model, optimizer, plateau,
                                  batches.per_epoch, fused_group=list(names))
    return Member(config, model, optimizer, plateau, data, record, Progress(config, run_dir.name, state.iteration, 0),
                  state, batches.per_epoch, run_dir=run_dir, lock=lock, batches=batches)


# ---------------------------------------------------------------- training a group

def train_group(configs: list[TrainConfig], dataset: CIFAR10 | None = None) -> list[RunResult]:
    """Train (or reuse, or resume) the runs `configs` describe as one fused model and return
    their records, in order. Each run is decided, locked, resumed and recorded as `train.train`
    does it alone; one that diverges is recorded as diverged and leaves the group."""
    configs = [c.validate() for c in configs]
    if not configs:
        return []
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise RunError("fused training runs in one process; under torchrun train each run with train()")
    if any(c.stop_at for c in configs):
        raise ValueError("stop_at stops a single run: train it alone with train(), not in a fused group")
    for c in configs[1:]:
        diff = [k for k in GROUP_KEY if getattr(c, k) != getattr(configs[0], k)]
        if diff:
            raise ValueError(f"runs {configs[0].run_name()} and {c.run_name()} differ in {', '.join(diff)}: "
                             f"they cannot train as one fused model; group them with fused.groups()")
    names = [c.run_name() for c in configs]
    if len(set(names)) < len(names):
        raise ValueError(f"a group names one run twice: {', '.join(names)}")
    run_dirs = [Path(c.runs_dir) / n for c, n in zip(configs, names)]
    actions = [runs.decide(c, d) for c, d in zip(configs, run_dirs)]
    claimed: list[tuple[int, runs.RunLock, str]] = []
    members: list[Member] = []
    try:
        if any(a != "reuse" for a in actions):
            dataset = dataset or load_cifar10(configs[0].data_dir)
        for i, (c, d) in enumerate(zip(configs, run_dirs)):
            if actions[i] != "reuse":
                lock = runs.RunLock(d, c.wait)
                actions[i] = T._claim(c, d, lock)
                if actions[i] != "reuse":
                    claimed.append((i, lock, actions[i]))
        if claimed:
            device = pick_device(configs[0].device)
            numerics = set_numerics(configs[0].dtype, device)
            prepared: dict = {}
            for i, lock, action in claimed:
                members.append(build_member(configs[i], run_dirs[i], lock, action == "resume", dataset, device,
                                            numerics, prepared, names))
            fit_group(members, device)
    finally:
        for i, lock, _ in claimed:  # those a finished run has not released (another process may hold it now)
            if runs.lock_owner(run_dirs[i]) == os.getpid():
                lock.release()
    return [load_run(d) for d in run_dirs]


def fit_group(members: list[Member], device: torch.device) -> None:
    """The training loop of a group: every run not finished steps once per fused step (each
    at its own iteration), is read, evaluated and checkpointed when it is due, and leaves the
    group when it ends or diverges."""
    step = FusedStep(members[0].model, T.step_dtypes(members[0].config)[1])
    read_every = T.loss_read_interval(device)
    active = [m for m in members if m.it < m.config.iterations]
    for m in members:
        if m not in active:
            m.status = "complete"
            m.finish()
    its = {id(m): m.it for m in active}
    pending: list[torch.Tensor] = []
    try:
        started = time.perf_counter()
        while active:
            lrs = [m.lr(its[id(m)]) for m in active]
            drawn = [m.batches(its[id(m)]) for m in active]
            pending.append(step([m.model for m in active], [m.optimizer for m in active],
                                torch.stack([x for x, _ in drawn]), torch.stack([y for _, y in drawn]), lrs))
            for m in active:
                its[id(m)] += 1
            due = [m.due(its[id(m)], read_every) for m in active]
            if not any(any(d.values()) for d in due):
                continue
            stats = torch.stack(pending).cpu()  # (steps, runs, 3): one host sync for the group
            pending.clear()
            seconds = (time.perf_counter() - started) / len(active)
            for i, (m, d) in enumerate(zip(active, due)):
                m.absorb(stats[:, i], seconds, its[id(m)], d)
            for m in [m for m in active if m.status != "running"]:
                active.remove(m)
                m.finish()
                m.lock.release()
            started = time.perf_counter()
    except BaseException as e:
        detail = "interrupted" if isinstance(e, KeyboardInterrupt) else f"failed: {type(e).__name__}: {e}"
        for m in active:
            m.record.failed(m.state, f"{detail} at iteration {m.it}")
            m.progress.close()
        raise
