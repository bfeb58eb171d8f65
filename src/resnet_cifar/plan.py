"""The plan: every run the book's chapters train, with its status and its time.

The runs are the chapters' experiments (experiments.py) at their default parameters or at the
values of `params` (`plan --set NAME=VALUE`), one per name (several chapters share
`resnet32-seed0`). A run's time is its record's, else its work at a measured rate (`price`).
"""
from __future__ import annotations

import ast
import difflib
import statistics
from dataclasses import dataclass
from pathlib import Path

import torch

from . import experiments as E
from .config import PROFILES, TrainConfig, profile_config
from .devices import DeviceError, device_label, pick_device
from .models import multiply_adds
from .records import RECORDS, behind, load_records, project_root
from .runs import FINISHED, read_json, state

PlanError = E.ExperimentError  # a profile, chapter, parameter or run that the plan does not know


@dataclass
class PlannedRun:
    """One run of the plan: its name, config overrides and the chapters that show it."""
    name: str
    overrides: dict
    chapters: tuple[str, ...]

    @property
    def seed(self) -> int:
        return self.overrides["seed"]

    def config(self, profile: str, **execution) -> TrainConfig:
        """The run's TrainConfig on `profile`; `execution`: device, runs_dir, ... (not identity)."""
        return profile_config(profile, name=self.name, **self.overrides, **execution)

    def model(self) -> str:
        """resnet32, plain20, resnet32 (B), resnet34-imagenet, ..."""
        c = TrainConfig(**self.overrides)
        option = f" ({c.shortcut})" if c.arch == "resnet" and c.shortcut != "A" else ""
        return c.arch if c.arch == "resnet34-imagenet" else f"{c.arch}{c.depth}{option}"


def match_chapters(names) -> list[str]:
    """Chapter stems for `names` given as '02', '02_model' or 'book/02_model.ipynb'."""
    chosen = []
    for name in names:
        stem = Path(name).stem
        found = [c for c in E.CHAPTERS if c == stem or c.startswith(stem + "_")]
        if len(found) != 1:
            raise PlanError(f"chapter {name!r} is not one of the chapters with runs: "
                            f"{', '.join(E.CHAPTERS)}")
        chosen += found
    return chosen


def plan(profile: str, seed: int = 0, chapters=None, only=None, params: dict | None = None
         ) -> list[PlannedRun]:
    """The runs of `profile` (each name once, in chapter order), restricted to `chapters` and to
    the names in `only`, with `params` (chapter -> parameter values) over the defaults."""
    if profile not in PROFILES:
        raise PlanError(f"profile must be one of {tuple(PROFILES)}, got {profile!r}")
    wanted = set(match_chapters(chapters) if chapters else E.CHAPTERS)
    runs: dict[str, PlannedRun] = {}
    for chapter in E.CHAPTERS:
        declared = E.sections(chapter, profile, seed, **(params or {}).get(chapter, {}))
        for name, overrides in E.flat(declared).items():
            run = runs.setdefault(name, PlannedRun(name, overrides, ()))
            if run.overrides != overrides:
                raise PlanError(f"run {name!r} is declared twice with different settings "
                                f"({run.overrides} vs {overrides})")
            run.chapters += (chapter,)
    selected = [r for r in runs.values() if wanted & set(r.chapters)]
    names = [r.name for r in selected]
    unknown = sorted(set(only or ()) - set(names))
    if unknown:
        close = sorted({m for u in unknown for m in difflib.get_close_matches(u, names, n=3)})
        raise PlanError(f"not in the plan of profile {profile}: {', '.join(unknown)}"
                        + (f" (close: {', '.join(close)})" if close else "")
                        + f"; `python -m resnet_cifar plan --profile {profile}` lists its "
                          f"{len(names)} runs")
    return [r for r in selected if r.name in only] if only else selected


def parse_settings(settings: list[str], chapters) -> dict[str, dict]:
    """`NAME=VALUE` strings (`plan --set`, VALUE a Python literal: 0.01, [20, 56]) as chapter ->
    values, for the chapters in `chapters` that have the parameter NAME."""
    if settings and not chapters:
        raise PlanError("--set needs --chapters: the chapter whose parameter it sets, "
                        "e.g. --chapters 05")
    params: dict[str, dict] = {}
    theirs = {c: E.defaults(c) for c in match_chapters(chapters or [])}
    for text in settings or []:
        key, sep, value = text.partition("=")
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            pass  # a string
        if not sep or value is None:
            raise PlanError(f"--set takes NAME=VALUE (VALUE a number, a string or a list), "
                            f"got {text!r}")
        owners = [c for c, names in theirs.items() if key in names]
        if not owners:
            raise PlanError(f"no chapter of {', '.join(chapters)} has a parameter {key!r}; theirs: "
                            + "; ".join(f"{c}: {', '.join(n) or '-'}" for c, n in theirs.items()))
        for chapter in owners:
            params.setdefault(chapter, {})[key] = value
    return params


# ---------------------------------------------------------------- status and time

def status(run: PlannedRun, profile: str, folder: Path, published: Path | None = None) -> dict:
    """`runs.state` of the run's folder in `folder`; a run finished in the records `published`
    (read first) is 'finished' there, marked 'published'; one published unfinished with more
    iterations than `folder` holds is interrupted there (`run` resumes from it)."""
    here = state(run.config(profile), Path(folder) / run.name)
    if published is not None:
        found = state(run.config(profile), Path(published) / run.name)
        if found["state"] == "finished":
            return {**found, "text": f"{found['text']} (published)", "published": True}
        if behind(here, found):
            return {**found, "text": f"{found['text']} (published: resumes there)"}  # restore()
    return here


def model_flops(config: TrainConfig) -> float:
    """Multiply-adds of one image through `config`'s model: what estimates scale rates by."""
    return float(multiply_adds(config.arch, config.depth, config.shortcut))


def same_device(name: str | None, label: str | None) -> bool:
    """Whether a recorded device name is the device `label`, whatever its thread count."""
    return bool(label) and (name or "").split(";")[0] == label.split(";")[0]


def bench_rates(records_dir: Path, device: torch.device) -> list[dict]:
    """Training rates (images/s) of the recorded benchmarks (bench-*.json) on `device`'s type."""
    rates = []
    for name, record in load_records(records_dir).items():
        info = record.get("info", {})
        if info.get("device", "").split(":")[0] == device.type:
            flops = model_flops(TrainConfig(depth=info.get("depth", 32)))
            rates += [dict(file=f"{name}.json", device_name=info.get("device_name"),
                           date=info.get("date") or "", batch_size=info.get("batch_size"),
                           flops=flops, dtype=v["dtype"], channels_last=v["channels_last"],
                           rate=v["library"])
                      for v in record.get("variants") or []
                      if v.get("library") and not v.get("compile")]
    return rates


def reference_rates(folders, label: str | None, device_type: str) -> list[dict]:
    """Seconds per (training image × multiply-add) of the finished runs in `folders` (folders of
    run folders) on the device `label` (None: any device of `device_type`), evaluation included."""
    refs, seen = [], set()
    for path in (p for folder in folders for p in sorted(Path(folder).glob("*/summary.json"))):
        s, c = read_json(path), read_json(path.parent / "config.json")
        if path.parent.resolve() in seen or not (s and c) or s.get("status") not in FINISHED:
            continue
        seen.add(path.parent.resolve())
        on = same_device(s.get("device_name"), label) if label else (
            str(s.get("device", "")).split(":")[0] == device_type)
        if on and s.get("wall_time_s") and s.get("iterations_done"):
            c = TrainConfig(**c)
            work = s["iterations_done"] * c.batch_size * model_flops(c)
            refs.append(dict(name=f"{path.parent.parent.name}/{path.parent.name}", dtype=c.dtype,
                             batch_size=c.batch_size, device_name=s.get("device_name"),
                             per=(s["wall_time_s"] + (s.get("eval_time_s") or 0)) / work))
    return refs


def estimates(runs: list[PlannedRun], profile: str, folder: Path, device, records_dir: Path,
              published: Path | None = None) -> list[dict]:
    """Each run's status (`status`) with its time in seconds and where it comes from (`price`)."""
    try:
        device = pick_device(str(device))
        label = device_label(device)
    except DeviceError:  # a device not here: priced by the runs recorded on its type
        device, label = torch.device(device), None
    folder = Path(folder)
    rows = [dict(run=r, config=r.config(profile), **status(r, profile, folder, published))
            for r in runs]
    # rates only where a run needs one: reading them counts finished runs' multiply-adds (a
    # ResNet-34 imports torchvision, seconds), which a finished plan never needs
    refs, bench = [], []
    if any(row["state"] != "finished" for row in rows):
        folders = [folder, *sorted(folder.parent.parent.glob("*/*")),
                   *sorted(Path(records_dir).glob("*/*"))]
        refs, bench = reference_rates(folders, label, device.type), bench_rates(records_dir, device)
    for row in rows:
        row["seconds"], row["source"] = price(row, refs, bench, label, device.type)
    return rows


def price(row: dict, refs: list[dict], bench: list[dict], label: str | None, device_type: str
          ) -> tuple[float | None, str]:
    """A run's time in seconds and where it comes from: its own record when finished; else the
    iterations it has left at the rate of its own latest sitting on this device (evaluation
    included); else its work (images left × multiply-adds) at the median rate of finished runs
    of its dtype and batch on this machine (`refs`); else at a recorded benchmark's; else None."""
    c, s = row["config"], row["summary"] or {}
    if row["state"] == "finished":
        return ((s.get("wall_time_s") or 0) + (s.get("eval_time_s") or 0),
                f"measured on {s.get('device_name')}")
    resumes = row["state"] in ("interrupted", "running")
    left = c.iterations - (row["done"] if resumes else 0)  # the others start over
    own = [g for g in s.get("segments") or []
           if g["end"] > g["start"] and same_device(g["device"], label)]
    if own and (resumes or row["state"] == "failed"):
        g = own[-1]
        return (left * g["seconds"] / (g["end"] - g["start"]),
                f"its own rate on {g['device']} (iterations {g['start']:,} to {g['end']:,})")
    work, kind = left * c.batch_size * model_flops(c), (c.dtype, c.batch_size)
    same = [x for x in refs if (x["dtype"], x["batch_size"]) == kind]
    if same:
        names = ", ".join(x["name"] for x in same[:2]) + (" ..." if len(same) > 2 else "")
        on = label or ", ".join(sorted({x["device_name"] for x in same}))
        return (work * statistics.median(x["per"] for x in same),
                f"rate of {len(same)} finished run(s) on {on} ({names})")
    marks = [b for b in bench if (b["dtype"], b["batch_size"]) == kind]
    marks = [b for b in marks if b["channels_last"] == c.channels_last] or marks
    if marks:
        b = max(marks, key=lambda m: m["date"])
        layout = ("" if b["channels_last"] == c.channels_last
                  else f", channels_last={b['channels_last']}")
        return (work / (b["rate"] * b["flops"]),
                f"{b['file']} ({b['device_name']}, {b['date']}{layout}; training steps only)")
    return None, (f"unknown: no finished {c.dtype} run of batch {c.batch_size} on "
                  f"{label or device_type}")


def table(profile: str, folder: Path, device="cpu", records_dir: Path | None = None,
          published: Path | None = None, **selection):
    """The plan as a DataFrame, one row per run: chapters, seed, model, iterations, status, time
    in seconds and where it comes from (`published`: records read before `folder`)."""
    import pandas as pd
    records_dir = records_dir or project_root() / RECORDS
    rows = estimates(plan(profile, **selection), profile, folder, device, records_dir, published)
    return pd.DataFrame([{"run": r["run"].name, "chapters": ", ".join(r["run"].chapters),
                          "seed": r["run"].seed, "model": r["run"].model(),
                          "dtype": r["config"].dtype, "batch": r["config"].batch_size,
                          "iterations": r["config"].iterations, "status": r["text"],
                          "state": r["state"], "time s": r["seconds"], "time from": r["source"],
                          "device": (r["summary"] or {}).get("device_name")}
                         for r in rows]).set_index("run")
