"""Chapter 5's speed per number format, from the benchmark's committed records."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from .. import analysis as A
from ..bench import is_flagged, rounds_note, under_load
from ..records import RECORDS, load_records, project_root


def format_speeds(ch, records_dir: Path | None = None) -> tuple["pd.io.formats.style.Styler", dict]:
    """Library images/s per record and variant (no torch.compile) with its rounds' agreement, and the
    `opt_*` sentence: no ratio between variants (timed in different rounds), no flagged figure."""
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
    facts = {"opt_dtype_verdict": "; ".join(sentences) or none}
    table = pd.DataFrame(rows).T.rename_axis(["device", "variant"]) if rows else pd.DataFrame()
    return A.styled(table, "Number formats: training speed from the benchmark's records (appendix)", 2), facts
