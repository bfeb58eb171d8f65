"""The runner: train every run of the plan that is not finished, `--jobs` at a time per GPU.

One run at a time, or fused groups, train in this process. Several at a time, each run trains in a
process of its own (`python -m resnet_cifar.runner CONFIG`) that sees only its slot's GPU
(CUDA_VISIBLE_DEVICES) and threads (OMP_NUM_THREADS). A failing run is reported and the others go
on. A status line every --status-every seconds; `runner.json` in the runs folder tells how each ended.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
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

    def __init__(self, tasks: list[Task], out=print):
        self.tasks, self.out, self.start = tasks, out, time.perf_counter()

    def say(self, text: str) -> None:
        self.out(f"[runner {hms(time.perf_counter() - self.start)}] {text}")
        sys.stdout.flush()  # a log file or a pipe sees each line when it happens

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
        return (f"{count['done']}/{len(self.tasks)} done · {count['running']} running · {count['left']} left · "
                f"{count['failed']} failed" + (f" · {count['interrupted']} interrupted" if count["interrupted"] else "")
                + f" · {images / max(elapsed, 1e-9):,.0f} images/s · ETA {hms(eta)}")

    def begin(self, task: Task, where: str) -> None:
        task.state, task.where, task.started = "running", where, time.perf_counter()

    def finish(self, task: Task, ok: bool, detail: str) -> None:
        task.state, task.detail, task.seconds = "done" if ok else "failed", detail, time.perf_counter() - task.started
        self.say(f"{'finished' if ok else 'FAILED'} {task.name} ({task.where}, {hms(task.seconds)}): {detail}")


def train_runs(configs: list[TrainConfig], dataset=None) -> list[tuple[bool, str]]:
    """Train (or reuse, or resume) one run, or a group as one fused model (fused.py): per run,
    (whether it finished, what happened). A failure fails the group only; Ctrl-C stops it."""
    from .fused import train_group
    from .train import train
    try:
        done = train_group(configs, dataset) if len(configs) > 1 else [train(configs[0], dataset=dataset)]
    except Exception as e:
        return [(False, f"{type(e).__name__}: {e}")] * len(configs)
    answers = []
    for run in done:
        error = run.summary.get("final_test_error")
        answers.append((run.status in FINISHED, run.summary.get("status_detail", run.status)
                        + (f", test error {100 * error:.2f} %" if error is not None else "")))
    return answers


def main(argv=None) -> int:
    """One run in a process of its own: its config as JSON in, its answer as the last line out."""
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        [(ok, detail)] = train_runs([TrainConfig(**json.loads((argv or sys.argv[1:])[0]))])
    except KeyboardInterrupt:  # the run has recorded itself as interrupted
        return 130
    print(json.dumps(dict(ok=ok, detail=detail)), flush=True)
    return 0


def _interrupt(*_):
    raise KeyboardInterrupt  # SIGTERM as Ctrl-C: the run in progress records itself as interrupted


def slots(device: str, jobs: int, n_runs: int) -> tuple[list[str | None], str]:
    """(the GPU of each slot, None off CUDA; the device the slots train on)."""
    from .devices import pick_device
    dev = pick_device(device)
    if dev.type != "cuda":
        return [None] * max(min(jobs, n_runs), 1), device if device != "auto" else dev.type
    import torch
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    gpus = [g.strip() for g in visible.split(",") if g.strip()] if visible else \
        [str(i) for i in range(torch.cuda.device_count())]
    gpus = gpus if dev.index is None else [gpus[dev.index]]
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
                         f"or --fuse 1 to train single runs, --jobs {jobs} at a time")
    tasks = []
    for r in runs:
        s = status(r, profile, folder)
        if s["state"] != "finished":
            config = r.config(profile, device=device, data_dir=data_dir, runs_dir=str(folder), wait=True)
            done = s["done"] if s["state"] in ("interrupted", "running") else 0
            work = (config.iterations - done) * config.batch_size * model_flops(config)
            tasks.append(Task(r.name, config, done, work))
    runner = Runner(sorted(tasks, key=lambda t: -t.work), out)  # the longest first: the last to finish are short
    if not tasks:
        runner.say(f"all {len(runs)} runs of profile {profile} are finished in {folder}")
        return 0
    gpus, slot_device = slots(device, jobs, len(tasks))
    gpus = gpus if fuse == 1 else gpus[:1]  # fused groups train in this process
    if threads is None and gpus[0] is None:  # CPU: the profile's thread count (smoke: 1; see config.PROFILE_THREADS)
        threads = PROFILE_THREADS.get(profile)
    per_slot = threads or max(1, (os.cpu_count() or 1) // len(gpus))
    if len(gpus) == 1:
        where = f"in this process on {device}" + (f", fused in groups of at most {fuse}" if fuse > 1 else "")
    elif gpus[0] is not None:
        where = f"{len(gpus)} worker processes on GPU(s) {', '.join(sorted(set(gpus)))}"
    else:
        where = f"{len(gpus)} worker processes on {slot_device}, {per_slot} thread(s) each"
    runner.say(f"{len(tasks)} of {len(runs)} runs to train ({len(runs) - len(tasks)} finished) into {folder}; {where}")
    previous, stop = signal.signal(signal.SIGTERM, _interrupt), threading.Event()

    def tick():
        while not stop.wait(status_every):
            runner.say(runner.status())
    threading.Thread(target=tick, daemon=True).start()
    code = 0
    try:
        if len(gpus) == 1:
            _in_process(runner, fuse, threads)
        else:
            _in_processes(runner, gpus, slot_device, per_slot)
    except KeyboardInterrupt:
        runner.say("interrupted: the runs in progress are recorded as interrupted; run again to resume them")
        for t in runner.tasks:
            t.state = "interrupted" if t.state == "running" else t.state
        code = 130
    finally:
        stop.set()
        signal.signal(signal.SIGTERM, previous)
        try:
            write_json(Path(folder) / "runner.json", dict(
                profile=profile, device=device, workers=len(gpus), gpus=[g for g in gpus if g is not None],
                finished=time.strftime("%Y-%m-%dT%H:%M:%S"), seconds=time.perf_counter() - runner.start,
                progress=runner.status(), runs={t.name: dict(state=t.state, detail=t.detail, seconds=t.seconds,
                                                             where=t.where) for t in runner.tasks}))
        except OSError:
            pass
    failed = [t for t in tasks if t.state == "failed"]
    runner.say(f"{runner.status()}" + (f" · FAILED: {', '.join(t.name for t in failed)}" if failed else "")
               + f" · report {folder / 'runner.json'}")
    stale = [t.name for t in failed if state(t.config, folder / t.name)["state"] == "conflict"]
    if stale:  # e.g. runs of an earlier budget of this profile
        runner.say(f"{len(stale)} of the failed runs' folders hold another config: delete them to train this "
                   f"plan's ({' '.join(str(folder / name) for name in stale)})")
    return code or (1 if failed else 0)


def _in_process(runner: Runner, fuse: int, threads: int | None) -> None:
    from .data import load_cifar10
    from .fused import groups
    if threads:
        import torch
        torch.set_num_threads(threads)
    tasks = {t.name: t for t in runner.tasks}
    configs = [dataclasses.replace(t.config, progress="log") for t in runner.tasks]
    dataset = load_cifar10(configs[0].data_dir)  # once for all the runs
    for group in [[c] for c in configs] if fuse == 1 else groups(configs, fuse):
        members = [tasks[c.name] for c in group]
        fused = f", fused with {len(group) - 1} other(s)" if len(group) > 1 else ""
        for task in members:
            runner.begin(task, task.config.device + fused)
        runner.say(f"start {members[0].name}" if len(group) == 1 else
                   f"start a fused group of {len(group)}: {', '.join(t.name for t in members)}")
        for task, (ok, detail) in zip(members, train_runs(group, dataset)):
            runner.finish(task, ok, detail)


def _in_processes(runner: Runner, gpus: list[str | None], device: str, threads: int) -> None:
    """Each run in a process of its own; slot k's processes see only GPU gpus[k]."""
    pending, running = list(runner.tasks), {}  # slot -> (task, its process, the process's output)
    try:
        while pending or running:
            for slot, gpu in enumerate(gpus):
                if slot in running or not pending:
                    continue
                task, output = pending.pop(0), tempfile.TemporaryFile("w+")
                env = dict(os.environ, OMP_NUM_THREADS=str(threads))
                if gpu is not None:
                    env["CUDA_VISIBLE_DEVICES"] = gpu
                config = json.dumps(vars(dataclasses.replace(task.config, device=device, progress="none")))
                running[slot] = task, subprocess.Popen([sys.executable, "-m", "resnet_cifar.runner", config],
                                                       stdout=output, text=True, env=env), output
                runner.begin(task, device + (f", GPU {gpu}" if gpu is not None else ""))
                runner.say(f"start {task.name} ({task.where})")
            time.sleep(0.2)
            for slot, (task, process, output) in list(running.items()):
                if process.poll() is not None:
                    del running[slot]
                    output.seek(0)
                    try:
                        answer = json.loads((output.read().splitlines() or [""])[-1])
                    except ValueError:  # it died during the run (out of memory, a crash)
                        answer = dict(ok=False, detail=f"its process exited with status {process.returncode}")
                    runner.finish(task, answer["ok"], answer["detail"])
    finally:  # interrupted: each process records its run as interrupted
        for _, process, _ in running.values():
            process.send_signal(signal.SIGINT)
        for _, process, _ in running.values():
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()


if __name__ == "__main__":
    sys.exit(main())
