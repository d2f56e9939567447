"""Large and lazy images (_lazy, _scratch): view-first order, zarr outputs, stitching; headless and in napari."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_attention_unet.core.predict import run_to_end
from napari_attention_unet.gui import lazy as _lazy
from napari_attention_unet.gui import scratch as _scratch
from napari_attention_unet.gui.layer_style import display_range
from napari_attention_unet.gui.layers import MARKER
from napari_attention_unet.gui.session import Session
from napari_attention_unet.large_data.block_geometry import plan_blocks
from napari_attention_unet.large_data.blocks import predict_blocks
from napari_attention_unet.large_data.stitching import Stitcher

BLOCK = 128


class ReadLog:
    """An array-like over a numpy array that records every read: (thread name, region)."""

    def __init__(self, array: np.ndarray, hook=None) -> None:
        self.array, self.hook = array, hook
        self.shape, self.dtype, self.ndim, self.size = array.shape, array.dtype, array.ndim, array.size
        self.reads: list[tuple[str, tuple]] = []

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        region = tuple(range(n)[k] if isinstance(k, slice) else k for k, n in zip(key, self.shape))
        self.reads.append((threading.current_thread().name, region))
        if self.hook is not None:
            self.hook(region)
        return self.array[key]

    def __array__(self, dtype=None, copy=None):
        self.reads.append((threading.current_thread().name, "whole array"))
        return self.array if dtype is None else self.array.astype(dtype)

    def whole_reads(self, but_main: bool = False) -> list:
        """Reads that took every pixel of the array (``but_main``: by threads other than the main one)."""
        main = threading.main_thread().name
        return [
            r for t, r in self.reads if not (but_main and t == main) and (r == "whole array" or _covers(r, self.shape))
        ]

    def block_reads(self, plan, but_main: bool = False) -> list[tuple[int, int]]:
        """Indices of the blocks whose outer region was read, in the order of reading."""
        outers = {_outer(block): block.index for block in plan.blocks}
        main = threading.main_thread().name
        return [outers[r[:2]] for t, r in self.reads if not (but_main and t == main) and r[:2] in outers]


def _outer(block) -> tuple[range, range]:
    return tuple(range(a, b) for a, b in block.outer)


def _covers(region, shape) -> bool:
    return all(isinstance(r, range) and r.step == 1 and len(r) == n for r, n in zip(region, shape))


def blob_model(image: np.ndarray):
    """A tiny random network whose interior class covers about a third of ``image`` in blobs.

    Batch-norm statistics are taken from the image and the interior bias is set at a
    quantile of its logit margin, so that blocks have real objects to stitch.
    """
    from napari_attention_unet.core.images import normalize
    from napari_attention_unet.core.model import AttentionUNet, ModelConfig

    torch.manual_seed(0)
    model = AttentionUNet(ModelConfig(base_width=4, depth=3))
    x = torch.from_numpy(normalize(image[np.newaxis])).expand(3, -1, -1)[np.newaxis].contiguous()
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = 1.0
    with torch.no_grad():
        model.train()(x)
        logits = model.eval()(x)[0][0].numpy()
        margin = logits[1] - np.maximum(logits[0], logits[2])
        model.head.bias[1] -= float(np.quantile(margin, 0.7))
    return model


@pytest.fixture(scope="module")
def mosaic():
    """384 x 384 uint8: the nuclei sample and flipped copies, so that objects cross block edges."""
    from napari_attention_unet.gui.sample_data import nuclei_sample

    s = nuclei_sample()[0][0]
    return np.block([[s, np.fliplr(s)], [np.flipud(s), s.T]])[:384, :384].copy()


@pytest.fixture(scope="module")
def model(mosaic):
    return blob_model(mosaic)


@pytest.fixture(scope="module")
def reference(model, mosaic):
    """The in-memory block engine on the numpy image: what every lazy run must reproduce."""
    return run_to_end(predict_blocks(model, mosaic, block_size=BLOCK, device="cpu"))


@pytest.fixture
def session(model, model_home):
    session = Session(device="cpu")
    from napari_attention_unet.core.weights import ModelInfo

    session.set_model(model, ModelInfo("blobs", model_home / "models" / "blobs.safetensors", False))
    return session


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True when ``a`` and ``b`` split the pixels into the same objects (ids may differ)."""
    if not np.array_equal(a > 0, b > 0):
        return False
    pairs = np.unique(np.stack([a[a > 0], b[b > 0]]), axis=1)
    return len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]


def test_uses_blocks_for_lazy_pyramid_and_large_images():
    import dask.array as da

    class Layer:
        def __init__(self, data, multiscale=False, rgb=False):
            self.data, self.multiscale, self.rgb = data, multiscale, rgb

    small = np.zeros((256, 256), np.uint8)
    assert not _lazy.uses_blocks(Layer(small), 2)
    assert _lazy.uses_blocks(Layer(da.from_array(small)), 2)
    assert _lazy.uses_blocks(Layer([small, small[::2, ::2]], multiscale=True), 2)
    huge = np.broadcast_to(np.uint8(0), (3, 5000, 5000))  # an in-memory stack of large planes (no memory used)
    assert _lazy.uses_blocks(Layer(huge), 2)
    assert not _lazy.uses_blocks(Layer(np.broadcast_to(np.uint8(0), (5000, 5000, 3)), rgb=True), 3)


def test_blocks_in_view_come_first_nearest_the_centre_first():
    plan = plan_blocks((512, 512), block_size=BLOCK)
    order = [b.index for b in _lazy.view_first(plan, ((300.0, 420.0), (20.0, 140.0)))]
    assert sorted(order) == sorted(b.index for b in plan.blocks)
    assert set(order[:4]) == {(2, 0), (2, 1), (3, 0), (3, 1)}  # the four blocks the box meets
    assert order[0] == (2, 0)  # the one nearest the box's centre (360, 80)
    assert [b.index for b in _lazy.view_first(plan, None)] == [b.index for b in plan.blocks]


def test_view_box_follows_camera_and_layer_transform():
    from napari.components import ViewerModel

    viewer = ViewerModel()
    layer = viewer.add_image(np.zeros((400, 600), np.uint8), scale=(2.0, 2.0), translate=(100.0, 0.0))
    viewer.scene.camera.center = (500.0, 300.0)  # world (y, x)
    viewer.scene.camera.zoom = 4.0  # screen pixels per world unit
    viewer.canvas.size = (200, 400)  # screen pixels (height, width), as the Qt canvas sets it
    (y0, y1), (x0, x1) = _lazy.view_box(viewer, layer)
    # 200 x 400 screen px = 50 x 100 world units around the centre = 25 x 50 data px around (200, 150).
    assert (y0, y1, x0, x1) == pytest.approx((187.5, 212.5, 125.0, 175.0))
    viewer.dims.ndisplay = 3
    assert _lazy.view_box(viewer, layer) is None


def test_lazy_run_matches_in_memory_engine_and_reads_view_first(session, mosaic, reference, model_home):
    source = ReadLog(mosaic)
    stores = _scratch.ScratchStores()
    view = ((300.0, 330.0), (20.0, 60.0))  # inside block (2, 0)
    run = _lazy.LazyRun(session, _lazy.LazyImage((source,)), stores, view=view, block_size=BLOCK)
    assert run.outputs.path.parent == model_home / "scratch" and run.outputs.path.is_dir()
    assert not np.asarray(run.outputs.labels[0]).any()  # empty until the worker writes

    steps = run.steps()
    refreshes = []
    try:
        while True:
            progress = next(steps)
            assert 0 <= progress.done <= progress.total
            if progress.refresh:
                refreshes.append(progress.done)
    except StopIteration as stop:
        outcome = stop.value
    assert not outcome.cancelled and outcome.blocks_done == outcome.blocks_total == 9
    assert len(refreshes) == 10  # once per block, and at the end

    order = source.block_reads(run.plan)
    assert order[0] == (2, 0) and len(order) == 9
    assert not source.whole_reads()

    labels = np.asarray(run.outputs.labels[0])
    assert reference.n_objects > 50 and outcome.n_objects == reference.n_objects
    np.testing.assert_array_equal(labels, reference.labels)  # same stitching, same numbering
    for k, arrays in enumerate(run.outputs.gates.values()):
        np.testing.assert_array_equal(np.asarray(arrays[0]), reference.attention[k])


def test_lazy_run_enlarges_small_objects_as_the_in_memory_engine_does(model, mosaic, model_home):
    """A model whose config says its objects are larger than this image's: every block of the plane is
    enlarged by the one factor the probe decides, exactly as the in-memory engine does."""
    import copy

    from napari_attention_unet.core.weights import ModelInfo

    knows = copy.deepcopy(model)
    knows.config.extra["small_objects"] = {"below": 1e6, "to": 1e7, "max_zoom": 1.5}
    reference = run_to_end(predict_blocks(knows, mosaic, block_size=BLOCK, device="cpu"))
    plain = run_to_end(predict_blocks(knows, mosaic, block_size=BLOCK, device="cpu", auto_zoom=False))
    assert reference.zoom == 1.5 and plain.zoom is None and reference.plan.block_size == BLOCK
    assert not np.array_equal(reference.labels, plain.labels)
    session = Session(device="cpu")
    session.set_model(knows, ModelInfo("knows", model_home / "models" / "knows.safetensors", False))
    run = _lazy.LazyRun(session, _lazy.LazyImage((mosaic,)), _scratch.ScratchStores(), block_size=BLOCK)
    steps, reports = run.steps(), []
    try:
        while True:
            reports.append(next(steps))
    except StopIteration as stop:
        outcome = stop.value
    assert outcome.zoom == 1.5 and outcome.n_objects == reference.n_objects
    np.testing.assert_array_equal(np.asarray(run.outputs.labels[0]), reference.labels)
    assert reports[-1].done == reports[-1].total and all(r.done <= r.total for r in reports)


def test_cancel_keeps_the_blocks_done_stitched(session, mosaic, reference):
    run = _lazy.LazyRun(session, _lazy.LazyImage((mosaic,)), _scratch.ScratchStores(), block_size=BLOCK)
    steps = run.steps()
    written = 0
    try:
        while True:
            if next(steps).refresh:
                written += 1
                if written == 4:
                    run.cancel()
    except StopIteration as stop:
        outcome = stop.value
    assert outcome.cancelled and outcome.blocks_done == 4 and outcome.blocks_total == 9
    done = [b for b in run.order[:4]]
    region = np.zeros(mosaic.shape, bool)
    for block in done:
        region[block.core_slices] = True
    labels = np.asarray(run.outputs.labels[0])
    gate = np.asarray(run.outputs.gates["gate1"][0])
    assert not labels[~region].any() and not gate[~region].any()
    np.testing.assert_array_equal(gate[region], reference.attention[0][region])
    # Objects cut by the faces between the blocks done are joined, as in the full run.
    assert same_partition(labels[region], reference.labels[region])
    assert np.array_equal(np.unique(labels), np.arange(outcome.n_objects + 1))


def test_stack_planes_current_first_with_ids_unique_across_planes(session, mosaic, reference):
    import dask.array as da

    stack = da.from_array(np.stack([mosaic[::-1], mosaic]), chunks=(1, 192, 192))
    image = _lazy.LazyImage((stack,))
    planes = _lazy.default_planes(image.leading_shape, (1,), only_current=False)
    assert planes == [(1,), (0,)] and _lazy.default_planes((2,), (1,), True) == [(1,)]
    run = _lazy.LazyRun(session, image, _scratch.ScratchStores(), planes=planes, block_size=BLOCK)
    outcome = run_to_end(run.steps())
    labels = np.asarray(run.outputs.labels[0])
    assert labels.shape == (2, 384, 384)
    np.testing.assert_array_equal(labels[1], reference.labels)  # the current plane is numbered first
    assert labels[0].min(initial=0) == 0 and labels[0][labels[0] > 0].min() == reference.n_objects + 1
    assert outcome.n_objects == labels.max() and outcome.blocks_total == 18


def test_pyramid_levels_subsample_the_full_resolution(session, mosaic, reference, monkeypatch):
    monkeypatch.setattr(_scratch, "PYRAMID_ABOVE", 256)
    monkeypatch.setattr(_scratch, "PYRAMID_TOP", 100)
    assert _scratch.pyramid_levels((384, 384), BLOCK) == 3  # 384 -> 192 -> 96
    assert _scratch.pyramid_levels((384, 384), 18) == 2  # a level must divide the block
    levels = (mosaic, mosaic[::2, ::2].copy())
    run = _lazy.LazyRun(session, _lazy.LazyImage(levels), _scratch.ScratchStores(), block_size=BLOCK)
    run_to_end(run.steps())
    labels = [np.asarray(a) for a in run.outputs.labels]
    assert [a.shape for a in labels] == [(384, 384), (192, 192), (96, 96)]
    np.testing.assert_array_equal(labels[0], reference.labels)
    for k in (1, 2):
        np.testing.assert_array_equal(labels[k], reference.labels[:: 2**k, :: 2**k])
        gate = np.asarray(run.outputs.gates["gate2"][k])
        np.testing.assert_array_equal(gate, reference.attention[1][:: 2**k, :: 2**k])


def test_stores_are_released_when_unused_and_pruned_when_their_process_is_gone(model_home):
    stores = _scratch.ScratchStores()
    a = stores.create((64, 64), 64, ["gate1"]).path
    b = stores.create((64, 64), 64, ["gate1"]).path
    assert a.is_dir() and b.is_dir() and a != b
    assert stores.release_unused([str(b)]) == [a]
    assert not a.exists() and b.is_dir()
    stale = model_home / "scratch" / "999999999-deadbeef.zarr"
    stale.mkdir()
    stores.create((64, 64), 64, [])  # making a store prunes those of dead processes
    assert not stale.exists() and b.is_dir()


def test_partial_stitching_numbers_the_blocks_added():
    from napari_attention_unet.large_data.stitching import BlockLinks

    plan = plan_blocks((256, 256), block_size=BLOCK, halo=16)
    stitcher = Stitcher(plan)
    stitcher.add(BlockLinks((1, 1), n_core=2, n_labels=2))
    stitcher.add(BlockLinks((0, 0), n_core=3, n_labels=3))
    with pytest.raises(ValueError, match="missing"):
        stitcher.finish()
    stitching = stitcher.finish(partial=True)
    assert stitching.n_objects == 5 and set(stitching.luts) == {(0, 0), (1, 1)}
    assert list(stitching.lut((0, 0))) == [0, 1, 2, 3] and list(stitching.lut((1, 1))) == [0, 4, 5]


# --------------------------------------------------------------------------- in a real viewer, through the widget

TIMEOUT_MS = 300_000


@pytest.fixture
def notes(notes_of):
    """Messages the widget sends to napari's notifications, by kind."""
    from napari_attention_unet.gui import widget as _widget

    return notes_of(_widget)


@pytest.fixture
def lazy_widget(plugin_widget, model, model_home):
    """The widget with the blob model saved and chosen, and blocks of :data:`BLOCK` px."""
    from napari_attention_unet.core.weights import save_model

    viewer, widget = plugin_widget
    save_model(model, model_home / "models" / "blobs")
    widget._refresh.changed.emit(True)
    widget.use_model("blobs")
    widget.block_size = BLOCK
    return viewer, widget


@pytest.fixture
def synchronous_dask():
    """dask computes in the calling thread, so that a read can be told to be the worker's."""
    import dask

    with dask.config.set(scheduler="synchronous"):
        yield


def look_at_block_2_0(viewer) -> None:
    """Zoom in on block (2, 0), rows 256-384 and columns 0-128 (world = data pixels here)."""
    viewer.scene.camera.center = (320.0, 64.0)
    viewer.scene.camera.zoom = 8.0


def our_layers(viewer, name: str) -> list:
    return [viewer.layers[f"{name} masks"], viewer.layers[f"{name} attention gate1"]]


def test_dask_layer_predicted_view_first_into_zarr_layers(
    qtbot, lazy_widget, mosaic, reference, notes, synchronous_dask, model_home
):
    import dask.array as da

    viewer, widget = lazy_widget
    plan = plan_blocks(mosaic.shape, block_size=BLOCK)
    seen = {}

    def on_read(region):  # in the worker: when the last block is read, what do the layers hold?
        if threading.current_thread() is not threading.main_thread() and region == _outer(plan.block((0, 2))):
            gate = viewer.layers["lazy attention gate1"].data
            seen["view"], seen["last"] = np.asarray(gate[256:384, 0:128]), np.asarray(gate[0:128, 256:384])

    source = ReadLog(mosaic, hook=on_read)
    viewer.add_image(da.from_array(source, chunks=mosaic.shape), name="lazy")
    look_at_block_2_0(viewer)
    widget.predict()
    assert widget.is_running and widget._worker is None  # the layers go in one per event-loop turn, then the worker
    qtbot.waitUntil(lambda: widget._worker is not None or not widget.is_running, timeout=TIMEOUT_MS)
    masks, gate = our_layers(viewer, "lazy")  # made before the worker starts, on empty zarr arrays
    assert not isinstance(masks.data, np.ndarray) and masks.data.shape == mosaic.shape and not masks.editable
    qtbot.waitUntil(lambda: not widget.is_running, timeout=TIMEOUT_MS)

    assert not notes["error"]
    assert not source.whole_reads(but_main=True)  # the worker never read the whole array
    order = source.block_reads(plan, but_main=True)
    assert order[0] == (2, 0) and order[-1] == (0, 2) and sorted(order) == sorted(b.index for b in plan.blocks)
    assert seen["view"].all() and not seen["last"].any()  # the block on screen was shown before the last one
    np.testing.assert_array_equal(np.asarray(masks.data), reference.labels)
    np.testing.assert_array_equal(np.asarray(gate.data), reference.attention[0])
    # Drawn from its median to its top as a map predicted whole is (from its blocks' samples), not 0..1
    whole = display_range(reference.attention[0])
    assert whole != (0.0, 1.0) and np.allclose(gate.contrast_limits, whole, atol=0.02)
    assert f"Done: {reference.n_objects} object(s)" in widget._status.value and "9 of 9 blocks" in widget._status.value
    assert widget._progress.value == widget._progress.max and masks.editable
    np.testing.assert_allclose(masks.extent.world, viewer.layers["lazy"].extent.world)
    # As for an image in memory: the maps under the masks (an additive map over them tints every mask), masks active
    assert viewer.layers.index(masks) > viewer.layers.index(gate) and viewer.layers.selection.active is masks

    store = Path(masks.metadata[MARKER]["store"])
    assert store.is_dir() and store.parent == model_home / "scratch"
    for layer in [layer for layer in viewer.layers if layer.name.startswith("lazy ")]:
        viewer.layers.remove(layer)
    assert not store.exists()  # no layer reads it any more


def test_block_layers_go_in_one_per_turn_then_the_worker_starts(qtbot, lazy_widget, mosaic, notes, monkeypatch):
    """napari takes 0.1-0.2 s to add each layer of a large image: five in the click's turn held the viewer 0.86 s."""
    import dask.array as da
    from qtpy.QtCore import QTimer

    from napari_attention_unet.gui import layers as _layers

    viewer, widget = lazy_widget
    viewer.add_image(da.from_array(mosaic, chunks=mosaic.shape), name="lazy")
    ticks, seen = [0], []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(ticks.pop() + 1))
    timer.start(0)
    apply = _layers.apply_results
    monkeypatch.setattr(_layers, "apply_results", lambda *a: seen.append((ticks[0], widget._worker)) or apply(*a))
    widget.predict()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=TIMEOUT_MS)
    timer.stop()
    assert not notes["error"] and len(seen) == 3  # the masks and the tiny model's two maps
    assert all(later > earlier for (earlier, _), (later, _) in zip(seen, seen[1:]))  # the viewer ran between
    assert all(worker is None for _, worker in seen)  # and the worker started after the last
    assert our_layers(viewer, "lazy")[0].editable  # paintable again once the run is over


def test_cancel_while_the_block_layers_go_in_stops_before_any_block(qtbot, lazy_widget, mosaic, notes, monkeypatch):
    """The layers take 0.5-1 s to go in: Cancel works from the click, and the run then ends with no block done."""
    import dask.array as da

    from napari_attention_unet.gui import layers as _layers

    viewer, widget = lazy_widget
    viewer.add_image(da.from_array(mosaic, chunks=mosaic.shape), name="lazy")
    apply, states = _layers.apply_results, []

    def apply_then_cancel(*args):
        states.append((widget._cancel.enabled, widget._predict.enabled, widget._worker))
        if len(states) == 1:
            widget._cancel.changed.emit(True)  # as a click does, between two layers
        return apply(*args)

    monkeypatch.setattr(_layers, "apply_results", apply_then_cancel)
    widget.predict()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=TIMEOUT_MS)
    assert not notes["error"] and len(states) == 3
    assert all(cancel and not predict and worker is None for cancel, predict, worker in states)
    assert "Cancelled after 0 of" in widget._status.value and widget._predict.enabled and not widget._cancel.enabled
    assert not np.asarray(our_layers(viewer, "lazy")[0].data).any()


def test_multiscale_layer_gets_pyramid_results(qtbot, lazy_widget, mosaic, reference, notes, monkeypatch):
    monkeypatch.setattr(_scratch, "PYRAMID_ABOVE", 256)  # as a whole slide would: results as pyramids too
    monkeypatch.setattr(_scratch, "PYRAMID_TOP", 100)
    viewer, widget = lazy_widget
    levels = [ReadLog(mosaic), ReadLog(mosaic[::2, ::2].copy())]
    image = viewer.add_image(levels, multiscale=True, name="pyramid", scale=(0.5, 0.5))
    widget._gates.value = ["gate2"]
    run_widget(qtbot, widget)

    assert not notes["error"]
    assert not levels[0].whole_reads(but_main=True)
    masks, gate = viewer.layers["pyramid masks"], viewer.layers["pyramid attention gate2"]
    assert "pyramid attention gate1" not in viewer.layers
    assert masks.multiscale and gate.multiscale and len(masks.data) == 3
    np.testing.assert_array_equal(np.asarray(masks.data[0]), reference.labels)
    np.testing.assert_array_equal(np.asarray(masks.data[1]), reference.labels[::2, ::2])
    np.testing.assert_array_equal(np.asarray(gate.data[0]), reference.attention[1])
    np.testing.assert_allclose(masks.extent.world, image.extent.world)
    np.testing.assert_allclose(gate.scale, image.scale)
    # Zoomed out, napari draws the coarsest level: it shows the results too (it kept the empty one it first read)
    viewer.camera.zoom = 0.02
    qtbot.waitUntil(lambda: masks.data_level == len(masks.data) - 1, timeout=10_000)
    qtbot.wait(200)
    assert np.asarray(masks._slice.image.raw).any() and np.asarray(gate._slice.image.raw).any()


def test_cancel_keeps_blocks_done_and_predict_again_reuses_the_layers(
    qtbot, lazy_widget, mosaic, reference, notes, synchronous_dask
):
    import dask.array as da

    viewer, widget = lazy_widget
    plan = plan_blocks(mosaic.shape, block_size=BLOCK)
    cancel_pressed = threading.Event()
    blocks_read = []

    def hold_third_block(region):  # the worker waits at its third block until Cancel has been pressed
        if threading.current_thread() is not threading.main_thread() and region in map(_outer, plan.blocks):
            blocks_read.append(region)
            if len(blocks_read) == 3:
                cancel_pressed.wait(timeout=120)

    viewer.add_image(da.from_array(ReadLog(mosaic, hook=hold_third_block), chunks=mosaic.shape), name="lazy")
    widget.predict()
    qtbot.waitUntil(lambda: len(blocks_read) == 3, timeout=TIMEOUT_MS)
    qtbot.waitUntil(lambda: "lazy: 2 of 9 blocks done" in widget._status.value, timeout=TIMEOUT_MS)
    assert widget._progress.value > 0 and widget._cancel.enabled
    gate = our_layers(viewer, "lazy")[1]
    assert not np.allclose(gate.contrast_limits, (0, 1))  # from the two blocks shown
    gate.contrast_limits = (0.2, 0.3)  # the user's, during the run: left alone by the refreshes to come
    widget._cancel.changed.emit(True)  # as a click does
    cancel_pressed.set()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=TIMEOUT_MS)

    assert not notes["error"] and "Cancelled after 2 of 9 blocks" in widget._status.value
    assert "kept" in widget._status.value
    assert 0 < widget._progress.value < widget._progress.max  # where it stopped, not full
    masks, gate = our_layers(viewer, "lazy")
    done = np.zeros(mosaic.shape, bool)
    for block in plan.blocks:
        if _outer(block) in blocks_read[:2]:
            done[block.core_slices] = True
    labels, gate_map = np.asarray(masks.data), np.asarray(gate.data)
    assert gate_map[done].all() and not gate_map[~done].any() and not labels[~done].any()
    assert same_partition(labels[done], reference.labels[done])  # stitched across the face between them
    assert np.allclose(gate.contrast_limits, (0.2, 0.3))
    first_store = Path(masks.metadata[MARKER]["store"])

    run_widget(qtbot, widget)
    assert our_layers(viewer, "lazy") == [masks, gate]  # updated in place, not added again
    np.testing.assert_array_equal(np.asarray(masks.data), reference.labels)
    assert Path(masks.metadata[MARKER]["store"]) != first_store and not first_store.exists()


def test_closing_the_image_stops_its_block_by_block_run(qtbot, lazy_widget, mosaic, notes, synchronous_dask):
    """A new user closed an 8192² image after its first block: the run went on for 516 s more. Now it stops at
    the next tile, as Cancel does, and the blocks done stay in the layers."""
    import dask.array as da

    viewer, widget = lazy_widget
    plan = plan_blocks(mosaic.shape, block_size=BLOCK)
    closed = threading.Event()
    blocks_read = []

    def hold_third_block(region):
        if threading.current_thread() is not threading.main_thread() and region in map(_outer, plan.blocks):
            blocks_read.append(region)
            if len(blocks_read) == 3:
                closed.wait(timeout=120)

    image = viewer.add_image(da.from_array(ReadLog(mosaic, hook=hold_third_block), chunks=mosaic.shape), name="lazy")
    widget.predict()
    qtbot.waitUntil(lambda: len(blocks_read) == 3, timeout=TIMEOUT_MS)
    viewer.layers.remove(image)
    closed.set()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=TIMEOUT_MS)
    assert not notes["error"] and len(blocks_read) == 3 and "Cancelled after" in widget._status.value
    assert np.asarray(viewer.layers["lazy masks"].data).any()  # the blocks done are kept


def test_painted_lazy_masks_are_kept(qtbot, lazy_widget, mosaic, notes):
    import dask.array as da

    viewer, widget = lazy_widget
    viewer.add_image(da.from_array(mosaic[:128, :128], chunks=64), name="small")
    run_widget(qtbot, widget)
    masks = viewer.layers["small masks"]
    masks.paint((20, 20), 99)  # a brush stroke, straight into the zarr array
    assert masks.data[20, 20] == 99
    run_widget(qtbot, widget)
    assert masks.data[20, 20] == 99 and "small masks [2]" in viewer.layers
    assert not notes["error"]


def run_widget(qtbot, widget) -> None:
    widget.predict()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=TIMEOUT_MS)


def test_lazy_and_scratch_import_no_qt():
    import subprocess
    import sys

    code = (
        "import sys, napari_attention_unet.gui.lazy, napari_attention_unet.gui.scratch; "
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert not {"qtpy", "PyQt6", "PySide6", "magicgui", "superqt", "vispy", "napari"} & set(out)
