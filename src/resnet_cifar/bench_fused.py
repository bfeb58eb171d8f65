"""`bench --fused N`: the aggregate training images/s of N runs trained as one fused model
(fused.py) against one run alone, timed in alternation in the same rounds."""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import torch

from . import bench
from . import data as D
from .devices import pick_device
from .fused import FusedStep, check_fuse
from .measure import race
from .train import build_training


def fused_rates(ns, device: str = "auto", batch_size: int = 128, depth: int = 32, train_images: int = 2_000,
                rounds: int = 5, seconds: float = 1.0, warmup: int = 2, dataset: D.CIFAR10 | None = None,
                data_dir: str | None = None, log=None) -> list[dict]:
    """Aggregate training images/s of N fused runs (seeds 0..N-1) against one run alone (seed 0,
    `train.train_step`), for each N of `ns`, timed in alternation: each round times a window of
    about `seconds` of one, then of the other. {n, images_per_s, solo_images_per_s (medians),
    spreads (min, max), ratio, rounds, gpu_memory_bytes (CUDA: peak allocated by the fused steps)}."""
    log = log or (lambda text: None)
    for n in ns:
        check_fuse(n)
    dev = pick_device(device)
    ds = bench.bench_dataset(dataset or D.load_cifar10(data_dir), train_images)
    solo = bench.setup(bench.Variant(), ds, dev, batch_size, depth)
    out = []
    for n in ns:
        log(f"fused {n} ...")
        configs = [dataclasses.replace(solo.config, seed=s) for s in range(n)]
        data = D.prepare_data(configs[0], dev, ds)
        built = [build_training(c, dev, 1, solo.dtype) for c in configs]
        batches = [D.TrainBatches(data, c, 0, 1, solo.dtype) for c in configs]
        models, optimizers = [b[0] for b in built], [b[2] for b in built]
        step = FusedStep(models[0])
        it = iter(range(10 ** 9))

        def fused():
            i = next(it)
            drawn = [b(i) for b in batches]
            step(models, optimizers, torch.stack([x for x, _ in drawn]), torch.stack([y for _, y in drawn]),
                 [c.lr for c in configs])
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        res = race(dict(solo=solo.library, fused=fused), dict(solo=batch_size, fused=n * batch_size), dev, rounds,
                   warmup, seconds)
        f, s = res["fused"]["images_per_s"], res["solo"]["images_per_s"]
        rates = {k: r["rates"] for k, r in res.items()}
        out.append(dict(n=n, images_per_s=f, solo_images_per_s=s, ratio=f / s, rounds=rounds,
                        spread=[min(rates["fused"]), max(rates["fused"])],
                        solo_spread=[min(rates["solo"]), max(rates["solo"])],
                        gpu_memory_bytes=torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else None))
        log(f"  fused {n}: {f:,.1f} images/s ({min(rates['fused']):,.1f}-{max(rates['fused']):,.1f}); "
            f"solo {s:,.1f} ({min(rates['solo']):,.1f}-{max(rates['solo']):,.1f})")
    return out


def fused_main(args, write: bool = True) -> list[dict]:
    """`bench --fused N ...`: print `fused_rates`' figures, one `fused N: X× solo` line per N, and
    (`write`) with --json merge them into OUT's `fused` section; the rows."""
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = fused_rates(args.fused, args.device, args.batch_size, args.depth, args.train_images, args.rounds,
                       args.seconds, args.warmup, data_dir=args.data_dir,
                       log=lambda text: print(text, file=sys.stderr, flush=True))
    print(f"ResNet-{args.depth}, batch {args.batch_size}, {pick_device(args.device)}, {torch.get_num_threads()} "
          f"thread(s); aggregate training images/s, median of {args.rounds} alternating rounds (min-max):")
    for r in rows:
        print(f"  {r['n']} fused: {r['images_per_s']:,.1f} ({r['spread'][0]:,.1f}-{r['spread'][1]:,.1f}); one alone: "
              f"{r['solo_images_per_s']:,.1f} ({r['solo_spread'][0]:,.1f}-{r['solo_spread'][1]:,.1f})")
    for r in rows:
        print(f"fused {r['n']}: {r['ratio']:.2f}× solo")
    if args.json and write:
        path = Path(args.json)
        record = json.loads(path.read_text()) if path.is_file() else {}
        kept = [r for r in record.get("fused") or [] if r.get("n") not in {x["n"] for x in rows}]
        record["fused"] = sorted(kept + rows, key=lambda r: r["n"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=1))
    return rows


def main(args) -> int:
    """Fused first (its `fused N: X× solo` lines are printed even if a time limit cuts the rest),
    then, with --variants, the step variants too, in one record."""
    rows = fused_main(args, write=args.variants is None)
    return 0 if args.variants is None else bench.main(args, fused=rows)
