"""What several book pages share: the chapter set-up from papermill parameters, captions, glue,
run tables and curves, the headline ResNet-32 and the paper's run. A page's own computations live
in its notebook's hidden cells."""
from __future__ import annotations

import builtins
import contextlib
import datetime
import os
import statistics
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import torch

from . import analysis as A
from . import data as D
from . import experiments as E
from .config import PAPER_BATCH, PAPER_ITERATIONS, PROFILE_THREADS, PROFILES, TrainConfig
from .config import profile_config
from .devices import device_label, machine, pick_device
from .plan import match_chapters, plan, table as plan_table
from .records import (RECORDS, PublishedRun, best_records, load_record, partial_records,
                      project_root, published, resolve_runs, restore, shown_path, source_text)
from .runs import RunResult, state
from .train import train

GLUE_PREFIX = "application/papermill.record/"  # myst-nb's glue outputs (display=False)
PAPER_32 = A.PAPER_ERROR["ResNet-32"]
PAPER_LINE = (PAPER_32, f"paper: {PAPER_32:.2f} %")  # error_curves' reference line
NO_PAPER_RUN = "No run of the paper's schedule is committed for this copy of CIFAR-10"


def data_folder(data_dir=None, root: Path | None = None) -> Path:
    """`data.resolve_data_dir`, a relative path taken from the project root (not the kernel's)."""
    return (root or project_root()) / D.resolve_data_dir(data_dir)  # an absolute path stays


class HTML(str):
    """A string that Jupyter displays as HTML (through `_repr_html_`; no IPython import)."""
    def _repr_html_(self) -> str:
        return str(self)


@dataclass
class Chapter:
    """One page's checked parameters, its dataset and where its runs are read or trained."""
    profile: str
    device: str
    dataset: D.CIFAR10
    runs_dir: Path
    seed: int
    records: dict | None = None  # the records.json of published records (read only), else None
    params: dict = field(default_factory=dict)  # chapter -> the parameter values its runs used
    outside: dict = field(default_factory=dict)  # chapter -> its runs outside the default plan
    records_data: str | None = None  # the copy the runs were trained on, when not `dataset`'s
    train_dir: Path | None = None  # with records: where runs outside the default plan train
    partial: Path | None = None  # without: partial committed records, read for finished runs

    @property
    def runs_data(self) -> str:
        """The identity of the data the runs were trained and tested on."""
        return self.records_data or self.dataset.identity

    @property
    def runs_label(self) -> str:
        return D.dataset_label(self.runs_data)

    @property
    def torch_device(self) -> torch.device:
        return pick_device(self.device)

    def here(self) -> str:
        """'' when the runs were trained on this machine's data, else a note for numbers here."""
        if self.runs_data == self.dataset.identity:
            return ""
        return (f" (computed here on {self.dataset.label}; the runs were trained on "
                f"{self.runs_label})")

    def config(self, name: str, **overrides) -> TrainConfig:
        settings = dict(name=name, device=self.device, data_dir=str(self.dataset.root),
                        runs_dir=str(self.runs_dir), seed=self.seed, progress="log", wait=True)
        return profile_config(self.profile, **{**settings, **overrides})

    def experiments(self, chapter: str, **params) -> dict[str, dict[str, list[RunResult]]]:
        """The chapter's runs at `params`: section -> label -> runs (one per seed, own first)."""
        self.params[chapter] = params
        sections = E.sections(chapter, self.profile, self.seed, **params)
        default = {r.name: r for r in plan(self.profile, chapters=[chapter])}
        for name, overrides in E.flat(sections).items():
            if name not in default or default[name].overrides != overrides:
                self.outside.setdefault(chapter, []).append(name)
        return {key: {label: [self.train(name, overrides) for name, overrides in arm.items()]
                      for label, arm in arms.items()} for key, arms in sections.items()}

    @staticmethod
    def errors(named: dict[str, RunResult | None], spec: str = ".1f") -> dict[str, str]:
        """Final test error (%) of each run, formatted; '–' for none (an arm not trained here)."""
        return {key: A.fmt(run.error() if run else None, spec) for key, run in named.items()}

    @staticmethod
    def own_seed(arms: dict[str, list[RunResult]]) -> dict[str, RunResult]:
        """Each arm's run of the chapter's own seed (the first)."""
        return {label: runs[0] for label, runs in arms.items()}

    def left_out(self, chapter: str) -> str:
        """The runs of the chapter's default arms that this profile does not train, or 'none'."""
        return ", ".join(E.left_out(chapter, self.profile, self.seed)) or "none"

    def train(self, name: str, overrides: dict) -> RunResult:
        """Run `name`: read from published records, else trained (reused, resumed) on the
        profile's threads; with records, only a run outside the default plan trains."""
        config = self.config(name, **overrides)
        run_dir = Path(self.runs_dir) / config.run_name()
        if self.partial is not None:  # published finished: read; published unfinished: resumed
            if state(config, self.partial / config.run_name())["state"] == "finished":
                return load_record(self.partial, config, self.profile)
            restore(self.partial / config.run_name(), run_dir, config)
        if self.records is not None:
            outside = any(name in runs for runs in self.outside.values())
            if not (self.train_dir and outside and not (run_dir / "summary.json").is_file()):
                return load_record(self.runs_dir, config, self.profile)
            config = self.config(name, **overrides, runs_dir=str(self.train_dir))
        with self.profile_threads():
            return train(config, dataset=self.dataset)

    @property
    def threads(self) -> int | None:
        """The CPU threads of this profile's work (config.PROFILE_THREADS; None: the kernel's)."""
        return PROFILE_THREADS.get(self.profile) if self.torch_device.type == "cpu" else None

    @contextlib.contextmanager
    def profile_threads(self):
        """`threads` for what runs inside; the kernel's own setting is restored afterwards."""
        before = torch.get_num_threads()
        torch.set_num_threads(self.threads or before)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    def plan_table(self, chapter: str):
        """The plan's runs of `chapter` at this page's parameter values."""
        folder, records = self.runs_dir, None
        if self.train_dir:  # runs_dir holds published records, read before train_dir
            folder, records = self.train_dir, self.runs_dir
        return plan_table(self.profile, folder, self.device, project_root() / RECORDS, records,
                          seed=self.seed, chapters=[chapter], params=self.params)

    def plan_slice(self, chapter: str):
        """The runs `chapter` trains: seed, model, iterations, status, time (measured or not)."""
        def clock(seconds) -> str:
            return "–" if A.no_value(seconds) else str(datetime.timedelta(seconds=round(seconds)))

        table = self.plan_table(chapter)[["seed", "model", "iterations", "status", "time s",
                                          "time from"]]
        outside = self.outside.get(match_chapters([chapter])[0], [])
        table.insert(0, "default plan", ["no" if run in outside else "yes" for run in table.index])
        note = (f"; {len(outside)} outside the default plan (this page's parameter values): "
                f"{', '.join(outside)}" if outside else "")
        return (table.rename(columns={"time s": "time"}).style
                .format({"iterations": "{:,}", "time": clock})
                .set_caption(self.caption(f"The plan's runs of this chapter ({len(table)}){note}")))

    def source(self, *runs: RunResult) -> str:
        """Where a figure came from: 'profile cpu · CIFAR-10 · published records · AMD EPYC'."""
        runs = tuple(r for r in runs if r is not None)  # an arm the profile does not train
        if not runs:  # a data-only figure: name the device this chapter would train on
            mine = f", this machine's data (the runs': {self.runs_label})" if self.here() else ""
            device = machine(device_label(self.torch_device))
            return f"profile {self.profile} · {self.dataset.label}{mine} · {device}, no training"
        where = ", ".join(sorted({machine(r.summary["device_name"]) for r in runs}))
        read = [r for r in runs if isinstance(r, PublishedRun)]
        if read:  # published records: say so, and whether runs trained here join them
            joined = " + runs trained here" if len(read) < len(runs) else ""
            where = f"published records{joined} · {where}"
        return f"profile {self.profile} · {self.runs_label} · {where}"

    def caption(self, text: str, *runs: RunResult) -> str:
        return f"{text} — {self.source(*runs)}"

    def caveats(self) -> list[str]:
        """What a reader must know before the numbers (HTML): a short budget, unofficial data."""
        budget, notes = self.config("budget"), []
        if self.profile == "smoke":
            notes.append(f"Profile <b>smoke</b>: every run is {budget.iterations} iterations on "
                         f"{budget.subset}-image subsets, so every number below is noise; it shows "
                         "that the code runs, not a result.")
        if self.profile == "cpu":
            notes.append(f"Profile <b>cpu</b>: every run is {budget.iterations:,} iterations, 1/"
                         f"{PAPER_ITERATIONS / budget.iterations:g} of the paper's "
                         f"{PAPER_ITERATIONS:,}, so errors lie far above the paper's; arms this "
                         "budget cannot resolve are not trained at this profile (shown as –).")
        if self.runs_data != "official":
            notes.append(f"The data is <b>{self.runs_label}</b>, not the official CIFAR-10: its "
                         "error rates are not comparable with the paper's.")
        if self.here():
            notes.append(f"This machine's data folder holds {self.dataset.label}: what the page "
                         "computes on the data uses it and says so.")
        return notes

    def caveats_box(self) -> HTML | str:
        """`caveats()` as the book theme's warning box (empty when there is nothing to say)."""
        notes = self.caveats()
        return HTML("<div class='admonition warning'><p class='admonition-title'>Read the numbers "
                    f"with care</p><p>{' '.join(notes)}</p></div>") if notes else ""

    def parameters(self, **knobs):
        """The parameters this page was built with, plus the chapter's own `knobs`, as a table."""
        rows = {"profile": self.profile, "device": f"{self.device} → {self.torch_device}",
                "data": f"{self.dataset.label}, {shown_path(self.dataset.root)}",
                "runs": shown_path(self.runs_dir), "seed": self.seed}
        if self.records:
            rows["runs"] += f" ({source_text(self.records)})"
        if self.train_dir:
            rows["runs"] += f" (runs outside the default plan: {shown_path(self.train_dir)})"
        if self.records_data:
            rows["records_data"] = f"{self.records_data}: the runs' data ({self.runs_label})"
        shown = {k: ", ".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)
                 for k, v in {**rows, **knobs}.items()}
        table = pd.DataFrame({"value": shown}).rename_axis("parameter")
        return A.styled(table, "This page's parameters (papermill -p NAME VALUE changes them)")

    def header(self, **knobs) -> HTML:
        """The parameters table and the caveats box; glues `noise` and `here`."""
        noise = " (with the smoke budget, noise)" if self.profile == "smoke" else ""
        self.glue({"noise": noise, "here": self.here()})
        return HTML(self.parameters(**knobs).to_html() + str(self.caveats_box()))

    def table(self, runs: dict[str, RunResult], title: str, columns=A.RUN_COLUMNS, precision=1):
        """`analysis.runs_table` with `columns`, formatted, captioned with the runs' source."""
        caption = self.caption(title, *runs.values())
        return A.styled(A.runs_table(runs)[list(columns)], caption, precision)

    def curves(self, runs: dict[str, RunResult], title: str, **kwargs):
        """`analysis.error_curves` titled with the runs' source."""
        return A.error_curves(runs, title=self.caption(title, *runs.values()), **kwargs)

    @staticmethod
    def glue(facts: dict) -> None:
        """Glue every item of `facts` as myst-nb's `glue(name, value, display=False)` does."""
        shell = getattr(builtins, "get_ipython", lambda: None)()
        if shell is None:
            return
        for name, value in facts.items():
            data, metadata = shell.display_formatter.format(value)
            shell.display_pub.publish(
                data={GLUE_PREFIX + mime: v for mime, v in data.items()},
                metadata={**metadata, "scrapbook": dict(name=name, mime_prefix=GLUE_PREFIX)})

    def figure(self, name: str, fig, caption: str, *runs: RunResult) -> None:
        """Glue `fig` as `name` and its captioned text as `cap_<name>` for a {glue:figure}."""
        self.glue({name: fig, f"cap_{name}": self.caption(caption, *runs)})
        plt.close(fig)


def chapter(profile: str = "smoke", device: str = "auto", data_dir: str | None = None,
            runs_dir: str | None = None, seed: int = 0, records_data: str | None = None) -> Chapter:
    """Check a page's papermill parameters, set up the page and load the data. Profile "auto"
    renders what `make book` does: the most complete committed records, this data's own first."""
    for key, value, kind in ("profile", profile, str), ("device", device, str), ("seed", seed, int):
        if not isinstance(value, kind) or isinstance(value, bool):
            raise TypeError(f"parameter {key} must be {kind.__name__}, got {value!r} "
                            f"({type(value).__name__}); e.g. papermill ... -p {key} "
                            f"{'smoke' if kind is str else 0}")
    if profile not in ("auto", *PROFILES):
        raise ValueError(f"parameter profile must be one of {('auto', *PROFILES)}, got {profile!r}")
    if seed < 0:
        raise ValueError(f"parameter seed must be >= 0, got {seed}")
    for key, value in dict(data_dir=data_dir, runs_dir=runs_dir).items():
        if value is not None and not isinstance(value, (str, os.PathLike)):
            raise TypeError(f"parameter {key} must be a path string, got {value!r}")
    TrainConfig(device=device).validate()
    # fvcore's tracing warns that torch.jit.script is deprecated: not the book's to fix
    warnings.filterwarnings("ignore", r".*torch\.jit\.script.* is deprecated", FutureWarning)
    plt.rcParams.update(A.BOOK_STYLE)
    root = project_root()
    dataset = D.load_cifar10(data_folder(data_dir, root))
    if profile == "auto":  # opened as it is, a notebook shows the page the published book shows
        profile, found = best_records(root, dataset.identity) or ("smoke", None)
        if found != dataset.identity and runs_dir is None and records_data is None:
            records_data = found
    if records_data not in (None, dataset.identity):
        if runs_dir is not None:
            raise ValueError(f"parameters records_data and runs_dir name two sources of runs (the "
                             f"committed records of {records_data}, and {runs_dir}): give one of "
                             "them")
        runs, records = published(root, profile, records_data)
        return Chapter(profile, device, dataset, runs, seed, records, records_data=records_data)
    # explicit runs_dir > published records of this data and profile (not smoke) > <root>/runs;
    # records found so are read first, and runs at other parameter values train in <root>/runs
    runs, records = resolve_runs(root, profile, dataset.identity, runs_dir)
    if runs_dir is not None:
        return Chapter(profile, device, dataset, runs, seed, records)
    own = resolve_runs(root, profile, dataset.identity, "runs")[0] if records is not None else None
    return Chapter(profile, device, dataset, runs, seed, records, train_dir=own,
                   partial=partial_records(root, profile, dataset.identity))


# ---------------------------------------------------------------- the headline (introduction, 6, 7)
@dataclass
class Headline:
    """The book's headline: ResNet-32 with the paper's recipe over seeds, its complete runs'
    mean and spread of the final test error (%)."""
    chapter: Chapter
    runs: dict[str, RunResult]

    def __post_init__(self):
        self.errors = A.values(self.runs.values())
        self.mean, self.std = A.mean_std(self.errors)

    def reasons(self) -> list[str]:
        """Why these numbers cannot be compared with the paper's (empty when they can)."""
        ch = self.chapter
        return ([f"{ch.profile} budget"] if ch.profile != "paper" else []) + \
               (["not the official data"] if ch.runs_data != "official" else [])

    def facts(self) -> dict:
        """The `head_*` text values of the introduction and chapter 6."""
        ch, runs, mean = self.chapter, list(self.runs.values()), self.mean
        first, budget = runs[0].summary, ch.config("results")
        if not self.errors:
            statuses = ", ".join(r.summary["status_detail"] for r in runs)
            verdict = (f"None of the {len(runs)} runs finished ({statuses}), so this build has no "
                       "test error to report.")
        elif not self.reasons():
            verdict = ("These numbers use the paper's recipe on the official data and can be "
                       f"compared with {PAPER_32:.2f} %.")
        else:
            reads = ("shows that the pipeline runs end to end" if ch.profile == "smoke" else
                     f"is where the recipe stands after {first['iterations']:,} of the paper's "
                     f"{PAPER_ITERATIONS:,} iterations on this data")
            verdict = (f"Not comparable with the paper. This build used profile {ch.profile} "
                       f"({first['iterations']:,} iterations on {first['train_size']:,} training "
                       f"images) and {ch.runs_label}; its {mean:.2f} % {reads}, not what "
                       "ResNet-32 reaches.")
        context = []
        if ch.profile == "smoke":
            context.append(f"the smoke profile trains for {budget.iterations} iterations on "
                           f"{budget.subset}-image subsets, a budget at which any network is "
                           "still near chance (90 % error), so this number only shows that the "
                           "pipeline runs.")
        elif ch.profile != "paper":
            context.append(f"the {ch.profile} profile trains for {budget.iterations:,} "
                           "iterations instead of 64k.")
        if ch.runs_data == "jpeg-q75-copy":
            context.append("The data is the JPEG q75 copy, which blurs and blocks 32×32 images; "
                           "chapter 1 says what the copy costs, as far as the book can tell.")
        elif ch.runs_data != "official":
            context.append(f"The data ({ch.runs_label}) is not verified to be the official "
                           "CIFAR-10.")
        context = " ".join(context) or "both hold here, so this is a like-for-like comparison."
        source = ch.source(*runs)
        return {**self.checks(), "head_profile": ch.profile, "head_data": ch.runs_label,
                "head_devices": source.split(" · ")[-1], "head_source": source,
                "head_mean": A.fmt(mean, ".2f"), "head_std": A.fmt(self.std, ".2f"),
                "head_gap": A.fmt(None if mean is None else mean - PAPER_32, "+.2f"),
                "head_n": str(len(self.errors)), "head_runs": str(len(runs)),
                "head_iterations": f"{budget.iterations:,}", "head_batch": str(budget.batch_size),
                "head_verdict": verdict, "head_context": context, "head_fit": self.fit()}

    def fit(self) -> str:
        """Final training error against test error: do the runs still underfit at this budget?"""
        pairs = [(100 * r.history["train_error"].iloc[-1], r.error()) for r in self.runs.values()
                 if r.complete and len(r.history) and r.error() is not None]
        if not pairs:
            return "No run finished, so there is no training error to compare with."
        train, test = (statistics.mean(x) for x in zip(*pairs))
        return (f"Their final training error, on the augmented batches, is {train:.1f} % against "
                f"{test:.1f} % test error (means over {len(pairs)} seed(s)): " + (
                    "the runs still underfit, so at this budget the iterations, not the recipe, "
                    "limit them." if train > test - 5 else
                    "they fit the training images better than they generalize."))

    def checks(self) -> dict:
        """Same data? same budget? Only then is the difference from the paper's 7.51 % tested."""
        ch, budget = self.chapter, self.chapter.config("results")
        same_data = ch.runs_data == "official"
        same_budget = (budget.iterations, budget.batch_size, budget.subset) == (
            PAPER_ITERATIONS, PAPER_BATCH, None)
        subsets = "" if budget.subset is None else f" on {budget.subset}-image subsets"
        parts = [f"same data: {'yes' if same_data else 'no'} ({ch.runs_label})",
                 f"same budget: {'yes' if same_budget else 'no'} ({budget.iterations:,} "
                 f"iterations × batch {budget.batch_size}{subsets}; the paper: "
                 f"{PAPER_ITERATIONS:,} × {PAPER_BATCH})"]
        differs = [x for x, same in (("other data", same_data), ("another budget", same_budget))
                   if not same]
        if self.mean is None:
            tested = "none to state, no run finished"
        elif differs:
            tested = f"not tested, since {' and '.join(differs)} explain a difference by themselves"
        else:
            tested = (f"{self.mean - PAPER_32:+.2f} points over {len(self.errors)} seed(s) (std "
                      f"{A.fmt(self.std, '.2f', 'unknown: one seed')}; the paper reports no spread "
                      "for ResNet-32)")
        parts.append(f"difference from the paper's {PAPER_32:.2f} %: {tested}")
        return {"head_best": A.fmt(min(self.errors) if self.errors else None, ".2f"),
                "head_checks": "; ".join(parts) + "."}

    def figure(self):
        """Training and test error of every seed, with the paper's 7.51 % as a dotted line."""
        title = self.chapter.caption("ResNet-32, one curve per seed", *self.runs.values())
        return A.error_curves(self.runs, title=title, reference=PAPER_LINE)


# ---------------------------------------------------------------- the paper's whole schedule
PAPER_RUN = "resnet32-all50k-seed0"  # the paper's protocol: all 50k training images, tested on 10k


def paper_run(dataset: str, name: str = PAPER_RUN) -> RunResult | None:
    """A run of profile paper from the committed records of the copy `dataset`, or None."""
    folder = project_root() / RECORDS / dataset / "paper"
    if not (folder / name / "summary.json").is_file():
        return None
    return load_record(folder, plan("paper", only=[name])[0].config("paper"), "paper")


def paper_caption(text: str, run: RunResult) -> str:
    s = run.summary
    devices = sorted({machine(seg["device"]) for seg in s.get("segments", []) if seg.get("device")})
    where = ", ".join(devices) or s["device_name"]
    return f"{text} — profile paper · {s['dataset_label']} · {where}"


def paper_facts(run: RunResult | None) -> dict:
    """The `sched_*` values: how far the run is, its latest and lowest error, who trained it."""
    if run is None:
        return {"sched_status": "no run of the paper's whole schedule is committed for this copy "
                "of CIFAR-10", **dict.fromkeys(["sched_error", "sched_at", "sched_lowest",
                                                "sched_lr", "sched_sittings", "sched_data"], "–")}
    s, h = run.summary, run.history
    done, total = s["iterations_done"], s["iterations"]
    tested = h.dropna(subset=["test_error"])
    low = tested.loc[tested["test_error"].idxmin()] if len(tested) else None
    segments = s.get("segments") or []
    hours = sum(seg["seconds"] for seg in segments) / 3600
    machines = "; ".join(sorted({seg["device"] for seg in segments if seg.get("device")}))
    status = (f"complete: all {total:,} iterations" if run.complete else
              f"{done:,} of {total:,} iterations ({100 * done / total:.0f} %), still training")
    lowest = ("–" if low is None else
              f"{100 * low['test_error']:.2f} % at iteration {int(low['iteration']):,}")
    sittings = (f"{len(segments)} sitting{'' if len(segments) == 1 else 's'}, {hours:.1f} hours "
                f"of training and evaluation, on {machines}")
    data = f"{s['dataset_label']}, {s['train_size']:,} training and {s['test_size']:,} test images"
    return {"sched_status": status, "sched_error": A.fmt(run.error(), ".2f"),
            "sched_at": f"{done:,}", "sched_lr": f"{h['lr'].iloc[-1]:g}" if len(h) else "–",
            "sched_lowest": lowest, "sched_sittings": sittings, "sched_data": data}


def paper_glue(ch: Chapter) -> RunResult | None:
    """Glue the paper run's `sched_*` values and figure (`fig_paper`); returns the run, or None."""
    run = paper_run(ch.runs_data)
    fig = paper_figure(run)
    caption = "Training (dashed) and test (bold) error over the paper's schedule"
    caption = NO_PAPER_RUN if run is None else paper_caption(caption, run)
    ch.glue({**paper_facts(run), "fig_paper": fig, "cap_fig_paper": caption})
    plt.close(fig)
    return run


def paper_figure(run: RunResult | None):
    """Training and test error over the whole schedule, lr drops marked, the paper's 7.51 %."""
    if run is None:
        fig, ax = plt.subplots(figsize=(10, 1.5))
        ax.axis("off")
        ax.text(0.5, 0.5, "no run of the paper's schedule committed for this data", ha="center",
                va="center")
        return A.detached(fig)
    cfg = TrainConfig(**run.config)
    fig = A.error_curves({"ResNet-32, all 50k, seed 0": run}, reference=PAPER_LINE,
                         title=paper_caption("ResNet-32 with the paper's schedule", run))
    ax = fig.axes[0]
    for m in cfg.milestones:
        ax.axvline(m, color="0.5", lw=0.8, ls="-.")
        ax.annotate("lr ÷10", (m, 0.98), xycoords=("data", "axes fraction"), xytext=(3, 0),
                    textcoords="offset points", ha="left", va="top", fontsize=8)
    ax.set_xlim(0, cfg.iterations)
    highest = run.history[["train_error", "test_error"]].max().max()
    ax.set_ylim(0, min(100, 100 * max(highest, 0.5) + 5))
    return fig


def paper_sittings(run: RunResult | None):
    """One row per sitting that trained the run: iterations, machine, threads, hours, commit."""
    if run is None:
        return A.styled(pd.DataFrame(), NO_PAPER_RUN)
    rows = []
    for seg in run.summary.get("segments") or []:
        images = (seg["end"] - seg["start"]) * run.config["batch_size"]
        rows.append({"iterations": f"{seg['start']:,} – {seg['end']:,}",
                     "device": seg.get("device") or "–", "threads": seg.get("threads") or "–",
                     "hours": seg["seconds"] / 3600, "images/s": images / max(seg["seconds"], 1e-9),
                     "commit": seg.get("commit") or "–",
                     "began": (seg.get("began") or "–").replace("T", " ")})
    table = pd.DataFrame(rows, index=pd.RangeIndex(1, len(rows) + 1, name="sitting"))
    caption = "The sittings that trained it (images/s: training and evaluation)"
    return A.styled(table, paper_caption(caption, run))
