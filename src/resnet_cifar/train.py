"""Training: `TrainConfig` (defaults = the paper's CIFAR recipe) and `train(config)`.

Paper, Sec. 4.2: "We use a weight decay of 0.0001 and momentum of 0.9 ... These models
are trained with a mini-batch size of 128 on two GPUs. We start with a learning rate
of 0.1, divide it by 10 at 32k and 48k iterations, and terminate training at 64k
iterations, which is determined on a 45k/5k train/val split."

A run lives in `runs/<name>/`:
    config.json    the TrainConfig
    history.csv    one row per evaluation: train/val/test loss and error, lr, wall time
    lr_trace.csv   the learning rate of every iteration
    summary.json   status, final/best errors, speed, params, FLOPs, device, dataset ...
    checkpoint.pt  full training state (resume after a kill), written atomically
    model.pt       final weights
A finished run with the same config is returned from disk instead of retrained.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import data as D
from .models import ARCHS, SHORTCUTS, build_model, check_depth, count_parameters

OPTIMIZERS = ("sgd", "adam", "adamw", "nadam")
SCHEDULES = ("multistep", "plateau", "cosine", "constant")
DTYPES = ("float32", "float64", "bfloat16")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
# Fields that say where/how a run executes, not what it computes: a finished run is
# reused whatever they are (train on a GPU, rebuild the book on a laptop).
EXECUTION_FIELDS = ("name", "device", "data_dir", "runs_dir", "resume", "force", "wait", "compile", "compile_mode",
                    "channels_last", "checkpoint_every", "progress")
FINISHED = ("complete", "diverged")


class RunError(RuntimeError):
    """A run cannot start or continue; the message says what to do."""


@dataclass
class TrainConfig:
    """Every knob of a run. The defaults are the paper's CIFAR-10 ResNet-32 recipe."""
    name: str | None = None               # run folder name; default: derived from the config
    # model (models.py)
    arch: str = "resnet"                  # resnet | plain | resnet34-imagenet
    depth: int = 32                       # 6n+2
    shortcut: str = "A"                   # A: zero-pad identity (paper, CIFAR) | B: projection
    final_relu: bool = False              # seed log's question: ReLU after the last FC
    bn_eps: float = 1e-5
    bn_momentum: float = 0.1
    # data (data.py)
    data_dir: str | None = None           # > $RESNET_CIFAR_DATA > ./data
    val_size: int = 5000                  # 45k/5k split
    split_seed: int = 0
    subset: int | None = None             # first N (class-balanced) of each split, for quick runs
    normalization: str = "per-pixel-mean"  # per-pixel-mean (paper) | per-channel | none
    normalize_eval: bool = True           # False = the log's "test without mean subtraction"
    crop: bool = True                     # 4-pixel pad + random 32x32 crop
    flip: bool = True                     # random horizontal flip
    pad: int = 4
    # optimization
    optimizer: str = "sgd"                # sgd | adam | adamw | nadam
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    batch_size: int = 128
    iterations: int = 64000
    schedule: str = "multistep"           # multistep | plateau | cosine | constant
    schedule_unit: str = "iteration"      # milestones and warm-up counted in iterations or epochs
    milestones: tuple[int, ...] = (32000, 48000)
    gamma: float = 0.1
    warmup: int = 0                       # ResNet-110 trick: lr = warmup_lr for this long
    warmup_lr: float = 0.01
    plateau_patience: int = 10            # evaluations without val-loss improvement
    plateau_threshold: float = 1e-4
    # evaluation, checkpoints
    eval_every: int | None = None         # iterations; default one epoch
    checkpoint_every: int | None = None   # iterations; default at every evaluation
    # execution
    device: str = "auto"                  # auto: cuda, then mps, then cpu
    dtype: str = "float32"                # float32 | float64 | bfloat16 (autocast)
    channels_last: bool = False
    compile: bool = False
    compile_mode: str = "default"         # torch.compile mode; reduce-overhead: CUDA graphs (GPU)
    sync_bn: bool = False                 # DistributedDataParallel only
    seed: int = 0
    runs_dir: str = "runs"
    resume: bool = True                   # continue an interrupted run from its checkpoint
    force: bool = False                   # retrain even if a record exists
    wait: bool = False                    # another process trains this run: wait for it, then reuse/resume
    progress: str = "auto"                # auto: tqdm on a terminal, log lines otherwise | bar | log | none

    def __post_init__(self):
        self.milestones = tuple(self.milestones)

    def validate(self) -> "TrainConfig":
        choices = dict(arch=ARCHS, shortcut=SHORTCUTS, normalization=D.NORMALIZATIONS, optimizer=OPTIMIZERS,
                       schedule=SCHEDULES, schedule_unit=("iteration", "epoch"), dtype=DTYPES,
                       compile_mode=COMPILE_MODES,
                       progress=("auto", "bar", "log", "none"))
        for key, valid in choices.items():
            if getattr(self, key) not in valid:
                raise ValueError(f"{key} must be one of {valid}, got {getattr(self, key)!r}")
        if self.arch != "resnet34-imagenet":
            check_depth(self.depth)
        positive = dict(lr=self.lr, batch_size=self.batch_size, iterations=self.iterations,
                        bn_eps=self.bn_eps)
        positive.update({k: getattr(self, k) for k in ("eval_every", "checkpoint_every", "subset")
                         if getattr(self, k) is not None})  # None = the default; 0 is an error
        for key, value in positive.items():
            if not (isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0):
                raise ValueError(f"{key} must be a positive number, got {value!r}")
        if self.subset is not None and self.subset < 10:
            raise ValueError(f"subset must be at least 10 (one image per class) or None (all), got {self.subset}")
        if not (isinstance(self.val_size, int) and self.val_size >= 0):
            raise ValueError(f"val_size must be an integer >= 0, got {self.val_size!r}")
        if self.schedule == "plateau" and self.warmup:
            raise ValueError("warmup is not supported with schedule='plateau'; set warmup=0")
        if self.compile_mode != "default" and not self.compile:
            raise ValueError(f"compile_mode={self.compile_mode!r} needs compile=True (--compile)")
        if not (self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda", "mps")):
            raise ValueError(f"device must be auto, cpu, cuda[:k] or mps, got {self.device!r}")
        return self

    def identity(self) -> dict:
        """The fields that decide what a run computes (see EXECUTION_FIELDS)."""
        d = dataclasses.asdict(self)
        d["milestones"] = list(d["milestones"])
        return {k: v for k, v in d.items() if k not in EXECUTION_FIELDS}

    def run_name(self) -> str:
        if self.name:
            return self.name
        import hashlib
        digest = hashlib.sha1(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:8]
        model = self.arch if self.arch == "resnet34-imagenet" else f"{self.arch}{self.depth}"
        return f"{model}-{digest}"


@dataclass
class RunResult:
    """What a run left in its folder, read back."""
    run_dir: Path
    config: dict
    summary: dict
    history: "object" = field(repr=False)  # pandas DataFrame, one row per evaluation
    lr_trace: "object" = field(repr=False)  # pandas DataFrame: iteration, lr

    @property
    def status(self) -> str:
        return self.summary["status"]

    @property
    def diverged(self) -> bool:
        return self.summary["status"] == "diverged"

    def load_model(self, map_location="cpu") -> nn.Module:
        if not (self.run_dir / "model.pt").is_file():
            raise RunError(f"run {self.run_dir} has no final weights (model.pt): it is "
                           f"{self.summary.get('status_detail', self.summary.get('status'))}; "
                           f"only a complete run has them.")
        cfg = TrainConfig(**self.config)
        model = build_model(cfg.arch, cfg.depth, cfg.shortcut, final_relu=cfg.final_relu,
                            bn_eps=cfg.bn_eps, bn_momentum=cfg.bn_momentum)
        if cfg.dtype == "float64":
            model = model.double()
        model.load_state_dict(torch.load(self.run_dir / "model.pt", map_location=map_location, weights_only=True))
        return model.eval()


def load_run(run_dir) -> RunResult:
    """Read a run folder (finished or not)."""
    import pandas as pd
    run_dir = Path(run_dir)
    if not (run_dir / "summary.json").is_file():
        raise RunError(f"{run_dir} is not a run folder (no summary.json); train it first.")
    config = json.loads((run_dir / "config.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    history = pd.read_csv(run_dir / "history.csv") if (run_dir / "history.csv").is_file() else pd.DataFrame()
    lr_trace = pd.read_csv(run_dir / "lr_trace.csv") if (run_dir / "lr_trace.csv").is_file() else pd.DataFrame()
    if summary.get("status") == "running" and not _lock_owner(run_dir):  # its process was killed
        summary["status_detail"] = (f"interrupted at iteration {summary.get('iterations_done')} (no process "
                                    f"is training it; train() with resume=True continues it)")
    return RunResult(run_dir, config, summary, history, lr_trace)


def _lock_owner(run_dir: Path) -> int:
    """The pid of the live process holding the run's lock, or 0."""
    try:
        pid = int((run_dir / ".lock").read_text() or 0)
    except (OSError, ValueError):
        return 0
    return pid if pid and _alive(pid) else 0


# ---------------------------------------------------------------- learning rate

def lr_at(config: TrainConfig, iteration: int, iterations_per_epoch: int = 1) -> float:
    """The scheduled learning rate at `iteration` (0-based) for multistep, cosine and
    constant schedules; plateau starts at config.lr and is lowered by the scheduler."""
    unit = iterations_per_epoch if config.schedule_unit == "epoch" else 1
    if iteration < config.warmup * unit:
        return config.warmup_lr
    if config.schedule == "multistep":
        return config.lr * config.gamma ** sum(iteration >= m * unit for m in config.milestones)
    if config.schedule == "cosine":
        return 0.5 * config.lr * (1 + math.cos(math.pi * iteration / config.iterations))
    return config.lr


def make_optimizer(config: TrainConfig, params) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov,
                               weight_decay=config.weight_decay)
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "nadam": torch.optim.NAdam}[config.optimizer]
    return cls(params, lr=config.lr, weight_decay=config.weight_decay)


# ---------------------------------------------------------------- evaluation

def eval_batch_size(device: torch.device) -> int:
    """Evaluation's batch: 1000 images on a GPU; 256 on a CPU, where a 1000-image batch's
    activations spill the caches (ResNet-32, 2 cores: 904 vs 643 images/s)."""
    return 256 if device.type == "cpu" else 1000


@torch.inference_mode()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int | None = None,
             num_classes: int = 10, bf16: bool = False) -> dict:
    """Loss, error, per-class accuracy and confusion matrix (rows: true, columns:
    predicted) of `model` on normalized `images`, in large batches (`eval_batch_size`)."""
    batch_size = batch_size or eval_batch_size(images.device)
    was_training = model.training
    model.eval()
    dtype = next(model.parameters()).dtype
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    loss_sum = 0.0
    for i in range(0, len(images), batch_size):
        x, y = images[i:i + batch_size].to(dtype=dtype), labels[i:i + batch_size]
        with _autocast(x.device, bf16):
            logits = model(x).float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        confusion += torch.bincount(y.cpu() * num_classes + logits.argmax(1).cpu(),
                                    minlength=num_classes ** 2).view(num_classes, num_classes)
    model.train(was_training)
    n = max(len(images), 1)
    correct = confusion.diag()
    return dict(loss=loss_sum / n, error=1 - correct.sum().item() / n,
                per_class_accuracy=(correct / confusion.sum(1).clamp(min=1)).tolist(),
                confusion=confusion)


def _autocast(device: torch.device, bf16: bool):
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


# ---------------------------------------------------------------- run records

def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


def _write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    import csv
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def _save_atomic(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


HISTORY_COLUMNS = ["iteration", "epoch", "lr", "train_loss", "train_error", "val_loss", "val_error",
                   "test_loss", "test_error", "wall_time"]


class RunLock:
    """runs/<name>/.lock holds the pid of the process training the run; a second
    process fails at once, or with `wait` polls until the lock is free. A lock left by a
    killed process (dead pid) is taken over."""
    POLL_S = 2.0

    def __init__(self, run_dir: Path, wait: bool = False):
        self.path, self.wait = run_dir / ".lock", wait

    def __enter__(self):
        stale, waiting_for = 0, None
        while stale < 2:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                os.write(fd, str(os.getpid()).encode())
                os.close(fd)
                return self
            except FileExistsError:
                pid = _lock_owner(self.path.parent)
                if pid and pid != os.getpid():
                    if not self.wait:
                        raise RunError(f"run {self.path.parent} is being trained by process {pid}; wait for it "
                                       f"(wait=True, --wait), or pick another run name.") from None
                    if pid != waiting_for:
                        print(f"[{self.path.parent.name}] process {pid} is training this run: waiting for it",
                              flush=True)
                        waiting_for = pid
                    time.sleep(self.POLL_S)
                    continue
                self.path.unlink(missing_ok=True)  # stale: its owner is gone
                stale += 1
        raise RunError(f"could not take the lock {self.path}; remove it if no process is training this run.")

    def __exit__(self, *exc):
        self.path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              timeout=5, cwd=Path(__file__).parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def pick_device(name: str = "auto") -> torch.device:
    """auto: cuda, then mps, then cpu."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def flop_count(model: nn.Module) -> int:
    """fvcore FLOPs (one multiply-add = one FLOP, fvcore's convention) for one image."""
    from fvcore.nn import FlopCountAnalysis
    import copy
    m = copy.deepcopy(model).float().cpu().eval()
    analysis = FlopCountAnalysis(m, torch.zeros(1, 3, 32, 32))
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    return int(analysis.total())


@functools.lru_cache(maxsize=None)
def architecture_flops(arch: str, depth: int, shortcut: str) -> int:
    """`flop_count` of `build_model(arch, depth, shortcut)`. It depends on the architecture
    only (fvcore counts neither ReLUs nor BN's eps), so it is traced once per process; the
    model is built under a forked RNG so that a cache miss leaves the caller's RNG alone."""
    with torch.random.fork_rng(devices=[]):
        return flop_count(build_model(arch, depth, shortcut))


# ---------------------------------------------------------------- data on the device

@dataclass
class PreparedData:
    """Normalized float tensors for the three splits, on the training device."""
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    normalizer: D.Normalizer
    dataset: D.CIFAR10


def prepare_data(config: TrainConfig, device: torch.device, dataset: D.CIFAR10 | None = None) -> PreparedData:
    """Load CIFAR-10, split 45k/5k, take the subset, fit the normalizer on the training
    split and move everything to `device` as normalized float32."""
    ds = dataset or D.load_cifar10(config.data_dir)
    train_idx, val_idx = D.train_val_split(len(ds.train_labels), config.val_size, config.split_seed)
    train_idx = train_idx[D.balanced_subset(ds.train_labels[train_idx], config.subset)]
    val_idx = val_idx[D.balanced_subset(ds.train_labels[val_idx], config.subset)]
    test_idx = D.balanced_subset(ds.test_labels, config.subset)
    norm = D.Normalizer.fit(ds.train_images[train_idx], config.normalization)
    eval_norm = norm if config.normalize_eval else D.Normalizer.fit(ds.train_images[:1], "none")

    def put(images, labels, normalizer):
        return normalizer(images.to(device)), labels.to(device)

    return PreparedData(*put(ds.train_images[train_idx], ds.train_labels[train_idx], norm),
                        *put(ds.train_images[val_idx], ds.train_labels[val_idx], eval_norm),
                        *put(ds.test_images[test_idx], ds.test_labels[test_idx], eval_norm), norm, ds)


# ---------------------------------------------------------------- the run

def train(config: TrainConfig | None = None, dataset: D.CIFAR10 | None = None, **overrides) -> RunResult:
    """Train (or reuse, or resume) the run `config` describes and return its record."""
    config = dataclasses.replace(config or TrainConfig(), **overrides).validate()
    rank, world = _init_distributed(config)
    run_dir = Path(config.runs_dir) / config.run_name()
    if rank == 0:
        _check_writable(Path(config.runs_dir))
    action = _decide(config, run_dir)
    if action == "reuse":
        return load_run(run_dir)
    if dataset is None:  # missing or bad data fails here, before the run folder is touched
        dataset = D.load_cifar10(config.data_dir)
    if config.wait and world > 1:
        raise RunError("wait=True is for single-process runs; a torchrun job cannot wait on another process's run")
    _barrier(world)
    lock = RunLock(run_dir, config.wait) if rank == 0 else contextlib.nullcontext()
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
    with lock:
        if world == 1:  # decided before the lock: the run's last holder may have finished or advanced it
            action = _decide(config, run_dir)
            if action == "reuse":
                return load_run(run_dir)
        if rank == 0 and action == "fresh":
            for name in ("summary.json", "history.csv", "lr_trace.csv", "checkpoint.pt", "model.pt"):
                (run_dir / name).unlink(missing_ok=True)
        return _Trainer(config, run_dir, rank, world, dataset, resume=action == "resume").run()


def _decide(config: TrainConfig, run_dir: Path) -> str:
    """'reuse' a finished identical run, 'resume' an interrupted one, or start 'fresh'."""
    summary_path = run_dir / "summary.json"
    if config.force or not summary_path.is_file():
        return "fresh"
    try:
        stored = json.loads((run_dir / "config.json").read_text())
        summary = json.loads(summary_path.read_text())
    except (OSError, ValueError) as e:
        raise RunError(f"run record {run_dir} is unreadable ({e}); pass force=True to retrain it.") from e
    ours = config.identity()
    theirs = TrainConfig(**stored).identity()
    if ours != theirs:
        diff = sorted(k for k in ours if ours[k] != theirs.get(k))
        raise RunError(f"run {run_dir} exists with a different config (differs in {', '.join(diff)}); "
                       f"pick another name or pass force=True to overwrite it.")
    if summary.get("status") in FINISHED:
        return "reuse"
    if config.resume and (run_dir / "checkpoint.pt").is_file():
        return "resume"
    if config.resume:
        return "fresh"  # killed before its first checkpoint: nothing to keep
    raise RunError(f"run {run_dir} is {summary.get('status')} (not finished); pass resume=True to continue "
                   f"it or force=True to start over.")


def _check_writable(runs_dir: Path) -> None:
    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
        probe = runs_dir / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise RunError(f"runs folder {runs_dir} is not writable ({e.strerror}); pass runs_dir= (--runs-dir) "
                       f"pointing at a writable folder.") from e


def _init_distributed(config: TrainConfig) -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    import torch.distributed as dist
    if not dist.is_initialized():
        backend = "nccl" if pick_device(config.device).type == "cuda" else "gloo"
        dist.init_process_group(backend)
    if config.batch_size % world:
        raise ValueError(f"batch_size {config.batch_size} must be divisible by the {world} processes")
    return dist.get_rank(), world


def _barrier(world: int) -> None:
    if world > 1:
        torch.distributed.barrier()


class _Trainer:
    def __init__(self, config: TrainConfig, run_dir: Path, rank: int, world: int, dataset, resume: bool):
        self.config, self.run_dir, self.rank, self.world = config, run_dir, rank, world
        device = pick_device(config.device)
        if world > 1 and device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
        self.device = device
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.data = prepare_data(config, device, dataset)
        n_train = len(self.data.train_y)
        self.iters_per_epoch = n_train // config.batch_size
        if self.iters_per_epoch < 1:
            raise ValueError(f"the training split has {n_train} images, fewer than one batch of "
                             f"{config.batch_size}; raise subset or lower batch_size")
        self.eval_every = config.eval_every or self.iters_per_epoch
        self.checkpoint_every = config.checkpoint_every or self.eval_every

        torch.manual_seed(config.seed)
        model = build_model(config.arch, config.depth, config.shortcut, final_relu=config.final_relu,
                            bn_eps=config.bn_eps, bn_momentum=config.bn_momentum)
        self.params = count_parameters(model)
        self.flops = architecture_flops(config.arch, config.depth, config.shortcut)
        self.dtype = torch.float64 if config.dtype == "float64" else torch.float32
        model = model.to(device=device, dtype=self.dtype)
        if config.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model  # the plain module: evaluation and saving
        if world > 1:
            if config.sync_bn:
                if device.type != "cuda":
                    raise RunError("sync_bn needs CUDA devices (SyncBatchNorm only runs on GPUs); drop --sync-bn "
                                   "for a CPU run.")
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
                self.model = model
            model = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
        self.step_model = torch.compile(model, mode=config.compile_mode) if config.compile else model
        # CUDA graphs replay into fixed buffers: mark where each step begins (see _update)
        self.graph_steps = config.compile and config.compile_mode in ("reduce-overhead", "max-autotune")
        self.optimizer = make_optimizer(config, self.model.parameters())
        self.plateau = (torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, factor=config.gamma, patience=config.plateau_patience,
            threshold=config.plateau_threshold) if config.schedule == "plateau" else None)
        self.iteration, self.history, self.lr_trace, self.wall_time = 0, [], [], 0.0
        self._epoch = None  # the epoch whose order and augmentation draws are on the device (_start_epoch)
        self.window = torch.zeros(3, dtype=torch.float64)  # loss sum, wrong, count since last eval
        # CUDA: a step's loss stays on the GPU (no host sync per step); `_flush` reads the pending
        # ones in one sync every SYNC_EVERY steps and before every evaluation / checkpoint.
        self.defer_sync, self._pending = device.type == "cuda", []
        if resume:
            self._load_checkpoint()

    # -- checkpoints
    def _state(self) -> dict:
        return dict(config=self.config.identity(), iteration=self.iteration, model=self.model.state_dict(),
                    optimizer=self.optimizer.state_dict(),
                    plateau=self.plateau.state_dict() if self.plateau else None,
                    history=self.history, lr_trace=self.lr_trace, wall_time=self.wall_time,
                    window=self.window.clone(), rng_cpu=torch.get_rng_state())

    def _load_checkpoint(self) -> None:
        path = self.run_dir / "checkpoint.pt"
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as e:
            raise RunError(f"checkpoint {path} is corrupted or unreadable ({type(e).__name__}); pass "
                           f"force=True to start the run over.") from e
        if state.get("config") != self.config.identity():
            raise RunError(f"checkpoint {path} was written by a different config; pass force=True to start "
                           f"the run over, or pick another run name.")
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            if self.plateau:
                self.plateau.load_state_dict(state["plateau"])
        except (RuntimeError, KeyError, ValueError) as e:
            raise RunError(f"checkpoint {path} does not match this model ({str(e).splitlines()[0]}); pass "
                           f"force=True to start the run over.") from e
        self.iteration, self.history, self.lr_trace = state["iteration"], state["history"], state["lr_trace"]
        self.wall_time, self.window = state["wall_time"], state["window"].cpu()
        torch.set_rng_state(state["rng_cpu"].cpu())

    def _save(self, status: str, final: bool = False) -> None:
        if self.rank:
            return
        if not final or status != "diverged":
            _save_atomic(self._state(), self.run_dir / "checkpoint.pt")
        _write_csv(self.run_dir / "history.csv", self.history, HISTORY_COLUMNS)
        _write_csv(self.run_dir / "lr_trace.csv", self.lr_trace, ["iteration", "lr"])
        if final and status == "complete":
            _save_atomic(self.model.state_dict(), self.run_dir / "model.pt")
        _write_json(self.run_dir / "summary.json", self._summary(status))

    def _summary(self, status: str) -> dict:
        h = [r for r in self.history if not math.isnan(r["val_error"])]
        best = min(h, key=lambda r: r["val_error"]) if h else None
        last = self.history[-1] if self.history else {}
        images = self.iteration * self.config.batch_size
        return dict(
            name=self.run_dir.name, status=status.split(" ")[0], status_detail=status,
            iterations_done=self.iteration, iterations=self.config.iterations,
            final_test_error=last.get("test_error"), final_val_error=last.get("val_error"),
            best_val_error=best["val_error"] if best else None,
            test_error_at_best_val=best["test_error"] if best else None,
            wall_time_s=self.wall_time, train_images_per_s=images / self.wall_time if self.wall_time else None,
            params=self.params, flops=self.flops, device=str(self.device), device_name=_device_name(self.device),
            world_size=self.world, torch_version=torch.__version__, dataset=self.data.dataset.identity,
            dataset_label=self.data.dataset.label, train_size=len(self.data.train_y),
            val_size=len(self.data.val_y), test_size=len(self.data.test_y), git_commit=_git_commit(),
            updated=time.strftime("%Y-%m-%dT%H:%M:%S"),
        )

    # -- the loop
    def run(self) -> RunResult:
        cfg = self.config
        if self.rank == 0:
            _write_json(self.run_dir / "config.json", dataclasses.asdict(self.config))
            _write_json(self.run_dir / "summary.json", self._summary("running"))
        status = "running"
        progress = _Progress(cfg, self.run_dir.name, self.iteration, self.rank)
        self.model.train()
        try:
            while self.iteration < cfg.iterations:
                it = self.iteration
                start = time.perf_counter()
                loss = self._step(it)
                if loss is None and self._sync_due(it + 1):
                    it, loss = self._flush()  # the first non-finite step's, else the last one's
                self.wall_time += time.perf_counter() - start
                self.iteration = it + 1
                progress.update(self.iteration, loss)
                if loss is not None and not math.isfinite(loss):
                    status = f"diverged at iteration {it + 1}"  # 1-based, like history rows
                    self._record_eval(it + 1, evaluate_model=False)
                    break
                if self.iteration % self.eval_every == 0 or self.iteration == cfg.iterations:
                    row = self._record_eval(self.iteration)
                    progress.log(row)
                if self.iteration % self.checkpoint_every == 0 and self.iteration < cfg.iterations:
                    self._save("running")
        except BaseException as e:
            detail = "interrupted" if isinstance(e, KeyboardInterrupt) else f"failed: {type(e).__name__}: {e}"
            self._save_status_only(f"{detail} at iteration {self.iteration}")
            raise
        finally:
            progress.close()
        status = "complete" if status == "running" else status
        self._save(status, final=True)
        _barrier(self.world)
        if status != "complete":
            progress.message(f"[{self.run_dir.name}] {status}")
        return load_run(self.run_dir)

    def _save_status_only(self, status: str) -> None:
        if self.rank == 0:
            summary = self._summary("failed")
            summary["status_detail"] = status
            with contextlib.suppress(OSError):
                _write_json(self.run_dir / "summary.json", summary)

    def _step(self, it: int) -> float | None:
        """One SGD step on the batch that iteration `it` sees: the order and the
        augmentation depend only on (seed, it), so a resumed run sees the same data.
        Returns the batch loss; None on CUDA, where it waits on the GPU for `_flush`."""
        x, y = self._batch(it)
        return self._update(x, y, it)

    def _batch(self, it: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's share of iteration `it`'s batch, augmented on the device, in the
        step's dtype and memory format."""
        cfg, data = self.config, self.data
        epoch, position = divmod(it, self.iters_per_epoch)
        if self._epoch != epoch:
            self._start_epoch(epoch)
        batch = self._perm[position * cfg.batch_size:(position + 1) * cfg.batch_size]
        batch = batch.chunk(self.world)[self.rank]
        x = D.apply_augment(data.train_x[batch], self._draws[position], cfg.pad)
        return self._to_step_format(x), data.train_y[batch]

    def _start_epoch(self, epoch: int) -> None:
        """The epoch's image order and every iteration's augmentation draws, each seeded by
        (seed, epoch) or (seed, iteration, rank) alone (so a resumed run sees the same data),
        moved to the device in one copy each: a GPU step then needs nothing from the host."""
        cfg, ipe = self.config, self.iters_per_epoch
        g = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        self._perm = torch.randperm(len(self.data.train_y), generator=g).to(self.device)
        share = len(torch.arange(cfg.batch_size).chunk(self.world)[self.rank])
        draws = [D.augment_draws(share, torch.Generator().manual_seed((cfg.seed * 1_000_003 + it) * 64 + self.rank),
                                 cfg.pad, cfg.crop, cfg.flip) for it in range(epoch * ipe, (epoch + 1) * ipe)]
        self._draws, self._epoch = torch.stack(draws).to(self.device), epoch

    def _to_step_format(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.dtype)
        return x.contiguous(memory_format=torch.channels_last) if self.config.channels_last else x

    def _update(self, x: torch.Tensor, y: torch.Tensor, it: int) -> float | None:
        """The SGD step of iteration `it` on a prepared batch (what the benchmark times alone)."""
        cfg = self.config
        lr = lr_at(cfg, it, self.iters_per_epoch) if self.plateau is None else self.optimizer.param_groups[0]["lr"]
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if self.graph_steps:
            torch.compiler.cudagraph_mark_step_begin()
        with _autocast(self.device, cfg.dtype == "bfloat16"):
            logits = self.step_model(x)
        loss = F.cross_entropy(logits.float(), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.lr_trace.append(dict(iteration=it, lr=lr))
        stats = torch.stack([loss.detach().double() * len(y), (logits.argmax(1) != y).sum().double(),
                             torch.full((), float(len(y)), device=loss.device, dtype=torch.float64)])
        if self.world > 1:
            torch.distributed.all_reduce(stats)
        if self.defer_sync:
            self._pending.append((it, stats))
            return None
        stats = stats.cpu()
        self.window += stats
        return (stats[0] / stats[2]).item()

    SYNC_EVERY = 50

    def _sync_due(self, iteration: int) -> bool:
        return (iteration % self.SYNC_EVERY == 0 or iteration % self.eval_every == 0
                or iteration % self.checkpoint_every == 0 or iteration == self.config.iterations)

    def _flush(self) -> tuple[int, float]:
        """Read the pending (CUDA) step results with one host sync into the window; return
        (iteration, loss) of the first non-finite loss among them, else of the last step."""
        its = [it for it, _ in self._pending]
        stats = torch.stack([s for _, s in self._pending]).cpu()
        self._pending.clear()
        self.window += stats.sum(0)
        losses = (stats[:, 0] / stats[:, 2]).tolist()
        bad = [i for i, loss in enumerate(losses) if not math.isfinite(loss)]
        i = bad[0] if bad else len(losses) - 1
        return its[i], losses[i]

    def _record_eval(self, iteration: int, evaluate_model: bool = True) -> dict:
        nan = float("nan")
        loss_sum, wrong, count = self.window.tolist()
        row = dict(iteration=iteration, epoch=iteration / self.iters_per_epoch,
                   lr=self.optimizer.param_groups[0]["lr"],
                   train_loss=loss_sum / count if count else nan, train_error=wrong / count if count else nan,
                   val_loss=nan, val_error=nan, test_loss=nan, test_error=nan, wall_time=self.wall_time)
        if evaluate_model:
            if len(self.data.val_y):
                val = evaluate(self.model, self.data.val_x, self.data.val_y, bf16=self.config.dtype == "bfloat16")
                row.update(val_loss=val["loss"], val_error=val["error"])
            test = evaluate(self.model, self.data.test_x, self.data.test_y, bf16=self.config.dtype == "bfloat16")
            row.update(test_loss=test["loss"], test_error=test["error"])
            if self.plateau:
                self.plateau.step(row["val_loss"] if len(self.data.val_y) else row["train_loss"])
        self.history.append(row)
        self.window.zero_()
        return row


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        import platform
        return f"{platform.processor() or platform.machine()} CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"
    return device.type


class _Progress:
    """A tqdm bar on a terminal; one plain line per evaluation otherwise (papermill, CI)."""

    def __init__(self, config: TrainConfig, name: str, start: int, rank: int):
        mode = config.progress
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "log"
        self.mode = mode if rank == 0 else "none"
        self.name, self.total = name, config.iterations
        self.bar = None
        if self.mode == "bar":
            from tqdm.auto import tqdm
            self.bar = tqdm(total=config.iterations, initial=start, desc=name, unit="it")

    def update(self, iteration: int, loss: float) -> None:
        if self.bar:
            self.bar.update(1)
            if iteration % 20 == 0 and loss is not None:
                self.bar.set_postfix(loss=f"{loss:.3f}")

    def log(self, row: dict) -> None:
        if self.mode == "log":
            print(f"[{self.name}] it {row['iteration']}/{self.total} lr {row['lr']:.4g} "
                  f"train {row['train_loss']:.3f}/{100 * row['train_error']:.1f}% "
                  f"val {100 * row['val_error']:.1f}% test {100 * row['test_error']:.1f}% "
                  f"({row['wall_time']:.0f}s)", flush=True)

    def message(self, text: str) -> None:
        if self.mode != "none":
            print(text, file=sys.stderr if self.bar else sys.stdout, flush=True)

    def close(self) -> None:
        if self.bar:
            self.bar.close()
