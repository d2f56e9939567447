"""Where the plugin's result layers go and how they look: placement, napari keyword arguments, dtype, contrast; no Qt.

:mod:`.layers` builds and places the layers; this module says how each is drawn: the masks as a
Labels layer of a small unsigned type (with a semantic model's class names as ``features``), each
gate map in ``magma``, added to a grey image or laid over a colour one, with contrast limits from
its own values (:func:`display_range`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from napari_attention_unet.gui.ownership import MARKER
from napari_attention_unet.large_data.files import labels_dtype as files_labels_dtype

GATE_COLORMAP = "magma"


@dataclass(frozen=True)
class Placement:
    """Where results go in the world: the source layer's spatial shape, scale and translate.

    For an RGB layer these cover the spatial axes only, as napari's own ``scale`` does.
    """

    shape: tuple[int, ...]
    scale: tuple[float, ...]
    translate: tuple[float, ...]
    source_id: str
    source_name: str
    #: The source's NIfTI affine and header (``metadata["nifti"]`` of a volume opened by our reader),
    #: copied to the masks so that saving them as ``.nii.gz`` puts them on the scan's grid.
    nifti: dict | None = field(default=None, compare=False)
    #: A colour (RGB) image, mostly bright (H&E, brightfield): an additive map would only whiten it.
    bright: bool = field(default=False, compare=False)


def masks_name(image_name: str) -> str:
    return f"{image_name} masks"


def attention_name(image_name: str, gate: str) -> str:
    return f"{image_name} attention {gate}"


def labels_dtype(labels: np.ndarray) -> type:
    """The smallest unsigned type napari draws quickly that holds ``labels`` and ids painted next.

    napari adds unsigned labels much faster than signed ones (1.2 s vs 0.12 s at 2048x2048)
    and small types faster than large ones (2048x2048: uint32 about 1 s, uint16 0.14 s). uint8
    is left out: the brush's next id would overflow it after 255 objects.
    """
    return files_labels_dtype(int(labels.max(initial=0)) + 1)  # room for the next id the brush paints


def class_features(classes) -> dict:
    """Labels-layer ``features`` naming each class value of a semantic model (napari shows the class under
    the cursor); empty for objects, so that a layer updated by an instance model loses the old names."""
    return {"features": {"index": list(range(len(classes))), "class": list(classes)} if classes else {}}


def marker(placement: Placement, model_name: str, role: str, gate: str | None, extra: dict | None) -> dict:
    info = {"role": role, "gate": gate, "source": placement.source_id, "model": model_name}
    return {MARKER: {**info, **(extra or {})}}


def masks_kwargs(placement: Placement, model_name: str, extra: dict | None = None) -> dict:
    return {
        "scale": placement.scale,
        "translate": placement.translate,
        "name": masks_name(placement.source_name),
        "metadata": {
            **marker(placement, model_name, "masks", None, extra),
            **({"nifti": placement.nifti} if placement.nifti else {}),
        },
    }


def display_range(values: np.ndarray, samples: int = 1 << 18) -> tuple[float, float]:
    """Contrast limits for a gate map: its median to its 99.5th percentile (about ``samples`` values read).

    Gate coefficients seldom span [0, 1]: on the nuclei sample the finest gate lies between 0.07 and
    0.54, on an MR volume between 0.09 and 0.51. Drawn from 0 to 1, the map tinted the whole image
    alike; from its median up, half the image is left as it is and the map shows where the gate
    passes the most. The data keep their values (the status bar reads them)."""
    flat = np.asarray(values).reshape(-1)
    flat = flat[:: max(1, flat.size // samples)]
    flat = flat[np.isfinite(flat)]
    if flat.size == 0:
        return (0.0, 1.0)
    low, high = (float(v) for v in np.percentile(flat, [50, 99.5]))
    if high - low < 1e-3:  # a flat map: nothing stands out; show it on the whole scale
        return (0.0, 1.0)
    return (low, high)


def attention_kwargs(
    placement: Placement,
    model_name: str,
    gate: str,
    visible: bool,
    extra: dict | None = None,
    shown: tuple[float, float] = (0.0, 1.0),
):
    """``shown``: the contrast limits (:func:`display_range`; the whole [0, 1] for maps still to be filled)."""
    return {
        "scale": placement.scale,
        "translate": placement.translate,
        "name": attention_name(placement.source_name, gate),
        "colormap": GATE_COLORMAP,
        # On a dark fluorescence image the map adds light; over a bright H&E one it is laid over it instead.
        "blending": "translucent" if placement.bright else "additive",
        "opacity": 0.5,
        "contrast_limits": shown,
        "visible": visible,
        "metadata": marker(placement, model_name, "attention", gate, extra),
    }
