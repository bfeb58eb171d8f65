"""The runner: train every missing run of the plan, several at once per GPU, over all visible GPUs.

    python -m resnet_cifar run --profile quick --device cuda --jobs 4

One worker process per slot: GPU g gets `--jobs` workers, each started with
CUDA_VISIBLE_DEVICES=g. A worker loads the data once, then trains the runs the runner hands
it, one after another, with train(): a finished run is reused, an interrupted one resumed from
its checkpoint, and a run another process is training is waited for (its lock), so runners on
several machines can share one runs folder. A failing run is reported and the others go on;
the exit status is 1 when any run failed. With a single worker (one run, or --jobs 1 on one
device) the runs train in this process. The progress view is one line every --status-every
seconds (runs done / running / left, images/s of all runs together, ETA) and one line per
finished run; `runner.json` in the runs folder keeps the outcome of every run.
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from .config import PROFILE_THREADS, TrainConfig
from .runs import FINISHED, read_json, state, write_json


@dataclass
class Task:
    name: str
    config: TrainConfig
    start_done: int      # iterations done when the runner started
    work: float          # FLOPs left (images x FLOPs per image): the ETA's unit
    state: str = "left"  # left | running | done | failed
    detail: str = ""
    where: str = ""
    started: float = 0.0
    seconds: float = 0.0

    def done_now(self) -> int:
        summary = read_json(Path(self.config.runs_dir) / self.name / "summary.json") or {}
        return int(summary.get("iterations_done") or 0)


def hms(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class View:
    """The overall progress, printed as lines."""

    def __init__(self, tasks: list[Task], out=print):
        self.tasks, self.out, self.start = tasks, out, time.perf_counter()
        self.total_work = sum(t.work for t in tasks) or 1.0

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def say(self, text: str) -> None:
        self.out(f"[runner {hms(self.elapsed())}] {text}")
        sys.stdout.flush()  # a log file or a pipe sees each line when it happens

    def status(self) -> str:
        count = {s: sum(t.state == s for t in self.tasks) for s in ("done", "running", "left", "failed", "interrupted")}
        images = work = 0.0
        for t in self.tasks:
            if t.state in ("done", "running", "failed"):
                new = max(t.done_now() - t.start_done, 0)
                images += new * t.config.batch_size
                work += min(new / max(t.config.iterations - t.start_done, 1), 1.0) * t.work
        rate, elapsed = images / max(self.elapsed(), 1e-9), self.elapsed()
        left = self.total_work - work
        eta = elapsed * left / work if work > 0 else None
        return (f"{count['done']}/{len(self.tasks)} done · {count['running']} running · {count['left']} left · "
                f"{count['failed']} failed" + (f" · {count['interrupted']} interrupted" if count["interrupted"] else "")
                + f" · {rate:,.0f} images/s · ETA {hms(eta) if left > 0 else '0:00:00'}")

    def interrupted(self) -> None:
        for t in self.tasks:
            if t.state == "running":
                t.state = "interrupted"


def _answer(run, start: float) -> dict:
    """How a run ended, as the runner reports it: finished or not, its status and test error."""
    error = run.summary.get("final_test_error")
    return dict(name=run.name, ok=run.status in FINISHED, seconds=time.perf_counter() - start,
                detail=run.summary.get("status_detail", run.status)
                + (f", test error {100 * error:.2f} %" if error is not None else ""))


def _failure(name: str, e: Exception, start: float) -> dict:
    return dict(name=name, ok=False, detail=f"{type(e).__name__}: {e}", seconds=time.perf_counter() - start)


def train_one(config: dict, cache: dict) -> dict:
    """Train (or reuse, or resume) one run; the dataset is loaded once per process (`cache`)."""
    from .data import load_cifar10
    from .train import train
    start = time.perf_counter()
    try:
        if cache.get("dataset") is None:
            cache["dataset"] = load_cifar10(config["data_dir"])
        return _answer(train(TrainConfig(**config), dataset=cache["dataset"]), start)
    except Exception as e:  # KeyboardInterrupt stops the worker; anything else fails this run only
        return _failure(config["name"], e, start)


def train_fused(configs: list[dict], cache: dict) -> list[dict]:
    """Train (or reuse, or resume) a group of runs as one fused model (fused.py); one answer per
    run, as `train_one` gives it. A failure fails the runs of the group."""
    from .data import load_cifar10
    from .fused import train_group
    start = time.perf_counter()
    try:
        if cache.get("dataset") is None:
            cache["dataset"] = load_cifar10(configs[0]["data_dir"])
        done = train_group([TrainConfig(**c) for c in configs], dataset=cache["dataset"])
    except Exception as e:  # KeyboardInterrupt stops the runner; anything else fails this group only
        return [_failure(c["name"], e, start) for c in configs]
    return [_answer(run, start) for run in done]


def worker_main(argv=None) -> int:
    """A worker process: one task (a config as JSON) per stdin line, one result per stdout line.
    Everything else the library prints goes to stderr."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    signal.signal(signal.SIGTERM, _interrupt)
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    cache: dict = {}
    try:
        for line in sys.stdin:
            answers.write(json.dumps(train_one(json.loads(line), cache)) + "\n")
    except KeyboardInterrupt:  # the runner stops: the run in progress has recorded itself as interrupted
        return 130
    return 0


def _interrupt(*_):
    raise KeyboardInterrupt


class Worker:
    """A worker process on one slot, and a thread that queues its answers (and its exit)."""

    def __init__(self, gpu: str | None, threads: int, events: queue.Queue):
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        self.gpu, self.task = gpu, None
        self.proc = subprocess.Popen([sys.executable, "-m", "resnet_cifar.runner", "--threads", str(threads)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        threading.Thread(target=self._read, args=(events,), daemon=True).start()

    def _read(self, events: queue.Queue) -> None:
        for line in self.proc.stdout:
            events.put(("answer", self, json.loads(line)))
        events.put(("exit", self, self.proc.wait()))

    def give(self, task: Task, config: dict) -> None:
        self.task = task
        self.proc.stdin.write(json.dumps(config) + "\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        if self.proc.stdin and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except OSError:
                pass


def slots(device: str, jobs: int, n_runs: int) -> tuple[list[str | None], str]:
    """(the GPU of each worker, None off CUDA; the device name the workers train on)."""
    from .devices import pick_device
    dev = pick_device(device)
    if dev.type != "cuda":
        return [None] * max(min(jobs, n_runs), 1), device if device != "auto" else dev.type
    import torch
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    gpus = [g.strip() for g in visible.split(",") if g.strip()] if visible else \
        [str(i) for i in range(torch.cuda.device_count())]
    if dev.index is not None:
        gpus = [gpus[dev.index]]
    return [gpus[i % len(gpus)] for i in range(max(min(jobs * len(gpus), n_runs), 1))], "cuda"


def run_plan(runs, profile: str, folder: Path, device: str = "auto", jobs: int = 1, data_dir: str | None = None,
             threads: int | None = None, status_every: float = 30.0, out=print, fuse: int = 1) -> int:
    """Train the runs (PlannedRun) of `profile` that are not finished in `folder`; 0 when all
    finish (complete or diverged), 1 when any failed, 130 when interrupted. `fuse` > 1: in
    groups of at most `fuse` runs, each group one fused model (fused.py), in this process."""
    from .fused import check_fuse
    from .plan import model_flops, status
    if jobs < 1 or status_every <= 0:
        raise ValueError(f"jobs must be >= 1 and status_every > 0, got {jobs} and {status_every}")
    if check_fuse(fuse) > 1 and jobs > 1:
        raise ValueError(f"--fuse {fuse} trains its groups in this process, one group at a time: pass --jobs 1, "
                         f"or --fuse 1 to train single runs in --jobs {jobs} workers")
    tasks = []
    for r in runs:
        s = status(r, profile, folder)
        if s["state"] == "finished":
            continue
        config = r.config(profile, device=device, data_dir=data_dir, runs_dir=str(folder), wait=True)
        done = s["done"] if s["state"] in ("interrupted", "running") else 0
        tasks.append(Task(r.name, config, done, (config.iterations - done) * config.batch_size * model_flops(config)))
    view = View(tasks, out)
    if not tasks:
        view.say(f"all {len(runs)} runs of profile {profile} are finished in {folder}")
        return 0
    tasks.sort(key=lambda t: -t.work)  # the longest first: the last ones to finish are short
    gpus, worker_device = slots(device, jobs, len(tasks))
    gpus = gpus if fuse == 1 else gpus[:1]  # fused groups train in this process
    if threads is None and gpus[0] is None:  # CPU: the profile's thread count (smoke: 1; see config.PROFILE_THREADS)
        threads = PROFILE_THREADS.get(profile)
    threads_given, threads = threads, threads or max(1, (os.cpu_count() or 1) // len(gpus))
    where = (f"in this process on {device}" + (f", fused in groups of at most {fuse}" if fuse > 1 else "")
             if len(gpus) == 1 else f"{len(gpus)} worker processes" +
             (f" on GPU(s) {', '.join(sorted(set(gpus)))}" if gpus[0] is not None
              else f" on {worker_device}, {threads} thread(s) each"))
    view.say(f"{len(tasks)} of {len(runs)} runs to train ({len(runs) - len(tasks)} finished) into {folder}; {where}")
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        if len(gpus) == 1:
            if threads_given:
                import torch
                torch.set_num_threads(threads_given)
            code = _in_process(tasks, view, status_every, fuse)
        else:
            code = _with_workers(tasks, view, gpus, worker_device, threads, status_every)
    finally:
        signal.signal(signal.SIGTERM, previous)
        _report(folder, profile, device, gpus, tasks, view)
    failed = [t for t in tasks if t.state == "failed"]
    view.say(f"{view.status()}" + (f" · FAILED: {', '.join(t.name for t in failed)}" if failed else "")
             + f" · report {folder / 'runner.json'}")
    stale = [t.name for t in failed if state(t.config, folder / t.name)["state"] == "conflict"]
    if stale:  # e.g. runs of an earlier budget of this profile
        view.say(f"{len(stale)} of the failed runs' folders hold another config: delete them to train this plan's "
                 f"({' '.join(str(folder / name) for name in stale)})")
    return code or (1 if failed else 0)


def _finish(task: Task, answer: dict, view: View) -> None:
    task.state, task.detail, task.seconds = ("done" if answer["ok"] else "failed"), answer["detail"], answer["seconds"]
    ended = "finished" if answer["ok"] else "FAILED"
    view.say(f"{ended} {task.name} ({task.where}, {hms(task.seconds)}): {task.detail}")


def _in_process(tasks: list[Task], view: View, status_every: float, fuse: int = 1) -> int:
    stop = threading.Event()

    def tick():
        while not stop.wait(status_every):
            view.say(view.status())
    threading.Thread(target=tick, daemon=True).start()
    cache: dict = {}
    from .fused import groups
    by_name = {t.name: t for t in tasks}
    try:
        for group in [[t.config] for t in tasks] if fuse == 1 else groups([t.config for t in tasks], fuse):
            members = [by_name[c.name] for c in group]
            for task in members:
                task.state, task.where, task.started = "running", task.config.device, time.perf_counter()
            if len(members) == 1:
                view.say(f"start {members[0].name}")
                _finish(members[0], train_one(dict(vars(members[0].config), progress="log"), cache), view)
                continue
            view.say(f"start a fused group of {len(members)}: {', '.join(t.name for t in members)}")
            for task in members:
                task.where += f", fused with {len(members) - 1} other(s)"
            answers = train_fused([dict(vars(t.config), progress="log") for t in members], cache)
            for task, answer in zip(members, answers):
                _finish(task, answer, view)
    except KeyboardInterrupt:
        view.say("interrupted: the run in progress is recorded as interrupted; run again to resume it")
        view.interrupted()
        return 130
    finally:
        stop.set()
    return 0


def _with_workers(tasks, view, gpus, worker_device, threads, status_every) -> int:
    events: queue.Queue = queue.Queue()
    pending = deque(tasks)
    workers = [Worker(gpu, threads, events) for gpu in gpus]

    def hand(worker: Worker) -> None:
        if not pending:
            worker.close()
            return
        task = pending.popleft()
        task.state, task.started = "running", time.perf_counter()
        task.where = worker_device + (f", GPU {worker.gpu}" if worker.gpu is not None else "")
        worker.give(task, dict(vars(task.config), device=worker_device, progress="none"))
        view.say(f"start {task.name} ({task.where})")

    last = time.perf_counter()
    try:
        for w in workers:
            hand(w)
        while any(t.state == "running" for t in tasks):
            try:
                kind, worker, message = events.get(timeout=max(status_every - (time.perf_counter() - last), 0.1))
            except queue.Empty:
                kind = None
            if kind == "answer":
                _finish(worker.task, message, view)
                worker.task = None
                hand(worker)
            elif kind == "exit":
                workers.remove(worker)
                if worker.task is not None:  # it died during a run (out of memory, a crash)
                    _finish(worker.task, dict(ok=False, seconds=time.perf_counter() - worker.task.started,
                                              detail=f"its worker process exited with status {message}"), view)
                    if pending:
                        workers.append(Worker(worker.gpu, threads, events))
                        hand(workers[-1])
            if time.perf_counter() - last >= status_every:
                view.say(view.status())
                last = time.perf_counter()
    except KeyboardInterrupt:
        view.say("interrupted: stopping the workers; their runs are recorded as interrupted; run again to resume")
        for w in workers:
            if w.proc.poll() is None:
                w.proc.send_signal(signal.SIGINT)
        for w in workers:
            try:
                w.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                w.proc.kill()
        view.interrupted()
        return 130
    finally:
        for w in workers:
            w.close()
    for w in workers:
        w.proc.wait()
    return 0


def _report(folder: Path, profile: str, device: str, gpus, tasks: list[Task], view: View) -> None:
    """runner.json in the runs folder: how each run of this runner ended."""
    try:
        write_json(Path(folder) / "runner.json", dict(
            profile=profile, device=device, workers=len(gpus), gpus=[g for g in gpus if g is not None],
            finished=time.strftime("%Y-%m-%dT%H:%M:%S"), seconds=view.elapsed(), progress=view.status(),
            runs={t.name: dict(state=t.state, detail=t.detail, seconds=t.seconds, where=t.where) for t in tasks}))
    except OSError:
        pass


if __name__ == "__main__":
    sys.exit(worker_main())
