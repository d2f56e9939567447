"""The network exported for tools outside this plugin, its input contract, and the ONNX and TorchScript writers.

The BioImage Model Zoo package (:mod:`.bioimageio`) carries both weight files;
:func:`~.formats.export_model` picks the format.

The exported network is :class:`ExportedNetwork`: the Attention U-Net with batch norm
folded, returning plain tensors instead of ``(logits, {gate: alpha})``:

- input ``image``: float32 ``(batch, channel, y, x)`` (``(batch, channel, z, y, x)`` for a
  3D model), ``in_channels`` channels (a grey image is repeated to fill them), each
  channel normalised per image with percentiles: ``(x - p1) / (p99.8 - p1)`` exactly as
  :func:`napari_attention_unet.core.images.normalize` does; spatial sizes must be
  multiples of ``2 ** (depth - 1)`` (pad the image, e.g. by mirroring, to get there).
- output ``probabilities``: softmax over the classes (``background``, ``interior``,
  ``boundary`` for the bundled model), same spatial size as the input.
- output ``attention``: every attention gate's coefficients in [0, 1], resampled
  (bilinear) to the input grid, one channel per gate (``gate1`` finest first).

The normalisation stays outside the network so that a tool can tile a large image
with statistics taken from the whole image; the BioImage Model Zoo package states it
as ``scale_range`` preprocessing. This contract is written into every export
(ONNX metadata, a JSON file inside TorchScript, a JSON sidecar next to both, and the
package's ``rdf.yaml``) by :func:`input_contract`.
"""

from __future__ import annotations

import json
import logging
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from napari_attention_unet import __version__
from napari_attention_unet.core.model import AttentionUNet, ModelConfig

__all__ = [
    "ExportError",
    "ExportedNetwork",
    "export_onnx",
    "export_torchscript",
    "input_contract",
    "normalisation_contract",
    "sidecar_path",
]

CONTRACT_FORMAT = "napari-attention-unet-export/1"
CONTRACT_KEY = "napari_attention_unet"  # ONNX metadata key and TorchScript extra file stem
# The defaults of core.images.normalize (tests check that they stay equal).
LOW_PERCENTILE, HIGH_PERCENTILE = 1.0, 99.8
ONNX_OPSET = 18
INPUT_NAME, OUTPUT_NAMES = "image", ("probabilities", "attention")


def normalisation_contract(config: ModelConfig) -> dict:
    """How a consumer normalises the raw image: each image's percentiles, or the model's fixed window
    (:attr:`~napari_attention_unet.core.model.ModelConfig.intensity_window`, e.g. a CT model's)."""
    if config.intensity_window is not None:
        return {
            "method": "fixed window per channel, the same for every image, clipped",
            "window": [list(w) for w in config.intensity_window],
            "formula": "clip((x - low) / (high - low), 0, 1)",
            "bioimageio": "scale_linear, clip",
        }
    return {
        "method": "percentile, per channel, per image (not per tile)",
        "low_percentile": LOW_PERCENTILE,
        "high_percentile": HIGH_PERCENTILE,
        "formula": "(x - p_low) / (p_high - p_low); a constant channel becomes 0",
        "bioimageio": "scale_range",
    }


class ExportError(RuntimeError):
    """Export cannot be done (missing optional package, unsupported model); the message says why."""


class ExportedNetwork(nn.Module):
    """``image -> (probabilities, attention)``, both on the input grid; see the module docstring."""

    def __init__(self, model: AttentionUNet) -> None:
        super().__init__()
        self.net = model.fused_for_inference().float().cpu()
        self.gate_names = list(model.config.gate_names)
        self.mode = "bilinear" if model.config.spatial_dims == 2 else "trilinear"

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, gate_maps = self.net(image)
        size = image.shape[2:]
        attention = torch.cat(
            [
                F.interpolate(gate_maps[name], size=size, mode=self.mode, align_corners=False)
                for name in self.gate_names
            ],
            dim=1,
        )
        return torch.softmax(logits, dim=1), attention


def input_contract(model: AttentionUNet, name: str, info: dict | None = None) -> dict:
    """What an exported model takes and returns, as JSON-serialisable data."""
    config = model.config
    spatial = "zyx" if config.spatial_dims == 3 else "yx"
    return {
        "format": CONTRACT_FORMAT,
        "exported_by": f"napari-attention-unet {__version__}",
        "model": name,
        "model_info": info or {},
        "architecture": config.to_dict(),
        "input": {
            "name": INPUT_NAME,
            "axes": "bc" + spatial,
            "dtype": "float32",
            "channels": config.in_channels,
            "channels_note": "a grey image is repeated to fill the channels; RGB(A) images drop alpha",
            "normalisation": normalisation_contract(config),
            "spatial_size_multiple": config.size_multiple,
            "padding_note": "pad (e.g. by mirroring) to a multiple, predict, crop back",
        },
        "outputs": [
            {
                "name": OUTPUT_NAMES[0],
                "axes": "bc" + spatial,
                "channels": list(config.classes),
                "range": [0.0, 1.0],
                "note": "softmax over the classes, on the input grid",
            },
            {
                "name": OUTPUT_NAMES[1],
                "axes": "bc" + spatial,
                "channels": list(config.gate_names),
                "range": [0.0, 1.0],
                "note": "attention gate coefficients (gate1 finest), resampled to the input grid",
            },
        ],
        **_labels_note(config),
        **_resampling_note(config, info or {}),
    }


def _labels_note(config) -> dict:
    """How the plugin makes labels of the probabilities: class values, or objects by a watershed."""
    if config.unlabelled_channel:  # trained on strokes: channel 0 was never a target
        return {
            "labels": "not part of the export: the plugin writes the most probable painted class (argmax over "
            "channels 1..K; channel 0, 'unlabelled', was never trained and is never a label) as the label"
        }
    if config.task == "semantic":
        return {"labels": "not part of the export: the plugin writes the most probable class (argmax) as the label"}
    return {
        "instances": "not part of the export: the plugin splits the foreground 1 - p(background) into "
        "objects by a seeded watershed (napari_attention_unet.core.instances.probabilities_to_instances)"
    }


def _resampling_note(config, info: dict) -> dict:
    """A 3D model sees volumes on its own grid: what ``predict`` does before and after the network."""
    if config.spatial_dims != 3:
        return {}
    spacing = info.get("spacing")
    trained = f"trained at voxel size Z,Y,X = {','.join(f'{v:g}' for v in spacing)}; " if spacing else ""
    if config.voxel_size:
        grid = f"cubic voxels of {config.voxel_size:g} units (a volume's voxel size in the units it was trained in)"
    else:
        grid = "cubic voxels of its finest axis (factors spacing / min(spacing); not when all are under 1.25)"
    return {
        "resampling": f"{trained}the plugin normalises a volume (input normalisation), then resamples it to "
        f"{grid} before the network (trilinear, align_corners=False as torch.nn.functional.interpolate, after a "
        "Gaussian blur of sigma (factor - 1) / 2 voxels along each axis that shrinks by that factor) and the "
        "outputs back to the volume's grid (trilinear, align_corners=False; labels nearest). Without this step "
        "an anisotropic volume gives other outputs than the plugin's"
    }


def sidecar_path(path: str | Path) -> Path:
    """Where the JSON contract goes next to an exported file: ``model.onnx`` -> ``model.onnx.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def example_input(model: AttentionUNet, multiples: int = 4) -> torch.Tensor:
    """A small input of a valid size, used to trace the network."""
    config = model.config
    side = config.size_multiple * multiples
    generator = torch.Generator().manual_seed(0)
    return torch.rand((1, config.in_channels, *[side] * config.spatial_dims), generator=generator)


@contextmanager
def _quiet_tracing():
    """Hide warnings that tracing raises and that do not apply to this network.

    The network checks ``size % multiple`` and whether two feature maps already share a
    grid; for every valid input size the answers are the same as for the example, so
    the tracer's "treated as a constant" warnings are expected. ``torch.jit`` itself is
    deprecated in favour of ``torch.export``, but TorchScript is what deepImageJ and the
    BioImage Model Zoo run.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.", category=DeprecationWarning)
        yield


def export_torchscript(model: AttentionUNet, path: str | Path, name: str, info: dict | None = None) -> Path:
    """Trace :class:`ExportedNetwork` to TorchScript at ``path``; the contract rides along as an extra file."""
    path = Path(path)
    contract = input_contract(model, name, info)
    wrapper = ExportedNetwork(model).eval()
    with _quiet_tracing(), torch.inference_mode(False), torch.no_grad():
        traced = torch.jit.trace(wrapper, example_input(model), check_trace=False)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.jit.save(traced, str(path), _extra_files={f"{CONTRACT_KEY}.json": json.dumps(contract)})
    sidecar_path(path).write_text(json.dumps(contract, indent=1))
    return path


@contextmanager
def _quiet_onnx_export():
    """Silence what the ONNX exporter says about itself, not about our network.

    It logs that optional torchvision operators are not registered (we use none) and
    torch 2.13's own export code trips a deprecation of its pytree ``LeafSpec``.
    """
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*LeafSpec", category=FutureWarning)
            yield
    finally:
        logger.setLevel(level)


def export_onnx(model: AttentionUNet, path: str | Path, name: str, info: dict | None = None) -> Path:
    """Export :class:`ExportedNetwork` to ONNX (opset 18) with dynamic batch and spatial sizes.

    Spatial sizes are declared as ``multiple * n`` so the graph accepts every valid size.
    The contract is stored as JSON in the model's metadata (key ``napari_attention_unet``).
    """
    try:
        import onnx  # noqa: F401 - the exporter needs both
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise ExportError(
            f"ONNX export needs the onnx and onnxscript packages ({exc.name} is missing): "
            "pip install 'napari-attention-unet[export]'"
        ) from exc
    from torch.export import Dim

    path = Path(path)
    config = model.config
    contract = input_contract(model, name, info)
    wrapper = ExportedNetwork(model).eval()
    sizes = {2 + i: config.size_multiple * Dim(f"n{axis}") for i, axis in enumerate("zyx"[-config.spatial_dims :])}
    with _quiet_onnx_export(), torch.inference_mode(False), torch.no_grad():
        program = torch.onnx.export(
            wrapper,
            (example_input(model),),
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes={"image": {0: Dim("batch"), **sizes}},
            opset_version=ONNX_OPSET,
            dynamo=True,
            verbose=False,
        )
    program.model.metadata_props[CONTRACT_KEY] = json.dumps(contract)
    program.model.doc_string = f"Attention U-Net {name!r} exported by napari-attention-unet; see metadata"
    path.parent.mkdir(parents=True, exist_ok=True)
    program.save(str(path), external_data=False)
    sidecar_path(path).write_text(json.dumps(contract, indent=1))
    return path
