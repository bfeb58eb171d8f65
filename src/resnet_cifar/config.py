"""`TrainConfig`: every knob of a run, its checks and identity; the lr schedule; the profiles.

The defaults are the paper's CIFAR-10 recipe (Sec. 4.2): "We use a weight decay of 0.0001
and momentum of 0.9 ... mini-batch size of 128 ... We start with a learning rate of 0.1,
divide it by 10 at 32k and 48k iterations, and terminate training at 64k iterations, which
is determined on a 45k/5k train/val split."
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field

from .data import NORMALIZATIONS
from .models import ARCHS, SHORTCUTS, check_depth

OPTIMIZERS = ("sgd", "adam", "adamw", "nadam")
SCHEDULES = ("multistep", "plateau", "cosine", "constant")
# float32 is true fp32 (TF32 off, as on the paper's GPUs); tf32 lets CUDA matmuls and
# convolutions round their inputs to TF32; bfloat16 is fp32 weights under bf16 autocast.
DTYPES = ("float32", "tf32", "float64", "bfloat16")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
PROGRESS = ("auto", "bar", "log", "none")
# Fields that say where/how a run executes, not what it computes: a finished run is
# reused whatever they are (train on a GPU, rebuild the book on a laptop).
EXECUTION_FIELDS = ("name", "device", "data_dir", "runs_dir", "resume", "force", "wait", "compile",
                    "compile_mode", "channels_last", "checkpoint_every", "progress", "stop_at")


def knob(default, help: str):
    """A field and its command-line help: `train` has one flag per field (cli.py)."""
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Every knob of a run. The defaults are the paper's CIFAR-10 ResNet-32 recipe."""
    name: str | None = knob(None, "run folder name; default: derived from the config")
    # model (models.py)
    arch: str = knob("resnet", "resnet | plain | resnet34-imagenet")
    depth: int = knob(32, "6n+2: 20, 32, 44, 56, 110, 1202")
    shortcut: str = knob("A", "A: zero-pad identity (paper, CIFAR) | B: 1x1 conv + BN | B-no-bn")
    final_relu: bool = knob(False, "the seed log's question: a ReLU after the last FC")
    bn_eps: float = 1e-5
    bn_momentum: float = 0.1
    # data (data.py)
    data_dir: str | None = knob(None, "default: $RESNET_CIFAR_DATA, then ./data")
    val_size: int = knob(5000, "the 45k/5k split")
    split_seed: int = 0
    subset: int | None = knob(None, "n//10 images of each class per split (quick runs); default: all")
    normalization: str = knob("per-pixel-mean", "per-pixel-mean (paper) | per-channel | none")
    normalize_eval: bool = knob(True, "off: test without mean subtraction (the seed log's)")
    crop: bool = knob(True, "4-pixel zero pad + random 32x32 crop")
    flip: bool = knob(True, "random horizontal flip")
    pad: int = 4
    # optimization
    optimizer: str = knob("sgd", "sgd | adam | adamw | nadam")
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    batch_size: int = 128
    iterations: int = 64000
    schedule: str = knob("multistep", "multistep | plateau | cosine | constant")
    schedule_unit: str = knob("iteration", "milestones and warm-up in: iteration | epoch")
    milestones: tuple[int, ...] = knob((32000, 48000), "lr drops (x gamma)")
    gamma: float = 0.1
    warmup: int = knob(0, "lr = warmup_lr for this many iterations (or epochs)")
    warmup_until_error: float | None = knob(None, "ResNet-110 (Sec. 4.2): warmup_lr to error < this")
    warmup_lr: float = 0.01
    plateau_patience: int = knob(10, "evaluations without val-loss improvement")
    plateau_threshold: float = 1e-4
    # evaluation, checkpoints
    eval_every: int | None = knob(None, "iterations; default: one epoch")
    checkpoint_every: int | None = knob(None, "iterations; default: at every evaluation")
    stop_at: int | None = knob(None, "stop after this iteration, resumable (not fused)")
    # execution
    device: str = knob("auto", "auto (cuda, then mps, then cpu) | cpu | cuda[:k] | mps")
    dtype: str = knob("float32", "float32 (true fp32) | tf32 | float64 | bfloat16 (autocast)")
    channels_last: bool = False
    compile: bool = knob(False, "torch.compile the model")
    compile_mode: str = knob("default", "with compile: default | reduce-overhead (CUDA graphs) | ...")
    sync_bn: bool = knob(False, "SyncBatchNorm across torchrun processes (GPUs only)")
    seed: int = 0
    runs_dir: str = "runs"
    resume: bool = knob(True, "continue an interrupted run from its checkpoint")
    force: bool = knob(False, "retrain even if a record exists")
    wait: bool = knob(False, "another process trains this run: wait, then reuse or resume")
    progress: str = knob("auto", "auto (a bar on a terminal, else log) | bar | log | none")

    def __post_init__(self):
        self.milestones = tuple(self.milestones)

    def validate(self) -> "TrainConfig":
        """Check every field; raise ValueError naming the field and what it accepts."""
        choices = dict(arch=ARCHS, shortcut=SHORTCUTS, normalization=NORMALIZATIONS,
                       optimizer=OPTIMIZERS, schedule=SCHEDULES, dtype=DTYPES, progress=PROGRESS,
                       schedule_unit=("iteration", "epoch"), compile_mode=COMPILE_MODES)
        for key, valid in choices.items():
            if getattr(self, key) not in valid:
                raise ValueError(f"{key} must be one of {valid}, got {getattr(self, key)!r}")
        if self.arch != "resnet34-imagenet":
            check_depth(self.depth)
        optional = ("eval_every", "checkpoint_every", "subset", "stop_at")  # None: the default
        for key in ("lr", "batch_size", "iterations", "bn_eps", *optional):
            value = getattr(self, key)
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not (number and value > 0 or value is None and key in optional):
                raise ValueError(f"{key} must be a positive number, got {value!r}")
        if self.subset is not None and self.subset < 10:
            raise ValueError(f"subset must be at least 10 (one image per class) or None (all), "
                             f"got {self.subset}")
        if not (isinstance(self.val_size, int) and self.val_size >= 0):
            raise ValueError(f"val_size must be an integer >= 0, got {self.val_size!r}")
        if self.schedule == "plateau" and (self.warmup or self.warmup_until_error):
            raise ValueError("warmup is not supported with schedule='plateau'; set warmup=0, "
                             "warmup_until_error=None")
        if self.warmup_until_error is not None and not 0 < self.warmup_until_error <= 1:
            raise ValueError(f"warmup_until_error must be an error rate in (0, 1], e.g. 0.8, "
                             f"got {self.warmup_until_error!r}")
        if self.warmup and self.warmup_until_error:
            raise ValueError("warmup (a fixed length) and warmup_until_error (a rule) exclude each "
                             "other; set one")
        if self.compile_mode != "default" and not self.compile:
            raise ValueError(f"compile_mode={self.compile_mode!r} needs compile=True")
        if not (self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda", "mps")):
            raise ValueError(f"device must be auto, cpu, cuda[:k] or mps, got {self.device!r}")
        return self

    def identity(self) -> dict:
        """The fields that decide what a run computes (all but EXECUTION_FIELDS)."""
        d = dataclasses.asdict(self)
        d["milestones"] = list(d["milestones"])
        return {k: v for k, v in d.items() if k not in EXECUTION_FIELDS}

    def run_name(self) -> str:
        """`name`, or the model and a hash of the identity: resnet32-1a2b3c4d."""
        if self.name:
            return self.name
        digest = hashlib.sha1(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:8]
        model = self.arch if self.arch == "resnet34-imagenet" else f"{self.arch}{self.depth}"
        return f"{model}-{digest}"

    def schedule_notice(self) -> str | None:
        """A sentence when a multistep schedule never drops within `iterations`, else None."""
        never = bool(self.milestones) and min(self.milestones) >= self.iterations
        if self.schedule == "multistep" and self.schedule_unit == "iteration" and never:
            return (f"the learning rate stays {self.lr:g} for all {self.iterations:,} iterations: "
                    f"its milestones {', '.join(f'{m:,}' for m in self.milestones)} come after the "
                    f"end of the run. Pass milestones (--milestones on the command line) to drop "
                    f"it, e.g. at 50 % and 75 % of the run as the paper does.")
        return None


def lr_at(config: TrainConfig, iteration: int, iterations_per_epoch: int = 1) -> float:
    """The learning rate at `iteration` (0-based); a plateau schedule's scheduler lowers it."""
    unit = iterations_per_epoch if config.schedule_unit == "epoch" else 1
    if iteration < config.warmup * unit:
        return config.warmup_lr
    if config.schedule == "multistep":
        return config.lr * config.gamma ** sum(iteration >= m * unit for m in config.milestones)
    if config.schedule == "cosine":
        return 0.5 * config.lr * (1 + math.cos(math.pi * iteration / config.iterations))
    return config.lr


# The paper's CIFAR budget (Sec. 4.2), named for the sentences that quote it.
PAPER_ITERATIONS, PAPER_BATCH = TrainConfig.iterations, TrainConfig.batch_size

# The book's budgets over the recipe (a chapter's parameters and the plan's arms override them);
# the milestones scale with the iterations, at 50 % and 75 % as in the paper.
PROFILES = {
    "smoke": dict(iterations=10, batch_size=32, subset=100, eval_every=5),  # seconds (CI)
    "cpu": dict(iterations=1600, eval_every=200),  # 1/40 of the paper: hours on a 2-core CPU
    "quick": dict(iterations=6400),  # 1/10 of the paper: minutes on a GPU
    "paper": dict(),
}
# CPU threads a profile's runs train with (default: every core). Batch-32 steps gain little from
# a second thread and lose much on a shared CPU (a 20-step ResNet-32 run: 6 s on one thread,
# 40-50 s on two).
PROFILE_THREADS = {"smoke": 1}


def profile_config(profile: str, **overrides) -> TrainConfig:
    """A TrainConfig for `profile`, milestones scaled to its iterations, then `overrides`."""
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {tuple(PROFILES)}, got {profile!r}")
    # channels_last is an execution setting (not in the identity), measured faster on CPUs and GPUs.
    settings = {"channels_last": True, **PROFILES[profile], **overrides}
    iterations = settings.get("iterations", TrainConfig.iterations)
    settings.setdefault("milestones", (iterations // 2, iterations * 3 // 4))
    return TrainConfig(**settings).validate()
