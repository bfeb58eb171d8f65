"""Published records: the small files of the plan's runs that `export` copies into
`book/records/<dataset>/<profile>/` to be committed, read back by the chapters without training.

records.json says what was exported, when, from which commit. Each `<run>/` holds config.json,
summary.json, history.csv, lr_trace.csv (when small, else rebuilt on reading), model.pt (the runs
of KEPT_WEIGHTS) and, for a run published while it trains ('unfinished'), its checkpoint.pt.
"""
from __future__ import annotations

import csv
import json
import shutil
import time
from pathlib import Path

from .config import PROFILES, TrainConfig, lr_at
from .runs import (RunError, RunResult, config_diff, git_commit, load_run, read_json, state,
                   write_json)

RECORDS = Path("book") / "records"
MANIFEST = "records.json"
# a published config's folders: where it ran is not what it computes, nor is a builder's folder
PLACES = dict(data_dir=TrainConfig.data_dir, runs_dir=TrainConfig.runs_dir)
# Runs published with their final weights (model.pt, 1.9 MB for a ResNet-32), per profile: those
# the pages look inside (chapters 3, 5 and 6 look inside the baseline; chapter 5 into final-relu),
# and the paper's Table 6 runs on its protocol, which readers load to check the reproduction.
KEPT_WEIGHTS = {"cpu": ("resnet32-seed0", "final-relu"),
                "paper": tuple(f"resnet{d}-all50k-seed0" for d in (20, 32, 56))}
SMALL_TRACE = 32 * 1024  # bytes: a short run's lr_trace.csv is copied, a long one's rebuilt
UNFINISHED = "unfinished"  # the status of a run published while it trains (with its checkpoint)
BENCH_FORMAT = 3  # the layout of a benchmark record (bench-*.json); 3 keeps each figure's rounds


def project_root(start: Path | None = None) -> Path:
    """The folder holding _toc.yml (the book's root), searched upwards from `start`."""
    start = (start or Path.cwd()).resolve()
    return next((f for f in (start, *start.parents) if (f / "_toc.yml").is_file()), start)


def shown_path(path: Path, root: Path | None = None) -> str:
    """A path as the book may print it: relative to the project root, else only its own name."""
    path, root = Path(path), (root or project_root())
    for candidate in (path, path.resolve()):
        if candidate.is_relative_to(root):
            return candidate.relative_to(root).as_posix() or "."
    return "…/" + path.name


def inside(path: Path, folder: Path) -> bool:
    return Path(path).resolve().is_relative_to(Path(folder).resolve())


def load_records(folder: str | Path) -> dict[str, dict]:
    """The `bench-*.json` records that `bench --json` wrote in `folder`, by file stem."""
    records = {p.stem: json.loads(p.read_text()) for p in sorted(Path(folder).glob("bench-*.json"))}
    for name, rec in records.items():
        if rec.get("format") != BENCH_FORMAT:
            raise ValueError(f"{name}.json is not a benchmark record of format {BENCH_FORMAT}: "
                             f"measure it again with `python -m resnet_cifar bench --json "
                             f"{name}.json`")
    return records


# ---------------------------------------------------------------- reading records

def read_manifest(folder: Path) -> dict | None:
    """The records.json in `folder` (None when there is none), checked against the run folders
    beside it: damaged records are an error, never a silent fall-back."""
    folder = Path(folder)
    if not (folder / MANIFEST).is_file():
        return None
    manifest = read_json(folder / MANIFEST)
    problems = (damage(folder, manifest) if isinstance(manifest, dict)
                else [f"{MANIFEST} is not a valid JSON object"])
    if problems:
        more = f" (and {len(problems) - 4} more)" if len(problems) > 4 else ""
        raise RunError(f"the records {shown_path(folder)} are damaged: {'; '.join(problems[:4])}"
                       f"{more}. Restore them (`git checkout -- {shown_path(folder)}`) or publish "
                       f"them again (`python -m resnet_cifar export --profile {folder.name}`).")
    return manifest


def damage(folder: Path, manifest: dict) -> list[str]:
    """What is wrong with the records in `folder`: a listed run whose files are missing,
    unreadable or disagree with records.json; a run folder records.json does not list."""
    listed, problems = manifest.get("runs", {}), []
    if not isinstance(listed, dict):
        return [f"{MANIFEST} has no runs table"]
    for name, entry in listed.items():
        run_dir, entry = folder / name, entry if isinstance(entry, dict) else {}
        for file in ("config.json", "summary.json"):
            if not isinstance(read_json(run_dir / file), dict):
                broken = "not valid JSON" if (run_dir / file).is_file() else "missing"
                problems.append(f"{name}/{file} is {broken}")
        try:
            with open(run_dir / "history.csv", newline="") as f:
                rows = list(csv.DictReader(f))
            last = int(float(rows[-1]["iteration"])) if rows else 0
        except (OSError, ValueError, KeyError, TypeError):
            problems.append(f"{name}/history.csv is missing or unreadable")
            continue
        summary = read_json(run_dir / "summary.json")
        if not isinstance(summary, dict):
            continue
        problems += [f"{name}/summary.json says {k} {summary.get(k)!r}, {MANIFEST} {entry[k]!r}"
                     for k in ("status", "iterations_done")
                     if k in entry and entry[k] != summary.get(k)]
        done = summary.get("iterations_done") or 0
        if rows and last != done and summary.get("status") != "diverged":
            problems.append(f"{name}/history.csv ends at iteration {last:,}, its summary at "
                            f"{done:,}")
        if summary.get("status") == UNFINISHED and not (run_dir / "checkpoint.pt").is_file():
            problems.append(f"{name} is unfinished and its checkpoint.pt is missing")
    extra = sorted({p.parent.name for p in folder.glob("*/summary.json")} - set(listed))
    return problems + [f"{name}/ is not listed in {MANIFEST}" for name in extra]


def finished_count(manifest: dict) -> int:
    """How many of a manifest's runs are finished (not published while still training)."""
    return sum(entry.get("status") != UNFINISHED for entry in manifest.get("runs", {}).values())


def is_complete(manifest: dict) -> bool:
    """Whether the records hold every planned run, finished."""
    return finished_count(manifest) >= (manifest.get("planned") or 0)


def resolve_runs(root: Path, profile: str, dataset: str, runs_dir=None) -> tuple[Path, dict | None]:
    """(folder of the runs, records manifest or None): explicit `runs_dir` > the complete
    committed records of `dataset`/`profile` (not for smoke) > <root>/runs. A manifest (a dict,
    {} for a folder under book/records without one) means: read only, never train."""
    root = Path(root)
    if runs_dir is not None:
        folder = root / runs_dir / dataset / profile
        manifest = read_manifest(folder)
        return folder, {} if manifest is None and inside(folder, root / RECORDS) else manifest
    committed = root / RECORDS / dataset / profile
    manifest = read_manifest(committed)
    if profile != "smoke" and manifest is not None and is_complete(manifest):
        return committed, manifest
    return root / "runs" / dataset / profile, None


def partial_records(root: Path, profile: str, dataset: str) -> Path | None:
    """The committed records of `dataset`/`profile` when they are partial (runs still to train)."""
    folder = Path(root) / RECORDS / dataset / profile
    manifest = read_manifest(folder)
    partial = profile != "smoke" and manifest is not None and not is_complete(manifest)
    return folder if partial else None


def published(root: Path, profile: str, dataset: str) -> tuple[Path, dict]:
    """(folder, manifest) of the committed records of `dataset`/`profile`; an error naming what
    is committed when there are none."""
    folder, manifest = resolve_runs(root, profile, dataset)
    if manifest is None:
        found = [f"{c}/{r['profile']}" for c in copies(root) for r in committed(root, c)]
        raise RunError(f"records_data {dataset!r} reads committed records, and there are none of "
                       f"profile {profile} for that copy; committed: {', '.join(found) or 'none'}. "
                       "Leave records_data out to train on this machine's data.")
    return folder, manifest


def rebuild_lr_trace(config: dict, summary: dict, history):
    """Every iteration's learning rate, from the config (and, for a warm-up until a training
    error, where the summary says it ended), or for the plateau schedule from the history."""
    import numpy as np
    import pandas as pd
    cfg, n = TrainConfig(**config), int(summary.get("iterations_done") or 0)
    if cfg.schedule == "plateau":
        # the lr changes only after an evaluation: iteration i ran at the lr of the next row
        its, lrs = history["iteration"].to_numpy(), history["lr"].to_numpy()
        values = lrs[np.minimum(np.searchsorted(its, np.arange(n), side="right"), len(its) - 1)]
    else:
        per_epoch = max(int(summary.get("train_size", 0)) // cfg.batch_size, 1)
        rule = cfg.warmup_until_error is not None
        ended = summary.get("lr_warmup_ended_at") if rule else 0
        values = [cfg.warmup_lr if rule and (ended is None or i < ended)
                  else lr_at(cfg, i, per_epoch) for i in range(n)]
    return pd.DataFrame({"iteration": range(n), "lr": values})


def same_trace(run: RunResult) -> bool:
    """Whether the lr trace rebuilt from the run's config and history is its recorded one."""
    import numpy as np
    rebuilt, trace = rebuild_lr_trace(run.config, run.summary, run.history), run.lr_trace
    return (trace["iteration"].tolist() == rebuilt["iteration"].tolist()
            and np.allclose(trace["lr"], rebuilt["lr"], rtol=1e-12, atol=0))


class PublishedRun(RunResult):
    """A run read from published records: everything but the weights (except KEPT_WEIGHTS)."""

    def load_model(self, map_location="cpu"):
        if (self.run_dir / "model.pt").is_file():
            return super().load_model(map_location)
        raise RunError(f"{self.run_dir} is a published record, and records hold no weights "
                       "(model.pt); a page that looks inside the trained model needs the trained "
                       "runs: build it from runs/ (make book PROFILE=..., or build_book.py "
                       "--runs-dir runs).")


def load_record(folder: Path, config: TrainConfig, profile: str) -> RunResult:
    """The published record of `config`'s run in `folder`, checked against the plan's config."""
    name = config.run_name()
    run_dir = Path(folder) / name
    if not (run_dir / "summary.json").is_file():
        raise RunError(f"run {name!r} is not in the records {folder}, and a build from records "
                       f"does not train. Train it with `python -m resnet_cifar run --profile "
                       f"{profile}` and publish it with `python -m resnet_cifar export --profile "
                       f"{profile}`, or build from your own runs (build_book.py --runs-dir runs).")
    run = PublishedRun(**vars(load_run(run_dir)))
    diff = ", ".join(config_diff(config, TrainConfig(**run.config)))
    if diff:
        raise RunError(f"the record {run_dir} was trained with other settings than the plan's "
                       f"({diff}); train the run again (`python -m resnet_cifar run --profile "
                       f"{profile}`) and export it.")
    if run.lr_trace.empty and run.summary.get("iterations_done"):
        run.lr_trace = rebuild_lr_trace(run.config, run.summary, run.history)
    return run


def source_text(manifest: dict, runs: tuple[RunResult, ...] = ()) -> str:
    """'committed records of 2025-01-31, commit 1a2b3c4' for a caption."""
    listed = manifest.get("runs", {}).values()
    commits = sorted(filter(None, {r.summary.get("git_commit") for r in runs})) or sorted(
        filter(None, {e.get("git_commit") for e in listed}))
    date = (manifest.get("exported") or "undated").split(" ")[0]
    return f"committed records of {date}" + (f", commit {', '.join(commits)}" if commits else "")


# ---------------------------------------------------------------- publishing, and resuming it

def behind(ours: dict, theirs: dict) -> bool:
    """Whether a published unfinished run (`theirs`, a runs.state) is ahead of the runs
    folder's (`ours`): nothing there, or an interruption at fewer iterations."""
    return theirs["state"] == "interrupted" and (ours["state"] == "missing" or (
        ours["state"] in ("interrupted", "failed") and ours["done"] < theirs["done"]))


def restore(published: Path, run_dir: Path, config: TrainConfig) -> bool:
    """Copy a published unfinished run (checkpoint, config, summary, history) into `run_dir`
    when that holds less of it: training resumes where the last machine stopped. True if copied."""
    published, run_dir = Path(published), Path(run_dir)
    ahead = behind(state(config, run_dir), state(config, published))
    if not (ahead and (published / "checkpoint.pt").is_file()):
        return False
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in ("checkpoint.pt", "history.csv", "config.json"):
        shutil.copy2(published / name, run_dir / name)
    summary = read_json(published / "summary.json")
    write_json(run_dir / "summary.json", dict(summary, status="failed", status_detail=(
        f"interrupted at iteration {summary['iterations_done']}: restored from the records "
        f"{shown_path(published)}")))
    return True


def export(runs, profile: str, dataset: str, source: Path, target: Path, partial: bool = False,
           planned: int | None = None) -> dict:
    """Publish the runs (PlannedRun) finished in the runs folder `source` in the records folder
    `target` (replaced as a whole) with its records.json, and return that. With `partial`, an
    unfinished run too, with its checkpoint. A run published earlier stays published unless
    `source` holds more of it, and so does every published run outside `runs`."""
    source, target = Path(source), Path(target)
    if inside(target, source) or inside(source, target):
        raise RunError(f"the records folder {target} and the runs folder {source} must not "
                       "contain each other")
    previous = (read_manifest(target) or {}).get("runs", {})
    kept = [n for n in previous if n not in {r.name for r in runs}]  # stay published
    fresh, missing = {}, []  # fresh: name -> whether it is finished, published from `source`
    for r in runs:
        ours, theirs = (state(r.config(profile), folder / r.name) for folder in (source, target))
        ahead = ours["done"] > (theirs["done"] if theirs["state"] == "interrupted" else -1)
        if ours["state"] == "finished":
            fresh[r.name] = True
        elif theirs["state"] == "finished":
            kept.append(r.name)
        elif partial and ours["state"] in ("interrupted", "running") and ahead:
            fresh[r.name] = False
        elif partial and theirs["state"] == "interrupted":
            kept.append(r.name)
        else:
            missing.append(f"{r.name} ({ours['text']})")
    if not (fresh or kept) or (missing and not partial):
        hint = ", or pass --partial to publish the others (an unfinished run with its checkpoint)"
        raise RunError(f"{len(missing)} of {len(runs)} runs of profile {profile} are not "
                       f"finished in {source}: {', '.join(missing)}. Train them with `python -m "
                       f"resnet_cifar run --profile {profile}`{hint if fresh or kept else ''}.")
    tmp = target.with_name(target.name + ".export-tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    manifest = dict(profile=profile, dataset=dataset, exported=time.strftime("%Y-%m-%d %H:%M"),
                    export_commit=git_commit(), planned=planned or len(runs), runs={})
    for name in kept:
        if (target / name).is_dir():
            shutil.copytree(target / name, tmp / name)
            manifest["runs"][name] = previous.get(name, {})
    for name, finished in fresh.items():
        src, dst = source / name, tmp / name
        dst.mkdir(parents=True)
        if finished:
            for file in ("summary.json", "history.csv"):
                shutil.copy2(src / file, dst / file)
            if name in KEPT_WEIGHTS.get(profile, ()) and (src / "model.pt").is_file():
                shutil.copy2(src / "model.pt", dst / "model.pt")
            trace = src / "lr_trace.csv"  # else rebuilt on reading, when that gives it back
            if trace.is_file() and (trace.stat().st_size <= SMALL_TRACE
                                    or not same_trace(load_run(src))):
                shutil.copy2(trace, dst / "lr_trace.csv")
        else:
            _copy_unfinished(src, dst)
        write_json(dst / "config.json", {**read_json(src / "config.json"), **PLACES})
        s = read_json(dst / "summary.json")
        manifest["runs"][name] = {k: s.get(k) for k in (
            "status", "iterations_done", "final_test_error", "device", "device_name",
            "git_commit", "updated")}
    write_json(tmp / MANIFEST, manifest)
    shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(target)
    return manifest


def _copy_unfinished(src: Path, dst: Path, tries: int = 20) -> None:
    """Copy an unfinished run's checkpoint with the summary and history of that same checkpoint:
    the run may be writing them meanwhile, so copy until the summary's iterations are the
    checkpoint's."""
    import torch
    for _ in range(tries):
        shutil.copy2(src / "checkpoint.pt", dst / "checkpoint.pt")
        shutil.copy2(src / "history.csv", dst / "history.csv")
        summary = read_json(src / "summary.json") or {}
        saved = torch.load(dst / "checkpoint.pt", map_location="cpu", weights_only=True)
        if summary.get("iterations_done") == saved["iteration"]:
            break
        time.sleep(0.5)
    else:
        raise RunError(f"{src}: its summary.json and checkpoint.pt hold different iterations; "
                       "export it again")
    done, total = summary["iterations_done"], summary.get("iterations") or 0
    write_json(dst / "summary.json", dict(summary, status=UNFINISHED, status_detail=(
        f"unfinished: {done:,} of {total:,} iterations, published with its checkpoint (`run` "
        "resumes it)")))


# ---------------------------------------------------------------- what is committed

def copies(root: Path) -> list[str]:
    """The copies of CIFAR-10 (dataset identities) with a folder of committed records, sorted."""
    return sorted(p.name for p in (Path(root) / RECORDS).glob("*/"))


def committed(root: Path, dataset: str) -> list[dict]:
    """The committed records of `dataset` (not smoke): profile, runs published / planned, date."""
    out = []
    for profile in [p for p in PROFILES if p != "smoke"]:
        manifest = read_manifest(Path(root) / RECORDS / dataset / profile)
        if manifest is not None:
            runs = manifest.get("runs", {})
            out.append(dict(profile=profile, runs=len(runs), finished=finished_count(manifest),
                            unfinished={n: e.get("iterations_done") for n, e in runs.items()
                                        if e.get("status") == UNFINISHED},
                            planned=manifest.get("planned"), exported=manifest.get("exported"),
                            commit=manifest.get("export_commit")))
    return out


def best_profile(root: Path, dataset: str) -> str | None:
    """The complete committed profile with the largest share of its planned runs; partial
    records are never the best."""
    def share(r):  # ties: the longer budget
        return r["runs"] / max(r["planned"] or 1, 1), list(PROFILES).index(r["profile"])
    found = [r for r in committed(root, dataset) if r["finished"] >= (r["planned"] or 0)]
    return max(found, key=share)["profile"] if found else None


def best_records(root: Path, dataset: str) -> tuple[str, str] | None:
    """(profile, data copy) that `make book` renders: the best complete records of `dataset`
    (the machine's copy), else of any other copy (the official data first); None if none."""
    others = sorted((c for c in copies(root) if c != dataset), key=lambda c: (c != "official", c))
    found = ((best_profile(root, copy), copy) for copy in (dataset, *others))
    return next((pair for pair in found if pair[0]), None)
