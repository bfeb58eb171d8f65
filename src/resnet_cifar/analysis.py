"""Tables, figures and seed statistics of run records for the book's pages. A figure comes back
closed in pyplot, so it shows only where a cell returns it."""
from __future__ import annotations

import math
import statistics

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.lines import Line2D
from torch import nn

from .models import count_parameters, flop_count
from .runs import RunResult

# Table 6 of the paper: parameters and test error (%) of the CIFAR-10 ResNets (option A); its
# only spread: ResNet-110, best of 5 runs 6.43, mean 6.61 ± 0.16.
PAPER_PARAMS = {"ResNet-20": 0.27e6, "ResNet-32": 0.46e6, "ResNet-44": 0.66e6,
                "ResNet-56": 0.85e6, "ResNet-110": 1.7e6, "ResNet-1202": 19.4e6}
PAPER_ERROR = {"ResNet-20": 8.75, "ResNet-32": 7.51, "ResNet-44": 7.17, "ResNet-56": 6.97,
               "ResNet-110": 6.43, "ResNet-1202": 7.93}
PAPER_110_MEAN, PAPER_110_STD = 6.61, 0.16
# Figure text sizes (points) that stay readable when a figure is shown at the page's width.
BOOK_STYLE = {"font.size": 12, "axes.titlesize": 12, "axes.labelsize": 12, "xtick.labelsize": 11,
              "ytick.labelsize": 11, "legend.fontsize": 11, "figure.titlesize": 12,
              "figure.dpi": 100}
# runs_table's columns that the chapters show by default.
RUN_COLUMNS = ("status", "iterations", "final test error %", "best val error %",
               "test error at best val %", "train time s", "images/s")
NOT_RESOLVED = "not resolved at this budget"


def no_value(value) -> bool:
    """None, or NaN (an evaluation that failed)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def fmt(value, spec: str = ".1f", missing: str = "–") -> str:
    """`value` formatted with `spec`, or `missing` when there is no value."""
    return missing if no_value(value) else format(value, spec)


def detached(fig):
    """`fig`, closed in pyplot: a cell that returns it shows it once, a glued one not at all."""
    plt.close(fig)
    return fig


def _is_number(value) -> bool:
    return (isinstance(value, (int, float, np.integer, np.floating))
            and not isinstance(value, (bool, np.bool_)))


def _number(value, precision: int) -> str:
    """One table cell: '–', 12,345, or 1,234.5 (`precision` decimals below 100, none above)."""
    if no_value(value):
        return "–"
    if not _is_number(value):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return f"{value:,}"
    return f"{value:,.{0 if abs(value) >= 100 else precision}f}"


def styled(table: pd.DataFrame, caption: str, precision: int = 1):
    """`table` as the book shows it: numbers through `_number`, right-aligned (CSS class `number`,
    book/_static/book.css), the caption above it."""
    numeric = [c for c in table.columns if len(table) and any(map(_is_number, table[c]))
               and all(_is_number(v) or v is None for v in table[c])]
    classes = pd.DataFrame("", index=table.index, columns=table.columns)
    classes[numeric] = "number"
    return (table.style.format(lambda v: _number(v, precision))
            .format_index(lambda v: _number(v, precision), axis=0)
            .set_td_classes(classes).set_caption(caption))


def complexity_table(models: dict[str, nn.Module]) -> pd.DataFrame:
    """Parameters and fvcore FLOPs (multiply-adds, one 3x32x32 image) per model."""
    return pd.DataFrame([dict(model=name, params=count_parameters(model), flops=flop_count(model),
                              paper_params=PAPER_PARAMS.get(name))
                         for name, model in models.items()]).set_index("model")


def runs_table(runs: dict[str, RunResult]) -> pd.DataFrame:
    """One row per run: status, iterations, errors (%), training loss, time, speed."""
    def pct(v):
        return None if no_value(v) else 100 * v

    rows = []
    for label, run in runs.items():
        s, h = run.summary, run.history
        seconds, done = s["wall_time_s"], s["iterations_done"]
        rows.append({"run": label, "status": s["status"], "iterations": done,
                     "final test error %": pct(s["final_test_error"]),
                     "best val error %": pct(s["best_val_error"]),
                     "test error at best val %": pct(s["test_error_at_best_val"]),
                     "lowest test error seen %": pct(h["test_error"].min()) if len(h) else None,
                     "final train loss": float(h["train_loss"].iloc[-1]) if len(h) else None,
                     "train time s": seconds, "images/s": s["train_images_per_s"],
                     "ms / iteration": 1000 * seconds / done if seconds and done else None})
    return pd.DataFrame(rows).set_index("run").astype(object)


def error_curves(runs: dict[str, RunResult], title: str = "", ax=None,
                 reference: tuple[float, str] | None = None):
    """The paper's Fig. 6 style: dashed training error, bold test error, a colour per run, the
    legend beside; a diverged run ends with an x; `reference`: (value, label), dotted."""
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
        ax.plot(h["iteration"], h["train_error"] * 100, color=color, lw=0.9, ls="--", alpha=0.8)
        ax.plot(h["iteration"], h["test_error"] * 100, color=color, lw=2.2)
        if run.diverged:
            ax.plot(h["iteration"].iloc[-1], 100, "x", color=color, ms=10, mew=2)
    handles += [Line2D([], [], color="0.3", lw=0.9, ls="--", label="training (dashed)"),
                Line2D([], [], color="0.3", lw=2.2, label="test (bold)")]
    if reference is not None:
        ax.axhline(reference[0], color="black", lw=1, ls=":")
        handles.append(Line2D([], [], color="black", lw=1, ls=":", label=reference[1]))
    ax.set(xlabel="iteration", ylabel="error (%)")
    ax.set_title(title, wrap=True)
    ax.grid(alpha=0.3)
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0,
              frameon=False)
    ax.figure.tight_layout()
    return detached(ax.figure) if own else ax.figure


def side_by_side(groups: dict[str, dict[str, RunResult]], title: str = ""):
    """`error_curves` of each group of runs in its own panel, one per row, one error axis."""
    fig, axes = plt.subplots(len(groups), 1, figsize=(10, 3.6 * len(groups)), sharey=True,
                             squeeze=False)
    for ax, (name, runs) in zip(axes.flat, groups.items()):
        error_curves(runs, title=name, ax=ax)
    if title:
        fig.suptitle(title, wrap=True)
    fig.tight_layout()
    return detached(fig)


def image_grid(images: torch.Tensor, titles: list[str] | None = None, ncols: int = 8,
               title: str = ""):
    """Show uint8 (N, 3, 32, 32) images, or float images (scaled to [0, 1] per image)."""
    nrows = (len(images) + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(max(1.1 * ncols, 4), 1.3 * nrows + 0.5),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    uint8 = images.dtype == torch.uint8
    for i, (ax, img) in enumerate(zip(axes.flat, images)):
        img = img.detach().cpu().float()
        low, span = (0, 255) if uint8 else (img.min(), img.max() - img.min() + 1e-8)
        ax.imshow(((img - low) / span).permute(1, 2, 0).numpy(), interpolation="nearest")
        if titles:
            ax.set_title(titles[i], fontsize=9)
    fig.suptitle(title, wrap=True)
    fig.tight_layout()
    return detached(fig)


def layer_table(model: nn.Module, parts: list[str], image_size: int = 32) -> pd.DataFrame:
    """Output shape, weighted layers and parameters of each named part of `model`, and a total."""
    shapes = {}
    hooks = [getattr(model, name).register_forward_hook(
        lambda module, inputs, output, name=name: shapes.__setitem__(name, output.shape[1:]))
        for name in parts]
    was_training = model.training
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, image_size, image_size))
    model.train(was_training)
    for hook in hooks:
        hook.remove()

    def row(part: str, module: nn.Module, shape: str) -> dict:
        weighted = sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in module.modules())
        return {"part": part, "output (C×H×W)": shape, "weighted layers": weighted,
                "parameters": count_parameters(module)}
    rows = [row(name, getattr(model, name), "×".join(map(str, shapes[name]))) for name in parts]
    return pd.DataFrame(rows + [row("total", model, "")]).set_index("part")


# ---------------------------------------------------------------- arms over seeds
def values(runs: list[RunResult], key: str = "final_test_error") -> list[float]:
    """`key` (an error in %, from the summary) of every complete run; others are left out."""
    return [float(v) for v in (run.error(key) for run in runs if run.complete) if not no_value(v)]


def mean_std(xs: list[float]) -> tuple[float | None, float | None]:
    return (statistics.mean(xs) if xs else None, statistics.stdev(xs) if len(xs) > 1 else None)


def verdict(arm: list[float], ref: list[float], ref_label: str) -> str:
    """`arm` against the reference arm `ref` (errors in %): two arms differ only when the
    difference of their means is larger than the seeds' spread (std_arm + std_ref)."""
    if not arm or not ref:
        return "no complete run to compare"
    (ma, sa), (mr, sr) = mean_std(arm), mean_std(ref)
    delta = ma - mr
    if sa is None or sr is None:
        return f"{NOT_RESOLVED}: one seed (Δ {delta:+.2f} points, no spread to compare it with)"
    spread = sa + sr
    if abs(delta) <= spread:
        return (f"{NOT_RESOLVED}: |Δ| {abs(delta):.2f} ≤ spread {spread:.2f} points "
                f"(std {sa:.2f} + {sr:.2f})")
    return (f"{'lower' if delta < 0 else 'higher'} error than {ref_label} by {abs(delta):.2f} "
            f"points, beyond the seeds' spread of {spread:.2f} (n = {len(arm)} and {len(ref)})")


def seed_comparison(arms: dict[str, list[RunResult]], reference: str,
                    key: str = "final_test_error") -> tuple[pd.DataFrame, dict[str, str]]:
    """A row per arm (n, mean, std, best, each seed, Δ mean, verdict), and {arm: verdict}."""
    ref = values(arms[reference], key)
    rows, verdicts = {}, {}
    for label, runs in arms.items():
        xs = values(runs, key)
        mean, std = mean_std(xs)
        seeds = ", ".join(f"{r.config.get('seed')}: " + (
            f"{r.error(key):.2f}" if r.complete and r.error(key) is not None
            else r.summary.get("status", "–")) for r in runs)
        verdicts[label] = "reference" if label == reference else verdict(xs, ref, reference)
        rows[label] = {"n": f"{len(xs)} of {len(runs)}", "mean %": mean, "± std": std,
                       "best %": min(xs) if xs else None, "each seed (seed: error %)": seeds,
                       "Δ mean vs reference": None if mean is None or not ref
                       else mean - statistics.mean(ref),
                       "verdict": verdicts[label]}
    return pd.DataFrame(rows).T.rename_axis("arm"), verdicts


def summary_sentence(verdicts: dict[str, str], condition: str) -> str:
    """One sentence over every arm's verdict, starting with `condition` (profile, data, seeds)."""
    compared = {label: v for label, v in verdicts.items() if v != "reference"}
    if not compared:
        return (f"{condition}, only the reference arm is trained at this profile: nothing to "
                "compare.")
    resolved = [v for v in compared.values() if not v.startswith((NOT_RESOLVED, "no complete"))]
    return (f"{condition}, {len(resolved)} of {len(compared)} differences are larger than the "
            "seeds' spread: " + "; ".join(f"{label}: {v}" for label, v in compared.items()) + ".")


def comparison(ch, arms: dict[str, list[RunResult]], reference: str, title: str, prefix: str):
    """`seed_comparison` as a captioned table, and the texts `<prefix>_verdict`, `<prefix>_n`."""
    table, verdicts = seed_comparison(arms, reference)
    n = sorted({len(runs) for runs in arms.values()})
    seeds = f"{n[0]}" if len(n) == 1 else f"{n[0]}–{n[-1]}"
    condition = f"At profile {ch.profile} on {ch.runs_label} with {seeds} seed(s) per arm"
    every = [r for runs in arms.values() for r in runs]
    return (styled(table, ch.caption(f"{title}: final test error over seeds", *every), 2),
            {f"{prefix}_verdict": summary_sentence(verdicts, condition), f"{prefix}_n": seeds})
