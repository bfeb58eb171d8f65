"""Arms over seeds: two arms differ only when the difference of their means is larger than the seeds'
spread. The verdict: with fewer than two complete seeds in either arm, "not resolved at this budget:
one seed"; with |Δmean| ≤ std_arm + std_reference, "not resolved"; else lower / higher error by |Δ|.
The chapters glue these verdicts instead of typing conclusions."""
from __future__ import annotations

import math
import statistics

import pandas as pd

from .runs import RunResult

NOT_RESOLVED = "not resolved at this budget"


def values(runs: list[RunResult], key: str = "final_test_error") -> list[float]:
    """`key` (an error in %, from the summary) of every complete run; others are left out."""
    out = []
    for run in runs:
        v = run.error(key) if run.complete else None
        if v is not None and not (isinstance(v, float) and math.isnan(v)):
            out.append(float(v))
    return out


def mean_std(xs: list[float]) -> tuple[float | None, float | None]:
    return (statistics.mean(xs) if xs else None, statistics.stdev(xs) if len(xs) > 1 else None)


def verdict(arm: list[float], ref: list[float], ref_label: str) -> str:
    """The computed verdict of `arm` against the reference arm's values `ref` (errors in %)."""
    if not arm or not ref:
        return "no complete run to compare"
    (ma, sa), (mr, sr) = mean_std(arm), mean_std(ref)
    delta = ma - mr
    if sa is None or sr is None:
        return f"{NOT_RESOLVED}: one seed (Δ {delta:+.2f} points, no spread to compare it with)"
    spread = sa + sr
    if abs(delta) <= spread:
        return f"{NOT_RESOLVED}: |Δ| {abs(delta):.2f} ≤ spread {spread:.2f} points (std {sa:.2f} + {sr:.2f})"
    return (f"{'lower' if delta < 0 else 'higher'} error than {ref_label} by {abs(delta):.2f} points, "
            f"beyond the seeds' spread of {spread:.2f} (n = {len(arm)} and {len(ref)})")


def seed_comparison(arms: dict[str, list[RunResult]], reference: str,
                    key: str = "final_test_error") -> tuple[pd.DataFrame, dict[str, str]]:
    """One row per arm (n, mean, std, best, each seed, Δ mean vs `reference`, verdict); {arm: verdict}."""
    if reference not in arms:
        raise KeyError(f"reference arm {reference!r} is not one of {list(arms)}")
    ref = values(arms[reference], key)
    rows, verdicts = {}, {}
    for label, runs in arms.items():
        xs = values(runs, key)
        mean, std = mean_std(xs)
        seeds = ", ".join(f"{r.config.get('seed')}: "
                          + (f"{r.error(key):.2f}" if r.complete and r.error(key) is not None
                             else r.summary.get("status", "–")) for r in runs)
        verdicts[label] = "reference" if label == reference else verdict(xs, ref, reference)
        rows[label] = {"n": f"{len(xs)} of {len(runs)}",
                       "mean %": mean, "± std": std, "best %": min(xs) if xs else None,
                       "each seed (seed: error %)": seeds,
                       "Δ mean vs reference": None if mean is None or not ref else mean - statistics.mean(ref),
                       "verdict": verdicts[label]}
    return pd.DataFrame(rows).T.rename_axis("arm"), verdicts


def summary_sentence(verdicts: dict[str, str], condition: str) -> str:
    """One sentence over every arm's verdict, starting with `condition` (profile, data, seeds)."""
    parts = [f"{label}: {v}" for label, v in verdicts.items() if v != "reference"]
    resolved = [label for label, v in verdicts.items() if v not in ("reference",) and not v.startswith(NOT_RESOLVED)
                and not v.startswith("no complete")]
    head = (f"{condition}, {len(resolved)} of {len(parts)} differences are larger than the seeds' spread"
            if parts else f"{condition}, only the reference arm is trained at this profile: nothing to compare")
    return head + (": " + "; ".join(parts) + "." if parts else ".")


def comparison(ch, arms: dict[str, list[RunResult]], reference: str, title: str, prefix: str):
    """`seed_comparison` as a captioned table, and the text values `<prefix>_verdict`, `<prefix>_n`."""
    from .analysis import styled
    table, verdicts = seed_comparison(arms, reference)
    every = [r for runs in arms.values() for r in runs]
    n = sorted({len(runs) for runs in arms.values()})
    seeds = f"{n[0]}" if len(n) == 1 else f"{n[0]}–{n[-1]}"
    condition = f"At profile {ch.profile} on {ch.runs_label} with {seeds} seed(s) per arm"
    facts = {f"{prefix}_verdict": summary_sentence(verdicts, condition), f"{prefix}_n": seeds}
    return styled(table, ch.caption(f"{title}: final test error over seeds", *every), 2), facts
