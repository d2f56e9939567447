"""A BioImage Model Zoo package (bioimage.io spec 0.5) of a model, for ilastik, deepImageJ and others.

The zip holds ``rdf.yaml``, TorchScript and ONNX weights of :class:`~._export.ExportedNetwork`,
a test input and the expected outputs computed from a real image, a cover, documentation
and the license. The percentile normalisation is stated as ``scale_range`` preprocessing
(same percentiles as :func:`~.core.images.normalize`), so tools feed the raw image.
``pytorch_state_dict`` weights are not included: they would need this package's code.
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from napari_attention_unet import __version__
from napari_attention_unet.core.images import ImageShapeError, match_channels, normalize, to_channel_first
from napari_attention_unet.core.model import AttentionUNet
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

__all__ = ["FORMAT_VERSION", "export_bioimageio", "reference_tensors", "validate_package"]

FORMAT_VERSION = "0.5.4"
AUTHORS = [{"name": "napari-attention-unet developers"}]
CITATIONS = [
    {
        "text": "Oktay O. et al. Attention U-Net: Learning Where to Look for the Pancreas. MIDL 2018.",
        "doi": "10.48550/arXiv.1804.03999",
    },
    {
        "text": "Caicedo J.C. et al. Nucleus segmentation across imaging experiments: the 2018 Data Science Bowl. "
        "Nature Methods 16, 1247-1253 (2019). (training data of the bundled model, CC0)",
        "doi": "10.1038/s41592-019-0612-7",
    },
]
LICENSE_TEXT = """BSD 3-Clause License

Copyright (c) 2026, napari-attention-unet developers
All rights reserved.

Redistribution and use in source and binary forms, with or without
modification, are permitted provided that the following conditions are met:

1. Redistributions of source code must retain the above copyright notice, this
   list of conditions and the following disclaimer.

2. Redistributions in binary form must reproduce the above copyright notice,
   this list of conditions and the following disclaimer in the documentation
   and/or other materials provided with the distribution.

3. Neither the name of the copyright holder nor the names of its
   contributors may be used to endorse or promote products derived from
   this software without specific prior written permission.

THIS SOFTWARE IS PROVIDED BY THE COPYRIGHT HOLDERS AND CONTRIBUTORS "AS IS"
AND ANY EXPRESS OR IMPLIED WARRANTIES, INCLUDING, BUT NOT LIMITED TO, THE
IMPLIED WARRANTIES OF MERCHANTABILITY AND FITNESS FOR A PARTICULAR PURPOSE ARE
DISCLAIMED. IN NO EVENT SHALL THE COPYRIGHT HOLDER OR CONTRIBUTORS BE LIABLE
FOR ANY DIRECT, INDIRECT, INCIDENTAL, SPECIAL, EXEMPLARY, OR CONSEQUENTIAL
DAMAGES (INCLUDING, BUT NOT LIMITED TO, PROCUREMENT OF SUBSTITUTE GOODS OR
SERVICES; LOSS OF USE, DATA, OR PROFITS; OR BUSINESS INTERRUPTION) HOWEVER
CAUSED AND ON ANY THEORY OF LIABILITY, WHETHER IN CONTRACT, STRICT LIABILITY,
OR TORT (INCLUDING NEGLIGENCE OR OTHERWISE) ARISING IN ANY WAY OUT OF THE USE
OF THIS SOFTWARE, EVEN IF ADVISED OF THE POSSIBILITY OF SUCH DAMAGE.
"""
# Gate map colours for the cover: anchors of matplotlib's magma, the plugin's colormap for gates.
_MAGMA = np.array([[0, 0, 4], [81, 18, 124], [183, 55, 121], [252, 137, 97], [252, 253, 191]], dtype=np.float32)
_MAX_TEST_SIDE = 512


def _default_test_image() -> np.ndarray:
    from napari_attention_unet.gui.sample_data import nuclei_sample

    return nuclei_sample()[0][0]


def reference_tensors(
    model: AttentionUNet, image: np.ndarray | None = None, axes: str | None = None
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``(raw input (1, C, Y, X) float32, {output name: expected output})`` from a real image.

    The image (default: the plugin's fluorescent nuclei sample, CC0) gets the model's
    channel count as in prediction and is centre-cropped to a valid size of at most
    512 px; the expected outputs are those of the PyTorch network on the normalised crop.
    """
    if model.config.spatial_dims != 2:
        raise ExportError("BioImage Model Zoo export supports 2D models for now; export 3D models as ONNX/TorchScript")
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
        outputs = network(torch.from_numpy(normalize(raw[0])[np.newaxis]))
    return raw, {name: out.numpy() for name, out in zip(OUTPUT_NAMES, outputs)}


def _cover(raw: np.ndarray, attention: np.ndarray) -> np.ndarray:
    """Input (left) and the finest attention map in magma (right), 1:2 as bioimage.io suggests.

    The map is stretched between its 1st and 99.8th percentiles so that its structure shows.
    """
    shown = np.clip(normalize(raw[0]), 0, 1)
    shown = np.repeat(shown, 3, axis=0) if shown.shape[0] != 3 else shown
    left = np.moveaxis(shown, 0, -1) * 255
    steps = np.linspace(0, 1, len(_MAGMA))
    gate = np.clip(normalize(attention[0, :1])[0], 0, 1)
    right = np.stack([np.interp(gate, steps, _MAGMA[:, c]) for c in range(3)], axis=-1)
    return np.concatenate([left, right], axis=1).round().astype(np.uint8)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _safe_name(name: str) -> str:
    # bioimage.io names take letters, digits, spaces, '_', '-', '(' and ')'.
    return re.sub(r"[^A-Za-z0-9 _()-]+", "-", f"Attention U-Net {name}").strip("-")[:128]


def _validation_text(info: dict, card: dict | None) -> str:
    """Scores known for the model: the bundled model's card, or what fine-tuning stored."""
    lines = []
    scores = (card or {}).get("validation_scores", {})
    if scores:
        lines.append(f"Held-out images ({scores.get('split', 'see the model card')}); {scores.get('metric', '')}:")
        lines.append("")
        lines.append("| images | n | AP@0.5 | foreground Dice |")
        lines.append("|---|---|---|---|")
        groups = {"all": scores.get("overall", {}), **scores.get("per_kind", {})}
        for group, result in groups.items():
            model_scores = result.get("model", {})
            if model_scores:
                lines.append(
                    f"| {group} | {model_scores.get('n')} | {model_scores.get('ap50')} | {model_scores.get('dice')} |"
                )
        lines.append("")
    stored = {k: v for k, v in info.items() if any(word in k for word in ("val", "dice", "score", "ap50"))}
    if stored:
        lines.append("Stored with the model: " + ", ".join(f"{k} = {v}" for k, v in stored.items()) + ".")
        lines.append("")
    if not lines:
        lines.append("No validation scores were stored with this model.")
        lines.append("")
    lines.append(
        "The package's test input is a real image; its expected outputs were computed by the PyTorch "
        "network, and both weight formats reproduce them (`bioimageio test`)."
    )
    return "\n".join(lines)


def _documentation(name: str, contract: dict, info: dict, card: dict | None) -> str:
    config = contract["architecture"]
    details = "\n".join(f"- {key}: {value}" for key, value in info.items()) or "- (no details stored with the model)"
    return f"""# Attention U-Net `{name}` (napari-attention-unet)

An Attention U-Net (Oktay et al., 2018) exported by the napari plugin napari-attention-unet
{__version__} (`attention-unet export`).
{config["depth"]} levels, base width {config["base_width"]}, {config["in_channels"]} input channels,
classes {", ".join(config["classes"])}.

## Input

`{INPUT_NAME}`: axes (batch, channel, y, x), {config["in_channels"]} channel(s); a grey image is
repeated to fill the channels. Each channel is normalised per image with percentiles
{LOW_PERCENTILE} and {HIGH_PERCENTILE} (`scale_range` preprocessing in `rdf.yaml`):
`(x - p{LOW_PERCENTILE:g}) / (p{HIGH_PERCENTILE:g} - p{LOW_PERCENTILE:g})`. The percentiles should come from
the whole image, not from each tile.
Height and width must be multiples of {contract["input"]["spatial_size_multiple"]}.

## Outputs

- `{OUTPUT_NAMES[0]}`: softmax over the classes ({", ".join(config["classes"])}), same size as the input.
- `{OUTPUT_NAMES[1]}`: the coefficients of each attention gate (gate1 finest first) in [0, 1],
  resampled to the input grid: where the network passed image detail on.

Instance masks are not part of the model: the plugin splits the foreground
(1 - p(background) > 0.5) into objects by a seeded watershed seeded in the interior class.

## Model

{details}

## Validation

{_validation_text(info, card)}

## Data and license

The plugin's bundled `nuclei` model, the starting point of its fine-tuned models, was trained on
the 2018 Data Science Bowl images (BBBC038v1, CC0; Caicedo et al., Nature Methods 2019).
Weights and code: BSD-3-Clause (see LICENSE).
The full input/output contract is in `{CONTRACT_FILE}`.
"""


CONTRACT_FILE = "napari_attention_unet_export.json"


def _axes(channel_names: list[str], size: dict) -> list[dict]:
    return [
        {"type": "batch"},
        {"type": "channel", "channel_names": channel_names},
        {"type": "space", "id": "y", "size": size["y"]},
        {"type": "space", "id": "x", "size": size["x"]},
    ]


def _rdf(model: AttentionUNet, name: str, info: dict, files: dict[str, Path], contract: dict) -> dict:
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
        "cite": CITATIONS,
        "license": "BSD-3-Clause",
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
                "preprocessing": [
                    {"id": "ensure_dtype", "kwargs": {"dtype": "float32"}},
                    {
                        "id": "scale_range",
                        "kwargs": {
                            "axes": ["y", "x"],
                            "min_percentile": LOW_PERCENTILE,
                            "max_percentile": HIGH_PERCENTILE,
                        },
                    },
                ],
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
) -> Path:
    """Write a BioImage Model Zoo package (zip) of ``model`` to ``path``; returns ``path``.

    ``test_image`` (default: the plugin's nuclei sample) gives the package's test
    input and expected outputs; use an image of the kind the model was trained for.
    ``model_card`` (a bundled model's JSON card) is attached and its scores quoted.
    """
    import tifffile
    import yaml
    from skimage.io import imsave

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
        files["documentation"].write_text(_documentation(name, contract, info, card))
        files["license"].write_text(LICENSE_TEXT)
        files["contract"].write_text(json.dumps(contract, indent=1))
        imsave(files["cover"], _cover(raw, expected[OUTPUT_NAMES[1]]), check_contrast=False)
        rdf = _rdf(model, name, info, files, contract)
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
