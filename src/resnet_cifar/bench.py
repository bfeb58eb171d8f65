"""Training throughput: `python -m resnet_cifar bench`, a short copy of the training loop, timed.

Per step variant (dtype, memory format, torch.compile), in images/s: the library (data.TrainBatches
then train.train_step), the step alone, the data work alone, and the conventional pipeline
(torchvision's transforms and a DataLoader, then the same step), in turns window by window for
`rounds` rounds; a figure is its rounds' median. `--fused N`: N runs as one model (fused.py).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from . import data as D
from .config import TrainConfig
from .devices import device_label, native_bf16, pick_device, set_numerics
from .fused import FusedModel, check_fuse
from .records import BENCH_FORMAT
from .runs import git_commit
from .train import build_training, step_dtypes, train_step

DTYPES = {"fp32": "float32", "tf32": "tf32", "fp64": "float64", "bf16": "bfloat16"}
MODES = {"compile": "default", "cudagraphs": "reduce-overhead"}  # torch.compile's modes
DEFAULT_VARIANTS = ("fp32", "fp32+cl", "tf32", "tf32+cl", "fp64", "bf16", "bf16+cl",
                    "fp32+cl+compile", "tf32+cl+compile", "bf16+cl+compile", "bf16+cl+cudagraphs")
QUICK_VARIANTS = ("fp32", "fp32+cl", "tf32+cl", "bf16+cl")
SPREAD_LIMIT = 1.25  # rounds differing by more (max / min): the machine changed under the figure
LOAD_LIMIT = 0.25  # cores used by other processes beyond which a record is "under load"


@dataclasses.dataclass(frozen=True)
class Variant:
    """How the step runs; `compile`: None (eager), 'default' or 'reduce-overhead' (CUDA graphs)."""
    dtype: str = "float32"
    channels_last: bool = False
    compile: str | None = None

    @property
    def label(self) -> str:
        parts = [k for k, v in DTYPES.items() if v == self.dtype] + ["cl"] * self.channels_last
        return "+".join(parts + [k for k, v in MODES.items() if v == self.compile])


def parse_variant(spec: str | Variant) -> Variant:
    """'fp32', 'tf32', 'fp64' or 'bf16', then optionally '+cl' and '+compile' or '+cudagraphs'."""
    if isinstance(spec, Variant):
        return spec
    head, *extras = spec.strip().lower().split("+")
    modes = [e for e in extras if e != "cl"]
    if head not in DTYPES or len(modes) > 1 or not set(modes) <= set(MODES):
        raise ValueError(f"variant {spec!r}: write fp32, tf32, fp64 or bf16, then optionally +cl "
                         "and +compile or +cudagraphs (e.g. bf16+cl+compile)")
    return Variant(DTYPES[head], "cl" in extras, MODES[modes[0]] if modes else None)


def skip_reason(variant: Variant, device: torch.device) -> str | None:
    """Why `variant` is not timed on `device` (None: it runs natively there)."""
    if variant.dtype == "bfloat16" and not native_bf16(device):
        if device.type != "cpu":
            return f"{device_label(device)} has no native bf16"
        return (f"{device_label(device)} has neither AVX-512-BF16 nor AMX: PyTorch would emulate "
                "bf16, many times slower than fp32")
    if variant.dtype == "tf32" and device.type != "cuda":
        return (f"TF32 is a CUDA tensor-core format; on {device.type} fp32 is the only single "
                "precision")
    if variant.compile == "reduce-overhead" and device.type != "cuda":
        return "CUDA graphs need a CUDA device"
    if variant.dtype == "float64" and device.type == "mps":
        return "MPS has no float64"
    return None


# ---------------------------------------------------------------- timing in turns, and other load

def cpu_clock() -> tuple[float, float, float] | None:
    """(wall time, CPU seconds the machine has been busy, of which this process and its
    descendants); None without psutil (the GPU check's bare machines): load not sampled."""
    try:
        import psutil
    except ImportError:
        return None
    machine = psutil.cpu_times()._asdict()  # guest time is counted in user time too
    busy = sum(v for k, v in machine.items() if k not in ("idle", "iowait", "guest", "guest_nice"))
    ours, me = 0.0, psutil.Process()
    for process in [me, *me.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):  # a child that ended meanwhile
            t = process.cpu_times()
            ours += t.user + t.system + t.children_user + t.children_system
    return time.perf_counter(), busy, ours


def other_cores(since: tuple[float, float, float] | None) -> float | None:
    """The CPU that other processes used from `since` (a `cpu_clock()`) until now, in cores."""
    if since is None:
        return None
    (wall, busy, ours), (wall0, busy0, ours0) = cpu_clock(), since
    return max(0.0, (busy - busy0 - (ours - ours0)) / (wall - wall0))


def race(steps: dict, images: dict, device: torch.device, rounds: int, warmup: int,
         seconds: float):
    """Time the step functions in turns: `warmup` untimed calls each (at least one; the last sizes
    a window of about `seconds`), then `rounds` rounds of one window each. Returns {name: each
    round's images/s} (`images`: per call) and the cores other processes used meanwhile."""
    calls, rates = {}, {name: [] for name in steps}
    cuda = device.type == "cuda"
    sync = functools.partial(torch.cuda.synchronize, device) if cuda else (lambda: None)
    for name, step in steps.items():
        for _ in range(max(warmup, 1)):
            sync()
            t0 = time.perf_counter()
            step()
        sync()
        calls[name] = max(1, round(seconds / max(time.perf_counter() - t0, 1e-6)))
    start = cpu_clock()  # the rounds only: compilation's short-lived workers are no other load
    for _ in range(rounds):
        for name, step in steps.items():
            sync()
            t0 = time.perf_counter()
            for _ in range(calls[name]):
                step()
            sync()
            rates[name].append(images[name] * calls[name] / (time.perf_counter() - t0))
    return rates, other_cores(start)


# ---------------------------------------------------------------- the pipelines

def transformed(transform, items: list) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch as torchvision.datasets.CIFAR10 makes it: each HWC uint8 image via `transform`."""
    return torch.utils.data.default_collate([(transform(x.numpy()), y) for x, y in items])


def conventional_loader(images: torch.Tensor, labels: torch.Tensor, batch_size: int,
                        num_workers: int, pin_memory: bool = False, seed: int = 0):
    """The reference repositories' pipeline: PIL images, torchvision transforms, a DataLoader."""
    from torchvision import transforms as T
    x = images.double() / 255
    normalize = T.Normalize(x.mean((0, 2, 3)).tolist(), x.std((0, 2, 3)).tolist())
    transform = T.Compose([T.ToPILImage(), T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(),
                           T.ToTensor(), normalize])
    hwc = images.permute(0, 2, 3, 1).contiguous()  # as torchvision stores it
    return torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(hwc, labels), batch_size, shuffle=True, drop_last=True,
        collate_fn=functools.partial(transformed, transform), num_workers=num_workers,
        pin_memory=pin_memory, persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(seed))


def bench_dataset(dataset: D.CIFAR10, train_images: int) -> D.CIFAR10:
    """The first `train_images` training images (no validation split) and a token test set."""
    n, d = train_images, dataset
    return dataclasses.replace(d, train_images=d.train_images[:n], train_labels=d.train_labels[:n],
                               test_images=d.test_images[:10], test_labels=d.test_labels[:10])


def setup(variant: Variant, dataset: D.CIFAR10, device: torch.device, batch_size: int, depth: int,
          seed: int = 0):
    """What train() steps with, through its own calls. Step functions: `.library()`,
    `.model_only()`, `.data_only()`, and `.conventional(loader)()` (on the loader's next batch)."""
    config = TrainConfig(depth=depth, batch_size=batch_size, val_size=0, device=str(device),
                         seed=seed, dtype=variant.dtype, channels_last=variant.channels_last,
                         compile=variant.compile is not None,
                         compile_mode=variant.compile or "default", progress="none").validate()
    numerics = set_numerics(config.dtype, device)
    dtype, autocast = step_dtypes(config)
    batches = D.TrainBatches(D.prepare_data(config, device, dataset), config, dtype=dtype)
    _, step_model, optimizer, _ = build_training(config, device, 1, dtype)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format

    def step(x, y):  # no copies for the library's batch: it is ready
        x = x.to(device, non_blocking=True).to(dtype, memory_format=memory_format)
        train_step(step_model, optimizer, x, y.to(device, non_blocking=True), config.lr, autocast)

    def conventional(loader):
        endless = itertools.chain.from_iterable(itertools.repeat(loader))
        return lambda: step(*next(endless))
    counter, fixed = itertools.count(), batches(0)
    return SimpleNamespace(config=config, numerics=numerics, dtype=dtype, conventional=conventional,
                           library=lambda: step(*batches(next(counter))),
                           model_only=lambda: step(*fixed),
                           data_only=lambda: batches(next(counter)))


# ---------------------------------------------------------------- the benchmarks

def run_benchmark(device: str = "auto", batch_size: int = 128, depth: int = 32,
                  variants=DEFAULT_VARIANTS, conventional=("fp32",), workers=None,
                  seconds: float = 1.5, rounds: int = 3, warmup: int = 2,
                  train_images: int = 10_000, data_dir: str | None = None,
                  dataset: D.CIFAR10 | None = None, seed: int = 0, log=lambda text: None) -> dict:
    """Library, model-only and data-only rates of each of `variants`, and for those in
    `conventional` the conventional pipeline with each num_workers of `workers` (default 0, 1, 2,
    and 4, 8 where there are more cores), in the same rounds. The record `bench --json` writes."""
    for key, value in dict(batch_size=batch_size, rounds=rounds, train_images=train_images).items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{key} must be a positive integer, got {value!r}")
    if train_images < batch_size:
        raise ValueError(f"train_images ({train_images}) must be at least one batch ({batch_size})")
    dev, conventional = pick_device(device), {parse_variant(v) for v in conventional}
    if workers is None:
        workers = (0, 1, 2) + tuple(w for w in (4, 8) if w < (os.cpu_count() or 1))
    ds = bench_dataset(dataset or D.load_cifar10(data_dir), train_images)
    start = cpu_clock()
    time.sleep(1.0)  # other processes' load before the rounds
    info = dict(device=str(dev), device_name=device_label(dev), torch=torch.__version__,
                python=platform.python_version(), threads=torch.get_num_threads(),
                cpu_count=os.cpu_count(), batch_size=batch_size, depth=depth,
                train_images=len(ds.train_labels), dataset=ds.label, seconds=seconds, rounds=rounds,
                warmup=warmup, workers=list(workers), date=time.strftime("%Y-%m-%d %H:%M"),
                git_commit=git_commit(),
                other_load=dict(before=other_cores(start), during={}, limit=LOAD_LIMIT))
    record = dict(format=BENCH_FORMAT, info=info, variants=[], conventional=[], skipped=[],
                  errors=[])
    for v in map(parse_variant, variants):
        if reason := skip_reason(v, dev):
            record["skipped"].append(dict(variant=v.label, reason=reason))
            log(f"{v.label}: skipped ({reason})")
            continue
        log(f"{v.label} ...")
        with_conventional = workers if v in conventional else ()
        try:
            s = setup(v, ds, dev, batch_size, depth, seed)
            steps = dict(library=s.library, model=s.model_only, data=s.data_only)
            for w in with_conventional:
                steps[f"conventional {w}"] = s.conventional(conventional_loader(
                    ds.train_images, ds.train_labels, batch_size, w, dev.type == "cuda", seed))
            rates, others = race(steps, dict.fromkeys(steps, batch_size), dev, rounds, warmup,
                                 seconds)
            del steps  # the DataLoaders' worker processes end with their loaders
        except Exception as e:  # a variant this device or PyTorch build cannot run: recorded
            error = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
            record["errors"].append(dict(variant=v.label, error=error))
            log(f"  failed: {error}")
            continue
        median = {name: statistics.median(r) for name, r in rates.items()}
        info["other_load"]["during"][v.label] = others
        record["variants"].append(dict(
            variant=v.label, dtype=v.dtype, channels_last=v.channels_last, compile=v.compile,
            numerics=s.numerics, library=median["library"], model=median["model"],
            data_ms=1000 * batch_size / median["data"],
            rounds={k: rates[k] for k in ("library", "model", "data")}))
        record["conventional"] += [
            dict(variant=v.label, num_workers=w, library=median["library"],
                 images_per_s=median[f"conventional {w}"], rounds=rates[f"conventional {w}"])
            for w in with_conventional]
        log("  " + ", ".join(f"{name} {x:,.1f}" for name, x in median.items()) + " images/s")
    set_numerics("float32", dev)
    return record


def fused_rates(ns, device: str = "auto", batch_size: int = 128, depth: int = 32,
                train_images: int = 2_000, rounds: int = 5, seconds: float = 1.0, warmup: int = 2,
                data_dir: str | None = None, log=lambda text: None) -> list[dict]:
    """For each N of `ns`: the training images/s of N runs (seeds 0..N-1) fused into one model
    against one run alone, in the same rounds; on CUDA the fused steps' peak memory too."""
    for n in ns:
        check_fuse(n)
    dev = pick_device(device)
    cuda, ds = dev.type == "cuda", bench_dataset(D.load_cifar10(data_dir), train_images)
    solo, rows = setup(Variant(), ds, dev, batch_size, depth), []
    for n in ns:
        configs = [dataclasses.replace(solo.config, seed=seed) for seed in range(n)]
        data = D.prepare_data(configs[0], dev, ds)
        built = [build_training(c, dev, 1, solo.dtype) for c in configs]
        batches = [D.TrainBatches(data, c, dtype=solo.dtype) for c in configs]
        forward = functools.partial(FusedModel(built[0][0]), [b[0] for b in built])
        optimizers, lrs, counter = [b[2] for b in built], [c.lr for c in configs], itertools.count()

        def fused():
            it = next(counter)
            xs, ys = zip(*(b(it) for b in batches))
            train_step(forward, optimizers, torch.stack(xs), torch.stack(ys), lrs)
        if cuda:
            torch.cuda.reset_peak_memory_stats(dev)
        rates, _ = race(dict(solo=solo.library, fused=fused),
                        dict(solo=batch_size, fused=n * batch_size), dev, rounds, warmup, seconds)
        f, s = statistics.median(rates["fused"]), statistics.median(rates["solo"])
        rows.append(dict(n=n, images_per_s=f, solo_images_per_s=s, ratio=f / s, rounds=rounds,
                         spread=[min(rates["fused"]), max(rates["fused"])],
                         solo_spread=[min(rates["solo"]), max(rates["solo"])],
                         gpu_memory_bytes=torch.cuda.max_memory_allocated(dev) if cuda else None))
        log(f"  {n} fused: {f:,.1f} images/s; one alone: {s:,.1f}")
    return rows


# ---------------------------------------------------------------- what a record says

def spread(rates) -> float | None:
    """max / min of a figure's rounds (None: fewer than two)."""
    rates = [r for r in rates or () if r]
    return max(rates) / min(rates) if len(rates) > 1 else None


def is_flagged(rounds) -> bool:
    """The figure's rounds disagree: max / min beyond SPREAD_LIMIT."""
    return (spread(rounds) or 1.0) > SPREAD_LIMIT


def rounds_note(rounds) -> str:
    """How a figure's rounds (or a row's {figure: rounds}) agree: '1.04×', '1.40× flagged', ..."""
    spreads = [spread(r) for r in (rounds.values() if isinstance(rounds, dict) else [rounds])]
    spreads = [x for x in spreads if x]
    if not spreads:
        return "not recorded"
    return f"{max(spreads):.2f}×" + (" flagged" if max(spreads) > SPREAD_LIMIT else "")


def under_load(record: dict) -> float | None:
    """The most cores other processes used while `record` was measured, if beyond its limit (else
    None): then its figures are not the machine's own speed."""
    other = record.get("info", {}).get("other_load") or {}
    seen = [other.get("before"), *(other.get("during") or {}).values()]
    seen = [x for x in seen if x is not None]
    return max(seen) if seen and max(seen) > other.get("limit", LOAD_LIMIT) else None


def tables(record: dict) -> dict:
    """The record's tables: 'variants', 'conventional', 'fused'. Column 'rounds max / min' flags
    figures whose rounds disagree, and says 'under load' on every row of a record under load."""
    import pandas as pd
    loaded = " · under load" if under_load(record) else ""
    batch, variants = (record.get("info") or {}).get("batch_size"), record.get("variants", [])
    library = {r["variant"]: (r.get("rounds") or {}).get("library") for r in variants}
    rows = dict(variants=[{
        "variant": r["variant"], "library images/s": r["library"],
        "model-only images/s": r["model"],
        "data ms/batch": r["data_ms"],  # and its share of the step's ms, 1000 * batch / library
        "data % of step": 100 * r["data_ms"] * r["library"] / (1000 * batch),
        "rounds max / min": rounds_note(r.get("rounds") or {}) + loaded} for r in variants])
    rows["conventional"] = [{
        "variant": c["variant"], "num_workers": c["num_workers"], "library images/s": c["library"],
        "conventional images/s": c["images_per_s"], "ratio": c["library"] / c["images_per_s"],
        "rounds max / min": rounds_note(dict(library=library.get(c["variant"]),
                                             conventional=c.get("rounds"))) + loaded}
        for c in record.get("conventional", [])]
    rows["fused"] = [{
        "N fused": r["n"], "images/s": r["images_per_s"],
        "range": "–".join(f"{x:,.0f}" for x in r["spread"]), "one alone": r["solo_images_per_s"],
        "ratio": r["ratio"], "GPU memory GB": (r["gpu_memory_bytes"] / 1e9
                                               if r.get("gpu_memory_bytes") is not None else None)}
        for r in record.get("fused") or []]
    return {name: pd.DataFrame(table) for name, table in rows.items()}


# ---------------------------------------------------------------- command line

def add_arguments(parser) -> None:
    parser.description = ("Training images/s of this library's pipeline and of the conventional "
                          "torchvision DataLoader one, the model-only step and the data work, per "
                          "step variant.")
    add = parser.add_argument
    add("--device", default="auto", help="auto | cpu | cuda[:k] | mps (default: auto)")
    add("--batch-size", type=int, default=128, help="(default: 128, the paper's)")
    add("--depth", type=int, default=32, help="ResNet depth (default: 32)")
    add("--variants", nargs="+", metavar="SPEC", help=(
        f"step variants (default: {' '.join(DEFAULT_VARIANTS)}; with --fused, none); those the "
        "device cannot run natively are skipped"))
    add("--conventional", nargs="*", default=["fp32"], metavar="SPEC",
        help="variants also timed with the conventional pipeline (default: fp32)")
    add("--workers", type=int, nargs="+", help="its DataLoader num_workers (default: 0 1 2, 4 8)")
    add("--seconds", type=float, default=1.5, help="length of a timed window (default: 1.5)")
    add("--rounds", type=int, default=3, help="timed windows per figure, their median counts "
        "(default: 3)")
    add("--warmup", type=int, default=2, help="untimed steps first (default: 2)")
    add("--quick", action="store_true",
        help=f"variants {' '.join(QUICK_VARIANTS)}, windows of 0.5 s")
    add("--train-images", type=int, default=10_000, help="training images used (default: 10000)")
    add("--fused", type=int, nargs="+", action="extend", metavar="N", help=(
        "instead: N runs fused into one model (fused.py) against one alone, per N (e.g. 1 4 16 "
        "64); with --json and no --variants, merged into OUT"))
    add("--data-dir", help="default: $RESNET_CIFAR_DATA, then ./data")
    add("--json", metavar="OUT", help="write the record as JSON to OUT")


def main(args) -> int:
    """`bench`: with --fused its figures first (their `fused N: X× solo` lines count if a time
    limit cuts the rest), then the step variants unless --fused came without --variants."""
    for spec in (args.variants or []) + args.conventional:  # a bad one fails before any work
        parse_variant(spec)
    log = functools.partial(print, file=sys.stderr, flush=True)
    path, record, shown = Path(args.json) if args.json else None, {}, {}
    if args.fused:
        rows = fused_rates(args.fused, args.device, args.batch_size, args.depth, args.train_images,
                           args.rounds, args.seconds, args.warmup, data_dir=args.data_dir, log=log)
        for r in rows:
            print(f"fused {r['n']}: {r['ratio']:.2f}× solo", flush=True)
        if path and path.is_file() and not args.variants:  # merged into the record there
            record = json.loads(path.read_text())
        kept = [r for r in record.get("fused") or [] if r["n"] not in args.fused]
        record["fused"], shown["fused"] = sorted(kept + rows, key=lambda r: r["n"]), rows
    if args.variants or not args.fused:
        variants = args.variants or (QUICK_VARIANTS if args.quick else DEFAULT_VARIANTS)
        shown = record = dict(run_benchmark(
            args.device, args.batch_size, args.depth, variants, args.conventional, args.workers,
            min(args.seconds, 0.5) if args.quick else args.seconds, args.rounds, args.warmup,
            args.train_images, args.data_dir, log=log), **record)
        print(f"{record['info']['device_name']}, torch {torch.__version__}, "
              f"ResNet-{args.depth}, batch {args.batch_size}")
    for name, table in tables(shown).items():
        if not table.empty:
            print(f"\n{name}:\n{table.to_string(index=False, float_format='{:,.2f}'.format)}")
    for s in shown.get("skipped", []) + shown.get("errors", []):
        print(f"skipped {s['variant']}: {s['reason']}" if "reason" in s else
              f"failed {s['variant']}: {s['error']}")
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=1))
    return 0
