"""Tiled prediction: shapes for every kind of input, tiling agreement, progress and cancel."""

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from napari_attention_unet.core.images import ImageShapeError
from napari_attention_unet.core.model import AttentionUNet, ModelConfig
from napari_attention_unet.core.predict import PredictOptions, Progress, predict, run_to_end, tile_starts

DATA = Path(__file__).parent / "data" / "images"
FLUO = DATA / "00071198d059ba7f5914a526d124d28e6d010c92466da21d4a04cd5413362552.tif"
HE = DATA / "00ae65c1c6631ae6f2be1a449902976e6eb8483bf6b0740d00530220832c6d3e.tif"


@pytest.fixture(scope="module")
def fluo():
    return tifffile.imread(FLUO)


def check_result(result, spatial_shape, gate_names=("gate1", "gate2"), background=True):
    assert result.labels.shape == spatial_shape
    assert np.issubdtype(result.labels.dtype, np.integer) and result.labels.min() == (0 if background else 1)
    assert result.probability.shape == spatial_shape and result.probability.dtype == np.float32
    assert 0 <= result.probability.min() and result.probability.max() <= 1
    assert sorted(result.gate_maps) == sorted(gate_names)
    for gate in result.gate_maps.values():
        assert gate.shape == spatial_shape and gate.dtype == np.float32
        assert 0 <= gate.min() and gate.max() <= 1


def test_tile_starts_cover_with_overlap():
    assert tile_starts(100, 128, 16) == [0]
    starts = tile_starts(1000, 256, 32)
    assert starts[0] == 0 and starts[-1] == 1000 - 256
    assert all(b - a <= 256 - 32 for a, b in zip(starts, starts[1:]))


def test_tiled_and_untiled_agree_on_a_real_image(tiny_model, fluo):
    # float32 (on CPUs with native bf16 'auto' is bf16, whose rounding differs from tile to tile)
    tiled = run_to_end(predict(tiny_model, fluo, tile_size=64, overlap=16, precision="fp32"))
    whole = run_to_end(predict(tiny_model, fluo, tile_size=1024, precision="fp32"))
    check_result(tiled, fluo.shape)
    assert np.abs(tiled.probability - whole.probability).max() < 1e-3
    for name in whole.gate_maps:
        assert np.abs(tiled.gate_maps[name] - whole.gate_maps[name]).max() < 1e-3


def test_rgb_uint8_and_float(tiny_model):
    rgb = tifffile.imread(HE)
    check_result(run_to_end(predict(tiny_model, rgb, tile_size=128)), rgb.shape[:2])
    check_result(run_to_end(predict(tiny_model, rgb.astype(np.float64) / 255, tile_size=128)), rgb.shape[:2])


def test_multichannel_with_stated_channel_axis():
    model = AttentionUNet(ModelConfig(in_channels=2, base_width=4, depth=3)).eval()
    image = np.random.default_rng(0).random((2, 40, 50)).astype(np.float32)
    check_result(run_to_end(predict(model, image, axes="CYX")), (40, 50))
    with pytest.raises(ImageShapeError, match="takes 2 channel"):
        run_to_end(predict(model, np.zeros((40, 50, 3), np.uint8)))


@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.float32, np.float64])
def test_any_dtype_and_odd_sizes(tiny_model, dtype):
    image = (np.random.default_rng(1).random((37, 53)) * 1000).astype(dtype)
    check_result(run_to_end(predict(tiny_model, image, tile_size=32, overlap=8)), (37, 53))


def test_stack_with_2d_model_is_predicted_slice_by_slice(tiny_model, fluo):
    plane = fluo[:64, :64]
    stack = np.stack([plane, plane, plane])  # normalisation is stack-wide, so use identical planes
    result = run_to_end(predict(tiny_model, stack, tile_size=64, precision="fp32"))  # exact, so float32
    check_result(result, stack.shape)
    single = run_to_end(predict(tiny_model, plane, tile_size=64, precision="fp32"))
    for z in range(3):
        assert np.allclose(result.probability[z], single.probability, atol=1e-5)
    # ids are unique across slices
    ids = [set(np.unique(plane)) - {0} for plane in result.labels]
    assert not (ids[0] & ids[1]) and not (ids[1] & ids[2])


def test_volume_with_3d_model():
    model = AttentionUNet(ModelConfig(spatial_dims=3, in_channels=1, base_width=2, depth=3)).eval()
    volume = np.random.default_rng(2).random((10, 40, 36)).astype(np.float32)
    result = run_to_end(predict(model, volume, tile_size=16, overlap=4))
    check_result(result, volume.shape)
    whole = run_to_end(predict(model, volume, tile_size=64))
    assert np.abs(result.probability - whole.probability).max() < 1e-3


def test_anisotropic_volume_is_seen_with_cubic_voxels_by_a_3d_model():
    """z step 3x the xy step: the 3D model sees the volume stretched 3x in z; outputs on the image grid."""
    from torch.nn import functional as F

    torch.manual_seed(0)
    model = AttentionUNet(ModelConfig(spatial_dims=3, in_channels=1, base_width=2, depth=3)).eval()
    yy, xx = np.mgrid[:32, :32]
    volume = np.zeros((6, 32, 32), np.float32)
    for z in range(6):  # an ellipsoid of cell, thin in z as sampled
        volume[z] = ((yy - 16) ** 2 + (xx - 16) ** 2 < (10 - 3 * abs(z - 2.5)) ** 2).astype(np.float32)
    result = run_to_end(predict(model, volume, spacing=(3.0, 1.0, 1.0), tile_size=64))
    # This untrained model calls every voxel foreground, with p(interior) above the 3D seed threshold
    # (0.3) everywhere: one object fills the volume.
    check_result(result, volume.shape, background=False)
    assert set(result.gate_maps) == {"gate1", "gate2"}
    assert all(g.shape == volume.shape for g in result.gate_maps.values())

    # The same by hand: stretch z to 18 planes, predict with cubic voxels, shrink back.
    stretched = F.interpolate(torch.from_numpy(volume)[None, None], size=(18, 32, 32), mode="trilinear")[0, 0]
    by_hand = run_to_end(predict(model, stretched.numpy(), tile_size=64, keep_class_probabilities=True))
    probs = F.interpolate(torch.from_numpy(by_hand.class_probabilities)[None], size=(6, 32, 32), mode="trilinear")[0]
    np.testing.assert_allclose(result.probability, 1 - (probs[0] / probs.sum(0)).numpy(), atol=1e-3)
    # Near-cubic voxels are not resampled; the result then equals the plain prediction.
    plain = run_to_end(predict(model, volume, tile_size=64))
    near = run_to_end(predict(model, volume, spacing=(1.1, 1.0, 1.0), tile_size=64))
    np.testing.assert_array_equal(plain.probability, near.probability)
    assert not np.allclose(plain.probability, result.probability, atol=1e-3)
    with pytest.raises(ValueError, match="spacing"):
        run_to_end(predict(model, volume, spacing=(0.0, 1.0, 1.0)))


def test_unsupported_inputs_raise_clear_errors(tiny_model):
    with pytest.raises(ImageShapeError, match="dimensions"):
        run_to_end(predict(tiny_model, np.zeros((2, 2, 3, 32, 32))))
    with pytest.raises(ImageShapeError, match="dtype"):
        run_to_end(predict(tiny_model, np.zeros((32, 32), np.complex64)))
    with pytest.raises(ValueError, match="unknown gate"):
        run_to_end(predict(tiny_model, np.zeros((32, 32)), gates=["gate9"]))


def test_pixels_that_are_not_numbers_do_not_empty_the_prediction(fluo):
    """NaN pixels (e.g. outside a scan's mask) read as the image's low end; before, one NaN made the
    percentiles NaN and the whole result empty."""
    from napari_attention_unet.models.registry import open_model

    model = open_model()[0]
    image = fluo.astype(np.float32)
    holed = image.copy()
    holed[10, 10] = np.nan
    holed[100:110, :5] = np.nan
    holed[200, 200] = np.inf
    plain = run_to_end(predict(model, image, gates=()))
    result = run_to_end(predict(model, holed, gates=()))
    assert np.isfinite(result.probability).all()
    assert plain.labels.max() > 10 and abs(int(result.labels.max()) - int(plain.labels.max())) <= 2
    far = np.ones(image.shape, bool)
    far[:40, :40] = far[80:130, :30] = far[180:220, 180:220] = False
    assert (result.labels[far] > 0).mean() == pytest.approx((plain.labels[far] > 0).mean(), abs=0.002)
    assert result.nan_values == 52 and plain.nan_values == 0  # counted (the infinite one too): the dock and CLI say so


def test_progress_is_monotonic_and_complete(tiny_model, fluo):
    reports = list(predict(tiny_model, fluo, tile_size=64, overlap=16))
    assert all(isinstance(r, Progress) for r in reports)
    done = [r.done for r in reports]
    assert done == sorted(done) and reports[-1].done == reports[-1].total and reports[-1].stage == "done"
    assert len(reports) >= 16  # one report per tile at least


def test_small_objects_get_a_second_look_at_an_enlarged_image(fluo):
    """A model whose config names the object sizes it knows enlarges an image whose objects came out
    smaller; every output comes back on the image's grid, and progress counts both passes."""
    import copy

    from napari_attention_unet.core.instances import median_diameter, small_object_zoom

    torch.manual_seed(0)
    model = AttentionUNet(ModelConfig(base_width=4, depth=3)).eval()
    with torch.no_grad():  # every pixel interior: one object as large as the image
        model.head.bias.copy_(torch.tensor([-20.0, 20.0, -20.0]))
    image = fluo[:100, :90]
    plain = run_to_end(predict(model, image, tile_size=64, overlap=16))
    assert plain.zoom is None  # no size record in the config: no second look
    assert median_diameter(plain.labels) == pytest.approx(2 * np.sqrt(100 * 90 / np.pi))

    knows = copy.deepcopy(model)
    knows.config.extra["small_objects"] = {"below": 1e6, "to": 1e7, "max_zoom": 1.5}
    reports, gen = [], predict(knows, image, tile_size=64, overlap=16)
    try:
        while True:
            reports.append(next(gen))
    except StopIteration as stop:
        result = stop.value
    assert result.zoom == 1.5
    assert result.labels.shape == result.probability.shape == result.gate_maps["gate1"].shape == (100, 90)
    assert np.all(result.labels == 1)  # the one object, back on the image's grid
    done = [r.done for r in reports]
    assert done == sorted(done) and reports[-1].done == reports[-1].total and reports[-1].stage == "done"
    # The first reports count the image's own tiles; the enlarged image's tiles were added later.
    assert reports[0].total == plain_tiles(image) + 1 < reports[-1].total
    assert run_to_end(predict(knows, image, tile_size=64, overlap=16, auto_zoom=False)).zoom is None
    # A fixed factor (the block engine's): 1 is no zoom at all, and a factor must be positive.
    fixed = run_to_end(predict(model, image, tile_size=64, overlap=16, zoom=1.5))
    assert fixed.zoom == 1.5 and np.all(fixed.labels == 1)
    same = run_to_end(predict(model, image, tile_size=64, overlap=16, zoom=1))
    assert same.zoom is None and np.array_equal(same.labels, plain.labels)
    with pytest.raises(ValueError, match="positive"):
        PredictOptions(zoom=0)

    assert small_object_zoom(None) is None and small_object_zoom(16.0) is None
    assert small_object_zoom(10.0) == pytest.approx(1.8) and small_object_zoom(4.0) == 3.0
    assert median_diameter(np.zeros((5, 5), np.int32)) is None


def plain_tiles(image):
    from napari_attention_unet.core.tiling import Tiling

    return len(Tiling(image.shape, 64, 16, 4, fit=False).tiles)


def test_cancel_stops_within_one_tile(tiny_model, fluo):
    calls = []
    net = tiny_model.fused_for_inference()
    net.register_forward_hook(lambda *_: calls.append(1))
    gen = predict(tiny_model, fluo, tile_size=64, overlap=16, inference_model=net)
    first = next(gen)
    assert first.done == 1 and first.total > 10
    gen.close()
    assert len(calls) == 1
    with pytest.raises(StopIteration):
        next(gen)


def test_a_paused_prediction_leaves_the_thread_able_to_train(tiny_model, fluo):
    # A napari worker thread runs the next job while an earlier generator sits at a yield (or
    # was dropped there): inference mode held across the yield broke fine-tuning in that thread
    # ("element 0 of tensors does not require grad").
    gen = predict(tiny_model, fluo, tile_size=64, overlap=16)
    assert next(gen).done == 1
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
    x = torch.zeros(1, 3, 32, 32)
    logits, _ = tiny_model(x)
    logits.sum().backward()  # raises if the thread were still in inference mode
    assert tiny_model.head.weight.grad is not None
    gen.close()


def test_gate_selection_and_semantic_output(tiny_model, fluo):
    result = run_to_end(predict(tiny_model, fluo, gates=["gate2"], instances=False))
    assert list(result.gate_maps) == ["gate2"]
    assert set(np.unique(result.labels)) <= {0, 1}
    assert run_to_end(predict(tiny_model, fluo, gates=[])).gate_maps == {}


def test_device_is_reported(tiny_model):
    result = run_to_end(predict(tiny_model, np.zeros((32, 32), np.uint8), device="cpu"))
    assert result.device == "cpu"


def test_instance_ids_are_unique_across_planes():
    from napari_attention_unet.core.predict import _instances_per_plane

    probabilities = np.zeros((3, 2, 20, 20), np.float32)
    probabilities[0] = 1
    probabilities[:, :, 5:12, 5:12] = np.array([0, 1, 0], np.float32)[:, None, None, None]
    labels = _instances_per_plane(probabilities, min_size=4)
    assert labels[0, 8, 8] > 0 and labels[1, 8, 8] > 0 and labels[0, 8, 8] != labels[1, 8, 8]


def test_a_3d_model_given_an_rgb_image_says_it_is_2d_with_channels():
    model = AttentionUNet(ModelConfig(spatial_dims=3, in_channels=1, base_width=4, depth=3))
    rgb = np.zeros((64, 48, 3), np.uint8)
    with pytest.raises(
        ImageShapeError, match=r"this one is 2D \(spatial axes YX, 3 channel\(s\), shape \(64, 48, 3\)\)"
    ):
        run_to_end(predict(model, rgb, device="cpu"))
