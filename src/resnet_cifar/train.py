"""Training: `train(config)` trains (or reuses, or resumes) one run; `fit` is the loop and
`train_step` one SGD step, for one run or a fused group (fused.py). Under torchrun every process
calls them; rank 0 decides and writes. A run's files and its reuse / resume rules are in runs.py.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from . import runs
from .config import TrainConfig, lr_at
from .data import CIFAR10, PreparedData, TrainBatches, load_cifar10, prepare_data
from .devices import device_label, pick_device, set_numerics
from .models import architecture_flops, build_model, count_parameters
from .runs import RunError, RunResult, load_run

# after each (re)start, timed apart: torch.compile compiles, CUDA graphs record, cuDNN tunes
STARTUP_ITERATIONS = 10
# warmup_until_error: the training error of each 50 iterations decides (about 400 in the paper)
WARMUP_RULE_EVERY = 50


def train(config: TrainConfig | None = None, dataset: CIFAR10 | None = None,
          **overrides) -> RunResult:
    """Train (or reuse, or resume) the run `config` describes and return its record."""
    return train_runs([dataclasses.replace(config or TrainConfig(), **overrides)], dataset)[0]


def train_runs(configs: list[TrainConfig], dataset: CIFAR10 | None = None,
               fused_model=None) -> list[RunResult]:
    """Train (or reuse, or resume) runs, alone or as one `fused_model`; their records."""
    configs = [c.validate() for c in configs]
    rank, world, device, made_group = start_processes(configs[0])
    run_dirs = [Path(c.runs_dir) / c.run_name() for c in configs]
    claimed = []  # (config, run folder, lock, "fresh" or "resume")
    try:
        actions = on_rank0(world, rank, lambda: list(map(runs.decide, configs, run_dirs)))
        if any(a != "reuse" for a in actions):  # bad data fails before a run folder is touched
            dataset = dataset or load_cifar10(configs[0].data_dir)
        for c, d, action in zip(configs, run_dirs, actions):
            if action != "reuse":
                lock = runs.RunLock(d, c.wait)
                action = on_rank0(world, rank, lambda: claim(c, d, lock))
                if action != "reuse":  # (reuse: its last holder finished it while we waited)
                    claimed.append((c, d, lock, action))
        if claimed:
            numerics, prepared, group = set_numerics(configs[0].dtype, device), {}, []
            names = [d.name for d in run_dirs] if fused_model else None
            for c, d, lock, action in claimed:
                key = (c.val_size, c.split_seed, c.subset, c.normalization, c.normalize_eval)
                if key not in prepared:  # runs that normalize alike share one copy on the device
                    prepared[key] = prepare_data(c, device, dataset)
                group.append(Run(c, d, action == "resume", prepared[key], device, numerics, rank,
                                 world, names, lock if rank == 0 else None))
            fit(group, fused_model(group[0].model) if fused_model else group[0].step_model, device,
                fused_model is not None)
    finally:
        for _, d, lock, _ in claimed:  # those a finished run has not released (another may hold it)
            if runs.lock_owner(d) == os.getpid():
                lock.release()
        if made_group:
            dist.destroy_process_group()
    return [load_run(d) for d in run_dirs]


def claim(config: TrainConfig, run_dir: Path, lock: runs.RunLock) -> str:
    """Take the run's lock and decide again under it; clear the old record for a fresh start."""
    runs.check_writable(run_dir.parent)
    lock.acquire()
    try:
        action = runs.decide(config, run_dir)
    except BaseException:
        lock.release()
        raise
    if action == "reuse":
        lock.release()
    if action == "fresh":
        runs.clear(run_dir)
    return action


def start_processes(config: TrainConfig) -> tuple[int, int, torch.device, bool]:
    """(rank, world size, device, whether this call made the process group). Every torchrun
    refusal comes before the group exists, on every rank alike; then each rank takes its GPU."""
    world, device = int(os.environ.get("WORLD_SIZE", "1")), pick_device(config.device)
    if world == 1:
        return 0, 1, device, False
    if config.batch_size % world:
        raise ValueError(f"batch_size {config.batch_size} must be divisible by the {world} "
                         f"processes")
    if config.wait:
        raise RunError("wait=True is for single-process runs; a torchrun job cannot wait on "
                       "another process's run")
    if config.sync_bn and device.type != "cuda":
        raise RunError("sync_bn needs CUDA devices (SyncBatchNorm only runs on GPUs); set "
                       "sync_bn=False for a CPU run.")
    if config.compile and config.compile_mode in ("reduce-overhead", "max-autotune"):
        # BatchNorm's running statistics are inputs the step mutates: under DDP, CUDA graphs are
        # then skipped and the step runs >10x slower (a known PyTorch limitation)
        raise ValueError(f"compile_mode={config.compile_mode!r} (CUDA graphs) does not work with "
                         f"torchrun's DistributedDataParallel and BatchNorm; use "
                         f"compile_mode='default'")
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


# ---------------------------------------------------------------- model, optimizer, the step

def build_training(config: TrainConfig, device: torch.device, world: int = 1,
                   dtype: torch.dtype = torch.float32):
    """(model, step_model, optimizer, plateau or None); the step calls step_model (DDP, compile)."""
    torch.manual_seed(config.seed)
    model = build_model(config.arch, config.depth, config.shortcut, final_relu=config.final_relu,
                        bn_eps=config.bn_eps, bn_momentum=config.bn_momentum)
    model = model.to(device=device, dtype=dtype)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    step_model = model
    if world > 1:
        if config.sync_bn:
            model = step_model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        ids = [device] if device.type == "cuda" else None
        step_model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if config.compile:
        step_model = torch.compile(step_model, mode=config.compile_mode)
    optimizer = make_optimizer(config, model.parameters())
    plateau = None
    if config.schedule == "plateau":
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, factor=config.gamma, patience=config.plateau_patience,
            threshold=config.plateau_threshold)
    return model, step_model, optimizer, plateau


def make_optimizer(config: TrainConfig, params) -> torch.optim.Optimizer:
    """SGD with momentum and weight decay (the paper), or an Adam variant."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                               nesterov=config.nesterov, weight_decay=config.weight_decay)
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "nadam": torch.optim.NAdam}
    return cls[config.optimizer](params, lr=config.lr, weight_decay=config.weight_decay)


def step_dtypes(config: TrainConfig) -> tuple[torch.dtype, torch.dtype | None]:
    """(weights' and inputs' dtype, autocast dtype or None); tf32 is a backend setting."""
    return (torch.float64 if config.dtype == "float64" else torch.float32,
            torch.bfloat16 if config.dtype == "bfloat16" else None)


def train_step(model, optimizers, x: torch.Tensor, y: torch.Tensor, lrs,
               autocast_dtype=None) -> torch.Tensor:
    """One SGD step: an optimizer and its lr, or a fused group's lists of them (x, y then (runs,
    batch, ...)). Returns [loss x batch, wrong predictions, batch] (per run) as float64 on the
    device, left to the caller to read, so that a GPU step does not wait for the host."""
    if isinstance(optimizers, torch.optim.Optimizer):
        optimizers, lrs = [optimizers], [lrs]
    for optimizer, lr in zip(optimizers, lrs):
        optimizer.zero_grad(set_to_none=True)
        for group in optimizer.param_groups:
            group["lr"] = lr
    if x.is_cuda:
        torch.compiler.cudagraph_mark_step_begin()  # CUDA graphs replay into fixed buffers
    with torch.autocast(x.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        logits = model(x)
    logits = logits.float() if autocast_dtype else logits  # float64 stays float64
    # fused: each run's mean loss; the gradient of their sum reaches each run's weights alone
    loss = torch.vmap(F.cross_entropy)(logits, y) if y.dim() == 2 else F.cross_entropy(logits, y)
    loss.sum().backward()
    for optimizer in optimizers:
        optimizer.step()
    batch = y.shape[-1]
    wrong = (logits.argmax(-1) != y).sum(-1)
    return torch.stack([loss.detach().double() * batch, wrong.double(),
                        torch.full_like(wrong, batch, dtype=torch.float64)], -1)


def loss_read_interval(device: torch.device) -> int:
    """Steps between reads of the losses: every step on a CPU, every 50 on a GPU (one host sync)."""
    return 50 if device.type == "cuda" else 1


# ---------------------------------------------------------------- the loop

class Run:
    """One run in the loop: built or restored from its checkpoint, its record started; the lr of
    its next step, what is due after a step, what is done with the steps read."""

    def __init__(self, config: TrainConfig, run_dir: Path, resume: bool, data: PreparedData,
                 device: torch.device, numerics: dict, rank: int = 0, world: int = 1,
                 fused_group: list[str] | None = None, lock: runs.RunLock | None = None):
        self.config, self.run_dir, self.data, self.world = config, run_dir, data, world
        self.rank, self.lock = rank, lock  # rank 0's lock: released when the run ends
        dtype = step_dtypes(config)[0]
        self.batches = TrainBatches(data, config, rank, world, dtype)
        fused_off = dict(compile=False, channels_last=False) if fused_group else {}
        self.model, self.step_model, self.optimizer, self.plateau = build_training(
            dataclasses.replace(config, **fused_off), device, world, dtype)
        if resume:
            self.state = self.restore(run_dir / "checkpoint.pt", device)
        else:
            self.state = runs.LoopState(lr_warmup=config.warmup_until_error is not None)
        threads = torch.get_num_threads() if device.type == "cpu" else None
        self.state.begin_segment(device_label(device), threads, world,
                                 earlier=runs.read_json(run_dir / "summary.json"))
        flops = architecture_flops(config.arch, config.depth, config.shortcut)
        no_flops = None if flops is not None else "fvcore is not installed: FLOPs not counted"
        facts = dict(
            name=run_dir.name, iterations=config.iterations, params=count_parameters(self.model),
            flops=flops, flops_note=no_flops, device=str(device), device_name=device_label(device),
            world_size=world, numerics=numerics, torch_version=torch.__version__,
            dataset=data.dataset.identity, dataset_label=data.dataset.label,
            train_size=len(data.train_y), val_size=len(data.val_y), test_size=len(data.test_y),
            git_commit=runs.git_commit(), **({"fused_group": fused_group} if fused_group else {}))
        self.record = runs.Record(config, run_dir, self.batches.per_epoch, facts, enabled=rank == 0)
        self.record.start(self.state)
        self.progress = Progress(config, run_dir.name, self.state.iteration, rank)
        self.status = "running"  # or "diverged at iteration k", "stopped at ...", "complete"
        self.it = self.state.iteration  # steps taken; state.iteration counts the steps read
        self.end = min(config.stop_at or config.iterations, config.iterations)
        self.eval_every = config.eval_every or self.batches.per_epoch
        self.checkpoint_every = config.checkpoint_every or self.eval_every
        self.startup_until = self.it + min(STARTUP_ITERATIONS, (config.iterations - self.it) // 2)

    def restore(self, path: Path, device: torch.device) -> runs.LoopState:
        """Model, optimizer, scheduler and RNG from the checkpoint at `path`; the loop's state."""
        again = "pass force=True to start the run over"
        try:
            saved = torch.load(path, map_location=device, weights_only=True)
        except Exception as e:
            raise RunError(f"checkpoint {path} is corrupted or unreadable ({type(e).__name__}); "
                           f"{again}.") from e
        if saved.get("config") != self.config.identity():
            raise RunError(f"checkpoint {path} was written by a different config; {again}, or pick "
                           f"another run name.")
        try:
            self.model.load_state_dict(saved["model"])
            self.optimizer.load_state_dict(saved["optimizer"])
            if self.plateau:
                self.plateau.load_state_dict(saved["plateau"])
            state = runs.LoopState.from_saved(saved)
        except (RuntimeError, KeyError, ValueError) as e:
            raise RunError(f"checkpoint {path} does not match this model "
                           f"({str(e).splitlines()[0]}); {again}.") from e
        torch.set_rng_state(saved["rng_cpu"].cpu())
        return state

    def lr(self) -> float:
        """The learning rate of the next step, noted in the state where it changes."""
        c, s = self.config, self.state
        lr = (c.warmup_lr if s.lr_warmup else current_lr(self.optimizer) if self.plateau
              else lr_at(c, self.it, self.batches.per_epoch))
        if not s.lr_changes or s.lr_changes[-1][1] != lr:
            s.lr_changes.append((self.it, lr))
        return lr

    def due(self, read_every: int) -> dict:
        """What is due after the step just taken: evaluation, checkpoint, warm-up rule, a read."""
        c, it = self.config, self.it
        return dict(eval=it % self.eval_every == 0 or it == c.iterations,
                    checkpoint=it % self.checkpoint_every == 0 and it < c.iterations,
                    rule=self.state.lr_warmup and it % WARMUP_RULE_EVERY == 0,
                    read=it % read_every == 0 or it in (self.startup_until, self.end))

    def absorb(self, stats: torch.Tensor, seconds: float, due: dict) -> None:
        """The steps read (rows of [loss x batch, wrong, batch]) and their time; what is due."""
        state, it, finite = self.state, self.it, torch.isfinite(stats[:, 0])
        bad = None if finite.all() else int((~finite).nonzero()[0])
        if bad is not None:  # keep the steps up to the first non-finite loss, drop the later ones
            seconds *= (bad + 1) / len(stats)
            it, stats = it - len(stats) + bad + 1, stats[:bad + 1]
        state.wall_time += seconds
        if it <= self.startup_until:
            state.startup_time += seconds
            state.startup_iterations += len(stats)
        state.window += stats.sum(0)
        state.iteration = it
        # ResNet-110 (Sec. 4.2): "we use 0.01 to warm up the training until the training error is
        # below 80% (about 400 iterations), and then go back to 0.1": the error of each
        # WARMUP_RULE_EVERY iterations decides.
        if state.lr_warmup:
            state.lr_warmup_window += stats.sum(0)
            if due["rule"]:
                _, wrong, seen = state.lr_warmup_window.tolist()
                if wrong / seen < self.config.warmup_until_error:
                    state.lr_warmup, state.lr_warmup_ended = False, it
                state.lr_warmup_window.zero_()
        self.progress.update(it, (stats[-1, 0] / stats[-1, 2]).item())
        if bad is not None:
            self.status = f"diverged at iteration {it}"
            state.history.append(self.record.row(state, current_lr(self.optimizer)))
            return
        if due["eval"]:
            start = time.perf_counter()
            row = self.record.row(state, current_lr(self.optimizer), self.evaluation())
            state.eval_time += time.perf_counter() - start
            state.history.append(row)
            self.progress.log(row)
            if self.plateau:
                self.plateau.step(row["val_loss"] if len(self.data.val_y) else row["train_loss"])
        if due["checkpoint"]:
            self.record.checkpoint(state, self.model, self.optimizer, self.plateau)
        self.settle()

    def settle(self) -> None:
        """A run at its end is complete, or stopped (stop_at)."""
        if self.it == self.config.iterations:
            self.status = "complete"
        elif self.it >= self.end:
            self.status = f"stopped at iteration {self.it} (stop_at)"

    def evaluation(self) -> dict:
        """Validation and test loss and error. Under torchrun rank 0's BN statistics go to every
        process first, so all evaluate one model and take the same plateau decisions."""
        if self.world > 1:
            for buffer in self.model.buffers():
                dist.broadcast(buffer, 0)
        out, d = {}, self.data
        for split, x, y in (("val", d.val_x, d.val_y), ("test", d.test_x, d.test_y)):
            if len(y):
                result = evaluate(self.model, x, y, bf16=self.config.dtype == "bfloat16",
                                  rank=self.rank, world=self.world)
                out.update({f"{split}_loss": result["loss"], f"{split}_error": result["error"]})
        return out

    def finish(self) -> None:
        self.progress.close(self.status)
        self.record.finish(self.state, self.status, self.model, self.optimizer, self.plateau)
        if self.world > 1:
            dist.barrier()  # the other ranks read the record rank 0 has just written
        if self.lock:
            self.lock.release()


def fit(group: list[Run], step_model, device: torch.device, fused: bool = False) -> None:
    """The training loop of one run, or of a fused group (fused.py: `step_model` calls the active
    runs' models as one on their stacked batches): step; when due, read the losses, evaluate,
    checkpoint; a run that ends or diverges leaves."""
    autocast_dtype = step_dtypes(group[0].config)[1]
    read_every, world = loss_read_interval(device), group[0].world
    active = [run for run in group if run.it < run.end]
    for run in group:
        if run not in active:  # resumed where it stops
            run.settle()
            run.finish()
    pending = []
    try:
        started = time.perf_counter()
        while active:
            lrs = [run.lr() for run in active]
            batches = [run.batches(run.it) for run in active]
            if fused:
                model = functools.partial(step_model, [run.model for run in active])
                x, y = torch.stack([x for x, _ in batches]), torch.stack([y for _, y in batches])
            else:
                model, (x, y) = step_model, batches[0]
            optimizers = [run.optimizer for run in active]
            pending.append(train_step(model, optimizers, x, y, lrs, autocast_dtype))
            for run in active:
                run.it += 1
            due = [run.due(read_every) for run in active]
            if not any(any(d.values()) for d in due):
                continue
            stats = torch.stack(pending)  # one host sync (and all-reduce) for the steps read
            pending.clear()
            if world > 1:
                dist.all_reduce(stats)
            stats = stats.cpu().view(-1, len(active), 3)
            seconds = (time.perf_counter() - started) / len(active)  # each run's share of the time
            for i, (run, d) in enumerate(zip(active, due)):
                run.absorb(stats[:, i], seconds, d)
            for run in [run for run in active if run.status != "running"]:
                active.remove(run)
                run.finish()
            started = time.perf_counter()
    except BaseException as e:
        detail = ("interrupted" if isinstance(e, KeyboardInterrupt)
                  else f"failed: {type(e).__name__}: {e}")
        for run in active:
            run.record.failed(run.state, f"{detail} at iteration {run.state.iteration}")
            run.progress.close()
        raise


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    return optimizer.param_groups[0]["lr"]


class Progress:
    """A run's progress on the console: a tqdm bar on a terminal, one plain line per evaluation
    otherwise (papermill, CI, log files); nothing on the other ranks."""

    def __init__(self, config: TrainConfig, name: str, start: int, rank: int):
        auto = "bar" if sys.stderr.isatty() else "log"
        self.mode = "none" if rank else auto if config.progress == "auto" else config.progress
        self.name, self.total, self.bar = name, config.iterations, None
        if self.mode == "bar":
            from tqdm.auto import tqdm
            self.bar = tqdm(total=config.iterations, initial=start, desc=name, unit="it")

    def update(self, iteration: int, loss: float) -> None:
        if self.bar:
            self.bar.update(iteration - self.bar.n)
            self.bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

    def log(self, row: dict) -> None:
        if self.mode == "log":
            val = f"val {100 * row['val_error']:.1f}% " if not math.isnan(row["val_error"]) else ""
            print(f"[{self.name}] it {row['iteration']}/{self.total} lr {row['lr']:.4g} "
                  f"train {row['train_loss']:.3f}/{100 * row['train_error']:.1f}% {val}"
                  f"test {100 * row['test_error']:.1f}% ({row['wall_time']:.0f}s)", flush=True)

    def close(self, status: str = "complete") -> None:
        """Close the bar; say how a run ended that did not complete."""
        if self.bar:
            self.bar.close()
        if status != "complete" and self.mode != "none":
            print(f"[{self.name}] {status}", file=sys.stderr if self.bar else sys.stdout,
                  flush=True)


# ---------------------------------------------------------------- evaluation

@torch.inference_mode()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size=None,
             num_classes=10, bf16=False, rank=0, world=1) -> dict:
    """Loss, error, per-class accuracy and confusion matrix (rows: true class) on the original view
    of normalized `images`. Under torchrun each process evaluates a shard; the sums are reduced."""
    if world > 1:
        images, labels = images.chunk(world)[rank], labels.chunk(world)[rank]
    # 1000 images a batch on a GPU; 256 on a CPU, where 1000 spill the caches (ResNet-32, 2 cores:
    # 904 vs 643 images/s)
    batch_size = batch_size or (256 if images.device.type == "cpu" else 1000)
    was_training = model.training
    model.eval()
    dtype = next(model.parameters()).dtype
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.long, device=labels.device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=labels.device)
    for i in range(0, len(images), batch_size):
        x, y = images[i:i + batch_size].to(dtype=dtype), labels[i:i + batch_size]
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        logits = logits.float() if bf16 else logits
        loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
        confusion += torch.bincount(y * num_classes + logits.argmax(1), minlength=num_classes ** 2)
    model.train(was_training)
    n = torch.tensor(len(labels), dtype=torch.float64, device=labels.device)
    if world > 1:
        for t in (loss_sum, confusion, n):
            dist.all_reduce(t)
    confusion = confusion.cpu().view(num_classes, num_classes)
    n, correct = max(int(n.item()), 1), confusion.diag()
    return dict(loss=loss_sum.item() / n, error=1 - correct.sum().item() / n,
                per_class_accuracy=(correct / confusion.sum(1).clamp(min=1)).tolist(),
                confusion=confusion)
