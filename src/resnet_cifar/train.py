"""Training: `train(config)` trains (or reuses, or resumes) one run; `fit` is the loop; `train_step` one SGD step.

The loop and the step also train the runs of a fused group (fused.py). What a run writes and when it is
reused or resumed is in runs.py; the recipe's defaults are in config.py.
"""
from __future__ import annotations

import dataclasses
import functools
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from . import runs
from .config import TrainConfig, lr_at
from .data import CIFAR10, PreparedData, TrainBatches, load_cifar10, prepare_data
from .devices import device_label, set_numerics
from .models import architecture_flops, build_model, count_parameters
from .processes import on_rank0, start_processes
from .progress import Progress
from .runs import RunError, RunResult, load_run

STARTUP_ITERATIONS = 10  # after each (re)start, timed apart: torch.compile compiles, CUDA graphs record, cuDNN tunes
WARMUP_RULE_EVERY = 50  # warmup_until_error: the training error of each 50 iterations decides (about 400 in the paper)


def train(config: TrainConfig | None = None, dataset: CIFAR10 | None = None, **overrides) -> RunResult:
    """Train (or reuse, or resume) the run `config` describes and return its record.
    Under torchrun every process calls this; rank 0 alone writes the record."""
    config = dataclasses.replace(config or TrainConfig(), **overrides).validate()
    rank, world, device, made_group = start_processes(config)
    run_dir = Path(config.runs_dir) / config.run_name()
    try:
        if on_rank0(world, rank, lambda: runs.decide(config, run_dir)) == "reuse":
            return load_run(run_dir)
        dataset = dataset or load_cifar10(config.data_dir)  # bad data fails before the run folder is touched
        lock = runs.RunLock(run_dir, config.wait)
        action = on_rank0(world, rank, lambda: claim(config, run_dir, lock))
        if action != "reuse":  # (reuse: its last holder finished it while we waited)
            try:
                numerics = set_numerics(config.dtype, device)
                data = prepare_data(config, device, dataset)
                run, step_model = start_run(config, run_dir, action == "resume", data, device, numerics, rank, world)
                fit([run], step_model, device)
            finally:
                if rank == 0:
                    lock.release()
        return load_run(run_dir)
    finally:
        if made_group:
            dist.destroy_process_group()


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


# ---------------------------------------------------------------- model, optimizer, the step

def build_training(config: TrainConfig, device: torch.device, world: int = 1, dtype: torch.dtype = torch.float32):
    """(model, step_model, optimizer, plateau scheduler or None): `model` is evaluated and saved, `step_model`
    is what the step calls (wrapped for DDP, compiled)."""
    torch.manual_seed(config.seed)
    model = build_model(config.arch, config.depth, config.shortcut, final_relu=config.final_relu,
                        bn_eps=config.bn_eps, bn_momentum=config.bn_momentum).to(device=device, dtype=dtype)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    step_model = model
    if world > 1:
        if config.sync_bn:
            model = step_model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        step_model = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    if config.compile:
        step_model = torch.compile(step_model, mode=config.compile_mode)
    optimizer = make_optimizer(config, model.parameters())
    plateau = (torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=config.gamma,
                                                          patience=config.plateau_patience,
                                                          threshold=config.plateau_threshold)
               if config.schedule == "plateau" else None)
    return model, step_model, optimizer, plateau


def make_optimizer(config: TrainConfig, params) -> torch.optim.Optimizer:
    """SGD with momentum and weight decay (the paper), or an Adam variant."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov,
                               weight_decay=config.weight_decay)
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "nadam": torch.optim.NAdam}[config.optimizer]
    return cls(params, lr=config.lr, weight_decay=config.weight_decay)


def step_dtypes(config: TrainConfig) -> tuple[torch.dtype, torch.dtype | None]:
    """(weights' and inputs' dtype, autocast dtype or None); tf32 is a backend setting (devices.py)."""
    return (torch.float64 if config.dtype == "float64" else torch.float32,
            torch.bfloat16 if config.dtype == "bfloat16" else None)


def train_step(model, optimizers, x: torch.Tensor, y: torch.Tensor, lrs, autocast_dtype=None) -> torch.Tensor:
    """One SGD step: an optimizer and its lr, or a fused group's lists of them (x, y then (runs, batch, ...)).
    Returns [loss x batch, wrong predictions, batch] (per run) as float64 on the device, left to the caller
    to read, so that a GPU step does not wait for the host."""
    if isinstance(optimizers, torch.optim.Optimizer):
        optimizers, lrs = [optimizers], [lrs]
    for optimizer, lr in zip(optimizers, lrs):
        optimizer.zero_grad(set_to_none=True)
        for group in optimizer.param_groups:
            group["lr"] = lr
    if x.is_cuda:
        torch.compiler.cudagraph_mark_step_begin()  # CUDA graphs (reduce-overhead) replay into fixed buffers
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
    """Steps between reads of the losses: every step on a CPU, every 50 on a GPU (one host sync for 50)."""
    return 50 if device.type == "cuda" else 1


# ---------------------------------------------------------------- the loop

@dataclasses.dataclass
class Run:
    """One run in the loop: what it trains and records, the lr of its next step, what is due after a step
    and what is done with the steps read."""
    config: TrainConfig
    run_dir: Path
    model: nn.Module
    optimizer: torch.optim.Optimizer
    plateau: object
    data: PreparedData
    batches: TrainBatches
    record: runs.Record
    progress: Progress
    state: runs.LoopState
    world: int = 1
    rank: int = 0
    lock: runs.RunLock | None = None  # a fused group's run releases it when it ends
    status: str = "running"  # or "diverged at iteration k", "stopped at iteration k (stop_at)", "complete"

    def __post_init__(self):
        c = self.config
        self.it = self.state.iteration  # steps taken; state.iteration counts the steps read
        self.end = min(c.stop_at or c.iterations, c.iterations)
        self.eval_every = c.eval_every or self.batches.per_epoch
        self.checkpoint_every = c.checkpoint_every or self.eval_every
        self.startup_until = self.it + min(STARTUP_ITERATIONS, (c.iterations - self.it) // 2)

    def lr(self) -> float:
        """The learning rate of the next step, noted in the state where it changes."""
        c, s = self.config, self.state
        lr = (c.warmup_lr if s.lr_warmup else current_lr(self.optimizer) if self.plateau
              else lr_at(c, self.it, self.batches.per_epoch))
        if not s.lr_changes or s.lr_changes[-1][1] != lr:
            s.lr_changes.append((self.it, lr))
        return lr

    def due(self, read_every: int) -> dict:
        """What is due after the step just taken: an evaluation, a checkpoint, the warm-up rule, a read."""
        c, it = self.config, self.it
        return dict(eval=it % self.eval_every == 0 or it == c.iterations,
                    checkpoint=it % self.checkpoint_every == 0 and it < c.iterations,
                    rule=self.state.lr_warmup and it % WARMUP_RULE_EVERY == 0,
                    read=it % read_every == 0 or it in (self.startup_until, self.end))

    def absorb(self, stats: torch.Tensor, seconds: float, due: dict) -> None:
        """The steps read since the last read, up to this step: rows of [loss x batch, wrong, batch], `seconds`."""
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
        if state.lr_warmup:
            update_lr_warmup(state, stats, self.config, check=due["rule"])
        self.progress.update(it, (stats[-1, 0] / stats[-1, 2]).item())
        if bad is not None:
            self.status = f"diverged at iteration {it}"
            state.history.append(self.record.row(state, current_lr(self.optimizer)))
            return
        if due["eval"]:
            start = time.perf_counter()
            row = self.record.row(state, current_lr(self.optimizer), evaluation(self.model, self.data, self.config,
                                                                                self.rank, self.world))
            state.eval_time += time.perf_counter() - start
            state.history.append(row)
            self.progress.log(row)
            if self.plateau:
                self.plateau.step(row["val_loss"] if len(self.data.val_y) else row["train_loss"])
        if due["checkpoint"]:
            self.record.checkpoint(state, self.model, self.optimizer, self.plateau)
        if it == self.config.iterations:
            self.status = "complete"
        elif it == self.end:
            self.status = f"stopped at iteration {it} (stop_at)"

    def finish(self) -> None:
        self.progress.close()
        self.record.finish(self.state, self.status, self.model, self.optimizer, self.plateau)
        if self.world > 1:
            dist.barrier()  # the other ranks read the record rank 0 has just written
        if self.status != "complete":
            self.progress.message(f"[{self.run_dir.name}] {self.status}")
        if self.lock:
            self.lock.release()


def fit(group: list[Run], step_model, device: torch.device, fused: bool = False) -> None:
    """The training loop of one run, or of a fused group (fused.py: `step_model` calls the active runs' models
    as one on their stacked batches): step; when due, read the losses, evaluate, checkpoint; a run that ends
    or diverges leaves."""
    autocast_dtype = step_dtypes(group[0].config)[1]
    read_every, world = loss_read_interval(device), group[0].world
    active = [run for run in group if run.it < run.end]
    for run in group:
        if run not in active:  # resumed where it stops
            run.status = "complete" if run.it == run.config.iterations else f"stopped at iteration {run.it} (stop_at)"
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
            pending.append(train_step(model, [run.optimizer for run in active], x, y, lrs, autocast_dtype))
            for run in active:
                run.it += 1
            due = [run.due(read_every) for run in active]
            if not any(any(d.values()) for d in due):
                continue
            stats = read_steps(pending, world).view(-1, len(active), 3)
            seconds = (time.perf_counter() - started) / len(active)  # each run's share of the time
            for i, (run, d) in enumerate(zip(active, due)):
                run.absorb(stats[:, i], seconds, d)
            for run in [run for run in active if run.status != "running"]:
                active.remove(run)
                run.finish()
            started = time.perf_counter()
    except BaseException as e:
        detail = "interrupted" if isinstance(e, KeyboardInterrupt) else f"failed: {type(e).__name__}: {e}"
        for run in active:
            run.record.failed(run.state, f"{detail} at iteration {run.state.iteration}")
            run.progress.close()
        raise


def read_steps(pending: list[torch.Tensor], world: int) -> torch.Tensor:
    """The pending steps' rows, read with one host sync (and one all-reduce across processes)."""
    stats = torch.stack(pending)
    pending.clear()
    if world > 1:
        dist.all_reduce(stats)
    return stats.cpu()


def update_lr_warmup(state: runs.LoopState, stats: torch.Tensor, config: TrainConfig, check: bool) -> None:
    """ResNet-110 (Sec. 4.2): "we use 0.01 to warm up the training until the training error is below 80%
    (about 400 iterations), and then go back to 0.1": the error of each WARMUP_RULE_EVERY iterations decides."""
    state.lr_warmup_window += stats.sum(0)
    if check:
        _, wrong, seen = state.lr_warmup_window.tolist()
        if wrong / seen < config.warmup_until_error:
            state.lr_warmup, state.lr_warmup_ended = False, state.iteration
        state.lr_warmup_window.zero_()


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    return optimizer.param_groups[0]["lr"]


# ---------------------------------------------------------------- a run's start: its record and checkpoint

def start_run(config: TrainConfig, run_dir: Path, resume: bool, data: PreparedData, device: torch.device,
              numerics: dict, rank: int = 0, world: int = 1, fused_group: list[str] | None = None):
    """(the Run, the model its steps call): built, restored from its checkpoint when resuming, its record
    started (summary.json says 'running'). A fused group's run is built without compile and channels_last."""
    dtype = step_dtypes(config)[0]
    batches = TrainBatches(data, config, rank, world, dtype)
    built = dataclasses.replace(config, compile=False, channels_last=False) if fused_group else config
    model, step_model, optimizer, plateau = build_training(built, device, world, dtype)
    state = runs.LoopState(lr_warmup=config.warmup_until_error is not None)
    if resume:
        state = load_checkpoint(run_dir / "checkpoint.pt", config, model, optimizer, plateau, device)
    threads = torch.get_num_threads() if device.type == "cpu" else None
    state.begin_segment(device_label(device), threads, world, earlier=runs.read_json(run_dir / "summary.json"))
    flops = architecture_flops(config.arch, config.depth, config.shortcut)
    facts = dict(name=run_dir.name, iterations=config.iterations, params=count_parameters(model), flops=flops,
                 flops_note=None if flops is not None else "fvcore is not installed: FLOPs not counted",
                 device=str(device), device_name=device_label(device), world_size=world, numerics=numerics,
                 torch_version=torch.__version__, dataset=data.dataset.identity, dataset_label=data.dataset.label,
                 train_size=len(data.train_y), val_size=len(data.val_y), test_size=len(data.test_y),
                 git_commit=runs.git_commit(), **({"fused_group": fused_group} if fused_group else {}))
    record = runs.Record(config, run_dir, batches.per_epoch, facts, enabled=rank == 0)
    record.start(state)
    progress = Progress(config, run_dir.name, state.iteration, rank)
    run = Run(config, run_dir, model, optimizer, plateau, data, batches, record, progress, state, world, rank)
    return run, step_model


def load_checkpoint(path: Path, config: TrainConfig, model, optimizer, plateau, device) -> runs.LoopState:
    """Restore model, optimizer, scheduler and RNG from the checkpoint at `path`; the loop's state."""
    try:
        saved = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:
        raise RunError(f"checkpoint {path} is corrupted or unreadable ({type(e).__name__}); pass force=True "
                       f"to start the run over.") from e
    if saved.get("config") != config.identity():
        raise RunError(f"checkpoint {path} was written by a different config; pass force=True to "
                       f"start the run over, or pick another run name.")
    try:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        if plateau:
            plateau.load_state_dict(saved["plateau"])
        state = runs.LoopState.from_saved(saved)
    except (RuntimeError, KeyError, ValueError) as e:
        raise RunError(f"checkpoint {path} does not match this model ({str(e).splitlines()[0]}); pass force=True "
                       f"to start the run over.") from e
    torch.set_rng_state(saved["rng_cpu"].cpu())
    return state


# ---------------------------------------------------------------- evaluation

def eval_batch_size(device: torch.device) -> int:
    """1000 images on a GPU; 256 on a CPU, where 1000 spill the caches (ResNet-32, 2 cores: 904 vs 643 images/s)."""
    return 256 if device.type == "cpu" else 1000


@torch.inference_mode()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int | None = None,
             num_classes: int = 10, bf16: bool = False, rank: int = 0, world: int = 1) -> dict:
    """Loss, error, per-class accuracy and confusion matrix (rows: true class) on normalized `images`, on the
    single original view. Under torchrun each process evaluates its shard and the sums are all-reduced."""
    if world > 1:
        images, labels = images.chunk(world)[rank], labels.chunk(world)[rank]
    batch_size = batch_size or eval_batch_size(images.device)
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
                per_class_accuracy=(correct / confusion.sum(1).clamp(min=1)).tolist(), confusion=confusion)


def evaluation(model: nn.Module, data: PreparedData, config: TrainConfig, rank: int, world: int) -> dict:
    """Validation and test loss and error. Under torchrun rank 0's BN statistics go to every process first,
    so all evaluate one model and take the same plateau decisions."""
    if world > 1:
        for buffer in model.buffers():
            dist.broadcast(buffer, 0)
    out = {}
    for split, x, y in (("val", data.val_x, data.val_y), ("test", data.test_x, data.test_y)):
        if len(y):
            result = evaluate(model, x, y, bf16=config.dtype == "bfloat16", rank=rank, world=world)
            out.update({f"{split}_loss": result["loss"], f"{split}_error": result["error"]})
    return out
