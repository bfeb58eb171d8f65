"""Training throughput: `python -m resnet_cifar bench` (the book's Performance appendix).

A short copy of the training loop, timed; it returns data (the JSON record), and the appendix
writes its sentences from `summarize(record)`. Per step variant, in images/s:

library       `data.TrainBatches` + `train.train_step`, as `train()` runs an iteration
model         `train_step` alone on one fixed batch; data: `TrainBatches` alone
conventional  a PIL image per item (as torchvision's CIFAR10), RandomCrop(32, padding=4),
              RandomHorizontalFlip, ToTensor, Normalize, a DataLoader, then the same step

Each figure is the best of `rounds` windows of about `seconds` after `warmup` steps; a
variant's contestants take turns window by window, so other work on the machine slows them
alike. Numerics (`devices.set_numerics`, recorded per variant): float32 is true fp32 (TF32
off), tf32 lets CUDA round matmul and convolution inputs, bfloat16 is autocast. Variants
the device cannot run natively are skipped with the reason, never timed. The step's share
of a matmul peak in the same numerics uses `measure.macs_per_image`: a step is about three
forward passes, 6 x its multiply-adds in FLOPs per image.
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
from .measure import (conventional_loader, load_average, macs_per_image, matmul_peak, measure_concurrent,
                      profile_steps, race, sync)
from .runs import git_commit
from .train import build_training, eval_batch_size, evaluate, step_dtypes, train_step

FORMAT = 2  # the record's layout (book/records/bench-*.json)
PAPER_ITERATIONS = TrainConfig.iterations  # the recipe's default
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


def evaluation_rate(s) -> dict:
    """Images/s of `train.evaluate` (inference mode, its batch size) on training images."""
    batch, bf16 = eval_batch_size(s.device), s.config.dtype == "bfloat16"
    n = min(2 * batch, len(s.data.train_y))
    x, y = s.data.train_x[:n].to(s.dtype), s.data.train_y[:n]
    evaluate(s.model, x[:batch], y[:batch], bf16=bf16)  # warm-up in the timed batch shape
    sync(s.device)
    t0 = time.perf_counter()
    evaluate(s.model, x, y, bf16=bf16)
    sync(s.device)
    return dict(images_per_s=n / (time.perf_counter() - t0), batch_size=batch, images=n)


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
                git_commit=git_commit())
    peaks = {}
    record = dict(format=FORMAT, info=info, peaks=peaks, variants=[], conventional=[], skipped=[], errors=[],
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
            res = race(steps, batch_size, dev, rounds, warmup, seconds)
            del steps  # the DataLoaders' worker processes end with their loaders
        except Exception as e:  # a variant this device or PyTorch build cannot run: recorded, not fatal
            record["errors"].append(dict(variant=v.label, error=f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"))
            log(f"  failed: {record['errors'][-1]['error']}")
            continue
        lib, model, data = (res[k]["images_per_s"] for k in ("library", "model", "data"))
        record["variants"].append(dict(
            variant=v.label, dtype=v.dtype, channels_last=v.channels_last, compile=v.compile, numerics=s.numerics,
            library=lib, model=model, data_ms=1000 * batch_size / data, step_ms=1000 * batch_size / lib,
            data_share=100 * lib / data, gflops=6 * macs * model / 1e9, peak_share=None,
            warmup_s=res["library"]["warmup_s"] + res["model"]["warmup_s"]))
        record["conventional"] += [dict(variant=v.label, num_workers=w, library=lib,
                                        images_per_s=res[f"conventional {w}"]["images_per_s"])
                                   for w in (workers if v in conventional else ())]
        peaks[v.dtype] = max(peaks.get(v.dtype, 0.0), matmul_peak(dev, v.dtype))  # best of this and later measurements
        log("  " + ", ".join(f"{k}: {r['images_per_s']:,.1f}" for k, r in res.items()) + " images/s")
        if record["evaluation"] is None:
            record["evaluation"] = evaluation_rate(s)
            record["profile"] = profile_steps(s.library, dev, profile) if profile else None
        del s
    if concurrent > 1 and record["variants"]:
        log(f"{concurrent} runs at once ...")
        v = parse_variant(concurrent_variant or record["variants"][0]["variant"])
        record["concurrent"] = dict(variant=v.label, **measure_concurrent(
            concurrent, library_step, (v, ds, dev, batch_size, depth, seed), dev, batch_size, seconds, max(warmup, 1)))
    for numerics in peaks:  # again at the end: a machine busy earlier must not inflate the shares
        peaks[numerics] = max(peaks[numerics], matmul_peak(dev, numerics))
    for row in record["variants"]:
        row["peak_share"] = 100 * row["gflops"] / peaks[row["dtype"]]
    set_numerics("float32", dev)
    info["load_average"].append(load_average())
    return record


# ---------------------------------------------------------------- what the appendix reads

def summarize(record: dict, base: str = "fp32") -> dict:
    """The figures the appendix's sentences quote, as plain numbers and names (None where the
    record has none). `base`: the variant compared with the conventional pipeline."""
    rows, best = {r["variant"]: r for r in record["variants"]}, {}
    for c in record["conventional"]:  # the fastest num_workers per variant
        if c["images_per_s"] > best.get(c["variant"], {}).get("images_per_s", 0):
            best[c["variant"]] = c
    base = base if base in rows else next(iter(best or rows), None)
    b, c = rows.get(base, {}), best.get(base, {})
    fastest32 = max((r for r in rows.values() if r["dtype"] == "float32"), key=lambda r: r["library"], default={})
    fastest = max(rows.values(), key=lambda r: r["library"], default={})
    worst = max((r for r in rows.values() if r.get("data_share") is not None), key=lambda r: r["data_share"],
                default={})
    info, ev = record["info"], record.get("evaluation") or {}
    prof, conc = record.get("profile") or {}, record.get("concurrent") or {}

    def ratio(a, z):
        return a / z if a and z else None

    def schedule(rate):
        return PAPER_ITERATIONS * info["batch_size"] / rate / 60 if rate else None
    eval_s, epoch_s = ratio(15_000, ev.get("images_per_s")), ratio(45_000, c.get("library"))
    return dict(
        device=info["device"], device_name=info["device_name"], date=info["date"], commit=info.get("git_commit"),
        threads=info["threads"],
        load=max((round(x, 1) for x in info.get("load_average", []) if x is not None), default=None),
        base=base, library=c.get("library"), conventional=c.get("images_per_s"), workers=c.get("num_workers"),
        ratio=ratio(c.get("library"), c.get("images_per_s")), model=b.get("model"),
        ceiling=ratio(b.get("model"), c.get("images_per_s")), data_ms=b.get("data_ms"), data_share=b.get("data_share"),
        max_data_share=worst.get("data_share"), max_data_share_variant=worst.get("variant"),
        gflops=b.get("gflops"), peak_share=b.get("peak_share"), peak_float32=record["peaks"].get("float32"),
        train_gflop_per_image=info.get("train_gflop_per_image"),
        fastest_fp32=fastest32.get("variant"), fastest_fp32_rate=fastest32.get("library"),
        fastest=fastest.get("variant"), fastest_rate=fastest.get("library"),
        fastest_vs_conventional=ratio(fastest.get("library"), c.get("images_per_s")),
        schedule_fp32_min=schedule(fastest32.get("library")), schedule_fastest_min=schedule(fastest.get("library")),
        skipped="; ".join(f"{s['variant']} ({s['reason']})" for s in record["skipped"]) or "none",
        errors="; ".join(f"{e['variant']} ({e['error']})" for e in record.get("errors", [])) or "none",
        conv_share=prof.get("by_kind", {}).get("convolution"), profile_time=prof.get("time"),
        eval_rate=ev.get("images_per_s"), eval_share=ratio(eval_s, eval_s + epoch_s) if eval_s and epoch_s else None,
        concurrent_runs=conc.get("runs"), concurrent_speedup=conc.get("speedup"))


def tables(record: dict) -> dict:
    """The record's tables as DataFrames: 'variants', 'conventional', 'profile' (its top rows)."""
    import pandas as pd
    names = dict(variant="variant", library="library images/s", model="model-only images/s",
                 data_ms="data ms/batch", data_share="data % of step", gflops="step GFLOP/s",
                 peak_share="% of matmul peak", warmup_s="warm-up s")
    conv = [{"variant": c["variant"], "num_workers": c["num_workers"], "conventional images/s": c["images_per_s"],
             "library images/s": c["library"], "library / conventional": c["library"] / c["images_per_s"]}
            for c in record["conventional"]]
    prof = [{"op": r["name"], "kind": r["kind"], "calls": r["calls"], "ms / step": r["ms_per_step"],
             "share %": r["share"]}
            for r in (record.get("profile") or {}).get("rows", [])]
    return dict(variants=pd.DataFrame([{new: r.get(old) for old, new in names.items()} for r in record["variants"]]),
                conventional=pd.DataFrame(conv), profile=pd.DataFrame(prof))


def load_records(folder: str | Path) -> dict[str, dict]:
    """The records that `bench --json` wrote as `bench-*.json` in `folder`, by file stem ({} when none)."""
    records = {p.stem: json.loads(p.read_text()) for p in sorted(Path(folder).glob("bench-*.json"))}
    for name, rec in records.items():
        if rec.get("format") != FORMAT:
            raise ValueError(f"{name}.json is not a benchmark record of format {FORMAT}: measure it again with "
                             f"`python -m resnet_cifar bench --json {name}.json`")
    return records


# ---------------------------------------------------------------- command line

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Training throughput (images/s) of this library's pipeline and of the conventional "
                          "torchvision/PIL/DataLoader one, the model-only step, the data work per batch and the share "
                          "of a measured matmul peak, per step variant. See `pydoc resnet_cifar.bench`.")
    add = parser.add_argument
    add("--device", default="auto", help="auto | cpu | cuda[:k] | mps (default: auto)")
    add("--batch-size", type=int, default=128, help="(default: 128, the paper's)")
    add("--depth", type=int, default=32, help="ResNet depth (default: 32)")
    add("--variants", nargs="+", type=_variant, default=list(DEFAULT_VARIANTS), metavar="SPEC",
        help=f"step variants (default: {' '.join(DEFAULT_VARIANTS)}); those the device cannot run natively are "
             f"skipped with the reason")
    add("--conventional", nargs="*", type=_variant, default=["fp32"], metavar="SPEC",
        help="variants also timed with the conventional pipeline (default: fp32)")
    add("--workers", type=int, nargs="+", default=None, help="its DataLoader num_workers (default: 0 1 2, 4 8)")
    add("--seconds", type=float, default=1.5, help="length of a timed window (default: 1.5)")
    add("--rounds", type=int, default=3, help="timed windows per figure; the best counts (default: 3)")
    add("--warmup", type=int, default=2, help="untimed steps first (default: 2)")
    add("--quick", action="store_true", help=f"variants {' '.join(QUICK_VARIANTS)}, 2 windows of 0.5 s, no profile")
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


def main(args) -> int:
    if args.fused:
        from .fused import bench_main
        return bench_main(args)
    settings = {k: getattr(args, k) for k in ("device", "batch_size", "depth", "variants", "conventional", "workers",
                                              "seconds", "rounds", "warmup", "train_images", "data_dir", "threads",
                                              "profile", "concurrent", "concurrent_variant")}
    if args.quick:
        settings.update(seconds=min(args.seconds, 0.5), rounds=min(args.rounds, 2), profile=0,
                        variants=QUICK_VARIANTS if args.variants == list(DEFAULT_VARIANTS) else args.variants)
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
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(record, indent=1))
    return 0
