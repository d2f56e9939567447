"""A volume too large to predict whole with a 3D model is refused before it takes the machine's memory."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_attention_unet.core import memory
from napari_attention_unet.core.memory import NotEnoughMemoryError, check_volume_fits, volume_prediction_bytes
from napari_attention_unet.core.model import AttentionUNet, ModelConfig
from napari_attention_unet.core.predict import predict, run_to_end

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_estimate_grows_with_the_grid_the_outputs_and_the_instance_step():
    sizes = {"channels": 1, "classes": 3, "gates": 3, "base_width": 16}
    cubic = volume_prediction_bytes((64, 256, 256), (64, 256, 256), **sizes)
    assert 500e6 < cubic < 600e6  # measured 461 MB (benchmarks/bench_memory.py)
    assert volume_prediction_bytes((64, 256, 256), (128, 256, 256), **sizes) > cubic + 150e6  # z step 2: 2x grid
    assert volume_prediction_bytes((64, 256, 256), (64, 256, 256), **sizes, instances=True) > cubic
    assert volume_prediction_bytes((64, 256, 256), (64, 256, 256), **{**sizes, "gates": 0}) < cubic


def test_a_volume_that_does_not_fit_is_refused_with_a_size_that_does():
    check_volume_fits(10**9, (64, 256, 256), available=2 * 10**9)  # fits: nothing said
    with pytest.raises(NotEnoughMemoryError) as caught:
        check_volume_fits(10**11, (512, 2048, 2048), available=20 * 10**9)
    said = str(caught.value)
    assert "512x2048x2048 volume whole with a 3D model needs about 100.0 GB" in said
    assert "20.0 GB is available: crop it to a region of about 277x1111x1111 voxels" in said
    assert isinstance(caught.value, ValueError)  # reported as a bad image is, by the CLI and the dock
    assert memory.available_memory() is None or memory.available_memory() > 0


def test_predict_refuses_before_allocating_and_only_for_volumes_predicted_whole(monkeypatch):
    torch.manual_seed(0)
    model3d = AttentionUNet(ModelConfig(spatial_dims=3, in_channels=1, base_width=2, depth=3)).eval()
    model2d = AttentionUNet(ModelConfig(spatial_dims=2, in_channels=1, base_width=2, depth=3)).eval()
    volume = np.zeros((8, 32, 32), np.float32)
    normalised = []
    monkeypatch.setattr("napari_attention_unet.core.predict.normalize", lambda *a, **k: normalised.append(1))
    monkeypatch.setattr(memory, "available_memory", lambda: 10**6)  # 1 MB free
    with pytest.raises(NotEnoughMemoryError, match="8x32x32 volume whole"):
        run_to_end(predict(model3d, volume, device="cpu"))
    assert not normalised  # refused before the first copy of the volume
    monkeypatch.undo()
    monkeypatch.setattr(memory, "available_memory", lambda: 10**6)
    plane_by_plane = run_to_end(predict(model2d, volume, device="cpu", gates=()))  # a 2D model: not checked
    assert plane_by_plane.labels.shape == volume.shape


def test_the_command_line_and_the_dock_say_why(monkeypatch, tmp_path, model_home, capsys):
    tifffile = pytest.importorskip("tifffile")
    from napari_attention_unet.cli import main
    from napari_attention_unet.core.weights import save_model
    from napari_attention_unet.gui.session import explain_error

    torch.manual_seed(0)
    save_model(AttentionUNet(ModelConfig(spatial_dims=3, in_channels=1, base_width=2, depth=3)), tmp_path / "m3d")
    tifffile.imwrite(tmp_path / "vol.tif", np.zeros((8, 32, 32), np.uint16))
    monkeypatch.setattr(memory, "available_memory", lambda: 10**6)
    model = str(tmp_path / "m3d.safetensors")
    assert main(["predict", str(tmp_path / "vol.tif"), "--model", model, "--out", str(tmp_path / "out")]) == 1
    assert "skipping" in (err := capsys.readouterr().err) and "needs about" in err and "close other programs" in err
    assert not (tmp_path / "out" / "vol_labels.tif").exists()
    try:
        check_volume_fits(10**11, (512, 2048, 2048), available=20 * 10**9)
    except NotEnoughMemoryError as exc:
        assert explain_error(exc).startswith("This image cannot be segmented as it is: predicting this 512x2048")


def test_the_dock_refuses_a_lazy_volume_before_loading_it(monkeypatch):
    """A dask volume under a 3D model: the estimate is checked on its shape, before any block is computed."""
    dask_array = pytest.importorskip("dask.array")
    from napari_attention_unet.gui.session import Session

    computed = []
    volume = dask_array.zeros((8, 32, 32), chunks=(4, 32, 32), dtype=np.uint16).map_blocks(
        lambda block: computed.append(block.shape) or block, dtype=np.uint16
    )
    computed.clear()  # dask calls it once on an empty block to learn its output
    session = Session(device="cpu")
    torch.manual_seed(0)
    session.model = AttentionUNet(ModelConfig(spatial_dims=3, in_channels=1, base_width=2, depth=3)).eval()
    monkeypatch.setattr(memory, "available_memory", lambda: 10**6)
    with pytest.raises(NotEnoughMemoryError, match="8x32x32 volume whole"):
        run_to_end(session.predict(volume))
    assert not computed  # nothing loaded
    monkeypatch.undo()
    assert run_to_end(session.predict(volume)).labels.shape == (8, 32, 32) and computed


def test_when_the_network_alone_does_not_fit_no_crop_is_suggested():
    with pytest.raises(NotEnoughMemoryError) as caught:
        check_volume_fits(300 * 10**6, (64, 64, 64), available=200 * 10**6, fixed=226 * 10**6)
    assert "the network alone needs about 226 MB on one tile: close other programs" in str(caught.value)
    assert "crop" not in str(caught.value)


def test_a_scan_turned_for_the_model_is_refused_in_its_own_axis_order(monkeypatch):
    torch.manual_seed(0)
    model = AttentionUNet(ModelConfig(spatial_dims=3, in_channels=1, base_width=2, depth=3)).eval()
    monkeypatch.setattr(memory, "available_memory", lambda: 10**6)
    with pytest.raises(NotEnoughMemoryError, match="this 8x16x32 volume"):  # PSR stored: turned, it is 32x8x16
        run_to_end(predict(model, np.zeros((8, 16, 32), np.float32), orientation=("PSR", "RAS"), device="cpu"))
