"""Choosing the compute device and precision."""

from __future__ import annotations

import torch

__all__ = [
    "DEVICE_CHOICES",
    "autocast_dtype",
    "channels_last_format",
    "cpu_has_native_bf16",
    "describe_device",
    "pick_device",
]

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


def cpu_has_native_bf16() -> bool:
    """Whether this CPU runs bf16 matrix maths in hardware (Intel AMX or AVX512-BF16), as oneDNN sees it.

    There, convolutions under bf16 autocast run about 2.7x faster than in float32; elsewhere
    (e.g. AVX2 only) bf16 is emulated and slower, so 'auto' stays float32.
    """
    cpu = getattr(torch, "cpu", None)
    for check in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        try:
            if bool(getattr(cpu, check)()):
                return True
        except (AttributeError, RuntimeError):  # an older torch, or a build without the check
            continue
    return False


def describe_device(device: torch.device, precision: str = "auto") -> str:
    """Human-readable name and precision, e.g. 'CUDA (NVIDIA H100 80GB HBM3), bf16' or 'CPU (2 threads, bf16)'."""
    amp = autocast_dtype(device, precision)
    name = {torch.bfloat16: "bf16", torch.float16: "fp16", None: "fp32"}[amp]
    if device.type == "cuda":
        return f"CUDA ({torch.cuda.get_device_name(device)}), {name}"
    if device.type == "mps":
        return f"Apple MPS, {name}"
    threads = torch.get_num_threads()
    return f"CPU ({threads} thread{'' if threads == 1 else 's'}, {name})"


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The reduced-precision dtype to run under, or None for float32.

    'auto' is bf16 on GPUs that support it, else fp16 on CUDA; bf16 on CPUs that run it
    natively (:func:`cpu_has_native_bf16`); float32 on other CPUs and on MPS. fp16 is for
    CUDA only: the CPU has no fast fp16 path and training would need a CUDA gradient scaler.
    """
    precision = precision.lower()
    if precision in ("fp32", "float32", "off"):
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        if device.type == "cpu":
            raise ValueError("fp16 runs on CUDA GPUs only; on the CPU choose bf16 or fp32")
        return torch.float16
    if precision != "auto":
        raise ValueError(f"unknown precision {precision!r}; choose auto, bf16, fp16 or fp32")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return None


def channels_last_format(spatial_dims: int) -> torch.memory_format:
    """Channels-last for 2D (NHWC) or 3D (NDHWC): on the CPU both are faster than the default
    layout, NHWC by ~25 %, NDHWC by ~25-30 % (0.78-0.89 s against 1.00-1.17 s for a training step
    of the default 3D network on two 48x56x40 patches, 2 cores, interleaved runs); 3D prediction
    1.9 s against 2.5 s for a 64x128x128 volume."""
    return torch.channels_last if spatial_dims == 2 else torch.channels_last_3d
