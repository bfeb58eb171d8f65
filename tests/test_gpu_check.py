"""scripts/gpu_check.sh, dry-run on the CPU: every step runs, the outputs are the ones the
book reads, nothing it runs needs fvcore, matplotlib, tqdm or psutil, the check ends within its
BUDGET, a bad BUDGET is refused, a failed environment stops the check with a message that
names it, and a later failed step is recorded while the check goes on."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from resnet_cifar.records import load_records

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def _run(tmp_path: Path, data_dir: Path, **env) -> subprocess.CompletedProcess:
    """The script with the GPU machine's packages: fvcore, matplotlib, tqdm and psutil made unimportable."""
    stubs = tmp_path / "stubs"
    for name in ("fvcore", "matplotlib", "tqdm", "psutil"):
        (stubs / name).mkdir(parents=True, exist_ok=True)
        (stubs / name / "__init__.py").write_text(f"raise ImportError('{name} is not installed on this machine')\n")
    settings = dict(PYTHON=sys.executable, PYTHONPATH=str(stubs), OUT=str(tmp_path / "out"), OMP_NUM_THREADS="1",
                    RUNS_DIR=str(tmp_path / "runs"), DATA_DIR=str(data_dir), **env)
    return subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env={**os.environ, **settings}, capture_output=True,
                          text=True, timeout=600)


TINY = dict(DEVICE="cpu", MODES="eager", PROBE_EPOCHS="1", TRAIN_ARGS="--depth 8 --subset 320 --batch-size 32",
            PAPER_ARGS="--iterations 20", FUSED="1 2",
            BENCH_ARGS="--quick --depth 8 --batch-size 16 --train-images 64 --variants fp32 tf32 --workers 0 "
                       "--seconds 0.2 --rounds 2")
STEPS = ("environment", "probe-eager", "benchmark", "paper")


@pytest.mark.slow
def test_dry_run_on_the_cpu_writes_the_check_and_a_benchmark_record(tmp_path, training_data):
    """A budget the tiny steps fit in: every step finishes, the check ends early."""
    proc = _run(tmp_path, training_data[0], BUDGET="400", PLAN="none", **TINY)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "out"
    assert {"check.log", "check.json", "probe-eager.log", "paper.log", "paper-history.csv", "bench.log",
            "bench-cpu.json"} <= {p.name for p in out.iterdir()}
    check = json.loads((out / "check.json").read_text())
    assert check["budget_s"] == 400 and check["elapsed_s"] <= 400
    assert set(STEPS) <= set(check["steps"]) and "plan" not in check["steps"]
    for step in STEPS:
        assert check["steps"][step]["status"] == "done" and 0 <= check["steps"][step]["seconds"]
    assert sum(check["steps"][s]["seconds"] for s in STEPS) <= check["elapsed_s"]
    # the fused figures: printed first (they count if the step is cut), then in the record and check.json
    assert [line.split(":")[0] for line in (out / "bench.log").read_text().splitlines()
            if line.startswith("fused ")] == ["fused 1", "fused 2"]
    assert [f["n"] for f in check["fused"]] == [1, 2] and all(f["ratio"] > 0 for f in check["fused"])
    assert check["mode"] == "eager" and check["probes"]["eager"]["iterations_done"] == 10
    paper = check["paper"]
    assert paper["status"] == "complete" and paper["iterations_done"] == 20 and paper["train_images_per_s"] > 0
    assert check["paper_schedule_s"]["steps"] == pytest.approx(20 * 32 / paper["train_images_per_s"])
    record = load_records(out)["bench-cpu"]  # the records format the appendix reads
    assert [v["variant"] for v in record["variants"]] == ["fp32"] and record["skipped"][0]["variant"] == "tf32"
    assert [r["n"] for r in record["fused"]] == [1, 2]
    assert record["info"]["other_load"]["before"] is None  # no psutil there: the load is not sampled
    summary = json.loads((tmp_path / "runs" / "paper" / "summary.json").read_text())
    assert summary["flops"] is None and "fvcore is not installed" in summary["flops_note"]
    assert "done" in (out / "check.log").read_text().splitlines()[-1]


@pytest.mark.slow
def test_the_check_ends_within_its_budget_and_goes_on_past_a_failed_step(tmp_path, training_data):
    """BUDGET=60 with a benchmark that fails (fp16 is not a variant: bench refuses it) and a plan
    that cannot finish in it. Past the environment a failed step does not cost the others'
    figures: the paper step still runs, the plan is stopped at the budget's end, the check ends
    within the budget (and a little slack for the interpreter's exit), records every step's
    seconds in check.json and exits 1 naming the failed step."""
    start = time.monotonic()
    proc = _run(tmp_path, training_data[0], BUDGET="60", PLAN="smoke", **{**TINY, "BENCH_ARGS": "--variants fp16"})
    wall = time.monotonic() - start
    assert proc.returncode == 1 and "FAILED at step 'benchmark'" in proc.stderr, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert wall <= 60 + 15, wall
    check = json.loads((tmp_path / "out" / "check.json").read_text())
    assert check["budget_s"] == 60 and check["elapsed_s"] <= 60
    assert set(STEPS) | {"plan"} <= set(check["steps"])
    assert check["steps"]["benchmark"]["status"] == "failed (exit 2)"
    assert check["steps"]["paper"]["status"] == "done" and check["paper"]["iterations_done"] == 20
    for step, outcome in check["steps"].items():
        assert outcome["status"] in ("done", "cut", "skipped") or step == "benchmark", (step, outcome)
        assert 0 <= outcome["seconds"] and (outcome["status"] != "cut" or outcome["seconds"] >= outcome["limit_s"])
    assert sum(o["seconds"] for o in check["steps"].values()) <= check["elapsed_s"]
    plan = check["steps"]["plan"]
    assert plan["status"] == "cut" or plan["note"] == "no time left", plan  # never "needs run --fuse": it has it
    if plan["status"] == "cut":  # its note counts the runs the plan finished before the budget's end
        finished = [p for p in (tmp_path / "runs").glob("*/smoke/*/summary.json")
                    if json.loads(p.read_text())["status"] in ("complete", "diverged")]
        assert plan["note"] == f"{len(finished)} runs finished", (plan, finished)


@pytest.mark.parametrize("budget, message", [("ten", "positive whole number"), ("0", "positive whole number"),
                                             ("5", "too short to run anything")])
def test_a_bad_budget_is_refused_with_what_to_give(tmp_path, budget, message):
    proc = _run(tmp_path, tmp_path, BUDGET=budget, DEVICE="cpu")
    assert proc.returncode == 2 and message in proc.stderr and "BUDGET" in proc.stderr
    assert not (tmp_path / "out").exists()  # refused before anything ran


def test_a_failed_step_stops_the_check_and_names_it(tmp_path, training_data):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: DEVICE=cuda would not fail")
    proc = _run(tmp_path, training_data[0], DEVICE="cuda")
    assert proc.returncode != 0
    assert "FAILED at step 'environment'" in proc.stderr
    assert "no usable CUDA GPU" in (tmp_path / "out" / "check.log").read_text()
    assert not (tmp_path / "out" / "check.json").exists()
