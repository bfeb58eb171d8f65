"""The command line: python -m resnet_cifar {train,eval,summary,download,bench} and the commands
of commands.py, {plan,run,export,records}."""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import re
import sys

from . import bench, commands
from .config import TrainConfig
from .data import DataError, download, prepare_data
from .devices import pick_device
from .runs import RunError, load_run
from .train import evaluate, train


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field, its help and default the field's (the paper's recipe)."""
    for f in dataclasses.fields(TrainConfig):
        option, default = "--" + f.name.replace("_", "-"), f.default
        help = f.metadata.get("help", "")
        help = help if default is None else f"{help} (default: {default})".strip()
        add = functools.partial(parser.add_argument, option, default=default, help=help)
        if isinstance(default, bool):
            add(action=argparse.BooleanOptionalAction)
        elif isinstance(default, tuple):
            add(type=int, nargs="*")
        else:  # the annotation's first type: "int | None" is an int, or None (as "none")
            cast = {"int": int, "float": float, "str": str}[str(f.type).split(" |")[0]]
            add(type=cast if default is not None else
                lambda text, cast=cast: None if text.lower() in ("none", "") else cast(text))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m resnet_cifar", description=(
        "ResNets on CIFAR-10 as in He et al. 2016 (Sec. 4.2). `train` with no flags runs the "
        "paper's ResNet-32 recipe (64k iterations; hours on a GPU)."))
    sub = parser.add_subparsers(dest="command", required=True)
    add_config_arguments(sub.add_parser(
        "train", help="train (or reuse / resume) a run; prints its summary as JSON"))
    p_eval = sub.add_parser("eval", help="evaluate a finished run's weights on its val and test "
                            "splits")
    p_eval.add_argument("run_dir")
    p_eval.add_argument("--data-dir")
    p_eval.add_argument("--device", default="auto")
    sub.add_parser("summary", help="parameter / FLOP table of the CIFAR ResNets (fvcore)")
    sub.add_parser("download", help="download the official CIFAR-10 (MD5 checked)").add_argument(
        "--data-dir", help="default: $RESNET_CIFAR_DATA, then ./data")
    bench.add_arguments(sub.add_parser(
        "bench", help="training throughput: this library vs a DataLoader baseline"))
    commands.add_commands(sub)  # plan, run, export, records: the book's runs as a plan
    args = parser.parse_args(argv)
    run = dict(train=_train, eval=_eval, summary=_summary, download=_download, bench=bench.main)
    try:
        return run.get(args.command, commands.main)(args)
    except (DataError, RunError, ValueError, TypeError) as e:
        print(f"error: {as_flags(str(e))}", file=sys.stderr)
        return 2


def as_flags(message: str) -> str:
    """Library advice names arguments (`force=True`, `runs_dir=`), the command line's flags."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}

    def flag(match: re.Match) -> str:
        name, value = match.groups()
        option = "--" + name.replace("_", "-")
        if name not in fields:
            return match.group(0)
        return {"True": option, "": option, "False": f"--no-{option[2:]}"}.get(
            value, f"{option} {value.strip(chr(39))}")
    return re.sub(r"\b([a-z_]+)=(True|False|'[^']*'|[\w.]*)", flag, message)


def _train(args) -> int:
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    config = TrainConfig(**{k: v for k, v in vars(args).items() if k in names}).validate()
    rank0 = int(os.environ.get("RANK", "0")) == 0  # torchrun: one note and one summary
    if config.schedule_notice() and rank0:
        print(f"note: {config.schedule_notice()}", file=sys.stderr)
    result = train(config)
    if rank0:
        print(json.dumps(result.summary, indent=2))
    return 0 if result.status == "complete" else 1


def _eval(args) -> int:
    run = load_run(args.run_dir)
    if run.status != "complete":
        raise RunError(f"run {args.run_dir} is {run.summary.get('status_detail')}, not complete; "
                       "finish it first.")
    config = TrainConfig(**{**run.config, "data_dir": args.data_dir or run.config.get("data_dir")})
    device = pick_device(args.device)
    data, model = prepare_data(config, device), run.load_model().to(device)
    out = {"run": str(run.run_dir), "dataset": data.dataset.label}
    for split, x, y in [("val", data.val_x, data.val_y), ("test", data.test_x, data.test_y)]:
        if len(y):
            r = evaluate(model, x, y, bf16=config.dtype == "bfloat16")
            out[split] = {"loss": r["loss"], "error": r["error"], "per_class_accuracy":
                          dict(zip(data.dataset.classes, r["per_class_accuracy"]))}
    print(json.dumps(out, indent=2))
    return 0


def _summary(args) -> int:
    from .analysis import complexity_table  # (with matplotlib: imported here alone)
    from .models import plain, resnet, resnet34_imagenet
    models = {f"ResNet-{d}": resnet(d) for d in (20, 32, 44, 56, 110)}
    models.update({"Plain-32": plain(32), "ResNet-32 (option B)": resnet(32, "B"),
                   "ResNet-34 (ImageNet-style)": resnet34_imagenet()})
    table = complexity_table(models)
    table.columns = ["parameters", "FLOPs (multiply-adds)", "paper's parameters"]
    print(table.astype(float).to_string(na_rep="-", float_format="{:,.0f}".format))
    return 0


def _download(args) -> int:
    print(f"CIFAR-10 is in {download(args.data_dir)}")
    return 0
