"""Which device a run uses, what it is called, and how it does its arithmetic."""
from __future__ import annotations

import functools
import os
import platform

import torch

# the CPU features that decide fp32 / bf16 speed, as a device label names them
FEATURE_NAMES = {"avx2": "AVX2", "avx512f": "AVX-512", "avx512_bf16": "AVX-512-BF16",
                 "amx_bf16": "AMX-BF16"}


class DeviceError(ValueError):
    """The requested device is not on this machine."""


def available_devices() -> list[str]:
    cuda = range(torch.cuda.device_count()) if torch.cuda.is_available() else []
    mps = ["mps"] if torch.backends.mps.is_available() else []
    return ["cpu", *(f"cuda:{i}" for i in cuda), *mps]


def pick_device(name: str = "auto") -> torch.device:
    """auto: cuda, then mps, then cpu; a missing device is a DeviceError naming those there."""
    available = available_devices()
    if name == "auto":
        return torch.device(next((d for d in available if d != "cpu"), "cpu").split(":")[0])
    device = torch.device(name)
    full = f"cuda:{device.index or 0}" if device.type == "cuda" else device.type
    if full not in available:
        raise DeviceError(f"device {name!r} is not available on this machine; available: "
                          f"{', '.join(available)} (or auto).")
    return device


def _cpuinfo(key: str) -> str | None:
    """The first `key : value` line's value of /proc/cpuinfo (None where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith(key)), None)
    except OSError:
        return None


@functools.cache
def cpu_model() -> str:
    return _cpuinfo("model name") or platform.processor() or platform.machine()


@functools.cache
def cpu_features() -> tuple[str, ...]:
    """Which of FEATURE_NAMES the processor has (Linux /proc/cpuinfo flags; empty elsewhere)."""
    flags = (_cpuinfo("flags") or "").split()
    return tuple(f for f in FEATURE_NAMES if f in flags)


def native_bf16(device: torch.device) -> bool:
    """Whether bfloat16 arithmetic runs natively: a CUDA GPU that supports it, or a CPU with
    AVX-512-BF16 or AMX (elsewhere PyTorch emulates it, tens of times slower than fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and bool({"avx512_bf16", "amx_bf16"} & set(cpu_features()))


def device_label(device: torch.device | str) -> str:
    """What a measurement ran on: 'NVIDIA H200', 'AMD EPYC 9B14 (AVX2, AVX-512; 2 of 2 threads)'."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type != "cpu":
        return device.type
    features = ", ".join(FEATURE_NAMES[f] for f in cpu_features()) or "no AVX2"
    model = cpu_model() if "CPU" in cpu_model() else f"{cpu_model()} CPU"
    return f"{model} ({features}; {torch.get_num_threads()} of {os.cpu_count()} threads)"


def machine(label: str) -> str:
    """The machine of a `device_label`, for one-line captions: 'AMD EPYC CPU', 'NVIDIA H200'."""
    return label.split(" (")[0]


def set_numerics(dtype: str, device: torch.device) -> dict:
    """Set TF32 explicitly (on for dtype 'tf32' only; PyTorch's cuDNN default would be on) and cuDNN
    autotuning, and return the settings for the run's record."""
    tf32 = dtype == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = device.type == "cuda"  # fixed shapes: tune the kernels once
    return dict(dtype=dtype, tf32_matmul=tf32, tf32_cudnn=tf32,
                cudnn_benchmark=torch.backends.cudnn.benchmark)
