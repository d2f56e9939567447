"""Images as the network sees them: axes, channels and intensity normalisation.

Axes are named with the letters ``Z``, ``Y``, ``X`` and ``C`` (channel). Everything
inside the package works on channel-first float32 arrays ``(C, [Z,] Y, X)``
normalised with robust percentiles.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "ImageShapeError",
    "guess_axes",
    "intensity_ranges",
    "leading_channels",
    "match_channels",
    "network_channels",
    "normalize",
    "to_channel_first",
]


class ImageShapeError(ValueError):
    """The image's shape or axes cannot be handled; the message says what would work."""


def guess_axes(
    shape: tuple[int, ...], rgb: bool | None = None, *, channels: int | None = None, pick: bool = False
) -> str:
    """Guess axes from a shape the way napari does: a last axis of 3 or 4 is colour.

    ``rgb`` forces (True) or forbids (False) reading the last axis as colour. A last axis of 1-4
    next to larger ones is channels too (a 2-channel ``(Y, X, 2)`` is no stack of 2 px wide
    planes). A first axis of 2-4 next to larger ones is channels when ``channels`` (a model's input
    channels) is that length and not 1 or 3 (3 planes stay planes for a colour model), or when
    ``pick`` (one channel is being picked, so there are channels); else it is Z (or time).
    """
    ndim = len(shape)
    few_last = rgb is None and ndim >= 3 and shape[-1] <= 4 < min(shape[:-1])
    colour_last = (ndim > 0 and shape[-1] in (3, 4) or few_last) if rgb is None else rgb
    first = shape[0] if ndim else 0
    few_first = ndim >= 3 and 2 <= first <= 4 < min(shape[1:]) and (pick or (channels == first and first != 3))
    if ndim == 2:
        return "YX"
    if ndim == 3:
        return "YXC" if colour_last else ("CYX" if few_first else "ZYX")
    if ndim == 4:
        if colour_last:
            return "ZYXC"
        if few_first:
            return "CZYX"
        raise ImageShapeError(
            f"cannot tell the axes of a 4D image of shape {shape}: give them, e.g. axes='CZYX' "
            "for channels first, or pick one time point / channel"
        )
    raise ImageShapeError(
        f"images with {ndim} dimensions (shape {shape}) are not supported: use 2D (YX, YXC) "
        "or 3D (ZYX, ZYXC) data, e.g. one time point of a time series"
    )


def leading_channels(shape: tuple[int, ...], rgb: bool, in_channels: int, spatial_dims: int) -> bool:
    """Whether an image of ``shape`` (a napari layer's data; not RGB) holds a model's 2 or 4 input channels
    on its first axis, before the model's spatial axes: napari shows them as planes, the model takes them
    together. Three leading planes stay planes (colour models take RGB last)."""
    return not rgb and len(shape) == spatial_dims + 1 and in_channels in (2, 4) and shape[0] == in_channels


def to_channel_first(image: np.ndarray, axes: str | None = None) -> tuple[np.ndarray, str]:
    """Return ``(array with axes (C, [Z,] Y, X), spatial axes)``; no copy when possible."""
    image = np.asarray(image)
    axes = (axes or guess_axes(image.shape)).upper()
    if len(axes) != image.ndim or len(set(axes)) != len(axes) or set(axes) - set("ZYXC"):
        raise ImageShapeError(f"axes {axes!r} do not describe an image of shape {image.shape}")
    if "Y" not in axes or "X" not in axes:
        raise ImageShapeError(f"axes {axes!r} need both Y and X")
    spatial = "".join(a for a in "ZYX" if a in axes)
    order = ([axes.index("C")] if "C" in axes else []) + [axes.index(a) for a in spatial]
    out = np.transpose(image, order)
    if "C" not in axes:
        out = out[np.newaxis]
    return out, spatial


def match_channels(image: np.ndarray, in_channels: int) -> np.ndarray:
    """Adapt a channel-first image to a network's input channels.

    Greyscale is repeated for colour networks; RGB(A) is averaged for greyscale ones;
    an alpha channel is dropped. Anything else is an error that says what to do.
    """
    n = image.shape[0]
    if n == 4 and in_channels != 4:
        image, n = image[:3], 3
    if n == in_channels:
        return image
    if n == 1:
        return np.repeat(image, in_channels, axis=0)
    if n == 3 and in_channels == 1:
        return image.mean(axis=0, keepdims=True, dtype=np.float32)
    raise ImageShapeError(
        f"the model takes {in_channels} channel(s) but the image has {n}: "
        "pick one channel (--channel C on the command line) or an RGB image, or use a model trained for "
        "these channels"
    )


def network_channels(channels_first: np.ndarray, in_channels: int) -> np.ndarray:
    """The channels that are normalised for a network of ``in_channels``: a grey image keeps its one
    channel (repeated per tile or batch for a colour network, which saves the percentiles and the
    memory of identical copies); others are matched (:func:`match_channels`)."""
    return channels_first if channels_first.shape[0] == 1 else match_channels(channels_first, in_channels)


def intensity_ranges(
    image: np.ndarray, low: float = 1.0, high: float = 99.8, max_samples: int = 2_000_000
) -> tuple[tuple[float, float] | None, ...]:
    """Per channel of a channel-first image, the ``(low, high)`` percentiles that :func:`normalize`
    stretches to [0, 1] (None for a channel with nothing to stretch), from an evenly strided
    subsample so that large images cost little."""
    ranges = []
    for c in range(image.shape[0]):
        flat = image[c].reshape(-1)
        step = max(1, flat.size // max_samples)
        # float64 keeps values past float32's range (1e300) apart, as normalize then does
        sample = flat[::step].astype(np.float64 if image.dtype == np.float64 else np.float32)
        if not np.isfinite(sample).all():  # NaN pixels (e.g. outside a scan's mask) have no intensity
            sample = sample[np.isfinite(sample)]
        if not sample.size:
            ranges.append(None)
            continue
        lo, hi = np.percentile(sample, [low, high])
        scale = hi - lo
        ranges.append(None if not np.isfinite(scale) or scale <= 1e-12 else (float(lo), float(hi)))
    return tuple(ranges)


#: Intensities past this (float64 images only) are normalised in float64: in float32 they would be infinite.
FLOAT32_SAFE = 1e37

#: What :func:`normalize` makes of pixels that are not finite numbers, as the dock and the CLI say it.
NOT_NUMBERS = "NaN or infinite: NaN and -inf taken as background, +inf as the brightest"


def normalize(
    image: np.ndarray,
    low: float = 1.0,
    high: float = 99.8,
    max_samples: int = 2_000_000,
    ranges: Sequence[tuple[float, float] | None] | None = None,
    window: Sequence[tuple[float, float]] | None = None,
) -> np.ndarray:
    """Per-channel percentile normalisation of a channel-first image to float32.

    ``ranges`` (from :func:`intensity_ranges`, e.g. of the whole stack a plane comes from)
    replaces the image's own percentiles. ``window`` (a model's fixed intensity window, e.g. in
    Hounsfield units: :attr:`~.model.ModelConfig.intensity_window`) replaces both, and what lies
    outside it is clipped to its ends. Constant channels (range None) become zeros instead
    of dividing by zero. Pixels that are not numbers (NaN) become 0, the low percentile.
    """
    if window is not None:
        ranges = window
    elif ranges is None:
        ranges = intensity_ranges(image, low, high, max_samples)
    if len(ranges) != image.shape[0]:
        raise ValueError(f"{len(ranges)} intensity range(s) for an image of {image.shape[0]} channel(s)")
    out = np.empty(image.shape, dtype=np.float32)
    for c, bounds in enumerate(ranges):
        if bounds is None:  # nothing to stretch: keep what the channel holds, centred
            out[c] = 0.0
            continue
        lo, hi = bounds
        if max(abs(lo), abs(hi)) > FLOAT32_SAFE:  # (x - lo) would overflow float32: scaled in float64 first
            out[c] = (image[c] - np.float64(lo)) * (1.0 / (hi - lo))
            continue
        np.subtract(image[c], np.float64(lo), out=out[c], casting="unsafe")
        out[c] *= np.float32(1.0 / (hi - lo))
    if np.issubdtype(image.dtype, np.floating) and not np.isfinite(out).all():
        # NaN pixels read as the image's low percentile (the background of most images), not as
        # NaN that would spread through every tile they touch; infinities as the ends of the range.
        np.nan_to_num(out, copy=False, nan=0.0, posinf=1.0, neginf=0.0)
    if window is not None:
        np.clip(out, 0.0, 1.0, out=out)
    return out
