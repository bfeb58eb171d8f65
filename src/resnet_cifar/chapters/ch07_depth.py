"""Chapter 7's computations: Table 6 (ResNet-20 ... 110 over seeds, beside the paper), Fig. 6
(plain vs residual networks, training and test error) and the retraining on all 50k images.
Every sentence is computed from the run records, with the numbers and the condition it rests on."""
from __future__ import annotations


import pandas as pd

from .. import analysis as A
from ..compare import mean_std, seed_comparison, values, verdict
from ..analysis import fmt
from ..runs import RunResult

from ..analysis import PAPER_110_MEAN, PAPER_110_STD


def final_train_error(run: RunResult) -> float | None:
    """The training error (%, on the augmented batches since the previous evaluation) at the
    last evaluation of a complete run."""
    h = run.history
    if not run.complete or h is None or h.empty or pd.isna(h["train_error"].iloc[-1]):
        return None
    return 100 * float(h["train_error"].iloc[-1])


def paper_schedule(ch, depth: int) -> str:
    """ResNet-`depth` trained with the paper's whole schedule on all 50k images (profile paper,
    seed 0), from the committed records of the page's data: its test error, and how far it has
    trained while unfinished; '–' when none is committed."""
    from .ch06_results import paper_run
    run = paper_run(ch.runs_data, f"resnet{depth}-all50k-seed0")
    if run is None or run.error() is None:
        return "–"
    s = run.summary
    return f"{run.error():.2f}" + ("" if run.complete else f" ({s['iterations_done']:,} of {s['iterations']:,} its)")


def table6(ch, arms: dict[int, list[RunResult]]) -> tuple[object, dict]:
    """ResNet-d test error over seeds (n, mean ± std, best, each seed) beside the paper's Table 6
    (styled table), and the `dep_*` text values."""
    rows, facts, errors, stats = {}, {}, {}, {}
    for d, runs in arms.items():
        xs = errors[d] = values(runs)
        mean, std = stats[d] = mean_std(xs)
        paper = A.PAPER_ERROR.get(f"ResNet-{d}")
        rows[f"ResNet-{d}"] = {
            "n": f"{len(xs)} of {len(runs)}", "mean %": mean, "± std": std, "best %": min(xs) if xs else None,
            "each seed": ", ".join(f"{r.config.get('seed')}: " + (f"{r.error():.2f}" if xs and r.complete and
                                   r.error() is not None else r.summary.get("status", "–")) for r in runs),
            "paper %": paper,
            "paper mean ± std": f"{PAPER_110_MEAN} ± {PAPER_110_STD}" if d == 110 else "–",
            "paper's schedule here %": paper_schedule(ch, d),
            "warm-up": (f"lr {r.config['warmup_lr']:g} until training error "
                        f"< {100 * r.config['warmup_until_error']:.0f} %"
                        if (r := runs[0]).config.get("warmup_until_error") else "none")}
        facts[f"dep_{d}"] = f"{fmt(mean, '.2f')} ± {fmt(std, '.2f')} % (n = {len(xs)})"
    means, stds = {d: m for d, (m, _) in stats.items()}, {d: s for d, (_, s) in stats.items()}
    known = [d for d in arms if means[d] is not None]
    if len(known) >= 2:
        order = sorted(known, key=lambda d: means[d])
        monotone = all(means[a] >= means[b] for a, b in zip(sorted(known), sorted(known)[1:]))
        steps = [f"ResNet-{b} against ResNet-{a}: {verdict(errors[b], errors[a], f'ResNet-{a}')}"
                 for a, b in zip(sorted(known), sorted(known)[1:])]
        facts["dep_order"] = (f"at profile {ch.profile} on {ch.runs_label}, from lowest to highest mean test error: "
                              + ", ".join(f"ResNet-{d} ({means[d]:.2f} ± {stds[d]:.2f} %)" if stds[d] is not None
                                          else f"ResNet-{d} ({means[d]:.2f} %, one seed)" for d in order)
                              + paper_ordering(sorted(known), monotone)
                              + ". Each added depth, over the seeds: " + "; ".join(steps))
    else:
        facts["dep_order"] = "fewer than two depths have a complete run, so there is no ordering to report"
    table = pd.DataFrame(rows).T.rename_axis("network")
    every = [r for runs in arms.values() for r in runs]
    return A.styled(table, ch.caption("Table 6 again: test error over seeds, and the paper's", *every), 2), facts


def paper_ordering(depths: list[int], monotone: bool) -> str:
    """How this build's ordering of `depths` compares with Table 6's at the same depths (whose
    error falls from ResNet-20 to ResNet-110 and rises again at ResNet-1202)."""
    paper = {d: A.PAPER_ERROR.get(f"ResNet-{d}") for d in depths}
    if None in paper.values():
        return ""
    falls = all(paper[a] >= paper[b] for a, b in zip(depths, depths[1:]))
    table6 = ", ".join(f"ResNet-{d} {paper[d]:.2f} %" for d in depths)
    if monotone == falls:
        return (f"; the means fall with every added depth, as Table 6's do at these depths ({table6})" if falls
                else f"; Table 6 at these depths: {table6}")
    return (f"; not Table 6's ordering at these depths, where the error falls with every added depth ({table6})"
            if falls else f"; not Table 6's ordering at these depths ({table6})")


def degradation(plain: dict[int, list[RunResult]], residual: dict[int, list[RunResult]]) -> dict:
    """Does the deepest plain net end with a higher training error than the shallowest? And the
    residual nets? And at the deepest depth both have, plain against residual (`dep_degradation`,
    `dep_residual`, `dep_same_depth`): the paper's Fig. 6 in three sentences."""
    def sentence(arms: dict[int, list[RunResult]], name: str) -> str:
        lo, hi = min(arms), max(arms)
        a = [x for x in map(final_train_error, arms[lo]) if x is not None]
        b = [x for x in map(final_train_error, arms[hi]) if x is not None]
        if not a or not b:
            return f"{name}-{hi} or {name}-{lo} has no complete run, so this build cannot say."
        (ma, _), (mb, _) = mean_std(a), mean_std(b)
        higher = "higher" if mb > ma else "lower" if mb < ma else "the same"
        return (f"{name}-{hi} ends with a {higher} final training error than {name}-{lo} "
                f"({mb:.1f} % against {ma:.1f} %, mean of {len(b)} and {len(a)} seed(s)): "
                + verdict(b, a, f"{name}-{lo}") + ".")
    both = sorted(set(plain) & set(residual))
    if both:  # the comparison a short budget does not blur: the same depth with and without shortcuts
        d = both[-1]
        p_err = [x for x in map(final_train_error, plain[d]) if x is not None]
        r_err = [x for x in map(final_train_error, residual[d]) if x is not None]
        same = (f"At the same depth, {d} layers, the plain net ends at {mean_std(p_err)[0]:.1f} % training error and "
                f"the ResNet at {mean_std(r_err)[0]:.1f} % (mean of {len(p_err)} and {len(r_err)} seed(s)): "
                + verdict(p_err, r_err, f"ResNet-{d}") + "." if p_err and r_err else
                f"plain-{d} or ResNet-{d} has no complete run, so this build cannot compare them.")
    else:
        same = "No depth was trained both plain and residual at this profile."
    return {"dep_degradation": sentence(plain, "plain"), "dep_residual": sentence(residual, "ResNet"),
            "dep_same_depth": same}


def fig6(ch, plain: dict[int, list[RunResult]], residual: dict[int, list[RunResult]]):
    """Plain nets above ResNets, the first seed of each depth: training (dashed) and test error."""
    groups = {"plain networks": {f"plain-{d}": runs[0] for d, runs in plain.items()},
              "residual networks (option A)": {f"ResNet-{d}": runs[0] for d, runs in residual.items()}}
    every = [r for g in groups.values() for r in g.values()]
    return A.side_by_side(groups, title=ch.caption("Fig. 6 again: plain vs residual, dashed training error, "
                                                   "bold test error", *every))


def all50k(ch, runs: dict[str, list[RunResult]]) -> tuple[object, dict]:
    """ResNet-32 trained on 45k (5k held out for decisions) and retrained on all 50k images
    with the same schedule (`runs`: experiments.depth's "all50k" arms): table over seeds and the
    `dep_50k_*` text values."""
    names = {"45k/5k split": "45k train / 5k val (schedule chosen here)", "all 50k": "all 50k images, same schedule"}
    arms = {names[k]: v for k, v in runs.items()}
    table, verdicts = seed_comparison(arms, next(iter(arms)))
    sizes = {label: runs[0].summary.get("train_size") for label, runs in arms.items()}
    facts = {"dep_50k_verdict": (f"At profile {ch.profile} on {ch.runs_label}: "
                                 + verdicts.get(names["all 50k"], "not trained at this profile") + "."),
             "dep_50k_sizes": " and ".join(f"{v:,}" if isinstance(v, int) else "–" for v in sizes.values())}
    every = [r for arm in arms.values() for r in arm]
    return A.styled(table, ch.caption("ResNet-32 on the 45k split and on all 50k images", *every), 2), facts
