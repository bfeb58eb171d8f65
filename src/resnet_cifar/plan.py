"""The plan: every run the book's chapters train, with its status and its time.

The runs are the chapters' experiments (experiments.py) at their default parameters, or at the
values of `params` (chapter -> values, `plan --set NAME=VALUE`), one per name (several chapters
share `resnet32-seed0`). A run's time is its own record when finished, else the images it has
left times its model's multiply-adds ÷ a measured rate: finished runs' on this device, else a
recorded benchmark's (training steps only).
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
from .records import RECORDS, behind, load_records, project_root, resolve_runs
from .runs import FINISHED, config_diff, read_json, state


class PlanError(ValueError):
    """A profile, chapter, parameter or run that the plan does not know."""


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
        """The run's TrainConfig on `profile`; `execution`: device, runs_dir, ... (not its identity)."""
        return profile_config(profile, name=self.name, **self.overrides, **execution)

    def model(self) -> str:
        c = TrainConfig(**{k: v for k, v in self.overrides.items() if k in ("arch", "depth", "shortcut")})
        if c.arch == "resnet34-imagenet":
            return c.arch
        return f"{c.arch}{c.depth}" + (f" ({c.shortcut})" if c.arch == "resnet" and c.shortcut != "A" else "")


def match_chapters(names) -> list[str]:
    """Chapter stems for `names` given as '02', '02_model' or 'book/02_model.ipynb'."""
    chosen = []
    for name in names:
        found = [c for c in E.CHAPTERS if c == Path(name).stem or c.startswith(Path(name).stem + "_")]
        if len(found) != 1:
            raise PlanError(f"chapter {name!r} is not one of the chapters with runs: {', '.join(E.CHAPTERS)}")
        chosen += found
    return chosen


def plan(profile: str, seed: int = 0, chapters=None, only=None, params: dict | None = None) -> list[PlannedRun]:
    """The runs of `profile` (each name once, in chapter order), restricted to `chapters` and to
    the names in `only`, with `params` (chapter -> parameter values) over the defaults."""
    if profile not in PROFILES:
        raise PlanError(f"profile must be one of {tuple(PROFILES)}, got {profile!r}")
    wanted = set(match_chapters(chapters)) if chapters else set(E.CHAPTERS)
    try:
        declared = {c: E.flat(E.sections(c, profile, seed, **(params or {}).get(c, {}))) for c in E.CHAPTERS}
    except E.ExperimentError as e:
        raise PlanError(str(e)) from None
    runs: dict[str, PlannedRun] = {}
    for chapter, entries in declared.items():
        for name, overrides in entries.items():
            if name not in runs:
                runs[name] = PlannedRun(name, overrides, (chapter,))
                continue
            if config_diff(TrainConfig(**runs[name].overrides), TrainConfig(**overrides)):
                raise PlanError(f"run {name!r} is declared twice with different settings "
                                f"({runs[name].overrides} vs {overrides})")
            runs[name].chapters += (chapter,)
    selected = [r for r in runs.values() if wanted & set(r.chapters)]
    names = [r.name for r in selected]
    unknown = sorted(set(only or ()) - set(names))
    if unknown:
        close = sorted({m for u in unknown for m in difflib.get_close_matches(u, names, n=3)})
        raise PlanError(f"not in the plan of profile {profile}: {', '.join(unknown)}"
                        + (f" (close: {', '.join(close)})" if close else "")
                        + f"; `python -m resnet_cifar plan --profile {profile}` lists its {len(names)} runs")
    return [r for r in selected if r.name in set(only)] if only else selected


def parse_settings(settings: list[str], chapters) -> dict[str, dict]:
    """`NAME=VALUE` strings (`plan --set`, VALUE a Python literal: 0.01, [20, 56]) as chapter ->
    values, for the chapters in `chapters` that have the parameter NAME."""
    if settings and not chapters:
        raise PlanError("--set needs --chapters: the chapter whose parameter it sets, e.g. --chapters 05")
    params: dict[str, dict] = {}
    for text in settings or []:
        key, sep, value = text.partition("=")
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            value = value if sep else None
        if not sep or value is None:
            raise PlanError(f"--set takes NAME=VALUE (VALUE a number, a string or a list), got {text!r}")
        owners = [c for c in match_chapters(chapters) if key in E.defaults(c)]
        if not owners:
            raise PlanError(f"no chapter of {', '.join(chapters)} has a parameter {key!r}; theirs: "
                            + "; ".join(f"{c}: {', '.join(E.defaults(c)) or '-'}" for c in match_chapters(chapters)))
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
            return {**found, "text": f"{found['text']} (published: resumes there)"}  # records.restore
    return here


def model_flops(config: TrainConfig) -> float:
    """Multiply-adds of one image through `config`'s model: what estimates scale rates by."""
    return float(multiply_adds(config.arch, config.depth, config.shortcut))


def bench_rates(records_dir: Path, device: torch.device) -> list[dict]:
    """Training rates (images/s) of the recorded benchmarks (bench-*.json) on `device`'s type."""
    rates = []
    for name, record in load_records(records_dir).items():
        info = record.get("info", {})
        if info.get("device", "").split(":")[0] == device.type:
            flops = model_flops(TrainConfig(depth=info.get("depth", 32)))
            rates += [dict(file=f"{name}.json", device_name=info.get("device_name"), date=info.get("date") or "",
                           batch_size=info.get("batch_size"), flops=flops, dtype=v["dtype"],
                           channels_last=v["channels_last"], rate=v["library"])
                      for v in record.get("variants") or [] if v.get("library") and not v.get("compile")]
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
        on = (s.get("device_name") or "").split(";")[0] == label.split(";")[0] if label else (  # any thread count
            str(s.get("device", "")).split(":")[0] == device_type)
        if on and s.get("wall_time_s") and s.get("iterations_done"):
            c = TrainConfig(**c)
            work = s["iterations_done"] * c.batch_size * model_flops(c)
            refs.append(dict(name=f"{path.parent.parent.name}/{path.parent.name}", dtype=c.dtype,
                             batch_size=c.batch_size, per=(s["wall_time_s"] + (s.get("eval_time_s") or 0)) / work,
                             device_name=s.get("device_name")))
    return refs


def estimates(runs: list[PlannedRun], profile: str, folder: Path, device, records_dir: Path,
              published: Path | None = None) -> list[dict]:
    """Each run's status (`status`) with its time in seconds and where it comes from: the run's
    own record; else its work (images left × multiply-adds) at the median rate of finished runs
    of its dtype and batch on this machine (any profile, in the runs folders or the records; on
    a device not here, any of its type); else at a recorded benchmark's rate; else None."""
    device = as_device(device)
    try:
        label = device_label(pick_device(str(device)))
    except DeviceError:
        label = None
    folder = Path(folder)
    rows = [dict(run=r, config=r.config(profile), **status(r, profile, folder, published)) for r in runs]
    # rates only where a run needs one: reading them counts finished runs' multiply-adds (a ResNet-34 imports
    # torchvision, seconds), which a finished plan never needs
    refs, bench = [], []
    if any(row["state"] != "finished" for row in rows):
        folders = [folder, *sorted(folder.parent.parent.glob("*/*")), *sorted(Path(records_dir).glob("*/*"))]
        refs, bench = reference_rates(folders, label, device.type), bench_rates(records_dir, device)
    for row in rows:
        c, s = row["config"], row["summary"] or {}
        if row["state"] == "finished":
            row.update(seconds=(s.get("wall_time_s") or 0) + (s.get("eval_time_s") or 0),
                       source=f"measured on {s.get('device_name')}")
            continue
        left = c.iterations - (row["done"] if row["state"] in ("interrupted", "running") else 0)  # others start over
        work = left * c.batch_size * model_flops(c)
        same = [x for x in refs if (x["dtype"], x["batch_size"]) == (c.dtype, c.batch_size)]
        marks = [b for b in bench if (b["dtype"], b["batch_size"]) == (c.dtype, c.batch_size)]
        marks = [b for b in marks if b["channels_last"] == c.channels_last] or marks
        if same:
            names = ", ".join(x["name"] for x in same[:2]) + (" ..." if len(same) > 2 else "")
            on = label or ", ".join(sorted({x["device_name"] for x in same}))
            row.update(seconds=work * statistics.median(x["per"] for x in same),
                       source=f"rate of {len(same)} finished run(s) on {on} ({names})")
        elif marks:
            b = max(marks, key=lambda m: m["date"])
            layout = "" if b["channels_last"] == c.channels_last else f", channels_last={b['channels_last']}"
            row.update(seconds=work / (b["rate"] * b["flops"]),
                       source=f"{b['file']} ({b['device_name']}, {b['date']}{layout}; training steps only)")
        else:
            row.update(seconds=None,
                       source=f"unknown: no finished {c.dtype} run of batch {c.batch_size} on {label or device.type}")
    return rows


def table(profile: str, folder: Path, device="cpu", records_dir: Path | None = None, published: Path | None = None,
          **selection):
    """The plan as a DataFrame, one row per run: chapters, seed, model, iterations, status, time
    in seconds and where it comes from (`published`: records read before `folder`)."""
    import pandas as pd
    records_dir = records_dir or project_root() / RECORDS
    rows = estimates(plan(profile, **selection), profile, folder, device, records_dir, published)
    return pd.DataFrame([{"run": r["run"].name, "chapters": ", ".join(r["run"].chapters), "seed": r["run"].seed,
                          "model": r["run"].model(), "dtype": r["config"].dtype, "batch": r["config"].batch_size,
                          "iterations": r["config"].iterations, "status": r["text"], "state": r["state"],
                          "time s": r["seconds"], "time from": r["source"],
                          "device": (r["summary"] or {}).get("device_name")} for r in rows],
                        columns=["run", "chapters", "seed", "model", "dtype", "batch", "iterations", "status", "state",
                                 "time s", "time from", "device"]).set_index("run")


def as_device(device) -> torch.device:
    """`device` as a torch.device; 'auto' is the device a chapter would pick."""
    return pick_device("auto") if str(device) == "auto" else torch.device(device)


def accounting(dataset: str, runs_dir=None, device="cpu", seed: int = 0):
    """Compute per profile: runs, iterations, training images, the finished runs' measured time
    and devices, the others' estimated time on `device` (one run at a time); read where a
    chapter reads (committed records, else the runs folder)."""
    import pandas as pd
    try:
        target = device_label(as_device(device))
    except DeviceError:
        target = f"{device} (not on this machine)"
    root, rows = project_root(), {}
    for profile in PROFILES:
        folder, manifest = resolve_runs(root, profile, dataset, runs_dir)
        t = table(profile, folder, device, root / RECORDS, seed=seed)
        finished = t["state"] == "finished"
        rest = t.loc[~finished, "time s"]
        rows[profile] = {
            "runs": len(t), "iterations per run": int(t["iterations"].max()),
            "runs × iterations": int(t["iterations"].sum()),
            "training images": int((t["iterations"] * t["batch"]).sum()),
            "finished": int(finished.sum()), "measured s": float(t.loc[finished, "time s"].sum()),
            "estimated s (the rest)": float(rest.dropna().sum()), "runs without estimate": int(rest.isna().sum()),
            "measured on": ", ".join(sorted(set(t.loc[finished, "device"].dropna()))) or "-",
            "estimated for": target, "read from": "committed records" if manifest is not None else "runs folder"}
    return pd.DataFrame(rows).T
