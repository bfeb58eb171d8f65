"""Tables and matplotlib figures for the book. Figures only: no saving, no display."""
from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import torch
from torch import nn

from .models import count_parameters
from .models import flop_count
from .runs import RunResult

# Table 6 of the paper: parameters of the CIFAR-10 ResNets (option A).
PAPER_PARAMS = {"ResNet-20": 0.27e6, "ResNet-32": 0.46e6, "ResNet-44": 0.66e6, "ResNet-56": 0.85e6,
                "ResNet-110": 1.7e6, "ResNet-1202": 19.4e6}
# Table 6: test error (%) on CIFAR-10 (best of 5 runs for ResNet-110: 6.43, mean 6.61 ± 0.16).
PAPER_ERROR = {"ResNet-20": 8.75, "ResNet-32": 7.51, "ResNet-44": 7.17, "ResNet-56": 6.97,
               "ResNet-110": 6.43, "ResNet-1202": 7.93}


def complexity_table(models: dict[str, nn.Module]) -> pd.DataFrame:
    """Parameters and fvcore FLOPs (multiply-adds, one 3x32x32 image) per model."""
    rows = []
    for name, model in models.items():
        rows.append(dict(model=name, params=count_parameters(model), flops=flop_count(model),
                         paper_params=PAPER_PARAMS.get(name)))
    return pd.DataFrame(rows).set_index("model")


def runs_table(runs: dict[str, RunResult]) -> pd.DataFrame:
    """One row per run: status, final and best errors (%), time, speed, data, device."""
    rows = []
    for label, run in runs.items():
        s = run.summary
        pct = lambda v: None if v is None else 100 * v  # noqa: E731
        rows.append({"run": label, "status": s.get("status_detail", s["status"]),
                     "iterations": s["iterations_done"], "final test error %": pct(s["final_test_error"]),
                     "best val error %": pct(s["best_val_error"]),
                     "test error at best val %": pct(s["test_error_at_best_val"]),
                     "train time s": s["wall_time_s"], "images/s": s["train_images_per_s"],
                     "dataset": s["dataset_label"], "device": s["device"]})
    return pd.DataFrame(rows).set_index("run")


def error_curves(runs: dict[str, RunResult], title: str = "", ax=None, metric: str = "error",
                 splits=("train", "test")):
    """The paper's Fig. 6 style: thin dashed training error, bold test error, per iteration.
    A diverged run ends with an x at the iteration where its loss stopped being finite."""
    ax = ax or plt.subplots(figsize=(7, 4))[1]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, run) in enumerate(runs.items()):
        h, color = run.history, colors[i % len(colors)]
        if h.empty:
            continue
        for split in splits:
            style = dict(lw=0.9, ls="--", alpha=0.8) if split == "train" else dict(lw=2.2)
            values = h[f"{split}_{metric}"] * (100 if metric == "error" else 1)
            ax.plot(h["iteration"], values, color=color, label=f"{label} ({split})", **style)
        if run.diverged:
            ax.plot(h["iteration"].iloc[-1], 100 if metric == "error" else 0, "x", color=color, ms=10, mew=2,
                    label=f"{label}: {run.summary['status_detail']}")
    ax.set(xlabel="iteration", ylabel=f"{metric} (%)" if metric == "error" else metric, title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return ax.figure


def lr_traces(runs: dict[str, RunResult], title: str = "", ax=None):
    """Learning rate of every iteration, log scale."""
    ax = ax or plt.subplots(figsize=(7, 3))[1]
    for label, run in runs.items():
        if not run.lr_trace.empty:
            ax.plot(run.lr_trace["iteration"], run.lr_trace["lr"], label=label)
    ax.set(xlabel="iteration", ylabel="learning rate", yscale="log", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return ax.figure


def image_grid(images: torch.Tensor, titles: list[str] | None = None, ncols: int = 8, title: str = ""):
    """Show uint8 (N, 3, 32, 32) images, or float images (scaled to [0, 1] per image)."""
    n = len(images)
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.3 * ncols, 1.45 * nrows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        img = images[i].detach().cpu().float()
        img = img / 255 if images.dtype == torch.uint8 else (img - img.min()) / (img.max() - img.min() + 1e-8)
        ax.imshow(img.permute(1, 2, 0).numpy(), interpolation="nearest")
        if titles:
            ax.set_title(titles[i], fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def confusion_matrix(confusion: torch.Tensor, classes: list[str], title: str = ""):
    """Row-normalized confusion matrix (rows: true class, columns: predicted)."""
    cm = confusion.double() / confusion.sum(1, keepdim=True).clamp(min=1)
    fig, ax = plt.subplots(figsize=(6, 5))
    im = ax.imshow(cm.numpy(), cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(classes)), classes, fontsize=8)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{100 * cm[i, j]:.0f}", ha="center", va="center", fontsize=7,
                    color="white" if cm[i, j] > 0.5 else "black")
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


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
