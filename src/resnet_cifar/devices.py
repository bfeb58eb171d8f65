"""Which device a run uses, what it is called, and how it does its arithmetic."""
from __future__ import annotations

import functools
import os
import platform

import torch

CPU_FEATURES = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")  # the ones that decide fp32 / bf16 speed
FEATURE_NAMES = {"avx2": "AVX2", "avx512f": "AVX-512", "avx512_bf16": "AVX-512-BF16", "amx_bf16": "AMX-BF16"}


class DeviceError(ValueError):
    """The requested device is not on this machine."""


def available_devices() -> list[str]:
    names = ["cpu"]
    if torch.cuda.is_available():
        names += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        names.append("mps")
    return names


def pick_device(name: str = "auto") -> torch.device:
    """auto: cuda, then mps, then cpu. A device that is not there is one DeviceError naming those that are."""
    available = available_devices()
    if name == "auto":
        return torch.device(next((d for d in available if d != "cpu"), "cpu").split(":")[0])
    device = torch.device(name)
    present = (device.type == "cpu" or (device.type == "cuda" and f"cuda:{device.index or 0}" in available)
               or (device.type == "mps" and "mps" in available))
    if not present:
        raise DeviceError(f"device {name!r} is not available on this machine; available: {', '.join(available)} "
                          f"(or auto).")
    return device


def _cpuinfo(key: str) -> str | None:
    """The first `key : value` line's value of /proc/cpuinfo (None where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith(key)), None)
    except OSError:
        return None


@functools.lru_cache(maxsize=None)
def cpu_model() -> str:
    """The processor's model name."""
    return _cpuinfo("model name") or platform.processor() or platform.machine()


@functools.lru_cache(maxsize=None)
def cpu_features() -> tuple[str, ...]:
    """Which of CPU_FEATURES the processor has (Linux /proc/cpuinfo flags; empty elsewhere)."""
    flags = (_cpuinfo("flags") or "").split()
    return tuple(f for f in CPU_FEATURES if f in flags)


def native_bf16(device: torch.device) -> bool:
    """Whether bfloat16 arithmetic runs natively: a CUDA GPU that supports it, or a CPU
    with AVX-512-BF16 or AMX (elsewhere PyTorch emulates it, tens of times slower than fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return any(f in cpu_features() for f in ("avx512_bf16", "amx_bf16"))
    return False


def device_label(device: torch.device | str) -> str:
    """What a measurement ran on: 'NVIDIA H200' or 'AMD EPYC 9B14 (AVX2, AVX-512, AVX-512-BF16; 2 threads)'."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        features = ", ".join(FEATURE_NAMES[f] for f in cpu_features()) or "no AVX2"
        model = cpu_model() if "CPU" in cpu_model() else f"{cpu_model()} CPU"
        return f"{model} ({features}; {torch.get_num_threads()} of {os.cpu_count()} threads)"
    return device.type


def machine(label: str) -> str:
    """The machine of a `device_label`, for one-line captions: 'AMD EPYC CPU', 'NVIDIA H200'."""
    return label.split(" (")[0]


def set_numerics(dtype: str, device: torch.device) -> dict:
    """Set TF32 explicitly (on for dtype 'tf32' only; PyTorch's cuDNN default would be on)
    and cuDNN autotuning, and return the settings for the run's record."""
    tf32 = dtype == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = device.type == "cuda"  # fixed shapes: pick the fastest kernels once
    return dict(dtype=dtype, tf32_matmul=tf32, tf32_cudnn=tf32, cudnn_benchmark=torch.backends.cudnn.benchmark)
