"""Choosing the compute device and precision."""

from __future__ import annotations

import torch

__all__ = ["DEVICE_CHOICES", "autocast_dtype", "describe_device", "pick_device"]

DEVICE_CHOICES = ("auto", "cuda", "mps", "cpu")


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def pick_device(preference: str | torch.device = "auto") -> torch.device:
    """CUDA, then Apple MPS, then CPU; or the named device if it is there.

    Asking for a device that is missing is an error that says which ones exist,
    rather than a silent fall-back the user would not notice.
    """
    if isinstance(preference, torch.device):
        return preference
    name = (preference or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(
            f"device {name!r} was asked for but no CUDA GPU is available; available: {available_devices()}"
        )
    if name == "mps" and not _mps_available():
        raise RuntimeError(
            f"device 'mps' was asked for but Apple MPS is not available; available: {available_devices()}"
        )
    if name not in DEVICE_CHOICES and not name.startswith("cuda:"):
        raise ValueError(f"unknown device {preference!r}; choose one of {', '.join(DEVICE_CHOICES)}")
    return torch.device(name)


def available_devices() -> list[str]:
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices.insert(0, "cuda")
    if _mps_available():
        devices.insert(0, "mps")
    return devices


def describe_device(device: torch.device) -> str:
    """Human-readable name, e.g. 'CUDA (NVIDIA H100 80GB HBM3)' or 'CPU (2 threads)'."""
    if device.type == "cuda":
        return f"CUDA ({torch.cuda.get_device_name(device)})"
    if device.type == "mps":
        return "Apple MPS"
    return f"CPU ({torch.get_num_threads()} threads)"


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The reduced-precision dtype to run under, or None for float32.

    'auto' is bf16 on GPUs that support it, else fp16 on CUDA, and float32 on
    the CPU and MPS (where reduced precision is rarely faster).
    """
    precision = precision.lower()
    if precision in ("fp32", "float32", "off"):
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if precision != "auto":
        raise ValueError(f"unknown precision {precision!r}; choose auto, bf16, fp16 or fp32")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None
