"""Which intensity normalisation a new model gets: each image's own percentiles, or one fixed window.

An MR scan's intensities are arbitrary units that differ by 10^4 between scanners, so every image is
stretched by its own percentiles (:func:`core.images.normalize`). A CT's are Hounsfield units, the same
scale in every scan (air -1000, water 0, bone +700 and above); its own percentiles, though, move with
what the scan holds: the value outside the scanner's field of view (-1024, -2048 or -3024 by vendor),
metal, bone, contrast. So a model trained on CT keeps one window for every image, as nnU-Net does:
the 0.5 and 99.5 percentiles of the labelled voxels of all its training images, clipped at the ends
(:func:`foreground_window`; :attr:`~.model.ModelConfig.intensity_window` holds it, prediction uses it).

- :func:`looks_like_hounsfield`: whether single-channel images look like CT (whole numbers reaching
  below :data:`HOUNSFIELD_FLOOR`; MR, microscopy and normalised images do not).
- :func:`choose_window`: the window for ``intensity="auto" | "image" | "window"``, with what to tell the user.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["HOUNSFIELD_FLOOR", "INTENSITY_CHOICES", "choose_window", "foreground_window", "looks_like_hounsfield"]

#: Images whose every one reaches this low (air is -1000 HU) in whole numbers look like CT.
HOUNSFIELD_FLOOR = -500.0
#: The percentiles of the labelled voxels a window spans (nnU-Net's CT normalisation).
WINDOW_PERCENTILES = (0.5, 99.5)
#: ``attention-unet train --intensity``: auto (a window for CT-like images), image (each image's own
#: percentiles), window (a fixed window from the labelled voxels, whatever the images are).
INTENSITY_CHOICES = ("auto", "image", "window")
_SAMPLES_PER_IMAGE = 200_000


def _sample(values: np.ndarray, count: int = _SAMPLES_PER_IMAGE) -> np.ndarray:
    flat = np.asarray(values).reshape(-1)
    step = max(1, flat.size // count)
    sample = flat[::step].astype(np.float64)
    return sample[np.isfinite(sample)]


def looks_like_hounsfield(images: Sequence[np.ndarray]) -> bool:
    """Whether every image (one channel, spatial axes only) looks like a CT in Hounsfield units:
    whole-number values that reach :data:`HOUNSFIELD_FLOOR` or below."""
    if not images:
        return False
    for image in images:
        sample = _sample(image)
        if not sample.size or sample.min() > HOUNSFIELD_FLOOR or not np.array_equal(sample, np.round(sample)):
            return False
    return True


def foreground_window(
    images: Sequence[np.ndarray], labels: Sequence[np.ndarray], percentiles: tuple[float, float] = WINDOW_PERCENTILES
) -> tuple[float, float] | None:
    """The ``percentiles`` of the voxels labelled above 0 in all ``images`` (one channel each, on the
    labels' grid), pooled; None when nothing is labelled or they span no range."""
    values = [_sample(np.asarray(im)[np.asarray(lb) > 0]) for im, lb in zip(images, labels)]
    values = [v for v in values if v.size]
    if not values:
        return None
    lo, hi = np.percentile(np.concatenate(values), percentiles)
    return (float(lo), float(hi)) if hi - lo > 1e-6 else None


def choose_window(
    images: Sequence[np.ndarray], labels: Sequence[np.ndarray], intensity: str = "auto"
) -> tuple[tuple[tuple[float, float], ...] | None, str | None]:
    """``(window, note)`` for a new model trained on single-channel ``images`` (spatial axes only) and
    their ``labels``: the window per input channel (None: each image's own percentiles) and what to
    tell the user (None: nothing to say)."""
    if intensity not in INTENSITY_CHOICES:
        raise ValueError(f"intensity must be one of {', '.join(INTENSITY_CHOICES)}, not {intensity!r}")
    if intensity == "image":
        return None, None
    ct = looks_like_hounsfield(images)
    if intensity == "auto" and not ct:
        return None, None
    window = foreground_window(images, labels)
    if window is None:
        return None, "no labelled voxels span a range of intensities: each image is normalised by its own percentiles"
    span = f"{window[0]:.4g} to {window[1]:.4g} (the labelled voxels' 0.5-99.5 percentiles)"
    if ct:
        return (window,), (
            f"intensities look like Hounsfield units (a CT): every image is seen through one window, {span}, "
            "not its own percentiles (--intensity image: its own)"
        )
    return (window,), f"every image is seen through one window, {span}"
