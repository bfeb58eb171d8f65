"""The plan of every run, the runner that trains it, shell commands per run, and published records.

The runner tests train the smoke runs of chapter 4 (four 20-iteration ResNet-32 runs) through
`python -m resnet_cifar run` with one thread per worker, so that runs trained by different
processes can be compared bit for bit."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, missing, page_code, real_data_dir
from resnet_cifar import book
from resnet_cifar import experiments as E
from resnet_cifar import plan as P
from resnet_cifar import records as REC
from resnet_cifar.devices import device_label
from resnet_cifar.runs import RunError, load_run

CHAPTER4 = ["resnet32-seed0", "plateau-patience1000", "plateau-patience10", "cosine"]


# ---------------------------------------------------------------- the plan is the chapters' experiments

def parameters_cell(path: Path) -> dict:
    """The values of a notebook's `parameters` cell (literal assignments)."""
    cell = next(c for c in json.loads(path.read_text())["cells"] if "parameters" in c["metadata"].get("tags", []))
    namespace: dict = {}
    exec("".join(cell["source"]), namespace)
    return {k: v for k, v in namespace.items() if not k.startswith("__")}


def test_each_chapter_runs_its_experiments_with_its_parameters_cell_as_the_defaults():
    for chapter in E.CHAPTERS:
        path = ROOT / "book" / f"{chapter}.ipynb"
        values, code = parameters_cell(path), path.read_text()
        assert f'ch.experiments(\\"{chapter}\\"' in code, chapter
        for name, default in E.defaults(chapter).items():
            assert name in values, f"{chapter}: parameter {name} is not in its parameters cell"
            given = values[name]
            assert (list(given) if isinstance(given, (list, tuple)) else given) == \
                   (list(default) if isinstance(default, (list, tuple)) else default), (chapter, name)
            assert f"{name}={name}" in code, f"{chapter} does not pass {name} to its experiments"


@pytest.mark.parametrize("seed, profile", [(0, "quick"), (1, "quick"), (0, "smoke"), (1, "paper"), (0, "cpu")])
def test_the_plan_has_each_run_once_and_shares_the_baseline(seed, profile):
    runs = P.plan(profile, seed)
    assert len({r.name for r in runs}) == len(runs)
    shared = next(r for r in runs if r.name == f"resnet32-seed{seed}")
    assert set(shared.chapters) >= {"02_model", "03_augmentation", "04_schedule", "05_optimizers", "06_results"}
    for r in runs:  # every name is its config's: one folder, one identity
        assert r.config(profile).run_name() == r.name
        assert r.config(profile).iterations == P.profile_config(profile).iterations


def test_the_committed_runs_keep_their_identity_in_the_plan():
    """Runs are trained over several sessions and machines and published: every committed run is
    still in its profile's plan, under its name, with the config it was trained with."""
    published = [p for p in (ROOT / "book" / "records").glob("*/*/*/config.json")]
    assert published, "no committed records"
    for path in published:
        profile, name = path.parent.parent.name, path.parent.name
        planned = P.plan(profile, only=[name])[0].config(profile)
        identity, committed = planned.identity(), json.loads(path.read_text())
        assert planned.run_name() == name and len(set(identity) & set(committed)) > 30
        assert {k: v for k, v in identity.items() if k in committed} == {
            k: committed[k] for k in identity if k in committed}, path


def test_the_plan_is_every_chapters_declared_runs_at_each_profile():
    """The plan's size comes from the declarations: each chapter's arms (the cpu profile's
    marked `experiments.cpu`), each run once however many chapters share it."""
    for profile in ("smoke", "cpu", "quick", "paper"):
        declared = {n for c in E.CHAPTERS for n in E.flat(E.sections(c, profile))}
        assert sorted(r.name for r in P.plan(profile)) == sorted(declared)
        everything = {n for c in E.CHAPTERS for n in E.flat(E.CHAPTERS[c](profile, 0))}
        left = {n for c in E.CHAPTERS for n in E.left_out(c, profile)} - declared
        assert declared | left == everything and (profile == "cpu") == bool(left)
    runs = {r.name: r.overrides for r in P.plan("cpu")}
    assert runs["adam-constant-lr0.1-seed1"] == dict(optimizer="adam", schedule="constant", seed=1)  # lr 0.1: the default
    assert runs["plain56-seed1"] == dict(arch="plain", depth=56, seed=1)
    config = P.plan("cpu", only=["bn-eps0.9"])[0].config("cpu")
    assert (config.iterations, config.milestones, config.eval_every, config.bn_eps) == (1600, (800, 1200), 200, 0.9)


def test_one_edit_adds_an_arm_at_every_profile(monkeypatch):
    """A chapter's arm is declared in its function alone: marked `cpu` it joins the cpu plan too."""
    original = E.CHAPTERS["04_schedule"]

    def schedule(profile="smoke", seed=0, **params):
        sections = original(profile, seed, **params)
        sections["schedules"]["step, warm"] = E.cpu(E.seeded(profile, seed, "warm-step", warmup_until_error=0.8))
        return sections
    before = {p: len(P.plan(p)) for p in ("smoke", "cpu")}
    monkeypatch.setitem(E.CHAPTERS, "04_schedule", schedule)
    assert {p: len(P.plan(p)) for p in ("smoke", "cpu")} == {"smoke": before["smoke"] + 1, "cpu": before["cpu"] + 2}
    assert "warm-step-seed1" in [r.name for r in P.plan("cpu", chapters=["04"])]


def test_plan_set_shows_what_a_rerun_with_other_values_trains():
    names = lambda **kw: [r.name for r in P.plan("smoke", chapters=["05"], params={"05_optimizers": kw})]  # noqa: E731
    assert "adam-lr0.01" in names(adam_lr=0.01) and "adam-lr0.001" not in names(adam_lr=0.01)
    assert [n for n in names(bn_eps_values=[0.5]) if n.startswith("bn-eps")] == ["bn-eps0.5"]
    # a value that its run's name does not show gets the settings' hash: never the default's folder
    renamed = [r for r in P.plan("smoke", chapters=["04"], params={"04_schedule": dict(plateau_threshold=1e-3)})]
    plateau = [r for r in renamed if r.name.startswith("plateau-patience10-")]
    assert len(plateau) == 1 and plateau[0].overrides["plateau_threshold"] == 1e-3
    assert P.parse_settings(["adam_lr=0.01", "bn_eps_values=[0.9]"], ["05"]) == {
        "05_optimizers": {"adam_lr": 0.01, "bn_eps_values": [0.9]}}
    with pytest.raises(P.PlanError, match="--set needs --chapters"):
        P.parse_settings(["adam_lr=0.01"], None)
    with pytest.raises(P.PlanError, match="no chapter of 04 has a parameter 'adam_lr'; theirs: 04_schedule: long_patience"):
        P.parse_settings(["adam_lr=0.01"], ["04"])
    with pytest.raises(P.PlanError, match="--set takes NAME=VALUE"):
        P.parse_settings(["adam_lr"], ["05"])
    with pytest.raises(P.PlanError, match="chapter 05_optimizers has no parameter nope"):
        P.plan("smoke", params={"05_optimizers": {"nope": 1}})


def test_the_cpu_profile_leaves_out_arms_its_budget_does_not_resolve():
    assert E.left_out("05_optimizers", "cpu")[:2] == ["sgd-nesterov", "sgd-nesterov-seed1"]
    assert E.left_out("05_optimizers", "quick") == []
    kept = E.sections("05_optimizers", "cpu", adam_constant_lrs=[0.05, 0.1])["adam_constant"]
    assert list(kept) == ["Adam, constant lr 0.05", "Adam, constant lr 0.1"]  # a reader's own value trains


def test_the_plan_by_chapter_and_by_name():
    assert [r.name for r in P.plan("smoke", chapters=["04"])] == CHAPTER4
    with pytest.raises(P.PlanError, match="chapter '08' is not one of the chapters with runs: 02_model"):
        P.plan("smoke", chapters=["08"])
    with pytest.raises(P.PlanError, match="not in the plan of profile smoke: resnet1202"):
        P.plan("smoke", only=["resnet1202"])
    with pytest.raises(P.PlanError) as e:  # one short line, not the whole plan
        P.plan("paper", only=["resnet32-seed"])
    assert str(e.value) == ("not in the plan of profile paper: resnet32-seed (close: resnet32-seed2, resnet32-seed3, "
                            "resnet32-seed4); `python -m resnet_cifar plan --profile paper` lists its "
                            f"{len(P.plan('paper'))} runs")


@pytest.mark.parametrize("params, message", [
    (dict(adam_lr="abc"), r"parameter adam_lr of chapter 05_optimizers must be a number like its default 0\.001, "
                          r"got 'abc' \(str\)$"),
    (dict(adam_lr=-1), r"chapter 05_optimizers's parameter adam_lr=-1 makes run adam-lr-1 impossible: lr must be a "
                       r"positive number, got -1"),
    (dict(bn_eps_values="[0.9]"), r"must be a list like its default .*papermill -p passes text: give a list with -y "
                                  r"'bn_eps_values: \[...\]'"),
])
def test_a_bad_chapter_parameter_value_is_named(params, message):
    """`plan --set` and a papermill parameter that no run can use: the error names the
    parameter (not a format code or a config field), for the plan and for the chapter alike."""
    with pytest.raises(E.ExperimentError, match=message):
        E.sections("05_optimizers", "cpu", **params)
    with pytest.raises(P.PlanError, match=message):
        P.plan("cpu", chapters=["05"], params={"05_optimizers": params})
    with pytest.raises(E.ExperimentError, match="must be an integer like its default 10, got 2.5"):
        E.sections("04_schedule", "smoke", short_patience=2.5)


def fake_record(folder: Path, run: P.PlannedRun, profile: str, **summary) -> Path:
    """A run folder as train() leaves it (config.json, summary.json) with the given summary."""
    run_dir = folder / run.name
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps(dataclasses.asdict(run.config(profile)), default=list))
    (run_dir / "summary.json").write_text(json.dumps(summary))
    return run_dir


def test_plan_shows_status_and_time_from_measured_rates(tmp_path, capsys):
    if real_data_dir() is None:
        missing("the command line reads the full CIFAR-10 folder")
    from resnet_cifar import cli
    from resnet_cifar.commands import dataset_identity
    data = str(real_data_dir())
    folder = tmp_path / "runs" / dataset_identity(data) / "smoke"
    runs = {r.name: r for r in P.plan("smoke")}
    label = device_label("cpu").split("; ")[0] + "; 99 of 99 threads)"  # this CPU, another thread count
    fake_record(folder, runs["resnet32-seed0"], "smoke", status="complete", status_detail="complete",
                iterations_done=10, wall_time_s=10.0, eval_time_s=2.0, device_name=label)
    interrupted = fake_record(folder, runs["cosine"], "smoke", status="running", iterations_done=5)
    (interrupted / "checkpoint.pt").write_bytes(b"")
    other = dataclasses.replace(runs["aug-none"], overrides=dict(runs["aug-none"].overrides, lr=0.5))
    fake_record(folder, other, "smoke", status="complete", iterations_done=10)

    code = cli.main(["plan", "--profile", "smoke", "--device", "cpu", "--runs-dir", str(tmp_path / "runs"),
                     "--data-dir", data, "--only", "resnet32-seed0", "cosine", "aug-none", "plain20-seed0"])
    out = capsys.readouterr().out
    assert code == 0, out
    lines = {line.split()[0]: line for line in out.splitlines()[2:6]}
    assert "complete" in lines["resnet32-seed0"] and "0:00:12  measured on " + label in lines["resnet32-seed0"]
    # the same model and batch at the finished run's 12 s per 10 x 32 images (on this CPU, whatever its
    # threads): 5 iterations left -> 6 s
    assert "interrupted at 5" in lines["cosine"] and "0:00:06  rate of 1 finished run(s)" in lines["cosine"]
    assert "other config in its folder (lr)" in lines["aug-none"]
    flops = lambda name: P.model_flops(runs[name].config("smoke"))  # noqa: E731
    assert f"{hms(12 * flops('plain20-seed0') / flops('resnet32-seed0'))}  rate of" in lines["plain20-seed0"]
    assert "4 runs: 1 finished, 1 interrupted, 1 conflict, 1 missing · 40 iterations, 1,280 training images" in out

    code = cli.main(["plan", "--profile", "smoke", "--device", "cpu", "--runs-dir", str(tmp_path / "runs"),
                     "--data-dir", data, "--chapters", "04", "--commands"])
    commands = capsys.readouterr().out.splitlines()
    assert code == 0 and len(commands) == 3  # resnet32-seed0 is finished
    assert commands[0] == (f"python -m resnet_cifar run --profile smoke --device cpu --data-dir {data} --runs-dir "
                           f"{tmp_path / 'runs'} --only plateau-patience1000")


def test_a_profile_is_estimated_from_runs_of_another_on_a_device_not_here(tmp_path):
    """Budgets differ, rates do not: a finished quick run on a GPU prices the paper profile there,
    also on a machine without that GPU (the device type's recorded runs)."""
    import torch
    from resnet_cifar.devices import available_devices
    if "mps" in available_devices():
        pytest.skip("needs a machine without the device whose runs it prices")
    runs = {r.name: r for r in P.plan("paper")}
    fake_record(tmp_path / "runs" / "official" / "quick", runs["resnet32-seed0"], "quick", status="complete",
                iterations_done=6400, wall_time_s=100.0, eval_time_s=20.0, device="mps", device_name="Apple M9")
    float64 = P.PlannedRun("dtype-float64", dict(seed=0, dtype="float64"), ("05_optimizers",))
    rows = P.estimates([runs["resnet32-seed0"], runs["resnet20-seed0"], float64], "paper",
                       tmp_path / "runs" / "official" / "paper", torch.device("mps"), tmp_path / "no-records")
    assert rows[0]["seconds"] == pytest.approx(1200.0)  # 10x the iterations of the quick run's 120 s
    assert rows[0]["source"] == "rate of 1 finished run(s) on Apple M9 (quick/resnet32-seed0)"
    ratio = P.model_flops(runs["resnet20-seed0"].config("paper")) / P.model_flops(runs["resnet32-seed0"].config("paper"))
    assert rows[1]["seconds"] == pytest.approx(1200.0 * ratio) and 0.5 < ratio < 0.7
    assert rows[2]["seconds"] is None and rows[2]["source"].startswith("unknown: no finished float64 run")


def test_an_unfinished_run_is_priced_from_its_own_latest_sitting(tmp_path):
    """A run that has trained on this device (whatever its thread count) is priced from its own
    latest sitting (its summary's last segment), not from other runs' rates; a sitting on
    another device says nothing about this one."""
    import torch
    runs = {r.name: r for r in P.plan("paper")}
    here = device_label("cpu").split("; ")[0]
    segments = [dict(start=0, end=1000, seconds=5000.0, device=f"{here}; 1 of 2 threads)"),
                dict(start=1000, end=1390, seconds=130.0, device=f"{here}; 2 of 2 threads)"),
                dict(start=1390, end=1390, seconds=0.0, device=f"{here}; 2 of 2 threads)")]
    folder = tmp_path / "runs" / "official" / "paper"
    run = fake_record(folder, runs["resnet32-all50k-seed0"], "paper", status="running", iterations_done=1390,
                      segments=segments)
    (run / "checkpoint.pt").write_bytes(b"")
    fake_record(folder, runs["resnet32-seed0"], "paper", status="complete", status_detail="complete",
                iterations_done=64000, wall_time_s=100.0, device_name=device_label("cpu"))
    priced = lambda: P.estimates([runs["resnet32-all50k-seed0"]], "paper", folder,  # noqa: E731
                                 torch.device("cpu"), tmp_path / "no-records")[0]
    row = priced()
    assert row["state"] == "interrupted" and row["seconds"] == pytest.approx((64000 - 1390) * 130.0 / 390)
    assert row["source"] == f"its own rate on {here}; 2 of 2 threads) (iterations 1,000 to 1,390)"
    summary = json.loads((run / "summary.json").read_text())
    summary["segments"] = [dict(g, device="Another CPU (AVX2; 8 of 8 threads)") for g in segments]
    (run / "summary.json").write_text(json.dumps(summary))
    row = priced()
    assert row["seconds"] == pytest.approx(100.0 * (64000 - 1390) / 64000)
    assert row["source"].startswith("rate of 1 finished run(s) on ")


def test_without_finished_runs_a_recorded_benchmark_prices_the_plan(tmp_path):
    """No finished run of its dtype on the device: the run's work at the benchmark's rate (its
    channels_last variant first), scaled by multiply-adds; without a record, no estimate."""
    import torch
    bench = ROOT / "book" / "records" / "bench-cpu.json"
    if not bench.is_file():
        missing("no committed CPU benchmark record")
    records = tmp_path / "records"
    records.mkdir()
    shutil.copy(bench, records / bench.name)
    run = P.PlannedRun("bf16", dict(seed=0, dtype="bfloat16", depth=20, channels_last=True), ("05_optimizers",))
    folder = tmp_path / "runs" / "official" / "quick"
    row = P.estimates([run], "quick", folder, torch.device("cpu"), records)[0]
    mark = next(b for b in P.bench_rates(records, torch.device("cpu"))
                if (b["dtype"], b["channels_last"], b["batch_size"]) == ("bfloat16", True, 128))
    config = run.config("quick")
    work = config.iterations * config.batch_size * P.model_flops(config)
    assert row["seconds"] == pytest.approx(work / (mark["rate"] * mark["flops"]))
    assert row["source"].startswith("bench-cpu.json (") and row["source"].endswith("; training steps only)")
    assert P.estimates([run], "quick", folder, torch.device("cpu"), tmp_path / "none")[0]["seconds"] is None


def test_a_finished_plan_reads_no_rates(tmp_path, monkeypatch):
    """Every run finished: each time is the run's own record, and no rate is read (reading them
    counts every finished run's multiply-adds; one ResNet-34 among them imports torchvision)."""
    import torch
    runs = P.plan("smoke", chapters=["02"])
    assert any(r.overrides.get("arch") == "resnet34-imagenet" for r in runs)
    folder = tmp_path / "runs" / "official" / "smoke"
    for r in runs:
        fake_record(folder, r, "smoke", status="complete", status_detail="complete", iterations_done=10,
                    wall_time_s=3.0, eval_time_s=1.5, device_name="CPU X")

    def refuse(*args):
        raise AssertionError("a rate was read for a plan whose runs are all finished")
    monkeypatch.setattr(P, "reference_rates", refuse)
    monkeypatch.setattr(P, "bench_rates", refuse)
    rows = P.estimates(runs, "smoke", folder, torch.device("cpu"), tmp_path / "no-records")
    assert [(r["state"], r["seconds"], r["source"]) for r in rows] == [("finished", 4.5, "measured on CPU X")] * len(runs)


def hms(seconds: float) -> str:
    from resnet_cifar.runner import hms as runner_hms
    return runner_hms(seconds)


def test_accounting_per_profile(tmp_path, dataset, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no committed records here: every profile reads tmp_path/runs
    runs = P.plan("smoke")
    folder = tmp_path / "runs" / dataset.identity / "smoke"
    for r in runs[:3]:
        fake_record(folder, r, "smoke", status="complete", iterations_done=10, wall_time_s=3.0, eval_time_s=1.0,
                    device_name=device_label("cpu"))
    table = page_code("01_setup").accounting(dataset.identity, runs_dir="runs", device="cpu")
    smoke = table.loc["smoke"]
    n = len(runs)
    assert (smoke["runs"], smoke["iterations per run"], smoke["runs × iterations"]) == (n, 10, 10 * n)
    assert (smoke["finished"], smoke["measured s"], smoke["training images"]) == (3, 12.0, 10 * n * 32)
    assert smoke["estimated s (the rest)"] > 0 and smoke["measured on"] == device_label("cpu")
    assert smoke["runs without estimate"] == 0  # every smoke run is float32, priced by the finished ones
    assert table.loc["paper", "runs × iterations"] == len(P.plan("paper")) * 64000 and table.loc["paper", "finished"] == 0


# ---------------------------------------------------------------- the runner

def cli_run(*args, env=None, timeout=900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "resnet_cifar", *args], capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, **(env or {})), cwd=ROOT)


def run_args(runs_dir: Path, *extra) -> list[str]:
    return ["run", "--profile", "smoke", "--device", "cpu", "--threads", "1", "--status-every", "2",
            "--data-dir", str(real_data_dir()), "--runs-dir", str(runs_dir), *extra]


def same_records(a: Path, b: Path) -> None:
    """The same training: history (but wall times), final errors, lr trace."""
    ra, rb = load_run(a), load_run(b)
    assert ra.status == rb.status == "complete"
    assert ra.history.drop(columns="wall_time").equals(rb.history.drop(columns="wall_time")), a.name
    assert ra.lr_trace.equals(rb.lr_trace)
    for key in ("final_test_error", "final_val_error", "best_val_error", "iterations_done"):
        assert ra.summary[key] == rb.summary[key], (a.name, key)


@pytest.fixture(scope="module")
def chapter4(tmp_path_factory):
    """Chapter 4's smoke runs, trained by the runner with two workers: (runs folder, output)."""
    if real_data_dir() is None:
        missing("the runner reads the full CIFAR-10 folder; none in $RESNET_CIFAR_DATA or ./data")
    from resnet_cifar.commands import dataset_identity
    runs = tmp_path_factory.mktemp("chapter4") / "runs"
    proc = cli_run(*run_args(runs, "--chapters", "04", "--jobs", "2"))
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    return runs / dataset_identity(real_data_dir()) / "smoke", proc.stdout


@pytest.mark.slow
def test_runner_trains_a_plan_with_two_jobs(chapter4):
    folder, out = chapter4
    assert "4 of 4 runs to train (0 finished)" in out and "2 worker processes on cpu, 1 thread(s) each" in out
    assert "4/4 done · 0 running · 0 left · 0 failed" in out.splitlines()[-1]
    report = json.loads((folder / "runner.json").read_text())
    assert report["workers"] == 2 and set(report["runs"]) == set(CHAPTER4)
    for name in CHAPTER4:
        run = load_run(folder / name)
        assert run.status == "complete" and run.summary["iterations_done"] == 10
        assert report["runs"][name]["state"] == "done" and f"finished {name} (cpu, " in out
    again = cli_run(*run_args(folder.parent.parent, "--chapters", "04", "--jobs", "2"))
    assert again.returncode == 0 and "all 4 runs of profile smoke are finished" in again.stdout


@pytest.mark.slow
def test_killed_runner_resumes_to_the_same_records(chapter4, tmp_path):
    reference, _ = chapter4
    runs = tmp_path / "runs"
    folder = runs / reference.parent.name / "smoke"
    proc = subprocess.Popen([sys.executable, "-m", "resnet_cifar", *run_args(runs, "--chapters", "04", "--jobs", "2")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT, start_new_session=True)
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline:  # kill -9 everything once a run has its first checkpoint
            summaries = [P.read_json(p) or {} for p in folder.glob("*/summary.json")]
            if any(s.get("status") == "running" and s.get("iterations_done") == 5 for s in summaries):
                break
            assert proc.poll() is None, "the runner ended before it could be killed"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    deadline = time.monotonic() + 60
    while True:  # until the killed workers are reaped (a zombie still owns its lock)
        states = {r.name: P.status(r, "smoke", folder)["state"] for r in P.plan("smoke", chapters=["04"])}
        if "running" not in states.values() or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert "interrupted" in states.values() and "finished" not in states.values(), states

    proc = cli_run(*run_args(runs, "--chapters", "04", "--jobs", "2"))
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert f"{sum(s != 'finished' for s in states.values())} of 4 runs to train" in proc.stdout
    for name in CHAPTER4:
        same_records(folder / name, reference / name)


@pytest.mark.slow
def test_a_failing_run_is_reported_and_the_others_finish(chapter4, tmp_path):
    reference, _ = chapter4
    runs = tmp_path / "runs"
    folder = runs / reference.parent.name / "smoke"
    cosine = next(r for r in P.plan("smoke") if r.name == "cosine")
    bad = dataclasses.replace(cosine, overrides=dict(cosine.overrides, lr=0.5))  # another run under this name
    fake_record(folder, bad, "smoke", status="complete", iterations_done=10)
    proc = cli_run(*run_args(runs, "--only", "cosine", "plateau-patience10", "--jobs", "2"))
    assert proc.returncode == 1, proc.stdout + proc.stderr[-3000:]
    assert "FAILED cosine (cpu, " in proc.stdout and "exists with a different config (differs in lr)" in proc.stdout
    assert "1/2 done · 0 running · 0 left · 1 failed" in proc.stdout and "FAILED: cosine" in proc.stdout
    assert f"1 of the failed runs' folders hold another config: delete them to train this plan's ({folder / 'cosine'})" \
        in proc.stdout
    report = json.loads((folder / "runner.json").read_text())["runs"]
    assert report["cosine"]["state"] == "failed" and report["plateau-patience10"]["state"] == "done"
    same_records(folder / "plateau-patience10", reference / "plateau-patience10")


@pytest.mark.slow
def test_plan_commands_run_and_give_the_same_records(chapter4, tmp_path):
    reference, _ = chapter4
    runs = tmp_path / "runs"
    proc = cli_run("plan", "--profile", "smoke", "--device", "cpu", "--data-dir", str(real_data_dir()),
                   "--runs-dir", str(runs), "--only", "cosine", "plateau-patience10", "--commands")
    commands = proc.stdout.splitlines()
    assert proc.returncode == 0 and len(commands) == 2 and all(" --only " in c for c in commands)
    env = dict(os.environ, OMP_NUM_THREADS="1", PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    for command in commands:  # as a job array or GNU parallel would: one shell line each
        done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr[-3000:]
        assert "in this process on cpu" in done.stdout
    for name in ("cosine", "plateau-patience10"):
        same_records(runs / reference.parent.name / "smoke" / name, reference / name)


# ---------------------------------------------------------------- published records

def test_chapters_read_committed_records_except_for_smoke(tmp_path):
    root = tmp_path
    quick = root / "book" / "records" / "official" / "quick"
    quick.mkdir(parents=True)
    (quick / "records.json").write_text(json.dumps({"exported": "2030-01-31 10:00", "runs": {}}))
    folder, manifest = REC.resolve_runs(root, "quick", "official")
    assert folder == quick and manifest["exported"].startswith("2030-01-31")
    assert REC.resolve_runs(root, "smoke", "official") == (root / "runs" / "official" / "smoke", None)
    assert REC.resolve_runs(root, "quick", "jpeg-q75-copy") == (root / "runs" / "jpeg-q75-copy" / "quick", None)
    assert REC.resolve_runs(root, "quick", "official", "runs") == (root / "runs" / "official" / "quick", None)
    # an explicit folder under book/records is read only even without a records.json
    assert REC.resolve_runs(root, "paper", "official", "book/records")[1] == {}


def publish_records(folder: Path, planned: int, names, status: str = "complete") -> None:
    """Records as `export` writes them: records.json and, per run, config, summary and history."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in [p for p in folder.iterdir() if p.is_dir()]:
        shutil.rmtree(old)
    names = list(names)
    for name in names:
        (folder / name).mkdir()
        (folder / name / "config.json").write_text("{}")
        (folder / name / "summary.json").write_text(json.dumps({"status": status, "iterations_done": 0}))
        (folder / name / "history.csv").write_text("iteration,test_error\n")
        if status == "unfinished":
            (folder / name / "checkpoint.pt").write_bytes(b"")
    (folder / "records.json").write_text(json.dumps({"planned": planned, "runs": {n: {"status": status}
                                                                                for n in names}}))


def test_best_committed_profile(tmp_path):
    assert REC.best_profile(tmp_path, "official") is None
    for profile, n in (("smoke", 24), ("quick", 24), ("paper", 10)):
        publish_records(tmp_path / "book" / "records" / "official" / profile, 24, map(str, range(n)))
    assert REC.best_profile(tmp_path, "official") == "quick"  # smoke is never read from records
    publish_records(tmp_path / "book/records/official/paper", 24, map(str, range(24)))
    assert REC.best_profile(tmp_path, "official") == "paper"  # a tie: the longer budget
    for profile in ("quick", "paper"):
        publish_records(tmp_path / f"book/records/official/{profile}", 24, ["a"])
    assert REC.best_profile(tmp_path, "official") is None  # partial records are never the book's
    publish_records(tmp_path / "book/records/official/paper", 24, map(str, range(24)), status="unfinished")
    assert REC.best_profile(tmp_path, "official") is None  # nor are runs still training


COMMITTED_CPU = ROOT / "book" / "records" / "jpeg-q75-copy" / "cpu"


@pytest.mark.parametrize("damage, message", [
    (lambda f: (f / "records.json").write_text('{"profile": "cpu", "runs": {'), r"records.json is not a valid JSON object"),
    (lambda f: (f / "resnet20-seed0" / "summary.json").write_text('{"status": "compl'),
     r"resnet20-seed0/summary.json is not valid JSON"),
    (lambda f: (f / "resnet20-seed0" / "config.json").unlink(), r"resnet20-seed0/config.json is missing"),
    (lambda f: (f / "resnet20-seed0" / "history.csv").write_text("iteration,test_error\n200,0.5\n"),
     r"resnet20-seed0/history.csv ends at iteration 200, its summary at 1,600"),
    (lambda f: shutil.rmtree(f / "resnet20-seed0"), r"resnet20-seed0/config.json is missing"),
    (lambda f: shutil.copytree(f / "resnet20-seed0", f / "stray"), r"stray/ is not listed in records.json"),
])
def test_damaged_records_fail_loudly_and_say_how_to_restore_them(tmp_path, damage, message):
    """A records folder whose manifest or any run's files are unreadable or disagree is an error
    naming the file and what to do, from `records`, `records --best` (`make book`) and every
    chapter: never a silent fall-back to another profile or to training."""
    if not (COMMITTED_CPU / "records.json").is_file():
        missing("no committed cpu records")
    folder = tmp_path / "book" / "records" / "jpeg-q75-copy" / "cpu"
    shutil.copytree(COMMITTED_CPU, folder)
    assert REC.best_records(tmp_path, "jpeg-q75-copy") == ("cpu", "jpeg-q75-copy")  # intact
    damage(folder)
    restore = r"\. Restore them \(`git checkout -- .*cpu`\) or publish them again"
    for call in (lambda: REC.committed(tmp_path, "jpeg-q75-copy"), lambda: REC.best_records(tmp_path, "official"),
                 lambda: REC.resolve_runs(tmp_path, "cpu", "jpeg-q75-copy")):
        with pytest.raises(RunError, match=r"the records .*cpu are damaged: .*" + message + ".*" + restore):
            call()


def test_records_best_fails_the_make_book_line_on_damaged_records(tmp_path):
    """`make book` reads `records --best`; a damaged records folder stops it with the message."""
    if real_data_dir() is None or not (COMMITTED_CPU / "records.json").is_file():
        missing("needs the data folder and the committed cpu records")
    (tmp_path / "_toc.yml").write_text("root: intro\n")
    folder = tmp_path / "book" / "records" / "jpeg-q75-copy" / "cpu"
    shutil.copytree(COMMITTED_CPU, folder)
    (folder / "records.json").write_text("{")
    proc = subprocess.run([sys.executable, "-m", "resnet_cifar", "records", "--best", "--data-dir",
                           str(real_data_dir())], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode != 0 and proc.stdout == ""
    assert "the records book/records/jpeg-q75-copy/cpu are damaged: records.json is not a valid JSON" in proc.stderr
    makefile = (ROOT / "Makefile").read_text()
    assert "records --best) || exit 1" in makefile  # the book target stops instead of building smoke


def test_make_book_renders_the_datas_own_records_first_else_another_copys(tmp_path):
    def publish(copy, profile, n=24):
        publish_records(tmp_path / "book" / "records" / copy / profile, 24, map(str, range(n)))
    assert REC.best_records(tmp_path, "official") is None
    publish("jpeg-q75-copy", "cpu")
    publish("official", "quick", n=3)  # partial: never rendered
    assert REC.best_records(tmp_path, "official") == ("cpu", "jpeg-q75-copy")
    publish("unverified-copy", "quick")
    publish("official", "quick")
    assert REC.best_records(tmp_path, "jpeg-q75-copy") == ("cpu", "jpeg-q75-copy")  # the data's own first
    assert REC.best_records(tmp_path, "some-copy") == ("quick", "official")  # then the official data's
    with pytest.raises(RunError, match=r"none of profile paper for that copy; committed: jpeg-q75-copy/cpu, "
                                       r"official/quick, unverified-copy/quick\."):
        REC.published(tmp_path, "paper", "official")


def test_partial_exports_add_up_across_machines(tmp_path):
    """Runs published by an earlier export stay published when a later one (another machine,
    without their run folders) adds the runs that finished since."""
    a, b, c = P.plan("cpu", chapters=["05"])[:3]
    target = tmp_path / "records"
    for run in (a, b):
        first = fake_record(tmp_path / "first", run, "cpu", status="complete", iterations_done=1600)
        (first / "history.csv").write_text("iteration,test_error\n1600,0.5\n")
        (first / "model.pt").write_bytes(b"weights")
    config = json.loads((tmp_path / "first" / a.name / "config.json").read_text())
    (tmp_path / "first" / a.name / "config.json").write_text(json.dumps({**config, "runs_dir": str(tmp_path)}))
    REC.export([a, b, c], "cpu", "official", tmp_path / "first", target, partial=True)
    assert json.loads((target / a.name / "config.json").read_text())["runs_dir"] == "runs"  # no builder's path
    assert a.name in REC.KEPT_WEIGHTS["cpu"] and b.name not in REC.KEPT_WEIGHTS["cpu"]
    assert (target / a.name / "model.pt").is_file() and not (target / b.name / "model.pt").exists()
    later = fake_record(tmp_path / "later", c, "cpu", status="complete", iterations_done=1600)
    (later / "history.csv").write_text("iteration,test_error\n1600,0.4\n")
    manifest = REC.export([a, b, c], "cpu", "official", tmp_path / "later", target, partial=True)
    assert set(manifest["runs"]) == {a.name, b.name, c.name}
    assert all((target / r.name / "summary.json").is_file() for r in (a, b, c))
    assert (target / a.name / "history.csv").read_text().endswith("0.5\n")
    with pytest.raises(RunError, match="are not finished"):
        REC.export([a, b, c], "cpu", "official", tmp_path / "empty", tmp_path / "other")


@pytest.mark.parametrize("schedule", [dict(milestones=(12, 18)), dict(schedule="cosine"), dict(warmup=5),
                                      dict(warmup_until_error=0.9, iterations=60, eval_every=10),
                                      dict(schedule="plateau", plateau_patience=0, plateau_threshold=0.5)])
def test_lr_trace_rebuilt_from_config_and_history_equals_the_recorded_one(tiny, dataset, schedule):
    """What the records leave out of a long run (its lr_trace.csv), rebuilt exactly."""
    from resnet_cifar.train import train
    run = train(name="trace", dataset=dataset, **{**tiny, "iterations": 24, "eval_every": 3, **schedule})
    assert run.status == "complete" and len(set(run.lr_trace["lr"])) >= 2  # the lr changes at least once
    rebuilt = REC.rebuild_lr_trace(run.config, run.summary, run.history)
    n = run.summary["iterations_done"]
    assert rebuilt["iteration"].tolist() == run.lr_trace["iteration"].tolist() == list(range(n))
    assert rebuilt["lr"].tolist() == pytest.approx(run.lr_trace["lr"].tolist(), rel=1e-12)
    assert REC.same_trace(run)


@pytest.mark.slow
def test_export_then_chapters_render_from_records_without_training(chapter4, tmp_path, monkeypatch):
    from resnet_cifar import cli
    reference, _ = chapter4
    runs_dir, records = reference.parent.parent, tmp_path / "records"
    data = str(real_data_dir())
    assert cli.main(["export", "--profile", "smoke", "--data-dir", data, "--runs-dir", str(runs_dir)]) == 2
    assert cli.main(["export", "--profile", "smoke", "--data-dir", data, "--runs-dir", str(runs_dir),
                     "--records-dir", str(records)]) == 2  # chapters 2, 3, 5, 6 are not trained
    monkeypatch.setattr(REC, "SMALL_TRACE", 0)  # as for a long run: lr_trace.csv rebuilt, not copied
    assert cli.main(["export", "--profile", "smoke", "--data-dir", data, "--runs-dir", str(runs_dir),
                     "--records-dir", str(records), "--chapters", "04"]) == 0
    published = records / reference.parent.name / "smoke"
    manifest = json.loads((published / "records.json").read_text())
    assert set(manifest["runs"]) == set(CHAPTER4) and manifest["planned"] == len(P.plan("smoke"))  # the profile's
    for name in CHAPTER4:
        assert sorted(p.name for p in (published / name).iterdir()) == ["config.json", "history.csv", "summary.json"]
    before = sorted(str(p) for p in records.rglob("*"))

    ch = book.chapter("smoke", "cpu", data, str(records), 0)
    assert ch.records == manifest and ch.runs_dir == published
    schedules = ch.experiments("04_schedule")["schedules"]
    for run in (runs[0] for runs in schedules.values()):
        name = run.name
        original = load_run(reference / name)
        assert run.summary == original.summary and run.history.equals(original.history)
        assert run.lr_trace["iteration"].tolist() == original.lr_trace["iteration"].tolist()
        assert run.lr_trace["lr"].tolist() == pytest.approx(original.lr_trace["lr"].tolist(), rel=1e-12)
    with pytest.raises(RunError, match="is a published record, and records hold no weights"):
        run.load_model()
    date, commit = manifest["exported"].split(" ")[0], run.summary["git_commit"]
    source, runs_row = ch.source(run), ch.parameters().data.loc["runs", "value"]
    assert source.endswith(f"· published records · {run.summary['device_name'].split(' (')[0]}"), source
    assert f"committed records of {date}" in runs_row and (f", commit {commit}" in runs_row) == bool(commit)
    with pytest.raises(RunError, match=r"'aug-none' is not in the records .* does not train. Train it with "
                                       r"`python -m resnet_cifar run --profile smoke` .* `python -m resnet_cifar export"):
        ch.train("aug-none", dict(crop=False, flip=False, seed=0))
    assert sorted(str(p) for p in records.rglob("*")) == before  # nothing trained or written
    table = ch.plan_table("04")
    assert list(table.index) == CHAPTER4 and (table["state"] == "finished").all()


@pytest.mark.slow
def test_a_rerun_with_other_values_reads_the_records_and_trains_only_its_new_runs(chapter4, tmp_path):
    """Chapter 4 with short_patience=5 over published records of its default runs (a `runs`
    folder beside them, as `chapter()` gives a page that found committed records): the published
    runs are read and nothing is written to the records; plateau-patience5, outside the default
    plan, is trained in the runs folder; plan table, captions and parameters say which is which.
    A default run the records lack is still never trained."""
    from resnet_cifar import cli
    reference, _ = chapter4
    data, records = str(real_data_dir()), tmp_path / "records"
    assert cli.main(["export", "--profile", "smoke", "--data-dir", data, "--runs-dir", str(reference.parent.parent),
                     "--records-dir", str(records), "--chapters", "04"]) == 0
    before = sorted(str(p) for p in records.rglob("*"))
    ch = book.chapter("smoke", "cpu", data, str(records), 0)
    assert ch.train_dir is None  # an explicit folder of records is read only
    ch.train_dir = tmp_path / "runs" / reference.parent.name / "smoke"
    runs = {label: arm[0] for label, arm in ch.experiments("04_schedule", short_patience=5)["schedules"].items()}
    assert list(runs) == ["multistep (paper)", "plateau, patience 1000", "plateau, patience 5", "cosine"]
    new = runs.pop("plateau, patience 5")
    assert not isinstance(new, REC.PublishedRun) and new.run_dir == ch.train_dir / "plateau-patience5"
    assert new.summary["iterations_done"] == 10 and new.config["plateau_patience"] == 5
    assert all(isinstance(r, REC.PublishedRun) and r.run_dir.parent == ch.runs_dir for r in runs.values())
    assert sorted(str(p) for p in records.rglob("*")) == before
    assert ch.outside == {"04_schedule": ["plateau-patience5"]}
    table = ch.plan_table("04")
    assert list(table.index) == ["resnet32-seed0", "plateau-patience1000", "plateau-patience5", "cosine"]
    assert (table["state"] == "finished").all()
    assert table["status"].str.endswith("(published)").tolist() == [True, True, False, True]
    assert "published records + runs trained here" in ch.source(new, *runs.values())
    assert "runs trained here" not in ch.source(*runs.values()) and "published records" not in ch.source(new)
    assert ch.parameters().data.loc["runs", "value"].endswith("(runs outside the default plan: …/smoke)")
    with pytest.raises(RunError, match="'aug-none' is not in the records"):
        ch.train("aug-none", dict(crop=False, flip=False, seed=0))


def test_a_page_that_finds_committed_records_trains_its_other_runs_in_runs():
    """`chapter()` with no runs_dir at a profile with committed records: read them, and train
    what other parameter values make in <root>/runs; an explicit runs_dir is the only folder."""
    if real_data_dir() is None:
        missing("the chapters read the full CIFAR-10 folder")
    from resnet_cifar.commands import dataset_identity
    identity = dataset_identity(str(real_data_dir()))
    if REC.read_manifest(ROOT / "book" / "records" / identity / "cpu") is None:
        missing(f"no committed cpu records of {identity}")
    ch = book.chapter("cpu", "cpu", str(real_data_dir()))
    assert ch.runs_dir == ROOT / "book" / "records" / identity / "cpu" and ch.records is not None
    assert ch.train_dir == ROOT / "runs" / identity / "cpu"
    ch = book.chapter("cpu", "cpu", str(real_data_dir()), "runs")
    assert ch.runs_dir == ROOT / "runs" / identity / "cpu" and ch.records is None and ch.train_dir is None


@pytest.mark.book
def test_a_chapter_builds_from_exported_records(chapter4, tmp_path):
    """build_book.py with --runs-dir at published records: chapter 4 renders from them, and a
    chapter whose runs are not published fails with the message naming `run` and `export`."""
    reference, _ = chapter4
    records = tmp_path / "records"
    proc = cli_run("export", "--profile", "smoke", "--data-dir", str(real_data_dir()), "--runs-dir",
                   str(reference.parent.parent), "--records-dir", str(records), "--chapters", "04")
    assert proc.returncode == 0, proc.stderr
    build = [sys.executable, str(ROOT / "scripts" / "build_book.py"), "--profile", "smoke", "--device", "cpu",
             "--data-dir", str(real_data_dir()), "--runs-dir", str(records), "--no-html", "--out", str(tmp_path / "out")]
    done = subprocess.run(build + ["--chapters", "04", "03"], capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "chapter book/04_schedule.ipynb failed" not in done.stderr
    # resnet32-seed0 is published (chapter 4): chapter 3 stops at its first run that is not
    assert "chapter book/03_augmentation.ipynb failed: RunError: run 'aug-none' is not in the records" in done.stderr
    import nbformat
    nb = nbformat.read(tmp_path / "out" / "stage" / "book" / "04_schedule.ipynb", as_version=4)
    text = json.dumps([o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])])
    assert "committed records of" in text and "[resnet32-seed0] it " not in text  # captions say so; nothing trained
    assert not list(records.rglob("model.pt")) and not list(records.rglob("checkpoint.pt"))


def _readme_script():
    import importlib.util
    spec = importlib.util.spec_from_file_location("readme_results", ROOT / "scripts" / "readme_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_results_are_the_committed_records(tmp_path):
    """README's headline sentence, figure and results table are generated from the committed
    records (`scripts/readme_results.py`), not typed; the check sees a stale block or figure."""
    readme = _readme_script()
    assert readme.problems() == [], "run `.venv/bin/python scripts/readme_results.py` and commit"
    text = readme.README.read_text()
    blocks = dict((m[2], m[3]) for m in readme.BLOCK.finditer(text))
    assert set(blocks) == {"headline", "paper"}
    copy = readme.headline_copy()
    run = readme.C.paper_run(copy)
    assert f"{run.summary['iterations_done']:,} of 64,000 iterations" in blocks["headline"] or run.complete
    assert f"**{100 * run.summary['final_test_error']:.2f} %**" in blocks["headline"]
    assert f"| {readme.C.PAPER_RUN} | {run.status} | {run.summary['iterations_done']:,} |" in blocks["paper"]
    # a typed-over number and a figure of other records are both caught
    stale = text.replace(f"**{100 * run.summary['final_test_error']:.2f} %**", "**7.51 %**")
    assert readme.rendered(stale, copy) == text
    figure = tmp_path / "figure.png"
    readme.draw(None, figure)
    assert readme.drawn_from(figure) == "none" != readme.stamp(run) == readme.drawn_from(ROOT / readme.FIGURE)


def test_run_does_not_train_again_what_the_committed_records_hold(tmp_path, capsys):
    """Published runs (another machine trained them) are skipped by `run` (`--retrain-published`
    trains them again, as `make book PROFILE=...` does): nothing is trained or written."""
    if real_data_dir() is None:
        missing("the command line reads the full CIFAR-10 folder")
    from resnet_cifar import cli
    from resnet_cifar.commands import dataset_identity
    identity = dataset_identity(str(real_data_dir()))
    published = ROOT / "book" / "records" / identity / "cpu"
    if not (published / "resnet32-seed0" / "summary.json").is_file():
        missing(f"no committed cpu records of {identity}")
    args = ["run", "--profile", "cpu", "--device", "cpu", "--only", "resnet32-seed0", "--data-dir",
            str(real_data_dir()), "--runs-dir", str(tmp_path / "runs")]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "1 run(s) of the plan are published in" in out and "not trained again: resnet32-seed0" in out
    assert not (tmp_path / "runs" / identity / "cpu" / "resnet32-seed0").exists()
    # `plan` says the same: published, nothing left to run (with --retrain-published, `run` trains it)
    assert cli.main(["plan", *args[1:]]) == 0
    out = capsys.readouterr().out
    assert "complete (published)" in out and "1 runs: 1 finished" in out
    assert f"1 of them published in book/records/{identity}/cpu: `run` does not train them again" in out
    assert cli.main(["plan", "--commands", *args[1:]]) == 0 and capsys.readouterr().out == ""


@pytest.mark.parametrize("profile", sorted(REC.KEPT_WEIGHTS))
def test_the_runs_published_with_weights_are_runs_of_their_plan(profile):
    """A name in KEPT_WEIGHTS that no run of the plan has would publish no weights, silently."""
    assert set(REC.KEPT_WEIGHTS[profile]) <= {r.name for r in P.plan(profile)}
