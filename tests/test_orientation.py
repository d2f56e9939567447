"""Volumes stored in another orientation than a model's training volumes are turned to it and back.

The same head stored ``RAS`` and ``LAS`` differs by a left-right flip of the array, stored ``PSR`` by a
transposition; a network trained on one sees a mirrored or turned anatomy in the other (anterior and
posterior swapped: Dice 0.81 -> 0.00 on the hippocampus). nibabel is the reference for what an
orientation is; our core code does not use it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_attention_unet.core.model import AttentionUNet, ModelConfig
from napari_attention_unet.core.orientation import (
    axcodes,
    labels_on_image_grid,
    reorient,
    reorient_affine,
    reorient_spacing,
    valid_orientation,
)
from napari_attention_unet.core.predict import predict, run_to_end

pytestmark = pytest.mark.usefixtures("one_thread")

ORIENTATIONS = ("RAS", "LAS", "RPS", "LPI", "PSR", "ASL", "SRA", "IAL")


def test_valid_orientations():
    assert all(valid_orientation(codes) for codes in ORIENTATIONS)
    assert not any(valid_orientation(codes) for codes in ("RRS", "RA", "ras", "RAX", None, "RASL"))


def test_axcodes_and_reorient_agree_with_nibabel():
    nib = pytest.importorskip("nibabel")
    from nibabel.orientations import axcodes2ornt, ornt_transform

    rng = np.random.default_rng(0)
    zyx = rng.normal(size=(4, 5, 6)).astype(np.float32)  # a RAS volume in napari's order: (k, j, i)
    ras = nib.Nifti1Image(np.transpose(zyx), np.diag([0.8, 0.9, 2.5, 1.0]))
    for codes in ORIENTATIONS:
        stored = ras.as_reoriented(ornt_transform(axcodes2ornt("RAS"), axcodes2ornt(codes)))
        assert axcodes(stored.affine) == "".join(nib.aff2axcodes(stored.affine)) == codes
        stored_zyx = np.transpose(np.asarray(stored.dataobj))
        np.testing.assert_array_equal(reorient(zyx, "RAS", codes), stored_zyx)
        np.testing.assert_array_equal(reorient(stored_zyx, codes, "RAS"), zyx)
        spacing = tuple(float(z) for z in stored.header.get_zooms()[::-1])
        assert reorient_spacing((2.5, 0.9, 0.8), "RAS", codes) == pytest.approx(spacing)
        np.testing.assert_allclose(reorient_affine(ras.affine, zyx.shape, "RAS", codes), stored.affine, atol=1e-9)
        back = reorient_affine(stored.affine, stored_zyx.shape, codes, "RAS")
        np.testing.assert_allclose(back, ras.affine, atol=1e-9)
    # An oblique scan (20 degrees about z) has the orientation of its closest axes, as nibabel says.
    a = np.deg2rad(20)
    oblique = np.eye(4)
    oblique[:3, :3] = [[-np.cos(a), np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 2.0]]
    assert axcodes(oblique) == "".join(nib.aff2axcodes(oblique)) == "LAS"
    assert axcodes(np.zeros((4, 4))) is None


def test_labels_stored_otherwise_are_turned_onto_the_images_grid():
    nib = pytest.importorskip("nibabel")
    from nibabel.orientations import axcodes2ornt, ornt_transform

    labels = np.zeros((4, 5, 6), np.uint8)
    labels[1, 2, :3] = 1  # on one side
    ras = nib.Nifti1Image(np.transpose(labels), np.diag([1.0, 1.0, 2.0, 1.0]))
    las = ras.as_reoriented(ornt_transform(axcodes2ornt("RAS"), axcodes2ornt("LAS")))
    turned, notes = labels_on_image_grid(labels, ras.affine, las.affine, las.shape[::-1])
    np.testing.assert_array_equal(turned, np.transpose(np.asarray(las.dataobj)))
    assert notes == ["the labels stored RAS and the image LAS: the labels are turned to the image's grid"]
    same, notes = labels_on_image_grid(labels, ras.affine, ras.affine, labels.shape)
    assert same is labels and notes == []
    shifted = ras.affine.copy()
    shifted[0, 3] = 5.0
    _, notes = labels_on_image_grid(labels, shifted, ras.affine, labels.shape)
    assert len(notes) == 1 and "different affines" in notes[0]


def test_a_volume_stored_otherwise_is_predicted_as_the_model_sees_its_training_volumes():
    """``orientation=(stored, trained)``: the same outputs as predicting the volume stored as the model was
    trained, turned back onto the stored grid, with the voxel size following the axes."""
    rng = np.random.default_rng(1)
    ras = rng.normal(size=(12, 20, 24)).astype(np.float32)
    ras[4:8, 5:15, 3:9] += 3.0  # something on one side
    torch.manual_seed(0)
    config = ModelConfig(spatial_dims=3, in_channels=1, base_width=4, depth=3, task="semantic", classes=("a", "b", "c"))
    model = AttentionUNet(config).eval()
    spacing = (2.0, 1.0, 1.0)
    reference = run_to_end(predict(model, ras, axes="ZYX", spacing=spacing, device="cpu"))
    for stored in ("LAS", "PSR"):
        volume = reorient(ras, "RAS", stored).copy()
        given = reorient_spacing(spacing, "RAS", stored)
        turned = run_to_end(
            predict(model, volume, axes="ZYX", spacing=given, orientation=(stored, "RAS"), device="cpu")
        )
        np.testing.assert_array_equal(turned.labels, reorient(reference.labels, "RAS", stored))
        for name, gate in reference.gate_maps.items():
            np.testing.assert_allclose(turned.gate_maps[name], reorient(gate, "RAS", stored), atol=1e-5)
        np.testing.assert_allclose(turned.probability, reorient(reference.probability, "RAS", stored), atol=1e-5)
        plain = run_to_end(predict(model, volume, axes="ZYX", spacing=given, device="cpu"))
        assert not np.allclose(plain.probability, turned.probability, atol=1e-3)  # without, another picture
    # A 2D image has no orientation: predicted as it is.
    plane = ras[0]
    model2d = AttentionUNet(ModelConfig(spatial_dims=2, in_channels=1, base_width=4, depth=3))
    same = run_to_end(predict(model2d, plane, orientation=("LAS", "RAS"), device="cpu", gates=()))
    np.testing.assert_array_equal(same.labels, run_to_end(predict(model2d, plane, device="cpu", gates=())).labels)


def test_cli_records_the_training_orientation_and_turns_volumes_stored_otherwise(tmp_path, model_home, capsys):
    """``train`` records its volumes' orientation (a second volume stored otherwise is turned to the first's);
    ``predict`` and ``finetune`` turn a volume stored otherwise to it, and write the outputs on its own grid."""
    nib = pytest.importorskip("nibabel")
    from nibabel.orientations import axcodes2ornt, ornt_transform

    from napari_attention_unet.cli import main
    from napari_attention_unet.core.weights import read_metadata

    rng = np.random.default_rng(2)
    zyx = rng.normal(0, 0.2, (8, 24, 28)).astype(np.float32)
    zyx[2:6, 4:12, 3:10] += 2.0
    classes = np.zeros(zyx.shape, np.uint8)
    classes[2:6, 4:12, 3:10] = 1
    classes[2:6, 14:20, 3:10], zyx[2:6, 14:20, 3:10] = 2, 1.0

    def write(path, array, codes):
        ras = nib.Nifti1Image(np.ascontiguousarray(np.transpose(array)), np.diag([1.0, 1.0, 2.0, 1.0]))
        nib.save(ras.as_reoriented(ornt_transform(axcodes2ornt("RAS"), axcodes2ornt(codes))), str(path))
        return str(path)

    def read(path):
        return np.transpose(np.asarray(nib.load(str(path)).dataobj))

    pairs = []
    for codes in ("RAS", "LAS"):
        pairs += ["--image", write(tmp_path / f"{codes}.nii.gz", zyx, codes)]
        pairs += ["--labels", write(tmp_path / f"{codes}_seg.nii.gz", classes, codes)]
    import tifffile

    tifffile.imwrite(tmp_path / "tiff_vol.tif", zyx)
    tifffile.imwrite(tmp_path / "tiff_seg.tif", classes)
    tiff = ["--image", str(tmp_path / "tiff_vol.tif"), "--labels", str(tmp_path / "tiff_seg.tif")]
    tiny = ["--base-width", "4", "--depth", "3", "--steps", "2", "--device", "cpu"]
    out = str(tmp_path / "mr")
    assert main(["train", *pairs, *tiff, "--out", out, "--task", "semantic", "--dims", "3", *tiny]) == 0
    said = capsys.readouterr().err
    assert "LAS.nii.gz is stored LAS, the first volume RAS: it is turned to RAS" in said
    assert "tiff_vol.tif state(s) no orientation (not NIfTI): taken as stored, as if RAS" in said
    assert read_metadata(tmp_path / "mr.safetensors")[1]["orientation"] == "RAS"

    stored = write(tmp_path / "new_PSR.nii.gz", zyx, "PSR")
    write(tmp_path / "new.nii.gz", zyx, "RAS")
    new = str(tmp_path / "new.nii.gz")
    assert main(["predict", stored, new, "--model", out, "--out", str(tmp_path / "pred")]) == 0
    said = capsys.readouterr().err
    assert "new_PSR.nii.gz is stored PSR, the model was trained on RAS volumes: it is turned to RAS" in said
    assert "new.nii.gz is stored" not in said
    assert "no --spacing" not in said  # each NIfTI file has its own voxel size: no note on the training one
    series = nib.load(stored)
    series = nib.Nifti1Image(np.stack([np.asarray(series.dataobj)] * 2, axis=-1), series.affine)
    nib.save(series, str(tmp_path / "series_PSR.nii.gz"))
    assert main(["predict", str(tmp_path / "series_PSR.nii.gz"), "--model", out, "--out", str(tmp_path / "s")]) == 1
    said = capsys.readouterr().err
    assert "time series of 2 volumes" in said and "is stored PSR" not in said  # the error alone
    assert (
        main(
            [
                "predict",
                str(tmp_path / "series_PSR.nii.gz"),
                "--model",
                out,
                "--out",
                str(tmp_path / "s"),
                "--time-point",
                "1",
            ]
        )
        == 0
    )
    assert "series_PSR.nii.gz is stored PSR" in capsys.readouterr().err
    turned, plain = read(tmp_path / "pred" / "new_PSR_labels.nii.gz"), read(tmp_path / "pred" / "new_labels.nii.gz")
    assert turned.shape == read(stored).shape != plain.shape  # on the stored grid
    np.testing.assert_array_equal(reorient(turned, "PSR", "RAS"), plain)
    tifffile.imwrite(tmp_path / "vol.tif", zyx)  # a TIFF volume: nothing says how it lies
    assert main(["predict", str(tmp_path / "vol.tif"), "--model", out, "--out", str(tmp_path / "pred")]) == 0
    assert "vol.tif states no orientation (it is not NIfTI): it is predicted as stored, as if it were RAS" in (
        capsys.readouterr().err
    )
    gates = nib.load(str(tmp_path / "pred" / "new_PSR_attention.nii.gz"))
    assert gates.shape[:3] == nib.load(stored).shape  # (x, y, z, gate) on the stored grid

    seg = write(tmp_path / "new_PSR_seg.nii.gz", classes, "PSR")
    args = ["finetune", "--model", out, "--image", stored, "--labels", seg, "--out", str(tmp_path / "mr2")]
    main([*args, "--steps", "1", "--device", "cpu"])  # written or not (2 steps rarely beat the start): said first
    assert "new_PSR.nii.gz is stored PSR, the model was trained on RAS: it is turned to RAS" in capsys.readouterr().err
    # Labels saved from another copy of the scan, stored RAS: put on the image's grid first, and said.
    ras_seg = str(tmp_path / "RAS_seg.nii.gz")
    main(
        [
            "finetune",
            "--model",
            out,
            "--image",
            stored,
            "--labels",
            ras_seg,
            "--out",
            str(tmp_path / "mr3"),
            "--steps",
            "1",
        ]
    )
    said = capsys.readouterr().err
    assert f"{ras_seg} stored RAS and {stored} PSR: the labels are turned to the image's grid" in said
    assert "different affines" not in said


def test_the_dock_predicts_a_scan_stored_otherwise_as_the_model_was_trained(qtbot, plugin_widget, model_home, tmp_path):
    """A scan opened from NIfTI stored ``LAS`` under a 3D model trained on ``RAS`` scans: turned for the model
    and back, as ``predict`` does, and the status says so; fine-tuning on it turns it alike."""
    nib = pytest.importorskip("nibabel")
    from nibabel.orientations import axcodes2ornt, ornt_transform

    from napari_attention_unet.core.weights import save_model
    from napari_attention_unet.gui.new_model import in_model_orientation

    viewer, widget = plugin_widget
    rng = np.random.default_rng(3)
    ras = rng.normal(size=(6, 20, 24)).astype(np.float32)
    ras[1:5, 4:12, 2:9] += 3.0
    image = nib.Nifti1Image(np.ascontiguousarray(np.transpose(ras)), np.diag([1.0, 1.0, 2.0, 1.0]))
    stored = image.as_reoriented(ornt_transform(axcodes2ornt("RAS"), axcodes2ornt("LAS")))
    nib.save(stored, str(tmp_path / "scan.nii.gz"))
    torch.manual_seed(0)
    model = AttentionUNet(ModelConfig(spatial_dims=3, in_channels=1, base_width=2, depth=3)).eval()
    save_model(model, model_home / "models" / "mr3d", info={"orientation": "RAS"})
    widget._refresh.changed()
    widget.use_model("mr3d")
    [layer] = viewer.open(str(tmp_path / "scan.nii.gz"), plugin="napari-attention-unet")
    widget._image.value = layer
    widget._current_slice.value = False
    widget.predict()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=60_000)
    expected = run_to_end(predict(model, ras, device="cpu", spacing=(2.0, 1.0, 1.0)))
    gate = viewer.layers["scan attention gate1"].data
    np.testing.assert_allclose(gate, reorient(expected.gate_maps["gate1"], "RAS", "LAS"), atol=1e-5)
    assert "stored LAS and the model was trained on RAS scans: it was turned to RAS" in widget._status.value
    widget._image.value = viewer.add_image(ras, name="plain", scale=(2.0, 1.0, 1.0))  # not from a NIfTI file
    widget.predict()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=60_000)
    assert "states no orientation (it was not opened from a NIfTI file): it was predicted as stored" in (
        widget._status.value
    )

    masks = [np.ones(layer.data.shape, bool), None]
    arrays, spacing, note = in_model_orientation(widget._session, "LAS", [layer.data, *masks], (2.0, 1.0, 1.0))
    np.testing.assert_array_equal(arrays[0], ras)
    assert arrays[2] is None and spacing == (2.0, 1.0, 1.0) and "turned to RAS" in note
    assert in_model_orientation(widget._session, "RAS", [ras], (2.0, 1.0, 1.0))[2] == ""


def test_a_new_3d_model_from_the_dock_records_its_scans_orientation():
    from napari_attention_unet.gui.new_model import _described, train_new_model
    from napari_attention_unet.gui.session import Session

    rng = np.random.default_rng(0)
    volume = rng.normal(size=(16, 32, 32)).astype(np.float32)
    labels = np.zeros(volume.shape, np.uint8)
    labels[4:12, 8:20, 8:20], labels[4:12, 22:30, 8:20] = 1, 2
    volume += labels * 1.5
    session = Session(device="cpu")
    run = train_new_model(session, volume, labels, spacing=(2, 1, 1), orientation="LAS", steps=1, minutes=None)
    result = run_to_end(run)
    assert _described(session.plan, result)["orientation"] == "LAS"
    run = train_new_model(session, volume[8], labels[8], orientation="LAS", steps=1, minutes=None, from_current=False)
    result = run_to_end(run)
    assert "orientation" not in _described(session.plan, result)  # a 2D model is predicted plane by plane


def test_the_dock_puts_labels_from_another_copy_of_the_scan_on_its_grid(make_napari_viewer, tmp_path):
    """Labels saved from a RAS copy, image opened from a LAS copy: napari shows each as stored (mirrored over
    each other); fine-tuning takes the labels, and the masks painted with them, onto the image's grid."""
    nib = pytest.importorskip("nibabel")
    from nibabel.orientations import axcodes2ornt, ornt_transform

    from napari_attention_unet.gui.new_model import labels_for_image

    labels = np.zeros((4, 10, 12), np.uint8)
    labels[1:3, 2:5, :4] = 1  # on one side
    ras = nib.Nifti1Image(np.transpose(labels), np.diag([1.0, 1.0, 2.0, 1.0]))
    nib.save(ras, str(tmp_path / "scan_seg.nii.gz"))
    las = nib.Nifti1Image(np.transpose(labels).astype(np.float32), ras.affine)
    las = las.as_reoriented(ornt_transform(axcodes2ornt("RAS"), axcodes2ornt("LAS")))
    nib.save(las, str(tmp_path / "scan.nii.gz"))
    viewer = make_napari_viewer()
    [image] = viewer.open(str(tmp_path / "scan.nii.gz"), plugin="napari-attention-unet")
    [seg] = viewer.open(str(tmp_path / "scan_seg.nii.gz"), plugin="napari-attention-unet")
    edited = np.zeros(labels.shape, bool)
    edited[..., :6] = True
    (turned, ignore, mask), note = labels_for_image(image, seg, [seg.data, None, edited], image.data.shape)
    np.testing.assert_array_equal(turned, reorient(labels, "RAS", "LAS"))
    np.testing.assert_array_equal(mask, reorient(edited, "RAS", "LAS"))
    assert ignore is None
    assert note == "'scan_seg' stored RAS and 'scan' LAS: the labels are turned to the image's grid."
    drawn = viewer.add_labels(np.zeros(image.data.shape, np.uint8))  # napari's new labels: no file, as drawn
    assert labels_for_image(image, drawn, [drawn.data], image.data.shape) == ([drawn.data], "")


def test_the_dock_says_when_a_2d_models_scan_is_not_turned():
    from types import SimpleNamespace

    from napari_attention_unet.gui.block_prediction import layer_settings

    las = np.diag([-1.0, 1.0, 1.0, 1.0])
    placement = SimpleNamespace(
        scale=(1.0, 1.0, 1.0), shape=(4, 5, 6), nifti={"affine": las.tolist(), "shape": [6, 5, 4]}
    )
    session2d = SimpleNamespace(model_info={"orientation": "RAS"}, spatial_dims=2)
    settings, note = layer_settings(placement, (4, 5, 6), False, session2d)
    assert "orientation" not in settings
    assert "stored LAS and this 2D model was trained on RAS scans: it was predicted as stored, plane by plane" in note
    session3d = SimpleNamespace(model_info={"orientation": "RAS"}, spatial_dims=3)
    assert layer_settings(placement, (4, 5, 6), False, session3d)[0]["orientation"] == ("LAS", "RAS")
    assert layer_settings(placement, (4, 5, 6), False, SimpleNamespace(model_info={}, spatial_dims=3)) == (
        {"spacing": (1.0, 1.0, 1.0)},
        "",
    )
