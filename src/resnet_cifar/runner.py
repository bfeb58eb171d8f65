"""The runner: train every run of the plan that is not finished, `--jobs` at a time per GPU.

One run at a time, or fused groups, train in this process. Several at a time, each slot is a
process of its own (`python -m resnet_cifar.runner`) that sees only its slot's GPU
(CUDA_VISIBLE_DEVICES) and threads (OMP_NUM_THREADS) and trains the runs it is sent one after
another, so Python, torch and the data load once per slot. A failing run is reported and the
others go on. A status line every --status-every seconds; the runs folder's `runner.json` says how each ended.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import torch

from .config import PROFILE_THREADS, TrainConfig
from .data import load_cifar10
from .devices import pick_device
from .fused import check_fuse, groups, train_group
from .plan import model_flops, status
from .runs import FINISHED, read_json, state, write_json
from .train import train


@dataclasses.dataclass
class Task:
    name: str
    config: TrainConfig
    start_done: int      # iterations done when the runner started
    work: float          # FLOPs left (images x FLOPs per image): the ETA's unit
    state: str = "left"  # left | running | done | failed | interrupted
    detail: str = ""
    where: str = ""
    started: float = 0.0
    seconds: float = 0.0


def hms(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Runner:
    """The tasks, and the lines that tell how they go."""

    def __init__(self, tasks: list[Task]):
        self.tasks, self.start = tasks, time.perf_counter()

    def say(self, text: str) -> None:  # flushed: a log file or a pipe sees each line as it happens
        print(f"[runner {hms(time.perf_counter() - self.start)}] {text}", flush=True)

    def status(self) -> str:
        count, images, work = Counter(t.state for t in self.tasks), 0.0, 0.0
        for t in self.tasks:
            if t.state != "left":  # its summary says how far it got
                summary = read_json(Path(t.config.runs_dir) / t.name / "summary.json") or {}
                new = max(int(summary.get("iterations_done") or 0) - t.start_done, 0)
                images += new * t.config.batch_size
                work += min(new / max(t.config.iterations - t.start_done, 1), 1.0) * t.work
        elapsed = time.perf_counter() - self.start
        left = sum(t.work for t in self.tasks) - work
        eta = 0.0 if left <= 0 else elapsed * left / work if work > 0 else None
        stopped = f" · {count['interrupted']} interrupted" if count["interrupted"] else ""
        return (f"{count['done']}/{len(self.tasks)} done · {count['running']} running · "
                f"{count['left']} left · {count['failed']} failed{stopped} · "
                f"{images / max(elapsed, 1e-9):,.0f} images/s · ETA {hms(eta)}")

    def begin(self, task: Task, where: str) -> None:
        task.state, task.where, task.started = "running", where, time.perf_counter()

    def finish(self, task: Task, ok: bool, detail: str) -> None:
        task.state, task.detail = "done" if ok else "failed", detail
        task.seconds = time.perf_counter() - task.started
        self.say(f"{'finished' if ok else 'FAILED'} {task.name} ({task.where}, "
                 f"{hms(task.seconds)}): {detail}")


def train_runs(configs: list[TrainConfig], dataset=None) -> list[tuple[bool, str]]:
    """Train (or reuse, or resume) one run, or a group as one fused model (fused.py): per run,
    (whether it finished, what happened). A failure fails the group only; Ctrl-C stops it."""
    try:
        done = train_group(configs, dataset) if len(configs) > 1 else [train(configs[0], dataset)]
    except Exception as e:
        return [(False, f"{type(e).__name__}: {e}")] * len(configs)
    errors = [run.summary.get("final_test_error") for run in done]
    return [(run.status in FINISHED, run.summary.get("status_detail", run.status)
             + ("" if error is None else f", test error {100 * error:.2f} %"))
            for run, error in zip(done, errors)]


def main() -> int:
    """A slot's process: trains the runs whose configs come on stdin, one JSON line each, and
    answers each on stdout in one JSON line (ok: whether it finished; detail: what happened).
    SIGTERM as Ctrl-C: the run in progress records itself as interrupted."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    answers, sys.stdout = sys.stdout, sys.stderr  # stdout carries the answers only
    datasets = {}
    try:
        for line in sys.stdin:
            config = TrainConfig(**json.loads(line))
            if datasets.get(config.data_dir) is None:
                with contextlib.suppress(Exception):  # else train() loads it and says what is wrong
                    datasets[config.data_dir] = load_cifar10(config.data_dir)
            [(ok, detail)] = train_runs([config], datasets.get(config.data_dir))
            print(json.dumps(dict(ok=ok, detail=detail)), file=answers, flush=True)
    except KeyboardInterrupt:
        return 130
    return 0


def slots(device: torch.device, jobs: int, n_runs: int) -> list[str | None]:
    """The GPU of each slot (None off CUDA), as CUDA_VISIBLE_DEVICES names it."""
    if device.type != "cuda":
        return [None] * min(jobs, n_runs)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    gpus = ([g.strip() for g in visible.split(",") if g.strip()] if visible
            else [str(i) for i in range(torch.cuda.device_count())])
    gpus = gpus if device.index is None else [gpus[device.index]]
    return [gpus[i % len(gpus)] for i in range(min(jobs * len(gpus), n_runs))]


def run_plan(runs, profile: str, folder: Path, device: str = "auto", jobs: int = 1,
             data_dir: str | None = None, threads: int | None = None, status_every: float = 30.0,
             fuse: int = 1) -> int:
    """Train the runs (PlannedRun) of `profile` that are not finished in `folder`; 0 when all
    finish (complete or diverged), 1 when any failed, 130 when interrupted. `fuse` > 1: in
    groups of at most `fuse` runs, each group one fused model (fused.py), in this process."""
    if jobs < 1 or status_every <= 0:
        raise ValueError(f"jobs must be >= 1 and status_every > 0, got {jobs} and {status_every}")
    if check_fuse(fuse) > 1 and jobs > 1:
        raise ValueError(f"--fuse {fuse} trains its groups in this process, one group at a time: "
                         f"pass --jobs 1, or --fuse 1 to train single runs, --jobs {jobs} at once")
    tasks = []
    for r in runs:
        s = status(r, profile, folder)
        if s["state"] != "finished":
            config = r.config(profile, device=device, data_dir=data_dir, runs_dir=str(folder),
                              wait=True)
            done = s["done"] if s["state"] in ("interrupted", "running") else 0
            work = (config.iterations - done) * config.batch_size * model_flops(config)
            tasks.append(Task(r.name, config, done, work))
    runner = Runner(sorted(tasks, key=lambda t: -t.work))  # the longest first: the last ones short
    if not tasks:
        runner.say(f"all {len(runs)} runs of profile {profile} are finished in {folder}")
        return 0
    dev = pick_device(device)
    gpus = slots(dev, jobs, len(tasks))
    gpus = gpus if fuse == 1 else gpus[:1]  # fused groups train in this process
    if threads is None and dev.type != "cuda":  # the profile's threads (config.PROFILE_THREADS)
        threads = PROFILE_THREADS.get(profile)
    per_slot = threads or max(1, (os.cpu_count() or 1) // len(gpus))
    fused = f", fused in groups of at most {fuse}" if fuse > 1 else ""
    where = (f"in this process on {device}{fused}" if len(gpus) == 1 else
             f"{len(gpus)} worker processes on {dev.type}, {per_slot} thread(s) each")
    runner.say(f"{len(tasks)} of {len(runs)} runs to train ({len(runs) - len(tasks)} finished) "
               f"into {folder}; {where}")
    previous, stop = signal.signal(signal.SIGTERM, signal.default_int_handler), threading.Event()

    def tick():
        while not stop.wait(status_every):
            runner.say(runner.status())
    threading.Thread(target=tick, daemon=True).start()
    code = 0
    try:
        if len(gpus) == 1:
            _in_process(runner, fuse, threads)
        else:
            _in_processes(runner, gpus, dev.type, per_slot)
    except KeyboardInterrupt:
        runner.say("interrupted: the runs in progress are recorded as interrupted; run again to "
                   "resume them")
        for t in runner.tasks:
            t.state = "interrupted" if t.state == "running" else t.state
        code = 130
    finally:
        stop.set()
        signal.signal(signal.SIGTERM, previous)
        with contextlib.suppress(OSError):
            write_json(Path(folder) / "runner.json", dict(
                profile=profile, device=device, workers=len(gpus), gpus=[g for g in gpus if g],
                finished=time.strftime("%Y-%m-%dT%H:%M:%S"),
                seconds=time.perf_counter() - runner.start, progress=runner.status(),
                runs={t.name: {k: getattr(t, k) for k in ("state", "detail", "seconds", "where")}
                      for t in runner.tasks}))
    failed = [t for t in tasks if t.state == "failed"]
    names = ", ".join(t.name for t in failed)
    runner.say(runner.status() + (f" · FAILED: {names}" if failed else "")
               + f" · report {folder / 'runner.json'}")
    stale = [str(folder / t.name) for t in failed
             if state(t.config, folder / t.name)["state"] == "conflict"]
    if stale:  # e.g. runs of an earlier budget of this profile
        runner.say(f"{len(stale)} of the failed runs' folders hold another config: delete them to "
                   f"train this plan's ({' '.join(stale)})")
    return code or (1 if failed else 0)


def _in_process(runner: Runner, fuse: int, threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)
    tasks = {t.name: t for t in runner.tasks}
    configs = [dataclasses.replace(t.config, progress="log") for t in runner.tasks]
    dataset = load_cifar10(configs[0].data_dir)  # once for all the runs
    for group in [[c] for c in configs] if fuse == 1 else groups(configs, fuse):
        members = [tasks[c.name] for c in group]
        for task in members:
            runner.begin(task, task.config.device + (
                f", fused with {len(group) - 1} other(s)" if len(group) > 1 else ""))
        runner.say(f"start {members[0].name}" if len(group) == 1 else
                   f"start a fused group of {len(group)}: {', '.join(t.name for t in members)}")
        for task, (ok, detail) in zip(members, train_runs(group, dataset)):
            runner.finish(task, ok, detail)


def _in_processes(runner: Runner, gpus: list[str | None], device: str, threads: int) -> None:
    """One process per slot (slot k's sees only GPU gpus[k]), sent the next run as each ends."""
    pending, lock, stopping, processes = list(runner.tasks), threading.Lock(), threading.Event(), []

    def slot(gpu: str | None) -> None:
        env = dict(os.environ, OMP_NUM_THREADS=str(threads),
                   **({"CUDA_VISIBLE_DEVICES": gpu} if gpu is not None else {}))
        process = None
        while not stopping.is_set():
            with lock:
                if not pending:
                    break
                task = pending.pop(0)
                if process is None or process.poll() is not None:  # the first, or after a crash
                    process = subprocess.Popen([sys.executable, "-m", "resnet_cifar.runner"], env=env,
                                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                    processes.append(process)
            runner.begin(task, device + (f", GPU {gpu}" if gpu is not None else ""))
            runner.say(f"start {task.name} ({task.where})")
            config = vars(dataclasses.replace(task.config, device=device, progress="none"))
            try:
                process.stdin.write(json.dumps(config) + "\n")
                process.stdin.flush()
                answer = json.loads(process.stdout.readline())
            except (OSError, ValueError):  # it died during the run (out of memory, a crash, Ctrl-C)
                answer = dict(ok=False, detail=f"its process exited with status {process.wait()}")
            if not stopping.is_set():  # interrupted: run_plan records the run as interrupted
                runner.finish(task, answer["ok"], answer["detail"])
        if process is not None and process.poll() is None:
            process.stdin.close()
            process.wait()

    workers = [threading.Thread(target=slot, args=(gpu,), daemon=True) for gpu in gpus]
    for worker in workers:
        worker.start()
    try:
        for worker in workers:
            while worker.is_alive():
                worker.join(0.2)
    finally:  # interrupted: each process records its run as interrupted
        stopping.set()
        with lock:
            live = [p for p in processes if p.poll() is None]
        for process in live:
            process.send_signal(signal.SIGINT)
        for process in live:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()


if __name__ == "__main__":
    sys.exit(main())
