"""Tables (pandas Stylers: separators, one precision, '–' for no value, a caption) and figures of run
records for the book; every figure comes back closed in pyplot, so it shows only where a cell returns it."""
from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from torch import nn

from .models import count_parameters, flop_count
from .runs import RunResult

# Table 6 of the paper: parameters of the CIFAR-10 ResNets (option A).
PAPER_PARAMS = {"ResNet-20": 0.27e6, "ResNet-32": 0.46e6, "ResNet-44": 0.66e6, "ResNet-56": 0.85e6,
                "ResNet-110": 1.7e6, "ResNet-1202": 19.4e6}
# Table 6: test error (%) on CIFAR-10; its only spread: ResNet-110, best of 5 runs 6.43, mean 6.61 ± 0.16.
PAPER_110_MEAN, PAPER_110_STD = 6.61, 0.16
PAPER_ERROR = {"ResNet-20": 8.75, "ResNet-32": 7.51, "ResNet-44": 7.17, "ResNet-56": 6.97,
               "ResNet-110": 6.43, "ResNet-1202": 7.93}


# Figure text sizes (points) that stay readable when a figure is shown at the page's width.
BOOK_STYLE = {"font.size": 12, "axes.titlesize": 12, "axes.labelsize": 12, "xtick.labelsize": 11,
              "ytick.labelsize": 11, "legend.fontsize": 11, "figure.titlesize": 12, "figure.dpi": 100}
# runs_table's columns that chapters show by default (dataset and device are in the caption).
RUN_COLUMNS = ("status", "iterations", "final test error %", "best val error %", "test error at best val %",
               "train time s", "images/s")


def fmt(value, spec: str = ".1f", missing: str = "–") -> str:
    """`value` formatted with `spec`, or `missing` when there is no value (None or NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    return format(value, spec)


def detached(fig):
    """`fig`, closed in pyplot: a cell that returns it shows it once, a glued one not at all."""
    plt.close(fig)
    return fig


def _number(value, precision: int) -> str:
    """One table cell: '–', 12,345, or 1,234.5 (`precision` decimals below 100, none above)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return f"{value:,}"
    if isinstance(value, (float, np.floating)):
        if float(value).is_integer() and abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:,.{0 if abs(value) >= 100 else precision}f}"
    return str(value)


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def styled(table: pd.DataFrame, caption: str, precision: int = 1):
    """`table` as the book shows it: numbers through `_number`, their columns right-aligned (CSS class
    `number`, book/_static/book.css), the caption above it."""
    numeric = [c for c in table.columns if len(table) and all(_is_number(v) or v is None for v in table[c])
               and any(_is_number(v) for v in table[c])]
    classes = pd.DataFrame("", index=table.index, columns=table.columns)
    classes[numeric] = "number"
    return table.style.format(lambda v: _number(v, precision)).format_index(
        lambda v: _number(v, precision), axis=0).set_td_classes(classes).set_caption(caption)


def complexity_table(models: dict[str, nn.Module]) -> pd.DataFrame:
    """Parameters and fvcore FLOPs (multiply-adds, one 3x32x32 image) per model."""
    rows = []
    for name, model in models.items():
        rows.append(dict(model=name, params=count_parameters(model), flops=flop_count(model),
                         paper_params=PAPER_PARAMS.get(name)))
    return pd.DataFrame(rows).set_index("model")


def runs_table(runs: dict[str, RunResult]) -> pd.DataFrame:
    """One row per run: status, iterations, errors (%), training loss, time, speed, data, device."""
    def pct(v):  # NaN (an evaluation that failed) as None too
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else 100 * v

    rows = []
    for label, run in runs.items():
        s, h = run.summary, run.history
        rows.append({"run": label, "status": s["status"], "iterations": s["iterations_done"],
                     "final test error %": pct(s["final_test_error"]), "best val error %": pct(s["best_val_error"]),
                     "test error at best val %": pct(s["test_error_at_best_val"]),
                     "lowest test error seen %": pct(h["test_error"].min()) if len(h) else None,
                     "final train loss": float(h["train_loss"].iloc[-1]) if len(h) else None,
                     "train time s": s["wall_time_s"], "images/s": s["train_images_per_s"],
                     "ms / iteration": 1000 * s["wall_time_s"] / s["iterations_done"]
                     if s["wall_time_s"] and s["iterations_done"] else None,
                     "dataset": s["dataset_label"], "device": s["device"]})
    return pd.DataFrame(rows).set_index("run").astype(object)


def error_curves(runs: dict[str, RunResult], title: str = "", ax=None, metric: str = "error",
                 splits=("train", "test"), reference: tuple[float, str] | None = None):
    """The paper's Fig. 6 style: dashed training error, bold test error, one colour per run, the legend
    beside the plot; a diverged run ends with an x; `reference`: (value, label), a dotted line."""
    from matplotlib.lines import Line2D
    own = ax is None
    ax = ax or plt.subplots(figsize=(10, 4.5))[1]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    handles = []
    for i, (label, run) in enumerate(runs.items()):
        h, color = run.history, colors[i % len(colors)]
        name = f"{label}: {run.summary['status_detail']}" if run.diverged else label
        handles.append(Line2D([], [], color=color, lw=2.2, label=name))
        if h.empty:
            continue
        for split in splits:
            style = dict(lw=0.9, ls="--", alpha=0.8) if split == "train" else dict(lw=2.2)
            values = h[f"{split}_{metric}"] * (100 if metric == "error" else 1)
            ax.plot(h["iteration"], values, color=color, **style)
        if run.diverged:
            ax.plot(h["iteration"].iloc[-1], 100 if metric == "error" else 0, "x", color=color, ms=10, mew=2)
    if len(splits) > 1:
        handles += [Line2D([], [], color="0.3", lw=0.9, ls="--", label="training (dashed)"),
                    Line2D([], [], color="0.3", lw=2.2, label="test (bold)")]
    if reference is not None:
        ax.axhline(reference[0], color="black", lw=1, ls=":")
        handles.append(Line2D([], [], color="black", lw=1, ls=":", label=reference[1]))
    ax.set(xlabel="iteration", ylabel=f"{metric} (%)" if metric == "error" else metric)
    ax.set_title(title, wrap=True)
    ax.grid(alpha=0.3)
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0, frameon=False)
    ax.figure.tight_layout()
    return detached(ax.figure) if own else ax.figure


def image_grid(images: torch.Tensor, titles: list[str] | None = None, ncols: int = 8, title: str = ""):
    """Show uint8 (N, 3, 32, 32) images, or float images (scaled to [0, 1] per image)."""
    n = len(images)
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(max(1.1 * ncols, 4), 1.3 * nrows + 0.5), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        img = images[i].detach().cpu().float()
        img = img / 255 if images.dtype == torch.uint8 else (img - img.min()) / (img.max() - img.min() + 1e-8)
        ax.imshow(img.permute(1, 2, 0).numpy(), interpolation="nearest")
        if titles:
            ax.set_title(titles[i], fontsize=9)
    fig.suptitle(title, wrap=True)
    fig.tight_layout()
    return detached(fig)


def layer_table(model: nn.Module, parts: list[str], image_size: int = 32) -> pd.DataFrame:
    """Output shape, weighted layers and parameters of each named part of `model`, and a total row."""
    shapes, hooks = {}, []
    for name in parts:
        hooks.append(getattr(model, name).register_forward_hook(
            lambda module, inputs, output, name=name: shapes.__setitem__(name, tuple(output.shape[1:]))))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, image_size, image_size))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)

    def weighted(module):
        return sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in module.modules())

    rows = [{"part": name, "output (C×H×W)": "×".join(map(str, shapes[name])),
             "weighted layers": weighted(getattr(model, name)), "parameters": count_parameters(getattr(model, name))}
            for name in parts]
    rows.append({"part": "total", "output (C×H×W)": "", "weighted layers": weighted(model),
                 "parameters": count_parameters(model)})
    return pd.DataFrame(rows).set_index("part")


def side_by_side(groups: dict[str, dict[str, RunResult]], title: str = ""):
    """`error_curves` of each group of runs in its own panel, one per row, sharing the error axis."""
    fig, axes = plt.subplots(len(groups), 1, figsize=(10, 3.6 * len(groups)), sharey=True, squeeze=False)
    for ax, (name, runs) in zip(axes.flat, groups.items()):
        error_curves(runs, title=name, ax=ax)
    if title:
        fig.suptitle(title, wrap=True)
    fig.tight_layout()
    return detached(fig)
