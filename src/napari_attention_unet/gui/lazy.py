"""Large and lazy images in the viewer: block by block into zarr, the region on screen first.

An Image layer backed by dask or zarr (any data that is not a numpy array), a multiscale
(pyramid) layer, or an in-memory image with planes over ``large_data.files.LARGE_PIXELS`` is never
read whole. Its full-resolution level is cut into blocks (``large_data.blocks``); the blocks
on screen go first, nearest the centre of the view first, then the others by distance.
Every block is written into zarr arrays (:mod:`.scratch`) as soon as it is done; the widget
creates the result layers on those arrays before the run starts and refreshes them on the
main thread whenever :meth:`LazyRun.steps` yields a :class:`BlockProgress` with ``refresh``.

While blocks arrive, an object cut by a block edge carries one id per block; once the
blocks of a plane are all done (or the run is cancelled) they are stitched
(:class:`~napari_attention_unet.large_data.stitching.Stitcher`) and every block is relabelled, so that each object has
one id, the same ids the in-memory block engine gives. Cancel (:meth:`LazyRun.cancel`)
stops within one tile and keeps, and stitches, the blocks already done.

No Qt here; napari objects only as arguments (the viewer and layer in :func:`view_box`).
"""

from __future__ import annotations

import threading
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_attention_unet.core.images import ImageShapeError
from napari_attention_unet.core.predict import PredictOptions, Progress
from napari_attention_unet.gui.layer_style import display_range
from napari_attention_unet.gui.session import PROGRESS_STEPS
from napari_attention_unet.large_data.block_geometry import Block, BlockPlan, plan_blocks, zoomed_plan
from napari_attention_unet.large_data.blocks import (
    Normalization,
    global_normalization,
    predict_block_steps,
    probe_zoom,
)
from napari_attention_unet.large_data.files import LARGE_PIXELS
from napari_attention_unet.large_data.stitching import Stitcher

if TYPE_CHECKING:
    from napari_attention_unet.gui.scratch import LazyOutputs, ScratchStores
    from napari_attention_unet.gui.session import Session

__all__ = [
    "BlockProgress",
    "LazyImage",
    "LazyOutcome",
    "LazyRun",
    "blocks_for_message",
    "default_planes",
    "uses_blocks",
    "view_box",
    "view_first",
]

#: Block edge in the viewer: about a second per block for the bundled model on a laptop CPU.
LAZY_BLOCK_SIZE = 1024
HALO = 64
#: Normalisation samples a level with at least this many pixels (a coarse level of a pyramid).
NORMALIZATION_SAMPLES = 2_000_000
#: Values of each gate map sampled per block for its contrast limits (a 1024² block: every 256th).
GATE_SAMPLES = 4096

Box = tuple[tuple[float, float], tuple[float, float]]  # ((y0, y1), (x0, x1)) in full-resolution pixels


def uses_blocks(layer: Any, model_dims: int) -> bool:
    """True when ``layer`` goes block by block: lazy data, a pyramid, or a large plane (2D models only)."""
    if model_dims != 2:
        return False
    if layer.multiscale or not isinstance(layer.data, np.ndarray):
        return True
    ny, nx = layer.data.shape[-3:-1] if layer.rgb else layer.data.shape[-2:]
    return ny * nx > LARGE_PIXELS


class _Plane:
    """One plane (``index`` over the leading axes) of an array-like, sliced lazily."""

    def __init__(self, array: Any, index: tuple[int, ...]) -> None:
        self.array, self.index = array, tuple(index)
        self.shape = tuple(array.shape[len(self.index) :])
        self.dtype = array.dtype
        self.ndim = len(self.shape)

    def __getitem__(self, key):
        return self.array[self.index + (key if isinstance(key, tuple) else (key,))]


@dataclass(frozen=True)
class LazyImage:
    """The pixels of an image layer, left where they are: ``levels`` finest first (one if not a pyramid)."""

    levels: tuple
    rgb: bool = False
    name: str = "image"

    @classmethod
    def from_layer(cls, layer: Any) -> LazyImage:
        levels = tuple(layer.data[k] for k in range(len(layer.data))) if layer.multiscale else (layer.data,)
        return cls(levels, bool(layer.rgb), layer.name)

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        shape = tuple(int(n) for n in self.levels[0].shape)
        return shape[:-1] if self.rgb else shape

    @property
    def leading_shape(self) -> tuple[int, ...]:
        return self.spatial_shape[:-2]

    @property
    def axes(self) -> str:
        return "YXC" if self.rgb else "YX"

    def plane(self, index: tuple[int, ...], level: int = 0) -> Any:
        array = self.levels[level]
        return _Plane(array, index) if index else array


def view_box(viewer: Any, layer: Any) -> Box | None:
    """The part of ``layer``'s full-resolution plane on screen, in pixels, or None if it cannot be told.

    From napari's camera: the canvas (``viewer.canvas.size``, height and width in screen
    pixels) spans ``size / zoom`` world units around ``camera.center``; its corners go to the
    layer's data coordinates through the layer's own transform (scale, translate, affine).
    Without a canvas size (older napari) the box is the centre point. None in 3D display,
    or when the layer's last two axes are not the ones on screen.
    """
    canvas_size = getattr(getattr(viewer, "canvas", None), "size", None)
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera  # napari >= 0.9 : older
    ndim = viewer.dims.ndim
    if viewer.dims.ndisplay != 2 or tuple(viewer.dims.displayed) != (ndim - 2, ndim - 1) or layer.ndim < 2:
        return None
    centre = np.asarray(camera.center[-2:], dtype=float)
    half = np.zeros(2) if canvas_size is None else np.asarray(canvas_size[-2:], float) / camera.zoom / 2
    point = np.asarray(viewer.dims.point, dtype=float)
    corners = []
    for dy in (-1, 1):
        for dx in (-1, 1):
            world = point.copy()
            world[-2:] = centre + half * (dy, dx)
            corners.append(np.asarray(layer.world_to_data(world[-layer.ndim :]))[-2:])
    corners = np.array(corners)
    low, high = corners.min(axis=0), corners.max(axis=0)
    return (float(low[0]), float(high[0])), (float(low[1]), float(high[1]))


def view_first(plan: BlockPlan, box: Box | None) -> list[Block]:
    """The plan's blocks, those meeting ``box`` first; nearest the box's centre first within each group."""
    if box is None:
        return plan.blocks
    (y0, y1), (x0, x1) = box
    cy, cx = (y0 + y1) / 2, (x0 + x1) / 2

    def key(block: Block):
        (a0, a1), (b0, b1) = block.core
        meets = a0 <= y1 and y0 < a1 and b0 <= x1 and x0 < b1
        return not meets, ((a0 + a1) / 2 - cy) ** 2 + ((b0 + b1) / 2 - cx) ** 2

    return sorted(plan.blocks, key=key)


@dataclass(frozen=True)
class BlockProgress(Progress):
    """Progress of a :class:`LazyRun`; ``refresh`` says new pixels are in the outputs: refresh the layers."""

    refresh: bool = False
    blocks_done: int = 0
    blocks_total: int = 0

    def describe(self, image_name: str) -> str:
        """The status line for this step."""
        if self.stage == "normalising":
            return f"Measuring the contrast of {image_name}…"
        if self.stage == "joining blocks":
            return "Joining the objects cut by block edges…"
        return (
            f"Predicting {image_name}: {self.blocks_done} of {self.blocks_total} blocks done, "
            "the region on screen first…"
        )


@dataclass
class LazyOutcome:
    """What a :class:`LazyRun` did; the results themselves are in its outputs (and the layers)."""

    n_objects: int
    blocks_done: int
    blocks_total: int
    cancelled: bool
    device: str
    model_name: str
    semantic: bool
    store: Path
    zoom: float | None = None  # the blocks were enlarged this much for small objects (blocks.probe_zoom)


class LazyRun:
    """One block-by-block prediction of a :class:`LazyImage` into zarr outputs.

    Made on the main thread: plans the blocks, orders them (``view``: the :func:`view_box`
    on screen) and creates the empty outputs in ``stores``, so that the layers can be made
    on them at once. :meth:`steps` is the generator a worker drives. ``planes`` are the
    leading indices to predict (``[()]`` for a 2D image), the one on screen first.
    """

    def __init__(
        self,
        session: Session,
        image: LazyImage,
        stores: ScratchStores,
        *,
        planes: Sequence[tuple[int, ...]] = ((),),
        view: Box | None = None,
        options: PredictOptions | None = None,
        block_size: int = LAZY_BLOCK_SIZE,
        halo: int = HALO,
        **settings,
    ) -> None:
        model = session.model
        if model is None or model.config.spatial_dims != 2:
            raise ImageShapeError("images are predicted block by block with a 2D model only")
        self.session, self.image = session, image
        self.planes = [tuple(int(i) for i in p) for p in planes]
        plane_shape = image.levels[0].shape[len(image.leading_shape) :]
        self.plan = plan_blocks(plane_shape, image.axes, block_size=block_size, halo=halo)
        self.order = view_first(self.plan, view)
        options = PredictOptions.of(options, **settings).for_model(model.config)  # semantic: class values
        self.gate_names = tuple(model.config.gate_names if options.gates is None else options.gates)
        self.instances = options.instances
        self.options = PredictOptions.of(options, gates=self.gate_names)
        self.model_name = session.model_info.name if session.model_info else "model"
        self.outputs: LazyOutputs = stores.create(
            image.spatial_shape, block_size, self.gate_names, instances=self.instances
        )
        self._cancel = threading.Event()
        #: Per gate, a strided sample of the values written so far (:meth:`display_ranges`); the worker appends.
        self.gate_samples: dict[str, list[np.ndarray]] = {gate: [] for gate in self.gate_names}

    def display_ranges(self) -> dict[str, tuple[float, float]]:
        """Per gate, the contrast limits of the blocks written so far (:func:`.layer_style.display_range`)."""
        return {gate: display_range(np.concatenate(parts)) for gate, parts in list(self.gate_samples.items()) if parts}

    def cancel(self) -> None:
        """Stop at the next tile; the blocks done so far are stitched and kept."""
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def normalization(self, plane: tuple[int, ...]) -> Normalization:
        """Percentiles over the whole plane, from the coarsest level that still has enough pixels."""
        level = 0
        for k, array in enumerate(self.image.levels):
            ny, nx = array.shape[len(plane) : len(plane) + 2]
            if ny * nx >= NORMALIZATION_SAMPLES:
                level = k
        source = self.image.plane(plane, level)
        level_plan = plan_blocks(source.shape, self.image.axes, block_size=self.plan.block_size)
        return global_normalization(source, level_plan, self.session.model.config.in_channels)

    def steps(self) -> Generator[BlockProgress, None, LazyOutcome]:
        """Predict the planes block by block; yields :class:`BlockProgress`, returns :class:`LazyOutcome`."""
        net = self.session.inference_model()
        model, device = self.session.model, self.session.device
        multiple, zooms = model.config.size_multiple, []
        tiles = dict(
            zip(
                (b.index for b in self.plan.blocks),
                self.plan.tiles_per_block(self.options.tile_size, self.options.overlap, multiple),
            )
        )
        per_plane = 1 + sum(tiles.values()) + (len(self.order) if self.instances else 0)
        total, done = per_plane * len(self.planes), 0

        def report(units: int, stage: str = "predicting", refresh: bool = False) -> BlockProgress:
            fraction = round(PROGRESS_STEPS * units / total)
            return BlockProgress(fraction, PROGRESS_STEPS, stage, refresh, blocks_done, blocks_total)

        first_id, blocks_done, blocks_total = 0, 0, len(self.order) * len(self.planes)
        for plane in self.planes:
            if self.cancelled:
                break
            yield report(done, "normalising")
            normalization = self.normalization(plane)
            source = self.image.plane(plane)
            # Small objects: the plane's blocks all enlarged alike, with the halo of the in-memory
            # engine; the blocks stay as the outputs were made (at most 3x: a 1024 px block then has
            # about twice the working set of a 2048 px one as it is).
            zoom = probe_zoom(source, self.plan, model, normalization, self.options, device=device, inference_model=net)
            plan = zoomed_plan(self.plan, zoom, shrink_blocks=False)
            options, plane_tiles = PredictOptions.of(self.options, zoom=zoom), tiles
            if zoom:
                counts = plan.tiles_per_block(self.options.tile_size, self.options.overlap, multiple, zoom)
                plane_tiles = dict(zip((b.index for b in plan.blocks), counts))
                total += sum(plane_tiles.values()) - sum(tiles.values())
                zooms.append(zoom)
            done += 1
            stitcher, offsets, next_id = Stitcher(plan), {}, first_id
            for block in (plan.block(b.index) for b in self.order):
                steps = predict_block_steps(
                    source, block, plan, model, normalization, options, device=device, inference_model=net
                )
                result = None
                while not self.cancelled:
                    try:
                        step = next(steps)
                    except StopIteration as stop:
                        result = stop.value
                        break
                    yield report(done + step.done)
                if result is None:
                    steps.close()
                    break
                done += plane_tiles[block.index]
                labels = result.labels
                if self.instances:  # provisional ids, unique in the plane, until the plane is stitched
                    offsets[block.index] = next_id
                    labels = np.where(labels > 0, labels.astype(np.int64) + next_id, 0)
                    next_id += result.links.n_core
                    stitcher.add(result.links)
                self.outputs.write_block(plane, block, labels, result.gate_maps)
                for gate, values in zip(self.gate_names, result.gate_maps):
                    flat = values.reshape(-1)
                    self.gate_samples[gate].append(flat[:: max(1, flat.size // GATE_SAMPLES)].copy())
                blocks_done += 1
                yield report(done, refresh=True)
            if self.instances and offsets:
                first_id = yield from self._join(
                    plane, stitcher, offsets, first_id, lambda n, done=done: report(done + n, "joining blocks")
                )
                done += len(self.order)
        yield report(done if self.cancelled else total, "done", refresh=True)  # cancelled: the bar stays where it was
        return LazyOutcome(
            n_objects=first_id,
            blocks_done=blocks_done,
            blocks_total=blocks_total,
            cancelled=self.cancelled,
            device=str(self.session.device),
            model_name=self.model_name,
            semantic=not self.instances,
            store=self.outputs.path,
            zoom=max(zooms, default=None),
        )

    def _join(self, plane, stitcher: Stitcher, offsets: dict, first_id: int, report):
        """Stitch a plane's blocks (those done) and relabel them; returns the next free id."""
        yield report(0)
        stitching = stitcher.finish(partial=len(offsets) < len(self.order))
        for n, (index, offset) in enumerate(offsets.items(), start=1):
            lut = stitching.lut(index).astype(np.int64)
            lut[1:] += first_id

            def to_global(ids: np.ndarray, lut=lut, offset=offset) -> np.ndarray:
                ids = ids.astype(np.int64)
                return np.where(ids > 0, lut[np.clip(ids - offset, 0, len(lut) - 1)], 0)

            self.outputs.map_labels(plane, self.plan.block(index), to_global)
            yield report(n)
        return first_id + stitching.n_objects


def blocks_for_message(outcome: LazyOutcome) -> str:
    """'5 of 16 blocks' for the status line."""
    return f"{outcome.blocks_done} of {outcome.blocks_total} block{'s' if outcome.blocks_total != 1 else ''}"


def default_planes(leading_shape: Sequence[int], current: tuple[int, ...], only_current: bool) -> list[tuple[int, ...]]:
    """The planes to predict: the current one, or all of them with the current one first."""
    if not leading_shape:
        return [()]
    if only_current:
        return [tuple(current)]
    rest = [p for p in np.ndindex(*leading_shape) if p != tuple(current)]
    return [tuple(current), *rest]
