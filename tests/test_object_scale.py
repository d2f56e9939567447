"""3D instance models see large objects shrunk to about OBJECT_VOXELS_3D voxels across, and new semantic models
large volumes shrunk to about MAX_VOXELS_3D voxels (core.resampling)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import napari_attention_unet.core.predict as predict_module
from napari_attention_unet.core.instances import probabilities_to_instances
from napari_attention_unet.core.predict import predict, run_to_end
from napari_attention_unet.core.resampling import (
    MAX_VOXELS_3D,
    OBJECT_VOXELS_3D,
    fitting_voxel_size,
    grid_zoom,
    isotropic_zoom,
    object_voxel_size,
    resample,
)
from napari_attention_unet.core.train import Trainer
from napari_attention_unet.core.train.plan import plan_training
from napari_attention_unet.core.train.start import split_samples
from napari_attention_unet.core.weights import load_model, save_model

pytestmark = pytest.mark.usefixtures("one_thread")


def balls(shape, radius: float, centres, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Bright noisy balls (ids 1..n) on a dark background, ZYX."""
    rng = np.random.default_rng(seed)
    grid = np.mgrid[tuple(slice(0, n) for n in shape)]
    labels = np.zeros(shape, np.uint16)
    for i, centre in enumerate(centres, start=1):
        inside = sum((g - c) ** 2 for g, c in zip(grid, centre)) < radius**2
        labels[inside & (labels == 0)] = i
    image = np.where(labels > 0, 200.0, 20.0) + rng.normal(0, 10, shape)
    return image.astype(np.float32), labels


def test_grid_zoom_is_cubic_without_a_model_voxel_and_shrinks_to_it_with_one():
    assert grid_zoom((2.0, 1.0, 1.0), 3) == isotropic_zoom((2.0, 1.0, 1.0), 3) == (2.0, 1.0, 1.0)
    assert grid_zoom((1.0, 0.5, 0.5), 3, voxel=1.0) == (1.0, 0.5, 0.5)
    assert grid_zoom(None, 3, voxel=2.0) == (0.5, 0.5, 0.5)  # no voxel size given: 1 per voxel
    assert grid_zoom((1.0, 1.0, 1.0), 3, voxel=1.1) is None  # nearly the volume's own grid
    with pytest.raises(ValueError, match="same|units"):  # nm against a model trained in um
        grid_zoom((1000.0, 500.0, 500.0), 3, voxel=1.0)


def test_the_voxel_size_makes_the_median_object_the_target_size_and_never_enlarges():
    _, large = balls((48, 64, 64), 14, [(24, 20, 20), (24, 44, 44)])
    voxel = object_voxel_size([large], [None])
    diameter = np.cbrt(6 * np.bincount(large.ravel())[1:] / np.pi)
    assert voxel == pytest.approx(np.median(diameter) / OBJECT_VOXELS_3D)
    # The same objects at a voxel size of 0.5 units are half as large in world units.
    assert object_voxel_size([large], [(0.5, 0.5, 0.5)]) == pytest.approx(voxel / 2)
    _, small = balls((32, 32, 32), 5, [(16, 10, 10), (16, 22, 22)])
    assert object_voxel_size([small], [None]) is None
    # Outlined in a few slices (zero_is="slices"), the objects are measured in those planes: as
    # flat discs in 3D they would look a few voxels wide, and the volumes would not be shrunk.
    sections = np.zeros_like(large)
    sections[[20, 32, 44]] = large[[20, 32, 44]]
    assert object_voxel_size([sections], [None]) is None
    in_planes = object_voxel_size([sections], [None], sections=True)
    assert in_planes == pytest.approx(voxel, rel=0.25)


def test_large_volumes_fit_the_voxel_budget_and_small_ones_keep_their_grid():
    ct = fitting_voxel_size([(70, 512, 512)], [(3.0, 0.78, 0.78)])  # a CT: 67 M voxels at its finest axis
    assert ct == pytest.approx((70 * 3.0 * (512 * 0.78) ** 2 / MAX_VOXELS_3D) ** (1 / 3))
    zoom = grid_zoom((3.0, 0.78, 0.78), 3, ct)
    assert np.prod([round(n * f) for n, f in zip((70, 512, 512), zoom)]) == pytest.approx(MAX_VOXELS_3D, rel=0.02)
    assert fitting_voxel_size([(36, 50, 35), (70, 512, 512)], [(1, 1, 1), (3.0, 0.78, 0.78)]) == ct  # the largest
    assert fitting_voxel_size([(36, 50, 35)], [(1.0, 1.0, 1.0)]) is None  # an MR hippocampus crop stays as it is
    assert fitting_voxel_size([(1000, 4096, 4096)], [None]) == pytest.approx(12.0)  # at most 12x the finest axis


def test_a_large_volume_trains_and_predicts_on_a_coarser_grid_back_on_its_own():
    """A new semantic model of a large anisotropic volume sees it at a voxel size that fits the budget,
    says so, and predicts labels and gate maps on the volume's own grid."""
    labels = np.zeros((40, 256, 256), np.uint8)
    labels[10:30, 60:200, 60:200] = 1
    labels[15:25, 100:150, 100:150] = 2
    image = (labels * 50.0 + np.random.default_rng(0).normal(0, 10, labels.shape)).astype(np.float32)
    spacing = (3.0, 0.5, 0.5)  # at its finest axis: 240 x 256 x 256, 15.7 M voxels
    plan = plan_training([(image, labels, "ZYX", spacing)], steps=1, base_width=4, depth=3)
    assert plan.model.config.voxel_size == pytest.approx(fitting_voxel_size([labels.shape], [spacing]))
    assert any("the volumes are large" in note for note in plan.notes)
    samples, validation = split_samples(plan.model.config, plan.config, plan.pairs)
    assert np.prod(samples[0].image.shape[1:]) <= 1.02 * MAX_VOXELS_3D
    trainer = Trainer(plan.model, config=plan.config, device="cpu", samples=samples, validation=validation)
    run_to_end(trainer.run())
    result = run_to_end(predict(trainer.result().trained_model, image, axes="ZYX", spacing=spacing))
    assert result.labels.shape == labels.shape and result.gate_maps["gate1"].shape == labels.shape


def test_shrinking_smooths_the_image_first_and_enlarging_is_unchanged():
    noise = np.random.default_rng(0).normal(size=(1, 32, 64, 64)).astype(np.float32)
    plain, smooth = resample(noise, (16, 32, 32)), resample(noise, (16, 32, 32), antialias=True)
    assert smooth.std() < 0.75 * plain.std()
    np.testing.assert_array_equal(resample(noise, (64, 64, 64)), resample(noise, (64, 64, 64), antialias=True))


def test_large_objects_train_and_predict_on_the_coarser_grid(tmp_path, monkeypatch):
    """A new 3D instance model of large objects stores its voxel size, trains on the volume
    shrunk to it, keeps it through a save, and predicts there, with labels on the volume's grid."""
    centres = [(20, 20, 20), (20, 20, 46), (20, 46, 20), (20, 46, 46)]
    image, labels = balls((40, 66, 66), 13, centres)
    plan = plan_training([(image, labels, "ZYX", None)], task="instances", dims=3, steps=2, base_width=4, depth=3)
    voxel = plan.model.config.extra["voxel_size"]
    assert voxel == pytest.approx(object_voxel_size([labels], [None]))
    assert any("voxel" in note for note in plan.notes)
    samples, validation = split_samples(plan.model.config, plan.config, plan.pairs)
    expected = tuple(round(n / voxel) for n in image.shape)
    assert samples[0].image.shape[1:] == expected and samples[0].target.shape == expected
    trainer = Trainer(plan.model, config=plan.config, device="cpu", samples=samples, validation=validation)
    run_to_end(trainer.run())

    path = save_model(trainer.result().trained_model, tmp_path / "balls")
    model, _ = load_model(path)
    assert model.config.extra["voxel_size"] == pytest.approx(voxel)
    seen = []

    def recorded(probabilities, **settings):
        seen.append(probabilities.shape[1:])
        return probabilities_to_instances(probabilities, **settings)

    monkeypatch.setattr(predict_module, "probabilities_to_instances", recorded)
    result = run_to_end(predict(model, image, axes="ZYX", gates=("gate1",), device="cpu"))
    assert seen == [expected]
    assert result.labels.shape == image.shape and result.gate_maps["gate1"].shape == image.shape
    with pytest.raises(ValueError, match="units"):
        run_to_end(predict(model, image, axes="ZYX", spacing=(1000.0, 1000.0, 1000.0), device="cpu"))


def test_a_model_started_from_another_keeps_its_grid():
    """Only a new model sizes its grid from the labels; a 3D model given as the start keeps its own."""
    torch.manual_seed(0)
    image, labels = balls((40, 66, 66), 13, [(20, 20, 20), (20, 46, 46)])
    start = plan_training([(image, labels, "ZYX", None)], task="instances", dims=3, steps=1, base_width=4, depth=3)
    assert "voxel_size" in start.model.config.extra
    _, small = balls((40, 66, 66), 5, [(20, 20, 20), (20, 46, 46)])
    again = plan_training([(image, small, "ZYX", None)], task="instances", dims=3, steps=1, start=start.model)
    assert again.model.config.extra.get("voxel_size") == start.model.config.extra["voxel_size"]


def test_objects_lost_between_voxels_of_a_coarser_grid_leave_no_gap_in_the_ids():
    """Labels made on a finer grid and brought back (nearest) lose objects smaller than a voxel of the
    image's grid; the others are numbered 1..n again, so the largest id counts the objects."""
    from napari_attention_unet.core.instances import without_gaps
    from napari_attention_unet.core.zoom import back_to_grid

    fine = np.zeros((20, 40, 40), np.int32)
    fine[2:10, 5:15, 5:15], fine[10, 20, 20], fine[12:18, 25:35, 25:35] = 1, 2, 3  # object 2: one voxel
    probs = np.full((3, *fine.shape), 1 / 3, np.float32)
    _, _, labels = back_to_grid(probs, {}, fine, (10, 40, 40))
    assert sorted(np.unique(labels).tolist()) == [0, 1, 2] and labels.max() == 2
    assert (labels[2, 10, 10], labels[7, 30, 30]) == (1, 2)  # object 3 is now 2
    same = np.array([[0, 1], [2, 2]], np.int32)
    assert without_gaps(same) is same  # nothing to renumber: the array itself, no copy
