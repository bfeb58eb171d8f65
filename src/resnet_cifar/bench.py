"""Training throughput: `python -m resnet_cifar bench` (the book's "Performance" appendix).

Everything is in images per second, the best of `rounds` timed windows of `steps` steps
each, after `warmup` untimed steps (torch.compile's compilation happens there). Contestants
take turns window by window, so a machine that other work slows down slows them alike.

library   end to end, as `train()` runs: the training images as normalized tensors on the
          device, `data.augment` on the whole batch there, and the step: the very
          `train._Trainer._step` that `train()` calls.
baseline  the conventional pipeline of most reference repositories: uint8 HWC arrays made
          into a PIL image per item (as `torchvision.datasets.CIFAR10` does), then
          RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor, Normalize (per-channel),
          batched by a DataLoader (shuffle, drop_last; num_workers 0, 1 and 2 tried and the
          fastest kept; pin_memory on CUDA; the main process keeps its torch threads, each
          worker has one), then the same step (`_Trainer._update`): same model, initial
          weights, optimizer, batch, dtype, memory format and device.
model     `_Trainer._update` alone on one fixed, pre-made batch: the step with no data work.
peak      torch.matmul of two n x n matrices (n = 2048 on a CPU, 8192 on a GPU) in the
          step's compute dtype (bfloat16 for autocast), best of 3 after a warm-up: 2 n^3 / s.

FLOP convention: fvcore counts one multiply-add as one FLOP; here a FLOP is one multiply
or one add, so a forward pass is 2 x fvcore's count and a training step about 3 forward
passes (the backward pass costs about two): step GFLOP/s = 6 x fvcore x images/s / 1e9.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import html
import importlib
import itertools
import json
import math
import os
import platform
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from . import data as D

from . import train as T
from .config import TrainConfig
from .devices import device_label, pick_device
from .models import architecture_flops
from .runs import git_commit

PAPER_ITERATIONS = 64_000
WORKERS = (0, 1, 2)


@dataclass(frozen=True)
class Variant:
    """How the step runs: dtype (bfloat16 = fp32 weights under bf16 autocast), memory format, compile."""
    dtype: str = "float32"
    channels_last: bool = False
    compile: bool = False

    @property
    def label(self) -> str:
        parts = [{"float32": "fp32", "float64": "fp64", "bfloat16": "bf16 autocast"}[self.dtype]]
        parts += ["channels_last"] if self.channels_last else []
        parts += ["compile"] if self.compile else []
        return " + ".join(parts)

    @property
    def compute_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)


PAPER_DEFAULT = Variant()  # what `train()` runs unless told otherwise


def parse_variant(spec: str) -> Variant:
    """'fp32', 'fp64', 'bf16', with '+cl' (channels_last) and/or '+compile': 'bf16+cl+compile'."""
    parts = [p.strip().lower() for p in spec.split("+")]
    dtypes = {"fp32": "float32", "float32": "float32", "fp64": "float64", "float64": "float64",
              "bf16": "bfloat16", "bfloat16": "bfloat16"}
    extras = set(parts[1:])
    if parts[0] not in dtypes or not extras <= {"cl", "channels_last", "compile"}:
        raise ValueError(f"variant {spec!r}: write fp32, fp64 or bf16, optionally followed by +cl and/or "
                         f"+compile (e.g. bf16+cl+compile)")
    return Variant(dtypes[parts[0]], bool(extras & {"cl", "channels_last"}), "compile" in extras)


def default_workers() -> tuple[int, ...]:
    """num_workers tried for the baseline: 0, 1, 2, and 4 and 8 where there are more cores."""
    return WORKERS + tuple(w for w in (4, 8) if w < (os.cpu_count() or 1))


def default_variants(quick: bool = False, compile: bool = True) -> list[Variant]:
    """fp32 / fp64 / bf16 autocast, channels_last off and on (fp64: off), torch.compile on for
    fp32 and bf16. --quick: no compile, no fp64."""
    grid = [Variant("float32"), Variant("float32", True), Variant("bfloat16"), Variant("bfloat16", True)]
    if not quick:
        grid.insert(2, Variant("float64"))
        if compile:
            grid += [Variant("float32", False, True), Variant("float32", True, True),
                     Variant("bfloat16", True, True)]
    return grid


# ---------------------------------------------------------------- the conventional pipeline

class PILCIFAR(torch.utils.data.Dataset):
    """What `torchvision.datasets.CIFAR10` does per item: an HWC uint8 array, made into a
    PIL image, through `transform`."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform):
        self.data = images.permute(0, 2, 3, 1).contiguous().numpy()
        self.targets = labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        from PIL import Image
        return self.transform(Image.fromarray(self.data[i])), self.targets[i]


def conventional_loader(images: torch.Tensor, labels: torch.Tensor, batch_size: int, num_workers: int,
                        pin_memory: bool = False, seed: int = 0) -> torch.utils.data.DataLoader:
    """The reference-repository pipeline: PIL images, torchvision transforms, a DataLoader."""
    from torchvision import transforms
    x = images.double() / 255
    mean, std = x.mean((0, 2, 3)).tolist(), x.std((0, 2, 3)).tolist()
    transform = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                                    transforms.ToTensor(), transforms.Normalize(mean, std)])
    return torch.utils.data.DataLoader(
        PILCIFAR(images, labels, transform), batch_size=batch_size, shuffle=True, drop_last=True,
        num_workers=num_workers, pin_memory=pin_memory, persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(seed))


def _forever(loader):
    while True:
        yield from loader


# ---------------------------------------------------------------- timing

def _sync(device: torch.device, *trainers) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _race(contestants: dict[str, tuple[Callable[[], None], Callable[[], None]]], images: int, steps: int,
          rounds: int, warmup: int, seconds: float) -> dict[str, dict]:
    """Time each contestant's step function (`fn`, `sync`): `warmup` untimed steps each (at
    least one), then `rounds` rounds in which every contestant runs its timed window in turn:
    as many steps as fit in about `seconds` by the last warm-up step's time, 1 to `steps`."""
    out = {name: dict(warmup_s=0.0, rates=[]) for name in contestants}
    for name, (fn, sync) in contestants.items():
        t0 = time.perf_counter()
        for _ in range(max(warmup, 1) - 1):
            fn()
        sync()
        t1 = time.perf_counter()
        fn()
        sync()
        t2 = time.perf_counter()
        out[name].update(warmup_s=t2 - t0, steps=max(1, min(steps, round(seconds / max(t2 - t1, 1e-6)))))
    for _ in range(rounds):
        for name, (fn, sync) in contestants.items():
            n = out[name]["steps"]
            sync()
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            sync()
            out[name]["rates"].append(images * n / (time.perf_counter() - t0))
    for r in out.values():
        r["images_per_s"] = max(r["rates"])
    return out


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int | None = None, reps: int = 3) -> float:
    """GFLOP/s of an n x n x n torch.matmul (2 n^3 FLOPs), best of `reps` after a warm-up."""
    n = n or (8192 if device.type == "cuda" else 2048)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    a @ b
    best = math.inf
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e9


# ---------------------------------------------------------------- set-up

def _bench_dataset(dataset: D.CIFAR10, train_images: int) -> D.CIFAR10:
    """The first `train_images` training images (all training, no val split) and a token test set."""
    n = min(train_images, len(dataset.train_labels))
    return dataclasses.replace(dataset, train_images=dataset.train_images[:n], train_labels=dataset.train_labels[:n],
                               test_images=dataset.test_images[:10], test_labels=dataset.test_labels[:10])


class Harness:
    """What `train()` steps with (data on the device, batches, model, optimizer), for timing."""

    def __init__(self, config: TrainConfig, dataset: D.CIFAR10, device: torch.device):
        self.config, self.device = config, device
        self.dtype = torch.float64 if config.dtype == "float64" else torch.float32
        self.data = D.prepare_data(config, device, dataset)
        self.batches = D.TrainBatches(self.data, config, dtype=self.dtype)
        self.model, self.step_model, self.optimizer, _ = T.build_training(config, device, 1, self.dtype)
        self.flops = architecture_flops(config.arch, config.depth, config.shortcut)
        self.autocast = torch.bfloat16 if config.dtype == "bfloat16" else None
        self.steps = 0

    def step(self, it: int) -> torch.Tensor:
        return self.update(*self.batches(it))

    def update(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.steps += 1
        return T.train_step(self.step_model, self.optimizer, x, y, self.config.lr, self.autocast)

    def to_step_format(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.dtype)
        return x.contiguous(memory_format=torch.channels_last) if self.config.channels_last else x


def _trainer(variant: Variant, dataset: D.CIFAR10, device: torch.device, batch_size: int, depth: int,
             seed: int) -> Harness:
    config = TrainConfig(depth=depth, batch_size=batch_size, val_size=0, device=str(device), seed=seed,
                         dtype=variant.dtype, channels_last=variant.channels_last, compile=variant.compile,
                         progress="none").validate()
    return Harness(config, dataset, device)


def _library_fn(trainer: Harness):
    counter = itertools.count()
    return lambda: trainer.step(next(counter)), lambda: _sync(trainer.device, trainer)


def _model_only_fn(trainer: Harness):
    x, y = trainer.batches(0)
    return lambda: trainer.update(x, y), lambda: _sync(trainer.device, trainer)


def _baseline_fn(trainer: Harness, loader):
    batches, device = _forever(loader), trainer.device

    def step():
        x, y = next(batches)
        x = trainer.to_step_format(x.to(device, non_blocking=True))
        trainer.update(x, y.to(device, non_blocking=True))
    return step, lambda: _sync(device, trainer)


def _cpu_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return sorted(f for f in flags if f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"))


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu"  # runs anywhere; fast only with avx512_bf16 / AMX (see cpu_flags)


# ---------------------------------------------------------------- the benchmark

def _plain(markdown: str) -> str:
    """The Markdown sentences above as terminal text: no emphasis markers, ASCII signs."""
    text = re.sub(r"\*\*(.+?)\*\*", r"\1", markdown)
    text = re.sub(r"(?<![\w*])\*(\S.*?)\*", r"\1", text)
    for sign, ascii_ in (("×", "x"), ("≥", ">="), ("³", "^3"), ("—", "-"), ("·", "|")):
        text = text.replace(sign, ascii_)
    return text


def _markdown_to_html(markdown: str) -> str:
    """**bold**, *italic* and `code` of one Markdown sentence as HTML (for the note boxes)."""
    text = html.escape(markdown, quote=False)
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
    text = re.sub(r"(?<![\w*])\*(\S.*?)\*", r"<i>\1</i>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


@dataclass
class Benchmark:
    """What `run_benchmark` measured. `table`: one row per variant; `pipelines`: library vs
    baseline rows; `profile`: where the library's step spends its time."""
    info: dict
    table: "object"
    pipelines: "object"
    ratio: float
    paper: dict
    best: dict
    peak_gflops: dict
    evaluation: dict
    profile: "object" = None
    notes: list = field(default_factory=list)

    def report(self) -> str:
        """The command's text: the set-up, the tables, and the book's sentences as plain text."""
        import pandas as pd
        i = self.info
        lines = [f"Training throughput, ResNet-{i['depth']}, batch {i['batch_size']}, {i['device']} "
                 f"({i['device_name']}), torch {i['torch']}, {i['threads']} threads"
                 + (f", CPU flags {' '.join(i['cpu_flags'])}" if i.get("cpu_flags") else ""),
                 f"timing: best of {i['rounds']} windows of ~{i['seconds']} s (at most {i['steps']} steps) per "
                 f"measurement, after {i['warmup']} untimed warm-up steps; measurements take turns window by window",
                 ""]
        with pd.option_context("display.width", 200, "display.max_columns", 20):
            lines += [self.table.to_string(index=False, float_format=lambda v: f"{v:,.1f}"), ""]
            lines += [self.pipelines.to_string(index=False, float_format=lambda v: f"{v:,.1f}"), ""]
            lines += [_plain(self.markdown("findings")), "", _plain(self.markdown("evaluation")),
                      _plain(self.markdown("peaks")), _plain(self.markdown("schedule"))]
            if self.profile is not None and len(self.profile):
                lines += ["", f"where the library's fp32 step spends its time (torch.profiler, {i['profile_steps']} "
                              f"steps, self CPU time):",
                          self.profile.to_string(index=False, float_format=lambda v: f"{v:,.1f}"),
                          _plain(self.markdown("profile"))]
        lines += [""] + [f"note: {_plain(n)}" for n in self.measurement_notes()]
        return "\n".join(lines)

    # ---------------------------------------------------------- what the numbers say
    # The sentences below are Markdown (the book shows them as they are); `report()` prints
    # the same sentences as plain text, so the command line and the book say the same thing.

    SECTIONS = ("findings", "peaks", "profile", "evaluation", "schedule")

    def markdown(self, section: str, target: float = 1.5) -> str:
        """The measurements of one part of the benchmark in sentences (Markdown):

        findings    library vs conventional at the paper settings, the model-only ceiling,
                    the fastest fp32 and fastest variants, and whether `target` (library /
                    conventional) is met;
        peaks       the measured matmul peaks and a step's GFLOP per image;
        profile     the convolutions' share of the profiled step ('' when not profiled);
        evaluation  evaluation rate and its share of an epoch;
        schedule    the paper's 64k iterations at the fastest rates, in minutes."""
        parts = {"findings": lambda: self._findings(target), "peaks": self._peaks, "profile": self._profile,
                 "evaluation": self._evaluation, "schedule": self._schedule}
        if section not in parts:
            raise ValueError(f"section {section!r}: choose one of {', '.join(self.SECTIONS)}")
        return parts[section]()

    def _findings(self, target: float) -> str:
        p, best32, best = self.paper, self.best["fp32"], self.best["any"]
        lines = [f"**Paper settings** ({PAPER_DEFAULT.label}, eager, NCHW: what `train()` runs by default): library "
                 f"**{p['library']:,.0f}** images/s, conventional **{p['baseline']:,.0f}** images/s at its best "
                 f"`num_workers={p['baseline_workers']}`: ratio **{self.ratio:.2f}×**."]
        if "ceiling" in p:  # measured in the same round
            lines.append(f"In the same round the step with no data work at all (model only) ran at "
                         f"{p['model_only']:,.0f} images/s, {p['ceiling']:.2f}× the conventional pipeline: the most "
                         f"*any* data pipeline could gain with this step on this device. Data work is "
                         f"{100 * p['baseline_data_share']:.0f} % of the conventional pipeline's time and "
                         f"{100 * p['library_data_share']:.0f} % of the library's.")
        lines.append(f"**Fastest fp32 variant** ({best32['variant']}; the paper's fp32 numerics): "
                     f"{best32['library']:,.0f} images/s, **{best32['ratio_vs_conventional']:.2f}×** the conventional "
                     f"fp32 eager pipeline, and {best32['ratio_same_settings']:.2f}× the conventional pipeline given "
                     f"the same step settings.")
        if best["variant"] != best32["variant"]:
            numerics = ("bf16 arithmetic, not the paper's numerics" if best["variant"].startswith("bf16")
                        else "not the paper's fp32 numerics")
            lines.append(f"**Fastest variant** ({best['variant']}; {numerics}): {best['library']:,.0f} images/s, "
                         f"**{best['ratio_vs_conventional']:.2f}×** the conventional fp32 eager pipeline, "
                         f"{best['ratio_same_settings']:.2f}× the conventional pipeline with the same step settings.")
        if self.ratio >= target:
            lines.append(f"The ≥ {target}× target is met at the paper's settings.")
        elif best32["ratio_vs_conventional"] >= target:
            lines.append(f"The ≥ {target}× target is **not** met at equal step settings ({self.ratio:.2f}×); it is "
                         f"met ({best32['ratio_vs_conventional']:.2f}×) only by speeding up the step itself with "
                         f"{best32['variant']}, which the conventional pipeline could switch on too.")
        else:
            lines.append(f"The ≥ {target}× target is **not** met: {self.ratio:.2f}× at equal step settings, "
                         f"{best32['ratio_vs_conventional']:.2f}× with the fastest fp32 step against the conventional "
                         f"fp32 eager pipeline.")
        return "\n\n".join(lines)

    def _peaks(self) -> str:
        i = self.info
        peaks = ", ".join(f"{k} {v:,.0f} GFLOP/s" for k, v in self.peak_gflops.items())
        return (f"Measured peaks ({i['peak_n']}³ torch.matmul, best of 3 at the start and at the end): {peaks}. "
                f"One ResNet-{i['depth']} training step: {i['train_gflop_per_image']:.2f} GFLOP per image (fvcore: "
                f"{i['fvcore_flops_per_image'] / 1e6:.1f} M multiply-adds per forward pass).")

    def conv_share(self) -> float | None:
        """Percent of the profiled step's self time in convolutions (forward and backward)."""
        if self.profile is None or not len(self.profile):
            return None
        return float(self.profile[self.profile["op"].str.contains("convolution")]["share %"].sum())

    def _profile(self) -> str:
        conv = self.conv_share()
        if conv is None:
            return ""
        return (f"Convolutions (forward and backward) take **{conv:.0f} %** of the profiled step's time "
                f"({self.info['profile_steps']} fp32 step(s), torch.profiler); batch norm, ReLU and the element-wise "
                f"optimizer updates most of the rest; the augmentation (`aten::index`, the gather) is a small share.")

    def _evaluation(self) -> str:
        e = self.evaluation
        return (f"Evaluation rate (inference mode, batches of {e['batch_size']:,}): **{e['images_per_s']:,.0f}** images/s, so "
                f"validation + test ({e['eval_images']:,} images) take {e['eval_s']:,.1f} s against "
                f"{e['epoch_s']:,.1f} s for a {e['epoch_images']:,}-image training epoch at the library's fp32 rate: "
                f"evaluation is **{100 * e['share_of_epoch']:.0f} %** of an epoch's time.")

    def _schedule(self) -> str:
        b32, b = self.best["fp32"], self.best["any"]
        rates = f"{b32['paper_schedule_min']:,.0f} min (fastest fp32 variant, {b32['variant']})"
        if b["variant"] != b32["variant"]:
            rates += f" or {b['paper_schedule_min']:,.0f} min (fastest variant, {b['variant']})"
        return (f"For scale: at these fastest measured rates the paper's {PAPER_ITERATIONS:,} iterations of batch "
                f"{self.info['batch_size']} would take {rates} of training steps on {self.info['device_name']}.")

    def measurement_notes(self, profile: str | None = None) -> list[str]:
        """How to read the figures (Markdown sentences): where and how they were measured,
        a shared CPU's noise, a cut-down run (`profile`: the book's profile name, if any),
        and what the benchmark had to leave out."""
        i = self.info
        when = f" {i['date']} (commit {i.get('git_commit') or 'unknown'})" if i.get("date") else ""
        notes = [f"Measured{when} on **{i['device']}** ({i['device_name']}), torch {i['torch']}, {i['threads']} threads, "
                 f"ResNet-{i['depth']}, batch {i['batch_size']}; each figure is the best of {i['rounds']} timed "
                 f"windows of about {i['seconds']} s after {i['warmup']} untimed step(s). Images: {i['dataset']} (the pixels "
                 f"do not change the speed)."]
        if i["device"] == "cpu":
            notes.append("On a CPU shared with other work, repeated runs move individual figures by 10-30 %, the "
                         "ratios (measured in alternation) less.")
        missing = [name for name, ran in (("float64", (self.table["dtype"] == "float64").any()),
                                          ("torch.compile", self.table["compile"].any())) if not ran]
        if missing:
            who = f"Profile **{profile}**: a" if profile else "A"
            notes.append(f"{who} cut-down benchmark: {len(self.table)} variants, windows of about {i['seconds']} s, "
                         f"no {', no '.join(missing)}. Run `python -m resnet_cifar bench` for the full table.")
        return notes + list(self.notes)

    def notes_html(self, profile: str | None = None):
        """`measurement_notes()` as note boxes (HTML that Jupyter displays; no IPython import)."""
        from .book import admonitions
        return admonitions([_markdown_to_html(n) for n in self.measurement_notes(profile)], "note")

    def caption(self, text: str, profile: str | None = None) -> str:
        """'text — profile smoke · CIFAR-10 (JPEG q75 copy) · cpu (...)': a figure's source."""
        i = self.info
        where = ([f"profile {profile}"] if profile else []) + [i["dataset"], f"{i['device']} ({i['device_name']})"]
        return f"{text} — {' · '.join(where)}"

    def styled(self, which: str, caption: str):
        """One of the tables ('variants', 'pipelines', 'profile') as a pandas Styler for the
        book: one decimal, no index; the variants table without the dtype / channels_last /
        compile columns that its variant names already spell out (it fits a page)."""
        formats = {"variants": None, "pipelines": {"images/s": "{:,.1f}", "library / this": "{:.2f}"},
                   "profile": {"self ms / step": "{:,.1f}", "share %": "{:.1f}"}}
        if which not in formats:
            raise ValueError(f"table {which!r}: choose one of {', '.join(formats)}")
        df = {"variants": self.table, "pipelines": self.pipelines, "profile": self.profile}[which]
        if which == "variants":
            df = df.drop(columns=["dtype", "channels_last", "compile"])
        fmt = formats[which] or {c: "{:,.1f}" for c in df.columns if df[c].dtype.kind == "f"}
        return df.style.format(fmt).hide(axis="index").set_caption(caption)

    def to_dict(self) -> dict:
        """Everything measured, as JSON-ready data (`bench --json OUT` writes it)."""
        def records(df):
            return None if df is None else json.loads(df.to_json(orient="records", double_precision=15))
        return dict(info=self.info, variants=records(self.table), pipelines=records(self.pipelines),
                    ratio=self.ratio, paper=self.paper, best=self.best, peak_gflops=self.peak_gflops, evaluation=self.evaluation,
                    profile=records(self.profile), notes=self.notes)

    @classmethod
    def from_dict(cls, d: dict) -> "Benchmark":
        """A benchmark written by `to_dict` (the book shows recorded ones: `load_records`)."""
        import pandas as pd

        def frame(rows):
            return None if rows is None else pd.DataFrame(rows)
        return cls(d["info"], frame(d["variants"]), frame(d["pipelines"]), d["ratio"], d["paper"], d["best"],
                   d["peak_gflops"], d["evaluation"], frame(d["profile"]), list(d.get("notes", [])))


def load_records(folder: str | Path) -> dict[str, Benchmark]:
    """The benchmarks recorded as `bench-*.json` in `folder` (`bench --json OUT`), by file
    stem; {} when there are none."""
    return {p.stem: Benchmark.from_dict(json.loads(p.read_text())) for p in sorted(Path(folder).glob("bench-*.json"))}


def run_benchmark(device: str = "auto", batch_size: int = 128, depth: int = 32, steps: int | None = None, rounds: int = 3,
                  warmup: int = 2, seconds: float = 1.5, variants: list[Variant] | None = None, quick: bool = False, compile: bool = True,
                  workers: tuple[int, ...] | None = None, train_images: int = 10_000, data_dir: str | None = None,
                  dataset: D.CIFAR10 | None = None, threads: int | None = None, profile_steps: int = 3,
                  seed: int = 0, log: Callable[[str], None] | None = print) -> Benchmark:
    """Measure the library's pipeline against the conventional one (see the module doc).

    1. every variant: library end to end and model-only step rate (-> GFLOP/s, share of peak);
    2. paper settings (fp32, eager, NCHW): library vs baseline with num_workers in `workers`;
    3. the fastest library variant vs the conventional fp32 baseline (its best num_workers)
       and vs the baseline with that variant's step settings."""
    import pandas as pd
    log = log or (lambda text: None)
    if threads:
        torch.set_num_threads(threads)
    dev = pick_device(device)
    steps = steps or (1000 if dev.type == "cuda" else 10)
    workers = tuple(workers or default_workers())
    if quick:
        rounds, warmup, seconds = min(rounds, 2), min(warmup, 1), min(seconds, 0.5)
    variants = [parse_variant(v) if isinstance(v, str) else v
                for v in (variants or default_variants(quick, compile and not quick))]
    if not all(isinstance(v, Variant) for v in variants):
        raise TypeError("variants must be bench.Variant objects or specs such as 'bf16+cl+compile'")
    if dev.type != "cuda" and not bf16_supported(dev):
        variants = [v for v in variants if v.dtype != "bfloat16"]
    if dev.type == "mps":
        variants = [v for v in variants if v.dtype != "float64"]  # MPS has no float64
    for key, value in dict(batch_size=batch_size, steps=steps, rounds=rounds, train_images=train_images).items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{key} must be a positive integer, got {value!r}")
    if train_images < batch_size:
        raise ValueError(f"train_images ({train_images}) must be at least one batch ({batch_size})")
    ds = _bench_dataset(dataset or D.load_cifar10(data_dir), train_images)
    notes = []
    info = dict(device=str(dev), device_name=device_label(dev), torch=torch.__version__,
                threads=torch.get_num_threads(), cpu_flags=_cpu_flags() if dev.type == "cpu" else [],
                batch_size=batch_size, depth=depth, steps=steps, seconds=seconds, rounds=rounds, warmup=warmup,
                train_images=len(ds.train_labels), dataset=ds.label, workers=list(workers),
                peak_n=8192 if dev.type == "cuda" else 2048, profile_steps=profile_steps, python=platform.python_version(),
                date=time.strftime("%Y-%m-%d %H:%M"), git_commit=git_commit())
    if not bf16_supported(dev):
        notes.append(f"bf16 autocast is not supported on {dev}; its variants are left out")

    # peaks
    peak = {}
    for dt in sorted({v.dtype for v in variants} | {"float32"}):
        log(f"matmul peak {dt} ...")
        peak[dt] = matmul_peak(dev, getattr(torch, dt))

    # 1. variants (the "% of matmul peak" column is filled in at the end: see below)
    rows, trainer0, flops = [], None, 0
    for v in variants:
        log(f"variant {v.label} ...")
        try:
            trainer = _trainer(v, ds, dev, batch_size, depth, seed)
            res = _race({"library": _library_fn(trainer), "model": _model_only_fn(trainer)},
                        batch_size, steps, rounds, warmup, seconds)
        except Exception as e:  # a variant this device cannot run: say so in the table
            notes.append(f"{v.label} failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
            continue
        flops = trainer.flops
        lib, model = res["library"]["images_per_s"], res["model"]["images_per_s"]
        gflops = 6 * flops * model / 1e9
        rows.append({"variant": v.label, "dtype": v.dtype, "channels_last": v.channels_last, "compile": v.compile,
                     "library e2e images/s": lib, "model-only images/s": model,
                     "data share %": 100 * max(0.0, 1 - lib / model), "step GFLOP/s": gflops,
                     "% of matmul peak": float("nan"),
                     "warm-up s": res["library"]["warmup_s"] + res["model"]["warmup_s"]})
        log(f"  {v.label}: library {lib:,.1f} images/s, model-only {model:,.1f} images/s, {gflops:,.1f} GFLOP/s, "
            f"warm-up {rows[-1]['warm-up s']:.1f} s")
        if v == PAPER_DEFAULT:
            trainer0 = trainer
        del trainer
    table = pd.DataFrame(rows)
    if table.empty:
        raise RuntimeError("no variant ran on " + str(dev) + ": " + "; ".join(notes))
    info["fvcore_flops_per_image"] = flops
    info["train_gflop_per_image"] = 6 * flops / 1e9

    # 2. paper settings: library vs baseline
    log("paper settings: library vs the conventional pipeline ...")
    pin = dev.type == "cuda"
    lib_trainer = trainer0 or _trainer(PAPER_DEFAULT, ds, dev, batch_size, depth, seed)
    base_trainer = _trainer(PAPER_DEFAULT, ds, dev, batch_size, depth, seed)
    loaders = {w: conventional_loader(ds.train_images, ds.train_labels, batch_size, w, pin, seed) for w in workers}
    contestants = {"library": _library_fn(lib_trainer), "model": _model_only_fn(lib_trainer)}
    contestants.update({f"baseline w{w}": _baseline_fn(base_trainer, loaders[w]) for w in workers})
    res = _race(contestants, batch_size, steps, rounds, warmup, seconds)
    base_rates = {w: res[f"baseline w{w}"]["images_per_s"] for w in workers}
    best_w = max(base_rates, key=base_rates.get)
    log(f"  library {res['library']['images_per_s']:,.1f} images/s, model only {res['model']['images_per_s']:,.1f}; "
        f"conventional "
        + ", ".join(f"num_workers={w}: {r:,.1f}" for w, r in base_rates.items()))
    prow = _pipeline_rows("paper settings", PAPER_DEFAULT, res["library"]["images_per_s"], PAPER_DEFAULT,
                          base_rates)
    ratio = res["library"]["images_per_s"] / base_rates[best_w]
    paper = dict(library=res["library"]["images_per_s"], baseline=base_rates[best_w], baseline_workers=best_w,
                 baseline_by_workers=base_rates)
    # the most any data pipeline could gain with this step: data work taking no time at all
    model_rate = res["model"]["images_per_s"]
    paper.update(model_only=model_rate, ceiling=model_rate / base_rates[best_w],
                 baseline_data_share=max(0.0, 1 - base_rates[best_w] / model_rate),
                 library_data_share=max(0.0, 1 - res["library"]["images_per_s"] / model_rate))

    # evaluation cost (fp32, the paper settings)
    eval_batch = T.eval_batch_size(dev)
    n_eval = min((1 if quick else 2) * max(eval_batch, 1000), len(lib_trainer.data.train_y))
    x, y = lib_trainer.data.train_x[:n_eval], lib_trainer.data.train_y[:n_eval]
    T.evaluate(lib_trainer.model, x[:eval_batch], y[:eval_batch])  # warm-up in the timed batch shape
    _sync(dev)
    t0 = time.perf_counter()
    T.evaluate(lib_trainer.model, x, y)
    _sync(dev)
    eval_rate = n_eval / (time.perf_counter() - t0)
    epoch_s = 45_000 / res["library"]["images_per_s"]
    evaluation = dict(images_per_s=eval_rate, batch_size=eval_batch, eval_images=15_000, eval_s=15_000 / eval_rate, epoch_images=45_000,
                      epoch_s=epoch_s, share_of_epoch=(15_000 / eval_rate) / (epoch_s + 15_000 / eval_rate))

    # profile of the library's paper-settings step
    prof = None
    if profile_steps:
        log("profiling the library step ...")
        prof = profile_step(lib_trainer, profile_steps)
    del loaders, contestants, lib_trainer, base_trainer, trainer0

    # 3. the fastest fp32 variant (the paper's numerics) and the fastest of all vs the baseline
    best = {}
    by_rate = table.sort_values("library e2e images/s", ascending=False)
    picks = [by_rate[by_rate["dtype"] == "float32"]["variant"].iloc[0], by_rate["variant"].iloc[0]]
    for kind, label in zip(("fp32", "any"), picks):
        fv = next(v for v in variants if v.label == label)
        if label in (b_["variant"] for b_ in best.values()):
            best[kind] = dict(best["fp32"])
            continue
        if fv == PAPER_DEFAULT:
            best[kind] = dict(variant=fv.label, library=paper["library"], baseline_same_settings=paper["baseline"],
                              baseline_same_workers=best_w, conventional=paper["baseline"],
                              ratio_vs_conventional=ratio, ratio_same_settings=ratio)
        else:
            log(f"fastest {'fp32 ' if kind == 'fp32' else ''}variant ({fv.label}) vs the baseline ...")
            best[kind], rows_ = _versus(fv, ds, dev, batch_size, depth, seed, workers, best_w, pin,
                                       dict(steps=steps, rounds=rounds, warmup=warmup, seconds=seconds))
            prow += rows_
            log(f"  library {best[kind]['library']:,.1f} images/s; conventional, same settings "
                f"{best[kind]['baseline_same_settings']:,.1f}; conventional fp32 {best[kind]['conventional']:,.1f}")
        best[kind]["paper_schedule_min"] = PAPER_ITERATIONS * batch_size / best[kind]["library"] / 60
    pipelines = pd.DataFrame(prow)
    # the peaks again: a machine that other work slowed at the start must not inflate the shares
    for dt in peak:
        peak[dt] = max(peak[dt], matmul_peak(dev, getattr(torch, dt)))
    table["% of matmul peak"] = [100 * g / peak[d] for g, d in zip(table["step GFLOP/s"], table["dtype"])]
    return Benchmark(info, table, pipelines, ratio, paper, best, peak, evaluation, prof, notes)


def _versus(fv: Variant, ds, dev, batch_size, depth, seed, workers, best_w, pin, timing) -> tuple[dict, list]:
    """Library with variant `fv` vs the conventional pipeline with the same step settings
    (num_workers in `workers`) and vs the conventional fp32 eager one (`best_w` workers)."""
    lib_trainer = _trainer(fv, ds, dev, batch_size, depth, seed)
    conv_trainer = _trainer(PAPER_DEFAULT, ds, dev, batch_size, depth, seed)
    same_trainer = _trainer(fv, ds, dev, batch_size, depth, seed)
    conv_loader = conventional_loader(ds.train_images, ds.train_labels, batch_size, best_w, pin, seed)
    same_loaders = {w: conventional_loader(ds.train_images, ds.train_labels, batch_size, w, pin, seed)
                    for w in workers}
    contestants = {"library": _library_fn(lib_trainer), "conventional": _baseline_fn(conv_trainer, conv_loader)}
    contestants.update({f"same w{w}": _baseline_fn(same_trainer, same_loaders[w]) for w in workers})
    res = _race(contestants, batch_size, **timing)
    same_rates = {w: res[f"same w{w}"]["images_per_s"] for w in workers}
    same_w = max(same_rates, key=same_rates.get)
    lib, conv = res["library"]["images_per_s"], res["conventional"]["images_per_s"]
    name = f"fastest {'fp32 ' if fv.dtype == 'float32' else ''}variant"
    rows = _pipeline_rows(name, fv, lib, fv, same_rates)
    rows += _pipeline_rows(name, fv, lib, PAPER_DEFAULT, {best_w: conv}, library_row=False)
    return dict(variant=fv.label, library=lib, baseline_same_settings=same_rates[same_w],
                baseline_same_workers=same_w, conventional=conv, ratio_vs_conventional=lib / conv,
                ratio_same_settings=lib / same_rates[same_w]), rows


def _pipeline_rows(name: str, variant: Variant, library: float, base_variant: Variant, base_rates: dict,
                   library_row: bool = True) -> list[dict]:
    rows = [dict(round=name, pipeline="library", step=variant.label, num_workers="", **{"images/s": library,
                 "library / this": 1.0})] if library_row else []
    return rows + [dict(round=name, pipeline="conventional", step=base_variant.label, num_workers=str(w),
                        **{"images/s": r, "library / this": library / r}) for w, r in base_rates.items()]


@contextlib.contextmanager
def _native_stderr_silenced():
    """File descriptor 2 to /dev/null for a while: torch.profiler's C++ side prints
    'profiler_start/stop' and (without a GPU) 'gpuGetDeviceCount failed' lines there,
    which a notebook would show in the book."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def profile_step(trainer: Harness, steps: int = 3, top: int = 12):
    """torch.profiler over `steps` library steps: the ops with the most self time (CPU, or
    CUDA on a GPU), as a DataFrame with each op's share of the total."""
    import pandas as pd
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if trainer.device.type == "cuda" else [])
    with _native_stderr_silenced(), profile(activities=activities) as prof:
        for i in range(steps):
            trainer.step(trainer.steps + i)
        _sync(trainer.device, trainer)
    key = "self_device_time_total" if trainer.device.type == "cuda" else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if getattr(e, key, 0) > 0]
    total = sum(getattr(e, key) for e in events) or 1
    events.sort(key=lambda e: getattr(e, key), reverse=True)
    return pd.DataFrame([{"op": e.key, "calls": e.count, "self ms / step": getattr(e, key) / 1000 / steps,
                          "share %": 100 * getattr(e, key) / total} for e in events[:top]])


# ---------------------------------------------------------------- command line

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Training throughput (images/s, end to end) of this library's pipeline vs the "
                          "conventional torchvision/PIL/DataLoader pipeline, the model-only step rate, its share "
                          "of a measured matmul peak, and a table of variants (fp32/fp64/bf16 autocast, "
                          "channels_last, torch.compile). See `pydoc resnet_cifar.bench`.")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:k] | mps (default: auto)")
    parser.add_argument("--batch-size", type=int, default=128, help="(default: 128, the paper's)")
    parser.add_argument("--depth", type=int, default=32, help="ResNet depth (default: 32)")
    parser.add_argument("--seconds", type=float, default=1.5, help="length of a timed window (default: 1.5)")
    parser.add_argument("--steps", "--iterations", dest="steps", type=int, default=None,
                        help="at most this many steps in a timed window (default: 10 on a CPU, 1000 on a GPU)")
    parser.add_argument("--variants", nargs="+", type=_variant_arg, default=None, metavar="SPEC",
                        help="step variants to time, e.g. fp32 fp32+cl bf16+cl+compile (default: fp32, fp32+cl, "
                             "fp64, bf16, bf16+cl, fp32+compile, fp32+cl+compile, bf16+cl+compile)")
    parser.add_argument("--rounds", type=int, default=3, help="timed windows per measurement; the best counts "
                                                              "(default: 3)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default: 2)")
    parser.add_argument("--quick", action="store_true", help="2 windows of 0.5 s, no fp64, no torch.compile")
    parser.add_argument("--no-compile", dest="compile", action="store_false",
                        help="leave out the torch.compile variants (slow to warm up on a CPU)")
    parser.add_argument("--workers", type=int, nargs="+", default=None,
                        help="DataLoader num_workers tried for the baseline (default: 0 1 2, and 4 8 where there "
                             "are more cores)")
    parser.add_argument("--train-images", type=int, default=10_000, help="training images used (default: 10000)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--profile-steps", type=int, default=3, help="library steps under torch.profiler (0: off)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--json", default=None, metavar="OUT", help="also write the results as JSON to OUT")


def _variant_arg(spec: str) -> Variant:
    try:
        return parse_variant(spec)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def main(args) -> int:
    result = run_benchmark(device=args.device, batch_size=args.batch_size, depth=args.depth, steps=args.steps,
                           seconds=args.seconds, rounds=args.rounds, warmup=args.warmup, quick=args.quick, compile=args.compile,
                           variants=args.variants, workers=args.workers, train_images=args.train_images, data_dir=args.data_dir,
                           threads=args.threads, profile_steps=args.profile_steps,
                           log=lambda text: print(text, file=sys.stderr, flush=True))
    print(result.report())
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result.to_dict(), indent=2, default=str))
    return 0
