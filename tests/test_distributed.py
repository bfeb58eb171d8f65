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


# `python -m resnet_cifar` that also saves, per rank, the first batches its steps saw and its
# final parameters (into $RECORD_DIR), for the test below.
RECORDING_MAIN = textwrap.dedent("""
    import os, sys, torch
    from resnet_cifar import runs, train as T
    rank, out, seen = int(os.environ["RANK"]), os.environ["RECORD_DIR"], []
    real_step, real_finish = T.train_step, runs.Record.finish
    def step(model, optimizer, x, y, lr, autocast_dtype=None):
        seen.append((x.clone(), y.clone()))
        return real_step(model, optimizer, x, y, lr, autocast_dtype)
    def finish(self, state, status, model, optimizer, plateau):
        params = {k: v.detach().clone() for k, v in model.named_parameters()}
        torch.save(dict(params=params, batches=seen[:3]), f"{out}/rank{rank}.pt")
        return real_finish(self, state, status, model, optimizer, plateau)
    T.train_step, runs.Record.finish = step, finish
    from resnet_cifar.cli import main
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.slow
def test_each_rank_trains_its_share_of_the_batch_and_the_ranks_keep_one_model(tmp_path, training_data, dataset):
    """Under torchrun, rank k's batch is the k-th half of the batch one process would train (the
    same images; augmentation off here, as each rank draws its own), and after training every
    rank holds the same weights."""
    import torch
    from resnet_cifar.config import TrainConfig
    from resnet_cifar.data import TrainBatches, prepare_data
    script = tmp_path / "recording_main.py"
    script.write_text(RECORDING_MAIN)
    settings = dict(depth=8, subset=256, batch_size=32, iterations=4, eval_every=4, milestones=(1000,), lr=0.05,
                    device="cpu", data_dir=str(training_data[0]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
           "train", "--progress", "none", "--name", "ddp", "--runs-dir", str(tmp_path / "runs"), "--no-crop",
           "--no-flip"]
    for key, value in settings.items():
        cmd += [f"--{key.replace('_', '-')}", *map(str, value if isinstance(value, tuple) else [value])]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RECORD_DIR": str(tmp_path)}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    config = TrainConfig(**settings, crop=False, flip=False)
    alone = TrainBatches(prepare_data(config, torch.device("cpu"), dataset), config)
    for it in range(3):
        (x0, y0), (x1, y1) = ranks[0]["batches"][it], ranks[1]["batches"][it]
        x, y = alone(it)
        assert len(y0) == len(y1) == 16
        assert torch.equal(torch.cat([y0, y1]), y) and torch.equal(torch.cat([x0, x1]), x)
    assert ranks[0]["params"].keys() == ranks[1]["params"].keys()
    for name, value in ranks[0]["params"].items():
        assert torch.equal(value, ranks[1]["params"][name]), name
