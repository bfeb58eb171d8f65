"""The benchmark's instruments (bench.py uses them): step functions timed in turns, a matmul
peak, a step's multiply-adds, the conventional torchvision pipeline to compare with, where a
step's time goes (torch.profiler), and what several runs at once on one device make of it."""
from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time

import torch

from .devices import set_numerics
from .models import multiply_adds

KINDS = (  # (kind, name fragments): the first match wins. Batch norm comes first, since cuDNN's batch-norm
    # kernels are named cudnn::bn_...; cuDNN's other kernels are convolutions (and their layout changes).
    ("batch norm", ("batch_norm", "batchnorm", "cudnn::bn_", "bn_fw", "bn_bw")),
    ("convolution", ("conv", "cudnn", "implicit_gemm", "fprop", "dgrad", "wgrad", "winograd")),
    ("matmul", ("gemm", "addmm", "aten::mm", "matmul")),
    ("optimizer", ("foreach", "multi_tensor", "sgd")),
    ("relu", ("relu", "clamp_min", "threshold")),
)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


SPREAD_LIMIT = 1.25  # a figure whose rounds differ by more (max / min) is flagged: the machine changed under it


def spread(rates) -> float | None:
    """max / min of a figure's rounds (1.0: they agree; None: fewer than two rounds)."""
    rates = [r for r in rates or () if r]
    return max(rates) / min(rates) if len(rates) > 1 else None


def race(steps: dict, images, device: torch.device, rounds: int, warmup: int, seconds: float) -> dict:
    """Time each step function of `steps`: `warmup` untimed calls (at least one; the last
    sizes its window: about `seconds`, at least one call), then `rounds` rounds in which each
    takes its window in turn, so that whatever else slows the machine slows them alike and
    their ratios hold. `images`: what one call processes, one number or {name: number}.
    {name: {images_per_s (the median of the rounds), rates (each round's), spread (max / min),
    warmup_s, other_cores (other processes' CPU use during the rounds, `OtherLoad`)}}."""
    per_call = images if isinstance(images, dict) else dict.fromkeys(steps, images)
    out = {}
    for name, fn in steps.items():
        t0 = time.perf_counter()
        for _ in range(max(warmup, 1)):
            sync(device)
            t1 = time.perf_counter()
            fn()
        sync(device)
        out[name] = dict(warmup_s=time.perf_counter() - t0, rates=[],
                         n=max(1, round(seconds / max(time.perf_counter() - t1, 1e-6))))
    with OtherLoad() as load:  # the timed rounds only: compilation's short-lived workers are no other load
        for _ in range(rounds):
            for name, fn in steps.items():
                sync(device)
                t0 = time.perf_counter()
                for _ in range(out[name]["n"]):
                    fn()
                sync(device)
                out[name]["rates"].append(per_call[name] * out[name]["n"] / (time.perf_counter() - t0))
    return {name: dict(images_per_s=statistics.median(r["rates"]), rates=r["rates"], spread=spread(r["rates"]),
                       warmup_s=r["warmup_s"], other_cores=load.cores) for name, r in out.items()}


def matmul_step(device: torch.device, numerics: str = "float32", n: int | None = None):
    """(step, FLOP per call): an n x n x n torch.matmul in `numerics` (float32 with TF32 off,
    tf32, float64 or bfloat16; n = 2048 on a CPU, 8192 on a GPU); on a GPU a call holds 10
    matmuls, so that launch and sync do not count. Sets the numerics."""
    n, inner = (n or 8192, 10) if device.type == "cuda" else (n or 2048, 1)
    set_numerics(numerics, device)
    dtype = {"float64": torch.float64, "bfloat16": torch.bfloat16}.get(numerics, torch.float32)
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=g).to(device=device, dtype=dtype) for _ in range(2))

    def step():
        for _ in range(inner):
            product = a @ b
        return product  # what a test checks: the work was done
    return step, 2 * n ** 3 * inner


def macs_per_image(depth: int = 32) -> int:
    """Multiply-adds of one 3x32x32 image through ResNet-`depth`'s convolutions and classifier."""
    return multiply_adds("resnet", depth, "A")


class PILCIFAR(torch.utils.data.Dataset):
    """What `torchvision.datasets.CIFAR10` does per item: an HWC uint8 array, made into a PIL image,
    through `transform`."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform):
        self.data, self.targets = images.permute(0, 2, 3, 1).contiguous().numpy(), labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        from PIL import Image
        return self.transform(Image.fromarray(self.data[i])), self.targets[i]


def conventional_loader(images: torch.Tensor, labels: torch.Tensor, batch_size: int, num_workers: int,
                        pin_memory: bool = False, seed: int = 0) -> torch.utils.data.DataLoader:
    """The reference-repository pipeline: PIL images, torchvision transforms (per-channel
    normalization), a DataLoader (shuffle, drop_last)."""
    from torchvision import transforms
    x = images.double() / 255
    transform = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                                    transforms.ToTensor(), transforms.Normalize(x.mean((0, 2, 3)).tolist(),
                                                                                x.std((0, 2, 3)).tolist())])
    return torch.utils.data.DataLoader(
        PILCIFAR(images, labels, transform), batch_size=batch_size, shuffle=True, drop_last=True,
        num_workers=num_workers, pin_memory=pin_memory, persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(seed))


LOAD_LIMIT = 0.25  # cores: other processes using more while a benchmark runs make its record "under load"


def _busy_seconds() -> tuple[float, float] | None:
    """(CPU seconds the whole machine spent busy, of which this process and its descendants)
    since boot, from /proc (None where there is none)."""
    try:
        tick = os.sysconf("SC_CLK_TCK")
        total = [int(x) for x in open("/proc/stat").readline().split()[1:9]]
        busy = sum(total) - total[3] - total[4]  # all but idle and iowait
        procs = {}
        for name in os.listdir("/proc"):
            if name.isdigit():
                with contextlib.suppress(OSError, ValueError, IndexError):
                    text = open(f"/proc/{name}/stat").read()
                    fields = text[text.rindex(")") + 2:].split()
                    procs[int(name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))  # ppid, utime + stime
    except (OSError, ValueError, AttributeError):
        return None
    ours, grew = {os.getpid()}, True
    while grew:
        new = {pid for pid, (ppid, _) in procs.items() if ppid in ours} - ours
        ours, grew = ours | new, bool(new)
    return busy / tick, sum(procs[pid][1] for pid in ours if pid in procs) / tick


class OtherLoad:
    """`with OtherLoad() as load: ...`, then `load.cores`: the CPU that other processes used over
    the block, in cores (machine busy time minus this process tree's, per second; None without
    /proc). A benchmark is its machine's speed only when this stays near zero."""
    cores: float | None = None

    def __enter__(self) -> "OtherLoad":
        self.start, self.wall = _busy_seconds(), time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        end, wall = _busy_seconds(), time.perf_counter() - self.wall
        if self.start and end and wall > 0:
            self.cores = max(0.0, ((end[0] - self.start[0]) - (end[1] - self.start[1])) / wall)


def other_load_now(seconds: float = 1.0) -> float | None:
    """Other processes' CPU use over `seconds` of this process waiting (in cores)."""
    with OtherLoad() as load:
        time.sleep(seconds)
    return load.cores


def load_average() -> float | None:
    """The 1-minute load average (how busy the machine was), where the system reports one."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def op_kind(name: str) -> str:
    """The kind of an op (CPU) or kernel (CUDA) row of torch.profiler, by its name."""
    name = name.lower()
    return next((kind for kind, parts in KINDS if any(p in name for p in parts)), "other")


def profile_summary(events: list[dict], cuda: bool, steps: int, top: int = 12) -> dict:
    """Shares of the profiled time from torch.profiler rows (name, calls, device_type 'cpu' or
    'cuda', self_cpu_us, self_device_us). On a GPU only the kernel rows count, by their device
    time (an op row's device time is its kernels' time again); on a CPU the ops' self CPU time
    (self: a parent op does not count its children's)."""
    key = "self_device_us" if cuda else "self_cpu_us"
    rows = sorted((e for e in events if e["device_type"] == ("cuda" if cuda else "cpu") and e[key] > 0),
                  key=lambda e: e[key], reverse=True)
    total = sum(e[key] for e in rows) or 1.0
    by_kind: dict[str, float] = {}
    for e in rows:
        by_kind[op_kind(e["name"])] = by_kind.get(op_kind(e["name"]), 0.0) + 100 * e[key] / total
    return dict(time="CUDA kernel time" if cuda else "self CPU time", steps=steps, ms_per_step=total / 1000 / steps,
                by_kind=dict(sorted(by_kind.items(), key=lambda kv: -kv[1])),
                rows=[dict(name=e["name"], kind=op_kind(e["name"]), calls=e["calls"], ms_per_step=e[key] / 1000 / steps,
                           share=100 * e[key] / total) for e in rows[:top]])


@contextlib.contextmanager
def _native_stderr_silenced():
    """File descriptor 2 to /dev/null for a while: torch.profiler's C++ side prints there
    (profiler_start/stop lines and, without a GPU, a failed device count), which a notebook shows."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def profile_steps(step, device: torch.device, steps: int = 3) -> dict:
    """`profile_summary` of torch.profiler over `steps` calls of `step()`."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile
    cuda = device.type == "cuda"
    with _native_stderr_silenced(), profile(activities=[ProfilerActivity.CPU] + [ProfilerActivity.CUDA] * cuda) as prof:
        for _ in range(steps):
            step()
        sync(device)
    events = [dict(name=e.key, calls=e.count, device_type="cuda" if e.device_type == DeviceType.CUDA else "cpu",
                   self_cpu_us=e.self_cpu_time_total, self_device_us=getattr(e, "self_device_time_total", 0))
              for e in prof.key_averages()]
    return profile_summary(events, cuda, steps)


def _worker(spec: dict, barrier, results) -> None:
    """One of several runs: build its step, warm up, wait for the others, step for `seconds`."""
    try:
        torch.set_num_threads(spec["threads"])
        device = torch.device(spec["device"])
        step = spec["make_step"](*spec["args"])
        for _ in range(spec["warmup"]):
            step()
        sync(device)
        barrier.wait(timeout=600)
        t0, n = time.perf_counter(), 0
        while True:
            step()
            n += 1
            if device.type == "cuda" and n % 10:  # on a GPU the clock is read (after a sync) every 10 steps
                continue
            sync(device)
            if time.perf_counter() - t0 >= spec["seconds"]:
                break
        results.put(dict(images_per_s=n * spec["images"] / (time.perf_counter() - t0)))
    except BaseException as e:
        barrier.abort()
        results.put(dict(error=f"{type(e).__name__}: {e}"))


def measure_concurrent(runs: int, make_step, args: tuple, device: torch.device, images: int, seconds: float,
                       warmup: int = 1) -> dict:
    """Total images/s of `runs` processes at once on `device`, each stepping what
    `make_step(*args)` returns (a picklable function; `images` per step), against one
    process alone. On a CPU the threads are shared out (threads // runs each); on a GPU
    each process has its own CUDA context."""
    import torch.multiprocessing as mp
    ctx, threads = mp.get_context("spawn"), torch.get_num_threads()

    def launch(k: int) -> list[float]:
        barrier, results = ctx.Barrier(k), ctx.Queue()
        spec = dict(make_step=make_step, args=args, device=str(device), images=images, seconds=seconds, warmup=warmup,
                    threads=max(1, threads // k) if device.type == "cpu" else threads)
        procs = [ctx.Process(target=_worker, args=(spec, barrier, results)) for _ in range(k)]
        for p in procs:
            p.start()
        out = [results.get(timeout=900) for _ in procs]
        for p in procs:
            p.join()
        errors = [r["error"] for r in out if "error" in r]
        if errors:
            raise RuntimeError(f"a concurrent run failed: {errors[0]}")
        return [r["images_per_s"] for r in out]

    single, packed = launch(1)[0], launch(runs)
    return dict(runs=runs, threads_single=threads, threads_per_run=max(1, threads // runs) if device.type == "cpu"
                else threads, single=single, per_run=packed, total=sum(packed), speedup=sum(packed) / single,
                seconds=seconds)
