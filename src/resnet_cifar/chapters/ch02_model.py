"""Chapter 2's computations: ResNet-32's layers and FLOPs, the log's ImageNet ResNet-34, option A
against B shortcuts and Fig. 6 (plain vs residual), with the numbers its text quotes."""
from __future__ import annotations

import pandas as pd
import torch
from torch import nn

from .. import analysis as A
from ..compare import comparison, values, verdict
from ..models import count_parameters, flop_count, resnet
from ..runs import RunResult


PARTS = ["conv1", "stage1", "stage2", "stage3", "fc"]  # the layer table's rows


def layers_caption(ch) -> str:
    return ch.caption("ResNet-32 (option A) for one 3×32×32 image")


def model_facts(model: torch.nn.Module) -> dict:
    """ResNet-32's weighted layers, parameters, FLOPs (total and per stage) and what option B
    shortcuts add: the model chapter's text values."""
    layers = A.layer_table(model, PARTS)
    params, params_b = count_parameters(model), count_parameters(resnet(32, shortcut="B"))
    stages = A.module_flops(model, ["stage1", "stage2", "stage3"])
    return {"weighted_layers": str(layers.loc["total", "weighted layers"]), "params32": f"{params:,}",
            "stage_flops": ", ".join(f"{v:.1f}" for v in stages.values()),
            "flops32": f"{A.flop_count(model) / 1e6:.1f}M",
            "b_extra": f"{params_b - params:,}", "b_extra_pct": f"{100 * (params_b - params) / params:.1f}"}


def imagenet_runs(ch, arms: dict[str, list[RunResult]]) -> tuple["pd.io.formats.style.Styler", dict]:
    """The log's ResNet-34 against ResNet-32 over seeds (table), each change's verdict
    (`r34_architecture`, `r34_schedule`, `r34_augmentation`) and the runs this profile leaves out."""
    table, facts = comparison(ch, arms, "ResNet-32 (the paper's model)", "The log's ResNet-34", "r34")
    names = list(arms)
    for key, (a, b) in {"r34_architecture": (1, 0), "r34_schedule": (2, 1), "r34_augmentation": (3, 2)}.items():
        facts[key] = (f"{names[a]} against {names[b]}: " + verdict(values(arms[names[a]]), values(arms[names[b]]),
                                                                     names[b])
                      if len(names) > max(a, b) else "not trained at this profile")
    return table, {**facts, "r34_skipped": ch.left_out("02_model")}


def shortcut_facts(ch, arms: dict[str, list[RunResult]]) -> tuple["pd.io.formats.style.Styler", dict]:
    """Option A against B over seeds (table) and the chapter's text values about them."""
    table, facts = comparison(ch, arms, "ResNet-32, option A", "Shortcuts", "shortcut")
    own = {label: runs[0] for label, runs in arms.items()}
    a = own["ResNet-32, option A"]
    facts.update(ch.errors({"err_A": a, "err_B": own.get("ResNet-32, option B"),
                              "err_Bnobn": own.get("ResNet-32, option B without BN")}))
    return table, {**facts, "budget_note": budget_note(ch, a), "opt_shortcut_n": facts["shortcut_n"],
                   "numerics": numerics(a)}


def fig6_facts(ch, plain: dict[str, RunResult], residual: dict[str, RunResult], depths) -> dict:
    """Chapter 2's Fig. 6 values: the depths trained in both families (all of `depths` where the
    profile trains none in both) and the deepest such plain and residual nets' errors."""
    both = [d for d in depths if f"plain-{d}" in plain and f"ResNet-{d}" in residual] or list(depths)
    deepest = max(both)
    return {"fig6_depths": " and ".join(map(str, both)), "fig6_deepest": str(deepest),
            **ch.errors({"fig6_plain_err": plain.get(f"plain-{deepest}"),
                           "fig6_resnet_err": residual.get(f"ResNet-{deepest}")})}


def budget_note(ch, run: RunResult) -> str:
    """One sentence on whether `run`'s budget and data allow comparing networks."""
    if ch.profile == "paper" and ch.runs_data == "official":
        return "These runs follow the paper's full recipe on the official data."
    s = run.summary
    budget = (f"With profile {ch.profile} ({s['iterations']:,} iterations on {s['train_size']:,} training "
              f"images of {ch.runs_label})")
    if ch.profile == "smoke":
        return (f"{budget} these numbers show that the code runs, not how the networks compare: rebuild with "
                "profile quick or paper to compare them.")
    return (f"{budget} two networks differ only where the verdict over the seeds says so; the paper's "
            "numbers need its full recipe on the official data.")


def numerics(run: RunResult) -> str:
    """How `run` computed, from its summary's `numerics`: dtype, TF32 for matmuls and cuDNN
    convolutions, cuDNN autotuning."""
    n, onoff = run.summary.get("numerics") or {}, lambda v: "–" if v is None else ("on" if v else "off")  # noqa: E731
    if not n:
        return f"{run.summary.get('name', 'this run')}'s summary records no numerics."
    return (f"dtype {n.get('dtype')}, TF32 matmuls {onoff(n.get('tf32_matmul'))}, TF32 cuDNN convolutions "
            f"{onoff(n.get('tf32_cudnn'))}, cudnn.benchmark {onoff(n.get('cudnn_benchmark'))} "
            f"(run {run.run_dir.name}, on {run.summary.get('device_name')})")


def complexity_shown(models: dict[str, nn.Module]) -> pd.DataFrame:
    """`A.complexity_table` as the book prints it: parameters, the paper's (Table 6), FLOPs in
    millions, the paper's test error."""
    table = A.complexity_table(models)
    return pd.DataFrame({
        "parameters": table["params"],
        "paper (Table 6)": table["paper_params"].map(lambda p: None if pd.isna(p) else f"{p / 1e6:.2f}M"),
        "FLOPs": table["flops"].map(lambda f: f"{f / 1e6:,.1f}M"),
        "paper's test error %": [A.PAPER_ERROR.get(name) for name in table.index],
    }).astype(object)


def imagenet_comparison(r34: nn.Module, r32: nn.Module) -> tuple[pd.DataFrame, dict]:
    """Parameters and FLOPs of the ImageNet ResNet-34 (10 classes) and ResNet-32 on a 32x32
    image (table), and the numbers the model chapter quotes (`r34_*`)."""
    from torchvision.models import resnet34
    table = A.complexity_table({"ResNet-34 (ImageNet layout, 10 classes)": r34, "ResNet-32": r32})[["params", "flops"]]
    flops224 = flop_count(r34, image_size=224)
    params = table["params"]
    facts = {"r34_params": f"{params.iloc[0]:,}", "r34_params_1000": f"{count_parameters(resnet34()):,}",
             "r34_flops32": f"{table['flops'].iloc[0] / 1e6:.3f}M", "r34_flops224": f"{flops224 / 1e9:.2f}G",
             "r34_ratio": f"{params.iloc[0] / params.iloc[1]:.0f}"}
    return table.rename(columns={"params": "parameters", "flops": "FLOPs"}).astype(object), facts


def feature_map_sizes(model: nn.Module, parts: list[str], sizes=(224, 32)) -> pd.DataFrame:
    """Output shape of each named part of `model` for each input size (one column per size)."""
    return pd.DataFrame({f"{s}×{s} input": A.layer_table(model, parts, image_size=s)["output (C×H×W)"].drop("total")
                         for s in sizes}).rename_axis("part")
