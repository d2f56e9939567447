"""Exported models (ONNX, TorchScript, BioImage Model Zoo) run outside the plugin and match PyTorch on real images."""

import inspect
import json
import os
import shutil
import subprocess
import sys
import zipfile
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from torch.nn import functional as F

from napari_attention_unet.cli import main
from napari_attention_unet.core.images import match_channels, normalize, to_channel_first
from napari_attention_unet.core.model import AttentionUNet, ModelConfig
from napari_attention_unet.core.predict import predict, run_to_end
from napari_attention_unet.core.weights import save_model
from napari_attention_unet.export import ExportError, export_model
from napari_attention_unet.export.bioimageio import check_package
from napari_attention_unet.export.network import (
    HIGH_PERCENTILE,
    LOW_PERCENTILE,
    ExportedNetwork,
    export_onnx,
    export_torchscript,
    input_contract,
    sidecar_path,
)
from napari_attention_unet.models.registry import open_model

DATA = Path(__file__).parent / "data" / "images"
FLUO = DATA / "00071198d059ba7f5914a526d124d28e6d010c92466da21d4a04cd5413362552.tif"  # grey, 256 x 256
HE = DATA / "00ae65c1c6631ae6f2be1a449902976e6eb8483bf6b0740d00530220832c6d3e.tif"  # RGB, 256 x 320
EXE = shutil.which("attention-unet") or str(Path(sys.executable).with_name("attention-unet"))
# float32 through a 2 M-parameter network, batch norm folded: measured max differences are about 1e-6.
TOLERANCE = 1e-4


def network_input(path: Path, in_channels: int = 3) -> np.ndarray:
    """A real image as the exported network takes it: (1, C, Y, X), normalised as the plugin does."""
    channels_first, _ = to_channel_first(tifffile.imread(path))
    return normalize(match_channels(channels_first, in_channels))[np.newaxis]


def reference(model: AttentionUNet, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What the plugin's own PyTorch network gives: softmax of the logits, gate maps on the input grid."""
    with torch.inference_mode():
        logits, gates = model.eval()(torch.from_numpy(x))
        mode = "bilinear" if model.config.spatial_dims == 2 else "trilinear"
        names = model.config.gate_names  # gate1 (finest) first, as exported
        attention = [F.interpolate(gates[g], x.shape[2:], mode=mode, align_corners=False) for g in names]
        return torch.softmax(logits, 1).numpy(), torch.cat(attention, 1).numpy()


def run_cli(*args):
    return subprocess.run([EXE, *map(str, args)], capture_output=True, text=True, env=os.environ.copy(), timeout=600)


@pytest.fixture(scope="module")
def bundled():
    model, info, where = open_model("nuclei")
    return model, info, where.name


@pytest.fixture(scope="module")
def bundled_onnx(bundled, tmp_path_factory):
    pytest.importorskip("onnxscript", reason="ONNX export needs onnxscript (the [export] extra)")
    model, info, name = bundled
    return export_onnx(model, tmp_path_factory.mktemp("onnx") / "nuclei.onnx", name, info)


@pytest.fixture(scope="module")
def bundled_torchscript(bundled, tmp_path_factory):
    model, info, name = bundled
    return export_torchscript(model, tmp_path_factory.mktemp("ts") / "nuclei.pt", name, info)


def test_contract_percentiles_are_those_of_the_plugin():
    defaults = inspect.signature(normalize).parameters
    assert (defaults["low"].default, defaults["high"].default) == (LOW_PERCENTILE, HIGH_PERCENTILE)


def test_wrapper_returns_plain_tensors_equal_to_the_network(bundled):
    model = bundled[0]
    x = network_input(FLUO)
    with torch.inference_mode():
        probabilities, attention = ExportedNetwork(model)(torch.from_numpy(x))
    expected_probabilities, expected_attention = reference(model, x)
    assert probabilities.shape == (1, 3, 256, 256) and attention.shape == (1, 4, 256, 256)
    np.testing.assert_allclose(probabilities.sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(probabilities.numpy(), expected_probabilities, atol=TOLERANCE)
    np.testing.assert_allclose(attention.numpy(), expected_attention, atol=TOLERANCE)


def test_onnx_matches_pytorch_on_real_images_of_two_sizes(bundled, bundled_onnx):
    ort = pytest.importorskip("onnxruntime", reason="running ONNX needs onnxruntime (the [export] extra)")
    model = bundled[0]
    session = ort.InferenceSession(str(bundled_onnx), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    assert [o.name for o in session.get_outputs()] == ["probabilities", "attention"]
    for path, shape in ((FLUO, (256, 256)), (HE, (256, 320))):
        x = network_input(path)
        probabilities, attention = session.run(None, {"image": x})
        expected_probabilities, expected_attention = reference(model, x)
        assert probabilities.shape == (1, 3, *shape) and attention.shape == (1, 4, *shape)
        assert np.abs(probabilities - expected_probabilities).max() < TOLERANCE
        assert np.abs(attention - expected_attention).max() < TOLERANCE
    # A batch of two crops, at yet another size.
    batch = np.concatenate([network_input(FLUO)[..., :128, :192], network_input(HE)[..., 64:192, :192]])
    probabilities, attention = session.run(None, {"image": batch})
    assert np.abs(probabilities - reference(model, batch)[0]).max() < TOLERANCE
    assert np.abs(attention - reference(model, batch)[1]).max() < TOLERANCE


def test_onnx_with_the_documented_contract_reproduces_the_plugins_prediction(bundled, bundled_onnx):
    """Follow the contract stored in the file (normalise, repeat grey) and get what `predict` gives."""
    ort = pytest.importorskip("onnxruntime", reason="running ONNX needs onnxruntime (the [export] extra)")
    import onnx

    metadata = {p.key: p.value for p in onnx.load(str(bundled_onnx)).metadata_props}
    contract = json.loads(metadata["napari_attention_unet"])
    assert contract == json.loads(sidecar_path(bundled_onnx).read_text())
    spec = contract["input"]
    assert spec["axes"] == "bcyx" and spec["channels"] == 3 and spec["spatial_size_multiple"] == 16
    assert [o["channels"] for o in contract["outputs"]] == [
        ["background", "interior", "boundary"],
        ["gate1", "gate2", "gate3", "gate4"],
    ]
    image = tifffile.imread(FLUO)  # grey 256 x 256: one tile in the plugin, so no blending
    rule = spec["normalisation"]
    low, high = np.percentile(image, [rule["low_percentile"], rule["high_percentile"]])
    grey = ((image - low) / (high - low)).astype(np.float32)
    x = np.repeat(grey[None, None], spec["channels"], axis=1)
    probabilities, attention = ort.InferenceSession(str(bundled_onnx)).run(None, {"image": x})
    # The exported network is float32: the plugin in float32 (on CPUs with native bf16 its default is bf16).
    result = run_to_end(predict(bundled[0], image, device="cpu", precision="fp32", keep_class_probabilities=True))
    assert np.abs(probabilities[0] - result.class_probabilities).max() < 1e-3
    for i, gate in enumerate(contract["outputs"][1]["channels"]):
        assert np.abs(attention[0, i] - result.gate_maps[gate]).max() < 1e-3


def test_torchscript_matches_pytorch_and_carries_its_contract(bundled, bundled_torchscript):
    model = bundled[0]
    extra = {"napari_attention_unet.json": ""}
    loaded = torch.jit.load(str(bundled_torchscript), _extra_files=extra)
    assert json.loads(extra["napari_attention_unet.json"])["input"]["normalisation"]["high_percentile"] == 99.8
    for path in (FLUO, HE):
        x = network_input(path)
        with torch.inference_mode():
            probabilities, attention = loaded(torch.from_numpy(x))
        expected_probabilities, expected_attention = reference(model, x)
        assert np.abs(probabilities.numpy() - expected_probabilities).max() < TOLERANCE
        assert np.abs(attention.numpy() - expected_attention).max() < TOLERANCE


def test_torchscript_runs_where_the_plugin_cannot_be_imported(bundled, bundled_torchscript, tmp_path):
    x = network_input(HE)
    np.save(tmp_path / "x.npy", x)
    script = (
        "import sys, numpy as np, torch\n"
        "sys.modules['napari_attention_unet'] = None  # any import of the plugin would now fail\n"
        f"net = torch.jit.load({str(bundled_torchscript)!r})\n"
        f"p, a = net(torch.from_numpy(np.load({str(tmp_path / 'x.npy')!r})))\n"
        f"np.save({str(tmp_path / 'p.npy')!r}, p.detach().numpy())\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert np.abs(np.load(tmp_path / "p.npy") - reference(bundled[0], x)[0]).max() < TOLERANCE


def test_3d_model_exports_to_both_formats(tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="running ONNX needs onnxruntime (the [export] extra)")
    pytest.importorskip("onnxscript", reason="ONNX export needs onnxscript (the [export] extra)")
    torch.manual_seed(0)
    model = AttentionUNet(ModelConfig(spatial_dims=3, in_channels=1, base_width=4, depth=3)).eval()
    plane = normalize(tifffile.imread(FLUO)[None, :64, :48])
    volume = np.stack([np.roll(plane, 3 * z, axis=1) for z in range(8)], axis=1)[None]  # (1, 1, 8, 64, 48)
    expected_probabilities, expected_attention = reference(model, volume)
    onnx_file = export_onnx(model, tmp_path / "m3d.onnx", "m3d")
    probabilities, attention = ort.InferenceSession(str(onnx_file)).run(None, {"image": volume})
    assert attention.shape == (1, 2, 8, 64, 48)
    assert np.abs(probabilities - expected_probabilities).max() < TOLERANCE
    assert np.abs(attention - expected_attention).max() < TOLERANCE
    scripted = torch.jit.load(str(export_torchscript(model, tmp_path / "m3d.pt", "m3d")))
    with torch.inference_mode():
        probabilities, attention = scripted(torch.from_numpy(volume))
    assert np.abs(probabilities.numpy() - expected_probabilities).max() < TOLERANCE
    # What predict does to an anisotropic volume before the network is part of the contract.
    note = input_contract(model, "m3d", {"spacing": [2.0, 1.0, 1.0]})["resampling"]
    assert "trained at voxel size Z,Y,X = 2,1,1" in note and "cubic voxels of its finest axis" in note
    model.config.extra["voxel_size"] = 3.0  # a 3D instance model of large objects sees volumes shrunk
    assert "cubic voxels of 3 units" in input_contract(model, "m3d", {})["resampling"]
    assert "resampling" not in input_contract(AttentionUNet(ModelConfig(base_width=4, depth=3)), "m2d", {})


def test_a_users_model_exports_without_its_folders_and_without_a_borrowed_license(tmp_path):
    """trained_on keeps file names only; a package of a model trained from scratch on the user's images
    does not credit the DSB images, and states the license given (the user's data decides it)."""
    from napari_attention_unet.export.bioimageio_card import documentation as _documentation

    model = AttentionUNet(ModelConfig(in_channels=1, base_width=4, depth=3, classes=("background", "cell")))
    info = {"start": "scratch", "trained_on": ["/home/someone/project/scan_01.tif"]}
    path = export_model(model, "torchscript", tmp_path / "mine", "mine", info)
    assert json.loads(sidecar_path(path).read_text())["model_info"]["trained_on"] == ["scan_01.tif"]
    named = {**info, "trained_on": ["scan_01.tif"]}  # as export_model passes it on
    text = _documentation("mine", input_contract(model, "mine", named), named, None, "CC-BY-SA-4.0", False)
    assert "by its user on `scan_01.tif`" in text
    assert "states `CC-BY-SA-4.0` for the weights" in text and "Data Science Bowl" not in text


def test_semantic_model_export_names_its_classes(tmp_path):
    """A semantic model's export says which output channel is which class, and runs as the network does."""
    torch.manual_seed(0)
    classes = ("background", "membrane", "mitochondria")
    model = AttentionUNet(ModelConfig(in_channels=1, classes=classes, base_width=4, depth=3, task="semantic")).eval()
    x = network_input(FLUO, in_channels=1)[..., :64, :96]
    expected, _ = reference(model, x)
    path = export_torchscript(model, tmp_path / "em.pt", "em", {"task": "semantic", "classes": list(classes)})
    contract = json.loads(sidecar_path(path).read_text())
    assert contract["outputs"][0]["channels"] == list(classes)
    assert contract["architecture"]["task"] == "semantic"
    assert "argmax" in contract["labels"] and "instances" not in contract  # no watershed for class values
    with torch.inference_mode():
        probabilities, _ = torch.jit.load(str(path))(torch.from_numpy(x))
    assert probabilities.shape == (1, 3, 64, 96)
    assert np.abs(probabilities.numpy() - expected).max() < TOLERANCE
    # Trained on strokes: channel 0 was never a target, and the plugin never writes it as a label.
    strokes = AttentionUNet(ModelConfig(in_channels=1, classes=("unlabelled", "a", "b"), depth=3, task="semantic"))
    from napari_attention_unet.export.bioimageio_card import documentation

    contract = input_contract(strokes, "s", {})
    assert "channels 1..K" in contract["labels"] and "never a label" in contract["labels"]
    assert "never a label" in documentation("s", contract, {}, None, "MIT", False)  # the package README too


def test_missing_onnx_packages_give_an_install_hint(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    model = AttentionUNet(ModelConfig(base_width=4, depth=3))
    with pytest.raises(ExportError, match=r"pip install 'napari-attention-unet\[export\]'"):
        export_onnx(model, tmp_path / "m.onnx", "m")


def test_bioimageio_refuses_3d_models_with_a_reason(tmp_path):
    model = AttentionUNet(ModelConfig(spatial_dims=3, base_width=4, depth=3))
    with pytest.raises(ExportError, match="2D models"):
        export_model(model, "bioimageio", tmp_path / "m", "m3d")


def test_bioimageio_package_refusals_come_first_in_one_line(tmp_path, capsys):
    """A 3D model or a mistyped license: one line, before any warning or any file (a mistyped license
    once gave the whole SPDX list and an invalid package left on disk)."""
    model3d = save_model(AttentionUNet(ModelConfig(spatial_dims=3, base_width=4, depth=3)), tmp_path / "m3d")
    flat = save_model(AttentionUNet(ModelConfig(in_channels=1, base_width=4, depth=3)), tmp_path / "flat")
    for model, license, message in (
        (model3d, [], "supports 2D models for now"),
        (flat, ["--license", "CC-BY-40"], "license 'CC-BY-40' is not an SPDX license id"),
    ):
        assert main(["export", str(model), "--format", "bioimageio", "--out", str(tmp_path / "p"), *license]) == 2
        err = capsys.readouterr().err
        assert message in err and "warning" not in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.glob("p*"))
    model = AttentionUNet(ModelConfig(base_width=4, depth=3))
    check_package(model, "CC-BY-4.0")  # a valid id passes
    if find_spec("bioimageio.spec") is not None:  # its list of ids: a near miss is named
        with pytest.raises(ExportError, match="did you mean CC-BY-4.0"):
            check_package(model, "CC-BY-40")


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_bioimageio_cover_for_any_number_of_channels(channels):
    """The cover shows the input beside the finest gate; 2- and 4-channel inputs crashed the export."""
    from napari_attention_unet.export.bioimageio_card import cover_image

    rng = np.random.default_rng(0)
    cover = cover_image(rng.random((1, channels, 32, 48)), rng.random((1, 2, 32, 48)))
    assert cover.shape == (32, 96, 3) and cover.dtype == np.uint8


def test_cli_export_into_a_folder_and_clear_errors(tiny_model_path, tmp_path, capsys):
    """In-process, to save interpreter start-ups; the bioimageio package below goes through the real command."""
    out = tmp_path / "exports"
    out.mkdir()
    assert main(["export", str(tiny_model_path), "--format", "torchscript", "--out", str(out)]) == 0
    assert (out / "tiny.pt").is_file() and json.loads((out / "tiny.pt.json").read_text())["model"] == "tiny"
    assert f"wrote {out / 'tiny.pt'}" in capsys.readouterr().err

    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, np.zeros((3, 64, 64), np.uint8))
    for args, message in (
        (["no-such-model", "--format", "onnx"], "no model named 'no-such-model'; available: tiny (or a model file"),
        (["tiny", "--format", "onnx", "--test-image", str(FLUO)], "--test-image is only used by --format bioimageio"),
        (["tiny", "--format", "bioimageio", "--test-image", str(stack)], "the test image must be a 2D image (YX"),
    ):
        assert main(["export", *args, "--out", str(out / "x")]) == 2
        assert message in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["tiny.pt", "tiny.pt.json"]

    # A new folder typed with a slash, as train --out takes it; a path that cannot be written is one line.
    assert main(["export", str(tiny_model_path), "--format", "torchscript", "--out", f"{tmp_path}/new/"]) == 0
    assert (tmp_path / "new" / "tiny.pt").is_file()
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert main(["export", str(tiny_model_path), "--format", "torchscript", "--out", str(blocker / "m")]) == 2
    err = capsys.readouterr().err
    assert "cannot write into" in err and "Traceback" not in err


@pytest.fixture(scope="module")
def tiny_package(tmp_path_factory):
    """`attention-unet export FILE --format bioimageio` of a tiny model with the H&E test image: (zip, stderr)."""
    pytest.importorskip("onnxscript", reason="ONNX export needs onnxscript (the [export] extra)")
    folder = tmp_path_factory.mktemp("bioimageio")
    torch.manual_seed(0)
    model_file = save_model(AttentionUNet(ModelConfig(base_width=4, depth=3)), folder / "tiny.safetensors")
    done = run_cli("export", model_file, "--format", "bioimageio", "--out", folder / "tiny", "--test-image", HE)
    assert done.returncode == 0, done.stderr
    return folder / "tiny.zip", done.stderr


def test_bioimageio_package_contents(tiny_package):
    yaml = pytest.importorskip("yaml")
    path, _ = tiny_package
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        rdf = yaml.safe_load(archive.read("rdf.yaml"))
        test_input = np.load(archive.open("test_input_image.npy"))
        cover = archive.read("cover.png")
    assert {"weights_torchscript.pt", "weights.onnx", "README.md", "LICENSE", "cover.png"} <= names
    assert rdf["format_version"].startswith("0.5.") and rdf["type"] == "model" and rdf["license"] == "BSD-3-Clause"
    assert set(rdf["weights"]) == {"torchscript", "onnx"}  # no pytorch_state_dict: it would need our code
    (image_input,) = rdf["inputs"]
    scale = [p for p in image_input["preprocessing"] if p["id"] == "scale_range"][0]["kwargs"]
    assert (scale["min_percentile"], scale["max_percentile"], scale["axes"]) == (1.0, 99.8, ["y", "x"])
    assert [o["id"] for o in rdf["outputs"]] == ["probabilities", "attention"]
    assert rdf["outputs"][1]["axes"][1]["channel_names"] == ["gate1", "gate2"]
    # The test input is the real H&E image, raw (the runner normalises it), channels first.
    he = tifffile.imread(HE)
    np.testing.assert_array_equal(test_input, np.moveaxis(he, -1, 0)[None].astype(np.float32))
    assert cover.startswith(b"\x89PNG")


def test_bioimageio_package_passes_validation_and_test_run(tiny_package):
    pytest.importorskip("bioimageio.spec", reason="validation needs bioimageio.spec (the [export] extra)")
    from napari_attention_unet.export.bioimageio import validate_package

    path, stderr = tiny_package
    passed, report = validate_package(path)
    assert passed, report
    assert "give it with --license" in stderr  # a model that is not bundled: its data decides the license
    # With bioimageio.core the CLI also ran both weights on the test input (offline) and compared the outputs.
    checked = "format and test run (bioimageio.core)" if find_spec("bioimageio.core") else "format (bioimageio.spec)"
    assert f"bioimage.io validation passed: {checked}" in stderr


def test_bioimageio_runner_normalises_as_the_plugin_and_predicts_as_pytorch(tiny_package):
    """bioimageio.core's scale_range gives our normalisation, and its run of the weights our outputs."""
    pytest.importorskip("bioimageio.core", reason="running packages needs bioimageio.core (the [export] extra)")
    from bioimageio.core import create_prediction_pipeline, load_model_description
    from bioimageio.core.digest_spec import get_test_input_sample, get_test_output_sample

    path, _ = tiny_package
    descr = load_model_description(str(path))
    sample = get_test_input_sample(descr)
    raw = sample.members["image"].data.values.copy()
    expected = get_test_output_sample(descr)
    for weight_format in ("onnx", "torchscript"):
        pipeline = create_prediction_pipeline(descr, weight_format=weight_format)
        preprocessed = get_test_input_sample(descr)
        pipeline.apply_preprocessing(preprocessed)
        assert np.abs(preprocessed.members["image"].data.values - normalize(raw[0])[None]).max() < 1e-5
        outputs = pipeline.predict_sample_without_blocking(get_test_input_sample(descr))
        for name in ("probabilities", "attention"):
            difference = outputs.members[name].data.values - expected.members[name].data.values
            assert np.abs(difference).max() < TOLERANCE


def test_bioimageio_test_run_fails_without_the_normalisation(tiny_package, tmp_path):
    """The package's own test notices when its preprocessing is not the plugin's."""
    yaml = pytest.importorskip("yaml")
    pytest.importorskip("bioimageio.core", reason="test runs need bioimageio.core (the [export] extra)")
    from napari_attention_unet.export.bioimageio import validate_package

    path, _ = tiny_package
    altered = tmp_path / "altered.zip"
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(altered, "w") as target:
        for item in source.infolist():
            data = source.read(item)
            if item.filename == "rdf.yaml":
                rdf = yaml.safe_load(data)
                rdf["inputs"][0]["preprocessing"] = [{"id": "ensure_dtype", "kwargs": {"dtype": "float32"}}]
                data = yaml.safe_dump(rdf, sort_keys=False).encode()
            target.writestr(item.filename, data)
    passed, report = validate_package(altered, run_test=True)
    assert not passed
    assert "Reproduce test outputs from test inputs" in report


def test_saved_fine_tuned_model_exports_with_its_info(model_home, tmp_path):
    """A model saved by fine-tuning exports by name, and its stored info reaches the contract."""
    torch.manual_seed(1)
    save_model(
        AttentionUNet(ModelConfig(in_channels=1, base_width=4, depth=3)),
        model_home / "models" / "my-cells",
        info={"name": "my-cells", "parent": "nuclei", "best_val_dice": 0.91},
    )
    model, info, where = open_model("my-cells")
    path = export_model(model, "torchscript", tmp_path / "my-cells", where.name, info)
    contract = json.loads(sidecar_path(path).read_text())
    assert contract["model_info"]["parent"] == "nuclei" and contract["input"]["channels"] == 1
    x = network_input(FLUO, in_channels=1)
    with torch.inference_mode():
        probabilities, _ = torch.jit.load(str(path))(torch.from_numpy(x))
    assert np.abs(probabilities.numpy() - reference(model, x)[0]).max() < TOLERANCE


def test_bundled_models_package_documentation_quotes_its_card(bundled):
    """The package README of the bundled model carries the held-out scores of its model card."""
    from napari_attention_unet.export.bioimageio_card import documentation as _documentation
    from napari_attention_unet.export.network import input_contract
    from napari_attention_unet.models.registry import bundled_dir

    model, info, name = bundled
    card = json.loads((bundled_dir() / "nuclei.json").read_text())
    overall = card["validation_scores"]["overall"]["model"]
    text = _documentation(name, input_contract(model, name, info), info, card)
    assert "## Validation" in text  # bioimage.io asks for this section
    assert f"| all | {overall['n']} | {overall['ap50']} | {overall['dice']} |" in text
    assert "scale_range" in text and "multiples of 16" in text
    # Each held-out group of the card, and the worst one, not only the pooled figure.
    for group, scores in card["validation_scores"]["per_group"].items():
        assert f"| {group} | {scores['model']['n']} | {scores['model']['ap50']} |" in text
    worst = card["validation_scores"]["worst_group"]["model"]
    assert f"worst group: {worst['group']} ({worst['ap50']})" in text
    assert "watershed" in text and "second look at small nuclei" in text
    # A semantic model's package says what its labels are: the most probable class, no watershed.
    semantic = AttentionUNet(ModelConfig(classes=("background", "membrane"), task="semantic", base_width=4, depth=3))
    text = _documentation("em", input_contract(semantic, "em", {}), {}, None)
    assert "most probable class" in text and "watershed" not in text
