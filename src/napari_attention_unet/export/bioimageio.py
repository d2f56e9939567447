"""A BioImage Model Zoo package (bioimage.io spec 0.5) of a model, for ilastik, deepImageJ and others.

The zip holds ``rdf.yaml``, TorchScript and ONNX weights of :class:`~.network.ExportedNetwork`,
a test input and the expected outputs computed from a real image, a cover, documentation
and the license. The percentile normalisation is stated as ``scale_range`` preprocessing
(same percentiles as :func:`~napari_attention_unet.core.images.normalize`), so tools feed the raw image.
``pytorch_state_dict`` weights are not included: they would need this package's code.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import tempfile
import zipfile
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from napari_attention_unet import __version__
from napari_attention_unet.core.images import ImageShapeError, match_channels, normalize, to_channel_first
from napari_attention_unet.core.model import AttentionUNet
from napari_attention_unet.export.bioimageio_card import (
    AUTHORS,
    CITATIONS,
    CONTRACT_FILE,
    LICENSE_TEXT,
    cover_image,
    documentation,
)
from napari_attention_unet.export.network import (
    HIGH_PERCENTILE,
    INPUT_NAME,
    LOW_PERCENTILE,
    ONNX_OPSET,
    OUTPUT_NAMES,
    ExportedNetwork,
    ExportError,
    export_onnx,
    export_torchscript,
    input_contract,
)

__all__ = ["FORMAT_VERSION", "check_package", "export_bioimageio", "reference_tensors", "validate_package"]

FORMAT_VERSION = "0.5.4"
_MAX_TEST_SIDE = 512


def _default_test_image() -> np.ndarray:
    """The plugin's fluorescent nuclei sample (grey, 256 x 256, CC0), read from the package data."""
    import tifffile

    source = resources.files("napari_attention_unet") / "sample_data" / "nuclei_fluorescence.tif"
    with resources.as_file(source) as path:
        return np.asarray(tifffile.imread(path))


def reference_tensors(
    model: AttentionUNet, image: np.ndarray | None = None, axes: str | None = None
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``(raw input (1, C, Y, X) float32, {output name: expected output})`` from a real image.

    The image (default: the plugin's fluorescent nuclei sample, CC0) gets the model's
    channel count as in prediction and is centre-cropped to a valid size of at most
    512 px; the expected outputs are those of the PyTorch network on the normalised crop.
    """
    check_package(model)
    raw, spatial = to_channel_first(_default_test_image() if image is None else image, axes)
    if spatial != "YX":
        raise ImageShapeError(f"the test image must be a 2D image (YX or YXC), got axes {spatial}")
    raw = match_channels(raw, model.config.in_channels)
    multiple = model.config.size_multiple
    crop = []
    for n in raw.shape[1:]:
        side = min(n, _MAX_TEST_SIDE) // multiple * multiple
        if side == 0:
            raise ImageShapeError(f"the test image is smaller than {multiple} px, the smallest size this model takes")
        crop.append(slice((n - side) // 2, (n - side) // 2 + side))
    raw = np.ascontiguousarray(raw[(slice(None), *crop)], dtype=np.float32)[np.newaxis]
    network = ExportedNetwork(model).eval()
    with torch.inference_mode():
        x = normalize(raw[0], window=model.config.intensity_window)
        outputs = network(torch.from_numpy(x[np.newaxis]))
    return raw, {name: out.numpy() for name, out in zip(OUTPUT_NAMES, outputs)}


def check_package(model: AttentionUNet, license: str | None = None) -> None:
    """Refuse at once what would make no valid package: a 3D model, a ``license`` that is no SPDX id
    (the bioimage.io spec's list when it is installed, else the form of one)."""
    if model.config.spatial_dims != 2:
        raise ExportError("BioImage Model Zoo export supports 2D models for now; export 3D models as ONNX/TorchScript")
    if license is None:
        return
    known = _spdx_ids()
    valid = license in known if known is not None else re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.+-]*", license)
    if valid:
        return
    close = difflib.get_close_matches(license, known or [], n=3, cutoff=0.6)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise ExportError(
        f"license {license!r} is not an SPDX license id{hint}: e.g. CC-BY-4.0, MIT, BSD-3-Clause "
        "(the list: https://spdx.org/licenses)"
    )


def _spdx_ids() -> list[str] | None:
    """The current SPDX license ids the bioimage.io spec accepts; None without ``bioimageio.spec``."""
    try:
        text = resources.files("bioimageio.spec").joinpath("static", "spdx_licenses.json").read_text()
    except (ModuleNotFoundError, OSError):
        return None
    return [entry["licenseId"] for entry in json.loads(text)["licenses"] if not entry.get("isDeprecatedLicenseId")]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _safe_name(name: str) -> str:
    # bioimage.io names take letters, digits, spaces, '_', '-', '(' and ')'.
    return re.sub(r"[^A-Za-z0-9 _()-]+", "-", f"Attention U-Net {name}").strip("-")[:128]


def _axes(channel_names: list[str], size: dict) -> list[dict]:
    return [
        {"type": "batch"},
        {"type": "channel", "channel_names": channel_names},
        {"type": "space", "id": "y", "size": size["y"]},
        {"type": "space", "id": "x", "size": size["x"]},
    ]


def _normalisation(config) -> list[dict]:
    """The rdf's preprocessing after the dtype: as :func:`~napari_attention_unet.core.images.normalize` does
    it for this model (each image's percentiles, or the model's fixed window, clipped)."""
    window = config.intensity_window
    if window is None:
        kwargs = {"axes": ["y", "x"], "min_percentile": LOW_PERCENTILE, "max_percentile": HIGH_PERCENTILE}
        return [{"id": "scale_range", "kwargs": kwargs}]
    gain = [1.0 / (hi - lo) for lo, hi in window]
    offset = [-lo / (hi - lo) for lo, hi in window]
    scale = {"gain": gain[0], "offset": offset[0]}
    if len(window) > 1:
        scale = {"axis": "channel", "gain": gain, "offset": offset}
    return [{"id": "scale_linear", "kwargs": scale}, {"id": "clip", "kwargs": {"min": 0.0, "max": 1.0}}]


def _rdf(
    model: AttentionUNet, name: str, info: dict, files: dict[str, Path], contract: dict, license: str, cite: list
) -> dict:
    config = model.config
    multiple = config.size_multiple
    in_names = ["red", "green", "blue"] if config.in_channels == 3 else [f"c{i}" for i in range(config.in_channels)]
    out_size = {axis: {"tensor_id": INPUT_NAME, "axis_id": axis} for axis in "yx"}

    def source(key: str) -> dict:
        return {"source": files[key].name, "sha256": _sha256(files[key])}

    def tensors(tensor_id: str) -> dict:
        return {"test_tensor": source(f"test_{tensor_id}"), "sample_tensor": source(f"sample_{tensor_id}")}

    description = info.get("description") or f"Attention U-Net model {name!r} from napari-attention-unet"
    return {
        "format_version": FORMAT_VERSION,
        "type": "model",
        "name": _safe_name(name),
        "description": f"{description}. Outputs class probabilities and the attention maps of every gate.",
        "authors": AUTHORS,
        "cite": cite,
        "license": license,
        "documentation": files["documentation"].name,
        "covers": [files["cover"].name],
        "attachments": [source("license"), source("contract")],
        "tags": ["attention-unet", "attention-maps", "segmentation", "2d", "napari"],
        "version": __version__,
        "timestamp": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
        "inputs": [
            {
                "id": INPUT_NAME,
                "description": "raw image, channels first; a grey image repeated to fill the channels",
                "axes": _axes(in_names, {a: {"min": multiple, "step": multiple} for a in "yx"}),
                **tensors(INPUT_NAME),
                "data": {"type": "float32"},
                "preprocessing": [{"id": "ensure_dtype", "kwargs": {"dtype": "float32"}}, *_normalisation(config)],
            }
        ],
        "outputs": [
            {
                "id": out["name"],
                "description": out["note"],
                "axes": _axes(out["channels"], out_size),
                **tensors(out["name"]),
                "data": {"type": "float32", "range": [0.0, 1.0]},
            }
            for out in contract["outputs"]
        ],
        "weights": {
            "torchscript": {
                **source("torchscript"),
                "pytorch_version": torch.__version__.split("+")[0],
                "authors": AUTHORS,
            },
            # Both files come from the same PyTorch network; ONNX is listed as derived.
            "onnx": {**source("onnx"), "opset_version": ONNX_OPSET, "parent": "torchscript"},
        },
        "config": {"napari_attention_unet": {"model": name, "contract_file": CONTRACT_FILE}},
    }


def _plain_dumper():
    import yaml

    class PlainDumper(yaml.SafeDumper):
        """Writes repeated values out in full: no YAML anchors for readers to resolve."""

        def ignore_aliases(self, data) -> bool:
            return True

    return PlainDumper


def export_bioimageio(
    model: AttentionUNet,
    path: str | Path,
    name: str,
    info: dict | None = None,
    test_image: np.ndarray | None = None,
    test_axes: str | None = None,
    model_card: str | Path | None = None,
    license: str = "BSD-3-Clause",
) -> Path:
    """Write a BioImage Model Zoo package (zip) of ``model`` to ``path``; returns ``path``.

    ``test_image`` (default: the plugin's nuclei sample) gives the package's test
    input and expected outputs; use an image of the kind the model was trained for.
    ``model_card`` (a bundled model's JSON card) is attached and its scores quoted.
    ``license`` (an SPDX id) is the weights': the plugin's own for its bundled model; for weights
    trained on the user's images, what those images allow.
    """
    import tifffile
    import yaml
    from skimage.io import imsave

    check_package(model, license)
    info = dict(info or {})
    path = Path(path)
    card = json.loads(Path(model_card).read_text()) if model_card else None
    raw, expected = reference_tensors(model, test_image, test_axes)
    contract = input_contract(model, name, info)
    with tempfile.TemporaryDirectory(prefix="attention-unet-export-") as tmp:
        folder = Path(tmp)
        files = {
            "torchscript": export_torchscript(model, folder / "weights_torchscript.pt", name, info),
            "onnx": export_onnx(model, folder / "weights.onnx", name, info),
            "documentation": folder / "README.md",
            "cover": folder / "cover.png",
            "license": folder / "LICENSE",
            "contract": folder / CONTRACT_FILE,
        }
        for tensor_id, array in {INPUT_NAME: raw, **expected}.items():
            kind = "input" if tensor_id == INPUT_NAME else "output"
            files[f"test_{tensor_id}"] = folder / f"test_{kind}_{tensor_id}.npy"
            np.save(files[f"test_{tensor_id}"], array)
            # The sample is the same tensor as an image file, for people and viewers (C, Y, X).
            files[f"sample_{tensor_id}"] = folder / f"sample_{kind}_{tensor_id}.tif"
            tifffile.imwrite(files[f"sample_{tensor_id}"], array[0], compression="zlib")
        from_bundled = card is not None or info.get("start") != "scratch"  # fine-tunes and 2D starts: its weights
        files["documentation"].write_text(documentation(name, contract, info, card, license, from_bundled))
        weights = "" if license == "BSD-3-Clause" else f"The weights: {license}. The plugin's code that made them:\n\n"
        files["license"].write_text(weights + LICENSE_TEXT)
        files["contract"].write_text(json.dumps(contract, indent=1))
        imsave(files["cover"], cover_image(raw, expected[OUTPUT_NAMES[1]]), check_contrast=False)
        rdf = _rdf(model, name, info, files, contract, license, CITATIONS if from_bundled else CITATIONS[:1])
        if model_card:
            files["card"] = folder / Path(model_card).name
            files["card"].write_text(Path(model_card).read_text())
            rdf["attachments"].append({"source": files["card"].name, "sha256": _sha256(files["card"])})
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp_zip = path.with_name(path.name + ".tmp")
        with zipfile.ZipFile(tmp_zip, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            entry = zipfile.ZipInfo("rdf.yaml", date_time=datetime.now().timetuple()[:6])
            entry.external_attr = 0o644 << 16  # an ordinary readable file when unpacked
            entry.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(entry, yaml.dump(rdf, Dumper=_plain_dumper(), sort_keys=False, allow_unicode=True))
            for file in files.values():
                archive.write(file, file.name)
        tmp_zip.replace(path)  # never leave a half-written package behind
    return path


def validate_package(path: str | Path, run_test: bool = False) -> tuple[bool, str]:
    """Check a package with the bioimage.io libraries: ``(passed, summary text)``.

    The spec is checked with ``bioimageio.spec`` (format, files and their hashes);
    ``run_test`` also runs the weights on the test input with ``bioimageio.core``
    and compares with the expected outputs. Nothing is downloaded.
    """
    try:
        if run_test:
            from bioimageio.core import test_model

            summary = test_model(str(path))
        else:
            from bioimageio.spec import load_model_description

            summary = load_model_description(str(path), perform_io_checks=True).validation_summary
    except ImportError as exc:
        raise ExportError(
            f"validating needs the bioimage.io libraries ({exc.name} is missing): "
            "pip install 'napari-attention-unet[export]'"
        ) from exc
    # A format check alone succeeds as "valid-format"; a test run only as "passed" (a failed
    # test run still reports "valid-format", the format being fine).
    accepted = ("passed",) if run_test else ("passed", "valid-format")
    return summary.status in accepted, summary.format()
