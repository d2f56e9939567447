"""Patch sampling and augmentation for training, on channel-first arrays.

Images are normalised float32 ``(C, [Z,] Y, X)``; targets are uint8 class maps
``([Z,] Y, X)`` where :data:`IGNORE` marks pixels the loss must skip (padding,
user-ignored regions, the held-out validation strip). Geometry changes are applied
to both with the same parameters; intensity changes only to the image.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = [
    "IGNORE",
    "augment",
    "crop_patch",
    "intensity_jitter",
    "random_flips_rotations",
    "rescale_patch",
    "stain_jitter",
]

#: Target value the loss ignores (fits in uint8, far from any class index).
IGNORE = 255

#: Optical densities of haematoxylin, eosin and DAB (rows), unit length: Ruifrok & Johnston,
#: Anal. Quant. Cytol. Histol. 23, 291 (2001), the matrix of skimage.color.rgb2hed.
_RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=np.float64)
_RGB_FROM_HED /= np.linalg.norm(_RGB_FROM_HED, axis=1, keepdims=True)
_HED_FROM_RGB = np.linalg.inv(_RGB_FROM_HED)


def crop_patch(
    image: np.ndarray, target: np.ndarray, start: tuple[int, ...], size: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Crop ``size`` at ``start`` (may run past the border: padded with zeros / IGNORE).

    Padding is ignored by the loss, so small images train like large ones without
    the network learning that the border is background.
    """
    image_out = np.zeros((image.shape[0], *size), dtype=np.float32)
    target_out = np.full(size, IGNORE, dtype=np.uint8)
    src, dst = [], []
    for s, n, length in zip(start, target.shape, size):
        lo, hi = max(s, 0), min(s + length, n)
        if hi <= lo:
            return image_out, target_out
        src.append(slice(lo, hi))
        dst.append(slice(lo - s, hi - s))
    image_out[(slice(None), *dst)] = image[(slice(None), *src)]
    target_out[tuple(dst)] = target[tuple(src)]
    return image_out, target_out


def rescale_patch(image: np.ndarray, target: np.ndarray, size: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Resize a patch to ``size``: image bilinear (order 1), target nearest (order 0)."""
    if tuple(target.shape) == tuple(size):
        return image, target
    zoom = [o / i for o, i in zip(size, target.shape)]
    image_out = np.stack([ndimage.zoom(c, zoom, order=1, mode="nearest", grid_mode=True) for c in image])
    target_out = ndimage.zoom(target, zoom, order=0, mode="nearest", grid_mode=True)
    # zoom can be off by one pixel; crop/pad to the exact size.
    return crop_patch(image_out, target_out, (0,) * len(size), tuple(size))


def random_flips_rotations(
    image: np.ndarray, target: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Random flips on every spatial axis, plus a random 90-degree turn in Y-X when square."""
    spatial = target.ndim
    for axis in range(spatial):
        if rng.random() < 0.5:
            image, target = np.flip(image, axis + 1), np.flip(target, axis)
    if target.shape[-1] == target.shape[-2]:
        k = int(rng.integers(4))
        image, target = np.rot90(image, k, axes=(-2, -1)), np.rot90(target, k, axes=(-2, -1))
    return np.ascontiguousarray(image), np.ascontiguousarray(target)


def intensity_jitter(image: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """Brightness, contrast and gamma jitter, same for all channels (colour stays colour).

    Normalised images sit roughly in [0, 1]; gamma acts on the clipped [0, 1] part
    so that contrast in dark (fluorescence) and bright (brightfield) images changes alike.
    """
    gamma = float(np.exp(rng.uniform(-0.3, 0.3) * strength))
    contrast = float(np.exp(rng.uniform(-0.25, 0.25) * strength))
    brightness = float(rng.uniform(-0.1, 0.1) * strength)
    clipped = np.clip(image, 0.0, 1.0)
    out = image + (np.power(clipped, gamma, dtype=np.float32) - clipped)
    mean = out.mean(dtype=np.float64)
    out = (out - mean) * contrast + mean + brightness
    return out.astype(np.float32, copy=False)


def stain_jitter(image: np.ndarray, rng: np.random.Generator, strength: float = 0.05) -> np.ndarray:
    """Random change of each stain's amount in an RGB patch (H&E-DAB colour deconvolution).

    Tellez et al. 2018 (HED jitter): the patch, read as transmitted light in [0, 1], is
    turned into stain concentrations; each is scaled by ``1 + U(-strength, strength)`` and
    shifted by ``U(-strength, strength)``, and the light is computed back. Stains change
    together across a slide and between labs; the shapes of nuclei do not. ``image`` is
    ``(3, ...)``; other channel counts are returned unchanged.
    """
    if image.shape[0] != 3 or strength <= 0:
        return image
    light = np.clip(image, 1e-3, 1.0).reshape(3, -1).astype(np.float64)
    stains = _HED_FROM_RGB.T @ -np.log(light)
    alpha = 1.0 + rng.uniform(-strength, strength, size=(3, 1))
    beta = rng.uniform(-strength, strength, size=(3, 1))
    density = _RGB_FROM_HED.T @ (stains * alpha + beta)
    out = np.exp(-density).reshape(image.shape).astype(np.float32)
    # Keep what lay outside [0, 1] after normalisation (very bright or dark pixels) as it was.
    return out + (image - np.clip(image, 1e-3, 1.0))


def augment(
    image: np.ndarray,
    target: np.ndarray,
    rng: np.random.Generator,
    size: tuple[int, ...],
    centre: tuple[int, ...] | None = None,
    scale_range: tuple[float, float] = (0.8, 1.25),
    extra: np.ndarray | None = None,
    flips: bool = True,
    stain: float = 0.0,
) -> tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One augmented training patch of ``size`` from a whole image and its target.

    ``centre`` (optional) is a pixel the patch should contain near its middle;
    otherwise the patch position is uniform. For 2D a random scale in
    ``scale_range`` is applied by cropping ``size / scale`` and resizing; 3D only flips.
    ``extra`` (float, ``(K, *spatial)``, e.g. a loss weight map) gets the same geometry
    but no intensity jitter, and is returned third. ``flips=False`` leaves out the random
    flips and turns, for classes that depend on orientation (anterior / posterior, left / right).
    ``stain`` > 0 applies :func:`stain_jitter` of that strength to RGB images (before the
    brightness / contrast / gamma jitter).
    """
    n_channels = image.shape[0]
    if extra is not None:
        image = np.concatenate([image, extra.astype(np.float32, copy=False)])
    two_d = target.ndim == 2
    scale = float(np.exp(rng.uniform(np.log(scale_range[0]), np.log(scale_range[1])))) if two_d else 1.0
    crop = tuple(max(int(round(s / scale)), 1) for s in size)
    if centre is None:
        # Uniform over positions that keep the patch inside the image where possible.
        start = tuple(int(rng.integers(0, max(n - c, 0) + 1)) for n, c in zip(target.shape, crop))
    else:
        jitter = [int(rng.integers(-c // 4, c // 4 + 1)) for c in crop]
        start = tuple(
            int(np.clip(p - c // 2 + j, min(0, n - c), max(n - c, 0)))
            for p, c, j, n in zip(centre, crop, jitter, target.shape)
        )
    image_patch, target_patch = crop_patch(image, target, start, crop)
    if crop != tuple(size):
        image_patch, target_patch = rescale_patch(image_patch, target_patch, size)
    if flips:
        image_patch, target_patch = random_flips_rotations(image_patch, target_patch, rng)
    extra_patch = image_patch[n_channels:]
    image_patch = intensity_jitter(stain_jitter(image_patch[:n_channels], rng, stain), rng)
    if extra is not None:
        return image_patch, target_patch, extra_patch
    return image_patch, target_patch
