"""The Performance appendix's computations: the benchmark at the page's profile, and the committed records."""
from __future__ import annotations

import pandas as pd

from .. import analysis as A
from .. import bench
from ..config import PAPER_ITERATIONS

# The CPU-sized profiles time a cut-down benchmark, so that a build stays within minutes on a CPU.
CUT_DOWN = dict(variants=["fp32", "fp32+cl", "bf16+cl"], workers=(0,), train_images=512, seconds=0.5, rounds=3,
                warmup=1)
BENCHMARK = {"smoke": dict(CUT_DOWN, seconds=0.25, rounds=2), "cpu": CUT_DOWN}


def measure(ch, seed: int = 0) -> dict:
    """`bench.run_benchmark` on the page's device and data and the profile's CPU threads (cut down: BENCHMARK)."""
    with ch.profile_threads():
        return bench.run_benchmark(device=ch.device, dataset=ch.dataset, seed=seed, **BENCHMARK.get(ch.profile, {}))


def cut_down_text(ch) -> str:
    """What the page's benchmark leaves out at this profile."""
    full = "Profiles quick and paper run the command's defaults: every variant (`bench --help`)."
    if (s := BENCHMARK.get(ch.profile)) is None:
        return full
    n = ch.threads
    threads = f", on {n} CPU thread{'s' * (n != 1)}, as the profile's runs train" if n else ""
    return (f"With profile {ch.profile} the benchmark is cut down so that the page builds quickly on a CPU: "
            f"{s['train_images']} training images, {s['rounds']} rounds of about {s['seconds']:g} s per figure, the "
            f"variants {', '.join(s['variants'])}, num_workers 0 only and no torch.compile{threads}. {full}")


def tables(record: dict, where: str) -> dict:
    """The record's tables (bench.tables), styled and captioned with `where` it was measured."""
    t = bench.tables(record)
    return dict(
        variants=A.styled(t["variants"].set_index("variant"), f"Step variants, images/s — {where}"),
        conventional=A.styled(t["conventional"], f"Library vs conventional pipeline — {where}", 2).hide(axis="index"),
        fused=A.styled(t["fused"], f"N runs fused into one model against one alone — {where}", 2).hide(axis="index"))


def recorded(records: dict) -> pd.io.formats.style.Styler:
    """One column per committed record: its fp32 library and conventional rates (same rounds; the conventional
    at its fastest num_workers), their ratio, its fastest variant and the paper's schedule at that rate."""
    rows = {}
    for name, rec in records.items():
        variants = {r["variant"]: r for r in rec["variants"]}
        base = variants.get("fp32") or next(iter(variants.values()))
        conv = max((c for c in rec["conventional"] if c["variant"] == base["variant"]),
                   key=lambda c: c["images_per_s"])
        fastest = max(variants.values(), key=lambda r: r["library"])
        rounds = dict(library=base["rounds"]["library"], conventional=conv["rounds"],
                      fastest=fastest["rounds"]["library"])
        rows[f"{name}.json"] = {
            "device": rec["info"]["device_name"], "date": rec["info"]["date"], "variant": base["variant"],
            "library images/s": base["library"], "conventional images/s": conv["images_per_s"],
            "its num_workers": conv["num_workers"], "library / conventional": base["library"] / conv["images_per_s"],
            "fastest variant": fastest["variant"], "its images/s": fastest["library"],
            "the paper's schedule, min": PAPER_ITERATIONS * rec["info"]["batch_size"] / fastest["library"] / 60,
            "rounds max / min": bench.rounds_note(rounds) + (" · under load" if bench.under_load(rec) else "")}
    return A.styled(pd.DataFrame(rows), "Committed benchmark records", 2)
