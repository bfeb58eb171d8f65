"""The Performance appendix's computations: the benchmark run at the page's profile, its tables
and figure, captioned with where they were measured, and the recorded benchmarks beside it."""
from __future__ import annotations

import inspect

import pandas as pd

from .. import bench, bench_summary

# The CPU-sized profiles' benchmark (smoke, cpu): seconds of timing per variant, so that a build from
# committed records stays within minutes on a CPU (quick and paper: the full one); smoke, which
# every test build executes, times each figure for a quarter of a second in two rounds.
CUT_DOWN = dict(variants=["fp32", "fp32+cl", "bf16+cl"], workers=(0,), train_images=512, seconds=0.5,
             rounds=3, warmup=1, profile=1)
BENCHMARK = {"smoke": dict(CUT_DOWN, seconds=0.25, rounds=2), "cpu": CUT_DOWN}
RECORDED_COLUMNS = ["device_name", "date", "library", "conventional", "ratio", "fastest_fp32",
                    "fastest_fp32_rate", "fastest", "fastest_rate", "schedule_fp32_min",
                    "schedule_fastest_min", "flagged"]


def measure(ch, seed: int = 0) -> dict:
    """`bench.run_benchmark` on the chapter's device and data, cut down on the smoke and cpu profiles
    (BENCHMARK), on the profile's CPU threads as its runs (`Chapter.threads`; smoke: one)."""
    with ch.profile_threads():
        return bench.run_benchmark(device=ch.device, dataset=ch.dataset, seed=seed, **BENCHMARK.get(ch.profile, {}))


def cut_down_text(ch) -> str:
    """What the page's benchmark leaves out at this profile (BENCHMARK), for the page's text."""
    defaults = {k: v.default for k, v in inspect.signature(bench.run_benchmark).parameters.items()}
    full = (f"Profiles quick and paper run the command's defaults: every variant, {defaults['rounds']} timed rounds "
            f"of about {defaults['seconds']:g} s per figure.")
    s = BENCHMARK.get(ch.profile)
    if s is None:
        return full
    n = ch.threads
    threads = f", on {n} CPU thread{'s' * (n != 1)}, as the profile's runs train" if n else ""
    return (f"With profile {ch.profile} the benchmark is cut down so that the page builds quickly on a CPU: "
            f"{s['train_images']} training images, {s['warmup']} warm-up step, {s['rounds']} timed rounds of about "
            f"{s['seconds']:g} s per figure, the variants {', '.join(s['variants'])}, the conventional pipeline with "
            f"num_workers={', '.join(map(str, s['workers']))} only, {s['profile']} profiled step, and no torch.compile "
            "(whose compilation alone takes tens of seconds on a CPU)" + threads + ". " + full)


def caption(ch, record: dict, text: str) -> str:
    return f"{text} — profile {ch.profile} · {record['info']['dataset']} · {record['info']['device_name']}"


def tables(ch, record: dict) -> dict:
    """The benchmark's tables, styled and captioned: conventional, variants, profile."""
    t = bench_summary.tables(record)
    return {
        "conventional": t["conventional"].style.format(precision=2).hide(axis="index").set_caption(
            caption(ch, record, "Library vs conventional pipeline, images/s")),
        "variants": t["variants"].style.format(precision=1, na_rep="–").hide(axis="index").set_caption(
            caption(ch, record, "Step variants: library and model-only rates, the data work per batch, "
                                "the step's GFLOP/s and its share of the matmul peak")),
        "profile": t["profile"].style.format(precision=1).hide(axis="index").set_caption(
            caption(ch, record, f"torch.profiler over {record['profile']['steps']} library fp32 step(s): "
                                f"the ops with the most {record['profile']['time']}")),
    }


def rates_figure(ch, record: dict):
    """Model-only and library images/s per step variant (horizontal bars)."""
    import matplotlib.pyplot as plt
    rates = bench_summary.tables(record)["variants"].set_index("variant")[["model-only images/s", "library images/s"]]
    ax = rates.iloc[::-1].plot.barh(figsize=(8, 3), xlabel="",
                                    title=caption(ch, record, "Training images/s by step variant"))
    ax.figure.tight_layout()
    plt.close(ax.figure)
    return ax.figure


def recorded(records: dict) -> "pd.io.formats.style.Styler":
    """The recorded benchmarks side by side (`bench_summary.summarize` of each), one column per record
    (a row per figure: twelve figures would not fit the page as columns)."""
    table = pd.DataFrame({name: bench_summary.summarize(rec) for name, rec in records.items()}).loc[RECORDED_COLUMNS]
    return table.rename_axis("figure").style.format(precision=2).set_caption(
        "Recorded benchmarks: library vs conventional (fp32, same rounds), the fastest variants, the paper's "
        "64k iterations in minutes, and the figures whose rounds disagree")


def recorded_variants(records: dict, name: str = "bench-cpu") -> "pd.io.formats.style.Styler":
    """The step variants of the recorded benchmark `name`."""
    table = bench_summary.tables(records[name])["variants"]
    return table.style.format(precision=1, na_rep="–").hide(axis="index").set_caption(
        f"Recorded benchmark ({name}.json): step variants — {records[name]['info']['device_name']}")


def fused(records: dict) -> "pd.io.formats.style.Styler":
    """The fused-training figures of every record that has them (`bench --fused N`): N, the
    aggregate and solo images/s (medians of alternating rounds, with their ranges), the ratio
    and the GPU memory; an empty table, captioned so, where no record has any."""
    rows = [{"record": name, "device": rec.get("info", {}).get("device_name", "–"), "N fused": r["n"],
             "images/s": r["images_per_s"], "range": "–".join(f"{x:,.0f}" for x in r.get("spread") or []),
             "one alone": r["solo_images_per_s"], "ratio": r["ratio"],
             "GPU memory GB": None if r.get("gpu_memory_bytes") is None else r["gpu_memory_bytes"] / 1e9}
            for name, rec in records.items() for r in rec.get("fused") or []]
    caption = ("Fused training (fused.py): N runs as one model against one alone, aggregate training images/s"
               if rows else "No committed record has fused-training figures yet (`bench --fused N --json ...`)")
    return pd.DataFrame(rows).style.format(precision=2, na_rep="–").hide(axis="index").set_caption(caption)
