"""The `attention-unet` command on real files, run as a user would run it."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from napari_attention_unet.core.model import AttentionUNet, ModelConfig
from napari_attention_unet.core.weights import save_model

DATA = Path(__file__).parent / "data" / "images"
FLUO = DATA / "00071198d059ba7f5914a526d124d28e6d010c92466da21d4a04cd5413362552.tif"
HE = DATA / "00ae65c1c6631ae6f2be1a449902976e6eb8483bf6b0740d00530220832c6d3e.tif"
EXE = shutil.which("attention-unet") or str(Path(sys.executable).with_name("attention-unet"))


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_ATTENTION_UNET_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def model_file(tmp_path):
    torch.manual_seed(0)
    return save_model(AttentionUNet(ModelConfig(base_width=4, depth=3)), tmp_path / "tiny.safetensors")


def run_cli(*args):
    return subprocess.run([EXE, *map(str, args)], capture_output=True, text=True, env=os.environ.copy(), timeout=300)


def test_predict_writes_labels_and_attention(tmp_path, model_file, home):
    out = tmp_path / "out"
    done = run_cli("predict", FLUO, HE, "--out", out, "--model", model_file, "--device", "cpu", "--tile-size", "64")
    assert done.returncode == 0, done.stderr
    # stderr is a pipe here, as in a log: each bar drawn at its start and end, not at each of the 25 tiles and
    # stages of an image (44 redraws for a 128² image in 64 px tiles before)
    assert done.stderr.count("\r") <= 10, done.stderr
    assert "0tile" not in done.stderr, done.stderr  # no bar drawn before its total is known
    for image_path in (FLUO, HE):
        image = tifffile.imread(image_path)
        labels = tifffile.imread(out / f"{image_path.stem}_labels.tif")
        attention = tifffile.imread(out / f"{image_path.stem}_attention.tif")
        assert labels.shape == image.shape[:2] and np.issubdtype(labels.dtype, np.integer)
        assert attention.shape == (2, *image.shape[:2]) and attention.dtype == np.float32
        assert attention.min() >= 0 and attention.max() <= 1
        # float maps are written raw (compressing them was 0.2 s of a 2048² image's 3.3 s); labels compressed
        with tifffile.TiffFile(out / f"{image_path.stem}_attention.tif") as maps:
            assert maps.pages[0].compression == tifffile.COMPRESSION.NONE
        with tifffile.TiffFile(out / f"{image_path.stem}_labels.tif") as written:
            assert written.pages[0].compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        found = int(labels.max())  # what it found, and where it went, said per image
        said = f"{image_path.name}: {found} objects -> {out / f'{image_path.stem}_labels.tif'} (+ attention maps, "
        assert said in done.stderr, done.stderr


def test_predict_png_and_3d_stack(tmp_path, model_file, home):
    from skimage.io import imsave

    png = tmp_path / "rgb.png"
    imsave(png, tifffile.imread(HE), check_contrast=False)
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, np.stack([tifffile.imread(FLUO)[:96, :96]] * 3))
    out = tmp_path / "out"
    done = run_cli("predict", png, stack, "--out", out, "--model", model_file)
    assert done.returncode == 0, done.stderr
    assert tifffile.imread(out / "rgb_labels.tif").shape == (256, 320)
    assert tifffile.imread(out / "stack_labels.tif").shape == (3, 96, 96)
    assert tifffile.imread(out / "stack_attention.tif").shape == (2, 3, 96, 96)  # gate first, then ZYX


def test_predict_anisotropic_volume_with_a_3d_model(tmp_path, home):
    from napari_attention_unet.cli import main
    from napari_attention_unet.core.predict import predict, run_to_end

    torch.manual_seed(0)
    model = AttentionUNet(ModelConfig(spatial_dims=3, in_channels=1, base_width=2, depth=3))
    model_path = save_model(model, tmp_path / "tiny3d.safetensors")
    volume = np.stack([tifffile.imread(FLUO)[:64, :64]] * 4).astype(np.float32)
    tifffile.imwrite(tmp_path / "volume.tif", volume)
    out = tmp_path / "out"
    common = ["predict", str(tmp_path / "volume.tif"), "--model", str(model_path), "--device", "cpu", "--axes", "ZYX"]
    assert main([*common, "--out", str(out), "--spacing", "3,1,1"]) == 0
    attention = tifffile.imread(out / "volume_attention.tif")
    assert attention.shape == (2, 4, 64, 64)  # on the volume's own grid
    expected = run_to_end(predict(model.eval(), volume, axes="ZYX", device="cpu", spacing=(3, 1, 1)))
    np.testing.assert_allclose(attention[0], expected.gate_maps["gate1"], atol=1e-5)
    bad = run_cli(*common, "--out", tmp_path / "bad", "--spacing", "3,1")
    assert bad.returncode == 2 and "Z,Y,X" in bad.stderr and "Traceback" not in bad.stderr
    # A volume stored Y, X, Z gets its labels and maps back on its own grid, in its own axis order.
    tifffile.imwrite(tmp_path / "yxz.tif", np.moveaxis(volume, 0, -1))
    yxz = ["predict", str(tmp_path / "yxz.tif"), "--model", str(model_path), "--device", "cpu", "--axes", "YXZ"]
    assert main([*yxz, "--out", str(out), "--spacing", "3,1,1"]) == 0
    np.testing.assert_array_equal(tifffile.imread(out / "yxz_labels.tif"), np.moveaxis(expected.labels, 0, -1))
    with tifffile.TiffFile(out / "volume_labels.tif") as tif:  # ZYX: an ImageJ stack at the voxel size given
        assert tif.is_imagej and tif.imagej_metadata["spacing"] == 3.0 and tif.series[0].axes == "ZYX"
    with tifffile.TiffFile(out / "yxz_labels.tif") as tif:  # ImageJ has no Y, X, Z order: stated in tifffile's way
        assert not tif.is_imagej and '"axes": "YXZ"' in (tif.pages[0].description or "")
    with tifffile.TiffFile(out / "yxz_attention.tif") as tif:
        assert tif.series[0].shape == (2, 64, 64, 4) and '"axes": "QYXZ"' in (tif.pages[0].description or "")


def test_a_tiff_volume_is_predicted_at_the_voxel_size_it_states(tmp_path, home):
    """An ImageJ stack (Fiji's spacing and resolution) or an OME-TIFF states its voxel size: predict takes it, as it
    takes a NIfTI header's (before, a 1 um file gave the same labels as a 2 um one); --spacing still wins."""
    from napari_attention_unet.cli import main
    from napari_attention_unet.core.predict import predict, run_to_end
    from napari_attention_unet.large_data.files import declared_voxel_size

    volume = np.stack([tifffile.imread(FLUO)[:64, :64]] * 4).astype(np.float32)
    tifffile.imwrite(
        tmp_path / "fiji.tif", volume, imagej=True, resolution=(2.0, 2.0), metadata={"spacing": 3.0, "axes": "ZYX"}
    )
    tifffile.imwrite(
        tmp_path / "ome.tif",
        volume,
        ome=True,
        metadata={"axes": "ZYX", "PhysicalSizeZ": 3.0, "PhysicalSizeY": 0.5, "PhysicalSizeX": 0.5},
    )
    tifffile.imwrite(tmp_path / "plain.tif", volume)
    tifffile.imwrite(tmp_path / "flat.tif", volume[0], imagej=True, resolution=(2.0, 2.0))
    assert declared_voxel_size(tmp_path / "fiji.tif") == (3.0, 0.5, 0.5)
    assert declared_voxel_size(tmp_path / "ome.tif") == (3.0, 0.5, 0.5)
    assert declared_voxel_size(tmp_path / "plain.tif") is None and declared_voxel_size(tmp_path / "flat.tif") is None

    torch.manual_seed(0)
    model = AttentionUNet(ModelConfig(spatial_dims=3, in_channels=1, base_width=2, depth=3))
    model_path = save_model(model, tmp_path / "tiny3d.safetensors")
    expected = run_to_end(predict(model.eval(), volume, axes="ZYX", device="cpu", spacing=(3.0, 0.5, 0.5)))
    for name in ("fiji", "ome"):
        args = ["predict", str(tmp_path / f"{name}.tif"), "--model", str(model_path), "--device", "cpu"]
        assert main([*args, "--out", str(tmp_path / "out")]) == 0
        maps = tifffile.imread(tmp_path / "out" / f"{name}_attention.tif")
        np.testing.assert_allclose(maps[0], expected.gate_maps["gate1"], atol=1e-5)
        # the labels state the same voxel size, as Fiji writes it, so they lie on the image there too
        assert declared_voxel_size(tmp_path / "out" / f"{name}_labels.tif") == (3.0, 0.5, 0.5)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out" / "ome_labels.tif"), expected.labels)
    assert main([*args, "--out", str(tmp_path / "given"), "--spacing", "1,1,1"]) == 0
    assert declared_voxel_size(tmp_path / "given" / "ome_labels.tif") == (1.0, 1.0, 1.0)
    assert main(["predict", str(tmp_path / "plain.tif"), "--model", str(model_path), "--out", str(tmp_path / "p")]) == 0
    assert declared_voxel_size(tmp_path / "p" / "plain_labels.tif") is None  # none stated, none claimed
    # train reads it too, and stores it with the model
    from napari_attention_unet.core.weights import read_metadata

    classes = (volume > np.percentile(volume, 80)).astype(np.uint8)
    classes[:, :32] *= 2
    tifffile.imwrite(tmp_path / "classes.tif", classes)
    tiny = ["--base-width", "4", "--depth", "3", "--steps", "1", "--device", "cpu", "--task", "semantic"]
    train = ["train", "--image", str(tmp_path / "fiji.tif"), "--labels", str(tmp_path / "classes.tif")]
    assert main([*train, "--out", str(tmp_path / "m3d"), *tiny]) == 0
    assert read_metadata(tmp_path / "m3d.safetensors")[1]["spacing"] == [3.0, 0.5, 0.5]
    cubic = run_to_end(predict(model.eval(), volume, axes="ZYX", device="cpu"))
    np.testing.assert_allclose(
        tifffile.imread(tmp_path / "given" / "ome_attention.tif")[0], cubic.gate_maps["gate1"], atol=1e-5
    )


def test_saved_model_by_name_and_models_listing(tmp_path, home):
    save_model(AttentionUNet(ModelConfig(base_width=4, depth=3)), home / "models" / "my-cells")
    classes = ("background", "anterior", "posterior")
    mr = ModelConfig(spatial_dims=3, classes=classes, task="semantic", base_width=4, depth=3)
    save_model(AttentionUNet(mr), home / "models" / "mr")
    (home / "models" / "broken.safetensors").write_bytes(b"not a model")
    save_model(AttentionUNet(ModelConfig(base_width=4, depth=3)), home / "models" / "nuclei")  # the bundled name
    long_name = "hippocampus_038-semantic-3d-20261130-2053"  # as the dock names new models: wider than 30
    save_model(AttentionUNet(ModelConfig(base_width=4, depth=3)), home / "models" / long_name)
    listing = run_cli("models")
    assert listing.returncode == 0 and "my-cells" in listing.stdout and "saved" in listing.stdout
    lines = {line.split()[0] + " " + line.split()[1]: line for line in listing.stdout.splitlines()[:-1]}
    assert "2D instances" in lines["my-cells saved"] and "3D semantic: anterior, posterior" in lines["mr saved"]
    assert "DAMAGED" in lines["broken saved"] and "hidden by the bundled model" in lines["nuclei saved"]
    kinds = {line.index(" saved ") for line in listing.stdout.splitlines()[:-1] if " saved " in line}
    assert len(kinds) == 1  # the columns stay aligned
    done = run_cli("predict", FLUO, "--out", tmp_path / "o", "--model", "my-cells")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "o" / f"{FLUO.stem}_labels.tif").is_file()


def test_clear_errors(tmp_path, model_file, home):
    missing = run_cli("predict", FLUO, "--out", tmp_path / "o", "--model", "no-such-model")
    assert missing.returncode == 2 and "no model named 'no-such-model'" in missing.stderr
    assert "Traceback" not in missing.stderr
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a model at all")
    broken = run_cli("predict", FLUO, "--out", tmp_path / "o", "--model", bad)
    assert broken.returncode == 2 and "not a readable model file" in broken.stderr
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    skipped = run_cli("predict", text, FLUO, "--out", tmp_path / "o", "--model", model_file)
    assert skipped.returncode == 1 and "unsupported file type" in skipped.stderr
    assert (tmp_path / "o" / f"{FLUO.stem}_labels.tif").is_file()  # the good image was still done
    tifffile.imwrite(tmp_path / "empty.tif", np.full((32, 32), np.nan, np.float32))  # before: "predicted", exit 0
    nothing = run_cli("predict", tmp_path / "empty.tif", "--out", tmp_path / "o", "--model", model_file)
    assert nothing.returncode == 1 and "every pixel is NaN (or infinite): there is nothing to predict" in nothing.stderr
    assert not (tmp_path / "o" / "empty_labels.tif").exists()


def test_unusable_settings_and_outputs_are_one_line_before_any_work(tmp_path, model_file, home, capsys):
    from napari_attention_unet.cli import main

    common = ["predict", str(FLUO), "--model", str(model_file), "--device", "cpu"]
    afile = tmp_path / "a.tif"
    afile.write_bytes(b"x")
    cases = [
        (["--out", str(afile)], "cannot write into"),  # an existing file, not a folder
        (["--out", str(afile / "sub")], "cannot write into"),
        (["--out", str(tmp_path / "o"), "--precision", "fp16"], "fp16 runs on CUDA GPUs only"),
        (["--out", str(tmp_path / "o"), "--tile-size", "7"], "a tile size of 7 is too small: at least 32"),
        (["--out", str(tmp_path / "o"), "--tile-size", "-5"], "too small"),
    ]
    for extra, said in cases:
        assert main([*common, *extra]) == 2, extra
        err = capsys.readouterr().err
        assert said in err and "Traceback" not in err, (extra, err)
    assert not (tmp_path / "o").exists()  # refused before anything ran or was written


def test_a_hyperstack_s_channels_are_channels_not_planes(tmp_path, model_file, home, capsys):
    """An ImageJ CYX file: its channels were segmented as Z planes, with exit code 0."""
    from napari_attention_unet.cli import main

    grey = tifffile.imread(FLUO)[:96, :96]
    tifffile.imwrite(tmp_path / "two.tif", np.stack([grey, grey[::-1]]), imagej=True, metadata={"axes": "CYX"})
    tifffile.imwrite(tmp_path / "rgb.tif", np.stack([grey] * 3), imagej=True, metadata={"axes": "CYX"})
    series = np.stack([np.stack([grey] * 3)] * 2)  # two time points of three channels
    tifffile.imwrite(tmp_path / "movie.tif", series, imagej=True, metadata={"axes": "TCYX"})
    common = ["--model", str(model_file), "--device", "cpu", "--out", str(tmp_path / "o")]
    assert main(["predict", str(tmp_path / "two.tif"), *common]) == 1
    assert "but the image has 2: pick one channel (--channel C" in capsys.readouterr().err
    # --channel 1: the second channel alone, as if it were a file of its own.
    tifffile.imwrite(tmp_path / "second.tif", grey[::-1])
    assert main(["predict", str(tmp_path / "two.tif"), "--channel", "1", *common]) == 0
    assert main(["predict", str(tmp_path / "second.tif"), *common]) == 0
    picked = tifffile.imread(tmp_path / "o" / "two_labels.tif")
    assert picked.shape == (96, 96) and np.array_equal(picked, tifffile.imread(tmp_path / "o" / "second_labels.tif"))
    assert main(["predict", str(tmp_path / "two.tif"), "--channel", "2", *common]) == 1
    assert "channel 2 is not in the image: it has 2 channel(s)" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "rgb.tif"), *common]) == 0
    assert tifffile.imread(tmp_path / "o" / "rgb_labels.tif").shape == (96, 96)  # one image, not 3 planes
    assert main(["predict", str(tmp_path / "movie.tif"), "--time-point", "1", *common]) == 0
    assert tifffile.imread(tmp_path / "o" / "movie_t1_labels.tif").shape == (96, 96)
    # a 2D time-lapse saved by Fiji (TYX) too: --time-point was refused as "3D" though the file says T
    tifffile.imwrite(tmp_path / "lapse.tif", np.stack([grey, grey[::-1], grey]), imagej=True, metadata={"axes": "TYX"})
    assert main(["predict", str(tmp_path / "lapse.tif"), "--time-point", "1", *common]) == 0
    assert np.array_equal(tifffile.imread(tmp_path / "o" / "lapse_t1_labels.tif"), picked)  # the reversed plane
    tifffile.imwrite(tmp_path / "stack.tif", np.stack([grey, grey[::-1], grey]))  # ZYX or TYX? it does not say
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "stack.tif"), "--time-point", "1", *common]) == 1
    assert "2D time-lapse TIFF that declares its time axis (TYX" in capsys.readouterr().err


def test_block_size_off_the_64_px_grid_is_refused_with_a_suggestion(tmp_path):
    """Output chunks divide the blocks: --block-size 900 would make 4 px chunks, so it is refused."""
    done = run_cli("predict", FLUO, "--out", tmp_path / "out", "--block-size", 900)
    assert done.returncode == 2 and "multiple of 64" in done.stderr and "try 896" in done.stderr
    assert not (tmp_path / "out").exists()


def test_predict_block_by_block_writes_the_same_files(tmp_path, home):
    """``--block-size`` (automatic above 4096x4096 px) streams blocks into uncompressed TIFFs."""
    from napari_attention_unet.core.predict import run_to_end
    from napari_attention_unet.large_data.blocks import predict_blocks
    from napari_attention_unet.models.registry import open_model

    image = np.tile(tifffile.imread(FLUO), (2, 2))
    tifffile.imwrite(tmp_path / "big.tif", image)
    done = run_cli("predict", tmp_path / "big.tif", "--out", tmp_path / "out", "--block-size", 192, "--device", "cpu")
    assert done.returncode == 0, done.stderr
    expected = run_to_end(predict_blocks(open_model()[0], image, block_size=192, device="cpu"))
    labels = tifffile.imread(tmp_path / "out" / "big_labels.tif")
    attention = tifffile.imread(tmp_path / "out" / "big_attention.tif")
    assert expected.n_objects > 20 and np.array_equal(labels, expected.labels)
    assert attention.shape == (4, 512, 512) and attention.dtype == np.float32
    assert np.abs(attention - expected.attention).max() < 1e-3


def test_a_volume_to_a_zarr_output_says_what_works(tmp_path, model_file, home, capsys):
    from napari_attention_unet.cli import main

    tifffile.imwrite(tmp_path / "vol.tif", np.zeros((4, 64, 64), np.uint8))
    args = ["predict", str(tmp_path / "vol.tif"), "--model", str(model_file), "--out", str(tmp_path / "r.zarr")]
    assert main([*args, "--axes", "ZYX"]) == 1
    assert "a volume: give a TIFF or NIfTI file and a folder as --out" in capsys.readouterr().err


def test_predict_ome_zarr_input_to_zarr_output(tmp_path, model_file, home):
    zarr = pytest.importorskip("zarr")
    image = tifffile.imread(HE)
    group = zarr.open_group(str(tmp_path / "slide.ome.zarr"), mode="w")
    level = group.create_array("0", shape=(1, 3, 1, *image.shape[:2]), dtype=image.dtype, chunks=(1, 3, 1, 128, 128))
    level[:] = np.moveaxis(image, -1, 0)[None, :, None]
    axes = [{"name": n, "type": t} for n, t in zip("tczyx", ["time", "channel", "space", "space", "space"])]
    group.attrs["ome"] = {"version": "0.5", "multiscales": [{"axes": axes, "datasets": [{"path": "0"}]}]}
    out = tmp_path / "result.zarr"
    done = run_cli("predict", tmp_path / "slide.ome.zarr", FLUO, "--out", out, "--model", model_file)
    assert done.returncode == 0, done.stderr
    results = zarr.open_group(str(out), mode="r")
    assert results["slide/labels"].shape == image.shape[:2] and results["slide/attention"].shape == (2, 256, 320)
    assert results["slide/attention"].attrs["gates"] == ["gate1", "gate2"]
    assert results[f"{FLUO.stem}/probability"].dtype == np.float16
    from_tiff = run_cli("predict", HE, "--out", tmp_path / "tif", "--model", model_file, "--block-size", 128)
    assert from_tiff.returncode == 0, from_tiff.stderr
    same = tifffile.imread(tmp_path / "tif" / f"{HE.stem}_attention.tif")
    assert np.abs(results["slide/attention"][:].astype(np.float32) - same).max() < 1e-3  # CYX zarr == YXC TIFF


def test_model_out_path_then_predict_model_with_the_path_as_typed(tmp_path, model_file, home):
    """`finetune --out my-model` writes ``save_model(model, "my-model")``; `predict --model my-model` must find it."""
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(FLUO, work / "cells.tif")
    written = save_model(AttentionUNet(ModelConfig(base_width=4, depth=3)), work / "my-model")  # as finetune does
    assert written == work / "my-model.safetensors"

    def run_here(*args):
        return subprocess.run([EXE, *map(str, args)], capture_output=True, text=True, cwd=work, timeout=300)

    done = run_here("predict", "cells.tif", "--out", "results", "--model", "my-model", "--device", "cpu")
    assert done.returncode == 0, done.stderr
    assert (work / "results" / "cells_labels.tif").is_file()
    for typed in (work / "my-model", "./my-model.safetensors"):
        again = run_here("predict", "cells.tif", "--out", "again", "--model", typed, "--device", "cpu")
        assert again.returncode == 0, again.stderr
    missing = run_here("predict", "cells.tif", "--out", "x", "--model", "no-such-model")
    assert missing.returncode == 2 and "no model named 'no-such-model'" in missing.stderr
    refused = run_here(
        "finetune", "--image", "cells.tif", "--labels", "cells.tif", "--out", "tuned", "--model", "my-model",
        "--steps", "1", "--device", "cpu",
    )  # fmt: skip
    assert "fine-tuning my-model" in refused.stderr  # finetune --model finds it the same way


def test_dotted_names_keep_their_own_outputs_and_clashes_are_refused(tmp_path, model_file, home):
    """`cells.1.tif` and `cells.2.tif` get outputs of their own; two inputs that would write the
    same outputs (the same name in two folders) are refused before anything is written."""
    image = tifffile.imread(FLUO)
    (tmp_path / "b").mkdir()
    for name in ("cells.1.tif", "cells.2.tif", "b/cells.1.tif"):
        tifffile.imwrite(tmp_path / name, image)
    out = tmp_path / "out"
    done = run_cli("predict", tmp_path / "cells.1.tif", tmp_path / "cells.2.tif", "--out", out, "--model", model_file)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "cells.1_attention.tif",
        "cells.1_labels.tif",
        "cells.2_attention.tif",
        "cells.2_labels.tif",
    ]
    clash = run_cli("predict", tmp_path / "cells.1.tif", tmp_path / "b/cells.1.tif", "--out", tmp_path / "o2")
    assert clash.returncode == 2 and "would both write cells.1_labels" in clash.stderr
    assert "Traceback" not in clash.stderr and not (tmp_path / "o2").exists()


def test_finetune_refuses_labels_of_one_value_before_training(tmp_path, model_file, home):
    image = tifffile.imread(FLUO)
    tifffile.imwrite(tmp_path / "img.tif", image)
    tifffile.imwrite(tmp_path / "one.tif", np.ones(image.shape[:2], np.uint8))
    args = ["--image", tmp_path / "img.tif", "--labels", tmp_path / "one.tif", "--model", model_file, "--steps", "50"]
    done = run_cli("finetune", *args, "--out", tmp_path / "tuned", "--device", "cpu")
    assert done.returncode == 2 and "the labels hold one value only (1)" in done.stderr
    assert "step" not in done.stderr.replace("steps", "") and not (tmp_path / "tuned.safetensors").exists()
    negative = run_cli("predict", tmp_path / "img.tif", "--time-point", "-1", "--out", tmp_path / "o")
    assert negative.returncode == 2 and "time points count from 0, so not -1" in negative.stderr


def test_a_folder_given_as_an_image_is_said_to_be_a_folder(tmp_path, model_file, home):
    (tmp_path / "images").mkdir()
    done = run_cli("predict", tmp_path / "images", "--out", tmp_path / "o", "--model", model_file)
    assert done.returncode == 1 and "is a folder: give the image files in it" in done.stderr


def test_only_the_program_itself_changes_how_freed_memory_is_reused(monkeypatch, home):
    """`attention-unet` keeps freed arrays' memory for reuse (fewer page faults); a caller of
    ``main([...])`` in its own process (a test, a notebook) keeps its allocator as it was."""
    import napari_attention_unet.cli as cli

    calls = []
    monkeypatch.setattr(cli, "reuse_freed_memory", lambda: calls.append("set") or True)
    monkeypatch.setattr(sys, "argv", ["attention-unet", "models"])
    assert cli.main() == 0 and calls == ["set"]
    assert cli.main(["models"]) == 0 and calls == ["set"]


def test_only_the_program_itself_collects_garbage_less(home):
    """`attention-unet` collects less often while it runs and leaves what lives to its end out of the collections
    of its exit (0.1-0.15 s and 0.3 s of a 2048² prediction); ``main([...])`` in a caller's process changes neither."""
    code = (
        "import gc, sys; from napari_attention_unet.cli import main; sys.argv = ['attention-unet', 'models']; "
        "code = main(); print(gc.get_threshold(), gc.get_freeze_count() > 1000); raise SystemExit(code)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "(50000, 20, 20) True"
    import gc

    import napari_attention_unet.cli as cli

    before = gc.get_threshold(), gc.get_freeze_count()
    assert cli.main(["models"]) == 0
    assert (gc.get_threshold(), gc.get_freeze_count()) == before


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or __import__("platform").libc_ver()[0] != "glibc",
    reason="the settings are glibc's (mallopt); other C libraries keep their own",
)
def test_glibc_takes_the_memory_settings():
    code = "from napari_attention_unet.cli.common import reuse_freed_memory as r; raise SystemExit(0 if r() else 1)"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0  # its own process
