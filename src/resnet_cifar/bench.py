"""Training throughput: `python -m resnet_cifar bench` (the book's Performance appendix).

A short copy of the training loop, timed; it returns data (the JSON record), and the appendix
writes its sentences from `summarize(record)`. Per step variant, in images/s:

library       `data.TrainBatches` + `train.train_step`, as `train()` runs an iteration
model         `train_step` alone on one fixed batch; data: `TrainBatches` alone
conventional  a PIL image per item (as torchvision's CIFAR10), RandomCrop(32, padding=4),
              RandomHorizontalFlip, ToTensor, Normalize, a DataLoader, then the same step

Each figure is the median of `rounds` windows of about `seconds` after `warmup` steps, and
the record keeps every round's figure; a variant's contestants (its library, model-only,
data-only, conventional and matmul steps, and for the first variant the evaluation) take
turns window by window, so other work on the machine slows them alike. Ratios are formed
only between figures of the same rounds; a figure whose rounds differ by more than
`measure.SPREAD_LIMIT` (max / min) is flagged, marked in the tables and left out of the
sentences of `summarize`. Numerics (`devices.set_numerics`, recorded per variant): float32 is true fp32 (TF32
off), tf32 lets CUDA round matmul and convolution inputs, bfloat16 is autocast. Variants
the device cannot run natively are skipped with the reason, never timed. The step's share
of a matmul peak in the same numerics uses `measure.macs_per_image`: a step is about three
forward passes, 6 x its multiply-adds in FLOPs per image; the matmul is timed in the
variant's rounds.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import platform
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from . import data as D
from .config import TrainConfig
from .devices import cpu_features, device_label, native_bf16, pick_device, set_numerics
from .measure import (LOAD_LIMIT, conventional_loader, load_average, macs_per_image, matmul_step,
                      measure_concurrent, other_load_now, profile_steps, race)
from .bench_summary import tables
from .records import BENCH_FORMAT
from .runs import git_commit
from .train import build_training, eval_batch_size, evaluate, step_dtypes, train_step

DTYPES = {"fp32": "float32", "tf32": "tf32", "fp64": "float64", "bf16": "bfloat16"}
DEFAULT_VARIANTS = ("fp32", "fp32+cl", "tf32", "tf32+cl", "fp64", "bf16", "bf16+cl", "fp32+cl+compile",
                    "tf32+cl+compile", "bf16+cl+compile", "bf16+cl+cudagraphs")
QUICK_VARIANTS = ("fp32", "fp32+cl", "tf32+cl", "bf16+cl")


@dataclasses.dataclass(frozen=True)
class Variant:
    """How the step runs. `compile`: None (eager), 'default' or 'reduce-overhead' (CUDA graphs)."""
    dtype: str = "float32"
    channels_last: bool = False
    compile: str | None = None

    @property
    def label(self) -> str:
        extra = {None: [], "default": ["compile"], "reduce-overhead": ["cudagraphs"]}[self.compile]
        return "+".join([{v: k for k, v in DTYPES.items()}[self.dtype]] + ["cl"] * self.channels_last + extra)


def parse_variant(spec: str | Variant) -> Variant:
    """'fp32', 'tf32', 'fp64' or 'bf16', then optionally '+cl' (channels_last) and '+compile'
    or '+cudagraphs' (torch.compile, mode reduce-overhead): 'bf16+cl+compile'."""
    if isinstance(spec, Variant):
        return spec
    head, *extras = [p.strip().lower() for p in spec.split("+")]
    extras_ok = set(extras) <= {"cl", "compile", "cudagraphs"} and not {"compile", "cudagraphs"} <= set(extras)
    if head not in DTYPES or not extras_ok:
        raise ValueError(f"variant {spec!r}: write fp32, tf32, fp64 or bf16, then optionally +cl and +compile or "
                         f"+cudagraphs (e.g. bf16+cl+compile)")
    return Variant(DTYPES[head], "cl" in extras, "reduce-overhead" if "cudagraphs" in extras else
                   "default" if "compile" in extras else None)


def skip_reason(variant: Variant, device: torch.device) -> str | None:
    """Why `variant` is not timed on `device` (None: it runs natively there)."""
    if variant.dtype == "bfloat16" and not native_bf16(device):
        return (f"{device_label(device)} has neither AVX-512-BF16 nor AMX: PyTorch would emulate bf16, many times "
                f"slower than fp32" if device.type == "cpu" else f"{device_label(device)} has no native bf16")
    if variant.dtype == "tf32" and device.type != "cuda":
        return f"TF32 is a CUDA tensor-core format; on {device.type} fp32 is the only single precision"
    if variant.compile == "reduce-overhead" and device.type != "cuda":
        return "CUDA graphs need a CUDA device"
    if variant.dtype == "float64" and device.type == "mps":
        return "MPS has no float64"
    return None


# ---------------------------------------------------------------- set-up

def bench_dataset(dataset: D.CIFAR10, train_images: int) -> D.CIFAR10:
    """The first `train_images` training images (no validation split) and a token test set."""
    n = min(train_images, len(dataset.train_labels))
    return dataclasses.replace(dataset, train_images=dataset.train_images[:n], train_labels=dataset.train_labels[:n],
                               test_images=dataset.test_images[:10], test_labels=dataset.test_labels[:10])


def setup(variant: Variant, dataset: D.CIFAR10, device: torch.device, batch_size: int, depth: int, seed: int = 0):
    """What `train()` steps with, built through the same public calls (numerics, data on the
    device, batches, model, optimizer); `library()`, `model_only()`, `data_only()`: one step each."""
    config = TrainConfig(depth=depth, batch_size=batch_size, val_size=0, device=str(device), seed=seed,
                         dtype=variant.dtype, channels_last=variant.channels_last, compile=variant.compile is not None,
                         compile_mode=variant.compile or "default", progress="none").validate()
    numerics = set_numerics(config.dtype, device)
    dtype, autocast = step_dtypes(config)
    data = D.prepare_data(config, device, dataset)
    batches = D.TrainBatches(data, config, dtype=dtype)
    model, step_model, optimizer, _ = build_training(config, device, 1, dtype)
    s = SimpleNamespace(config=config, numerics=numerics, device=device, dtype=dtype, data=data, model=model)
    s.step = lambda x, y: train_step(step_model, optimizer, x, y, config.lr, autocast)
    counter, fixed = itertools.count(), batches(0)
    s.library = lambda: s.step(*batches(next(counter)))
    s.model_only = lambda: s.step(*fixed)
    s.data_only = lambda: batches(next(counter))
    return s


def library_step(*args):
    """`setup(*args).library`: a picklable way to build a library step in another process."""
    return setup(*args).library


def _conventional_step(s, loader):
    memory_format = torch.channels_last if s.config.channels_last else torch.contiguous_format
    batches = itertools.chain.from_iterable(itertools.repeat(loader))

    def step():
        x, y = next(batches)
        s.step(x.to(s.device, non_blocking=True).to(s.dtype, memory_format=memory_format),
               y.to(s.device, non_blocking=True))
    return step


def evaluation_step(s):
    """(step, images per call, batch size): `train.evaluate` (inference mode, its batch size)
    on two of its batches of training images."""
    batch, bf16 = eval_batch_size(s.device), s.config.dtype == "bfloat16"
    n = min(2 * batch, len(s.data.train_y))
    x, y = s.data.train_x[:n].to(s.dtype), s.data.train_y[:n]
    return (lambda: evaluate(s.model, x, y, bf16=bf16)), n, batch


# ---------------------------------------------------------------- the benchmark

def run_benchmark(device: str = "auto", batch_size: int = 128, depth: int = 32, variants=DEFAULT_VARIANTS,
                  conventional=("fp32",), workers=None, seconds: float = 1.5, rounds: int = 3, warmup: int = 2,
                  train_images: int = 10_000, data_dir: str | None = None, dataset: D.CIFAR10 | None = None,
                  threads: int | None = None, profile: int = 3, concurrent: int = 0, concurrent_variant=None,
                  seed: int = 0, log=None) -> dict:
    """Measure each of `variants` (specs such as 'bf16+cl+compile'): library, model-only and
    data-only rates, and for those in `conventional` the conventional pipeline too (each of
    `workers`; default 0, 1, 2, and 4, 8 where there are more cores), in the same rounds.
    The first variant is also profiled (`profile` steps) and its evaluation rate measured;
    `concurrent` = K > 1 measures K runs at once against one (of `concurrent_variant`, default
    the first variant measured). Returns the record."""
    log = log or (lambda text: None)
    if threads:
        torch.set_num_threads(threads)
    dev = pick_device(device)
    for key, value in dict(batch_size=batch_size, rounds=rounds, train_images=train_images).items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{key} must be a positive integer, got {value!r}")
    if train_images < batch_size:
        raise ValueError(f"train_images ({train_images}) must be at least one batch ({batch_size})")
    variants, conventional = [parse_variant(v) for v in variants], {parse_variant(v) for v in conventional}
    workers = tuple((0, 1, 2) + tuple(w for w in (4, 8) if w < (os.cpu_count() or 1)) if workers is None else workers)
    ds = bench_dataset(dataset or D.load_cifar10(data_dir), train_images)
    macs = macs_per_image(depth)
    info = dict(device=str(dev), device_name=device_label(dev), torch=torch.__version__,
                python=platform.python_version(),
                cpu_features=list(cpu_features()) if dev.type == "cpu" else [], threads=torch.get_num_threads(),
                cpu_count=os.cpu_count(), load_average=[load_average()], batch_size=batch_size, depth=depth,
                train_images=len(ds.train_labels), dataset=ds.label, seconds=seconds, rounds=rounds, warmup=warmup,
                workers=list(workers), macs_per_image=macs, train_gflop_per_image=6 * macs / 1e9,
                peak_n=8192 if dev.type == "cuda" else 2048, date=time.strftime("%Y-%m-%d %H:%M"),
                git_commit=git_commit(),
                # other processes' CPU use (cores): a second before, then during each variant's rounds
                other_load=dict(before=other_load_now(), during={}, limit=LOAD_LIMIT))
    peaks = {}
    record = dict(format=BENCH_FORMAT, info=info, peaks=peaks, variants=[], conventional=[], skipped=[], errors=[],
                  evaluation=None, profile=None, concurrent=None, notes=[])
    runnable = []
    for v in variants:
        reason = skip_reason(v, dev)
        if reason:
            record["skipped"].append(dict(variant=v.label, reason=reason))
            log(f"{v.label}: skipped ({reason})")
        else:
            runnable.append(v)
    for v in runnable:
        log(f"{v.label} ...")
        try:
            s = setup(v, ds, dev, batch_size, depth, seed)
            steps = dict(library=s.library, model=s.model_only, data=s.data_only)
            steps.update({f"conventional {w}": _conventional_step(s, conventional_loader(
                ds.train_images, ds.train_labels, batch_size, w, dev.type == "cuda", seed))
                for w in (workers if v in conventional else ())})
            images = dict.fromkeys(steps, batch_size)
            steps["matmul"], images["matmul"] = matmul_step(dev, v.dtype)  # the peak, in the same numerics
            if record["evaluation"] is None:
                steps["evaluation"], images["evaluation"], eval_batch = evaluation_step(s)
            res = race(steps, images, dev, rounds, warmup, seconds)
            info["other_load"]["during"][v.label] = res["library"]["other_cores"]
            del steps  # the DataLoaders' worker processes end with their loaders
        except Exception as e:  # a variant this device or PyTorch build cannot run: recorded, not fatal
            record["errors"].append(dict(variant=v.label, error=f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"))
            log(f"  failed: {record['errors'][-1]['error']}")
            continue
        lib, model, data = (res[k]["images_per_s"] for k in ("library", "model", "data"))
        gflops, matmul = 6 * macs * model / 1e9, res["matmul"]["images_per_s"] / 1e9
        record["variants"].append(dict(
            variant=v.label, dtype=v.dtype, channels_last=v.channels_last, compile=v.compile, numerics=s.numerics,
            library=lib, model=model, data_ms=1000 * batch_size / data, step_ms=1000 * batch_size / lib,
            data_share=100 * lib / data, gflops=gflops, matmul_gflops=matmul, peak_share=100 * gflops / matmul,
            warmup_s=res["library"]["warmup_s"] + res["model"]["warmup_s"],
            rounds=dict(library=res["library"]["rates"], model=res["model"]["rates"], data=res["data"]["rates"],
                        matmul=[r / 1e9 for r in res["matmul"]["rates"]])))
        record["conventional"] += [dict(variant=v.label, num_workers=w, library=lib,
                                        images_per_s=res[f"conventional {w}"]["images_per_s"],
                                        rounds=res[f"conventional {w}"]["rates"])
                                   for w in (workers if v in conventional else ())]
        peaks[v.dtype] = max(peaks.get(v.dtype, 0.0), matmul)
        log("  " + ", ".join(f"{k}: {r['images_per_s']:,.1f}" for k, r in res.items() if k != "matmul")
            + f" images/s; matmul {matmul:,.0f} GFLOP/s; rounds max/min up to "
            + f"{max(r['spread'] or 1.0 for r in res.values()):.2f}")
        if record["evaluation"] is None:
            e = res["evaluation"]
            record["evaluation"] = dict(variant=v.label, images_per_s=e["images_per_s"], batch_size=eval_batch,
                                        images=images["evaluation"], rounds=e["rates"])
            record["profile"] = profile_steps(s.library, dev, profile) if profile else None
        del s
    if concurrent > 1 and record["variants"]:
        log(f"{concurrent} runs at once ...")
        v = parse_variant(concurrent_variant or record["variants"][0]["variant"])
        record["concurrent"] = dict(variant=v.label, **measure_concurrent(
            concurrent, library_step, (v, ds, dev, batch_size, depth, seed), dev, batch_size, seconds, max(warmup, 1)))
    set_numerics("float32", dev)
    info["load_average"].append(load_average())
    return record


# ---------------------------------------------------------------- command line

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Training throughput (images/s) of this library's pipeline and of the conventional "
                          "torchvision/PIL/DataLoader one, the model-only step, the data work per batch and the share "
                          "of a measured matmul peak, per step variant. See `pydoc resnet_cifar.bench`.")
    add = parser.add_argument
    add("--device", default="auto", help="auto | cpu | cuda[:k] | mps (default: auto)")
    add("--batch-size", type=int, default=128, help="(default: 128, the paper's)")
    add("--depth", type=int, default=32, help="ResNet depth (default: 32)")
    add("--variants", nargs="+", type=_variant, default=None, metavar="SPEC",
        help=f"step variants (default: {' '.join(DEFAULT_VARIANTS)}; with --fused, none unless given); those the "
             f"device cannot run natively are skipped with the reason")
    add("--conventional", nargs="*", type=_variant, default=["fp32"], metavar="SPEC",
        help="variants also timed with the conventional pipeline (default: fp32)")
    add("--workers", type=int, nargs="+", default=None, help="its DataLoader num_workers (default: 0 1 2, 4 8)")
    add("--seconds", type=float, default=1.5, help="length of a timed window (default: 1.5)")
    add("--rounds", type=int, default=3, help="timed windows per figure; the median counts, the record keeps "
                                               "each (default: 3)")
    add("--warmup", type=int, default=2, help="untimed steps first (default: 2)")
    add("--quick", action="store_true", help=f"variants {' '.join(QUICK_VARIANTS)}, 3 windows of 0.5 s, no profile")
    add("--train-images", type=int, default=10_000, help="training images used (default: 10000)")
    add("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    add("--profile", type=int, default=3, metavar="STEPS", help="library steps under torch.profiler (0: none)")
    add("--concurrent", type=int, default=0, metavar="K", help="also time K runs at once against one (default: off)")
    add("--concurrent-variant", type=_variant, default=None, metavar="SPEC", help="their variant (default: the first)")
    add("--fused", type=int, nargs="+", action="extend", default=None, metavar="N",
        help="instead: the images/s of N runs fused into one model (fused.py) against one alone, per N "
             "(e.g. --fused 1 4 16 64); with --json, merged into OUT's `fused` section")
    add("--data-dir", default=None)
    add("--json", default=None, metavar="OUT", help="write the record as JSON to OUT")


def _variant(spec: str) -> Variant:
    try:
        return parse_variant(spec)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def main(args, fused: list[dict] | None = None) -> int:
    """`bench`: the step variants (`fused`: bench_fused's rows, added to the record)."""
    settings = {k: getattr(args, k) for k in ("device", "batch_size", "depth", "conventional", "workers",
                                              "seconds", "rounds", "warmup", "train_images", "data_dir", "threads",
                                              "profile", "concurrent", "concurrent_variant")}
    settings["variants"] = args.variants or (QUICK_VARIANTS if args.quick else list(DEFAULT_VARIANTS))
    if args.quick:
        settings.update(seconds=min(args.seconds, 0.5), rounds=min(args.rounds, 3), profile=0)
    record = run_benchmark(**settings, log=lambda text: print(text, file=sys.stderr, flush=True))
    import pandas as pd
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.float_format", "{:,.2f}".format):
        print(f"{record['info']['device_name']}, torch {record['info']['torch']}, ResNet-{args.depth}, batch "
              f"{args.batch_size}")
        for name, df in tables(record).items():
            print("" if df.empty else f"\n{name}:\n{df.to_string(index=False)}")
    print("".join(f"skipped {s['variant']}: {s['reason']}\n" for s in record["skipped"])
          + "".join(f"failed {e['variant']}: {e['error']}\n" for e in record["errors"]), end="")
    if record["concurrent"]:
        c = record["concurrent"]
        print(f"{c['runs']} runs at once: {c['total']:,.1f} images/s in all; one alone: {c['single']:,.1f} "
              f"({c['speedup']:.2f}x)")
    if fused is not None:
        record["fused"] = fused
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(record, indent=1))
    return 0
