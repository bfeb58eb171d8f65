"""scripts/gpu_check.sh, dry-run on the CPU: every step runs, the outputs are the ones the
book reads, nothing it runs needs fvcore, matplotlib or tqdm, and a failed step stops the
check with a message that names it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from resnet_cifar import bench

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def _run(tmp_path: Path, data_dir: Path, **env) -> subprocess.CompletedProcess:
    """The script with the GPU machine's packages: fvcore, matplotlib and tqdm made unimportable."""
    stubs = tmp_path / "stubs"
    for name in ("fvcore", "matplotlib", "tqdm"):
        (stubs / name).mkdir(parents=True, exist_ok=True)
        (stubs / name / "__init__.py").write_text(f"raise ImportError('{name} is not installed on this machine')\n")
    settings = dict(PYTHON=sys.executable, PYTHONPATH=str(stubs), OUT=str(tmp_path / "out"), OMP_NUM_THREADS="1",
                    RUNS_DIR=str(tmp_path / "runs"), DATA_DIR=str(data_dir), **env)
    return subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env={**os.environ, **settings}, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow
def test_dry_run_on_the_cpu_writes_the_check_and_a_benchmark_record(tmp_path, training_data):
    proc = _run(tmp_path, training_data[0], DEVICE="cpu", MODES="eager", PROBE_EPOCHS="1",
                TRAIN_ARGS="--depth 8 --subset 320 --batch-size 32", PAPER_ARGS="--iterations 20",
                BENCH_ARGS="--quick --depth 8 --batch-size 16 --train-images 64 --variants fp32 tf32 --workers 0")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "out"
    assert {"check.log", "check.json", "probe-eager.log", "paper.log", "paper-history.csv", "bench.log",
            "bench-cpu.json"} <= {p.name for p in out.iterdir()}
    check = json.loads((out / "check.json").read_text())
    assert check["mode"] == "eager" and check["probes"]["eager"]["iterations_done"] == 10
    paper = check["paper"]
    assert paper["status"] == "complete" and paper["iterations_done"] == 20 and paper["train_images_per_s"] > 0
    assert check["paper_schedule_s"]["steps"] == pytest.approx(20 * 32 / paper["train_images_per_s"])
    record = bench.load_records(out)["bench-cpu"]  # the records format the appendix reads
    assert [v["variant"] for v in record["variants"]] == ["fp32"] and record["skipped"][0]["variant"] == "tf32"
    summary = json.loads((tmp_path / "runs" / "paper" / "summary.json").read_text())
    assert summary["flops"] is None and "fvcore is not installed" in summary["flops_note"]
    assert "done" in (out / "check.log").read_text().splitlines()[-1]


def test_a_failed_step_stops_the_check_and_names_it(tmp_path, training_data):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: DEVICE=cuda would not fail")
    proc = _run(tmp_path, training_data[0], DEVICE="cuda")
    assert proc.returncode != 0
    assert "FAILED at step 'environment'" in proc.stderr
    assert "no usable CUDA GPU" in (tmp_path / "out" / "check.log").read_text()
    assert not (tmp_path / "out" / "check.json").exists()
