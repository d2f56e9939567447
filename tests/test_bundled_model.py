"""The bundled model ships in the package, is the default, and finds nuclei it was never trained on."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_attention_unet.core.metrics import average_precision
from napari_attention_unet.core.model import count_parameters
from napari_attention_unet.core.predict import predict, run_to_end
from napari_attention_unet.models.registry import bundled_dir, open_model, resolve_model

SAMPLES = Path(__file__).parents[1] / "src" / "napari_attention_unet" / "sample_data"
HELDOUT = Path(__file__).parent / "data" / "heldout"
# (sample file, ground truth, minimum AP@0.5, minimum foreground Dice); measured 0.89/0.91 and 0.68/0.91.
CASES = [
    (
        "nuclei_fluorescence.tif",
        "449fe932622db3b49366a260ddd20077219f96fb2dc0f912ad4f60b087876f3b_mask.tif",
        0.80,
        0.85,
    ),
    ("nuclei_he.tif", "2e2d29fc44444a85049b162eb359a523dec108ccd5bd75022b25547491abf0c7_mask.tif", 0.55, 0.85),
]


@pytest.fixture(scope="module")
def bundled():
    model, info, where = open_model()
    return model, info, where


def test_a_nuclei_file_in_the_current_folder_does_not_stand_in_for_the_bundled_model(tmp_path, monkeypatch, capsys):
    """`train --out nuclei` then made every plain `predict` (and the dock's 'nuclei') use that file."""
    import torch

    from napari_attention_unet.cli import main
    from napari_attention_unet.core.model import AttentionUNet, ModelConfig
    from napari_attention_unet.core.weights import save_model

    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    save_model(AttentionUNet(ModelConfig(base_width=4, depth=3)), tmp_path / "nuclei.safetensors")
    assert resolve_model(None).bundled  # the default
    assert resolve_model("nuclei", listed=True).bundled  # the dock's list
    assert resolve_model("nuclei").bundled  # typed bare: the bundled one too (the output said 'model nuclei')
    assert resolve_model("./nuclei").path.resolve() == tmp_path / "nuclei.safetensors"  # a path: the file
    tifffile.imwrite("img.tif", np.zeros((32, 32), np.uint8))
    tifffile.imwrite("lbl.tif", (np.arange(32 * 32).reshape(32, 32) % 3).astype(np.uint8))
    for out in ("nuclei", "nuclei.safetensors"):  # the writers no longer make such a file
        assert main(["train", "--image", "img.tif", "--labels", "lbl.tif", "--out", out, "--steps", "1"]) == 2
        assert "'nuclei' is the bundled model's name: give the new model a name of its own" in capsys.readouterr().err
    # nor in other letters: on macOS and Windows Nuclei.safetensors is nuclei.safetensors
    assert main(["train", "--image", "img.tif", "--labels", "lbl.tif", "--out", "Nuclei", "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "'Nuclei' is the bundled model's name (letter case aside)" in err and "--out my-nuclei" in err, err
    assert not Path("Nuclei.safetensors").exists()


def test_bundled_model_is_the_default_and_described_by_its_card(bundled):
    model, info, where = bundled
    assert where.bundled and where.name == "nuclei" and resolve_model(None).path == where.path
    card = json.loads((bundled_dir() / "nuclei.json").read_text())
    assert card["architecture"]["parameters"] == count_parameters(model)
    assert card["architecture"]["config"] == model.config.to_dict()
    assert 0 < card["validation_scores"]["overall"]["model"]["ap50"] <= 1


@pytest.mark.parametrize(("image_name", "truth_name", "min_ap", "min_dice"), CASES)
def test_finds_nuclei_on_held_out_images(bundled, image_name, truth_name, min_ap, min_dice):
    image = tifffile.imread(SAMPLES / image_name)
    truth = tifffile.imread(HELDOUT / truth_name)
    result = run_to_end(predict(bundled[0], image, device="cpu"))
    dice = (
        2
        * np.count_nonzero((truth > 0) & (result.labels > 0))
        / (np.count_nonzero(truth) + np.count_nonzero(result.labels))
    )
    assert dice >= min_dice
    assert average_precision(truth, result.labels) >= min_ap


def test_cli_uses_the_bundled_model_by_default(tmp_path):
    exe = Path(sys.executable).with_name("attention-unet")
    done = subprocess.run(
        [str(exe), "predict", str(SAMPLES / "nuclei_fluorescence.tif"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "model nuclei" in done.stderr
    labels = tifffile.imread(tmp_path / "nuclei_fluorescence_labels.tif")
    assert 30 <= labels.max() <= 60  # 44 nuclei in the ground truth


def test_small_nuclei_get_a_second_look_in_the_cli_and_the_dock(bundled, tmp_path):
    """The fluorescence sample shrunk to half (nuclei about 9 px across, smaller than the model
    learnt them): the bundled model enlarges it for a second look, which finds more of them."""
    from scipy import ndimage

    from napari_attention_unet.gui.session import Session

    model = bundled[0]
    assert model.config.extra["small_objects"] == {"below": 12.0, "to": 18.0, "max_zoom": 3.0}
    image = tifffile.imread(SAMPLES / "nuclei_fluorescence.tif")
    truth = tifffile.imread(HELDOUT / CASES[0][1])
    small, small_truth = ndimage.zoom(image, 0.5, order=1), ndimage.zoom(truth, 0.5, order=0)
    once = run_to_end(predict(model, small, device="cpu", auto_zoom=False))
    twice = run_to_end(predict(model, small, device="cpu"))
    assert once.zoom is None and twice.zoom is not None and 1.5 < twice.zoom < 3.0
    assert twice.labels.shape == small.shape
    assert average_precision(small_truth, twice.labels) > average_precision(small_truth, once.labels) + 0.05
    # Full size: nuclei as the model knows them, one look only.
    assert run_to_end(predict(model, image, device="cpu")).zoom is None

    session = Session(device="cpu")
    session.load_model("nuclei")
    part = run_to_end(session.predict(small))
    assert part.zoom == pytest.approx(twice.zoom) and np.array_equal(part.labels > 0, twice.labels > 0)

    tifffile.imwrite(tmp_path / "small.tif", small)
    exe = Path(sys.executable).with_name("attention-unet")
    for flags, out in (([], "zoomed"), (["--no-auto-zoom"], "plain")):
        done = subprocess.run(
            [str(exe), "predict", str(tmp_path / "small.tif"), "--out", str(tmp_path / out), *flags],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        assert ("small objects: looked again at" in done.stderr) == (not flags), done.stderr
    zoomed = tifffile.imread(tmp_path / "zoomed" / "small_labels.tif")
    plain = tifffile.imread(tmp_path / "plain" / "small_labels.tif")
    assert np.array_equal(zoomed > 0, twice.labels > 0) and np.array_equal(plain > 0, once.labels > 0)


def test_large_images_of_small_nuclei_get_the_second_look_block_by_block(bundled):
    """Images over the block size are predicted block by block (CLI, dask, the dock's lazy path):
    the second look is decided once for the whole image, and matches predicting it whole."""
    from scipy import ndimage

    from napari_attention_unet.large_data.blocks import predict_blocks

    model = bundled[0]
    image = tifffile.imread(SAMPLES / "nuclei_fluorescence.tif")
    truth = tifffile.imread(HELDOUT / CASES[0][1])
    small, small_truth = ndimage.zoom(image, 0.5, order=1), ndimage.zoom(truth, 0.5, order=0)
    # 4 x 4 turned copies, 512 px: nuclei about 9 px across cut by the 192 px block edges.
    turns = [(np.rot90(small, k % 4), np.rot90(small_truth, k % 4)) for k in range(16)]
    mosaic = np.block([[turns[4 * r + c][0] for c in range(4)] for r in range(4)])
    mosaic_truth = np.block(
        [
            [np.where(turns[4 * r + c][1] > 0, turns[4 * r + c][1] + 1000 * (4 * r + c), 0) for c in range(4)]
            for r in range(4)
        ]
    )
    blocked = run_to_end(predict_blocks(model, mosaic, block_size=192, device="cpu"))
    plain = run_to_end(predict_blocks(model, mosaic, block_size=192, device="cpu", auto_zoom=False))
    whole = run_to_end(predict(model, mosaic, device="cpu"))
    assert plain.zoom is None and whole.zoom is not None and blocked.zoom == pytest.approx(whole.zoom, rel=0.15)
    ap_blocked, ap_plain = (
        average_precision(mosaic_truth, blocked.labels),
        average_precision(mosaic_truth, plain.labels),
    )
    assert ap_blocked > ap_plain + 0.05, (ap_blocked, ap_plain)
    # The same enlargement on the whole image gives the same objects (the blocks are stitched).
    same = run_to_end(predict(model, mosaic, device="cpu", zoom=blocked.zoom))
    assert average_precision(same.labels, blocked.labels) > 0.95
