"""Command line: python -m resnet_cifar {train,eval,summary,download,bench} --help"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

from .train import TrainConfig

HELP = {
    "name": "run folder name under --runs-dir (default: derived from the config)",
    "arch": "resnet | plain | resnet34-imagenet", "depth": "6n+2: 20, 32, 44, 56, 110, 1202",
    "shortcut": "A (zero-pad, paper) | B (1x1 projection)", "subset": "first N (class-balanced) of each split",
    "normalization": "per-pixel-mean (paper) | per-channel | none",
    "normalize_eval": "--no-normalize-eval tests without mean subtraction (the seed log's failure)",
    "milestones": "lr drops (iterations, or epochs with --schedule-unit epoch)",
    "schedule": "multistep | plateau | cosine | constant", "optimizer": "sgd | adam | adamw | nadam",
    "device": "auto (cuda, then mps, then cpu) | cpu | cuda[:k] | mps",
    "dtype": "float32 | float64 | bfloat16 (autocast)",
    "compile_mode": "with --compile: default | reduce-overhead (CUDA graphs) | max-autotune | "
                    "max-autotune-no-cudagraphs", "eval_every": "iterations (default: one epoch)",
    "checkpoint_every": "iterations (default: every evaluation)",
    "resume": "continue an interrupted run from its checkpoint", "force": "retrain even if a record exists",
    "wait": "if another process is training this run, wait for it, then reuse or resume the run",
}


def _optional(cast):
    def parse(text: str):
        return None if text.lower() in ("none", "") else cast(text)
    parse.__name__ = cast.__name__
    return parse


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field, defaults from the dataclass (the paper's recipe)."""
    for f in dataclasses.fields(TrainConfig):
        flag, default = "--" + f.name.replace("_", "-"), f.default
        help_text = f"{HELP.get(f.name, '')} (default: {default})".strip()
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_text)
        elif isinstance(default, tuple):
            parser.add_argument(flag, type=int, nargs="*", default=default, help=help_text)
        else:
            kind = "float" if isinstance(default, float) else "int" if "int" in str(f.type) else "str"
            cast = {"float": float, "int": int, "str": str}[kind]
            parser.add_argument(flag, type=_optional(cast) if "None" in str(f.type) else cast,
                                default=default, help=help_text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m resnet_cifar", description=(
        "ResNets on CIFAR-10 as in He et al. 2016 (Sec. 4.2). `train` with no flags runs the paper's "
        "ResNet-32 recipe (64k iterations; hours on a GPU)."))
    sub = parser.add_subparsers(dest="command", required=True)
    p_train = sub.add_parser("train", help="train (or reuse / resume) a run; prints its summary as JSON")
    add_config_arguments(p_train)
    p_eval = sub.add_parser("eval", help="evaluate a finished run's weights on its val and test splits")
    p_eval.add_argument("run_dir")
    p_eval.add_argument("--data-dir", default=None)
    p_eval.add_argument("--device", default="auto")
    sub.add_parser("summary", help="parameter / FLOP table of the CIFAR ResNets (fvcore)")
    p_dl = sub.add_parser("download", help="download the official CIFAR-10 (MD5 checked)")
    p_dl.add_argument("--data-dir", default=None, help="default: $RESNET_CIFAR_DATA, then ./data")
    p_bench = sub.add_parser("bench", help="training throughput: this library vs a DataLoader baseline")
    from . import bench
    bench.add_arguments(p_bench)
    args = parser.parse_args(argv)

    from .data import DataError
    from .train import RunError
    try:
        return _run(args)
    except (DataError, RunError, ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _run(args) -> int:
    if args.command == "train":
        from .train import train
        names = {f.name for f in dataclasses.fields(TrainConfig)}
        result = train(TrainConfig(**{k: v for k, v in vars(args).items() if k in names}))
        if int(os.environ.get("RANK", "0")) == 0:  # torchrun: one summary, from rank 0
            print(json.dumps(result.summary, indent=2))
        return 0 if result.status == "complete" else 1
    if args.command == "eval":
        return _eval(args)
    if args.command == "summary":
        from .analysis import complexity_table
        from .models import plain, resnet, resnet34_imagenet
        models = {f"ResNet-{d}": resnet(d) for d in (20, 32, 44, 56, 110)}
        models.update({"Plain-32": plain(32), "ResNet-32 (option B)": resnet(32, "B"),
                       "ResNet-34 (ImageNet-style)": resnet34_imagenet()})
        print(complexity_table(models).to_string())
        return 0
    if args.command == "download":
        from .data import download
        print(f"CIFAR-10 is in {download(args.data_dir)}")
        return 0
    from . import bench
    return bench.main(args)


def _eval(args) -> int:
    from .train import TrainConfig, evaluate, load_run, pick_device, prepare_data
    run = load_run(args.run_dir)
    if run.status != "complete":
        print(f"error: run {args.run_dir} is {run.summary.get('status_detail')}, not complete; finish it first.",
              file=sys.stderr)
        return 2
    config = TrainConfig(**{**run.config, "data_dir": args.data_dir or run.config.get("data_dir")})
    device = pick_device(args.device)
    data = prepare_data(config, device)
    model = run.load_model().to(device)
    out = {"run": str(run.run_dir), "dataset": data.dataset.label}
    for split, (x, y) in {"val": (data.val_x, data.val_y), "test": (data.test_x, data.test_y)}.items():
        if len(y):
            r = evaluate(model, x, y, bf16=config.dtype == "bfloat16")
            out[split] = {"loss": r["loss"], "error": r["error"], "per_class_accuracy":
                          dict(zip(data.dataset.classes, r["per_class_accuracy"]))}
    print(json.dumps(out, indent=2))
    return 0
