"""A run on disk: its folder read back, the reuse / resume / lock rules, and what training writes.

`<runs_dir>/<name>/` holds config.json, summary.json (status, errors, speed, device, `segments`),
history.csv (one row per evaluation), lr_trace.csv (every iteration's lr), checkpoint.pt, model.pt
(final weights, complete runs only) and .lock (the pid training it), each replaced atomically.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import functools
import json
import math
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .config import TrainConfig

FINISHED = ("complete", "diverged")
HISTORY_COLUMNS = ["iteration", "epoch", "lr", "train_loss", "train_error", "val_loss",
                   "val_error", "test_loss", "test_error", "wall_time"]
ZEROS = functools.partial(torch.zeros, 3, dtype=torch.float64)  # loss sum, wrong, seen


class RunError(RuntimeError):
    """A run cannot start or continue; the message says what to do."""


@dataclass
class RunResult:
    """What a run left in its folder, read back."""
    run_dir: Path
    config: dict
    summary: dict
    history: "object" = field(repr=False)   # pandas DataFrame, one row per evaluation
    lr_trace: "object" = field(repr=False)  # pandas DataFrame: iteration, lr

    name = property(lambda self: self.run_dir.name)
    status = property(lambda self: self.summary["status"])
    diverged = property(lambda self: self.status == "diverged")
    complete = property(lambda self: self.status == "complete")
    has_weights = property(lambda self: self.complete and (self.run_dir / "model.pt").is_file())

    def error(self, key: str = "final_test_error") -> float | None:
        """An error of the summary in percent (None when the run has none, e.g. it diverged)."""
        value = self.summary.get(key)
        return None if value is None else 100 * value

    def load_model(self, map_location="cpu") -> torch.nn.Module:
        """The final weights in a model built from the run's config, in eval mode."""
        from .models import build_model
        if not (self.run_dir / "model.pt").is_file():
            raise RunError(f"run {self.run_dir} has no final weights (model.pt): it is "
                           f"{self.summary.get('status_detail', self.status)}; only a complete "
                           "run has them.")
        c = TrainConfig(**self.config)
        model = build_model(c.arch, c.depth, c.shortcut, final_relu=c.final_relu,
                            bn_eps=c.bn_eps, bn_momentum=c.bn_momentum)
        model = model.double() if c.dtype == "float64" else model
        path = self.run_dir / "model.pt"
        model.load_state_dict(torch.load(path, map_location=map_location, weights_only=True))
        return model.eval()


def load_run(run_dir) -> RunResult:
    """Read a run folder (finished or not)."""
    import pandas as pd
    run_dir = Path(run_dir)
    if not (run_dir / "summary.json").is_file():
        raise RunError(f"{run_dir} is not a run folder (no summary.json); train it first.")
    summary = json.loads((run_dir / "summary.json").read_text())
    if summary.get("status") == "running" and not lock_owner(run_dir):  # its process was killed
        summary["status_detail"] = (f"interrupted at iteration {summary.get('iterations_done')} "
                                    "(no process is training it; resume=True continues it)")
    tables = [pd.read_csv(run_dir / f) if (run_dir / f).is_file() else pd.DataFrame()
              for f in ("history.csv", "lr_trace.csv")]
    return RunResult(run_dir, json.loads((run_dir / "config.json").read_text()), summary, *tables)


# ---------------------------------------------------------------- reuse, resume or start over

def read_json(path: Path) -> dict | None:
    """The JSON object in `path`, or None when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def config_diff(ours: TrainConfig, theirs: TrainConfig) -> list[str]:
    """The identity fields in which two configs differ (sorted)."""
    a, b = ours.identity(), theirs.identity()
    return sorted(k for k in a if a[k] != b.get(k))


def state(config: TrainConfig, run_dir: Path) -> dict:
    """What `run_dir` holds for `config`: state (missing, unreadable, conflict, finished,
    running, interrupted or failed), a text, the iterations done and the summary."""
    run_dir = Path(run_dir)
    if not (run_dir / "summary.json").is_file():
        return dict(state="missing", text="missing", done=0, summary=None)
    summary, stored = read_json(run_dir / "summary.json"), read_json(run_dir / "config.json")
    if summary is None or stored is None:
        return dict(state="unreadable", text="unreadable record", done=0, summary=None)
    done = summary.get("iterations_done") or 0
    found = dict(done=done, summary=summary)
    diff = config_diff(config, TrainConfig(**stored))
    if diff:
        return dict(found, state="conflict", diff=diff,
                    text=f"other config in its folder ({', '.join(diff)})")
    if summary.get("status") in FINISHED:
        return dict(found, state="finished", text=summary.get("status_detail", summary["status"]))
    if lock_owner(run_dir):
        return dict(found, state="running", text=f"running, at {done:,}")
    if (run_dir / "checkpoint.pt").is_file():
        return dict(found, state="interrupted", text=f"interrupted at {done:,}")
    failed = summary.get("status_detail", "failed")
    return dict(found, state="failed", text=f"{failed} (no checkpoint: starts over)")


def decide(config: TrainConfig, run_dir: Path) -> str:
    """'reuse' a finished identical run, 'resume' an interrupted one, or start 'fresh'."""
    if config.force:
        return "fresh"
    s = state(config, run_dir)
    if s["state"] == "missing":
        return "fresh"
    if s["state"] == "unreadable":
        raise RunError(f"run record {run_dir} is unreadable (its summary.json or config.json is "
                       "not valid JSON); pass force=True to retrain it.")
    if s["state"] == "conflict":
        raise RunError(f"run {run_dir} exists with a different config (differs in "
                       f"{', '.join(s['diff'])}); pick another name or pass force=True.")
    if s["state"] == "finished":
        return "reuse"
    if config.resume:  # killed before its first checkpoint: nothing to keep
        return "resume" if (run_dir / "checkpoint.pt").is_file() else "fresh"
    raise RunError(f"run {run_dir} is {s['summary'].get('status')} (not finished); pass "
                   "resume=True to continue it or force=True to start over.")


def clear(run_dir: Path) -> None:
    """Remove an old record before a fresh start, so nothing half-old looks complete."""
    for name in ("summary.json", "history.csv", "lr_trace.csv", "checkpoint.pt", "model.pt"):
        (run_dir / name).unlink(missing_ok=True)


def check_writable(runs_dir: Path) -> None:
    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
        probe = runs_dir / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise RunError(f"runs folder {runs_dir} is not writable ({e.strerror}); pass runs_dir= "
                       "pointing at a writable folder.") from e


class RunLock:
    """`<run>/.lock` holds the pid of the process training the run: a second process fails at
    once, or with `wait` polls until the lock is free. A dead process's lock is taken over."""
    POLL_S = 2.0

    def __init__(self, run_dir: Path, wait: bool = False):
        self.path, self.wait = Path(run_dir) / ".lock", wait

    def acquire(self) -> "RunLock":
        run, waiting_for = self.path.parent, None
        run.mkdir(parents=True, exist_ok=True)
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                os.write(fd, str(os.getpid()).encode())
                os.close(fd)
                return self
            except FileExistsError:
                pid = lock_owner(run)
                if not pid or pid == os.getpid():
                    self.path.unlink(missing_ok=True)  # stale: its owner is gone
                    continue
                if not self.wait:
                    raise RunError(f"run {run} is being trained by process {pid}; wait for it "
                                   "(wait=True), or pick another run name.") from None
                if pid != waiting_for:
                    print(f"[{run.name}] process {pid} is training this run: waiting for it",
                          flush=True)
                    waiting_for = pid
                time.sleep(self.POLL_S)

    def release(self) -> None:
        self.path.unlink(missing_ok=True)


def lock_owner(run_dir: Path) -> int:
    """The pid of the live process holding the run's lock, or 0."""
    try:
        pid = int((Path(run_dir) / ".lock").read_text() or 0)
    except (OSError, ValueError):
        return 0
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return 0
    except PermissionError:
        pass  # alive, another user's
    return pid


# ---------------------------------------------------------------- what a training run writes

@dataclass
class LoopState:
    """What the training loop carries from step to step, and what a checkpoint keeps of it.
    "Start-up" is the first iterations after each (re)start (compiling, tuning), kept out of
    the steady speed; "lr warm-up" is ResNet-110's low learning rate."""
    iteration: int = 0
    history: list = field(default_factory=list)     # one row per evaluation
    lr_changes: list = field(default_factory=list)  # (iteration, lr) where the lr changed
    wall_time: float = 0.0                           # seconds of training steps
    startup_time: float = 0.0                        # of which the start-up iterations'
    startup_iterations: int = 0
    eval_time: float = 0.0
    window: torch.Tensor = field(default_factory=ZEROS)
    lr_warmup: bool = False                          # warmup_until_error: still at warmup_lr
    lr_warmup_window: torch.Tensor = field(default_factory=ZEROS)
    lr_warmup_ended: int | None = None
    # the sittings that trained it, one per (re)start: iterations, device, threads, seconds, commit
    segments: list = field(default_factory=list)

    # the checkpoint's names of two fields
    SAVED_AS = dict(startup_time="warmup_time", startup_iterations="warmup_iterations")

    def saved(self) -> dict:
        self.close_segment()
        return {self.SAVED_AS.get(f.name, f.name): getattr(self, f.name)
                for f in dataclasses.fields(self)}

    @classmethod
    def from_saved(cls, saved: dict) -> "LoopState":
        names = {f.name: cls.SAVED_AS.get(f.name, f.name) for f in dataclasses.fields(cls)}
        state = cls(**{name: saved[key] for name, key in names.items() if key in saved})
        state.window, state.lr_warmup_window = state.window.cpu(), state.lr_warmup_window.cpu()
        state.lr_changes = [tuple(c) for c in state.lr_changes]
        return state

    def seconds(self) -> float:
        return self.wall_time + self.eval_time

    def begin_segment(self, device: str, threads: int | None, world: int,
                      earlier: dict | None = None) -> None:
        """A new sitting starts at this iteration. A checkpoint from before segments were kept
        gets one segment for its earlier sittings, from the summary they left (`earlier`)."""
        e = earlier or {}
        if not self.segments and self.iteration > 0:
            self.segments.append(dict(
                start=0, end=self.iteration, seconds=self.seconds(), device=e.get("device_name"),
                threads=None, world_size=e.get("world_size"), torch=e.get("torch_version"),
                commit=e.get("git_commit"), began=None, note="sittings before segments"))
        self.segments.append(dict(
            start=self.iteration, end=self.iteration, seconds=0.0, device=device, threads=threads,
            world_size=world, torch=str(torch.__version__), commit=git_commit(),
            began=time.strftime("%Y-%m-%dT%H:%M:%S"), base=self.seconds()))

    def close_segment(self) -> None:
        """The current segment reaches this iteration."""
        if self.segments:
            seg = self.segments[-1]
            seg.update(end=self.iteration, seconds=self.seconds() - seg.get("base", 0.0))


class Record:
    """What the training loop writes to the run folder (only where `enabled`: rank 0). `facts`
    are the summary's fixed entries (model size, device, dataset ...)."""

    def __init__(self, config: TrainConfig, run_dir: Path, per_epoch: int, facts: dict,
                 enabled: bool = True):
        self.config, self.run_dir, self.per_epoch = config, run_dir, per_epoch
        self.facts, self.enabled = facts, enabled

    def row(self, state: LoopState, lr: float, evaluated: dict | None = None) -> dict:
        """A history row: training loss and error since the last row, val/test where evaluated."""
        loss_sum, wrong, seen = state.window.tolist()
        state.window.zero_()
        nan = float("nan")
        return dict(iteration=state.iteration, epoch=state.iteration / self.per_epoch, lr=lr,
                    train_loss=loss_sum / seen if seen else nan,
                    train_error=wrong / seen if seen else nan, val_loss=nan, val_error=nan,
                    test_loss=nan, test_error=nan, wall_time=state.wall_time) | (evaluated or {})

    def summary(self, state: LoopState, status: str) -> dict:
        state.close_segment()
        scored = [r for r in state.history if not math.isnan(r["val_error"])]
        best = min(scored, key=lambda r: r["val_error"]) if scored else {}
        last = state.history[-1] if state.history else {}
        # the steady speed: the steps after each (re)start's start-up iterations
        steady_s = state.wall_time - state.startup_time
        steady_images = (state.iteration - state.startup_iterations) * self.config.batch_size
        steady = steady_images / steady_s if steady_images > 0 and steady_s > 0 else None
        return dict(
            self.facts, status=status.split(" ")[0], status_detail=status,
            iterations_done=state.iteration, final_test_error=last.get("test_error"),
            final_val_error=last.get("val_error"), best_val_error=best.get("val_error"),
            test_error_at_best_val=best.get("test_error"),
            # the records' names: warmup_* is the start-up timing (not the lr warm-up)
            wall_time_s=state.wall_time, warmup_time_s=state.startup_time,
            warmup_iterations=state.startup_iterations, eval_time_s=state.eval_time,
            lr_warmup_ended_at=state.lr_warmup_ended,
            segments=[{k: v for k, v in seg.items() if k != "base"} for seg in state.segments],
            train_images_per_s=steady, updated=time.strftime("%Y-%m-%dT%H:%M:%S"))

    def start(self, state: LoopState) -> None:
        if self.enabled:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_json(self.run_dir / "config.json", dataclasses.asdict(self.config))
            self.last_summary = self.summary(state, "running")
            write_json(self.run_dir / "summary.json", self.last_summary)

    def checkpoint(self, state: LoopState, model, optimizer, plateau, status="running") -> None:
        if not self.enabled:
            return
        save_atomic(dict(state.saved(), config=self.config.identity(), model=model.state_dict(),
                         optimizer=optimizer.state_dict(),
                         plateau=plateau.state_dict() if plateau else None,
                         rng_cpu=torch.get_rng_state()), self.run_dir / "checkpoint.pt")
        write_csv(self.run_dir / "history.csv", state.history, HISTORY_COLUMNS)
        self.last_summary = self.summary(state, status)  # what the checkpoint holds
        write_json(self.run_dir / "summary.json", self.last_summary)

    def finish(self, state: LoopState, status: str, model, optimizer, plateau) -> None:
        if not self.enabled:
            return
        if status == "complete" or status.startswith("stopped"):  # stop_at: resumable from here
            self.checkpoint(state, model, optimizer, plateau, status)
        if status == "complete":
            save_atomic(model.state_dict(), self.run_dir / "model.pt")
        write_csv(self.run_dir / "history.csv", state.history, HISTORY_COLUMNS)
        write_csv(self.run_dir / "lr_trace.csv", lr_trace(state.lr_changes, state.iteration),
                  ["iteration", "lr"])
        write_json(self.run_dir / "summary.json", self.summary(state, status))

    def failed(self, state: LoopState, detail: str) -> None:
        """The run stopped (`detail`: 'interrupted at iteration k', or the error): its summary
        stays its last checkpoint's, where a resume starts, so it never claims steps it lacks."""
        if self.enabled:
            done = self.last_summary["iterations_done"]
            resume = (f"; its checkpoint holds iteration {done:,}, where it resumes" if done
                      else "; no checkpoint yet: it starts over")
            with contextlib.suppress(OSError):
                write_json(self.run_dir / "summary.json", dict(
                    self.last_summary, status="failed", status_detail=detail + resume,
                    updated=time.strftime("%Y-%m-%dT%H:%M:%S")))


def lr_trace(changes: list[tuple[int, float]], iterations: int) -> list[dict]:
    """Every iteration's learning rate, from the (iteration, lr) pairs where it changed."""
    rows, bounds = [], [it for it, _ in changes[1:]] + [iterations]
    for (start, lr), end in zip(changes, bounds):
        rows += [dict(iteration=i, lr=lr) for i in range(start, min(end, iterations))]
    return rows


# ---------------------------------------------------------------- writing files atomically

def _replace(path: Path, write) -> None:
    """`write` a temporary file, then rename it: a kill mid-write keeps the old file."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def write_json(path: Path, obj) -> None:
    _replace(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2, default=str)))


def write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    def write(tmp):
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, columns)
            writer.writeheader()
            writer.writerows(rows)
    _replace(path, write)


def save_atomic(obj, path: Path) -> None:
    _replace(path, lambda tmp: torch.save(obj, tmp))


@functools.lru_cache(maxsize=None)
def git_commit() -> str | None:
    """The library's git commit (looked up once per process), or None outside a checkout."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
                              capture_output=True, text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
