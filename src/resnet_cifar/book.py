"""What the book's chapters share: run profiles, parameter checks, captions.

Profiles set budgets; explicit chapter parameters override them:
    smoke  CPU, 256-image subsets, 20 iterations: seconds per run (what CI builds)
    quick  full data, 1/10 of the paper's schedule (6.4k iterations): minutes on a GPU
    paper  the paper's recipe: 64k iterations, ÷10 at 32k and 48k
The milestones scale with the iterations (at 50 % and 75 %), as in the paper.
All profiles run the step in channels_last memory format.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from . import data as D
from .config import TrainConfig
from .runs import RunResult
from .train import train

PROFILES = {
    "smoke": dict(iterations=20, batch_size=32, subset=256, eval_every=10),
    "quick": dict(iterations=6400),
    "paper": dict(),
}


def profile_config(profile: str, **overrides) -> TrainConfig:
    """A TrainConfig for `profile`, milestones scaled to its iterations, then `overrides`."""
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {tuple(PROFILES)}, got {profile!r}")
    # channels_last changes how the step runs, not what it computes (it is not part of a run's
    # identity): the benchmark appendix measures it faster on CPUs, as it is on GPUs.
    settings = {"channels_last": True, **PROFILES[profile], **overrides}
    iterations = settings.get("iterations", TrainConfig.iterations)
    settings.setdefault("milestones", (iterations // 2, iterations * 3 // 4))
    return TrainConfig(**settings).validate()


def project_root(start: Path | None = None) -> Path:
    """The folder holding _toc.yml (the book's root), searched upwards from `start`."""
    start = (start or Path.cwd()).resolve()
    for folder in (start, *start.parents):
        if (folder / "_toc.yml").is_file():
            return folder
    return start


@dataclass
class Chapter:
    """One chapter's parameters, checked, with the dataset loaded once.

    Runs go to `<runs_dir>/<dataset identity>/<profile>/<name>`, so smoke runs, JPEG-copy
    runs and official-data runs never mix."""
    profile: str
    device: str
    dataset: D.CIFAR10
    runs_dir: Path
    seed: int
    records: dict | None = None  # the records.json of published records (read only), else None

    def config(self, name: str, **overrides) -> TrainConfig:
        settings = dict(name=name, device=self.device, data_dir=str(self.dataset.root),
                        runs_dir=str(self.runs_dir), seed=self.seed, progress="log", wait=True)
        return profile_config(self.profile, **{**settings, **overrides})

    def run(self, name: str, **overrides) -> RunResult:
        """The run `name` of the plan (plan.py) on this chapter's profile: read from published
        records, or trained (reused, resumed). `overrides` must restate the plan's settings;
        a run that is not in the plan is an error."""
        from .plan import planned_config
        execution = dict(device=self.device, data_dir=str(self.dataset.root), runs_dir=str(self.runs_dir),
                         progress="log", wait=True)
        config = planned_config(name, self.profile, self.seed, overrides, **execution)
        if self.records is not None:
            from .records import load_record
            return load_record(self.runs_dir, config, self.profile)
        return train(config, dataset=self.dataset)

    def plan_table(self, chapter: str | None = None):
        """The plan's runs of `chapter` ('02', '05_optimizers'; default: every chapter) as a
        DataFrame: status in this chapter's runs folder, time measured or estimated."""
        from .plan import table
        return table(self.profile, self.runs_dir, self.device, project_root() / "book" / "records",
                     seed=self.seed, chapters=[chapter] if chapter else None)

    def source(self, *runs: RunResult) -> str:
        """'profile smoke · CIFAR-10 (JPEG q75 copy) · cpu (...)': where a figure came from
        (with no runs: the device this chapter would train on, marked 'no training')."""
        devices = sorted({f"{r.summary['device']} ({r.summary['device_name']})" for r in runs})
        if not runs:  # a data-only figure: name the device this chapter would train on
            from .devices import device_label, pick_device
            device = pick_device(self.device)
            devices = [f"{device} ({device_label(device)}), no training"]
        where = ", ".join(devices)
        if self.records is not None:  # published records: say which (the devices stay last)
            from .records import source_text
            where = f"{source_text(self.records, runs)} · {where}"
        return f"profile {self.profile} · {self.dataset.label} · {where}"

    def caption(self, text: str, *runs: RunResult) -> str:
        return f"{text} — {self.source(*runs)}"

    def caveats(self) -> list[str]:
        """What a reader must know before reading this chapter's numbers (HTML fragments):
        the smoke budget, and data that is not the official CIFAR-10."""
        budget, notes = self.config("budget"), []
        if self.profile == "smoke":
            notes.append(f"Profile <b>smoke</b>: every run in this chapter is {budget.iterations} iterations of batch "
                         f"{budget.batch_size} on {budget.subset}-image subsets, so every error below is noise from "
                         "seconds of training. It shows that the code runs end to end; it does not rank the methods "
                         "and it is <b>not</b> a result of the paper. Rebuild with profile <code>quick</code> or "
                         "<code>paper</code> on a GPU for numbers that mean something.")
        if self.dataset.identity != "official":
            notes.append(f"Data: <b>{self.dataset.label}</b>, not the official CIFAR-10. Error rates on it are "
                         "not comparable with the paper's.")
        return notes

    def caveats_box(self) -> "HTML":
        """`caveats()` as warning boxes: the last expression of a notebook cell shows them."""
        return admonitions(self.caveats(), "warning", "Read the numbers with care")


class HTML(str):
    """A string that Jupyter displays as HTML (through `_repr_html_`; no IPython import)."""

    def _repr_html_(self) -> str:
        return str(self)


def admonitions(texts: list[str], kind: str = "note", title: str | None = None) -> HTML:
    """HTML fragments as the book theme's admonition boxes (`kind`: note, warning, ...)."""
    head = f"<p class='admonition-title'>{title}</p>" if title else ""
    return HTML("".join(f"<div class='admonition {kind}'>{head}<p>{text}</p></div>" for text in texts))


def chapter(profile: str = "smoke", device: str = "auto", data_dir: str | None = None,
            runs_dir: str | None = None, seed: int = 0) -> Chapter:
    """Check a chapter's papermill parameters and load the data. Relative paths are
    taken from the project root (the folder with _toc.yml); data_dir defaults to
    $RESNET_CIFAR_DATA, then <root>/data."""
    checks = dict(profile=(profile, str), device=(device, str), seed=(seed, int))
    for key, (value, kind) in checks.items():
        if not isinstance(value, kind) or isinstance(value, bool):
            raise TypeError(f"parameter {key} must be {kind.__name__}, got {value!r} ({type(value).__name__}); "
                            f"e.g. papermill ... -p {key} {'smoke' if kind is str else 0}")
    if profile not in PROFILES:
        raise ValueError(f"parameter profile must be one of {tuple(PROFILES)}, got {profile!r}")
    if seed < 0:
        raise ValueError(f"parameter seed must be >= 0, got {seed}")
    for key, value in dict(data_dir=data_dir, runs_dir=runs_dir).items():
        if value is not None and not isinstance(value, (str, os.PathLike)):
            raise TypeError(f"parameter {key} must be a path string, got {value!r}")
    TrainConfig(device=device).validate()
    root = project_root()
    data_path = Path(data_dir or os.environ.get("RESNET_CIFAR_DATA") or root / "data")
    dataset = D.load_cifar10(root / data_path)
    # explicit runs_dir > published records of this dataset and profile (not smoke) > <root>/runs
    from .records import resolve_runs
    runs, records = resolve_runs(root, profile, dataset.identity, runs_dir)
    return Chapter(profile, device, dataset, runs, seed, records)
