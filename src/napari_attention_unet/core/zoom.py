"""A second look at small objects: a 2D image enlarged before the network, the outputs brought back.

A 2D instance model whose config says which object sizes it learnt
(``config.extra["small_objects"]``, as the bundled nuclei model's does) separates touching
objects worst when they are smaller than that. :func:`object_zoom` says how much to enlarge an
image whose objects came out small (:func:`.instances.small_object_zoom`); :func:`enlarge`
resamples the network's input, and :func:`back_to_grid` brings probabilities, gate maps and
labels back to the image's grid. :func:`.predict.predict` decides on the whole image; the block
engine (``large_data.blocks``) decides once for the whole image from a few windows of it, so that
every block is enlarged alike and objects cut by a block edge still stitch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from napari_attention_unet.core.instances import object_diameters, small_object_zoom, without_gaps
from napari_attention_unet.core.model import ModelConfig
from napari_attention_unet.core.resampling import isotropic_shape, resample, resample_labels

__all__ = ["auto_zoom_applies", "back_to_grid", "enlarge", "inside_objects", "object_zoom"]


def auto_zoom_applies(config: ModelConfig, *, instances: bool, auto_zoom: bool) -> bool:
    """Whether a model of ``config`` looks again at small objects: a 2D instance model whose config
    holds ``extra["small_objects"]``, asked for instances with ``auto_zoom`` on."""
    return (
        auto_zoom
        and instances
        and config.spatial_dims == 2
        and config.task != "semantic"
        and bool(config.extra.get("small_objects"))
    )


def inside_objects(labels: np.ndarray) -> np.ndarray:
    """``labels`` without the objects that touch its border (cut by a window, so smaller than they are)."""
    edges = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    cut = np.unique(edges[edges > 0])
    return np.where(np.isin(labels, cut), 0, labels) if len(cut) else labels


def object_zoom(labels: np.ndarray | Sequence[np.ndarray], config: ModelConfig) -> float | None:
    """The factor to enlarge an image by whose objects came out as ``labels`` (one array, or the
    labels of several windows of the image, pooled), or None to leave it as it is."""
    arrays = [labels] if isinstance(labels, np.ndarray) else list(labels)
    diameters = np.concatenate([object_diameters(a) for a in arrays])
    if not len(diameters):
        return None
    return small_object_zoom(float(np.median(diameters)), **config.extra["small_objects"])


def enlarge(x: np.ndarray, factor: float) -> np.ndarray:
    """A channel-first 2D image ``(C, Y, X)`` enlarged ``factor`` times (bilinear)."""
    return resample(x, isotropic_shape(x.shape[1:], (factor, factor)))


def back_to_grid(
    probs: np.ndarray, gate_maps: dict[str, np.ndarray], labels: np.ndarray | None, shape: Sequence[int]
) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray | None]:
    """Class probabilities (renormalised), gate maps and labels (nearest; ids 1..n again if a small
    object fell between the voxels of a coarser grid) of an enlarged image, on ``shape``."""
    probs = resample(probs, shape)
    probs /= probs.sum(axis=0, keepdims=True)
    gate_maps = {name: resample(g[np.newaxis], shape)[0] for name, g in gate_maps.items()}
    return probs, gate_maps, None if labels is None else without_gaps(resample_labels(labels, shape))
