"""Robustness: runs survive kills, refuse to share a folder, stop on divergence, and bad
input ends with one clear message and no half-written run record."""
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import THREADS
from resnet_cifar import book
from resnet_cifar import data as D
from resnet_cifar import runs as R
from resnet_cifar import train as T
from resnet_cifar.config import TrainConfig, profile_config
from resnet_cifar.runs import RunError, load_run
from resnet_cifar.train import train

# A training process the tests can kill or race: the config comes as JSON in argv[1].
SCRIPT = textwrap.dedent(f"""
    import json, sys, torch
    torch.set_num_threads({THREADS})
    from resnet_cifar import load_cifar10
    from resnet_cifar.config import TrainConfig
    from resnet_cifar.fused import train_group
    from resnet_cifar.train import train
    kw = json.loads(sys.argv[1])
    dataset = load_cifar10(kw.pop("data_dir"), expect_counts=tuple(kw.pop("expect_counts")))
    seeds = kw.pop("fused_seeds", None)  # train these seeds as one fused group
    if seeds:
        runs = train_group([TrainConfig(**kw, seed=s) for s in seeds], dataset=dataset)
        print("STATUS", *[r.status for r in runs], flush=True)
    else:
        print("STATUS", train(dataset=dataset, **kw).status, flush=True)
""")


def _start(training_data, **config) -> subprocess.Popen:
    args = dict(config, data_dir=str(training_data[0]), expect_counts=list(training_data[1]))
    return subprocess.Popen([sys.executable, "-c", SCRIPT, json.dumps(args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(proc, run_dir: Path, done: int, timeout: float = 240) -> dict:
    """Poll summary.json until the run reports `done` iterations (it is written
    atomically, so a read never sees half a file)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"training process ended early (rc {proc.returncode}):\n{out}\n{err[-3000:]}")
        try:
            summary = json.loads((run_dir / "summary.json").read_text())
        except (OSError, ValueError):
            summary = {}
        if summary.get("iterations_done", -1) >= done:
            return summary
        time.sleep(0.02)
    proc.kill()
    pytest.fail(f"no progress to iteration {done} in {timeout}s")


def _weights(run_dir: Path) -> dict:
    return torch.load(run_dir / "model.pt", weights_only=True)


def _assert_identical_runs(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key
    ra, rb = load_run(a), load_run(b)
    assert ra.history.drop(columns="wall_time").equals(rb.history.drop(columns="wall_time"))
    assert ra.lr_trace.equals(rb.lr_trace)


def _no_complete_record(runs_dir: Path) -> None:
    for path in Path(runs_dir).rglob("summary.json"):
        assert json.loads(path.read_text())["status"] != "complete", path


# ---------------------------------------------------------------- checkpoints and resume

def test_checkpoints_every_k_iterations_atomically(tiny, dataset, monkeypatch):
    saved = []
    real_save = R.save_atomic

    def spy(obj, path):
        real_save(obj, path)
        assert not path.with_name(path.name + ".tmp").exists()
        if path.name == "checkpoint.pt":
            saved.append(torch.load(path, weights_only=True)["iteration"])

    monkeypatch.setattr(R, "save_atomic", spy)
    train(name="ck", dataset=dataset, **{**tiny, "iterations": 7, "checkpoint_every": 2})
    assert saved == [2, 4, 6, 7]  # every 2 iterations, and the final state


def test_checkpoint_write_failure_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    R.save_atomic({"iteration": 1}, path)

    def dies_half_way(obj, f):
        Path(f).write_bytes(b"PK\x03\x04 half a zip")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(OSError):
        R.save_atomic({"iteration": 2}, path)
    assert torch.load(path, weights_only=True) == {"iteration": 1}


def _interrupt_at(monkeypatch, iteration: int):
    """Make the next (fresh) training run raise KeyboardInterrupt (Ctrl-C) when it reaches
    `iteration`: the step of iteration k is the loop's (k+1)-th call of `train_step`."""
    real_step, calls = T.train_step, []

    def step(*args, **kwargs):
        if len(calls) == iteration:
            raise KeyboardInterrupt
        calls.append(1)
        return real_step(*args, **kwargs)

    monkeypatch.setattr(T, "train_step", step)


def test_ctrl_c_then_resume_equals_an_uninterrupted_run(tiny, dataset, tmp_path):
    settings = {**tiny, "iterations": 8, "eval_every": 4, "checkpoint_every": 2}
    with pytest.MonkeyPatch.context() as mp:
        _interrupt_at(mp, 5)  # after the checkpoint at 4: iteration 4 is redone on resume
        with pytest.raises(KeyboardInterrupt):
            train(name="r", dataset=dataset, **settings)
    run_dir = Path(tiny["runs_dir"]) / "r"
    summary = load_run(run_dir).summary
    # the record claims only what its checkpoint holds: iteration 4, with its history
    assert summary["status"] == "failed" and summary["iterations_done"] == 4
    assert summary["status_detail"] == "interrupted at iteration 5; its checkpoint holds iteration 4, where it resumes"
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["iteration"] == 4
    assert load_run(run_dir).history["iteration"].tolist() == [4]
    assert not (run_dir / "model.pt").exists() and not (run_dir / ".lock").exists()
    assert R.decide(TrainConfig(name="r", **settings), run_dir) == "resume"
    resumed = train(name="r", dataset=dataset, **settings)
    assert resumed.status == "complete" and resumed.summary["iterations_done"] == 8
    straight = train(name="r", dataset=dataset, **{**settings, "runs_dir": str(tmp_path / "straight")})
    _assert_identical_runs(resumed.run_dir, straight.run_dir)


def test_an_unfinished_run_travels_through_the_records_and_resumes_bit_for_bit(dataset, training_data, tmp_path):
    """A run interrupted on one machine and published with `export --partial` (its checkpoint
    with it) resumes on another machine from the published files alone, and ends bit for bit
    as the run never interrupted; its record names both sittings."""
    from resnet_cifar import plan as P
    from resnet_cifar import records as REC
    run = P.plan("smoke", chapters=["04"])[0]
    where = lambda folder: run.config("smoke", device="cpu", data_dir=str(training_data[0]),  # noqa: E731
                                      runs_dir=str(tmp_path / folder), progress="none")
    with pytest.MonkeyPatch.context() as mp:
        _interrupt_at(mp, 7)  # after the checkpoint at 5
        with pytest.raises(KeyboardInterrupt):
            train(where("first"), dataset=dataset)
    records = tmp_path / "records"
    with pytest.raises(RunError, match="pass --partial to publish the others|not finished"):
        REC.export([run], "smoke", dataset.identity, tmp_path / "first", records)
    manifest = REC.export([run], "smoke", dataset.identity, tmp_path / "first", records, partial=True, planned=5)
    assert manifest["runs"][run.name]["status"] == "unfinished" and manifest["runs"][run.name]["iterations_done"] == 5
    assert sorted(p.name for p in (records / run.name).iterdir()) == ["checkpoint.pt", "config.json", "history.csv",
                                                                       "summary.json"]
    assert not REC.is_complete(manifest) and REC.finished_count(manifest) == 0
    shutil.rmtree(tmp_path / "first")  # the first machine is gone

    second = where("second")
    assert P.status(run, "smoke", tmp_path / "second", records)["text"] == "interrupted at 5 (published: resumes there)"
    assert REC.restore(records / run.name, tmp_path / "second" / run.name, second)
    assert not REC.restore(records / run.name, tmp_path / "second" / run.name, second)  # holds it already
    resumed = train(second, dataset=dataset)
    assert resumed.status == "complete" and resumed.summary["iterations_done"] == run.config("smoke").iterations
    straight = train(where("straight"), dataset=dataset)
    _assert_identical_runs(resumed.run_dir, straight.run_dir)
    first, then = resumed.summary["segments"]
    assert (first["start"], first["end"], then["start"], then["end"]) == (0, 5, 5, resumed.summary["iterations_done"])
    assert first["threads"] == then["threads"] == torch.get_num_threads() and then["device"].startswith(first["device"])
    assert [s["start"] for s in straight.summary["segments"]] == [0]

    # the finished run, exported again, replaces the unfinished one; the next export keeps it
    manifest = REC.export([run], "smoke", dataset.identity, tmp_path / "second", records, planned=1)
    assert manifest["runs"][run.name]["status"] == "complete" and REC.is_complete(manifest)
    assert not (records / run.name / "checkpoint.pt").exists()


def test_resume_false_refuses_an_unfinished_run(tiny, dataset):
    with pytest.MonkeyPatch.context() as mp:
        _interrupt_at(mp, 3)
        with pytest.raises(KeyboardInterrupt):
            train(name="r", dataset=dataset, **tiny)
    with pytest.raises(RunError, match=r"is failed \(not finished\); pass resume=True .* or force=True"):
        train(name="r", dataset=dataset, resume=False, **tiny)


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical(tiny, dataset, training_data, tmp_path):
    """Kill -9 a training process mid-run; the resumed run ends with the same weights,
    history and learning-rate trace as a run that was never interrupted."""
    settings = {**tiny, "name": "killed", "iterations": 60, "eval_every": 5, "checkpoint_every": 5}
    run_dir = Path(tiny["runs_dir"]) / "killed"
    proc = _start(training_data, **settings)
    try:
        _wait_for(proc, run_dir, 10)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "running" and 10 <= summary["iterations_done"] < 60
    checkpoint = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert checkpoint["iteration"] == summary["iterations_done"] and checkpoint["iteration"] % 5 == 0
    assert not (run_dir / "model.pt").exists()
    assert (run_dir / ".lock").read_text() == str(proc.pid)  # left behind by the dead process
    config = TrainConfig(**settings)
    assert R.decide(config, run_dir) == "resume"  # not reused as finished

    resumed = train(config, dataset=dataset)  # takes over the stale lock
    assert resumed.status == "complete" and resumed.summary["iterations_done"] == 60
    assert not (run_dir / ".lock").exists()
    assert resumed.history["iteration"].tolist() == list(range(5, 61, 5))
    straight = train(config, dataset=dataset, runs_dir=str(tmp_path / "straight"))
    _assert_identical_runs(resumed.run_dir, straight.run_dir)


@pytest.mark.slow
def test_sigkill_of_a_fused_group_then_resume_is_bit_identical(tiny, dataset, training_data, tmp_path):
    """Kill -9 a process training two runs as one fused group; resumed as a group, each run
    ends exactly as the same group trained without interruption."""
    from resnet_cifar.fused import train_group
    settings = {**tiny, "iterations": 30, "eval_every": 5, "checkpoint_every": 5}
    configs = [TrainConfig(**settings, seed=s) for s in (0, 1)]
    run_dirs = [Path(tiny["runs_dir"]) / c.run_name() for c in configs]
    proc = _start(training_data, **settings, fused_seeds=[0, 1])
    try:
        _wait_for(proc, run_dirs[1], 10)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    for config, run_dir in zip(configs, run_dirs):
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["status"] == "running" and 5 <= summary["iterations_done"] < 30
        assert summary["fused_group"] == [c.run_name() for c in configs]
        assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["iteration"] == summary["iterations_done"]
        assert (run_dir / ".lock").read_text() == str(proc.pid) and not (run_dir / "model.pt").exists()
        assert R.decide(config, run_dir) == "resume"

    resumed = train_group(configs, dataset=dataset)  # takes over both stale locks
    straight = train_group([TrainConfig(**{**settings, "runs_dir": str(tmp_path / "straight")}, seed=s)
                            for s in (0, 1)], dataset=dataset)
    for a, b in zip(resumed, straight):
        assert a.status == "complete" and a.summary["iterations_done"] == 30
        assert not (a.run_dir / ".lock").exists()
        _assert_identical_runs(a.run_dir, b.run_dir)

# ---------------------------------------------------------------- one process per run


def test_lock_held_by_a_live_process(tiny, dataset):
    run_dir = Path(tiny["runs_dir"]) / "locked"
    run_dir.mkdir(parents=True)
    holder = subprocess.Popen(["sleep", "60"])
    try:
        (run_dir / ".lock").write_text(str(holder.pid))
        with pytest.raises(RunError, match=rf"being trained by process {holder.pid}; wait for it \(wait=True\), "
                                           rf"or pick another"):
            train(name="locked", dataset=dataset, **tiny)
        assert sorted(p.name for p in run_dir.iterdir()) == [".lock"]
        assert (run_dir / ".lock").read_text() == str(holder.pid)
        # force=True does not let a second process wipe a run that is being trained
        (run_dir / "summary.json").write_text(json.dumps({"status": "running"}))
        (run_dir / "config.json").write_text(json.dumps(dict(TrainConfig(name="locked", **tiny).__dict__)))
        with pytest.raises(RunError, match=rf"being trained by process {holder.pid}"):
            train(name="locked", dataset=dataset, force=True, **tiny)
        assert sorted(p.name for p in run_dir.iterdir()) == [".lock", "config.json", "summary.json"]
    finally:
        holder.kill()
        holder.wait()
    # its owner is gone: the lock is stale and taken over
    assert train(name="locked", dataset=dataset, **tiny).status == "complete"
    assert not (run_dir / ".lock").exists()


@pytest.mark.slow
def test_second_process_on_a_running_run_fails_and_the_first_finishes(tiny, dataset, training_data):
    settings = {**tiny, "name": "busy", "iterations": 40, "eval_every": 10}
    run_dir = Path(tiny["runs_dir"]) / "busy"
    proc = _start(training_data, **settings)
    try:
        _wait_for(proc, run_dir, 0)
        with pytest.raises(RunError, match=rf"being trained by process {proc.pid}"):
            train(dataset=dataset, **settings)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err[-3000:]
    assert "STATUS complete" in out
    run = load_run(run_dir)
    assert run.status == "complete" and run.summary["iterations_done"] == 40
    assert run.history["iteration"].tolist() == [10, 20, 30, 40]


def test_wait_polls_until_the_holder_is_gone(tiny, dataset, monkeypatch, capsys):
    """wait=True (what the book's chapters pass): a run locked by a live process is waited
    for, not failed; once the holder is gone the lock is taken over and the run trains."""
    monkeypatch.setattr(R.RunLock, "POLL_S", 0.1)
    run_dir = Path(tiny["runs_dir"]) / "held"
    run_dir.mkdir(parents=True)
    holder = subprocess.Popen(["sleep", "1.5"])
    threading.Thread(target=holder.wait, daemon=True).start()  # reap it: a zombie's pid stays "alive"
    (run_dir / ".lock").write_text(str(holder.pid))
    start = time.monotonic()
    try:
        run = train(name="held", dataset=dataset, wait=True, **tiny)
    finally:
        holder.kill()
    assert time.monotonic() - start >= 1.0 and run.status == "complete"
    assert f"[held] process {holder.pid} is training this run: waiting for it" in capsys.readouterr().out
    assert not (run_dir / ".lock").exists()


@pytest.mark.slow
def test_wait_reuses_the_run_another_process_finished(tiny, dataset, training_data, monkeypatch):
    """Two chapters reaching the same run at once (one per GPU): the second waits for the
    first, then reuses its finished record instead of training the run again."""
    monkeypatch.setattr(R.RunLock, "POLL_S", 0.1)
    settings = {**tiny, "name": "shared", "iterations": 40, "eval_every": 10}
    run_dir = Path(tiny["runs_dir"]) / "shared"
    proc = _start(training_data, **settings)

    def no_training(*args, **kwargs):
        raise AssertionError("the waiting process trained the run itself")
    try:
        _wait_for(proc, run_dir, 0)
        monkeypatch.setattr(T, "fit", no_training)
        run = train(dataset=dataset, wait=True, **settings)  # returns once the other process is done
        assert proc.wait(timeout=300) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert run.status == "complete" and run.summary["iterations_done"] == 40
    assert run.history["iteration"].tolist() == [10, 20, 30, 40]


# ---------------------------------------------------------------- divergence

def test_divergence_is_a_result_not_a_crash(tiny, dataset):
    run = train(name="boom", dataset=dataset, **{**tiny, "lr": 1e6, "iterations": 40, "eval_every": 2})
    assert run.status == "diverged" and run.diverged
    detail = run.summary["status_detail"]
    assert detail.startswith("diverged at iteration ")
    k = int(detail.rsplit(" ", 1)[1])
    assert 1 <= k < 40 and run.summary["iterations_done"] == k
    assert run.history["iteration"].iloc[-1] == k and run.history["iteration"].max() == k
    assert np.isnan(run.history["train_loss"].iloc[-1])
    assert len(run.lr_trace) == k
    assert not (run.run_dir / "model.pt").exists()
    with pytest.raises(RunError, match=rf"has no final weights \(model.pt\): it is diverged at iteration {k}"):
        run.load_model()
    # a diverged run is a finished result: asked again, it is returned, not retrained
    assert train(name="boom", dataset=dataset, **{**tiny, "lr": 1e6, "iterations": 40, "eval_every": 2}
                 ).summary == run.summary


# ---------------------------------------------------------------- bad input

def test_missing_data_folder(tiny, tmp_path):
    runs = Path(tiny["runs_dir"])
    with pytest.raises(D.DataError) as info:
        train(name="nodata", **{**tiny, "data_dir": str(tmp_path / "empty")})
    message = str(info.value)
    assert "CIFAR-10 not found" in message and str(tmp_path / "empty" / D.FOLDER) in message
    assert "python -m resnet_cifar download" in message and "RESNET_CIFAR_DATA" in message
    assert not (runs / "nodata").exists()


def _copy(cifar_folder, tmp_path) -> Path:
    target = tmp_path / "broken"
    shutil.copytree(cifar_folder, target)
    return target


def _rewrite(path: Path, **changes) -> None:
    with open(path, "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    batch.update({k.encode(): v for k, v in changes.items()})
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=2)


def test_truncated_batch(cifar_folder, tmp_path, tiny):
    root = _copy(cifar_folder, tmp_path)
    path = root / D.FOLDER / "data_batch_3"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(D.DataError, match=r"data_batch_3 is not a readable CIFAR-10 batch .*truncated or "
                                          r"corrupted: download or rebuild"):
        D.load_cifar10(root, expect_counts=None)
    with pytest.raises(D.DataError, match="data_batch_3"):
        train(name="bad", **{**tiny, "data_dir": str(root)})
    assert not (Path(tiny["runs_dir"]) / "bad").exists()


def test_corrupted_batch(cifar_folder, tmp_path):
    root = _copy(cifar_folder, tmp_path)
    path = root / D.FOLDER / "test_batch"
    raw = bytearray(path.read_bytes())
    raw[:64] = np.random.default_rng(0).integers(0, 256, 64, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(raw))
    with pytest.raises(D.DataError, match=r"test_batch is not a readable CIFAR-10 batch"):
        D.load_cifar10(root, expect_counts=None)


@pytest.mark.parametrize("change, message", [
    (dict(data=np.zeros((20, 1024), np.uint8)), r"'data' must be uint8 of shape \(N, 3072\), got uint8 \(20, 1024\)"),
    (dict(data=np.zeros((20, 3072), np.float32)), r"'data' must be uint8 of shape \(N, 3072\), got float32"),
    (dict(labels=[0] * 19), r"19 labels for 20 images"),
    (dict(labels=[0] * 19 + [10]), r"labels must be in 0\.\.9, found 0\.\.10"),
    (dict(labels=[-1] + [0] * 19), r"labels must be in 0\.\.9, found -1\.\.0"),
])
def test_wrong_contents(cifar_folder, tmp_path, change, message):
    root = _copy(cifar_folder, tmp_path)
    _rewrite(root / D.FOLDER / "data_batch_1", **change)
    with pytest.raises(D.DataError, match=r"data_batch_1: " + message + r".*rebuild the data folder"):
        D.load_cifar10(root, expect_counts=None)


def test_missing_class_names(cifar_folder, tmp_path):
    root = _copy(cifar_folder, tmp_path)
    with open(root / D.FOLDER / D.META_FILE, "wb") as f:
        pickle.dump({b"label_names": [b"cat", b"dog"]}, f)
    with pytest.raises(D.DataError, match="expected 10 class names, found 2"):
        D.load_cifar10(root, expect_counts=None)


@pytest.mark.parametrize("change, message", [
    (dict(depth=21), r"depth must be 6n\+2 .*20, 32, 44, 56, 110"),
    (dict(optimizer="rmsprop"), r"optimizer must be one of \('sgd', 'adam', 'adamw', 'nadam'\)"),
    (dict(schedule="step"), r"schedule must be one of \('multistep', 'plateau', 'cosine', 'constant'\)"),
    (dict(batch_size=0), r"batch_size must be a positive number"),
    (dict(subset=0), r"subset must be a positive number, got 0"),
    (dict(subset=5), r"subset must be at least 10 \(one image per class\)"),
    (dict(eval_every=0), r"eval_every must be a positive number, got 0"),
    (dict(checkpoint_every=-1), r"checkpoint_every must be a positive number"),
    (dict(val_size=-5), r"val_size must be an integer >= 0, got -5"),
    (dict(device="gpu"), r"device must be auto, cpu, cuda\[:k\] or mps"),
    (dict(compile=True, compile_mode="fast"), r"compile_mode must be one of \('default', 'reduce-overhead'"),
    (dict(compile_mode="reduce-overhead"), r"compile_mode='reduce-overhead' needs compile=True$"),
])
def test_bad_config_fails_before_anything_is_written(tiny, dataset, change, message):
    with pytest.raises(ValueError, match=message):
        train(name="bad", dataset=dataset, **{**tiny, **change})
    assert not Path(tiny["runs_dir"]).exists()


def test_bad_profile_name():
    with pytest.raises(ValueError, match=r"profile must be one of \('smoke', 'cpu', 'quick', 'paper'\), got 'fast'"):
        profile_config("fast")
    with pytest.raises(ValueError, match=r"parameter profile must be one of \('auto', 'smoke', 'cpu', 'quick', 'paper'\)"):
        book.chapter(profile="fast")


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(profile=3), TypeError, r"parameter profile must be str, got 3 \(int\)"),
    (dict(seed="1"), TypeError, r"parameter seed must be int, got '1' \(str\)"),
    (dict(seed=True), TypeError, r"parameter seed must be int"),
    (dict(seed=-1), ValueError, r"parameter seed must be >= 0, got -1"),
    (dict(runs_dir=5), TypeError, r"parameter runs_dir must be a path string"),
    (dict(device="tpu"), ValueError, r"device must be auto, cpu"),
])
def test_bad_chapter_parameters(kwargs, error, message):
    with pytest.raises(error, match=message):
        book.chapter(**kwargs)


def _interrupted_run(tiny, dataset, name="r"):
    settings = {**tiny, "iterations": 8, "checkpoint_every": 2}
    with pytest.MonkeyPatch.context() as mp:
        _interrupt_at(mp, 4)
        with pytest.raises(KeyboardInterrupt):
            train(name=name, dataset=dataset, **settings)
    return settings, Path(tiny["runs_dir"]) / name


def test_corrupted_checkpoint(tiny, dataset):
    settings, run_dir = _interrupted_run(tiny, dataset)
    (run_dir / "checkpoint.pt").write_bytes(b"\x00garbage" * 100)
    with pytest.raises(RunError, match=r"checkpoint .*checkpoint.pt is corrupted or unreadable .*pass force=True"):
        train(name="r", dataset=dataset, **settings)
    assert load_run(run_dir).status == "failed"
    assert not (run_dir / ".lock").exists() and not (run_dir / "model.pt").exists()
    assert train(name="r", dataset=dataset, force=True, **settings).status == "complete"


def test_checkpoint_of_another_model(tiny, dataset):
    """A depth-8 run's checkpoint under a depth-14 run of the same name."""
    settings, run_dir = _interrupted_run(tiny, dataset)
    other = Path(tiny["runs_dir"]) / "other"
    shutil.copytree(run_dir, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "name": "other", "depth": 14}))
    with pytest.raises(RunError, match=r"checkpoint .*other/checkpoint.pt was written by a different config; "
                                       r"pass force=True"):
        train(name="other", dataset=dataset, **{**settings, "depth": 14})
    _no_complete_record(tiny["runs_dir"])
    assert not (other / ".lock").exists()


def test_unreadable_run_record(tiny, dataset):
    settings, run_dir = _interrupted_run(tiny, dataset)
    (run_dir / "summary.json").write_text("{ half a json")
    with pytest.raises(RunError, match=r"run record .* is unreadable .*pass force=True"):
        train(name="r", dataset=dataset, **settings)


def test_runs_folder_not_writable(tmp_path, dataset, tiny):
    blocker = tmp_path / "afile"
    blocker.write_text("not a folder")
    runs = blocker / "runs"
    with pytest.raises(RunError, match=rf"runs folder {runs} is not writable .*pass runs_dir= pointing at a writable folder"):
        train(name="w", dataset=dataset, **{**tiny, "runs_dir": str(runs)})
    assert blocker.read_text() == "not a folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_load_run_of_a_non_run_folder(tmp_path):
    with pytest.raises(RunError, match="is not a run folder \\(no summary.json\\); train it first"):
        load_run(tmp_path)


def test_killed_run_reads_back_as_interrupted(tmp_path):
    """A record left 'running' by a process that is gone says so when read back."""
    from resnet_cifar.runs import load_run
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "config.json").write_text("{}")
    (run_dir / "summary.json").write_text(json.dumps({"status": "running", "status_detail": "running",
                                                      "iterations_done": 7}))
    (run_dir / ".lock").write_text("999999999")  # no such process
    run = load_run(run_dir)
    assert run.status == "running"
    assert run.summary["status_detail"].startswith("interrupted at iteration 7")


def test_chapter_caveats_name_the_budget_and_the_data(dataset, tmp_path):
    """Every chapter's warning boxes: smoke says it is noise, a non-official copy says it is not comparable."""
    import dataclasses
    ch = book.Chapter("smoke", "cpu", dataset, tmp_path, 0)
    notes = ch.caveats()
    assert any("Profile <b>smoke</b>" in n and "10 iterations" in n for n in notes)
    assert any(dataset.label in n and "not comparable" in n for n in notes)
    cpu = book.Chapter("cpu", "cpu", dataset, tmp_path, 0).caveats()[0]
    assert "1,600 iterations" in cpu and "1/40 of the paper's 64,000" in cpu and "not trained at this profile" in cpu
    official = book.Chapter("paper", "cpu", dataclasses.replace(dataset, identity="official"), tmp_path, 0)
    assert official.caveats() == [] and official.caveats_box() == ""
    assert "Read the numbers with care" in ch.caveats_box()._repr_html_()


def test_chapter_runs_wait_for_a_shared_run(dataset, tmp_path):
    """Chapters run in parallel (one per GPU) share runs: theirs wait instead of failing."""
    config = book.Chapter("smoke", "cpu", dataset, tmp_path, 0).config("resnet32-seed0", depth=32)
    assert config.wait and "wait" not in config.identity()  # how it runs, not what it computes
    assert config.run_name() == "resnet32-seed0" and config.runs_dir == str(tmp_path)


def test_stop_at_leaves_a_resumable_prefix_that_ends_as_the_straight_run(tiny, dataset, tmp_path):
    settings = {**tiny, "name": "r", "iterations": 8, "eval_every": 2}
    stopped = train(dataset=dataset, stop_at=4, **settings)
    assert stopped.status == "stopped" and stopped.summary["iterations_done"] == 4
    assert stopped.summary["status_detail"] == "stopped at iteration 4 (stop_at)"
    assert stopped.history["iteration"].tolist() == [2, 4] and not (stopped.run_dir / "model.pt").exists()
    assert torch.load(stopped.run_dir / "checkpoint.pt", weights_only=True)["iteration"] == 4
    resumed = train(dataset=dataset, **settings)
    assert resumed.status == "complete" and [s["start"] for s in resumed.summary["segments"]] == [0, 4]
    straight = train(dataset=dataset, **{**settings, "runs_dir": str(tmp_path / "straight")})
    _assert_identical_runs(resumed.run_dir, straight.run_dir)


def test_records_verify_retrains_a_published_prefix_and_says_what_it_found(dataset, training_data, tmp_path):
    """`records --verify`: a published run retrained here to an evaluation matches its record bit
    for bit; a record changed by a little is 'within tolerance' with its largest difference, and
    changed by more is 'different' (exit 1)."""
    import pandas as pd
    from resnet_cifar import commands as C
    from resnet_cifar import plan as P
    from resnet_cifar import records as REC
    run = P.plan("smoke", chapters=["04"])[0]
    config = run.config("smoke", device="cpu", data_dir=str(training_data[0]), runs_dir=str(tmp_path / "runs"),
                        progress="none")
    train(config, dataset=dataset)
    root, spec = tmp_path / "project", f"smoke/{run.name}"
    published = root / "book" / "records" / dataset.identity / "smoke"
    REC.export([run], "smoke", dataset.identity, tmp_path / "runs", published, planned=1)
    result = C.verify(root, dataset.identity, spec, None, str(training_data[0]))  # to its first evaluation
    first = int(pd.read_csv(published / run.name / "history.csv")["iteration"].iloc[0])
    assert result["verdict"] == "bit for bit" and result["iterations"] == first and result["threads"] == THREADS
    assert {r["quantity"] for r in result["rows"]} == set(C.COMPARED) and all(r["diff"] == 0 for r in result["rows"])
    assert result["sentence"].startswith(f"Retrained here from its committed config to iteration {first}")
    assert "matches its record bit for bit" in result["sentence"]

    history = pd.read_csv(published / run.name / "history.csv")
    for factor, verdict in ((1.001, "within tolerance"), (1.5, "different")):
        changed = history.copy()
        changed.loc[0, "train_loss"] *= factor
        changed.to_csv(published / run.name / "history.csv", index=False)
        result = C.verify(root, dataset.identity, spec, first, str(training_data[0]))
        assert result["verdict"] == verdict and result["worst"]["train_loss"] == pytest.approx(1 - 1 / factor, rel=1e-3)
    assert "DIFFERS from its record beyond the tolerance" in result["sentence"]
    with pytest.raises(RunError, match=r"no committed record 'smoke/nosuch'.*give PROFILE/RUN"):
        C.verify(root, dataset.identity, "smoke/nosuch", None, str(training_data[0]))
    with pytest.raises(RunError, match=f"before the record's first evaluation, at iteration {first}"):
        C.verify(root, dataset.identity, spec, first - 1, str(training_data[0]))


@pytest.mark.parametrize("schedule, stop", [
    (dict(milestones=(3, 6)), 5),                                    # resumed between two lr drops (as at 32k)
    (dict(schedule="plateau", plateau_patience=0, plateau_threshold=0.5), 5),  # after a plateau reduction
    (dict(warmup_until_error=0.95, warmup_lr=0.02), 53),              # after the ResNet-110 warm-up rule decided
    (dict(optimizer="adam", lr=1e-3, schedule="constant"), 5),        # Adam's moments
], ids=["lr-drop", "plateau", "warmup-rule", "adam"])
def test_resume_is_bit_for_bit_across_the_state_that_matters(tiny, dataset, tmp_path, schedule, stop):
    """Ctrl-C after a checkpoint, then resume: the run ends bit for bit as the one never stopped,
    where the resumed state is more than the weights (the lr drop, the plateau scheduler, the
    warm-up rule, Adam's moments)."""
    settings = {**tiny, "name": "r", "iterations": 60 if stop > 8 else 8, "eval_every": 2, "checkpoint_every": 2,
                **schedule}
    with pytest.MonkeyPatch.context() as mp:
        _interrupt_at(mp, stop)
        with pytest.raises(KeyboardInterrupt):
            train(dataset=dataset, **settings)
    resumed = train(dataset=dataset, **settings)
    assert [s["start"] for s in resumed.summary["segments"]] == [0, stop - 1]
    straight = train(dataset=dataset, **{**settings, "runs_dir": str(tmp_path / "straight")})
    assert resumed.lr_trace["lr"].nunique() >= (1 if "optimizer" in schedule else 2)  # the lr changed on the way
    if "warmup_until_error" in schedule:
        assert straight.summary["lr_warmup_ended_at"] == 50 == resumed.summary["lr_warmup_ended_at"]
    _assert_identical_runs(resumed.run_dir, straight.run_dir)
