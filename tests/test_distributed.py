"""Multi-process training: `torchrun --nproc_per_node=2 -m resnet_cifar train ...` with the
gloo backend on the CPU (the paper trained on two GPUs)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from resnet_cifar import load_run

# `python -m resnet_cifar` with one addition: on a rank other than 0, writing a run record
# file (json, csv, checkpoint, weights) raises, so the run fails if rank 1 writes anything.
GUARDED_MAIN = textwrap.dedent("""
    import os, sys
    from resnet_cifar import runs
    rank = int(os.environ["RANK"])
    if rank != 0:
        def refuse(*args, **kwargs):
            raise AssertionError(f"rank {rank} wrote a run file: {args[-1]}")
        runs.write_json = runs.write_csv = runs.save_atomic = refuse
    from resnet_cifar.cli import main
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.slow
def test_torchrun_two_processes_gloo(tmp_path, training_data):
    """2 processes x 16 images = the global batch of 32; 40 iterations without augmentation
    on 256-image subsets: the run completes, one record is written (by rank 0), the
    summary says world_size 2, and the training loss falls."""
    data_dir = training_data[0]
    script = tmp_path / "guarded_main.py"
    script.write_text(GUARDED_MAIN)
    runs = tmp_path / "runs"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
           "train", "--device", "cpu", "--depth", "8", "--subset", "256", "--batch-size", "32",
           "--iterations", "40", "--eval-every", "10", "--milestones", "1000", "--lr", "0.05",
           "--no-crop", "--no-flip", "--progress", "none", "--name", "ddp", "--runs-dir", str(runs),
           "--data-dir", str(data_dir)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    assert [p.name for p in runs.iterdir()] == ["ddp"]
    files = sorted(p.name for p in (runs / "ddp").iterdir())
    assert files == ["checkpoint.pt", "config.json", "history.csv", "lr_trace.csv", "model.pt", "summary.json"]
    printed = json.loads(proc.stdout[proc.stdout.index("{"):])  # exactly one summary: rank 0's
    run = load_run(runs / "ddp")
    assert printed == run.summary
    assert run.status == "complete" and run.summary["world_size"] == 2
    assert run.summary["iterations_done"] == 40 and len(run.lr_trace) == 40
    assert run.history["iteration"].tolist() == [10, 20, 30, 40]
    first, last = run.history["train_loss"].iloc[0], run.history["train_loss"].iloc[-1]
    assert last < 0.85 * first, run.history[["iteration", "train_loss"]]


@pytest.mark.slow
def test_sync_bn_on_cpu_is_refused_with_advice(tmp_path, training_data):
    """SyncBatchNorm runs only on GPUs: a 2-process CPU run with --sync-bn stops with a
    message that says what to do, from both ranks, without hanging."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
           "resnet_cifar", "train", "--device", "cpu", "--depth", "8", "--subset", "256", "--batch-size", "32",
           "--iterations", "2", "--sync-bn", "--progress", "none", "--runs-dir", str(tmp_path / "runs"),
           "--data-dir", str(training_data[0])]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode != 0
    assert "sync_bn needs CUDA" in proc.stdout + proc.stderr and "--no-sync-bn for a CPU run" in proc.stdout + proc.stderr
