"""The logic of the GPU and torchrun code paths, pinned down on the CPU: process start-up
order, refusals before any collective, evaluation shared between processes, warm-up kept
out of the speed, small checkpoints, float64 kept float64, deferred loss reads that name
the diverging step exactly, and the numerics every run records."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest
import torch
import torch.distributed as dist

from resnet_cifar import devices, runs
from resnet_cifar import train as T
from resnet_cifar.config import TrainConfig
from resnet_cifar.runs import RunError, load_run
from resnet_cifar.train import train


# ---------------------------------------------------------------- process start-up (torchrun)

def _torchrun_env(monkeypatch, world=2, local_rank=1):
    monkeypatch.setenv("WORLD_SIZE", str(world))
    monkeypatch.setenv("LOCAL_RANK", str(local_rank))
    monkeypatch.setenv("RANK", str(local_rank))


def test_each_process_takes_its_gpu_before_the_process_group(monkeypatch):
    """NCCL needs one GPU per process: the device comes from LOCAL_RANK and is set, then
    passed as device_id, before init_process_group (and so before any barrier)."""
    _torchrun_env(monkeypatch, local_rank=1)
    calls = []
    monkeypatch.setattr(T, "pick_device", lambda name: torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(("set_device", str(d))))
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group",
                        lambda backend, device_id=None: calls.append(("init", backend, str(device_id))))
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    rank, world, device, made = T.start_processes(TrainConfig(device="cuda").validate())
    assert calls == [("set_device", "cuda:1"), ("init", "nccl", "cuda:1")]
    assert (rank, world, str(device), made) == (1, 2, "cuda:1", True)


@pytest.mark.parametrize("change, error, message", [
    (dict(compile=True, compile_mode="reduce-overhead"), ValueError, r"CUDA graphs.*DistributedDataParallel"),
    (dict(sync_bn=True), RunError, r"sync_bn needs CUDA"),
    (dict(wait=True), RunError, r"wait=True is for single-process runs"),
    (dict(batch_size=33), ValueError, r"batch_size 33 must be divisible by the 2 processes"),
])
def test_torchrun_refusals_come_before_any_collective(monkeypatch, change, error, message):
    _torchrun_env(monkeypatch)
    monkeypatch.setattr(dist, "init_process_group", lambda *a, **k: pytest.fail("process group started"))
    with pytest.raises(error, match=message):
        T.start_processes(TrainConfig(device="cpu", **change).validate())


GLOO_SCRIPT = textwrap.dedent("""
    import json, os, sys, torch
    torch.set_num_threads(1)
    from resnet_cifar import load_cifar10, runs
    from resnet_cifar import train as T
    rank = int(os.environ["RANK"])
    decisions = []  # this rank's plateau scheduler: (val loss it saw, lr it set)
    step = torch.optim.lr_scheduler.ReduceLROnPlateau.step
    def logged(self, metric, *a, **k):
        step(self, metric, *a, **k)
        decisions.append((round(float(metric), 12), self.optimizer.param_groups[0]["lr"]))
    torch.optim.lr_scheduler.ReduceLROnPlateau.step = logged
    kw = json.loads(sys.argv[1])
    dataset = load_cifar10(kw.pop("data_dir"), expect_counts=tuple(kw.pop("expect_counts")))
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"rank{rank}.json")
    try:
        run = T.train(dataset=dataset, **kw)
        result = dict(rank=rank, status=run.status, decisions=decisions)
    except Exception as e:
        result = dict(rank=rank, error=f"{type(e).__name__}: {e}")
    with open(out, "w") as f:  # one file per process: their stdout lines can interleave
        json.dump(result, f)
    sys.exit(3 if "error" in result else 0)
""")


def _results(tmp_path) -> list[dict]:
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1) if (tmp_path / f"rank{r}.json").is_file()]


def _gloo(tmp_path, training_data, timeout=300, **config) -> subprocess.CompletedProcess:
    script = tmp_path / "gloo_train.py"
    script.write_text(GLOO_SCRIPT)
    args = dict(config, data_dir=str(training_data[0]), expect_counts=list(training_data[1]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
           json.dumps(args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=tmp_path,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
def test_two_processes_evaluate_one_model_and_take_the_same_plateau_decisions(tmp_path, training_data, dataset):
    """Without SyncBN each process's BN statistics drift apart; evaluation gives every
    process rank 0's statistics and all-reduces the shards' sums, so the plateau scheduler
    sees the same validation loss everywhere and both lower the lr at the same evaluations.
    The recorded test error is that of the saved model evaluated in one process."""
    runs_dir = tmp_path / "runs"
    proc = _gloo(tmp_path, training_data, name="plateau", device="cpu", depth=8, subset=256, batch_size=32,
                 iterations=24, eval_every=4, schedule="plateau", plateau_patience=0, plateau_threshold=0.5,
                 lr=0.05, progress="none", runs_dir=str(runs_dir))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = _results(tmp_path)
    assert [r["rank"] for r in results] == [0, 1]
    assert results[0]["decisions"] == results[1]["decisions"] and len(results[0]["decisions"]) == 6
    assert len({lr for _, lr in results[0]["decisions"]}) > 1  # the scheduler did lower the lr
    run = load_run(runs_dir / "plateau")
    config = TrainConfig(**run.config)
    from resnet_cifar.data import prepare_data
    data = prepare_data(config, torch.device("cpu"), dataset)
    single = T.evaluate(run.load_model(), data.test_x, data.test_y)
    assert single["error"] == pytest.approx(run.summary["final_test_error"], abs=1e-12)


@pytest.mark.slow
def test_a_lock_rank0_cannot_take_stops_every_process(tmp_path, training_data):
    """Rank 0 finds the run locked by a live process: both processes stop with the lock's
    message at once, instead of the other ranks waiting for a collective until a timeout."""
    run_dir = tmp_path / "runs" / "locked"
    run_dir.mkdir(parents=True)
    holder = subprocess.Popen(["sleep", "120"])
    try:
        (run_dir / ".lock").write_text(str(holder.pid))
        start = time.monotonic()
        proc = _gloo(tmp_path, training_data, timeout=240, name="locked", device="cpu", depth=8, subset=256,
                     batch_size=32, iterations=4, progress="none", runs_dir=str(tmp_path / "runs"))
        took = time.monotonic() - start
    finally:
        holder.kill()
        holder.wait()
    errors = [r.get("error", "") for r in _results(tmp_path)]
    assert proc.returncode != 0 and len(errors) == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert all(f"being trained by process {holder.pid}" in error for error in errors), errors
    assert took < 200  # the collective timeout is 30 minutes: nobody waited for it


# ---------------------------------------------------------------- one process

def test_warm_up_is_timed_apart_from_the_steady_rate(tiny, dataset, monkeypatch):
    """The first steps after a start (torch.compile, CUDA graph recording) are slow: here the
    first step sleeps 1.5 s. The speed comes from the steps after the warm-up only."""
    real_step, calls = T.train_step, []

    def slow_first(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            time.sleep(1.5)
        return real_step(*args, **kwargs)

    monkeypatch.setattr(T, "train_step", slow_first)
    s = train(name="warm", dataset=dataset, **{**tiny, "iterations": 24, "eval_every": 12}).summary
    assert s["warmup_iterations"] == T.STARTUP_ITERATIONS and s["warmup_time_s"] >= 1.5
    steady_s = s["wall_time_s"] - s["warmup_time_s"]
    assert s["train_images_per_s"] == pytest.approx((24 - T.STARTUP_ITERATIONS) * 32 / steady_s)
    assert s["train_images_per_s"] > 1.3 * 24 * 32 / s["wall_time_s"]  # the sleep is not in it


def test_checkpoints_stay_small_and_the_lr_trace_is_rebuilt(tiny, dataset):
    """A checkpoint holds the lr only where it changed, not a row per iteration (a 64k-row
    trace rewritten every epoch grew quadratically); lr_trace.csv still has every iteration."""
    settings = {**tiny, "iterations": 40, "eval_every": 8, "milestones": (20, 30)}
    run = train(name="small", dataset=dataset, **settings)
    saved = torch.load(run.run_dir / "checkpoint.pt", weights_only=True)
    assert "lr_trace" not in saved and saved["lr_changes"] == [(0, 0.1), (20, 0.1 * 0.1), (30, 0.1 * 0.1 ** 2)]
    assert run.lr_trace["iteration"].tolist() == list(range(40))
    config = TrainConfig(**run.config)
    assert run.lr_trace["lr"].tolist() == [T.lr_at(config, i) for i in range(40)]
    assert runs.git_commit.cache_info().currsize == 1  # looked up once per process


def test_float64_runs_compute_the_loss_in_float64(tiny, dataset, monkeypatch):
    seen = []
    real = T.F.cross_entropy
    monkeypatch.setattr(T.F, "cross_entropy", lambda logits, *a, **k: seen.append(logits.dtype) or real(logits, *a, **k))
    train(name="f64", dataset=dataset, **{**tiny, "dtype": "float64", "iterations": 2, "eval_every": 2})
    assert seen and set(seen) == {torch.float64}


def test_deferred_reads_keep_nothing_after_the_diverging_step(tiny, dataset, monkeypatch):
    """Losses read every 8 steps: the run is cut back to the first non-finite step, so its
    lr trace, iteration count and last history row describe exactly the steps it kept."""
    settings = {**tiny, "iterations": 16, "eval_every": 16, "lr": 1e6, "momentum": 0.0}
    ref = train(name="per-step", dataset=dataset, **settings)
    monkeypatch.setattr(T, "loss_read_interval", lambda device: 8)
    deferred = train(name="deferred", dataset=dataset, **settings)
    assert ref.diverged and deferred.diverged
    done = deferred.summary["iterations_done"]
    assert done == ref.summary["iterations_done"] < 8
    assert len(deferred.lr_trace) == done and deferred.history["iteration"].tolist() == [done]
    assert deferred.history["wall_time"].iloc[-1] == pytest.approx(deferred.summary["wall_time_s"])


@pytest.mark.parametrize("dtype, tf32", [("float32", False), ("tf32", True)])
def test_numerics_are_set_and_recorded(tiny, dataset, dtype, tf32):
    run = train(name=dtype, dataset=dataset, **{**tiny, "dtype": dtype, "iterations": 2, "eval_every": 2})
    assert run.summary["numerics"] == dict(dtype=dtype, tf32_matmul=tf32, tf32_cudnn=tf32, cudnn_benchmark=False)
    assert torch.backends.cudnn.allow_tf32 is tf32 and torch.backends.cuda.matmul.allow_tf32 is tf32
    devices.set_numerics("float32", torch.device("cpu"))


# ---------------------------------------------------------------- devices

def test_a_missing_device_names_the_ones_there(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(devices.DeviceError, match=r"device 'cuda' is not available on this machine; available: cpu"):
        devices.pick_device("cuda")
    assert devices.pick_device("auto").type in ("cpu", "mps")


def test_cli_train_on_a_missing_device_is_one_line(monkeypatch, capsys, tmp_path):
    from resnet_cifar import cli
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli.main(["train", "--device", "cuda", "--runs-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: device 'cuda' is not available") and err.count("\n") == 1


def test_cpu_label_names_the_model_and_its_features(monkeypatch):
    devices.cpu_model.cache_clear(), devices.cpu_features.cache_clear()
    label = devices.device_label("cpu")
    assert devices.cpu_model() in label and f"{torch.get_num_threads()} of {os.cpu_count()} threads" in label
    for flag in devices.cpu_features():
        assert devices.FEATURE_NAMES[flag] in label
    monkeypatch.setattr(devices, "cpu_features", lambda: ("avx2",))
    assert not devices.native_bf16(torch.device("cpu"))
    monkeypatch.setattr(devices, "cpu_features", lambda: ("avx2", "avx512f", "avx512_bf16"))
    assert devices.native_bf16(torch.device("cpu"))


# ---------------------------------------------------------------- the paper's ResNet-110 warm-up rule

def test_warmup_until_error_is_a_rule_not_a_length(tiny, dataset):
    """lr 0.01 until the training error of 50 iterations is below the threshold, then the
    schedule's 0.1: with threshold 1.0 (always met) the lr goes up after the first 50
    iterations; with a threshold nothing reaches it stays 0.01 to the end."""
    settings = {**tiny, "iterations": 100, "eval_every": 50, "milestones": (1000,)}
    early = train(name="met", dataset=dataset, warmup_until_error=1.0, **settings)
    assert early.summary["lr_warmup_ended_at"] == 50
    assert set(early.lr_trace["lr"][:50]) == {0.01} and set(early.lr_trace["lr"][50:]) == {0.1}
    never = train(name="never", dataset=dataset, warmup_until_error=1e-9, **settings)
    assert never.summary["lr_warmup_ended_at"] is None and set(never.lr_trace["lr"]) == {0.01}
    with pytest.raises(ValueError, match="warmup_until_error must be an error rate"):
        TrainConfig(warmup_until_error=80).validate()
