"""NIfTI volumes: read as ZYX with their voxel size, label maps written back on the same grid,
the napari reader and writer in a real viewer, and ``attention-unet predict VOL.nii.gz``.

Every file is a small synthetic volume written here with nibabel, with an anisotropic voxel size
(1.0, 1.0, 2.5 mm), a rotation and a translation, and distinct qform and sform codes, so that an
axis swapped or a header field lost shows.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

nib = pytest.importorskip("nibabel")

from napari_attention_unet.large_data import nifti  # noqa: E402
from napari_attention_unet.large_data.files import ImageReadError, read_image  # noqa: E402
from napari_attention_unet.large_data.nifti import (  # noqa: E402
    INSTALL_HINT,
    NibabelMissingError,
    NiftiFormatError,
    is_nifti_path,
    nifti_stem,
    read_nifti,
    write_nifti,
)

PLUGIN = "napari-attention-unet"
SHAPE_XYZ = (40, 32, 6)
ZOOMS_XYZ = (1.0, 1.0, 2.5)


def anisotropic_affine() -> np.ndarray:
    """Zooms (1, 1, 2.5), rotated 30 degrees about z and 10 about x, translated."""
    a, b = np.deg2rad(30), np.deg2rad(10)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ rx @ np.diag(ZOOMS_XYZ)
    affine[:3, 3] = (-12.5, 30.25, -7.0)
    return affine


def save(path, data_xyz, affine=None, qform_code=1, sform_code=2, **header):
    image = nib.Nifti1Image(data_xyz, anisotropic_affine() if affine is None else affine)
    image.set_qform(image.affine, code=qform_code)
    image.set_sform(image.affine, code=sform_code)
    for key, value in header.items():
        image.header[key] = value
    image.to_filename(str(path))
    return path


def blobs_xyz(seed: int = 0) -> np.ndarray:
    """A float32 volume (x, y, z) with a few bright blobs on noise."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*[np.arange(n) for n in SHAPE_XYZ], indexing="ij")
    volume = rng.normal(0, 0.1, SHAPE_XYZ)
    for cx, cy in ((10, 8), (28, 20), (15, 25)):
        volume += np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / 12.0) * (1 + 0.1 * z)
    return volume.astype(np.float32)


@pytest.fixture
def volume_path(tmp_path):
    return save(tmp_path / "vol.nii.gz", blobs_xyz())


def same_grid(written, source) -> None:
    """The same affine, voxel size, qform and sform (with their codes) and spatial shape."""
    assert np.array_equal(written.affine, source.affine)
    assert written.header.get_zooms()[:3] == source.header.get_zooms()[:3]
    for get in ("get_qform", "get_sform"):
        (w, w_code), (s, s_code) = getattr(written.header, get)(coded=True), getattr(source.header, get)(coded=True)
        assert np.array_equal(w, s) and int(w_code) == int(s_code)
    assert written.shape[:3] == source.shape[:3]


# ----------------------------------------------------------------------------------- files


def test_paths_and_stems():
    assert is_nifti_path("a/vol.nii") and is_nifti_path("VOL.NII.GZ") and not is_nifti_path("vol.tif")
    assert not is_nifti_path("vol.gz")
    assert nifti_stem("a/vol.nii.gz") == "vol" and nifti_stem("sub-01_T1w.nii") == "sub-01_T1w"


def test_read_gives_zyx_spacing_and_affine(volume_path):
    volume = read_nifti(volume_path)
    source = nib.load(str(volume_path))
    assert volume.data.shape == SHAPE_XYZ[::-1] and volume.axes == "ZYX"
    assert np.array_equal(volume.data, np.asarray(source.dataobj).transpose(2, 1, 0))
    assert volume.spacing == (2.5, 1.0, 1.0)
    assert np.array_equal(volume.affine, source.affine) and volume.time_point is None
    assert np.array_equal(read_image(volume_path), volume.data)  # the CLI's reader


def test_labels_written_back_on_the_same_grid(volume_path, tmp_path):
    volume = read_nifti(volume_path)
    labels = (volume.data > 0.5).astype(np.int32)
    labels[:, :, 20:] *= 2
    out = write_nifti(tmp_path / "vol_labels.nii.gz", labels, volume)
    written, source = nib.load(str(out)), nib.load(str(volume_path))
    same_grid(written, source)
    assert written.get_data_dtype() == np.uint8 and written.header.get_intent()[0] == "label"
    assert np.array_equal(np.asarray(written.dataobj), labels.transpose(2, 1, 0))
    back = read_nifti(out)
    assert np.array_equal(back.data, labels) and back.spacing == volume.spacing and back.data.dtype == np.uint8

    # from the metadata a napari layer carries (plain values), and wider label dtypes
    many = labels.astype(np.int64) * 1000
    out = write_nifti(tmp_path / "many.nii", many, volume.metadata(volume_path))
    assert nib.load(str(out)).get_data_dtype() == np.uint16 and np.array_equal(read_nifti(out).data, many)
    huge = labels.astype(np.int64) * 100_000 - 1
    out = write_nifti(tmp_path / "huge.nii.gz", huge, volume)
    assert nib.load(str(out)).get_data_dtype() == np.int32 and np.array_equal(read_nifti(out).data, huge)

    # a float map is float32, not a label map
    out = write_nifti(tmp_path / "prob.nii.gz", volume.data.astype(np.float64), volume)
    written = nib.load(str(out))
    same_grid(written, source)
    assert written.get_data_dtype() == np.float32 and written.header.get_intent()[0] == "none"


def test_scaled_integer_source_gives_unscaled_labels(tmp_path):
    path = save(tmp_path / "ct.nii.gz", (blobs_xyz() * 1000).astype(np.int16), scl_slope=0.5, scl_inter=-10)
    volume = read_nifti(path)
    assert volume.data.dtype.kind == "f"  # the header's scaling applied
    out = write_nifti(tmp_path / "ct_seg.nii.gz", (volume.data > 200).astype(np.uint8), volume)
    written = nib.load(str(out))
    same_grid(written, nib.load(str(path)))
    assert written.dataobj.slope == 1 and written.dataobj.inter == 0
    assert np.array_equal(read_nifti(out).data, (volume.data > 200).astype(np.uint8))


def test_time_series_needs_a_time_point(tmp_path):
    series = np.stack([blobs_xyz(seed) for seed in range(5)], axis=-1)
    path = save(tmp_path / "fmri.nii.gz", series)
    with pytest.raises(NiftiFormatError, match=r"time series of 5 volumes") as caught:
        read_nifti(path)
    assert "time_point=" in str(caught.value) and "--time-point 0" in str(caught.value)
    with pytest.raises(ImageReadError, match=r"5 volumes.*pick one time point"):
        read_image(path)  # what attention-unet predict prints before "skipping"
    volume = read_nifti(path, time_point=3)
    assert volume.data.shape == SHAPE_XYZ[::-1] and volume.time_point == 3 and volume.time_points == 5
    assert np.array_equal(volume.data, series[..., 3].transpose(2, 1, 0)) and volume.spacing == (2.5, 1.0, 1.0)
    with pytest.raises(NiftiFormatError, match="out of range"):
        read_nifti(path, time_point=5)
    assert read_nifti(path, all_time_points=True).data.shape == (5, *SHAPE_XYZ[::-1])

    # the command the message names writes one time point as a 3D volume on the same grid
    out = tmp_path / "fmri_t3.nii.gz"
    assert nifti.main([str(path), "--time-point", "3", "--out", str(out)]) == 0
    same_grid(nib.load(str(out)), nib.load(str(path)))
    assert np.array_equal(read_nifti(out).data, volume.data)


def test_unsupported_volumes_are_clear_errors(tmp_path):
    five_d = save(tmp_path / "field.nii.gz", np.zeros((4, 4, 4, 1, 3), np.float32))
    with pytest.raises(NiftiFormatError, match="5 dimensions"):
        read_nifti(five_d)
    complex_path = save(tmp_path / "k.nii", np.zeros((4, 4, 4), np.complex64))
    with pytest.raises(NiftiFormatError, match="complex64 voxels are not supported"):
        read_nifti(complex_path)
    single = save(tmp_path / "trailing.nii.gz", np.ones((4, 5, 6, 1), np.float32))
    assert read_nifti(single).data.shape == (6, 5, 4)  # a trailing axis of length 1 is no time series


def test_missing_nibabel_says_how_to_install(volume_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "nibabel", None)  # `import nibabel` now raises ImportError
    with pytest.raises(NibabelMissingError) as caught:
        read_nifti(volume_path)
    assert isinstance(caught.value, ImportError)
    assert 'pip install "napari-attention-unet[medical]"' in str(caught.value) == INSTALL_HINT
    with pytest.raises(ImageReadError, match=r"napari-attention-unet\[medical\]"):
        read_image(volume_path)
    with pytest.raises(NibabelMissingError):
        write_nifti(volume_path.with_name("x.nii.gz"), np.zeros((2, 2, 2), np.uint8), np.eye(4))


# ----------------------------------------------------------------------------------- napari


def test_which_files_open_as_labels():
    from napari_attention_unet.gui.readers import get_reader, is_label_map

    integer, floating = np.dtype(np.int16), np.dtype(np.float32)
    names = ("vol_labels.nii.gz", "liver_seg.nii", "liver-seg.nii.gz", "brain_mask.nii.gz", "label.nii", "mask.nii.gz")
    for name in (*names, "seg.nii.gz", "segmentation.nii.gz", "aseg.nii.gz", "case1_gt.nii.gz", "masks/case1.nii"):
        assert is_label_map(name, integer), name
    assert is_label_map("labelsTr/hippocampus_001.nii.gz", np.dtype(np.uint8))  # the MSD layout
    # Whatever its name, a volume of a few integer values is a label map; a scan holds hundreds.
    rng = np.random.default_rng(0)
    assert is_label_map("case1.nii.gz", integer, data=rng.integers(0, 4, (8, 16, 16)).astype(np.int16))
    assert not is_label_map("case1.nii.gz", integer, data=rng.integers(0, 900, (8, 16, 16)).astype(np.int16))
    assert is_label_map("anything.nii.gz", np.dtype(np.uint8), intent=nifti.LABEL_INTENT)
    assert not is_label_map("vol_labels.nii.gz", floating)
    # Float voxels of whole numbers (MONAI's SaveImage writes float32 label maps): labels, by value or by name.
    classes = rng.integers(0, 3, (8, 16, 16)).astype(np.float32)
    assert is_label_map("case1_partial.nii.gz", floating, data=classes)
    assert not is_label_map("case1.nii.gz", floating, data=classes + 0.5)
    assert not is_label_map("case1.nii.gz", floating, data=rng.integers(0, 900, (8, 16, 16)).astype(np.float32))
    assert not is_label_map("ct.nii.gz", integer) and not is_label_map("imagesTr/ct_0000.nii.gz", integer)
    assert get_reader("vol.tif") is None and get_reader(["a.nii.gz", "b.tif"]) is None
    assert callable(get_reader("vol.nii.gz")) and callable(get_reader(["a.nii", "b.nii.gz"]))


def test_a_float_label_map_opens_as_integer_labels(tmp_path):
    from napari_attention_unet.gui.readers import read_nifti_layers

    classes = np.zeros(SHAPE_XYZ, np.float32)
    classes[5:15, 5:15, 2:4] = 2.0
    [(data, kwargs, kind)] = read_nifti_layers(str(save(tmp_path / "partial.nii.gz", classes)))
    assert kind == "labels" and data.dtype == np.uint8 and kwargs["scale"] == (2.5, 1.0, 1.0)
    np.testing.assert_array_equal(data, classes.transpose(2, 1, 0))


def test_napari_opens_volume_and_labels_on_the_same_grid(make_napari_viewer, volume_path, tmp_path):
    from napari.layers import Image, Labels

    volume = read_nifti(volume_path)
    labels_path = write_nifti(tmp_path / "vol_labels.nii.gz", (volume.data > 0.5).astype(np.uint16) * 7, volume)
    ct_path = save(tmp_path / "ct.nii.gz", (blobs_xyz() * 100).astype(np.int16))

    viewer = make_napari_viewer()
    [image] = viewer.open(str(volume_path), plugin=PLUGIN)
    [labels] = viewer.open(str(labels_path), plugin=PLUGIN)
    [ct] = viewer.open(str(ct_path), plugin=PLUGIN)
    assert isinstance(image, Image) and isinstance(labels, Labels) and isinstance(ct, Image)
    assert image.name == "vol" and labels.name == "vol_labels"
    assert tuple(image.scale) == tuple(labels.scale) == (2.5, 1.0, 1.0)
    assert image.data.shape == labels.data.shape == SHAPE_XYZ[::-1]
    assert np.array_equal(image.data, volume.data) and labels.data.max() == 7
    meta = image.metadata["nifti"]
    assert np.allclose(meta["affine"], nib.load(str(volume_path)).affine) and isinstance(meta["header"], str)

    # the writer: the label layer back to NIfTI on the source's grid, through napari's save
    labels.data = labels.data * 2
    saved = tmp_path / "saved_labels.nii.gz"
    assert labels.save(str(saved), plugin=PLUGIN) == [str(saved)]
    same_grid(nib.load(str(saved)), nib.load(str(volume_path)))
    assert np.array_equal(read_nifti(saved).data, labels.data)

    # the plugin's masks layer (it names its source layer, not the NIfTI grid): the source's grid
    from napari_attention_unet.gui.layers import MARKER

    masks = viewer.add_labels(
        (volume.data > 1).astype(np.int32), scale=image.scale, metadata={MARKER: {"source": str(image.unique_id)}}
    )
    [written_path] = masks.save(str(tmp_path / "masks.nii.gz"), plugin=PLUGIN)
    same_grid(nib.load(written_path), nib.load(str(volume_path)))

    # a Labels layer without NIfTI metadata, on no open scan's grid: an affine from its scale and translate
    painted = viewer.add_labels(np.zeros((4, 5, 6), np.int32), scale=(2.5, 1.0, 0.5), translate=(3, 2, 1))
    painted.data[1, 2, 3] = 300
    saved = tmp_path / "painted"
    with pytest.warns(UserWarning, match="written with the layer's scale only"):
        [written_path] = painted.save(str(saved) + ".nii.gz", plugin=PLUGIN)
    written = nib.load(written_path)
    expected = np.array([[0.5, 0, 0, 1], [0, 1.0, 0, 2], [0, 0, 2.5, 3], [0, 0, 0, 1]])
    assert np.allclose(written.affine, expected) and written.get_data_dtype() == np.uint16
    assert written.shape == (6, 5, 4) and np.asarray(written.dataobj)[3, 2, 1] == 300


def test_napari_opens_a_time_series_as_4d(make_napari_viewer, tmp_path):
    path = save(tmp_path / "fmri.nii.gz", np.stack([blobs_xyz(seed) for seed in range(3)], axis=-1))
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(path), plugin=PLUGIN)
    assert layer.data.shape == (3, *SHAPE_XYZ[::-1]) and tuple(layer.scale) == (1.0, 2.5, 1.0, 1.0)


# ----------------------------------------------------------------------------------- predict


def test_cli_predict_on_nifti_writes_nifti_on_the_input_grid(
    volume_path, tmp_path, tiny_model_path, monkeypatch, capsys
):
    from napari_attention_unet.cli import main
    from napari_attention_unet.large_data import pipeline

    seen = []
    real_predict = pipeline.predict

    def spying_predict(model, image, options, **kwargs):
        seen.append((image.shape, options))
        return real_predict(model, image, options, **kwargs)

    monkeypatch.setattr(pipeline, "predict", spying_predict)
    out = tmp_path / "out"
    assert (
        main(["predict", str(volume_path), "--out", str(out), "--model", str(tiny_model_path), "--device", "cpu"]) == 0
    )
    [(shape, options)] = seen
    assert shape == SHAPE_XYZ[::-1] and options.axes == "ZYX" and options.spacing == (2.5, 1.0, 1.0)

    labels_path, attention_path = pipeline.result_paths(out, volume_path)
    assert labels_path == out / "vol_labels.nii.gz" and attention_path == out / "vol_attention.nii.gz"
    source = nib.load(str(volume_path))
    labels = nib.load(str(labels_path))
    same_grid(labels, source)
    assert labels.shape == SHAPE_XYZ and np.issubdtype(labels.get_data_dtype(), np.integer)
    attention = nib.load(str(attention_path))
    same_grid(attention, source)
    assert attention.shape == (*SHAPE_XYZ, 2) and attention.get_data_dtype() == np.float32
    assert attention.header["descrip"].tobytes().rstrip(b"\0") == b"attention gates: gate1,gate2"
    maps = np.asarray(attention.dataobj)
    assert maps.min() >= 0 and maps.max() <= 1

    # the spacing the user gives wins over the header's, and the difference is said (a reversed order by name)
    seen.clear()
    args = ["predict", str(volume_path), "--out", str(out), "--model", str(tiny_model_path), "--spacing", "3,1,1"]
    capsys.readouterr()
    assert main(args) == 0 and seen[0][1].spacing == (3.0, 1.0, 1.0)
    said = capsys.readouterr().err
    assert "vol.nii.gz: --spacing 3,1,1 is not the voxel size in its header, 2.5,1,1" in said
    assert "reversed" not in said
    seen.clear()
    assert main([*args[:-1], "1,1,2.5"]) == 0 and seen[0][1].spacing == (1.0, 1.0, 2.5)
    assert "(reversed: Z,Y,X is the order --spacing takes)" in capsys.readouterr().err
    seen.clear()
    assert main([*args[:-1], "2.5,1,1"]) == 0 and "warning" not in capsys.readouterr().err  # the same: no word


def test_cli_predict_on_a_time_series_is_skipped_with_the_reason(tmp_path, tiny_model_path, capsys):
    from napari_attention_unet.cli import main

    path = save(tmp_path / "fmri.nii.gz", np.stack([blobs_xyz(seed) for seed in range(2)], axis=-1))
    assert main(["predict", str(path), "--out", str(tmp_path / "out"), "--model", str(tiny_model_path)]) == 1
    err = capsys.readouterr().err
    assert "time series of 2 volumes" in err and "--time-point 0" in err


def test_cli_predict_picks_a_time_point_of_a_series(tmp_path, tiny_model_path, capsys):
    """``predict --time-point T`` predicts that volume of a 4D NIfTI (or a TZYX TIFF) and names its outputs _tT."""
    import tifffile

    from napari_attention_unet.cli import main

    series = np.stack([blobs_xyz(seed) for seed in range(3)], axis=-1)
    path = save(tmp_path / "fmri.nii.gz", series)
    out = tmp_path / "out"
    model = ["--model", str(tiny_model_path), "--device", "cpu"]
    assert main(["predict", str(path), "--out", str(out), "--time-point", "2", *model]) == 0
    labels = nib.load(str(out / "fmri_t2_labels.nii.gz"))
    assert labels.shape == SHAPE_XYZ and np.array_equal(labels.affine, nib.load(str(path)).affine)
    # the same volume written alone and predicted gives the same labels: time point 2 is the one read
    save(tmp_path / "third.nii.gz", series[..., 2])
    assert main(["predict", str(tmp_path / "third.nii.gz"), "--out", str(out), *model]) == 0
    alone = nib.load(str(out / "third_labels.nii.gz"))
    assert np.array_equal(np.asarray(labels.dataobj), np.asarray(alone.dataobj))
    assert nib.load(str(out / "fmri_t2_attention.nii.gz")).shape == (*SHAPE_XYZ, 2)

    capsys.readouterr()
    assert main(["predict", str(path), "--out", str(out), "--time-point", "3", *model]) == 1
    assert "3 time points (0 to 2); time point 3 is out of range" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "third.nii.gz"), "--out", str(out), "--time-point", "0", *model]) == 1
    assert "is one volume, not a time series" in capsys.readouterr().err

    # a TIFF series, time first
    tifffile.imwrite(tmp_path / "movie.tif", np.transpose(series, (3, 2, 1, 0)))  # (t, z, y, x)
    assert main(["predict", str(tmp_path / "movie.tif"), "--out", str(out), "--time-point", "1", *model]) == 0
    assert tifffile.imread(out / "movie_t1_labels.tif").shape == SHAPE_XYZ[::-1]


def test_predicted_masks_carry_the_source_grid(make_napari_viewer, volume_path, tmp_path):
    """The widget's masks of a NIfTI volume save as .nii.gz on the scan's grid without a viewer lookup."""
    from napari_attention_unet.gui import layers as _layers
    from napari_attention_unet.gui.readers import write_labels_nifti
    from napari_attention_unet.gui.session import PartPrediction

    viewer = make_napari_viewer()
    [image] = viewer.open(str(volume_path), plugin=PLUGIN)
    placement = _layers.placement_from_layer(image)
    labels = (image.data > 0.5).astype(np.int32)
    prediction = PartPrediction(labels=labels, gate_maps={}, index=(), device="cpu", model_name="tiny")
    [masks] = _layers.apply_results(viewer.layers, _layers.result_layers(prediction, placement), placement)
    assert masks.metadata["nifti"] == image.metadata["nifti"]
    viewer.layers.remove(image)  # no source in the viewer to look up: the masks' own metadata must do
    [written] = write_labels_nifti(str(tmp_path / "masks.nii.gz"), masks.data, {"metadata": masks.metadata})
    same_grid(nib.load(written), nib.load(str(volume_path)))


def test_an_attention_map_saves_as_float_nifti_on_the_scan_grid(make_napari_viewer, volume_path, tmp_path):
    """napari's save of a gate map layer (an Image layer) goes through the plugin's image writer."""
    from napari_attention_unet.gui import layers as _layers
    from napari_attention_unet.gui.session import PartPrediction

    viewer = make_napari_viewer()
    [image] = viewer.open(str(volume_path), plugin=PLUGIN)
    placement = _layers.placement_from_layer(image)
    gate = np.linspace(0, 1, image.data.size, dtype=np.float32).reshape(image.data.shape)
    labels = np.zeros(image.data.shape, np.int32)
    prediction = PartPrediction(labels=labels, gate_maps={"gate1": gate}, index=(), device="cpu", model_name="tiny")
    for result in _layers.result_layers(prediction, placement):
        _layers.apply_results(viewer.layers, [result], placement)
    attention = viewer.layers["vol attention gate1"]
    [written] = attention.save(str(tmp_path / "gate1.nii.gz"), plugin=PLUGIN)
    saved = nib.load(written)
    same_grid(saved, nib.load(str(volume_path)))
    assert saved.get_data_dtype() == np.float32
    np.testing.assert_allclose(read_nifti(written).data, gate, atol=1e-6)


def test_new_labels_drawn_over_a_scan_save_on_its_grid(make_napari_viewer, volume_path, tmp_path):
    """napari's "new labels" over a scan has no metadata: the one scan open on its grid gives the affine;
    with no scan open it is written from the scale, and a warning says so."""
    from napari_attention_unet.gui.readers import write_labels_nifti

    viewer = make_napari_viewer()
    [image] = viewer.open(str(volume_path), plugin=PLUGIN)
    drawn = viewer.add_labels(np.zeros(image.data.shape, np.uint8), scale=image.scale)  # what the button makes
    drawn.data[2:5, 3:9, 4:12] = 1
    meta = {"metadata": drawn.metadata, "scale": list(drawn.scale), "translate": list(drawn.translate)}
    [written] = write_labels_nifti(str(tmp_path / "drawn.nii.gz"), drawn.data, meta)
    same_grid(nib.load(written), nib.load(str(volume_path)))
    viewer.layers.remove(image)
    with pytest.warns(UserWarning, match="no NIfTI scan on this layer's grid"):
        write_labels_nifti(str(tmp_path / "alone.nii.gz"), drawn.data, meta)


def test_cli_train_reads_nifti_and_predict_writes_classes_on_its_grid(tmp_path, model_home, capsys):
    """``train`` on a NIfTI volume and label map (a 4D series at --time-point too) makes a 3D semantic model
    that remembers the header's voxel size; ``predict`` then writes class values on the scan's grid."""
    from napari_attention_unet.cli import main
    from napari_attention_unet.core.weights import read_metadata

    volume = blobs_xyz()
    classes = np.zeros(SHAPE_XYZ, np.uint8)
    classes[volume > 0.5] = 1
    classes[:20][volume[:20] > 0.5] = 2  # two classes by position
    image_path, labels_path = save(tmp_path / "scan.nii.gz", volume), save(tmp_path / "scan_seg.nii.gz", classes)
    tiny = ["--base-width", "4", "--depth", "3", "--steps", "2", "--device", "cpu"]
    out = tmp_path / "scan-model"
    assert main(["train", "--image", str(image_path), "--labels", str(labels_path), "--out", str(out), *tiny]) == 0
    said = capsys.readouterr().err
    assert "3 classes found (0, 1, 2): semantic" in said
    assert "voxel size 2.5,1,1 (Z,Y,X, from the files' headers)" in said
    config, meta = read_metadata(tmp_path / "scan-model.safetensors")  # predict finds it by the typed path
    assert config.spatial_dims == 3 and config.task == "semantic" and meta["spacing"] == [2.5, 1.0, 1.0]

    assert main(["predict", str(image_path), "--out", str(tmp_path / "pred"), "--model", str(out)]) == 0
    predicted = nib.load(str(tmp_path / "pred" / "scan_labels.nii.gz"))
    same_grid(predicted, nib.load(str(image_path)))
    assert set(np.unique(np.asarray(predicted.dataobj)).tolist()) <= {0, 1, 2}
    assert nib.load(str(tmp_path / "pred" / "scan_attention.nii.gz")).shape[:3] == SHAPE_XYZ

    series = save(tmp_path / "series.nii.gz", np.stack([volume * 0.5, volume], axis=-1))
    args = ["train", "--image", str(series), "--labels", str(labels_path), "--out", str(tmp_path / "t1"), *tiny]
    assert main([*args, "--time-point", "1"]) == 0
    assert main(args) == 2
    assert "time series of 2 volumes" in capsys.readouterr().err


def test_cli_train_on_a_one_slice_nifti_trains_a_2d_model(tmp_path, model_home, capsys):
    """A 2D NIfTI (x, y, 1) is an image, not a volume of one slice: a 2D model, and predict writes
    the labels back as (x, y, 1) on its grid."""
    from napari_attention_unet.cli import main
    from napari_attention_unet.core.weights import read_metadata

    plane = blobs_xyz()[:, :, 3:4]
    image_path = save(tmp_path / "slide.nii.gz", plane)
    labels_path = save(tmp_path / "slide_seg.nii.gz", (plane > 0.5).astype(np.uint8) * 2)
    tiny = ["--base-width", "4", "--depth", "3", "--steps", "2", "--device", "cpu", "--task", "semantic"]
    out = tmp_path / "flat"
    assert main(["train", "--image", str(image_path), "--labels", str(labels_path), "--out", str(out), *tiny]) == 0
    assert read_metadata(tmp_path / "flat.safetensors")[0].spatial_dims == 2
    assert main(["predict", str(image_path), "--out", str(tmp_path / "pred"), "--model", str(out)]) == 0
    same_grid(nib.load(str(tmp_path / "pred" / "slide_labels.nii.gz")), nib.load(str(image_path)))


def test_cli_train_warns_when_labels_lie_on_another_grid(tmp_path, model_home, capsys):
    from napari_attention_unet.cli import main

    volume = blobs_xyz()
    image_path = save(tmp_path / "scan.nii.gz", volume)
    labels_path = save(tmp_path / "seg.nii.gz", (volume > 0.5).astype(np.uint8), affine=np.eye(4))
    tiny = ["--base-width", "4", "--depth", "3", "--steps", "1", "--device", "cpu", "--task", "semantic"]
    args = ["train", "--image", str(image_path), "--labels", str(labels_path), "--out", str(tmp_path / "m")]
    assert main([*args, *tiny]) == 0
    assert "have different affines" in capsys.readouterr().err
    # --spacing typed in X,Y,Z order over a header that says otherwise: used, and said
    assert main([*args, *tiny, "--spacing", "1,1,2.5"]) == 0
    assert "scan.nii.gz: --spacing 1,1,2.5 is not the voxel size in its header, 2.5,1,1 (Z,Y,X) (reversed" in (
        capsys.readouterr().err
    )
    # Labels of another shape: the shape error alone, not first a warning that they are taken voxel by voxel.
    cut = save(tmp_path / "cut.nii.gz", (volume[:-2] > 0.5).astype(np.uint8), affine=np.eye(4))
    assert main(["train", "--image", str(image_path), "--labels", str(cut), "--out", str(tmp_path / "m2"), *tiny]) == 2
    err = capsys.readouterr().err
    assert "do not match" in err and "different affines" not in err


def test_cli_finetune_of_a_3d_model_trains_on_the_grid_predict_uses(tmp_path):
    """`finetune` of a 3D model takes a NIfTI volume at its header's voxel size (TIFF volumes at the
    model's training spacing), in patches fitted as `train` fits them (not 64³: 12x slower a step)."""
    import torch

    from napari_attention_unet.cli.finetune import _as_predicted
    from napari_attention_unet.core.model import AttentionUNet, ModelConfig

    image_path = save(tmp_path / "scan.nii.gz", blobs_xyz())
    tifffile = pytest.importorskip("tifffile")
    tifffile.imwrite(tmp_path / "vol.tif", np.zeros((6, 32, 40), np.float32))
    torch.manual_seed(0)
    model = AttentionUNet(ModelConfig(spatial_dims=3, in_channels=1, base_width=4, depth=3))
    from napari_attention_unet.large_data.files import read_time_point

    volumes = [read_time_point(path, None)[1] for path in (image_path, tmp_path / "vol.tif")]
    volume = np.zeros((6, 32, 40), np.float32)
    pairs = [(volume, volume.astype(np.uint8), None, None if v is None else v.spacing) for v in volumes]
    sized, settings = _as_predicted(model, {"spacing": [2.0, 1.0, 1.0]}, pairs)
    assert [p[3] for p in sized] == [(2.5, 1.0, 1.0), (2.0, 1.0, 1.0)]
    assert np.prod(settings["patch_size"]) < 30_000  # about 18k voxels, rounded to the grid (64³: 262k)


def test_cli_finetune_picks_a_time_point_of_a_series(tmp_path, tiny_model_path, monkeypatch, capsys):
    """``finetune --time-point T`` trains on that volume of a 4D NIfTI, one label map serving it; without it the
    error says which commands take the option."""
    from napari_attention_unet.cli import main

    series = np.stack([blobs_xyz(seed) for seed in range(3)], axis=-1)
    path = save(tmp_path / "fmri.nii.gz", series)
    labels = save(tmp_path / "fmri_seg.nii.gz", (series[..., 1] > 0.5).astype(np.uint8))
    seen = []

    class Stop(Exception):
        pass

    def trainer(model, pairs, **_):
        seen.append(pairs)
        raise Stop

    monkeypatch.setattr("napari_attention_unet.core.train.Trainer", trainer)
    args = ["finetune", "--image", str(path), "--labels", str(labels), "--out", str(tmp_path / "m")]
    args += ["--model", str(tiny_model_path), "--steps", "1"]
    with pytest.raises(Stop):
        main([*args, "--time-point", "1", "--device", "cpu"])
    image, label, *_ = seen[0][0]
    np.testing.assert_allclose(image, np.transpose(series[..., 1]), atol=1e-6)
    assert label.shape == image.shape
    assert main([*args, "--device", "cpu"]) == 2
    assert "(predict, train and finetune take it)" in capsys.readouterr().err
