"""Tables and matplotlib figures for the book. Figures only: no saving, no display (every
figure comes back closed in pyplot, so it shows only where a cell returns it).

Tables come back as pandas Stylers (`styled`): thousands separators, one precision per
table, "–" where a run has no value, and a caption; figures use the book's font sizes
(`use_book_style`), sized to the page's width so that their text reads at page width.
"""
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
# Table 6: test error (%) on CIFAR-10 (best of 5 runs for ResNet-110: 6.43, mean 6.61 ± 0.16).
PAPER_ERROR = {"ResNet-20": 8.75, "ResNet-32": 7.51, "ResNet-44": 7.17, "ResNet-56": 6.97,
               "ResNet-110": 6.43, "ResNet-1202": 7.93}


# Figure text sizes (points) that stay readable when a figure is shown at the page's width.
BOOK_STYLE = {"font.size": 12, "axes.titlesize": 12, "axes.labelsize": 12, "xtick.labelsize": 11,
              "ytick.labelsize": 11, "legend.fontsize": 11, "figure.titlesize": 12, "figure.dpi": 100}
# runs_table's columns that chapters show by default (dataset and device are in the caption).
RUN_COLUMNS = ("status", "iterations", "final test error %", "best val error %", "test error at best val %",
               "train time s", "images/s")


def use_book_style() -> None:
    """Set BOOK_STYLE for the figures that follow."""
    plt.rcParams.update(BOOK_STYLE)


def _detached(fig):
    """`fig`, closed in pyplot: a notebook cell that returns it shows it once (pyplot's inline
    backend would show it again at the end of the cell), and a glued figure is not shown."""
    plt.close(fig)
    return fig


def _number(value, precision: int) -> str:
    """One table cell: '–' for a missing value, 12,345 for integers, 1,234.5 for floats
    (`precision` decimals below 100, none from 100 on), text as it is."""
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
    """`table` as the book shows it: every number through `_number` (thousands separators,
    `precision` decimals, '–' for missing), columns of numbers marked with the CSS class
    `number` (right-aligned by book/_static/book.css), the caption above it."""
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
    """One row per run: status, iterations, final and best errors (%), final training loss,
    lowest test error seen, time, speed, data, device. A run that never evaluated (or
    diverged before its first evaluation) has None where it has no number."""
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


def train_test_gap(run: RunResult) -> str:
    """Final test error minus final (augmented) training error, in points, formatted."""
    h = run.history
    if h.empty or pd.isna(h["test_error"].iloc[-1]) or pd.isna(h["train_error"].iloc[-1]):
        return "–"
    return f"{100 * (h['test_error'].iloc[-1] - h['train_error'].iloc[-1]):.1f}"


def max_curve_gap(a: RunResult, b: RunResult, column: str = "train_error") -> str:
    """The largest difference (points) between two runs' `column` at the same evaluations,
    formatted; '–' where they share no evaluation."""
    merged = a.history[["iteration", column]].merge(b.history[["iteration", column]], on="iteration")
    if merged.empty:
        return "–"
    return f"{100 * (merged[column + '_x'] - merged[column + '_y']).abs().max():.2f}"


def error_curves(runs: dict[str, RunResult], title: str = "", ax=None, metric: str = "error",
                 splits=("train", "test"), reference: tuple[float, str] | None = None):
    """The paper's Fig. 6 style: thin dashed training error, bold test error, per iteration,
    one colour per run. The legend names each run once (plus what dashed and bold mean) and
    sits beside the plot. A diverged run ends with an x at the iteration where its loss
    stopped being finite. `reference`: (value, label) drawn as a dotted horizontal line."""
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
    return _detached(ax.figure) if own else ax.figure


def lr_traces(runs: dict[str, RunResult], title: str = "", ax=None):
    """Learning rate of every iteration, log scale."""
    own = ax is None
    ax = ax or plt.subplots(figsize=(10, 3.8))[1]
    for label, run in runs.items():
        if not run.lr_trace.empty:
            ax.plot(run.lr_trace["iteration"], run.lr_trace["lr"], label=label)
    ax.set(xlabel="iteration", ylabel="learning rate", yscale="log")
    ax.set_title(title, wrap=True)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0, frameon=False)
    ax.figure.tight_layout()
    return _detached(ax.figure) if own else ax.figure


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
    return _detached(fig)


def confusion_matrix(confusion: torch.Tensor, classes: list[str], title: str = ""):
    """Row-normalized confusion matrix (rows: true class, columns: predicted)."""
    cm = confusion.double() / confusion.sum(1, keepdim=True).clamp(min=1)
    fig, ax = plt.subplots(figsize=(8, 7))
    im = ax.imshow(cm.numpy(), cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{100 * cm[i, j]:.0f}", ha="center", va="center", fontsize=10,
                    color="white" if cm[i, j] > 0.5 else "black")
    ax.set(xlabel="predicted", ylabel="true")
    ax.set_title(title, wrap=True)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return _detached(fig)


def weight_stats(model: nn.Module) -> pd.DataFrame:
    """Root-mean-square of the conv and linear weights (parameters with >= 2 dims), grouped
    by the model's top-level child (conv1, stage1..3, fc for the CIFAR ResNets): one row per
    group with its number of weights and their RMS, e.g. to compare a trained model with a
    fresh one (chapter 5: how far Adam at lr 0.1 moves the weights)."""
    groups: dict[str, list] = {}
    for name, p in model.named_parameters():
        if p.dim() >= 2:
            g = groups.setdefault(name.split(".")[0], [0, 0.0])
            g[0] += p.numel()
            g[1] += p.detach().double().pow(2).sum().item()
    return pd.DataFrame([dict(group=k, weights=n, rms=(s / n) ** 0.5) for k, (n, s) in groups.items()]).set_index("group")


def layer_table(model: nn.Module, parts: list[str], image_size: int = 32) -> pd.DataFrame:
    """Output shape (C×H×W), weighted layers (conv + linear) and parameters of each named
    top-level part of `model` for one 3×image_size×image_size input, plus a total row."""
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


def complexity_shown(models: dict[str, nn.Module]) -> pd.DataFrame:
    """`complexity_table` as the book prints it: parameters, the paper's (Table 6), FLOPs in
    millions, the paper's test error."""
    table = complexity_table(models)
    return pd.DataFrame({
        "parameters": table["params"],
        "paper (Table 6)": table["paper_params"].map(lambda p: None if pd.isna(p) else f"{p / 1e6:.2f}M"),
        "FLOPs": table["flops"].map(lambda f: f"{f / 1e6:,.1f}M"),
        "paper's test error %": [PAPER_ERROR.get(name) for name in table.index],
    }).astype(object)


def module_flops(model: nn.Module, names: list[str]) -> dict[str, float]:
    """fvcore FLOPs (millions of multiply-adds, one 3x32x32 image) of the named submodules."""
    from fvcore.nn import FlopCountAnalysis
    analysis = FlopCountAnalysis(model, torch.zeros(1, 3, 32, 32))
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    by_module = analysis.by_module()
    return {name: by_module[name] / 1e6 for name in names}


def imagenet_comparison(r34: nn.Module, r32: nn.Module) -> tuple[pd.DataFrame, dict]:
    """Parameters and FLOPs of the ImageNet ResNet-34 (10 classes) and ResNet-32 on a 32x32
    image (table), and the numbers the model chapter quotes (`r34_*`)."""
    from fvcore.nn import FlopCountAnalysis
    from torchvision.models import resnet34
    table = complexity_table({"ResNet-34 (ImageNet layout, 10 classes)": r34, "ResNet-32": r32})[["params", "flops"]]
    flops224 = FlopCountAnalysis(r34, torch.zeros(1, 3, 224, 224))
    flops224.unsupported_ops_warnings(False)
    flops224.uncalled_modules_warnings(False)
    params = table["params"]
    facts = {"r34_params": f"{params.iloc[0]:,}", "r34_params_1000": f"{count_parameters(resnet34()):,}",
             "r34_flops32": f"{table['flops'].iloc[0] / 1e6:.3f}M", "r34_flops224": f"{flops224.total() / 1e9:.2f}G",
             "r34_ratio": f"{params.iloc[0] / params.iloc[1]:.0f}"}
    return table.rename(columns={"params": "parameters", "flops": "FLOPs"}).astype(object), facts


def feature_map_sizes(model: nn.Module, parts: list[str], sizes=(224, 32)) -> pd.DataFrame:
    """Output shape of each named part of `model` for each input size (one column per size)."""
    return pd.DataFrame({f"{s}×{s} input": layer_table(model, parts, image_size=s)["output (C×H×W)"].drop("total")
                         for s in sizes}).rename_axis("part")


def mean_image_panels(normalizer, image: torch.Tensor, class_name: str, title: str = ""):
    """The per-pixel mean and one uint8 image, at true scale and stretched to each panel's own
    range, and the image minus the mean (stretched)."""
    def stretch(img):
        return (img - img.min()) / (img.max() - img.min() + 1e-8)

    panels = {"mean image (true scale)": normalizer.mean, f"a {class_name} (true scale)": image.float() / 255,
              "mean image (stretched)": stretch(normalizer.mean),
              "the image minus the mean (stretched)": stretch(normalizer(image[None])[0])}
    fig, axes = plt.subplots(1, 4, figsize=(10, 3.2))
    for ax, (name, img) in zip(axes, panels.items()):
        ax.imshow(img.permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_title(name, fontsize=10, wrap=True)
        ax.axis("off")
    if title:
        fig.suptitle(title, wrap=True)
    fig.tight_layout()
    return _detached(fig)


def class_samples(dataset, indices: torch.Tensor, per_class: int, title: str = ""):
    """The first `per_class` images of each class among `indices`: one column per class."""
    labels = dataset.train_labels[indices]
    per = torch.stack([indices[labels == c][:per_class] for c in range(len(dataset.classes))])
    order = per.T.flatten()  # one row per rank, one column per class
    return image_grid(dataset.train_images[order], [dataset.classes[int(dataset.train_labels[i])] for i in order],
                      ncols=len(dataset.classes), title=title)


def augmentation_views(dataset, count: int, mean_sample: int, seed: int, title: str = ""):
    """One training image of each of the first `count` classes, then three draws of the paper's
    pad-4 crop + flip (the mean added back for display, so the padding shows as the mean)."""
    from . import data as D
    idx = D.balanced_subset(dataset.train_labels, 10)[:count]
    images = dataset.train_images[idx]
    normalizer = D.Normalizer.fit(dataset.train_images[:mean_sample], "per-pixel-mean")
    g = torch.Generator().manual_seed(seed)
    views = [normalizer(images)] + [D.augment(normalizer(images), g) for _ in range(3)]
    titles = [dataset.classes[int(c)] for c in dataset.train_labels[idx]]
    titles += [f"draw {k}" for k in (1, 2, 3) for _ in range(count)]
    pixels = [((v + normalizer.mean) * 255).round().clamp(0, 255).to(torch.uint8) for v in views]
    return image_grid(torch.cat(pixels), titles, ncols=count, title=title)


def normalization_facts(dataset, mean_sample: int, title: str = "") -> tuple[object, dict]:
    """The per-pixel mean of the first `mean_sample` training images next to one image and that
    image minus the mean (figure), and the mean's range, channel averages and the per-channel
    std (the augmentation chapter's `aug_*` values)."""
    from . import data as D
    sample = dataset.train_images[:mean_sample]
    pixel, channel = D.Normalizer.fit(sample, "per-pixel-mean"), D.Normalizer.fit(sample, "per-channel")
    first = int(D.balanced_subset(dataset.train_labels, 10)[0])
    image = dataset.train_images[first]
    panel = torch.stack([pixel.mean, image.float() / 255, pixel(image[None])[0]])
    fig = image_grid(panel, ["mean image", f"a {dataset.classes[int(dataset.train_labels[first])]}", "minus the mean"],
                     ncols=3, title=title)
    facts = {"aug_mean_n": f"{len(sample):,}", "aug_mean_min": f"{pixel.mean.min():.3f}",
             "aug_mean_max": f"{pixel.mean.max():.3f}",
             "aug_mean_rgb": ", ".join(f"{float(v):.3f}" for v in pixel.mean.mean((1, 2))),
             "aug_std_rgb": ", ".join(f"{float(v):.3f}" for v in channel.std.flatten())}
    return fig, facts


def plateau_table(runs: dict[str, RunResult]) -> pd.DataFrame:
    """For each plateau-scheduled run: its patience, evaluations, learning-rate reductions (read
    from the LR trace), the first reduction's iteration and the final learning rate."""
    rows = []
    for label, run in runs.items():
        if run.config["schedule"] != "plateau":
            continue
        trace = run.lr_trace
        drops = trace[trace["lr"].diff() < 0] if len(trace) else trace
        rows.append({"run": label, "patience": run.config["plateau_patience"], "evaluations": len(run.history),
                     "LR reductions": len(drops),
                     "first reduction at": int(drops["iteration"].iloc[0]) if len(drops) else "never",
                     "final LR": f"{trace['lr'].iloc[-1]:g}" if len(trace) else None})
    return pd.DataFrame(rows).set_index("run").astype(object)


def plateau_verdicts(runs: dict[str, RunResult]) -> dict[int, str]:
    """'never reduced the learning rate' or 'reduced it N time(s), first at iteration I', per
    plateau patience."""
    verdicts = {}
    for _, row in plateau_table(runs).iterrows():
        verdicts[row["patience"]] = ("never reduced the learning rate" if row["LR reductions"] == 0 else
                                     f"reduced it {row['LR reductions']} time(s), first at iteration "
                                     f"{row['first reduction at']:,}")
    return verdicts


def side_by_side(groups: dict[str, dict[str, RunResult]], title: str = ""):
    """`error_curves` of each group of runs in its own panel, one panel per row, sharing the
    error axis (e.g. plain networks above ResNets, the paper's Fig. 6)."""
    fig, axes = plt.subplots(len(groups), 1, figsize=(10, 3.6 * len(groups)), sharey=True, squeeze=False)
    for ax, (name, runs) in zip(axes.flat, groups.items()):
        error_curves(runs, title=name, ax=ax)
    if title:
        fig.suptitle(title, wrap=True)
    fig.tight_layout()
    return _detached(fig)
