"""The plan: every run the book's chapters use, declared as data, with its status and its cost.

`declared(seed)` lists each chapter's runs (name -> config overrides over the profile's budget,
book.PROFILES) for the chapters' default parameters; `plan(profile)` turns them into runs, one
per name (several chapters share `resnet32-seed0`). `Chapter.run(name)` takes its config from
here and refuses a run that is not declared; `python -m resnet_cifar run` trains the plan
beforehand (runner.py); `python -m resnet_cifar plan` shows it: each run's status in the runs
folder and its time, measured or estimated from a measured step rate.
"""
from __future__ import annotations

import json
import re
import statistics
from dataclasses import dataclass
from pathlib import Path

import torch

from .book import PROFILES, profile_config
from .config import TrainConfig
from .runs import FINISHED, lock_owner

# The chapters' default parameters (each notebook's `parameters` cell).
FIG6_DEPTHS = (20, 32)                     # 02_model: plain vs residual
PLATEAU_PATIENCES, PLATEAU_THRESHOLD = (1000, 10), 1e-5  # 04_schedule
ADAM_LR, ADAM_HIGH_LR, ADAMW_WEIGHT_DECAY = 1e-3, 0.1, 0.05  # 05_optimizers
BN_EPS_VALUES = (1e-3, 1e-1, 0.9)          # 0.9: the positional mistake BatchNorm2d(64, 0.9)
BN_MOMENTA = (0.9, 0.01)                   # PyTorch's momentum is 1 - Keras/TF's: 0.9 is the other reading
ADAM_CONSTANT_LRS = (1e-4, 1e-3, 1e-2, 1e-1)  # the log's Adam: no schedule, lr 1e-4 ... 0.1
LOG_PATIENCE = 1000                        # the log's plateau scheduler (its second run), threshold 1e-5
TABLE6_DEPTHS = (20, 32, 44, 56, 110)      # 07_depth: the paper's Table 6
PLAIN_DEPTHS = (20, 32, 44, 56)            # 07_depth: the paper's Fig. 6 (left)
WARMUP_110 = 0.8                           # ResNet-110: lr 0.01 until the training error is below 80 %

# Seeds per compared arm and for the headline ResNet-32, by profile: a difference between two
# arms is only read as one when it is larger than the seeds' spread (compare.py).
SEEDS_PER_ARM = {"smoke": 1, "cpu": 2, "quick": 3, "paper": 3}
HEADLINE_SEEDS = {"smoke": 2, "cpu": 3, "quick": 5, "paper": 5}
# The cpu profile trains only these arms of each chapter (each over its seeds): the comparisons a
# 1,600-iteration budget resolves, within hours of a 2-core CPU. Names without their -seed<k>.
CPU_ARMS = {
    "02_model": ("resnet32", "plain20", "resnet20"),
    "03_augmentation": ("resnet32",),
    "04_schedule": ("resnet32",),
    "05_optimizers": ("resnet32", "final-relu", "adam-constant-lr0.1", "adam-constant-lr0.001", "bn-eps0.9"),
    "06_results": ("resnet32",),
    "07_depth": ("resnet32", "resnet20", "resnet56", "plain20", "plain56"),
    "intro": ("resnet32",),
}
# Runs the plan declares for quick and paper but not for smoke, with the reason. (A 20-iteration
# ResNet-110 smoke run measured 18 s on one thread of a busy 2-core CPU: it stays in smoke.)
SMOKE_SKIPPED: dict[str, str] = {}


def arm_seeds(profile: str, seed: int = 0) -> tuple[int, ...]:
    """The seeds each compared arm of a chapter trains with: `seed`, `seed + 1`, ..."""
    return tuple(range(seed, seed + SEEDS_PER_ARM[profile]))


def headline_seeds(profile: str) -> tuple[int, ...]:
    """The seeds of the headline ResNet-32 (introduction, chapters 6 and 7): 0, 1, ..."""
    return tuple(range(HEADLINE_SEEDS[profile]))


def seeded(name: str, s: int, seed: int) -> str:
    """The run name of arm `name` for seed `s` in a chapter of parameter `seed`: the name
    itself for the chapter's own seed, `<name>-seed<s>` for the others."""
    return name if s == seed else f"{name}-seed{s}"


def trains(model: str, profile: str) -> bool:
    """Whether `model` (e.g. 'resnet110') is trained on `profile` (see SMOKE_SKIPPED)."""
    return not (profile == "smoke" and model in SMOKE_SKIPPED)


def depths_at(profile: str, depths, arch: str = "resnet") -> list[int]:
    """`depths` without those whose runs `profile` skips."""
    return [d for d in depths if trains(f"{arch}{d}", profile)]


class PlanError(ValueError):
    """A run that is not in the plan, or asked for with other settings than the plan's."""


def arms(seed: int, profile: str, **named: dict) -> dict[str, dict]:
    """Each arm (name -> overrides) once per seed of `arm_seeds`, named by `seeded`."""
    return {seeded(name, s, seed): dict(o, seed=s) for name, o in named.items() for s in arm_seeds(profile, seed)}


def declared(seed: int = 0, profile: str = "smoke") -> dict[str, dict[str, dict]]:
    """chapter (notebook stem) -> run name -> config overrides, for chapters executed with
    parameters `seed` and `profile`. One entry per `ch.run(...)` call of the notebooks."""
    base = {f"resnet32-seed{s}": dict(seed=s) for s in arm_seeds(profile, seed)}
    lr, wd = f"{ADAM_LR:g}", f"{ADAMW_WEIGHT_DECAY:g}"
    results = {f"resnet32-seed{s}": dict(seed=s) for s in headline_seeds(profile)}
    depth = {f"resnet{d}-seed{s}": dict(depth=d, seed=s, **({"warmup_until_error": WARMUP_110} if d == 110 else {}))
             for d in depths_at(profile, TABLE6_DEPTHS) for s in arm_seeds(profile, seed)}
    depth.update({f"plain{d}-seed{s}": dict(arch="plain", depth=d, seed=s)
                  for d in PLAIN_DEPTHS for s in arm_seeds(profile, seed)})
    depth.update({f"resnet32-all50k-seed{s}": dict(val_size=0, seed=s) for s in arm_seeds(profile, seed)})
    plateau = dict(schedule="plateau", plateau_patience=LOG_PATIENCE, plateau_threshold=PLATEAU_THRESHOLD)
    log_r34 = {"resnet34-imagenet": dict(arch="resnet34-imagenet"),  # the paper's schedule and augmentation
               "resnet34-imagenet-plateau": dict(arch="resnet34-imagenet", **plateau),  # the log's schedule
               "resnet34-imagenet-plateau-nocrop": dict(arch="resnet34-imagenet", crop=False, **plateau)}
    chapters = {
        "02_model": {**base, **{f"resnet32-optionB-seed{s}": dict(shortcut="B", seed=s) for s in arm_seeds(profile, seed)},
                     **{f"resnet32-optionB-nobn-seed{s}": dict(shortcut="B-no-bn", seed=s) for s in arm_seeds(profile, seed)},
                     **{f"plain{d}-seed{seed}": dict(arch="plain", depth=d) for d in FIG6_DEPTHS},
                     **{f"resnet{d}-seed{seed}": dict(depth=d) for d in FIG6_DEPTHS},
                     **{f"{name}-seed{s}": dict(o, seed=s) for name, o in log_r34.items() for s in arm_seeds(profile, seed)
                        if trains("resnet34-imagenet", profile)}},
        "03_augmentation": {**base, **arms(seed, profile, **{"aug-none": dict(crop=False, flip=False),
                                                            "aug-flip": dict(crop=False),
                                                            "norm-per-channel": dict(normalization="per-channel"),
                                                            "eval-without-mean": dict(normalize_eval=False),
                                                            "norm-none": dict(normalization="none")})},
        "04_schedule": {**base, **arms(seed, profile, **{
            f"plateau-patience{p}": dict(schedule="plateau", plateau_patience=p, plateau_threshold=PLATEAU_THRESHOLD)
            for p in PLATEAU_PATIENCES}, cosine=dict(schedule="cosine"))},
        "05_optimizers": {**base, **arms(seed, profile, **{
            "sgd-nesterov": dict(nesterov=True),
            **{f"adam-lr{x:g}": dict(optimizer="adam", lr=x) for x in (ADAM_LR, ADAM_HIGH_LR)},
            f"adamw-lr{lr}-wd{wd}": dict(optimizer="adamw", lr=ADAM_LR, weight_decay=ADAMW_WEIGHT_DECAY),
            f"nadam-lr{lr}": dict(optimizer="nadam", lr=ADAM_LR),
            **{f"bn-eps{e:g}": dict(bn_eps=e) for e in BN_EPS_VALUES},
            **{f"bn-momentum{m:g}": dict(bn_momentum=m) for m in BN_MOMENTA},
            **{f"adam-constant-lr{x:g}": dict(optimizer="adam", lr=x, schedule="constant") for x in ADAM_CONSTANT_LRS}}),
                          **arms(seed, profile, **{"final-relu": dict(final_relu=True)})},
        "06_results": results,
        "07_depth": depth,
        "intro": results,
    }
    if profile == "cpu":
        chapters = {c: {name: o for name, o in runs.items() if re.sub(r"-seed\d+$", "", name) in CPU_ARMS[c]}
                    for c, runs in chapters.items()}
    return {c: {name: {"seed": seed, **o} for name, o in runs.items()} for c, runs in chapters.items()}


def as_device(device) -> torch.device:
    """`device` as a torch.device; 'auto' is the device a chapter would pick."""
    from .devices import pick_device
    return pick_device("auto") if str(device) == "auto" else torch.device(device)


def dtype_supported(dtype: str, device: torch.device | str) -> bool:
    """Whether chapter 5 trains a `dtype` run on `device`: no float64 on MPS, bfloat16 on CPUs
    and on CUDA GPUs that support it."""
    device = as_device(device)
    if dtype == "float64":
        return device.type != "mps"
    if dtype == "bfloat16":
        # planning for a GPU this machine does not have: assume it has bf16 (every GPU since Ampere)
        return device.type == "cpu" or (device.type == "cuda" and (not torch.cuda.is_available()
                                                                   or torch.cuda.is_bf16_supported()))
    return True


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


def chapter_names() -> tuple[str, ...]:
    return tuple(declared(0, "paper"))


def match_chapters(names) -> list[str]:
    """Chapter stems for `names` given as '02', '02_model' or 'book/02_model.ipynb'."""
    chosen = []
    for name in names:
        stem = Path(name).stem
        found = [c for c in chapter_names() if c == stem or c.startswith(stem + "_")]
        if len(found) != 1:
            raise PlanError(f"chapter {name!r} is not one of the chapters with runs: {', '.join(chapter_names())}")
        chosen += found
    return chosen


def plan(profile: str, seed: int = 0, chapters=None, only=None, device=None) -> list[PlannedRun]:
    """The runs of `profile` (each name once, in chapter order), restricted to `chapters` and
    to the names in `only`; with `device`, without the dtype runs chapter 5 skips there."""
    if profile not in PROFILES:
        raise PlanError(f"profile must be one of {tuple(PROFILES)}, got {profile!r}")
    wanted = set(match_chapters(chapters)) if chapters else set(chapter_names())
    runs: dict[str, PlannedRun] = {}
    for chapter, entries in declared(seed, profile).items():
        for name, overrides in entries.items():
            if name in runs:
                if TrainConfig(**runs[name].overrides).identity() != TrainConfig(**overrides).identity():
                    raise PlanError(f"run {name!r} is declared twice with different settings "
                                    f"({runs[name].overrides} vs {overrides})")
                runs[name].chapters += (chapter,)
            else:
                runs[name] = PlannedRun(name, overrides, (chapter,))
    selected = [r for r in runs.values() if wanted & set(r.chapters)]
    if only:
        unknown = sorted(set(only) - {r.name for r in selected})
        if unknown:
            raise PlanError(f"not in the plan of profile {profile}: {', '.join(unknown)}; its runs: "
                            f"{', '.join(r.name for r in selected)}")
        selected = [r for r in selected if r.name in set(only)]
    if device is not None:
        selected = [r for r in selected if dtype_supported(r.overrides.get("dtype", "float32"), device)]
    return selected


def planned_config(name: str, profile: str, seed: int, overrides: dict, **execution) -> TrainConfig:
    """The plan's config of run `name` for a chapter of parameter `seed`. `overrides` (what a
    chapter passes to ch.run) must give the same run, else PlanError naming the fields."""
    runs = {r.name: r for r in plan(profile, seed)}
    if name not in runs:
        raise PlanError(f"run {name!r} is not in the plan (resnet_cifar/plan.py, profile {profile}, seed {seed}); "
                        f"declare it in plan.declared() for its chapter, so that `python -m resnet_cifar plan` "
                        f"and `run` know it. Planned runs: {', '.join(runs)}")
    config = runs[name].config(profile, **execution)
    if overrides:
        asked = profile_config(profile, **{"name": name, "seed": seed, **execution, **overrides})
        ours, theirs = config.identity(), asked.identity()
        diff = {k: (theirs[k], ours[k]) for k in ours if ours[k] != theirs[k]}
        if diff:
            raise PlanError(f"run {name!r} is asked for with settings the plan does not give it: "
                            + "; ".join(f"{k}={a!r} (plan: {p!r})" for k, (a, p) in diff.items())
                            + ". Change the chapter and resnet_cifar/plan.py together.")
    return config


# ---------------------------------------------------------------- status and cost

def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def status(run: PlannedRun, profile: str, folder: Path) -> dict:
    """state (finished / running / interrupted / failed / conflict / missing), text, iterations
    done and the summary of the run's folder in `folder`."""
    run_dir = Path(folder) / run.name
    summary, stored = read_json(run_dir / "summary.json"), read_json(run_dir / "config.json")
    if summary is None or stored is None:
        return dict(state="missing", text="missing", done=0, summary=None)
    done = summary.get("iterations_done") or 0
    ours, theirs = run.config(profile).identity(), TrainConfig(**stored).identity()
    if ours != theirs:
        diff = ", ".join(sorted(k for k in ours if ours[k] != theirs.get(k)))
        return dict(state="conflict", text=f"other config in its folder ({diff})", done=done, summary=summary)
    if summary.get("status") in FINISHED:
        return dict(state="finished", text=summary.get("status_detail", summary["status"]), done=done, summary=summary)
    if lock_owner(run_dir):
        return dict(state="running", text=f"running, at {done:,}", done=done, summary=summary)
    if (run_dir / "checkpoint.pt").is_file():
        return dict(state="interrupted", text=f"interrupted at {done:,}", done=done, summary=summary)
    return dict(state="failed", text=f"{summary.get('status_detail', 'failed')} (no checkpoint: starts over)",
                done=done, summary=summary)


def model_flops(config: TrainConfig) -> float:
    """Multiply-adds of the convolutions and the FC layer for one image: what the estimates
    scale step rates by between models (counted here: fvcore's trace takes seconds per model)."""
    if config.arch not in ("resnet", "plain"):
        from .models import architecture_flops
        return architecture_flops(config.arch, config.depth, config.shortcut) or 1.0
    n, macs = (config.depth - 2) // 6, 32 * 32 * 16 * 3 * 9
    for size, width, first_in in ((32, 16, 16), (16, 32, 16), (8, 64, 32)):
        macs += size * size * width * 9 * (first_in + (2 * n - 1) * width)
        if config.arch == "resnet" and config.shortcut == "B" and width != first_in:
            macs += size * size * width * first_in  # the 1x1 projection
    return float(macs + 64 * 10)


def bench_rates(records_dir: Path, device: torch.device) -> list[dict]:
    """Training rates of the recorded benchmarks (bench-*.json) on `device`'s type."""
    rates = []
    for path in sorted(Path(records_dir).glob("bench-*.json")):
        record = read_json(path) or {}
        info = record.get("info", {})
        if info.get("device", "").split(":")[0] != device.type:
            continue
        flops = model_flops(TrainConfig(depth=info.get("depth", 32)))
        for v in record.get("variants") or []:
            if v.get("library") and not v.get("compile"):
                rates.append(dict(file=path.name, device_name=info.get("device_name"), date=info.get("date") or "",
                                  batch_size=info.get("batch_size"), flops=flops, dtype=v["dtype"],
                                  channels_last=v["channels_last"], rate=v["library"]))
    return rates


def same_machine(a: str | None, b: str | None) -> bool:
    """Two device labels name the same processor or GPU, whatever their thread counts."""
    strip = lambda label: re.sub(r"; \d+ of \d+ threads\)$", ")", label or "")  # noqa: E731
    return bool(a) and strip(a) == strip(b)


def reference_rates(folders, label: str | None, device_type: str) -> list[dict]:
    """Seconds per (training image x multiply-add) of the finished runs in `folders` (folders
    of run folders) on the device `label` (None: any device of `device_type`), evaluation included."""
    refs, seen = [], set()
    for folder in folders:
        for path in sorted(Path(folder).glob("*/summary.json")):
            s, c = read_json(path), read_json(path.parent / "config.json")
            if path.parent.resolve() in seen or not (s and c) or s.get("status") not in FINISHED:
                continue
            seen.add(path.parent.resolve())
            on = (same_machine(s.get("device_name"), label) if label
                  else str(s.get("device", "")).split(":")[0] == device_type)
            if on and s.get("wall_time_s") and s.get("iterations_done"):
                c = TrainConfig(**c)
                per = (s["wall_time_s"] + (s.get("eval_time_s") or 0)) / (s["iterations_done"] * c.batch_size
                                                                           * model_flops(c))
                refs.append(dict(name=f"{path.parent.parent.name}/{path.parent.name}", dtype=c.dtype,
                                 batch_size=c.batch_size, per=per, device_name=s.get("device_name")))
    return refs


def estimates(runs: list[PlannedRun], profile: str, folder: Path, device, records_dir: Path) -> list[dict]:
    """Each run's status and time in seconds with where the time comes from: 'measured' (the
    run's own record); the rate of finished runs of the same dtype and batch size on this
    device label (any profile in the runs folder or the published records; evaluation included;
    scaled by multiply-adds); a recorded benchmark (training steps only); or None ('unknown').
    A device this machine does not have (plan --device cuda on a laptop) takes the rates of
    runs on any device of its type."""
    from .devices import DeviceError, device_label, pick_device
    device = as_device(device)
    try:
        label = device_label(pick_device(str(device)))
    except DeviceError:
        label = None
    folder = Path(folder)
    rows = [dict(run=r, config=r.config(profile), **status(r, profile, folder)) for r in runs]
    refs = reference_rates([folder, *sorted(folder.parent.parent.glob("*/*")), *sorted(Path(records_dir).glob("*/*"))],
                           label, device.type)
    bench = bench_rates(records_dir, device)
    for row in rows:
        c, s = row["config"], row["summary"] or {}
        if row["state"] == "finished":
            row["seconds"] = (s.get("wall_time_s") or 0) + (s.get("eval_time_s") or 0)
            row["source"] = f"measured on {s.get('device_name')}"
            continue
        kept = row["done"] if row["state"] in ("interrupted", "running") else 0  # others start over
        images = (c.iterations - kept) * c.batch_size
        same = [x for x in refs if x["dtype"] == c.dtype and x["batch_size"] == c.batch_size]
        marks = [b for b in bench if b["dtype"] == c.dtype and b["batch_size"] == c.batch_size]
        marks = [b for b in marks if b["channels_last"] == c.channels_last] or marks
        if same:
            row["seconds"] = images * model_flops(c) * statistics.median(x["per"] for x in same)
            names = ", ".join(x["name"] for x in same[:2]) + (" ..." if len(same) > 2 else "")
            on = label or ", ".join(sorted({x["device_name"] for x in same}))
            row["source"] = f"rate of {len(same)} finished run(s) on {on} ({names})"
        elif marks:
            b = max(marks, key=lambda m: m["date"])
            row["seconds"] = images / b["rate"] * model_flops(c) / b["flops"]
            layout = "" if b["channels_last"] == c.channels_last else f", channels_last={b['channels_last']}"
            row["source"] = f"{b['file']} ({b['device_name']}, {b['date']}{layout}; training steps only)"
        else:
            row["seconds"] = None
            row["source"] = f"unknown: no finished {c.dtype} run of batch {c.batch_size} on {label or device.type}"
    return rows


def table(profile: str, folder: Path, device="cpu", records_dir: Path | None = None, **selection):
    """The plan as a DataFrame (one row per run): chapters, seed, model, iterations, status,
    time in seconds and its source."""
    import pandas as pd
    from .book import project_root
    records_dir = records_dir or project_root() / "book" / "records"
    rows = estimates(plan(profile, device=device, **selection), profile, folder, device, records_dir)
    return pd.DataFrame([{"run": r["run"].name, "chapters": ", ".join(r["run"].chapters), "seed": r["run"].seed,
                          "model": r["run"].model(), "dtype": r["config"].dtype, "batch": r["config"].batch_size,
                          "iterations": r["config"].iterations, "status": r["text"], "state": r["state"],
                          "time s": r["seconds"], "time from": r["source"],
                          "device": (r["summary"] or {}).get("device_name")} for r in rows],
                        columns=["run", "chapters", "seed", "model", "dtype", "batch", "iterations", "status", "state",
                                 "time s", "time from", "device"]).set_index("run")


def accounting(dataset: str, runs_dir=None, device="cpu", profiles=tuple(PROFILES), seed: int = 0):
    """Compute per profile: runs, iterations per run, runs x iterations, training images, how
    many runs are finished, their measured time and devices, the estimated time of the others
    on `device` (one run at a time; see `estimates`); read where a chapter reads (committed
    records, else the runs folder)."""
    import pandas as pd
    from .book import project_root
    from .records import resolve_runs
    from .devices import DeviceError, device_label
    try:
        target = device_label(as_device(device))
    except DeviceError:
        target = f"{device} (not on this machine)"
    root, rows = project_root(), {}
    for profile in profiles:
        folder, manifest = resolve_runs(root, profile, dataset, runs_dir)
        t = table(profile, folder, device, root / "book" / "records", seed=seed)
        finished = t["state"] == "finished"
        devices = sorted(set(t.loc[finished, "device"].dropna()))
        rest = t.loc[~finished, "time s"]
        rows[profile] = {
            "runs": len(t), "iterations per run": int(t["iterations"].max()),
            "runs × iterations": int(t["iterations"].sum()),
            "training images": int((t["iterations"] * t["batch"]).sum()),
            "finished": int(finished.sum()), "measured s": float(t.loc[finished, "time s"].sum()),
            "estimated s (the rest)": float(rest.dropna().sum()), "runs without estimate": int(rest.isna().sum()),
            "measured on": ", ".join(devices) or "-", "estimated for": target,
            "read from": "committed records" if manifest is not None else "runs folder"}
    return pd.DataFrame(rows).T
