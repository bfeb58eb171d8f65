"""The commands `plan | run | export | records`, over the plan (plan.py), the runner (runner.py)
and the published records (records.py)."""
from __future__ import annotations

import json
import re
import shlex
import time
from collections import Counter
from pathlib import Path

import torch

from . import data as D
from . import plan as P
from . import records as REC
from .config import PROFILES, TrainConfig
from .devices import DeviceError, device_label, pick_device
from .fused import check_fuse, default_fuse, groups
from .records import RECORDS, committed, read_manifest, shown_path
from .runner import hms, run_plan
from .runs import RunError, git_commit, load_run


def add_commands(sub) -> None:
    def selection(p, device=True):
        p.add_argument("--profile", default="smoke", help=" | ".join(PROFILES))
        p.add_argument("--chapters", nargs="+", metavar="CHAPTER",
                       help="only the runs of these chapters (02, 05_optimizers, intro)")
        p.add_argument("--only", nargs="+", metavar="RUN", help="only these runs (as `plan` names)")
        p.add_argument("--seed", type=int, default=0, help="the chapters' seed parameter")
        p.add_argument("--set", nargs="+", default=[], metavar="NAME=VALUE",
                       help="with --chapters: a chapter parameter, as papermill -p sets it "
                            "(--chapters 05 --set adam_lr=0.01 'bn_eps_values=[0.9]')")
        data_dir(p)
        p.add_argument("--runs-dir", default="runs", help="runs train in RUNS_DIR/<data>/<profile>")
        if device:
            p.add_argument("--device", default="auto", help="auto | cpu | cuda[:k] | mps")

    def data_dir(p):
        p.add_argument("--data-dir", help="default: $RESNET_CIFAR_DATA, then ./data")

    p = sub.add_parser("plan", help="every run of the book on a profile: status, time")
    selection(p)
    p.add_argument("--fuse", type=int, metavar="N", help="show the groups `run --fuse N` trains")
    p.add_argument("--commands", action="store_true", help="one shell command per unfinished run")
    p = sub.add_parser("run", help="train the runs of the plan that are not finished")
    selection(p)
    p.add_argument("--jobs", type=int, default=1, help="runs at once per GPU (on a CPU: in all)")
    p.add_argument("--retrain-published", action="store_true",
                   help="train the runs the committed records hold too")
    p.add_argument("--threads", type=int, help="CPU threads per run (default: cores / --jobs)")
    p.add_argument("--status-every", type=float, default=30.0, help="seconds between status lines")
    p.add_argument("--fuse", type=int, metavar="N", help="train up to N runs of one architecture "
                   "as one fused model (default: 1 on a CPU, 16 on CUDA)")
    p = sub.add_parser("export", help="publish the finished runs in book/records/<data>/<profile>")
    selection(p, device=False)
    p.add_argument("--records-dir", help="default: <project>/book/records")
    p.add_argument("--partial", action="store_true", help="publish even if runs are unfinished "
                   "(those with their checkpoint)")
    p = sub.add_parser("records", help="the committed records of this dataset, per profile")
    data_dir(p)
    p.add_argument("--best", action="store_true",
                   help="the profile and data copy of the most complete records (this data first)")
    p.add_argument("--verify", metavar="PROFILE/RUN", help="retrain a committed run here and "
                   "compare it with its record: bit for bit, within tolerance, or not (exit 1)")
    p.add_argument("--iterations", type=int,
                   help="with --verify: how far to retrain (default: to the first evaluation)")
    p.add_argument("--json", help="with --verify: also write what it found to this JSON file")


def dataset_identity(data_dir) -> str:
    """Which CIFAR-10 copy `data_dir` holds (data.CIFAR10.identity), without loading the images."""
    folder = D.resolve_data_dir(data_dir) / D.FOLDER
    if not all((folder / n).is_file() for n in D.TRAIN_FILES + [D.TEST_FILE, D.META_FILE]):
        D.load_cifar10(data_dir)  # raises the DataError that says what to do
    return D._identity(folder)


def main(args) -> int:
    identity, root = dataset_identity(args.data_dir), REC.project_root()
    if args.command == "records":
        return _records(args, root, identity)
    folder = Path(args.runs_dir) / identity / args.profile
    runs = P.plan(args.profile, args.seed, args.chapters, args.only,
                  P.parse_settings(args.set, args.chapters))
    if args.command == "export":
        return _export(args, root, identity, folder, runs)
    if read_manifest(folder) is not None or REC.inside(folder, root / RECORDS):
        raise ValueError(f"{folder} holds published records; runs are trained into a runs folder "
                         "(--runs-dir runs) and published with `export`")
    # trained before, perhaps on another machine: `run` does not train them again, `plan` says so
    committed_here = root / RECORDS / identity / args.profile
    has_records = read_manifest(committed_here) is not None  # read (and checked) once
    retrain = args.profile == "smoke" or getattr(args, "retrain_published", False)
    published = committed_here if has_records and not retrain else None
    if args.command == "plan" and args.commands:  # one line per run, for a job array or parallel
        flags = [f"--profile {args.profile}", f"--device {args.device}"]
        flags += [f"--seed {args.seed}"] if args.seed else []
        if args.set:
            flags += ["--chapters", *args.chapters, "--set", *map(shlex.quote, args.set)]
        flags += [f"--data-dir {shlex.quote(str(args.data_dir))}"] if args.data_dir else []
        flags += [f"--runs-dir {shlex.quote(args.runs_dir)}"] if args.runs_dir != "runs" else []
        for r in runs:
            if P.status(r, args.profile, folder, published)["state"] != "finished":
                print(" ".join(["python -m resnet_cifar run", *flags, "--only", r.name]))
        return 0
    if args.command == "plan":
        return _show_plan(args, runs, folder, identity, root, published)
    done = {r.name for r in runs
            if published and P.status(r, args.profile, folder, published).get("published")}
    if done:
        print(f"{len(done)} run(s) of the plan are published in {shown_path(published)} and not "
              f"trained again: {', '.join(sorted(done))}")
        runs = [r for r in runs if r.name not in done]
    for r in runs if has_records else []:  # published unfinished (by any machine): resumed there
        if REC.restore(committed_here / r.name, folder / r.name, r.config(args.profile)):
            at = REC.read_json(folder / r.name / "summary.json")["iterations_done"]
            print(f"{r.name}: resumes from the checkpoint published in "
                  f"{shown_path(committed_here / r.name)} (iteration {at:,})")
    # --jobs > 1 asks for one process per slot, and those train single runs
    fuse = (default_fuse(args.device) if args.jobs == 1 else 1) if args.fuse is None else (
        check_fuse(args.fuse))
    return run_plan(runs, args.profile, folder, args.device, args.jobs, args.data_dir,
                    args.threads, args.status_every, fuse=fuse)


def _export(args, root: Path, identity: str, folder: Path, runs) -> int:
    records = Path(args.records_dir or root / RECORDS) / identity / args.profile
    if args.profile == "smoke" and not args.records_dir:
        raise ValueError("smoke runs are not published: the smoke build always trains from "
                         "scratch (it is what the tests build); pass --records-dir to export them "
                         "elsewhere")
    planned = len(runs) if args.set else len(P.plan(args.profile, args.seed))
    manifest = REC.export(runs, args.profile, identity, folder, records, args.partial, planned)
    unfinished = {n: e for n, e in manifest["runs"].items() if e.get("status") == REC.UNFINISHED}
    print(f"exported {len(manifest['runs']) - len(unfinished)} finished runs of the {planned} of "
          f"profile {args.profile} to {shown_path(records)} (config, summary, history; weights "
          f"only of {', '.join(REC.KEPT_WEIGHTS.get(args.profile, ())) or 'none'})"
          + "".join(f"; {n} unfinished at {e['iterations_done']:,} iterations, with its "
                    "checkpoint" for n, e in unfinished.items()))
    return 0


def _show_plan(args, runs, folder: Path, identity: str, root: Path, published) -> int:
    try:
        device = pick_device(args.device)
        on = f"{device} ({device_label(device)})"
    except DeviceError:  # a device this machine does not have: the rates of runs recorded on one
        device = torch.device(args.device)
        on = f"{device} (not on this machine: rates of runs recorded on {device.type} devices)"
    rows = P.estimates(runs, args.profile, folder, device, root / RECORDS, published)
    left = {r["run"].name: r for r in rows if r["state"] != "finished"}
    fused = args.fuse is not None
    made = groups([r["config"] for r in left.values()], check_fuse(args.fuse)) if fused else []
    group_of = {c.name: f"g{i}" for i, group in enumerate(made, 1) for c in group}
    print(f"plan of profile {args.profile} · {D.dataset_label(identity)} · runs in {folder} · "
          f"times on {on}")
    head = ("run", "chapters", "seed", "model", "dtype", "iterations", "status", "time",
            "time from")
    lines = [(r["run"].name, ",".join(c.split("_")[0] for c in r["run"].chapters),
              str(r["run"].seed), r["run"].model(), r["config"].dtype,
              f"{r['config'].iterations:,}", r["text"],
              "unknown" if r["seconds"] is None else hms(r["seconds"]), r["source"]) for r in rows]
    if fused:
        head, lines = ("group", *head), [(group_of.get(line[0], "-"), *line) for line in lines]
    widths = [max(len(x[i]) for x in [head, *lines]) for i in range(len(head) - 1)]
    for line in [head, *lines]:
        print("  ".join(x.ljust(w) for x, w in zip(line, widths)) + "  " + line[-1])
    states, rest = Counter(r["state"] for r in rows), [r["seconds"] for r in left.values()]
    unknown = rest.count(None)
    print(f"{len(rows)} runs: " + ", ".join(f"{states[s]} {s}" for s in (
        "finished", "running", "interrupted", "failed", "conflict", "missing") if states[s])
        + f" · {sum(r['config'].iterations for r in rows):,} iterations, "
        f"{sum(r['config'].iterations * r['config'].batch_size for r in rows):,} training images")
    if any(r.get("published") for r in rows):
        print(f"{sum(bool(r.get('published')) for r in rows)} of them published in "
              f"{shown_path(published)}: `run` does not train them again (`run "
              "--retrain-published` does)")
    measured = sum(r["seconds"] for r in rows if r["state"] == "finished")
    print(f"time: {hms(measured)} measured (finished runs) + "
          f"{hms(sum(x for x in rest if x is not None))} estimated for the {len(rest) - unknown} "
          f"others, one run at a time on {on}" + (
              f"; {unknown} run(s) without an estimate (no measured rate on this device: finish "
              "one run of that dtype, or record a benchmark with `python -m resnet_cifar bench "
              f"--device {device.type} --json book/records/bench-{device.type}.json`)"
              if unknown else ""))
    for i, group in enumerate(made, 1):
        times = [left[c.name]["seconds"] for c in group]
        print(f"group g{i}: {len(group)} run(s) fused ({', '.join(c.name for c in group)}): "
              f"{'unknown' if None in times else hms(sum(times))} estimated")
    if fused:
        print("a group's time is estimated as the sum of its runs' times: on a CPU `bench --fused "
              "2` measured no gain from fusing; on a GPU a group should take less (not yet "
              "measured)")
    return 0


def _records(args, root: Path, identity: str) -> int:
    if args.verify:
        result = verify(root, identity, args.verify, args.iterations, args.data_dir)
        print(f"{'iteration':>9}  {'quantity':<11}  {'record':>20}  {'here':>20}  |Δ|")
        for row in result["rows"]:
            print(f"{row['iteration']:>9,}  {row['quantity']:<11}  {row['record']:>20.15g}  "
                  f"{row['here']:>20.15g}  {row['diff']:.3g}")
        print(result["sentence"])
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1, default=str) + "\n")
        return 1 if result["verdict"] == "different" else 0
    if args.best:
        print(" ".join(REC.best_records(root, identity) or ()))
        return 0
    found = committed(root, identity)
    if not found:
        print(f"no committed records of {identity} in {root / RECORDS} (smoke is never "
              "published)")
    for r in found:
        print(f"{r['profile']}: {r['finished']} of {r['planned']} runs, exported {r['exported']}, "
              f"commit {r['commit']}" + "".join(
                  f"; {name} unfinished at {done:,} iterations (`run --profile {r['profile']} "
                  f"--only {name}` resumes it)" for name, done in r["unfinished"].items()))
    return 0


# ---------------------------------------------------------------- records --verify

COMPARED = ("lr", "train_loss", "train_error", "val_loss", "val_error", "test_loss", "test_error")
# "equal within tolerance" on another CPU or torch: training is chaotic, so kernels that round
# differently drift apart; within these bands a prefix still reproduces the record.
TOLERANCE = dict(loss=0.05, error=0.02)  # losses: relative; errors: absolute (2 points)


def recorded_threads(summary: dict) -> int | None:
    """The CPU threads a record trained with: its last segment's, else its device label's."""
    segments = summary.get("segments") or []
    if segments and segments[-1].get("threads"):
        return int(segments[-1]["threads"])
    found = re.search(r"(\d+) of \d+ threads", summary.get("device_name") or "")
    return int(found.group(1)) if found else None


def verify(root: Path, identity: str, spec: str, iterations: int | None, data_dir=None) -> dict:
    """Retrain the committed run `spec` (profile/run) on this CPU, with its thread count, up to
    `iterations` (default: its first evaluation); compare each history row it reaches with the
    record: 'bit for bit', 'within tolerance' or 'different'."""
    import tempfile
    from .train import train
    profile, _, name = spec.partition("/")
    manifest = read_manifest(root / RECORDS / identity / profile) if profile in PROFILES else None
    if not name or manifest is None or name not in manifest.get("runs", {}):
        found = [f"{r['profile']}/…" for r in committed(root, identity)]
        raise RunError(f"no committed record {spec!r} for {identity}: give PROFILE/RUN, e.g. "
                       "cpu/resnet20-seed0 (`python -m resnet_cifar records` lists them; "
                       f"committed: {', '.join(found) or 'none'})")
    record = load_run(root / RECORDS / identity / spec)
    s, history = record.summary, record.history.set_index("iteration")[list(COMPARED)]
    if history.empty:
        raise RunError(f"the record {spec} has no evaluation to compare with")
    first = history.index[0]
    rows = history.loc[:iterations or first]
    if rows.empty:
        raise RunError(f"--iterations {iterations} is before the record's first evaluation, at "
                       f"iteration {first:,}: pass --iterations {first} or more")
    threads, before, start = recorded_threads(s), torch.get_num_threads(), time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        config = TrainConfig(**{**record.config, "name": name, "runs_dir": tmp,
                                "data_dir": data_dir, "device": "cpu", "progress": "none",
                                "stop_at": int(rows.index[-1]), "force": True, "wait": False})
        torch.set_num_threads(threads or before)
        try:
            here = train(config).history.set_index("iteration").reindex(rows.index)
            here = here[list(COMPARED)]
            here_device = device_label(torch.device("cpu"))  # with the record's thread count
        finally:
            torch.set_num_threads(before)
    same = (rows == here) | (rows.isna() & here.isna())
    diff = (rows - here).abs().where(~same, 0.0)  # NaN where this run has no such row
    scale = {c: rows[c].abs().where(rows[c] != 0, 1.0) if c.endswith("loss") else 1.0
             for c in COMPARED[1:]}  # losses: relative differences
    worst = {c: float((diff[c] / scale[c]).fillna(0.0).max()) for c in COMPARED[1:]}
    within = all(v <= TOLERANCE[k.split("_")[1]] for k, v in worst.items()) and same["lr"].all()
    causes = []
    if s.get("device_name") != here_device:
        causes.append(f"another CPU or thread count (record: {s.get('device_name')}; here: "
                      f"{here_device})")
    if str(s.get("torch_version")) != str(torch.__version__):
        causes.append(f"another torch (record: {s.get('torch_version')}; here: "
                      f"{torch.__version__})")
    result = dict(
        run=spec, dataset=identity, iterations=int(rows.index[-1]),
        verdict="bit for bit" if same.all().all() else ("within tolerance" if within
                                                          else "different"),
        threads=threads, record_device=s.get("device_name"), here_device=here_device,
        record_torch=str(s.get("torch_version")), here_torch=str(torch.__version__), worst=worst,
        tolerance=TOLERANCE, causes=causes, seconds=time.perf_counter() - start,
        rows=[dict(iteration=int(it), quantity=c, record=float(rows.at[it, c]),
                   here=float(here.at[it, c]), diff=float(diff.at[it, c]))
              for it in rows.index for c in COMPARED],
        checked=time.strftime("%Y-%m-%d %H:%M"), commit=git_commit())
    return dict(result, sentence=verify_sentence(result))


def verify_sentence(result: dict) -> str:
    """What a verification found, in one sentence."""
    head = (f"Retrained here from its committed config to iteration {result['iterations']:,} "
            f"({result['threads'] or 'the default number of'} thread(s), "
            f"{result['seconds']:.0f} s), {result['run']} ({result['dataset']})")
    worst = ", ".join(f"{k} {v:.2g}" for k, v in result["worst"].items() if v)
    why = ("; ".join(result["causes"])
           or "the same CPU and torch as the record: this should not happen")
    if result["verdict"] == "bit for bit":
        return (f"{head} matches its record bit for bit: every value of every history row it "
                "reaches is equal.")
    if result["verdict"] == "within tolerance":
        return (f"{head} matches its record within the stated tolerance (losses within "
                f"{100 * result['tolerance']['loss']:g} %, errors within "
                f"{100 * result['tolerance']['error']:g} points), not bit for bit: largest "
                f"differences {worst}. Why: {why}.")
    return (f"{head} DIFFERS from its record beyond the tolerance (largest differences {worst}). "
            f"Record vs here: {why}.")
