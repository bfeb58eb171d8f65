"""Chapter 6's and the introduction's computations: the headline ResNet-32 over seeds beside the
paper's 7.51 %, where its errors are (per class), and its training time."""
from __future__ import annotations

import statistics
from dataclasses import dataclass

import pandas as pd

from .. import analysis as A
from ..analysis import fmt
from ..compare import mean_std
from ..config import PAPER_BATCH, PAPER_ITERATIONS, TrainConfig
from ..data import prepare_data
from ..devices import machine
from ..runs import RunResult
from ..train import evaluate


def class_errors(ch, runs: dict[str, RunResult]) -> tuple[object, "pd.io.formats.style.Styler", dict]:
    """The complete run with the lowest validation error, evaluated again on its test split:
    confusion matrix (figure), per-class error (table) and the `res_*` text values. Without a
    complete run: no figure, an empty table, and text that says so."""
    complete = {k: r for k, r in runs.items() if r.has_weights}  # published records carry no weights
    if not complete:
        facts = {k: "–" for k in ("res_eval_err", "res_test_n", "res_per_class", "res_class_step",
                                  "res_hardest", "res_easiest")}
        why = ("published records carry no weights" if any(r.complete for r in runs.values())
               else "no run finished")
        facts.update(res_best=f"no run with weights ({why})", res_check=f"cannot be checked: {why}")
        return None, A.styled(pd.DataFrame(), f"No run with weights: {why}"), facts
    key = lambda k: (complete[k].summary["best_val_error"] is None,  # noqa: E731
                     complete[k].summary["best_val_error"] or complete[k].summary["final_test_error"] or 1.0)
    label = min(complete, key=key)
    best = complete[label]
    data = prepare_data(TrainConfig(**best.config), ch.torch_device, ch.dataset)
    result = evaluate(best.load_model().to(ch.torch_device), data.test_x, data.test_y)
    recorded = best.error()
    diff = 100 * result["error"] - recorded
    counts = result["confusion"].sum(1)
    per_class = pd.DataFrame({"test images": counts.tolist(),
                              "error %": [100 * (1 - a) for a in result["per_class_accuracy"]]},
                             index=pd.Index(ch.dataset.classes, name="class")).sort_values("error %", ascending=False)
    facts = {"res_best": label, "res_eval_err": f"{100 * result['error']:.2f}",
             "res_check": f"is measured{ch.here()}, so it is no check of the {recorded:.2f} % the run recorded "
             "on its own data"
             if ch.here() else "matches the error recorded at the end of training" if abs(diff) < 1e-6 else
             f"differs from the {recorded:.2f} % recorded at the end of training by {diff:+.2f} points "
             "(non-deterministic GPU kernels)",
             "res_test_n": f"{int(counts.sum()):,}", "res_per_class": f"{int(counts.min()):,}",
             "res_class_step": f"{100 / max(int(counts.min()), 1):.1f}",
             "res_hardest": f"{per_class.index[0]} ({per_class['error %'].iloc[0]:.1f} %)",
             "res_easiest": f"{per_class.index[-1]} ({per_class['error %'].iloc[-1]:.1f} %)"}
    fig = A.confusion_matrix(result["confusion"], ch.dataset.classes,
                             title=ch.caption(f"Test confusion (% of each true class), {label}{ch.here()}", best))
    return fig, A.styled(per_class, ch.caption(f"Per-class test error, {label}{ch.here()}", best)), facts


def timing(ch, runs: dict[str, RunResult]) -> tuple["pd.io.formats.style.Styler", dict]:
    """Training time and speed per run (table), and the paper's schedule extrapolated from
    the mean speed (`res_paper_hours`, `res_device`)."""
    table = A.runs_table(runs)[["iterations", "train time s", "ms / iteration", "images/s"]]
    speeds = [r.summary["train_images_per_s"] for r in runs.values() if r.summary["train_images_per_s"]]
    hours = PAPER_ITERATIONS * PAPER_BATCH / statistics.mean(speeds) / 3600 if speeds else None
    devices = sorted({f"{r.summary['device']} ({r.summary['device_name']})" for r in runs.values()})
    facts = {"res_paper_hours": fmt(hours), "res_device": ", ".join(devices)}
    return A.styled(table, ch.caption("Training time and speed", *runs.values())), facts


def headline(ch, runs: dict[str, RunResult]) -> "Headline":
    """The paper's ResNet-32 recipe, one run per seed (`runs`: label -> run): what the
    introduction and chapter 6 report."""
    return Headline(ch, runs)


# Other published numbers for ResNet-32 on CIFAR-10, for the introduction's table.
REFERENCES = [
    {"result": "He et al. 2016, Table 6", "test error %": f"{A.PAPER_ERROR['ResNet-32']:.2f}",
     "data": "official CIFAR-10, all 50k training images (schedule chosen on a 45k/5k split)",
     "budget": "64k iterations × batch 128 (2 GPUs)", "comparable": "reference"},
    {"result": "akamaster/pytorch_resnet_cifar10", "test error %": "7.37",
     "data": "official CIFAR-10, all 50k training images (no validation split), ImageNet mean/std normalization",
     "budget": "200 epochs × batch 128 (≈78k iterations); reports the best test accuracy over epochs",
     "comparable": "no: normalizes differently and picks its epoch on the test set (like the paper, it trains "
                   "on all 50k)"},
]


@dataclass
class Headline:
    """ResNet-32 with the paper's recipe over several seeds: the book's headline number. The
    mean and spread use the runs that finished (status complete); the others are listed with
    their status and left out."""
    chapter: "Chapter"  # noqa: F821  (book.Chapter)
    runs: dict[str, RunResult]

    @property
    def errors(self) -> list[float]:
        """Final test error (%) of every complete run."""
        return [r.error() for r in self.runs.values() if r.complete and r.error() is not None]

    @property
    def mean(self) -> float | None:
        return mean_std(self.errors)[0]

    @property
    def std(self) -> float | None:
        return mean_std(self.errors)[1]

    def reasons(self) -> list[str]:
        """Why these numbers cannot be compared with the paper's (empty when they can)."""
        ch = self.chapter
        return ([f"{ch.profile} budget"] if ch.profile != "paper" else []) + \
               (["not the official data"] if ch.runs_data != "official" else [])

    def facts(self) -> dict:
        """The `head_*` text values of the introduction and chapter 6."""
        ch, runs = self.chapter, list(self.runs.values())
        first, budget = runs[0].summary, ch.config("results")
        paper = A.PAPER_ERROR["ResNet-32"]
        mean = self.mean
        if not self.errors:
            statuses = ", ".join(r.summary["status_detail"] for r in runs)
            verdict = f"None of the {len(runs)} runs finished ({statuses}), so this build has no test error to report."
        elif not self.reasons():
            verdict = ("These numbers use the paper's recipe on the official data and can be compared with "
                       f"{paper:.2f} %.")
        else:
            verdict = (f"Not comparable with the paper. This build used profile {ch.profile} "
                       f"({first['iterations']:,} iterations on {first['train_size']:,} training images) and "
                       f"{ch.runs_label}; " + (f"its {mean:.2f} % shows that the pipeline runs end to end, not what "
                                                   "ResNet-32 reaches." if ch.profile == "smoke" else
                                                   f"its {mean:.2f} % is where the recipe stands after "
                                                   f"{first['iterations']:,} of the paper's {PAPER_ITERATIONS:,} "
                                                   "iterations on this data, not what ResNet-32 reaches."))
        context = []
        if ch.profile == "smoke":
            context.append(f"the smoke profile trains for {budget.iterations} iterations on {budget.subset}-image "
                           "subsets, a budget at which any network is still near chance (90 % error), so this "
                           "number only shows that the pipeline runs.")
        elif ch.profile != "paper":
            context.append(f"the {ch.profile} profile trains for {budget.iterations:,} iterations instead of 64k.")
        if ch.runs_data == "jpeg-q75-copy":
            context.append("The data is the JPEG q75 copy, which blurs and blocks 32×32 images; chapter 1 says "
                           "what the copy costs, as far as the book can tell.")
        elif ch.runs_data != "official":
            context.append(f"The data ({ch.runs_label}) is not verified to be the official CIFAR-10.")
        return {**self.checks(), "head_profile": ch.profile, "head_data": ch.runs_label,
                "head_devices": ch.source(*runs).split(" · ")[-1], "head_source": ch.source(*runs),
                "head_mean": fmt(mean, ".2f"), "head_std": fmt(self.std, ".2f", "–"),
                "head_gap": fmt(None if mean is None else mean - paper, "+.2f"),
                "head_n": str(len(self.errors)), "head_runs": str(len(runs)),
                "head_iterations": f"{budget.iterations:,}", "head_batch": str(budget.batch_size),
                "head_verdict": verdict,
                "head_context": " ".join(context) or "both hold here, so this is a like-for-like comparison.",
                "head_fit": self.fit()}

    def fit(self) -> str:
        """Final training error (on the augmented batches) against test error, means over the
        complete seeds: whether the runs still underfit, so that the budget limits them."""
        pairs = [(100 * r.history["train_error"].iloc[-1], r.error()) for r in self.runs.values()
                 if r.complete and len(r.history) and r.error() is not None]
        if not pairs:
            return "No run finished, so there is no training error to compare with."
        train, test = (statistics.mean(x) for x in zip(*pairs))
        return (f"Their final training error, on the augmented batches, is {train:.1f} % against {test:.1f} % test "
                f"error (means over {len(pairs)} seed(s)): "
                + ("the runs still underfit, so at this budget the iterations, not the recipe, limit them."
                   if train > test - 5 else "they fit the training images better than they generalize."))

    def checks(self) -> dict:
        """`head_best` and `head_checks`: same data? same budget? and the difference from the
        paper's 7.51 %, tested only where data and budget are the paper's (the paper reports no
        spread for ResNet-32, so none is borrowed from another model)."""
        ch, budget, paper = self.chapter, self.chapter.config("results"), A.PAPER_ERROR["ResNet-32"]
        same_data = ch.runs_data == "official"
        same_budget = (budget.iterations, budget.batch_size, budget.subset) == (PAPER_ITERATIONS, PAPER_BATCH, None)
        parts = [f"same data: {'yes' if same_data else 'no'} ({ch.runs_label})",
                 f"same budget: {'yes' if same_budget else 'no'} ({budget.iterations:,} iterations × batch "
                 f"{budget.batch_size}" + ("" if budget.subset is None else f" on {budget.subset}-image subsets")
                 + f"; the paper: {PAPER_ITERATIONS:,} × {PAPER_BATCH})"]
        if self.mean is None:
            parts.append(f"difference from the paper's {paper:.2f} %: none to state, no run finished")
        elif not (same_data and same_budget):
            parts.append(f"difference from the paper's {paper:.2f} %: not tested, since "
                         + " and ".join(x for x, same in (("other data", same_data), ("another budget", same_budget))
                                        if not same) + " explain a difference by themselves")
        else:
            parts.append(f"difference from the paper's {paper:.2f} %: {self.mean - paper:+.2f} points over "
                         f"{len(self.errors)} seed(s) (std {fmt(self.std, '.2f', 'unknown: one seed')}; the paper "
                         "reports no spread for ResNet-32)")
        return {"head_best": fmt(min(self.errors) if self.errors else None, ".2f"),
                "head_checks": "; ".join(parts) + "."}

    def comparison(self, paper: RunResult | None = None):
        """The paper, a reimplementation, the run of the paper's whole schedule (`paper`, when
        committed) and this build's runs (the introduction's table)."""
        ch, comparable = self.chapter, ("NO: " + " and ".join(self.reasons())) if self.reasons() else "yes"
        rows = list(REFERENCES)
        if paper is not None:
            s = paper.summary
            why = ([] if s["dataset"] == "official" else ["not the official data"]) + (
                [] if paper.complete else [f"unfinished ({s['iterations_done']:,} of {s['iterations']:,})"])
            rows.append({"result": "this book, the paper's schedule (all 50k, seed 0)",
                         "test error %": fmt(paper.error(), ".2f") + ("" if paper.complete else " (latest)"),
                         "data": f"{s['dataset_label']}: {s['train_size']:,} training / {s['test_size']:,} test images",
                         "budget": f"{s['iterations_done']:,} of {s['iterations']:,} iterations × batch "
                                   f"{paper.config['batch_size']}",
                         "comparable": ("NO: " + " and ".join(why)) if why else "yes (one seed)"})
        for label, run in self.runs.items():
            s = run.summary
            error = run.error() if run.complete else None
            rows.append({"result": f"this book, {label}",
                         "test error %": fmt(error, ".2f", f"– ({s['status']})"),
                         "data": f"{s['dataset_label']}: {s['train_size']:,} training / {s['test_size']:,} test images",
                         "budget": f"{s['iterations_done']:,} iterations × batch {run.config['batch_size']}",
                         "comparable": comparable})
        table = pd.DataFrame(rows).set_index("result")
        return A.styled(table, ch.caption("ResNet-32 on CIFAR-10: the paper, a reimplementation, this book",
                                          *self.runs.values()))

    def seeds_table(self):
        """One row per seed, the mean ± standard deviation, and the paper (chapter 6's table)."""
        ch = self.chapter
        table = A.runs_table(self.runs)[["status", "iterations", "final test error %", "test error at best val %"]]
        at_val = [v for v in table["test error at best val %"] if v is not None and not pd.isna(v)]
        table.loc["mean ± std"] = [f"{len(self.errors)} of {len(self.runs)} complete", None,
                                   f"{fmt(self.mean, '.2f')} ± {fmt(self.std, '.2f')}",
                                   statistics.mean(at_val) if at_val else None]
        table.loc["best"] = [None, None, min(self.errors) if self.errors else None, min(at_val) if at_val else None]
        table.loc["He et al. 2016, Table 6"] = ["reference", PAPER_ITERATIONS, A.PAPER_ERROR["ResNet-32"], None]
        return A.styled(table, ch.caption("ResNet-32 test error per seed, mean ± std, and the paper",
                                          *self.runs.values()), 2)

    def figure(self):
        """Training and test error of every seed, with the paper's 7.51 % as a dotted line."""
        return A.error_curves(self.runs, title=self.chapter.caption("ResNet-32, one curve per seed",
                                                                    *self.runs.values()),
                              reference=(A.PAPER_ERROR["ResNet-32"], f"paper: {A.PAPER_ERROR['ResNet-32']:.2f} %"))


# ---------------------------------------------------------------- the paper's whole schedule

PAPER_RUN = "resnet32-all50k-seed0"  # the paper's protocol: all 50k training images, tested on the 10k


def paper_run(dataset: str, name: str = PAPER_RUN) -> RunResult | None:
    """The book's headline run: ResNet-32 with the paper's whole schedule on all 50k training
    images (chapter 7's `resnet32-all50k-seed0` of profile paper; `name`: another run of that
    profile), read from the committed records of `dataset` (the copy of CIFAR-10 the page's
    runs were trained on), however far it has trained; None when none is committed."""
    from ..plan import plan
    from ..records import RECORDS, load_record, project_root
    folder = project_root() / RECORDS / dataset / "paper"
    if not (folder / name / "summary.json").is_file():
        return None
    return load_record(folder, plan("paper", only=[name])[0].config("paper"), "paper")


def paper_caption(text: str, run: RunResult) -> str:
    s = run.summary
    devices = {machine(seg["device"]) for seg in s.get("segments", []) if seg.get("device")}
    return f"{text} — profile paper · {s['dataset_label']} · {', '.join(sorted(devices)) or s['device_name']}"


def paper_facts(run: RunResult | None) -> dict:
    """The `sched_*` text values: how far the run is, its latest (or final) test error, the
    lowest along the way, and the sittings and machines that trained it."""
    if run is None:
        none = "no run of the paper's whole schedule is committed for this copy of CIFAR-10"
        return {"sched_status": none, "sched_error": "–", "sched_at": "–", "sched_lowest": "–", "sched_lr": "–",
                "sched_sittings": "–", "sched_data": "–"}
    s, h = run.summary, run.history
    done, total = s["iterations_done"], s["iterations"]
    status = (f"complete: all {total:,} iterations" if run.complete else
              f"{done:,} of {total:,} iterations ({100 * done / total:.0f} %), still training")
    tested = h.dropna(subset=["test_error"])
    low = tested.loc[tested["test_error"].idxmin()] if len(tested) else None
    segments = s.get("segments") or []
    hours = sum(seg["seconds"] for seg in segments) / 3600
    machines = sorted({seg["device"] for seg in segments if seg.get("device")})
    sittings = f"{len(segments)} sitting{'' if len(segments) == 1 else 's'}"
    return {"sched_status": status, "sched_error": fmt(run.error(), ".2f"),
            "sched_at": f"{done:,}", "sched_lr": f"{h['lr'].iloc[-1]:g}" if len(h) else "–",
            "sched_lowest": "–" if low is None else f"{100 * low['test_error']:.2f} % at iteration "
                                                     f"{int(low['iteration']):,}",
            "sched_sittings": f"{sittings}, {hours:.1f} hours of training and evaluation, on " + "; ".join(machines),
            "sched_data": f"{s['dataset_label']}, {s['train_size']:,} training and {s['test_size']:,} test images"}


def paper_glue(ch) -> RunResult | None:
    """Glue the headline run's `sched_*` values and its figure (`fig_paper`, `cap_fig_paper`) for
    the page; returns the run (None when none is committed for this data)."""
    run = paper_run(ch.runs_data)
    fig = paper_figure(run)
    ch.glue({**paper_facts(run), "fig_paper": fig,
             "cap_fig_paper": paper_caption("Training (dashed) and test (bold) error over the paper's schedule", run)
             if run is not None else "No run of the paper's schedule is committed for this copy of CIFAR-10"})
    import matplotlib.pyplot as plt
    plt.close(fig)
    return run


def paper_figure(run: RunResult | None):
    """Training and test error over the whole schedule: the lr drops marked, the paper's 7.51 %
    dotted, the iterations still to train left blank (an empty axis when there is no run)."""
    if run is None:
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(10, 1.5))
        ax.axis("off")
        ax.text(0.5, 0.5, "no run of the paper's schedule committed for this data", ha="center", va="center")
        return A.detached(fig)
    cfg = TrainConfig(**run.config)
    fig = A.error_curves({"ResNet-32, all 50k, seed 0": run},
                         title=paper_caption("ResNet-32 with the paper's schedule", run),
                         reference=(A.PAPER_ERROR["ResNet-32"], f"paper: {A.PAPER_ERROR['ResNet-32']:.2f} %"))
    ax = fig.axes[0]
    for m in cfg.milestones:
        ax.axvline(m, color="0.5", lw=0.8, ls="-.")
        ax.annotate("lr ÷10", (m, 0.98), xycoords=("data", "axes fraction"), xytext=(3, 0),
                    textcoords="offset points", ha="left", va="top", fontsize=8)
    ax.set_xlim(0, cfg.iterations)
    ax.set_ylim(0, min(100, 100 * max(run.history[["train_error", "test_error"]].max().max(), 0.5) + 5))
    return fig


def paper_sittings(run: RunResult | None) -> "pd.io.formats.style.Styler":
    """One row per sitting that trained the run: iterations from-to, machine, threads, hours, commit."""
    if run is None:
        return A.styled(pd.DataFrame(), "No run of the paper's schedule is committed for this copy of CIFAR-10")
    rows = [{"iterations": f"{seg['start']:,} – {seg['end']:,}", "device": seg.get("device") or "–",
             "threads": seg.get("threads") or "–", "hours": seg["seconds"] / 3600,
             "images/s": (seg["end"] - seg["start"]) * run.config["batch_size"] / max(seg["seconds"], 1e-9),
             "commit": seg.get("commit") or "–", "began": (seg.get("began") or "–").replace("T", " ")}
            for seg in run.summary.get("segments") or []]
    table = pd.DataFrame(rows, index=pd.RangeIndex(1, len(rows) + 1, name="sitting"))
    return A.styled(table, paper_caption("The sittings that trained it (images/s: training and evaluation)", run))


def rule_facts(ch) -> dict:
    """How many seeds this profile trains per compared arm and for the headline (`rule_*`)."""
    from ..experiments import HEADLINE_SEEDS, SEEDS_PER_ARM
    return {"rule_arm_seeds": str(SEEDS_PER_ARM[ch.profile]), "rule_head_seeds": str(HEADLINE_SEEDS[ch.profile])}


# The log's questions, each with the arm that answers it and its reference: (question, chapter,
# (section, arm label), (section, reference label)).
QUESTIONS = [
    ("Why did the log's runs stall at 65–74 % accuracy? Its model?", "02_model",
     ("imagenet", "ResNet-34 (ImageNet), paper schedule"), ("imagenet", "ResNet-32 (the paper's model)")),
    ("Does testing without the per-pixel mean break the model?", "03_augmentation",
     ("normalization", "test without mean subtraction"), ("normalization", "per-pixel mean (paper)")),
    ("Plateau scheduler or the paper's step schedule?", "04_schedule",
     ("schedules", "plateau, patience 1000"), ("schedules", "multistep (paper)")),
    ("Adam at a constant lr or the paper's SGD?", "05_optimizers",
     ("adam_constant", "Adam, constant lr 0.001"), ("optimizers", "SGD, momentum 0.9 (paper)")),
    ("Why does a ReLU after the last FC stop learning?", "05_optimizers",
     ("final_relu", "ReLU after the last FC"), ("final_relu", "no final ReLU (paper)")),
    ("Does BatchNorm's eps matter (eps 0.9, the positional trap)?", "05_optimizers",
     ("batchnorm", "eps 0.9"), ("batchnorm", "eps 1e-5, momentum 0.1 (default)")),
    ("Does a deeper ResNet do better (Table 6)?", "07_depth", ("table6", 56), ("table6", 20)),
    ("Do shortcuts cure the deep plain net (Fig. 6)?", "07_depth", ("table6", 56), ("plain", 56)),
]


def answers(ch) -> "pd.io.formats.style.Styler":
    """One row per question of the log: the book's answer at this page's profile (the arms' mean
    test errors), its evidence (seeds, iterations, data) and how strong it is (the computed
    verdict, `compare.verdict`); an arm the profile does not train is said to be so."""
    from ..compare import values, verdict
    rows, sections = [], {}
    for question, chapter, (sec, label), (ref_sec, ref_label) in QUESTIONS:
        sections.setdefault(chapter, ch.experiments(chapter))
        arm = sections[chapter].get(sec, {}).get(label)
        ref = sections[chapter].get(ref_sec, {}).get(ref_label)
        name = lambda s, x: f"plain-{x}" if s == "plain" else f"ResNet-{x}" if isinstance(x, int) else x  # noqa: E731
        a, r = values(arm or []), values(ref or [])
        if not a or not r:
            missing = name(sec, label) if not a else name(ref_sec, ref_label)
            rows.append({"question (the log)": question, "chapter": chapter[:2],
                         "answer at this profile": f"{missing}: not trained (or not finished) at profile {ch.profile}",
                         "evidence": "–", "verdict": f"no runs here; chapter {chapter[:2]} answers otherwise"})
            continue
        budget = (arm[0].summary.get("iterations_done") or 0)
        rows.append({"question (the log)": question, "chapter": chapter[:2],
                     "answer at this profile": f"{name(sec, label)} {mean_std(a)[0]:.1f} % against "
                                               f"{name(ref_sec, ref_label)} {mean_std(r)[0]:.1f} % test error",
                     "evidence": f"{len(a)} and {len(r)} seed(s), {budget:,} iterations, {ch.runs_label}",
                     "verdict": verdict(a, r, name(ref_sec, ref_label))})
    table = pd.DataFrame(rows).set_index("question (the log)")
    runs = [r for arms in sections.values() for sec in arms.values() for rs in sec.values() for r in rs]
    return A.styled(table, ch.caption("The log's questions, answered from this build's runs", *runs))
