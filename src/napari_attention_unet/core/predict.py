"""Tiled prediction of a whole image as a generator.

``predict(model, image, options)`` yields :class:`Progress` after every batch of tiles and
returns a :class:`Prediction` (instance labels, or class values for a semantic model, the foreground
probability and every attention gate's coefficients on the image grid). Scripts drive it with
:func:`run_to_end`; the napari widget runs the same generator in a worker, and closing the
generator (``gen.close()`` or ``worker.quit()``) stops the work before the next tile.

:class:`PredictOptions` is the one description of *how* to predict: the CLI, the dask
workers, the block engine and the widget all build one and pass it on.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field, fields, replace

import numpy as np
import torch

from napari_attention_unet.core.device import autocast_dtype, channels_last_format, pick_device
from napari_attention_unet.core.images import (
    ImageShapeError,
    guess_axes,
    intensity_ranges,
    network_channels,
    normalize,
    to_channel_first,
)
from napari_attention_unet.core.instances import probabilities_to_instances
from napari_attention_unet.core.memory import check_volume_fits, tile_activation_bytes, volume_prediction_bytes
from napari_attention_unet.core.model import AttentionUNet, ModelConfig
from napari_attention_unet.core.orientation import reorient, reorient_spacing
from napari_attention_unet.core.progress import Progress, run_to_end
from napari_attention_unet.core.resampling import grid_zoom, isotropic_shape, resample
from napari_attention_unet.core.tiling import Tiling, default_overlap, predict_tiles, tile_starts
from napari_attention_unet.core.zoom import auto_zoom_applies, back_to_grid, enlarge, object_zoom

__all__ = [
    "PredictOptions",
    "Prediction",
    "Progress",
    "class_values",
    "check_tile_size",
    "check_volume_memory",
    "predict",
    "prepare_model",
    "run_to_end",
    "stack_intensity_range",
    "tile_starts",
]


@dataclass(frozen=True)
class PredictOptions:
    """How to predict; every field has a default that suits most images.

    ``axes`` names the image's axes (e.g. ``"YX"``, ``"YXC"``, ``"ZYX"``, ``"CZYX"``; guessed
    as napari does when None). ``tile_size`` fixes the tile edge; by default tiles of up to
    about 576 px (2D) or 96 px (3D) are fitted to the image. ``overlap`` and ``batch_size``
    default to what suits the tile and the device. ``precision`` is auto, fp32, bf16 or fp16.
    ``instances`` asks for instance labels (else a 0/1 mask); objects under ``min_size``
    pixels are dropped. A semantic model (``model.config.task == "semantic"``) ignores
    ``instances`` and ``min_size``: its labels are always class values. ``gates`` limits which
    gate maps are stitched (all when None, none with ``()``). ``spacing`` is the pixel size per
    spatial axis (a 3D model sees anisotropic volumes resampled to cubic voxels).
    ``keep_class_probabilities`` keeps every class's probability in the result. ``auto_zoom``
    lets a 2D instance model whose config says which object sizes it knows
    (``config.extra["small_objects"]``, the bundled model's does) look again at an image whose
    objects came out smaller than that, enlarged (see :func:`.instances.small_object_zoom`).
    ``zoom`` enlarges a 2D image by that factor before a 2D model instead (the outputs come back
    on the image's grid); the block engine sets it once for a whole large image.
    ``intensity_range`` (per channel, from :func:`stack_intensity_range`) normalises with the
    percentiles of a larger whole, e.g. the stack a plane comes from, instead of the image's own.
    ``channel`` keeps one channel of a multichannel image (e.g. the nuclear stain of a hyperstack).
    ``orientation`` is ``(the volume's, the model's)`` (e.g. ``("LAS", "RAS")``, :mod:`.orientation`): a
    volume stored otherwise than the model's training volumes is turned to theirs, and the outputs back.
    """

    axes: str | None = None
    tile_size: int | None = None
    overlap: int | None = None
    batch_size: int | None = None
    precision: str = "auto"
    instances: bool = True
    gates: tuple[str, ...] | None = None
    min_size: int = 16
    spacing: tuple[float, ...] | None = None
    keep_class_probabilities: bool = False
    auto_zoom: bool = True
    zoom: float | None = None
    intensity_range: tuple[tuple[float, float] | None, ...] | None = None
    channel: int | None = None
    orientation: tuple[str, str] | None = None

    def __post_init__(self) -> None:
        # Lists from callers become tuples, so options stay hashable and picklable as values.
        for name in ("gates", "spacing", "intensity_range", "orientation"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))
        if self.zoom is not None:  # 1 is no zoom: callers test ``options.zoom`` alone
            if not self.zoom > 0:
                raise ValueError(f"zoom must be a positive factor, not {self.zoom!r}")
            object.__setattr__(self, "zoom", None if self.zoom == 1 else float(self.zoom))
        if self.intensity_range is not None:
            ranges = tuple(None if r is None else (float(r[0]), float(r[1])) for r in self.intensity_range)
            object.__setattr__(self, "intensity_range", ranges)

    @classmethod
    def of(cls, options: PredictOptions | None = None, **settings) -> PredictOptions:
        """``options`` (or the defaults) with ``settings`` changed; unknown names are an error."""
        unknown = set(settings) - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(f"unknown prediction setting(s) {sorted(unknown)}")
        return replace(options or cls(), **settings)

    def for_model(self, config: ModelConfig) -> PredictOptions:
        """These options as a model of ``config`` follows them: no ``instances`` for a semantic model."""
        return replace(self, instances=False) if config.task == "semantic" and self.instances else self


@dataclass
class Prediction:
    """Result of :func:`predict`; every array has the image's spatial shape.

    ``labels`` are instance ids (0 = background), or a 0/1 mask when instances were
    not asked for; for a semantic model, the arg-max class values (uint8: output channel k is
    label value k). ``probability`` is the foreground probability, 1 - p(class 0). ``gate_maps`` maps
    gate names (``gate1`` finest ... coarsest) to float32 coefficients in [0, 1].
    """

    labels: np.ndarray
    probability: np.ndarray
    gate_maps: dict[str, np.ndarray]
    spatial_axes: str
    device: str
    class_probabilities: np.ndarray | None = field(default=None, repr=False)
    #: The factor a 2D image was enlarged by for its small objects (``auto_zoom``), or None.
    zoom: float | None = None
    #: Pixel values that were not numbers (NaN) or infinite: NaN and -inf predicted as the image's
    #: background, +inf as its brightest (:func:`core.images.normalize`). Callers say so.
    nan_values: int = 0


def default_batch_size(device: torch.device, spatial_dims: int) -> int:
    """Tiles per network call: one on the CPU (no gain from more), several on a GPU."""
    return 1 if device.type == "cpu" else (8 if spatial_dims == 2 else 2)


def stack_intensity_range(
    image: np.ndarray, in_channels: int, *, rgb: bool = False
) -> tuple[tuple[float, float] | None, ...]:
    """The per-channel ranges :func:`predict` normalises ``image`` (a stack, colour last when ``rgb``)
    with, for :attr:`PredictOptions.intensity_range`: a plane predicted with them is normalised as
    it is when the whole stack is predicted at once."""
    channels_first = np.moveaxis(np.asarray(image), -1, 0) if rgb else np.asarray(image)[np.newaxis]
    return intensity_ranges(network_channels(channels_first, in_channels))


def prepare_model(model: AttentionUNet, device: torch.device) -> AttentionUNet:
    """An inference copy: batch norm folded, on ``device``, channels-last (NHWC / NDHWC); on the CPU
    the decoder's joins are left out (:meth:`~.model.AttentionUNet.joined_for_cpu`)."""
    fused = model.fused_for_inference().to(device)
    if torch.device(device).type == "cpu":
        fused = fused.joined_for_cpu()
    return fused.to(memory_format=channels_last_format(model.config.spatial_dims))


def check_tile_size(tile_size: int | None, spatial_dims: int, overlap: int | None = None) -> None:
    """Refuse a tile too small to be more than its overlap (with the default overlap, 16 px a side at
    least: a 7 px tile made 343,906 tiles of a 520x696 image)."""
    smallest = 1 if overlap is not None else 32
    if tile_size is not None and tile_size < smallest:
        raise ValueError(
            f"a tile size of {tile_size} is too small: at least {smallest} "
            f"(leave it out for the default, {512 if spatial_dims == 2 else 96} for a {spatial_dims}D model)"
        )


def predict(
    model: AttentionUNet,
    image: np.ndarray,
    options: PredictOptions | None = None,
    *,
    device: str | torch.device = "auto",
    inference_model: AttentionUNet | None = None,
    **settings,
) -> Generator[Progress, None, Prediction]:
    """Predict ``image`` tile by tile; yields :class:`Progress`, returns :class:`Prediction`.

    ``options`` says how (see :class:`PredictOptions`); keyword ``settings`` change single
    fields of it, e.g. ``predict(model, image, axes="ZYX", gates=())``. A 3D image goes
    through a 3D model in 3D tiles, or through a 2D model slice by slice. By default tiles
    are fitted to the image so that little work is spent on overlaps, e.g. a 1024 px side
    takes two 544 px tiles rather than three of 512. ``inference_model`` reuses a copy made
    by :func:`prepare_model`.

    With ``spacing`` (e.g. a napari layer's ``scale``), a 3D model sees a volume whose z step
    is larger than its xy step (the usual light-sheet or confocal stack) resampled to cubic
    voxels, as it would have been trained; the outputs come back on the image's own grid.
    """
    options = PredictOptions.of(options, **settings)
    if options.orientation is not None:
        return (yield from _turned(model, image, options, device, inference_model))
    config = model.config
    dev = pick_device(device)
    # Axes not given: a first axis as long as the model's input channels (or with a channel to pick) is channels.
    axes = options.axes or guess_axes(np.shape(image), channels=config.in_channels, pick=options.channel is not None)
    channels_first, spatial_axes = to_channel_first(image, axes)
    if options.channel is not None:
        if not 0 <= options.channel < len(channels_first):
            raise ImageShapeError(
                f"channel {options.channel} is not in the image: it has {len(channels_first)} channel(s), "
                f"0..{len(channels_first) - 1} (axes {axes}{'' if options.axes else ', guessed: give --axes'})"
            )
        channels_first = channels_first[options.channel : options.channel + 1]
    if not np.issubdtype(channels_first.dtype, np.number) or np.issubdtype(channels_first.dtype, np.complexfloating):
        raise ImageShapeError(
            f"cannot predict on an image of dtype {channels_first.dtype}: use integer or float pixels"
        )
    if min(channels_first.shape[1:]) < 1:
        raise ImageShapeError(f"the image is empty (shape {image.shape})")
    ndim = len(spatial_axes)
    if ndim < config.spatial_dims:
        raise ImageShapeError(
            f"a {config.spatial_dims}D model needs a {config.spatial_dims}D image; this one is {ndim}D (spatial axes "
            f"{spatial_axes}, {channels_first.shape[0]} channel(s), shape {tuple(image.shape)})"
        )
    gate_names = list(config.gate_names if options.gates is None else options.gates)
    unknown = set(gate_names) - set(config.gate_names)
    if unknown:
        raise ValueError(f"unknown gate(s) {sorted(unknown)}; this model has {list(config.gate_names)}")

    net = inference_model if inference_model is not None else prepare_model(model, dev)
    amp = autocast_dtype(dev, options.precision)
    fit_tiles = options.tile_size is None
    check_tile_size(options.tile_size, config.spatial_dims, options.overlap)
    tile_size = options.tile_size or (512 if config.spatial_dims == 2 else 96)
    overlap = default_overlap(tile_size) if options.overlap is None else options.overlap
    batch_size = options.batch_size or default_batch_size(dev, config.spatial_dims)

    original_shape = channels_first.shape[1:]
    voxel = config.voxel_size  # a 3D instance model's own grid (core.resampling.grid_zoom)
    zoom = grid_zoom(options.spacing, ndim, voxel) if config.spatial_dims == 3 and ndim == 3 else None
    if config.spatial_dims == 3 and ndim == 3:  # a volume is predicted whole: refused before it takes the machine
        check_volume_memory(config, original_shape, options)
    x = normalize(
        network_channels(channels_first, config.in_channels),
        ranges=options.intensity_range,
        window=config.intensity_window,
    )
    if options.zoom and config.spatial_dims == 2 and ndim == 2:
        zoom = (options.zoom,) * 2
    grid = x if zoom is None else resample(x, isotropic_shape(original_shape, zoom), antialias=True)
    run = _Passes(net, dev, amp, batch_size, gate_names, tile_size, overlap, fit_tiles, config)
    probs, gate_maps = yield from run(grid, ndim > config.spatial_dims)

    # Instances are separated on the grid the model saw: a 3D model's cubic one (the image's
    # own grid is coarser along z), or a 2D image enlarged for its small objects.
    instances = None
    wants_instances = config.task != "semantic" and options.instances
    auto = auto_zoom_applies(config, instances=options.instances, auto_zoom=options.auto_zoom)
    if auto and zoom is None and ndim == 2:
        instances = probabilities_to_instances(probs, min_size=options.min_size)
        factor = object_zoom(instances, config)
        if factor is not None:
            zoom = (factor, factor)
            probs, gate_maps = yield from run(enlarge(x, factor), False)
            instances = None
    if zoom is not None and wants_instances:
        instances = probabilities_to_instances(probs, min_size=options.min_size)
    if zoom is not None:  # back to the image's grid
        probs, gate_maps, instances = back_to_grid(probs, gate_maps, instances, original_shape)
    foreground = 1.0 - probs[0]
    if config.task == "semantic":
        labels = class_values(probs, config)
    elif not options.instances:
        labels = (foreground > 0.5).astype(np.uint8)
    elif instances is not None:
        labels = instances
    elif ndim > config.spatial_dims:
        labels = _instances_per_plane(probs, options.min_size)
    else:
        labels = probabilities_to_instances(probs, min_size=options.min_size)
    yield Progress(run.total, run.total, "done")
    return Prediction(
        labels=labels,
        probability=foreground.astype(np.float32, copy=False),
        gate_maps=gate_maps,
        spatial_axes=spatial_axes,
        device=str(dev),
        class_probabilities=probs if options.keep_class_probabilities else None,
        zoom=None if zoom is None or config.spatial_dims == 3 else float(zoom[0]),
        nan_values=int(np.count_nonzero(~np.isfinite(image))) if np.issubdtype(image.dtype, np.floating) else 0,
    )


def check_volume_memory(config: ModelConfig, shape: tuple[int, ...], options: PredictOptions | None = None) -> None:
    """Raise :class:`~.memory.NotEnoughMemoryError` when predicting a volume of ``shape`` (Z, Y, X) whole with
    a 3D model of ``config`` would need more memory than is free; callers holding a lazy volume call it before
    loading it (the dock), :func:`predict` before its first copy."""
    options = options or PredictOptions()
    zoom = grid_zoom(options.spacing, 3, config.voxel_size)
    grid_shape = tuple(shape) if zoom is None else isotropic_shape(tuple(shape), zoom)
    gates = len(config.gate_names if options.gates is None else options.gates)
    sizes = {"channels": config.in_channels, "classes": config.out_channels, "gates": gates}
    sizes |= {"base_width": config.base_width, "tile": options.tile_size or 96}
    needed = volume_prediction_bytes(
        shape, grid_shape, instances=config.task != "semantic" and options.instances, **sizes
    )
    check_volume_fits(needed, shape, fixed=tile_activation_bytes(config.base_width, sizes["tile"]))


def _turned(model, image, options: PredictOptions, device, inference_model) -> Generator[Progress, None, Prediction]:
    """:func:`predict` on a volume turned from its orientation to the model's, the outputs turned back."""
    source, target = options.orientation
    pick = options.channel is not None
    axes = options.axes or guess_axes(np.shape(image), channels=model.config.in_channels, pick=pick)
    channels_first, spatial_axes = to_channel_first(image, axes)
    options = replace(options, orientation=None)
    if source == target or spatial_axes != "ZYX":  # a 2D image has no orientation to turn
        return (yield from predict(model, image, options, device=device, inference_model=inference_model))
    if model.config.spatial_dims == 3:  # said in the volume's own axis order, before it is turned
        check_volume_memory(model.config, channels_first.shape[1:], options)
    turned = replace(options, axes="CZYX", spacing=reorient_spacing(options.spacing, source, target))
    result = yield from predict(
        model, reorient(channels_first, source, target), turned, device=device, inference_model=inference_model
    )

    def back(array):
        return None if array is None else np.ascontiguousarray(reorient(array, target, source))

    return replace(
        result,
        labels=back(result.labels),
        probability=back(result.probability),
        gate_maps={name: back(m) for name, m in result.gate_maps.items()},
        class_probabilities=back(result.class_probabilities),
    )


def class_values(probs: np.ndarray, config: ModelConfig | None = None) -> np.ndarray:
    """A semantic model's labels: the most probable class's value (its output channel) per pixel,
    uint8; never 0 for a model whose channel 0 was never trained (``config.unlabelled_channel``)."""
    if config is not None and config.unlabelled_channel:
        return (np.argmax(probs[1:], axis=0) + 1).astype(np.uint8)
    return np.argmax(probs, axis=0).astype(np.uint8)


class _Passes:
    """Tiled passes of the network over a normalised image (C, ...), reporting progress as one run.

    ``total`` counts tiles (plus one step for post-processing) and may grow when a second
    pass is needed; a Z stack through a 2D model goes plane by plane.
    """

    def __init__(self, net, dev, amp, batch_size, gate_names, tile_size, overlap, fit_tiles, config):
        self.net, self.dev, self.amp, self.batch_size, self.gate_names = net, dev, amp, batch_size, gate_names
        self.tile_size, self.overlap, self.fit_tiles, self.config = tile_size, overlap, fit_tiles, config
        self.done, self.total = 0, None

    def __call__(self, x: np.ndarray, stack: bool) -> Generator[Progress, None, tuple]:
        planes = [x[:, z] for z in range(x.shape[1])] if stack else [x]
        tiling = Tiling(
            planes[0].shape[1:], self.tile_size, self.overlap, self.config.size_multiple, fit=self.fit_tiles
        )
        # The first pass sets the total; a later one (an enlarged image) extends it by its own tiles.
        self.total = max(self.total or 0, self.done + len(planes) * len(tiling.tiles) + 1)
        results = []
        for plane in planes:
            stitched = yield from predict_tiles(
                self.net, plane, tiling, self.dev, self.amp, self.batch_size, self.gate_names, self.done, self.total
            )
            self.done += len(tiling.tiles)
            results.append(stitched)
        yield Progress(self.done, self.total, "post-processing")
        if not stack:
            return results[0]
        probs = np.stack([r[0] for r in results], axis=1)
        return probs, {name: np.stack([r[1][name] for r in results]) for name in self.gate_names}


def _instances_per_plane(probs: np.ndarray, min_size: int) -> np.ndarray:
    """Instances plane by plane with ids unique across the stack."""
    out = np.zeros(probs.shape[1:], dtype=np.int32)
    offset = 0
    for z in range(probs.shape[1]):
        plane = probabilities_to_instances(probs[:, z], min_size=min_size)
        out[z] = np.where(plane > 0, plane + offset, 0)
        offset = max(offset, int(out[z].max()))
    return out
