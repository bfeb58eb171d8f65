"""What the book's chapters share: parameter checks, the chapter set-up (data, runs, the chapter's
experiments), captions and caveats, glue, run tables and curves. The numbers, tables and figures
particular to each chapter are free functions in chapters/chNN_<name>.py, one module per notebook.

The profiles (budgets) are config.PROFILES; each chapter's arms are experiments.py's.
"""
from __future__ import annotations

import builtins
import contextlib
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from . import analysis as A
from . import data as D
from .config import PAPER_ITERATIONS, PROFILE_THREADS, PROFILES, TrainConfig, profile_config
from .devices import device_label, machine, pick_device
from . import experiments as E
from .plan import accounting, match_chapters, plan
from .plan import table as plan_table
from .records import (RECORDS, PublishedRun, best_records, load_record, partial_records, project_root, published,
                      resolve_runs, restore, shown_path, source_text)
from .runs import RunResult, state
from .analysis import fmt
from .train import train

GLUE_PREFIX = "application/papermill.record/"  # myst-nb's glue outputs (display=False)

# Warnings a chapter's reader cannot act on, silenced once by `chapter()`.
KNOWN_WARNINGS = [
    dict(message=r".*torch\.jit\.script.* is deprecated", category=FutureWarning),  # fvcore's tracing
]


def profiles_table() -> "pd.io.formats.style.Styler":
    """The profiles side by side: budget, learning-rate drops, batch, training images."""
    rows = {}
    for name in PROFILES:
        cfg = profile_config(name)
        rows[name] = {"iterations": f"{cfg.iterations:,}",
                      "lr ÷10 at iterations": " and ".join(f"{m:,}" for m in cfg.milestones),
                      "batch size": cfg.batch_size,
                      "training images": "all 45,000" if cfg.subset is None else
                                         f"{cfg.subset // 10 * 10:,} ({cfg.subset // 10} per class)"}
    return A.styled(pd.DataFrame(rows).T.rename_axis("profile"), "The profiles (resnet_cifar.config.PROFILES)")


def data_folder(data_dir=None, root: Path | None = None) -> Path:
    """`data.resolve_data_dir` (argument > $RESNET_CIFAR_DATA > data), a relative result taken
    from the project root, so that a chapter finds ./data wherever its kernel was started."""
    path = D.resolve_data_dir(data_dir)
    return path if path.is_absolute() else (root or project_root()) / path


@dataclass
class Chapter:
    """One chapter's parameters, checked, with the dataset loaded once.

    Runs go to `<runs_dir>/<dataset identity>/<profile>/<name>`, so smoke runs, JPEG-copy
    runs and official-data runs never mix. A build may read the published records of another
    copy than the machine's (`records_data`): captions then name the runs' copy, and what is
    computed on the data here says so (`here`)."""
    profile: str
    device: str
    dataset: D.CIFAR10
    runs_dir: Path
    seed: int
    records: dict | None = None  # the records.json of published records (read only), else None
    params: dict = field(default_factory=dict)   # chapter -> the parameter values its experiments ran with
    outside: dict = field(default_factory=dict)  # chapter -> its runs that are not in the default plan
    records_data: str | None = None  # the copy of CIFAR-10 the runs were trained on, when not `dataset`'s
    train_dir: Path | None = None  # with records: where runs outside the default plan train (None: nowhere)
    partial: Path | None = None  # without: partial committed records, read for their finished runs

    @property
    def runs_data(self) -> str:
        """The identity of the data the runs were trained and tested on: `dataset`'s, unless this
        build reads the published records of another copy."""
        return self.records_data or self.dataset.identity

    @property
    def runs_label(self) -> str:
        return D.dataset_label(self.runs_data)

    def here(self) -> str:
        """'' when the runs were trained on this machine's data; else ' (computed here on <this
        machine's copy>; the runs were trained on <theirs>)', for sentences whose numbers this
        page computes on the data (a published model evaluated again, images)."""
        if self.runs_data == self.dataset.identity:
            return ""
        return f" (computed here on {self.dataset.label}; the runs were trained on {self.runs_label})"

    # -- runs
    def config(self, name: str, **overrides) -> TrainConfig:
        settings = dict(name=name, device=self.device, data_dir=str(self.dataset.root),
                        runs_dir=str(self.runs_dir), seed=self.seed, progress="log", wait=True)
        return profile_config(self.profile, **{**settings, **overrides})

    def experiments(self, chapter: str, **params) -> dict[str, dict[str, list[RunResult]]]:
        """The chapter's experiments (experiments.py) for its parameter values `params`, each run
        read from published records or trained (reused, resumed): section -> label -> runs (one
        per seed, the chapter's own seed first). Runs outside the default plan are remembered for
        `plan_slice`."""
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
        """Final test error (%) of each run, formatted, under its key; '–' for a run without one
        (or no run: an arm this profile does not train)."""
        return {key: fmt(run.error() if run is not None else None, spec) for key, run in named.items()}

    @staticmethod
    def own_seed(arms: dict[str, list[RunResult]]) -> dict[str, RunResult]:
        """Each arm's run of the chapter's own seed (the first)."""
        return {label: runs[0] for label, runs in arms.items()}

    def left_out(self, chapter: str) -> str:
        """The runs of the chapter's default arms that this profile does not train, or 'none'."""
        return ", ".join(E.left_out(chapter, self.profile, self.seed)) or "none"

    def train(self, name: str, overrides: dict) -> RunResult:
        """Run `name` with `overrides` on this chapter's profile: read from published records, or
        trained (reused, resumed); on the CPU with the profile's PROFILE_THREADS (the kernel's
        own setting is restored afterwards). With records, only a run they lack that lies outside
        the default plan (other parameter values made it) is trained, in `train_dir`."""
        config = self.config(name, **overrides)
        if self.partial is not None:  # published finished: read; published unfinished: resumed here
            if state(config, self.partial / config.run_name())["state"] == "finished":
                return load_record(self.partial, config, self.profile)
            restore(self.partial / config.run_name(), Path(self.runs_dir) / config.run_name(), config)
        if self.records is not None:
            lacking = not (Path(self.runs_dir) / config.run_name() / "summary.json").is_file()
            if not (lacking and self.train_dir and any(name in runs for runs in self.outside.values())):
                return load_record(self.runs_dir, config, self.profile)
            config = self.config(name, **overrides, runs_dir=str(self.train_dir))
        with self.profile_threads():
            return train(config, dataset=self.dataset)

    @property
    def threads(self) -> int | None:
        """The CPU threads this profile's work runs on (config.PROFILE_THREADS; None: the kernel's)."""
        return PROFILE_THREADS.get(self.profile) if self.torch_device.type == "cpu" else None

    @contextlib.contextmanager
    def profile_threads(self):
        """`threads` for what runs inside (the profile's runs, the appendix's benchmark); the
        kernel's own setting is restored afterwards."""
        before = torch.get_num_threads()
        torch.set_num_threads(self.threads or before)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    def plan_table(self, chapter: str | None = None):
        """The plan's runs of `chapter` ('02', '05_optimizers'; default: every chapter), at this
        page's parameter values, as a DataFrame: status (published records first, then the runs
        trained in `train_dir`, else this chapter's runs folder), time measured or estimated."""
        folder, records = (self.train_dir, self.runs_dir) if self.train_dir else (self.runs_dir, None)
        return plan_table(self.profile, folder, self.device, project_root() / RECORDS, records, seed=self.seed,
                          chapters=[chapter] if chapter else None, params=self.params)

    def plan_slice(self, chapter: str) -> "pd.io.formats.style.Styler":
        """The runs `chapter` trains, from the plan: seed, model, iterations, status and time
        (measured, else estimated, with where the estimate comes from)."""
        import datetime
        table = self.plan_table(chapter)[["seed", "model", "iterations", "status", "time s", "time from"]]
        outside = self.outside.get(match_chapters([chapter])[0], [])
        table.insert(0, "default plan", ["no" if name in outside else "yes" for name in table.index])
        clock = lambda s: "–" if s != s or s is None else str(datetime.timedelta(seconds=round(s)))  # noqa: E731
        note = (f"; {len(outside)} outside the default plan (this page's parameter values): {', '.join(outside)}"
                if outside else "")
        return (table.rename(columns={"time s": "time"}).style.format({"iterations": "{:,}", "time": clock})
                .set_caption(self.caption(f"The plan's runs of this chapter ({len(table)}){note}")))

    def accounting(self) -> "pd.io.formats.style.Styler":
        """What each profile's plan costs: runs, iterations, images, measured and estimated time."""
        table = accounting(self.dataset.identity, device=self.device, seed=self.seed).T  # profiles as columns
        return table.style.format(lambda v: f"{v:,.0f}" if isinstance(v, (int, float)) else v).set_caption(
            f"Compute per profile (estimates for {self.torch_device}, one run at a time) — {self.dataset.label}")

    @property
    def torch_device(self) -> torch.device:
        return pick_device(self.device)

    # -- labels
    def source(self, *runs: RunResult) -> str:
        """'profile cpu · CIFAR-10 (JPEG q75 copy) · published records · AMD EPYC CPU': where a
        figure came from, in one line (the records' date and commits are in the page's parameters
        table, each run's machine in its run table); with no runs, the device this chapter would
        train on, marked 'no training'."""
        runs = tuple(r for r in runs if r is not None)  # an arm the profile does not train
        where = ", ".join(sorted({machine(r.summary["device_name"]) for r in runs}))
        if not runs:  # a data-only figure: name the device this chapter would train on
            where = f"{machine(device_label(self.torch_device))}, no training"
        read = tuple(r for r in runs if isinstance(r, PublishedRun))
        if read:  # published records: say so, and whether runs trained here join them
            where = f"published records{' + runs trained here' if len(read) < len(runs) else ''} · {where}"
        data = self.runs_label if runs else self.dataset.label + (
            f", this machine's data (the runs': {self.runs_label})" if self.here() else "")
        return f"profile {self.profile} · {data} · {where}"

    def caption(self, text: str, *runs: RunResult) -> str:
        return f"{text} — {self.source(*runs)}"

    def caveats(self) -> list[str]:
        """What a reader must know before reading this chapter's numbers (HTML sentences): the
        smoke or cpu budget, and data that is not the official CIFAR-10."""
        budget, notes = self.config("budget"), []
        if self.profile == "smoke":
            notes.append(f"Profile <b>smoke</b>: every run is {budget.iterations} iterations on {budget.subset}-image "
                         "subsets, so every number below is noise; it shows that the code runs, not a result.")
        if self.profile == "cpu":
            notes.append(f"Profile <b>cpu</b>: every run is {budget.iterations:,} iterations, 1/"
                         f"{PAPER_ITERATIONS / budget.iterations:g} of the paper's {PAPER_ITERATIONS:,}, so errors "
                         "lie far above the paper's; arms this budget cannot resolve are not trained at this profile "
                         "(shown as \u2013).")
        if self.runs_data != "official":
            notes.append(f"The data is <b>{self.runs_label}</b>, not the official CIFAR-10: its error rates are not "
                         "comparable with the paper's.")
        if self.runs_data != self.dataset.identity:
            notes.append(f"This machine's data folder holds {self.dataset.label}: what the page computes on the data "
                         "uses it and says so.")
        return notes

    def caveats_box(self) -> "HTML | str":
        """`caveats()` as one warning box (empty when there is nothing to say)."""
        notes = self.caveats()
        return admonitions([" ".join(notes)], "warning", "Read the numbers with care") if notes else ""

    def noise(self) -> str:
        """' (with the smoke budget, noise)' on the smoke profile, else '': for sentences that
        quote a number."""
        return " (with the smoke budget, noise)" if self.profile == "smoke" else ""

    def parameters(self, **knobs) -> "pd.io.formats.style.Styler":
        """The parameters this page was built with, as a table (the data folder by its label, the
        device as resolved), plus the chapter's own `knobs`."""
        rows = {"profile": self.profile, "device": f"{self.device} → {self.torch_device}",
                "data": f"{self.dataset.label}, {shown_path(self.dataset.root)}",
                "runs": shown_path(self.runs_dir), "seed": self.seed}
        if self.records:
            rows["runs"] += f" ({source_text(self.records)})"
        if self.train_dir:
            rows["runs"] += f" (runs outside the default plan: {shown_path(self.train_dir)})"
        if self.records_data:
            rows["records_data"] = f"{self.records_data}: the runs' data ({self.runs_label})"
        rows.update({k: ", ".join(map(str, v)) if isinstance(v, (list, tuple)) else v for k, v in knobs.items()})
        table = pd.DataFrame({"value": {k: str(v) for k, v in rows.items()}}).rename_axis("parameter")
        return A.styled(table, "This page's parameters (papermill -p NAME VALUE changes them)")

    def header(self, **knobs) -> "HTML":
        """The page's parameters table and, for budgets or data that are not the paper's, the
        warning boxes: the cell after `chapter(...)` shows it. Glues `noise` and `here` (see
        `noise()`, `here()`)."""
        self.glue({"noise": self.noise(), "here": self.here()})
        return HTML(self.parameters(**knobs).to_html() + str(self.caveats_box()))

    # -- tables and figures of runs
    def table(self, runs: dict[str, RunResult], title: str, columns=A.RUN_COLUMNS, precision: int = 1):
        """`analysis.runs_table` with `columns`, formatted, captioned with the runs' source."""
        return A.styled(A.runs_table(runs)[list(columns)], self.caption(title, *runs.values()), precision)

    def curves(self, runs: dict[str, RunResult], title: str, **kwargs):
        """`analysis.error_curves` titled with the runs' source."""
        return A.error_curves(runs, title=self.caption(title, *runs.values()), **kwargs)

    @staticmethod
    def glue(facts: dict) -> None:
        """Glue every item of `facts` for the page's text ({glue:text}`name`), showing nothing.

        The outputs are myst-nb's glue outputs (`myst_nb.glue(name, value, display=False)`:
        the value's display data under the papermill-record MIME prefix, named in the
        `scrapbook` metadata), published through the running IPython kernel; outside a
        kernel there is no page to glue into and nothing happens."""
        shell = getattr(builtins, "get_ipython", lambda: None)()
        if shell is None:
            return
        for name, value in facts.items():
            data, metadata = shell.display_formatter.format(value)
            shell.display_pub.publish(data={GLUE_PREFIX + mime: v for mime, v in data.items()},
                                      metadata={**metadata, "scrapbook": dict(name=name, mime_prefix=GLUE_PREFIX)})

    def figure(self, name: str, fig, caption: str, *runs: RunResult) -> None:
        """Glue `fig` as `name` and its captioned text as `cap_<name>` for a {glue:figure}."""
        import matplotlib.pyplot as plt
        self.glue({name: fig, f"cap_{name}": self.caption(caption, *runs)})
        plt.close(fig)


class HTML(str):
    """A string that Jupyter displays as HTML (through `_repr_html_`; no IPython import)."""

    def _repr_html_(self) -> str:
        return str(self)


def admonitions(texts: list[str], kind: str = "note", title: str | None = None) -> HTML:
    """HTML fragments as the book theme's admonition boxes (`kind`: note, warning, ...)."""
    head = f"<p class='admonition-title'>{title}</p>" if title else ""
    return HTML("".join(f"<div class='admonition {kind}'>{head}<p>{text}</p></div>" for text in texts))


def quiet() -> None:
    """Silence the warnings of KNOWN_WARNINGS and give figures the book's font sizes."""
    for spec in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", **spec)
    A.use_book_style()


def chapter(profile: str = "smoke", device: str = "auto", data_dir: str | None = None,
            runs_dir: str | None = None, seed: int = 0, records_data: str | None = None) -> Chapter:
    """Check a chapter's papermill parameters, set up the page (known warnings silenced,
    figure style) and load the data. data_dir follows `data.resolve_data_dir` (argument >
    $RESNET_CIFAR_DATA > data); relative paths are taken from the project root (the folder
    with _toc.yml). `records_data` reads the published records of that copy of CIFAR-10
    (e.g. jpeg-q75-copy) whatever the data folder holds; default: the data folder's copy.
    profile "auto" (the parameters cell's default) is what `make book` renders: the most complete
    committed records, this data's own first, else another copy's; with none, smoke."""
    checks = dict(profile=(profile, str), device=(device, str), seed=(seed, int))
    for key, (value, kind) in checks.items():
        if not isinstance(value, kind) or isinstance(value, bool):
            raise TypeError(f"parameter {key} must be {kind.__name__}, got {value!r} ({type(value).__name__}); "
                            f"e.g. papermill ... -p {key} {'smoke' if kind is str else 0}")
    if profile not in PROFILES and profile != "auto":
        raise ValueError(f"parameter profile must be one of {('auto', *PROFILES)}, got {profile!r}")
    if seed < 0:
        raise ValueError(f"parameter seed must be >= 0, got {seed}")
    for key, value in dict(data_dir=data_dir, runs_dir=runs_dir).items():
        if value is not None and not isinstance(value, (str, os.PathLike)):
            raise TypeError(f"parameter {key} must be a path string, got {value!r}")
    if records_data is not None and not isinstance(records_data, str):
        raise TypeError(f"parameter records_data must be the name of a copy of CIFAR-10 (e.g. jpeg-q75-copy), "
                        f"got {records_data!r}")
    TrainConfig(device=device).validate()
    quiet()
    root = project_root()
    dataset = D.load_cifar10(data_folder(data_dir, root))
    if profile == "auto":  # opened as it is, a notebook shows the page the published book shows
        profile, found = best_records(root, dataset.identity) or ("smoke", None)
        if found != dataset.identity and runs_dir is None and records_data is None:
            records_data = found
    if records_data not in (None, dataset.identity):
        if runs_dir is not None:
            raise ValueError(f"parameters records_data and runs_dir name two sources of runs (the committed records "
                             f"of {records_data}, and {runs_dir}): give one of them")
        runs, records = published(root, profile, records_data)
        return Chapter(profile, device, dataset, runs, seed, records, records_data=records_data)
    # explicit runs_dir > published records of this dataset and profile (not smoke) > <root>/runs;
    # records found so are read first, and the runs other parameter values make train in <root>/runs
    runs, records = resolve_runs(root, profile, dataset.identity, runs_dir)
    own = resolve_runs(root, profile, dataset.identity, "runs")[0] if records is not None and runs_dir is None else None
    partial = partial_records(root, profile, dataset.identity) if runs_dir is None else None
    return Chapter(profile, device, dataset, runs, seed, records, train_dir=own, partial=partial)
