"""Command line: python -m resnet_cifar {train,eval,summary,download,bench,plan,run,export,records} --help"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import os
import re
import sys

from .config import TrainConfig


def field_help() -> dict[str, str]:
    """Each TrainConfig field's comment in config.py: the flags' help, written once."""
    source = inspect.getsource(TrainConfig)
    return {m.group(1): m.group(2).strip() for m in re.finditer(r"^ +(\w+): [^#\n]*#(.*)$", source, re.M)}


def _optional(cast):
    def parse(text: str):
        return None if text.lower() in ("none", "") else cast(text)
    parse.__name__ = cast.__name__
    return parse


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field, defaults from the dataclass (the paper's recipe)."""
    helps = field_help()
    for f in dataclasses.fields(TrainConfig):
        flag, default = "--" + f.name.replace("_", "-"), f.default
        help_text = f"{helps.get(f.name, '')} (default: {default})".strip()
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
    from . import commands
    commands.add_commands(sub)  # plan, run, export, records: the book's runs as a plan (commands.py)
    args = parser.parse_args(argv)

    from .data import DataError
    from .runs import RunError
    try:
        return _run(args)
    except (DataError, RunError, ValueError, TypeError) as e:
        print(f"error: {as_flags(str(e))}", file=sys.stderr)
        return 2


def as_flags(message: str) -> str:
    """Library messages name arguments (`force=True`, `runs_dir=`); on the command line the
    same advice names flags (`--force`, `--runs-dir`)."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}

    def flag(match: re.Match) -> str:
        name, value = match.group(1), match.group(2)
        if name not in fields:
            return match.group(0)
        option = "--" + name.replace("_", "-")
        if value == "False":
            return "--no-" + name.replace("_", "-")
        return option if value in ("True", "") else f"{option} {value.strip(chr(39))}"
    return re.sub(r"\b([a-z_]+)=(True|False|'[^']*'|[\w.]*)", flag, message)


def _run(args) -> int:
    if args.command == "train":
        from .train import train
        names = {f.name for f in dataclasses.fields(TrainConfig)}
        config = TrainConfig(**{k: v for k, v in vars(args).items() if k in names}).validate()
        if config.schedule_notice() and int(os.environ.get("RANK", "0")) == 0:
            print(f"note: {config.schedule_notice()}", file=sys.stderr)
        result = train(config)
        if int(os.environ.get("RANK", "0")) == 0:  # torchrun: one summary, from rank 0
            print(json.dumps(result.summary, indent=2))
        return 0 if result.status == "complete" else 1
    if args.command == "eval":
        return _eval(args)
    if args.command in ("plan", "run", "export", "records"):
        from . import commands
        return commands.main(args)
    if args.command == "summary":
        from .analysis import complexity_table
        from .models import plain, resnet, resnet34_imagenet
        models = {f"ResNet-{d}": resnet(d) for d in (20, 32, 44, 56, 110)}
        models.update({"Plain-32": plain(32), "ResNet-32 (option B)": resnet(32, "B"),
                       "ResNet-34 (ImageNet-style)": resnet34_imagenet()})
        table = complexity_table(models)
        table.columns = ["parameters", "FLOPs (multiply-adds)", "paper's parameters"]
        number = lambda v: "-" if v != v else f"{v:,.0f}"  # noqa: E731  (NaN: the paper gives none)
        print(table.to_string(na_rep="-", formatters={c: number for c in table.columns}))
        return 0
    if args.command == "download":
        from .data import download
        print(f"CIFAR-10 is in {download(args.data_dir)}")
        return 0
    from . import bench
    if args.fused:
        from . import bench_fused
        return bench_fused.main(args)
    return bench.main(args)


def _eval(args) -> int:
    from .data import prepare_data
    from .devices import pick_device
    from .runs import load_run
    from .train import evaluate
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
