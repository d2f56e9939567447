"""Device and precision: bf16 where the CPU runs it natively, float32 elsewhere, and bf16 that keeps the results."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_attention_unet.core import device as device_module
from napari_attention_unet.core.device import autocast_dtype, cpu_has_native_bf16, describe_device
from napari_attention_unet.core.metrics import average_precision
from napari_attention_unet.core.predict import predict, run_to_end

CPU = torch.device("cpu")


def cpu_flags() -> set[str] | None:
    """The CPU's feature flags as Linux reports them, or None elsewhere."""
    info = Path("/proc/cpuinfo")
    if not sys.platform.startswith("linux") or not info.is_file():
        return None
    for line in info.read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return None


def test_native_bf16_is_detected_from_the_cpu_features():
    flags = cpu_flags()
    if flags is None:
        pytest.skip("needs Linux's /proc/cpuinfo to know the CPU's features")
    assert cpu_has_native_bf16() == bool(flags & {"amx_tile", "avx512_bf16"})


@pytest.mark.parametrize(("native", "expected", "shown"), [(True, torch.bfloat16, "bf16"), (False, None, "fp32")])
def test_auto_precision_on_the_cpu_follows_native_bf16(monkeypatch, native, expected, shown):
    monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda: native)
    assert autocast_dtype(CPU, "auto") is expected
    assert re.search(rf"threads?, {shown}\)$", describe_device(CPU))
    assert autocast_dtype(CPU, "fp32") is None and autocast_dtype(CPU, "bf16") is torch.bfloat16
    assert re.search(r"threads?, fp32\)$", describe_device(CPU, "fp32"))


def test_one_thread_is_said_in_the_singular(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert describe_device(CPU, "fp32") == "CPU (1 thread, fp32)"
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert describe_device(CPU, "fp32") == "CPU (2 threads, fp32)"


def test_fp16_on_the_cpu_is_refused_with_a_reason():
    with pytest.raises(ValueError, match="CUDA GPUs only"):
        autocast_dtype(CPU, "fp16")


@pytest.mark.skipif(not cpu_has_native_bf16(), reason="this CPU has no native bf16 (AMX or AVX512-BF16): auto is fp32")
def test_auto_predicts_in_bf16_on_this_cpu(nuclei_sample_and_model):
    image, model = nuclei_sample_and_model
    auto = run_to_end(predict(model, image, device="cpu"))
    bf16 = run_to_end(predict(model, image, device="cpu", precision="bf16"))
    assert np.array_equal(auto.labels, bf16.labels)


@pytest.fixture(scope="module")
def nuclei_sample_and_model():
    from napari_attention_unet.gui.sample_data import nuclei_sample
    from napari_attention_unet.models.registry import ModelNotFoundError, open_model

    try:
        model = open_model()[0]
    except ModelNotFoundError:
        pytest.skip("the bundled model is not installed")
    return nuclei_sample()[0][0], model


def test_bf16_prediction_keeps_the_objects_and_gate_maps(nuclei_sample_and_model):
    """bf16 autocast on the CPU (native or emulated) against float32, with the bundled model."""
    image, model = nuclei_sample_and_model
    fp32 = run_to_end(predict(model, image, device="cpu", precision="fp32"))
    bf16 = run_to_end(predict(model, image, device="cpu", precision="bf16"))
    foreground32, foreground16 = fp32.probability > 0.5, bf16.probability > 0.5
    dice = 2 * (foreground32 & foreground16).sum() / (foreground32.sum() + foreground16.sum())
    # Measured on this sample: Dice 0.9995, AP 1.0, |dp| 2.5e-4, gates mean |d| <= 1.2e-3 and max 0.015.
    assert dice > 0.995
    assert average_precision(fp32.labels, bf16.labels) > 0.98  # the same objects, matched at IoU 0.5
    assert np.abs(fp32.probability - bf16.probability).mean() < 0.002
    for gate, coefficients in fp32.gate_maps.items():
        difference = np.abs(coefficients - bf16.gate_maps[gate])
        assert difference.mean() < 0.005 and difference.max() < 0.05, gate


def test_bf16_training_on_the_cpu_keeps_float32_weights(tiny_model):
    from napari_attention_unet.core.train import TrainConfig, Trainer

    rng = np.random.default_rng(0)
    image = rng.normal(size=(64, 64)).astype(np.float32)
    labels = np.zeros((64, 64), np.uint16)
    labels[10:30, 10:30], labels[40:60, 35:55] = 1, 2
    image[labels > 0] += 3
    trainer = Trainer(
        tiny_model, [(image, labels, "YX")], config=TrainConfig(max_steps=4, precision="bf16", patch_size=32)
    )
    assert trainer.amp is torch.bfloat16
    reports = list(trainer.run())
    assert reports and all(np.isfinite(r.loss) for r in reports)
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
