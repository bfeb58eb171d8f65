"""Chapter 5's speed per number format, from the benchmark's committed records."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from .. import analysis as A
from ..bench_summary import is_flagged, rounds_note, under_load
from ..devices import native_bf16
from ..models import multiply_adds
from ..records import RECORDS, load_records, project_root


def format_speeds(ch, records_dir: Path | None = None) -> tuple["pd.io.formats.style.Styler", dict]:
    """Training speed per number format from the benchmark's records (book/records/bench-*.json,
    the appendix's measurements): one row per record and variant without torch.compile, its
    library images/s and how its rounds agree; the page's `opt_*` sentence. No ratio between
    variants: they are timed in different rounds (bench.py), and flagged figures stay out of it."""
    records = load_records(records_dir or project_root() / RECORDS)
    rows, sentences = {}, []
    for name, rec in records.items():
        info = rec["info"]
        variants = [v for v in rec["variants"] if "compile" not in v["variant"] and v.get("library")]
        rounds = {v["variant"]: (v.get("rounds") or {}).get("library") for v in variants}
        loaded = " · under load" if under_load(rec) else ""
        for v in variants:  # the one figure shown: the library rate, with its own rounds' spread
            rows[(info["device_name"], v["variant"])] = {
                "dtype": v["dtype"], "images/s": v["library"],
                "rounds max / min": rounds_note(rounds[v["variant"]]) + loaded,
                "record": f"{name}.json, {info['date']}, batch {info['batch_size']}"}
        parts = [f"{v['variant']} {v['library']:,.0f}" for v in variants
                 if not is_flagged(rounds[v["variant"]]) and not loaded]
        if parts:
            sentences.append(f"on {info['device_name']} ({name}.json, {info['date']}), images/s: " + ", ".join(parts))
    none = ("no benchmark record is committed, so this build has no measured speed per number format" if not records
            else "no figure of the committed benchmark records is stated: each was taken under load or its rounds "
                 "disagree (the table marks them)")
    facts = {"opt_dtype_verdict": "; ".join(sentences) or none,
             "opt_log_speed": f"{45000 / 10.32:,.0f}",  # the log: 45k training images in 10.3 s per epoch
             # ... with its ImageNet ResNet-34 on 32x32 images: a training step is about 3 passes of 2 FLOP per
             # multiply-add (forward, and backward for inputs and weights)
             "opt_log_macs": f"{multiply_adds('resnet34-imagenet') / 1e6:.0f}M",
             "opt_log_tflops": f"{6 * multiply_adds('resnet34-imagenet') * 45000 / 10.32 / 1e12:.1f}",
             "opt_native_bf16": "has" if native_bf16(ch.torch_device) else "has no"}
    table = pd.DataFrame(rows).T.rename_axis(["device", "variant"]) if rows else pd.DataFrame()
    return A.styled(table, "Number formats: training speed from the benchmark's records (appendix)", 2), facts
