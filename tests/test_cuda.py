"""The code paths that only run on a CUDA GPU: mixed-precision prediction and training.

Skipped where there is no GPU (CI, most laptops); run on a lent GPU with
``python -m pytest tests/test_cuda.py``. They import core only (no napari), so they
also run on a machine that has torch but not the viewer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from napari_attention_unet.core.device import autocast_dtype, describe_device, pick_device
from napari_attention_unet.core.model import AttentionUNet, ModelConfig
from napari_attention_unet.core.predict import predict, run_to_end
from napari_attention_unet.core.train import TrainConfig, Trainer
from napari_attention_unet.core.weights import load_model
from napari_attention_unet.models.registry import bundled_dir

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def pair() -> tuple[np.ndarray, np.ndarray]:
    import tifffile

    image = sorted((DATA / "images").glob("*.tif"))[0]
    return tifffile.imread(image), tifffile.imread(DATA / "masks" / image.name)


@pytest.fixture(scope="module")
def bundled() -> AttentionUNet:
    return load_model(bundled_dir() / "nuclei.safetensors")[0]


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / max(np.count_nonzero(a) + np.count_nonzero(b), 1)


def test_auto_picks_cuda_and_names_it():
    device = pick_device("auto")
    assert device.type == "cuda"
    assert describe_device(device).startswith("CUDA (") and torch.cuda.get_device_name(device) in describe_device(
        device
    )
    assert autocast_dtype(device) in (torch.bfloat16, torch.float16)


@pytest.mark.parametrize("precision", ["auto", "fp16", "fp32"])
def test_gpu_prediction_matches_cpu(bundled, pair, precision):
    image, _ = pair
    cpu = run_to_end(predict(bundled, image, device="cpu"))
    gpu = run_to_end(predict(bundled, image, device="cuda", precision=precision))
    assert gpu.device == "cuda"
    assert gpu.probability.dtype == np.float32 and gpu.probability.shape == image.shape[:2]
    # "fp32" convolutions on Ampere and later run in TF32 (10-bit mantissa); bf16 keeps 8 bits.
    tolerance = 5e-3 if precision == "fp32" else 0.1
    assert np.abs(gpu.probability - cpu.probability).mean() < tolerance / 10
    assert np.abs(gpu.probability - cpu.probability).max() < tolerance * 5
    assert _dice(gpu.labels > 0, cpu.labels > 0) > 0.99
    for name, gate in gpu.gate_maps.items():
        assert np.abs(gate - cpu.gate_maps[name]).mean() < tolerance / 10, name


def test_gpu_tiled_prediction_matches_whole(bundled, pair):
    image, _ = pair
    whole = run_to_end(predict(bundled, image, device="cuda", gates=[]))
    tiled = run_to_end(predict(bundled, image, device="cuda", gates=[], tile_size=128, overlap=32))
    assert _dice(whole.labels > 0, tiled.labels > 0) > 0.98


@pytest.mark.parametrize("precision", ["bf16", "fp16", "fp32"])
def test_training_on_cuda_learns_in_each_precision(pair, precision):
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    torch.manual_seed(0)
    model = AttentionUNet(ModelConfig(base_width=8, depth=4))
    config = TrainConfig(
        max_steps=80, patch_size=128, batch_size=8, lr=1e-2, warmup_steps=5, eval_every=20,
        from_scratch=True, precision=precision,
    )  # fmt: skip
    trainer = Trainer(model, [pair], config=config, device="cuda")
    assert trainer.device.type == "cuda"
    assert trainer.amp == {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision]
    # fp16 needs loss scaling; bf16 and fp32 do not.
    assert trainer.scaler.is_enabled() == (precision == "fp16")
    start = trainer.validate()[0]
    reports = list(trainer.run())
    result = trainer.result()
    losses = [r.loss for r in reports]
    assert all(np.isfinite(losses))
    assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:5])
    assert result.accepted, result.message
    assert result.best_val_dice > max(start, 0.6)
    # The result lives on the CPU, whatever it was trained on, and predicts there.
    assert all(p.device.type == "cpu" for p in result.model.parameters())
    assert run_to_end(predict(result.model, pair[0], device="cpu", gates=[])).labels.max() > 0


def test_cuda_checkpoint_resumes_on_cuda(pair, tmp_path):
    torch.manual_seed(0)
    model = AttentionUNet(ModelConfig(base_width=4, depth=3))
    config = TrainConfig(max_steps=10, patch_size=64, batch_size=2, eval_every=5, from_scratch=True, precision="fp16")
    trainer = Trainer(model, [pair], config=config, device="cuda")
    list(trainer.run())
    torch.save(trainer.checkpoint(), tmp_path / "last.pt")
    config.max_steps = 15
    again = Trainer(model, [pair], config=config, device="cuda")
    again.load_checkpoint(torch.load(tmp_path / "last.pt", weights_only=True, map_location="cuda"))
    assert again.step == 10 and again.scaler.get_scale() == trainer.scaler.get_scale()
    list(again.run())
    assert again.step == 15


@pytest.mark.parametrize("precision", ["auto", "fp16"])
def test_a_model_with_members_predicts_on_cuda_as_on_the_cpu(precision):
    """Members (core.train.folds): the average of their probabilities in half precision on the GPU."""
    from napari_attention_unet.core.model import join_members

    config = ModelConfig(spatial_dims=3, in_channels=1, classes=("background", "a", "b"), task="semantic", depth=4)
    singles = []
    for seed in range(3):
        torch.manual_seed(seed)
        singles.append(AttentionUNet(config).eval())
    joined = join_members(singles)
    volume = np.random.default_rng(0).normal(size=(24, 40, 40)).astype(np.float32)
    options = dict(axes="ZYX", keep_class_probabilities=True)
    cpu = run_to_end(predict(joined, volume, device="cpu", precision="fp32", **options))
    gpu = run_to_end(predict(joined, volume, device="cuda", precision=precision, **options))
    assert gpu.device == "cuda" and gpu.labels.shape == volume.shape
    assert np.abs(gpu.class_probabilities - cpu.class_probabilities).mean() < 0.01
    for name, gate in gpu.gate_maps.items():
        assert np.abs(gate - cpu.gate_maps[name]).mean() < 0.01, name
