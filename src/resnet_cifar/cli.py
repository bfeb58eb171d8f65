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


# The help of train's flags, one flag per TrainConfig field (a field without help here has none).
HELP = dict(
    name="run folder name; default: derived from the config",
    arch="resnet | plain | resnet34-imagenet",
    depth="6n+2: 20, 32, 44, 56, 110, 1202",
    shortcut="A: zero-pad identity (paper, CIFAR) | B: 1x1 conv + BN | B-no-bn",
    final_relu="the seed log's question: a ReLU after the last FC",
    data_dir="default: $RESNET_CIFAR_DATA, then ./data",
    val_size="the 45k/5k split",
    subset="n//10 images of each class from each split, for quick runs; default: all",
    normalization="per-pixel-mean (paper) | per-channel | none",
    normalize_eval="--no-normalize-eval: test without mean subtraction (the seed log's failure)",
    crop="4-pixel zero pad + random 32x32 crop",
    flip="random horizontal flip",
    optimizer="sgd | adam | adamw | nadam",
    schedule="multistep | plateau | cosine | constant",
    schedule_unit="milestones and warm-up in iterations or epochs: iteration | epoch",
    milestones="lr drops (x gamma)",
    warmup="lr = warmup_lr for this many iterations (or epochs)",
    warmup_until_error="ResNet-110 (Sec. 4.2): lr = warmup_lr until the training error is below this",
    plateau_patience="evaluations without val-loss improvement",
    eval_every="iterations; default: one epoch",
    checkpoint_every="iterations; default: at every evaluation",
    stop_at="stop after this iteration, resumable (a prefix of the run; not fused)",
    device="auto (cuda, then mps, then cpu) | cpu | cuda[:k] | mps",
    dtype="float32 (true fp32) | tf32 | float64 | bfloat16 (autocast)",
    compile="torch.compile the model",
    compile_mode="with --compile: default | reduce-overhead (CUDA graphs) | max-autotune | ...",
    sync_bn="SyncBatchNorm across torchrun processes (GPUs only)",
    resume="continue an interrupted run from its checkpoint",
    force="retrain even if a record exists",
    wait="another process trains this run: wait for it, then reuse or resume",
    progress="auto (a bar on a terminal, log lines otherwise) | bar | log | none",
)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field, its default the dataclass's (the paper's recipe)."""
    for f in dataclasses.fields(TrainConfig):
        option, default, help = "--" + f.name.replace("_", "-"), f.default, HELP.get(f.name, "")
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
