"""What a BioImage Model Zoo package says about its model: documentation, cover, license, credits.

Text and pictures only; :mod:`.bioimageio` writes them into the package next to ``rdf.yaml``.
"""

from __future__ import annotations

import numpy as np

from napari_attention_unet import __version__
from napari_attention_unet.core.images import normalize
from napari_attention_unet.export.network import HIGH_PERCENTILE, INPUT_NAME, LOW_PERCENTILE, OUTPUT_NAMES

__all__ = ["AUTHORS", "CITATIONS", "CONTRACT_FILE", "LICENSE_TEXT", "cover_image", "documentation", "validation_text"]

CONTRACT_FILE = "napari_attention_unet_export.json"
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


def cover_image(raw: np.ndarray, attention: np.ndarray) -> np.ndarray:
    """Input (left) and the finest attention map in magma (right), 1:2 as bioimage.io suggests.

    The map is stretched between its 1st and 99.8th percentiles so that its structure shows.
    """
    shown = np.clip(normalize(raw[0]), 0, 1)
    shown = np.repeat(shown[:1], 3, axis=0) if shown.shape[0] != 3 else shown  # 2 or 4 channels: the first, grey
    left = np.moveaxis(shown, 0, -1) * 255
    steps = np.linspace(0, 1, len(_MAGMA))
    gate = np.clip(normalize(attention[0, :1])[0], 0, 1)
    right = np.stack([np.interp(gate, steps, _MAGMA[:, c]) for c in range(3)], axis=-1)
    return np.concatenate([left, right], axis=1).round().astype(np.uint8)


def validation_text(info: dict, card: dict | None) -> str:
    """Scores known for the model: the bundled model's card, or what fine-tuning stored."""
    lines = []
    scores = (card or {}).get("validation_scores", {})
    if scores:
        lines.append(f"Held-out images ({scores.get('split', 'see the model card')}); {scores.get('metric', '')}:")
        lines.append("")
        lines.append("| images | n | AP@0.5 | foreground Dice |")
        lines.append("|---|---|---|---|")
        # Held-out groups by source (evaluate.py: the DSB validation images and NuInsSeg tiles); the older
        # cards name them per_kind.
        groups = {"all": scores.get("overall", {}), **scores.get("per_group", scores.get("per_kind", {}))}
        for group, result in groups.items():
            model_scores = result.get("model", {})
            if model_scores:
                lines.append(
                    f"| {group} | {model_scores.get('n')} | {model_scores.get('ap50')} | {model_scores.get('dice')} |"
                )
        over_groups = scores.get("groups", {}).get("model", {}).get("ap50_mean_over_groups")
        worst = scores.get("worst_group", {}).get("model", {})
        if over_groups is not None and worst:
            lines.append("")
            lines.append(
                f"Mean AP@0.5 over the groups (stress groups aside): {over_groups}; worst group: "
                f"{worst.get('group')} ({worst.get('ap50')})."
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


def _after_the_network(contract: dict) -> str:
    """What the plugin does with the outputs that the package does not: labels from the probabilities."""
    if contract["architecture"].get("task") == "semantic":
        return "Class labels are not part of the model: " + contract.get("labels", "").split(": ", 1)[-1] + "."
    return (
        "Instance masks are not part of the model: the plugin splits the foreground\n"
        "(1 - p(background) > 0.5) into objects by a watershed seeded in the interior class. Nor is the\n"
        "plugin's second look at small nuclei (it predicts the image enlarged when the nuclei are under\n"
        "12 px across), so on images of small nuclei the package finds fewer than the plugin does."
    )


def _data_and_license(info: dict, card: dict | None, license: str, from_bundled: bool) -> str:
    """Where the weights come from, and their license (the user's data decides it for their models)."""
    bundled = "the 2018 Data Science Bowl images (BBBC038v1, CC0; Caicedo et al., Nature Methods 2019)"
    if card is not None:
        return (
            "The plugin's bundled `nuclei` model, the starting point of its fine-tuned models, was trained on\n"
            f"{bundled}.\nWeights and code: {license} (see LICENSE)."
        )
    images = ", ".join(f"`{n}`" for n in info.get("trained_on", ())) or "images not recorded with the model"
    start = f", starting from the bundled `nuclei` model (trained on {bundled})" if from_bundled else ""
    return (
        f"Trained with napari-attention-unet by its user on {images}{start}.\n"
        f"The license of those images is not recorded: this package states `{license}` for the weights\n"
        "(`attention-unet export --license`); check that the training data allows it before sharing.\n"
        "The plugin's code: BSD-3-Clause (see LICENSE)."
    )


def documentation(
    name: str, contract: dict, info: dict, card: dict | None, license: str = "BSD-3-Clause", from_bundled: bool = True
) -> str:
    """The package's ``README.md``: input, outputs, model details, validation scores, data and license."""
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

{_after_the_network(contract)}

## Model

{details}

## Validation

{validation_text(info, card)}

## Data and license

{_data_and_license(info, card, license, from_bundled)}
The full input/output contract is in `{CONTRACT_FILE}`.
"""
