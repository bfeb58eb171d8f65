"""Chapter 4's computations: when the plateau scheduler fired, and test error chosen by the
validation split against the one a peek at the test set would choose."""
from __future__ import annotations

import pandas as pd

from .. import analysis as A
from ..analysis import fmt
from ..runs import RunResult


def plateau_runs(runs: dict[str, RunResult]) -> list[RunResult]:
    """The runs of `runs` with a plateau schedule."""
    return [r for r in runs.values() if r.config.get("schedule") == "plateau"]


def schedule_facts(ch, runs: dict[str, RunResult], long_patience: int, short_patience: int) -> dict:
    """The step schedule's budget and evaluation rhythm, and what the plateau runs of each
    patience did (`sch_long_*`, `sch_short_*`; 'not trained at this profile' without them)."""
    base = runs["multistep (paper)"]
    plateau_runs = {key: runs.get(f"plateau, patience {p}") for key, p in (("long", long_patience),
                                                                             ("short", short_patience))}
    cfg = ch.config("schedule")
    per_epoch = max(base.summary["train_size"] // cfg.batch_size, 1)
    facts = {"sch_iterations": f"{cfg.iterations:,}", "sch_milestones": " and ".join(f"{m:,}" for m in cfg.milestones),
             "sch_eval_every": f"{cfg.eval_every or per_epoch:,}", "sch_iters_per_epoch": f"{per_epoch:,}",
             "sch_evaluations": f"{len(base.history):,}"}
    trained = {key: run for key, run in plateau_runs.items() if run}
    table = plateau_table(trained)
    for key, patience in (("long", long_patience), ("short", short_patience)):
        facts[f"sch_{key}_patience"] = f"{patience:,}"
        facts[f"sch_{key}_verdict"] = (plateau_verdict(table.loc[key]) if key in trained
                                       else "was not run at this profile")
    long, short = (facts[f"sch_{k}_verdict"] for k in ("long", "short"))
    facts["sch_plateau"] = (
        f"Neither plateau run (patience {long_patience:,}, patience {short_patience:,}) was trained at this profile"
        if not trained else
        f"With patience {long_patience:,} and with patience {short_patience:,} alike, the scheduler {long}"
        if long == short else
        f"With patience {long_patience:,} the scheduler {long}; with patience {short_patience:,} it {short}")
    flat = [key for key in trained if table.loc[key, "LR reductions"] == 0]
    facts["sch_flat"] = "" if not flat else (
        f"(A plateau run that never fires is just training at a constant {base.config['lr']:g}"
        + (", which is why the two plateau runs lie on top of each other.) " if len(flat) == 2 else ".) "))
    return facts


def selection(ch, runs: dict[str, RunResult], base_label: str) -> tuple["pd.io.formats.style.Styler", dict]:
    """Final vs validation-selected vs peeked test error per run (table), and the step
    schedule's three numbers with the validation split's resolution (`sch_*`)."""
    columns = ["status", "final test error %", "best val error %", "test error at best val %",
               "lowest test error seen %"]
    table = A.runs_table(runs)[columns]
    base = runs[base_label]
    h = base.history.dropna(subset=["val_error"]) if len(base.history) else base.history
    best_iteration = int(h.loc[h["val_error"].idxmin(), "iteration"]) if len(h) else None
    val_size = base.summary["val_size"]
    facts = {"sch_final": fmt(base.error()),
             "sch_at_best_val": fmt(base.error("test_error_at_best_val")),
             "sch_best_val_iteration": fmt(best_iteration, ","), "sch_peek": fmt(table.loc[base_label, columns[-1]]),
             "sch_val_size": f"{val_size:,}", "sch_val_step": f"{100 / max(val_size, 1):.2f}"}
    return A.styled(table, ch.caption("Final vs validation-selected vs peeked test error", *runs.values())), facts


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
    if not rows:  # no plateau run at this profile
        return pd.DataFrame(columns=["patience", "evaluations", "LR reductions", "first reduction at", "final LR"])
    return pd.DataFrame(rows).set_index("run").astype(object)


def plateau_verdict(row: pd.Series) -> str:
    """'never reduced the learning rate' or 'reduced it N time(s), first at iteration I', for a
    row of `plateau_table`."""
    if row["LR reductions"] == 0:
        return "never reduced the learning rate"
    return f"reduced it {row['LR reductions']} time(s), first at iteration {row['first reduction at']:,}"
