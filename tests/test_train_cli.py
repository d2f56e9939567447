"""`attention-unet train` end to end on TIFF files (train, then predict with the path as typed), and
its answers to bad input: exit code 2 and one line, no traceback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from napari_attention_unet.cli import main
from napari_attention_unet.core.model import AttentionUNet, ModelConfig
from napari_attention_unet.core.weights import read_metadata, save_model

EXE = shutil.which("attention-unet") or str(Path(sys.executable).with_name("attention-unet"))
TINY = ["--base-width", "4", "--depth", "3", "--device", "cpu"]


def run_cli(*args, cwd: Path):
    return subprocess.run(
        [EXE, *map(str, args)], capture_output=True, text=True, env=os.environ.copy(), timeout=300, cwd=cwd
    )


def three_classes(shape, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Background 0, bright blocks 1, mid-grey blocks 2, in 2D or 3D."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.uint8)
    for k in range(12):
        corner = [int(rng.integers(0, max(n - 6, 1))) for n in shape]
        labels[tuple(slice(c, c + 6) for c in corner)] = 1 + k % 2
    image = np.choose(labels, [20.0, 200.0, 110.0]) + rng.normal(0, 8, shape)
    return image.astype(np.float32), labels


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_ATTENTION_UNET_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_train_then_predict_a_2d_semantic_model(tmp_path, home):
    image, labels = three_classes((96, 96))
    tifffile.imwrite(tmp_path / "cells.tif", image)
    tifffile.imwrite(tmp_path / "cells_classes.tif", labels)
    args = ["--image", "cells.tif", "--labels", "cells_classes.tif", "--out", "my-model", "--steps", "30"]
    done = run_cli("train", *args, "--class-names", "bright,grey", "--spacing", "1,0.5,0.5", *TINY, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "a 2D model does not use it" in done.stderr  # --spacing is not silently dropped
    assert "3 classes found (0, 1, 2): semantic" in done.stderr
    assert "2D semantic (background, bright, grey)" in done.stderr
    config, info = read_metadata(tmp_path / "my-model.safetensors")
    assert config.task == "semantic" and config.classes == ("background", "bright", "grey")
    assert info["task"] == "semantic" and info["steps"] == 30 and 0 <= info["kept_step"] <= 30

    done = run_cli("predict", "cells.tif", "--out", "out", "--model", "my-model", "--device", "cpu", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    predicted = tifffile.imread(tmp_path / "out" / "cells_labels.tif")
    assert predicted.shape == labels.shape and set(np.unique(predicted)) <= {0, 1, 2}
    assert tifffile.imread(tmp_path / "out" / "cells_attention.tif").shape == (2, 96, 96)


def test_train_then_predict_a_3d_model(tmp_path, home):
    image, labels = three_classes((16, 32, 32))
    tifffile.imwrite(tmp_path / "vol.tif", image)
    tifffile.imwrite(tmp_path / "vol_labels.tif", labels)
    args = ["--image", "vol.tif", "--labels", "vol_labels.tif", "--out", "models/vol3d", "--steps", "3"]
    done = run_cli("train", *args, "--spacing", "2,1,1", *TINY, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    # 16 planes are 32 at 2:1 (patches 16x32x32 without --spacing), shrunk to the 3D voxel budget
    assert "training a 3D semantic" in done.stderr and "patches 28x28x28" in done.stderr
    assert "and at this one when they have none" in done.stderr  # what predict does below
    assert "note: only 3 steps: a new model from scratch is seldom done learning" in done.stderr
    assert read_metadata(tmp_path / "models" / "vol3d.safetensors")[0].spatial_dims == 3

    done = run_cli("predict", "vol.tif", "--out", "out", "--model", "models/vol3d", "--spacing", "2,1,1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    predicted = tifffile.imread(tmp_path / "out" / "vol_labels.tif")
    assert predicted.shape == labels.shape and set(np.unique(predicted)) <= {0, 1, 2}
    assert tifffile.imread(tmp_path / "out" / "vol_attention.tif").shape == (2, 16, 32, 32)  # gate first, then ZYX
    with tifffile.TiffFile(tmp_path / "out" / "vol_labels.tif") as tif:  # read back as ZYX (was QYX)
        assert tif.series[0].axes == "ZYX"

    # without --spacing, a TIFF volume is taken at the spacing the model was trained at, and it says so
    done = run_cli("predict", "vol.tif", "--out", "again", "--model", "models/vol3d", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "training spacing 2,1,1" in done.stderr
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "again" / "vol_labels.tif"), predicted)

    # block by block is for 2D images: a 3D model says so before any work, and writes nothing
    for blocks in (["--out", "blk", "--block-size", "128"], ["--out", "vol.zarr"]):
        done = run_cli("predict", "vol.tif", "--model", "models/vol3d", *blocks, cwd=tmp_path)
        assert done.returncode == 2 and "is a 3D model: it predicts whole volumes, not 2D blocks" in done.stderr
        assert not (tmp_path / blocks[1]).exists()


@pytest.mark.parametrize("dims", [2, 3])
def test_five_images_or_more_train_with_whole_images_held_out(tmp_path, home, capsys, dims):
    """From five images on, whole images are held out: the run said which without comparing arrays
    (it stopped with numpy's 'could not be broadcast' or 'ambiguous' before training, whatever the shapes)."""
    args = []
    for k, shape in enumerate([(40, 48), (40, 48), (44, 40), (48, 52), (40, 56)]):
        image, labels = three_classes(((12, *shape) if dims == 3 else shape), seed=k)
        tifffile.imwrite(tmp_path / f"i{k}.tif", image)
        tifffile.imwrite(tmp_path / f"l{k}.tif", labels)
        args += ["--image", str(tmp_path / f"i{k}.tif"), "--labels", str(tmp_path / f"l{k}.tif")]
    out = tmp_path / "five"
    assert main(["train", *args, "--out", str(out), "--steps", "2", "--task", "semantic", *TINY]) == 0
    err = capsys.readouterr().err
    assert f"training a {dims}D semantic" in err and "on 4 image(s) (validation: 1 held-out image(s))" in err
    assert read_metadata(out.with_suffix(".safetensors"))[0].spatial_dims == dims


def test_a_mask_of_0_and_255_is_a_mask(tmp_path, home, capsys):
    """Fiji saves masks as 0/255: that was '1 objects: instances' (touching objects never split, AP 0 at
    every check) and one blob of 20 a 21-class semantic model with 19 empty classes."""
    from skimage.measure import label

    image, classes = three_classes((96, 96), seed=2)
    tifffile.imwrite(tmp_path / "img.tif", image)
    tifffile.imwrite(tmp_path / "mask.tif", np.where(classes > 0, 255, 0).astype(np.uint8))
    args = ["train", "--image", str(tmp_path / "img.tif"), "--labels", str(tmp_path / "mask.tif"), "--steps", "1"]
    assert main([*args, "--out", str(tmp_path / "objects"), "--start", "scratch", *TINY]) == 0
    err = capsys.readouterr().err
    pieces = label(classes > 0).max()
    assert "the labels hold 0 and 255 only: taken as a mask (0 and 1)" in err
    assert f"a binary mask of {pieces} objects: instances" in err

    blob = np.zeros((96, 96), np.uint8)
    blob[20:60, 30:70] = 20
    tifffile.imwrite(tmp_path / "blob.tif", blob)
    args[4] = str(tmp_path / "blob.tif")
    assert main([*args, "--out", str(tmp_path / "region"), "--start", "scratch", *TINY]) == 0
    err = capsys.readouterr().err
    assert "taken as a mask (0 and 1)" in err and "2 classes found (0, 1): semantic" in err
    assert read_metadata(tmp_path / "region.safetensors")[0].classes == ("background", "class 1")

    # a stray 254 (a smoothed edge) was "2 objects: instances", every blob of 255 one object
    stray = np.where(classes > 0, 255, 0).astype(np.uint8)
    stray[np.argwhere(classes > 0)[0][0], np.argwhere(classes > 0)[0][1]] = 254
    tifffile.imwrite(tmp_path / "stray.tif", stray)
    args[4] = str(tmp_path / "stray.tif")
    assert main([*args, "--out", str(tmp_path / "strays"), "--start", "scratch", *TINY]) == 0
    err = capsys.readouterr().err
    assert "the labels hold 0 and 255, and 1 pixel(s) of other values: taken as a mask (0 and 1; values of 128" in err
    assert f"a binary mask of {pieces} objects: instances" in err


def test_instances_are_inferred_from_many_ids(tmp_path, home):
    from skimage.measure import label

    image, classes = three_classes((96, 96), seed=2)
    ids = label(classes > 0).astype(np.uint16)
    tifffile.imwrite(tmp_path / "img.tif", image)
    tifffile.imwrite(tmp_path / "ids.tif", ids)
    args = ["--image", "img.tif", "--labels", "ids.tif", "--out", "inst", "--steps", "2", "--start", "scratch"]
    done = run_cli("train", *args, "--class-names", "cell,dust", *TINY, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"{ids.max()} objects: instances (inferred: --task chooses another)" in done.stderr
    assert "2D instances model" in done.stderr
    assert "objects have no class names: the names given are not used" in done.stderr  # not silently dropped
    assert read_metadata(tmp_path / "inst.safetensors")[0].task == "instances"
    # --task semantic on object ids: a class per id, as asked, but said (it is seldom what was meant).
    semantic = [*args[:5], "semantic-ids", "--steps", "1", "--start", "scratch", "--task", "semantic"]
    done = run_cli("train", *semantic, *TINY, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"the labels look like object ids: each value 1..{ids.max()} becomes a class of its own" in done.stderr
    assert len(read_metadata(tmp_path / "semantic-ids.safetensors")[0].classes) == ids.max() + 1


# -- bad input -----------------------------------------------------------------------------------


def _write_case(case: str, folder: Path) -> list[str]:
    image, labels = three_classes((64, 64))
    extra: list[str] = []
    if case == "shape":
        labels = labels[:60]
    elif case == "one value":
        labels = np.ones_like(labels)
    elif case == "too many classes":
        labels = (np.arange(labels.size) % 300).reshape(labels.shape).astype(np.uint16)
        extra = ["--task", "semantic"]
    elif case == "3d on 2d":
        extra = ["--dims", "3"]
    elif case == "2d start for 3d":
        image, labels = three_classes((16, 32, 32))
        torch.manual_seed(0)
        save_model(AttentionUNet(ModelConfig(base_width=4, depth=3)), folder / "flat")
        extra = ["--dims", "3", "--start", str(folder / "flat")]
    elif case == "nan":
        image[5, 5] = np.nan
    elif case == "inf":  # trained on without a word before
        image[5, 5:8] = np.inf
    elif case == "empty":  # a zero-size TIFF: a numpy reshape error before
        image, labels = np.zeros((0, 32, 32), np.uint16), np.zeros((0, 32, 32), np.uint16)
    elif case == "too small":
        image, labels = three_classes((6, 32, 32))
        extra = ["--dims", "3"]
    elif case == "same class names":
        extra = ["--class-names", "cell,cell"]
    elif case == "empty class name":
        extra = ["--class-names", "cell,"]
    elif case == "negative":  # read as a binary mask of objects, then refused as "no objects"
        labels = -(labels > 0).astype(np.int16)
    elif case == "time series":
        image, labels = np.stack([three_classes((8, 32, 32))[0]] * 3), np.stack([three_classes((8, 32, 32))[1]] * 3)
    with warnings.catch_warnings():  # tifffile warns about zero-size arrays, which it still writes
        warnings.simplefilter("ignore", UserWarning)
        tifffile.imwrite(folder / "img.tif", image)
        tifffile.imwrite(folder / "lbl.tif", labels)
    return ["train", "--image", str(folder / "img.tif"), "--labels", str(folder / "lbl.tif")] + extra


@pytest.mark.parametrize(
    "case, message",
    [
        ("shape", "labels of shape (60, 64) do not match the image's spatial shape (64, 64)"),
        ("one value", "the labels hold one value only (1)"),
        ("too many classes", "semantic labels hold at most 255 classes"),
        ("3d on 2d", "a 3D model trains on volumes (ZYX), but image 1 is 2D"),
        ("2d start for 3d", "the starting model is 2D, so it cannot start a 3D model"),
        ("nan", "the image holds 1 NaN pixel(s)"),
        ("inf", "the image holds 3 infinite pixel(s)"),
        ("empty", "the image is empty (shape (0, 32, 32)): nothing to train on"),
        ("too small", "needs at least 8 px on every axis"),
        ("time series", "a time series?"),
        ("negative", "the labels hold negative values (-1)"),
        ("same class names", "class names must differ (cell given twice"),
        ("empty class name", "class 2 has an empty name"),
    ],
)
def test_bad_input_ends_with_one_clear_line(tmp_path, home, capsys, case, message):
    argv = _write_case(case, tmp_path) + ["--out", str(tmp_path / "never"), "--steps", "1", "--device", "cpu"]
    assert main(argv) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("attention-unet: error:")]
    assert len(errors) == 1 and message in errors[0], errors
    assert not (tmp_path / "never.safetensors").exists()


@pytest.mark.parametrize("budget", [["--steps", "0"], ["--minutes", "-1"], ["--minutes", "soon"]])
def test_a_budget_that_trains_nothing_is_refused_before_anything_is_read(tmp_path, capsys, budget):
    argv = ["train", "--image", "nowhere.tif", "--labels", "nowhere.tif", "--out", str(tmp_path / "m"), *budget]
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2 and f"argument {budget[0]}:" in capsys.readouterr().err
    assert not (tmp_path / "m.safetensors").exists()


def test_the_trainer_raises_the_same_text(tmp_path):
    from napari_attention_unet.core.train import TrainConfig, Trainer

    image, labels = three_classes((6, 32, 32))
    model = AttentionUNet(ModelConfig(spatial_dims=3, in_channels=1, classes=("a", "b", "c"), task="semantic", depth=4))
    with pytest.raises(
        ValueError,
        match="needs at least 8 px on every axis.*depth 3 \\(works from 4 px; .*--start scratch --depth 3`\\)",
    ):
        Trainer(model, [(image, labels, "ZYX")], config=TrainConfig(max_steps=1))


def test_one_time_point_of_a_series_trains(tmp_path, home, capsys):
    image, labels = three_classes((8, 32, 32))
    series = np.stack([image, image[::-1]])
    tifffile.imwrite(tmp_path / "series.tif", series)
    tifffile.imwrite(tmp_path / "labels.tif", np.stack([labels, labels[::-1]]))
    files = ["train", "--image", str(tmp_path / "series.tif"), "--labels", str(tmp_path / "labels.tif")]
    assert main([*files, "--time-point", "1", "--out", str(tmp_path / "t1"), "--steps", "1", *TINY]) == 0
    assert read_metadata(tmp_path / "t1.safetensors")[0].spatial_dims == 3
    capsys.readouterr()
    assert main([*files, "--time-point", "2", "--out", str(tmp_path / "t2"), "--steps", "1", *TINY]) == 2
    assert "outside the series (time points 0..1)" in capsys.readouterr().err


@pytest.mark.parametrize("accepted", [True, False])
def test_outcome_warning_and_few_steps_note_are_independent(tmp_path, home, capsys, monkeypatch, accepted):
    """The doubt goes with a refused state only, the note with a short run from scratch only."""
    from napari_attention_unet.core.train import Trainer
    from napari_attention_unet.core.train import plan as _plan

    monkeypatch.setattr(Trainer, "_sanity_check", lambda self, trained: (accepted, "the verdict for the test"))
    image, labels = three_classes((48, 48))
    tifffile.imwrite(tmp_path / "img.tif", image)
    tifffile.imwrite(tmp_path / "lbl.tif", labels)
    files = ["train", "--image", str(tmp_path / "img.tif"), "--labels", str(tmp_path / "lbl.tif"), *TINY]
    for few, out in ((200, "short"), (1, "long enough")):
        monkeypatch.setattr(_plan, "FEW_STEPS_FROM_SCRATCH", few)
        assert main([*files, "--steps", "2", "--out", str(tmp_path / out)]) == 0
        err = capsys.readouterr().err
        assert ("warning: the verdict for the test" in err) is not accepted
        assert ("note: only 2 steps" in err) is (few == 200)


def test_a_few_labelled_slices_train_with_zero_is_slices(tmp_path, home, capsys):
    """`train --zero-is slices`: the slices without labels are not labelled, and the CLI says how many."""
    image, labels = three_classes((12, 32, 32))
    sparse = np.zeros_like(labels)
    sparse[[3, 8]] = labels[[3, 8]]
    tifffile.imwrite(tmp_path / "vol.tif", image)
    tifffile.imwrite(tmp_path / "few.tif", sparse)
    files = ["train", "--image", str(tmp_path / "vol.tif"), "--labels", str(tmp_path / "few.tif")]
    assert main([*files, "--out", str(tmp_path / "dense"), "--steps", "1", *TINY]) == 0
    assert "4 empty slice(s) lie between labelled ones" in capsys.readouterr().err  # the CLI suggests the mode
    assert main([*files, "--zero-is", "slices", "--out", str(tmp_path / "m"), "--steps", "1", *TINY]) == 0
    assert "0 = background in the 2 labelled slices; the other 10 are not labelled" in capsys.readouterr().err
    info = read_metadata(tmp_path / "m.safetensors")[1]
    assert info["zero_is"] == "slices"
    slices = ["--zero-is", "slices", "--steps", "1", *TINY]
    assert main([*files, *slices, "--background-slices", "0-1, 11", "--out", str(tmp_path / "b")]) == 0
    assert "in the 5 labelled slices (3 marked as background); the other 7" in capsys.readouterr().err
    assert read_metadata(tmp_path / "b.safetensors")[1]["background_slices"] == [[0, 1, 11]]
    for bad, message in (
        (["--background-slices", "12"], "slice 12 is past the volume's last slice (11)"),
        (["--background-slices", "0", "--background-slices", "1"], "once per --labels, in order"),
    ):
        assert main([*files, *slices, *bad, "--out", str(tmp_path / "x")]) == 2
        assert message in capsys.readouterr().err
    assert main([*files, "--steps", "1", *TINY, "--background-slices", "0", "--out", str(tmp_path / "x")]) == 2
    assert "go with label 0 as 'background in labelled slices' (--zero-is slices)" in capsys.readouterr().err


@pytest.mark.parametrize("out", ["results/", "existing", "~/models/m1", "my dir/my model"])
def test_the_model_path_as_typed_works_for_predict(tmp_path, home, monkeypatch, capsys, out):
    """A folder (`results/`, or one that exists) holds model.safetensors; `~` is the home folder;
    then `predict --model` with the same text finds the model, and the hint quotes it for the shell."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    (tmp_path / "existing").mkdir()
    image, labels = three_classes((48, 48))
    tifffile.imwrite("img.tif", image)
    tifffile.imwrite("lbl.tif", labels)
    assert main(["train", "--image", "img.tif", "--labels", "lbl.tif", "--out", out, "--steps", "1", *TINY]) == 0
    expected = {
        "results/": tmp_path / "results" / "model.safetensors",
        "existing": tmp_path / "existing" / "model.safetensors",
        "~/models/m1": tmp_path / "user" / "models" / "m1.safetensors",
        "my dir/my model": tmp_path / "my dir" / "my model.safetensors",
    }[out]
    assert expected.is_file()
    assert ("--model 'my dir/my model'" if " " in out else f"--model {out}") in capsys.readouterr().err
    assert main(["predict", "img.tif", "--model", out, "--out", "pred", "--device", "cpu"]) == 0
    assert tifffile.imread(tmp_path / "pred" / "img_labels.tif").shape == labels.shape


@pytest.mark.parametrize("order", ["CYX", "YXC"])
def test_two_channel_images_train_and_predict_without_axes(tmp_path, home, monkeypatch, capsys, order):
    """A 2-channel image beside (Y, X) labels, its axes unsaid: the short axis is channels, first or last, for
    train and for predict; the colour start's kernels do not fit two channels, so the model starts from scratch."""
    monkeypatch.chdir(tmp_path)
    image, labels = three_classes((48, 48))
    two = np.stack([image, np.where(labels == 2, 150.0, 20.0)]).astype(np.float32)  # class 2 also in channel 1
    tifffile.imwrite("two.tif", two if order == "CYX" else np.moveaxis(two, 0, -1))
    tifffile.imwrite("lbl.tif", labels)
    torch.manual_seed(0)
    save_model(AttentionUNet(ModelConfig(base_width=4, depth=3)), tmp_path / "colour")  # 3 input channels
    args = ["train", "--image", "two.tif", "--labels", "lbl.tif", "--out", "m", "--steps", "2", "--start", "colour"]
    assert main([*args, "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "2 channels: a new model from scratch (the start takes 3)" in err and "from scratch)" in err
    config, info = read_metadata(tmp_path / "m.safetensors")
    assert config.in_channels == 2 and info["start"] == "scratch"
    assert main(["predict", "two.tif", "--model", "m", "--out", "pred", "--device", "cpu"]) == 0
    assert tifffile.imread(tmp_path / "pred" / "two_labels.tif").shape == labels.shape  # one plane, not two
    capsys.readouterr()
    # A model of other channels reads a short first axis as planes, and says how to mean channels.
    done = main(["predict", "two.tif", "--model", "colour", "--out", "planes", "--device", "cpu"])
    err = capsys.readouterr().err
    assert done == (0 if order == "CYX" else 1)
    if order == "CYX":
        assert "two.tif: read as 2 planes (Z, Y, X), each predicted alone; if its first axis holds channels" in err
    else:  # (Y, X, 2) is no stack of 2 px wide planes: a 2-channel image the colour model cannot take
        assert "the model takes 3 channel(s) but the image has 2" in err


@pytest.mark.parametrize(
    ("out", "why"),
    [
        ("img.tif/m", "img.tif is a file"),
        ("/proc/nope/m", "No such file or directory"),  # Linux's /proc: access() allows, mkdir refuses
    ],
)
def test_a_model_path_that_cannot_be_written_is_refused_before_training(tmp_path, home, monkeypatch, capsys, out, why):
    if out.startswith("/proc") and not Path("/proc/self").is_dir():
        pytest.skip("needs Linux's /proc")
    monkeypatch.chdir(tmp_path)
    image, labels = three_classes((48, 48))
    tifffile.imwrite("img.tif", image)
    tifffile.imwrite("lbl.tif", labels)
    args = ["train", "--image", "img.tif", "--labels", "lbl.tif", "--out", out, "--steps", "1", *TINY]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"cannot write the model to {out}.safetensors: {why}" in err and "step" not in err


def test_a_run_stopped_before_its_first_step_writes_no_model(tmp_path, home, monkeypatch, capsys):
    """Random weights would only mislead: Ctrl-C (or a budget spent on preparing) before step 1 writes nothing."""
    from napari_attention_unet.core.train import loop

    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop.Trainer, "_batch", interrupted)
    monkeypatch.chdir(tmp_path)
    image, labels = three_classes((48, 48))
    tifffile.imwrite("img.tif", image)
    tifffile.imwrite("lbl.tif", labels)
    assert main(["train", "--image", "img.tif", "--labels", "lbl.tif", "--out", "m", "--steps", "5", *TINY]) == 2
    assert "no training step was done" in capsys.readouterr().err
    assert not (tmp_path / "m.safetensors").exists()


def test_usage_mistakes_end_with_one_line(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["train", "--image", "a.tif", "--labels", "b.tif", "--out", "m", "--spacing", "1,1"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "attention-unet train: error: argument --spacing: expected three positive sizes Z,Y,X, got '1,1' "
        "(see: attention-unet train --help)"
    ]
    # A value starting with '-' is taken for the next option by argparse: said, with how to pass it.
    with pytest.raises(SystemExit):
        main(["train", "--image", "a.tif", "--labels", "b.tif", "--out", "m", "--spacing", "-1,1,1"])
    assert capsys.readouterr().err.strip() == (
        "attention-unet train: error: argument --spacing: expected one argument: '-1,1,1' starts with '-' and was "
        "taken for an option (write --spacing=-1,1,1 to pass it) (see: attention-unet train --help)"
    )
