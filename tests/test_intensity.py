"""CT intensities: a new model of CT-like volumes sees every scan through one fixed window (core.intensity),
kept in the model file and used by prediction, so what lies outside the scanner's field of view or the
labelled range does not move what the network sees."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_attention_unet.cli import main
from napari_attention_unet.core.images import normalize
from napari_attention_unet.core.intensity import choose_window, foreground_window, looks_like_hounsfield
from napari_attention_unet.core.predict import predict
from napari_attention_unet.core.progress import run_to_end
from napari_attention_unet.core.train.plan import plan_training
from napari_attention_unet.core.train.samples import training_samples
from napari_attention_unet.core.train.start import new_model, split_samples
from napari_attention_unet.core.weights import load_model, read_metadata, save_model

TINY = {"base_width": 4, "depth": 3}


def ct_volume(seed: int = 0, padding: int | None = None, shape=(16, 32, 32)) -> tuple[np.ndarray, np.ndarray]:
    """int16 Hounsfield units: air, a body of soft tissue (40), an organ (80, class 1), a bone (900);
    ``padding`` outside a round field of view."""
    rng = np.random.default_rng(seed)
    yy, xx = np.indices(shape[1:])
    image = np.full(shape, -1000.0)
    body = (yy - 16) ** 2 + (xx - 16) ** 2 < 13**2
    image[:, body] = 40
    labels = np.zeros(shape, np.uint8)
    labels[4:12, 10:18, 8:16] = 1
    image[labels == 1] = 80
    image[:, 20:24, 14:18] = 900
    image += rng.normal(0, 10, shape)
    if padding is not None:
        image[:, (yy - 16) ** 2 + (xx - 16) ** 2 > 15**2] = padding
    return np.round(image).astype(np.int16), labels


def test_ct_like_images_are_told_from_mr_microscopy_and_normalised_images():
    ct, _ = ct_volume()
    assert looks_like_hounsfield([ct, ct_volume(1, padding=-3024)[0]])
    assert looks_like_hounsfield([ct.astype(np.float32)])  # a NIfTI read as floats of whole numbers
    rng = np.random.default_rng(0)
    mr = rng.gamma(2.0, 300.0, (8, 16, 16)).astype(np.float32)  # arbitrary units, never below 0
    assert not looks_like_hounsfield([mr])
    assert not looks_like_hounsfield([ct, mr])  # every image must look like CT
    assert not looks_like_hounsfield([(ct - ct.mean()) / ct.std()])  # already normalised: not whole numbers
    assert not looks_like_hounsfield([rng.integers(0, 4096, (8, 16, 16), dtype=np.uint16)])  # a microscope's counts


def test_the_window_spans_the_labelled_voxels_of_all_images():
    a, b = np.arange(1000, dtype=np.float32).reshape(10, 100), np.full((10, 100), -1000.0, np.float32)
    la, lb = np.zeros((10, 100), np.uint8), np.zeros((10, 100), np.uint8)
    la[2:4] = 1  # values 200..399
    lb[0, :5] = 2  # five voxels of -1000
    lo, hi = foreground_window([a, b], [la, lb])
    assert -1000 <= lo < 200 and 395 < hi <= 399  # pooled, the 0.5 percentile reaches into b's voxels
    assert foreground_window([a], [np.zeros_like(la)]) is None  # nothing labelled
    assert foreground_window([b], [lb]) is None  # no range
    with pytest.raises(ValueError, match="intensity must be one of auto, image, window"):
        choose_window([a], [la], "hounsfield")


def test_normalising_through_a_window_maps_it_to_0_1_and_clips():
    image = np.array([[[-3024.0, -1000.0, 0.0, 50.0, 100.0, 3000.0]]], np.float32)
    out = normalize(image, window=((0.0, 100.0),))
    np.testing.assert_allclose(out[0, 0], [0, 0, 0, 0.5, 1, 1])
    # the window wins over ranges given for the image (e.g. a stack's percentiles)
    np.testing.assert_array_equal(normalize(image, ranges=((-1000.0, 1000.0),), window=((0.0, 100.0),)), out)


def test_a_new_model_of_ct_volumes_gets_one_window_and_says_so():
    pairs = [(*ct_volume(k, padding=p), "ZYX") for k, p in enumerate([None, -1024, -2048, -3024])]
    plan = plan_training(pairs, task="semantic", dims=3, steps=2, **TINY)
    ((lo, hi),) = plan.model.config.intensity_window
    assert 40 < lo < 80 < hi < 120  # the organ's 80 HU and its noise
    assert any("look like Hounsfield units (a CT)" in n and "--intensity image" in n for n in plan.notes)
    own = plan_training(pairs, task="semantic", dims=3, steps=2, intensity="image", **TINY)
    assert own.model.config.intensity_window is None
    # 2D models of CT planes too
    assert plan_training(pairs, task="semantic", dims=2, steps=2, **TINY).model.config.intensity_window is not None

    rng = np.random.default_rng(0)
    mr = [(rng.gamma(2.0, 300.0, (16, 32, 32)).astype(np.float32), lb, "ZYX") for _, lb, _ in pairs]
    plan = plan_training(mr, task="semantic", dims=3, steps=2, **TINY)
    assert plan.model.config.intensity_window is None and not any("window" in n for n in plan.notes)
    forced = plan_training(mr, task="semantic", dims=3, steps=2, intensity="window", **TINY)
    assert forced.model.config.intensity_window is not None
    assert any("one window" in n and "Hounsfield" not in n for n in forced.notes)
    colour = [(np.stack([im] * 3, axis=-1), lb, "ZYXC") for im, lb, _ in mr[:1]]
    with pytest.raises(ValueError, match="a fixed intensity window is for single-channel images, not 3 channels"):
        plan_training(colour, task="semantic", dims=3, steps=2, intensity="window", **TINY)


def test_a_window_model_sees_the_same_scan_whatever_lies_outside_the_field_of_view(tmp_path):
    pairs = [(*ct_volume(k), "ZYX") for k in range(2)]
    windowed = plan_training(pairs, task="semantic", dims=3, steps=2, **TINY).model
    own = plan_training(pairs, task="semantic", dims=3, steps=2, intensity="image", **TINY).model
    path = save_model(windowed, tmp_path / "ct.safetensors")
    loaded, _ = load_model(path)
    assert loaded.config.intensity_window == windowed.config.intensity_window
    assert read_metadata(path)[0].intensity_window == windowed.config.intensity_window

    plain, _ = ct_volume(5, padding=-1024)
    padded = plain.copy()
    padded[plain == -1024] = -3024  # another vendor's value outside the field of view
    settings = dict(axes="ZYX", device="cpu", keep_class_probabilities=True)
    a, b = (run_to_end(predict(loaded, v, **settings)) for v in (plain, padded))
    np.testing.assert_array_equal(a.class_probabilities, b.class_probabilities)
    for name, gate in a.gate_maps.items():
        np.testing.assert_array_equal(gate, b.gate_maps[name])
    # with each scan's own percentiles, the same change moves what the network sees
    c, d = (run_to_end(predict(own, v, **settings)) for v in (plain, padded))
    assert np.abs(c.class_probabilities - d.class_probabilities).max() > 1e-3


def test_training_samples_and_models_started_from_a_window_model_keep_its_window():
    pairs = [(*ct_volume(k, padding=-2048), "ZYX") for k in range(5)]
    plan = plan_training(pairs, task="semantic", dims=3, steps=2, **TINY)
    samples, validation = split_samples(plan.model.config, plan.config, plan.pairs)
    for sample in samples + validation:  # clipped to the window: air, padding and bone all at its ends
        assert sample.image.min() == 0.0 and sample.image.max() == 1.0
        assert (sample.image == 0.0).mean() > 0.3
    again = new_model("semantic", plan.model.config.classes, 3, 1, plan.model)
    assert again.config.intensity_window == plan.model.config.intensity_window
    # fine-tuning (attention-unet finetune, the dock) prepares its images through the same window
    tuned, _ = training_samples(plan.model.config, plan.config, plan.pairs[:1])
    assert tuned[0].image.min() == 0.0 and tuned[0].image.max() == 1.0  # its own percentiles leave bone above 1
    np.testing.assert_array_equal(tuned[0].image, samples[0].image)


def test_train_intensity_on_the_command_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NAPARI_ATTENTION_UNET_HOME", str(tmp_path / "home"))
    image, labels = ct_volume(0, padding=-2048)
    tifffile.imwrite(tmp_path / "ct.tif", image)
    tifffile.imwrite(tmp_path / "ct_labels.tif", labels)
    common = ["train", "--image", str(tmp_path / "ct.tif"), "--labels", str(tmp_path / "ct_labels.tif"), "--steps", "2"]
    tiny = ["--task", "semantic", "--dims", "3", "--base-width", "4", "--depth", "3", "--device", "cpu"]
    assert main([*common, "--out", str(tmp_path / "ct"), *tiny]) == 0
    assert "look like Hounsfield units (a CT)" in capsys.readouterr().err
    assert read_metadata(tmp_path / "ct.safetensors")[0].intensity_window is not None
    assert main([*common, "--out", str(tmp_path / "own"), "--intensity", "image", *tiny]) == 0
    assert read_metadata(tmp_path / "own.safetensors")[0].intensity_window is None
    predict_args = [str(tmp_path / "ct.tif"), "--out", str(tmp_path / "out"), "--model", str(tmp_path / "ct")]
    assert main(["predict", *predict_args]) == 0
    assert tifffile.imread(tmp_path / "out" / "ct_labels.tif").shape == labels.shape


def test_a_window_model_exports_its_window_and_the_package_reproduces_it(tmp_path):
    """ONNX's contract and a bioimage.io package state the window; bioimage.io's runner, applying the package's
    scale_linear and clip to the raw test image, reproduces the plugin's outputs."""
    pytest.importorskip("onnxscript", reason="ONNX export needs onnxscript (the [export] extra)")
    pytest.importorskip("bioimageio.core", reason="test runs need bioimageio.core (the [export] extra)")
    import torch

    from napari_attention_unet.core.model import AttentionUNet, ModelConfig
    from napari_attention_unet.export.bioimageio import validate_package
    from napari_attention_unet.export.network import normalisation_contract

    torch.manual_seed(0)
    config = ModelConfig(2, 1, ("background", "organ"), base_width=4, depth=3, task="semantic")
    config.extra["intensity_window"] = [[20.0, 120.0]]
    assert normalisation_contract(config)["window"] == [[20.0, 120.0]]
    model_file = save_model(AttentionUNet(config), tmp_path / "ct2d.safetensors")
    tifffile.imwrite(tmp_path / "slice.tif", ct_volume(0, padding=-2048, shape=(1, 64, 64))[0][0])
    args = ["export", str(model_file), "--format", "bioimageio", "--out", str(tmp_path / "ct2d")]
    assert main([*args, "--test-image", str(tmp_path / "slice.tif"), "--license", "MIT"]) == 0
    passed, report = validate_package(tmp_path / "ct2d.zip", run_test=True)
    assert passed, report
    from bioimageio.core import create_prediction_pipeline, load_model_description
    from bioimageio.core.digest_spec import get_test_input_sample

    descr = load_model_description(str(tmp_path / "ct2d.zip"))
    raw = get_test_input_sample(descr).members["image"].data.values.copy()
    sample = get_test_input_sample(descr)
    create_prediction_pipeline(descr, weight_format="onnx").apply_preprocessing(sample)
    expected = normalize(raw[0], window=((20.0, 120.0),))
    assert expected.min() == 0 and expected.max() == 1  # the slice reaches past both ends of the window
    assert np.abs(sample.members["image"].data.values[0] - expected).max() < 1e-5
