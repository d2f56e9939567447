"""The dock widget in a real viewer: opens through the manifest, predicts, cancels, respects user layers."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from napari_attention_unet.gui import layers as _layers
from napari_attention_unet.gui import widget as _widget
from napari_attention_unet.gui.layer_style import display_range
from napari_attention_unet.gui.widget import AttentionUNetWidget

TIMEOUT_MS = 120_000


@pytest.fixture
def notes(notes_of):
    """Messages the widget sends to napari's notifications, by kind."""
    return notes_of(_widget)


def run_prediction(qtbot, widget):
    widget.predict()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=TIMEOUT_MS)


@pytest.fixture
def with_nuclei(plugin_widget):
    """The widget with the nuclei sample opened through the manifest, as a user does."""
    viewer, widget = plugin_widget
    viewer.open_sample("napari-attention-unet", "nuclei")
    widget._tile_size.value = 128
    return viewer, widget


def test_widget_opens_through_manifest(plugin_widget):
    viewer, widget = plugin_widget
    assert isinstance(widget, AttentionUNetWidget)
    assert widget._model.value == "tiny"
    assert widget.session.model is not None
    assert widget._gates.value == ["gate1", "gate2"]
    assert "CPU" in widget._device_info.value
    assert widget._predict.enabled and not widget._cancel.enabled


def test_nan_pixels_are_said_in_the_done_line(qtbot, plugin_widget, nuclei_image, notes):
    viewer, widget = plugin_widget
    holed = nuclei_image.astype(np.float32)
    holed[:4, :5] = np.nan
    widget._image.value = viewer.add_image(holed, name="holed")
    run_prediction(qtbot, widget)
    assert not notes["error"] and "20 pixel value(s) were NaN or infinite: NaN and -inf taken as background" in (
        widget._status.value
    )
    assert widget._status.value.startswith("Done with tiny: ")  # whose answer it is


def test_image_picker_follows_selected_layer(plugin_widget, nuclei_image):
    viewer, widget = plugin_widget
    first = viewer.add_image(nuclei_image, name="first")
    second = viewer.add_image(nuclei_image, name="second")
    viewer.add_labels(np.zeros((8, 8), dtype=np.uint8), name="not an image")
    viewer.layers.selection.active = first
    assert widget._image.value is first
    viewer.layers.selection.active = second
    assert widget._image.value is second


def test_predict_adds_masks_and_attention_layers(qtbot, with_nuclei, monkeypatch, notes):
    viewer, widget = with_nuclei
    threads = []
    apply = _layers.apply_results
    monkeypatch.setattr(_layers, "apply_results", lambda *a: threads.append(threading.current_thread()) or apply(*a))
    run_prediction(qtbot, widget)

    assert not notes["error"]
    assert threads and set(threads) == {threading.main_thread()}  # layers are touched on the main thread only
    image = viewer.layers["nuclei"]
    masks = viewer.layers["nuclei masks"]
    assert masks.data.shape == image.data.shape
    for gate in ("gate1", "gate2"):
        attention = viewer.layers[f"nuclei attention {gate}"]
        assert attention.colormap.name == "magma"
        assert attention.blending == "additive"
        assert attention.opacity == 0.5
        # from the map's median to its top; this tiny model's maps are flat (within 0.005): all of [0, 1]
        assert tuple(attention.contrast_limits) == pytest.approx(display_range(attention.data))
        assert 0.0 <= attention.data.min() and attention.data.max() <= 1.0
        np.testing.assert_allclose(attention.extent.world, image.extent.world)
    np.testing.assert_allclose(masks.extent.world, image.extent.world)
    assert widget._progress.value == widget._progress.max
    assert widget._predict.enabled and not widget._cancel.enabled
    # The masks lie above the maps (an additive map on top tints them) and are the active layer, for the brush.
    assert viewer.layers[-1] is masks and viewer.layers.selection.active is masks

    # Our maps are no image to segment: selecting one leaves the picker, and Predict on one is refused.
    gate = viewer.layers["nuclei attention gate1"]
    viewer.layers.selection.active = gate
    assert widget._image.value is image
    other = viewer.add_image(image.data, name="other")
    viewer.layers.remove(image)  # the image closed: the picker takes the other image, not a map
    assert widget._image.value is other
    viewer.layers.remove(other)
    widget._image.value = gate
    widget.predict()
    assert "is a result of this plugin: choose an image to segment" in notes["error"][-1] and not widget.is_running


def test_the_viewer_runs_its_timers_between_two_layer_adds(qtbot, with_nuclei, monkeypatch):
    """One result layer per event-loop turn: timers (a draw, a tick) run between two adds, not after all of them."""
    from qtpy.QtCore import QTimer

    viewer, widget = with_nuclei
    ticks, seen = [0], []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(ticks.pop() + 1))
    timer.start(10)
    apply = _layers.apply_results

    def slow_apply(*args):  # each add takes longer than the timer's period, as a large layer's does
        seen.append(ticks[0])
        time.sleep(0.02)
        return apply(*args)

    monkeypatch.setattr(_layers, "apply_results", slow_apply)
    run_prediction(qtbot, widget)
    timer.stop()
    assert len(seen) == 3 and "nuclei attention gate2" in viewer.layers  # the masks and two maps (tiny model)
    assert all(later > earlier for earlier, later in zip(seen, seen[1:]))


def test_each_result_layer_is_drawn_in_a_turn_of_its_own(qtbot, make_napari_viewer, tiny_model_path, monkeypatch):
    """The canvas does not draw in the turn napari adds a result layer, and draws between two adds: an add and
    the frame after it in one turn froze the viewer for 120-130 ms with software GL (benchmarks/README.md)."""
    from qtpy.QtCore import QEvent, QObject
    from qtpy.QtOpenGLWidgets import QOpenGLWidget

    from napari_attention_unet.gui import turns

    viewer = make_napari_viewer(show=True)  # a window on screen (Xvfb), so that the canvas really paints
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-attention-unet", "Attention U-Net")
    viewer.open_sample("napari-attention-unet", "nuclei")
    widget._tile_size.value = 128
    (canvas,) = _dock.window().findChildren(QOpenGLWidget)  # napari's canvas, the window's one OpenGL widget
    assert canvas in turns.scene_canvases()
    paints, seen = [], []

    class PaintCounter(QObject):
        def eventFilter(self, watched, event):  # noqa: N802 - Qt's name
            if event.type() == QEvent.Type.Paint:
                paints.append(time.perf_counter())
            return False

    counter = PaintCounter()
    canvas.installEventFilter(counter)
    apply = _layers.apply_results

    def watched_apply(*args):
        seen.append((canvas.updatesEnabled(), len(paints)))
        return apply(*args)

    monkeypatch.setattr(_layers, "apply_results", watched_apply)
    qtbot.waitUntil(lambda: len(paints) > 0, timeout=5_000)  # the window's first frame
    run_prediction(qtbot, widget)
    qtbot.waitUntil(lambda: len(paints) > seen[-1][1], timeout=5_000)  # the last layer's frame
    canvas.removeEventFilter(counter)
    assert len(seen) == 3 and "nuclei attention gate2" in viewer.layers  # the masks and two maps (tiny model)
    assert not any(enabled for enabled, _ in seen)  # held while napari adds each layer
    frames = [count for _, count in seen]
    assert all(later > earlier for earlier, later in zip(frames, frames[1:]))  # a frame between two adds
    assert canvas.updatesEnabled()  # let go at the end


def test_results_follow_scale_and_translate(qtbot, plugin_widget, nuclei_image):
    viewer, widget = plugin_widget
    image = viewer.add_image(nuclei_image[:96, :160], name="scaled", scale=(0.5, 2.0), translate=(10.0, -5.0))
    run_prediction(qtbot, widget)
    for name in ("scaled masks", "scaled attention gate1"):
        layer = viewer.layers[name]
        np.testing.assert_allclose(layer.scale, image.scale)
        np.testing.assert_allclose(layer.translate, image.translate)
        np.testing.assert_allclose(layer.extent.world, image.extent.world)


def test_rgb_image_gets_spatial_results(qtbot, plugin_widget):
    from napari_attention_unet.gui.sample_data import he_sample

    viewer, widget = plugin_widget
    data, kwargs, _ = he_sample()[0]
    image = viewer.add_image(data, **kwargs, scale=(2.0, 2.0))
    widget._tile_size.value = 128
    run_prediction(qtbot, widget)
    masks = viewer.layers[f"{image.name} masks"]
    assert masks.data.shape == data.shape[:2]
    np.testing.assert_allclose(masks.extent.world, image.extent.world)
    # Over a bright H&E image an additive map only whitens it (a new user's check): laid over it instead.
    assert viewer.layers[f"{image.name} attention gate1"].blending == "translucent"


def test_cancel_adds_no_layers_and_widget_stays_usable(qtbot, plugin_widget, notes, monkeypatch):
    from napari_attention_unet.gui import session as _session

    viewer, widget = plugin_widget
    viewer.add_image(np.random.default_rng(0).random((256, 256), dtype=np.float32), name="big")
    widget._tile_size.value = 64
    # Hold the prediction after its first tile until Cancel has been pressed, so the
    # test does not depend on how fast this machine is.
    cancel_pressed = threading.Event()
    real_predict = _session.predict

    def held_predict(*args, **kwargs):
        steps = real_predict(*args, **kwargs)
        yield next(steps)
        cancel_pressed.wait(timeout=60)
        return (yield from steps)

    monkeypatch.setattr(_session, "predict", held_predict)
    widget.predict()
    assert widget.is_running and widget._cancel.enabled
    qtbot.waitUntil(lambda: widget._progress.value > 0, timeout=TIMEOUT_MS)
    widget._cancel.changed.emit(True)  # as a click does
    cancel_pressed.set()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=TIMEOUT_MS)
    assert [layer.name for layer in viewer.layers] == ["big"]
    assert "Cancelled" in widget._status.value and not notes["error"]

    cancel_pressed.set()
    run_prediction(qtbot, widget)
    assert "big masks" in viewer.layers


def test_an_image_closed_while_it_is_predicted_gets_no_layers(qtbot, plugin_widget, notes, monkeypatch):
    from napari_attention_unet.gui import session as _session

    viewer, widget = plugin_widget
    viewer.add_image(np.random.default_rng(0).random((128, 128), dtype=np.float32), name="gone")
    viewer.add_image(np.zeros((64, 64), np.float32), name="other")
    widget._image.value = viewer.layers["gone"]
    closed, real_predict = threading.Event(), _session.predict

    def held_predict(*args, **kwargs):  # the user closes the image while the worker predicts
        result = yield from real_predict(*args, **kwargs)
        closed.wait(timeout=60)
        return result

    monkeypatch.setattr(_session, "predict", held_predict)
    widget.predict()
    stages = []
    widget._status.changed.connect(stages.append)
    viewer.layers.remove("gone")
    closed.set()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=TIMEOUT_MS)
    assert [layer.name for layer in viewer.layers] == ["other"] and not notes["error"]
    assert "gone was closed while it was predicted: no layers added" in widget._status.value
    assert not any(s.startswith("Done") for s in stages[:-1])


def test_user_layers_are_not_modified(qtbot, with_nuclei):
    viewer, widget = with_nuclei
    image = viewer.layers["nuclei"]
    original = image.data.copy()
    user_masks = viewer.add_labels(np.full(original.shape, 7, dtype=np.int32), name="nuclei masks")
    viewer.layers.selection.active = image
    run_prediction(qtbot, widget)
    np.testing.assert_array_equal(image.data, original)
    assert (user_masks.data == 7).all()
    assert "nuclei masks [2]" in viewer.layers
    assert _layers.MARKER not in user_masks.metadata


def test_repredict_updates_own_layers_and_keeps_painted_ones(qtbot, with_nuclei):
    viewer, widget = with_nuclei
    run_prediction(qtbot, widget)
    masks, gate1 = viewer.layers["nuclei masks"], viewer.layers["nuclei attention gate1"]
    n_layers = len(viewer.layers)

    widget._tile_size.value = 64
    run_prediction(qtbot, widget)
    assert len(viewer.layers) == n_layers
    assert viewer.layers["nuclei masks"] is masks and viewer.layers["nuclei attention gate1"] is gate1

    masks.paint((20, 20), 99)  # a brush stroke, as the user makes it
    painted = masks.data.copy()
    run_prediction(qtbot, widget)
    np.testing.assert_array_equal(masks.data, painted)
    assert viewer.layers["nuclei masks [2]"] is not masks
    assert len(viewer.layers) == n_layers + 1
    assert viewer.layers["nuclei attention gate1"] is gate1  # untouched maps are still updated in place


def test_masks_changed_without_paint_event_are_kept(qtbot, with_nuclei):
    viewer, widget = with_nuclei
    run_prediction(qtbot, widget)
    masks = viewer.layers["nuclei masks"]
    masks.data[:5, :5] = 42  # e.g. edited from the console
    run_prediction(qtbot, widget)
    assert (masks.data[:5, :5] == 42).all()
    assert "nuclei masks [2]" in viewer.layers


def test_stack_current_slice_and_whole_stack(qtbot, plugin_widget, nuclei_image):
    viewer, widget = plugin_widget
    stack = np.stack([nuclei_image[:96, :96]] * 3)
    viewer.add_image(stack, name="stack", scale=(3.0, 1.0, 1.0))
    viewer.dims.set_point(0, 3.0)  # world z = 3 -> plane 1
    widget._current_slice.value = True
    run_prediction(qtbot, widget)
    gate = viewer.layers["stack attention gate1"].data
    assert gate.shape == stack.shape
    assert gate[1].any() and not gate[0].any() and not gate[2].any()

    widget._current_slice.value = False
    said = []
    widget._status.changed.connect(said.append)
    run_prediction(qtbot, widget)
    assert not any(s.startswith("Done") for s in said[:-1]), said  # each plane's end is not the run's
    assert viewer.layers["stack attention gate1"].data.all(axis=(1, 2)).any()
    assert all(viewer.layers["stack attention gate1"].data[z].any() for z in range(3))


def test_semantic_masks_and_chosen_gates(qtbot, with_nuclei):
    viewer, widget = with_nuclei
    widget._output.value = _widget.SEMANTIC
    widget._gates.value = ["gate2"]
    run_prediction(qtbot, widget)
    assert set(np.unique(viewer.layers["nuclei masks"].data)) <= {0, 1}
    assert "nuclei attention gate2" in viewer.layers and "nuclei attention gate1" not in viewer.layers
    assert viewer.layers["nuclei attention gate2"].visible


def test_errors_become_notifications_and_widget_stays_usable(qtbot, plugin_widget, model_home, notes):
    import torch

    from napari_attention_unet.core.model import AttentionUNet, ModelConfig
    from napari_attention_unet.core.weights import save_model

    viewer, widget = plugin_widget
    widget.predict()  # no image layer yet
    assert "Choose an image layer" in notes["error"][-1]

    save_model(AttentionUNet(ModelConfig(spatial_dims=3, base_width=2, depth=2)), model_home / "models" / "tiny3d")
    widget._refresh.changed.emit(True)
    widget._model.value = "tiny3d"
    viewer.add_image(np.zeros((64, 64), dtype=np.uint8), name="flat")
    run_prediction(qtbot, widget)
    assert "3D model" in notes["error"][-1] and "flat masks" not in viewer.layers

    widget._model_file.value = model_home / "models" / "missing.safetensors"  # not there: said, and kept
    assert "No model file at" in notes["error"][-1] and "the model in use stays 'tiny3d'" in notes["error"][-1]
    (model_home / "broken.safetensors").write_bytes(b"not a model")
    widget._model_file.value = model_home / "broken.safetensors"
    assert "could not be loaded" in notes["error"][-1]
    (model_home / "models" / "damaged.safetensors").write_bytes(b"not a model")  # a saved model, picked by name
    widget._refresh.changed.emit(True)
    widget._model.value = "damaged"
    assert "could not be loaded" in notes["error"][-1]
    assert widget._model.value == "tiny3d" and widget._model_info.value.startswith("tiny3d")  # the one in use

    if not torch.cuda.is_available():
        widget._device.value = "cuda"
        assert "no CUDA GPU" in notes["warning"][-1] and widget._device.value == "auto"

    widget._model.value = "tiny"
    widget._tile_size.value = 64
    run_prediction(qtbot, widget)
    assert "flat masks" in viewer.layers


def test_out_of_memory_message_is_readable():
    import torch

    from napari_attention_unet.gui.session import explain_error

    message = explain_error(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert "smaller tile size" in message and "cpu" in message


def test_without_any_model_the_widget_says_so(make_napari_viewer, model_home, notes):
    viewer = make_napari_viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-attention-unet", "Attention U-Net")
    assert "not installed" in widget._status.value
    viewer.add_image(np.zeros((32, 32), dtype=np.uint8))
    widget.predict()
    assert "nuclei" in notes["error"][-1] and not widget.is_running


def test_use_model_by_name_or_file(plugin_widget, tiny_model_path):
    _viewer, widget = plugin_widget
    widget.use_model(str(tiny_model_path))
    assert widget.session.model_info.path == tiny_model_path
    assert "tiny" in widget._model_info.value and "2D instances" in widget._model_info.value  # what it is
    widget.use_model("tiny")
    assert widget._model.value == "tiny"


def test_a_picked_model_file_shows_in_the_model_list(plugin_widget, tiny_model_path, tmp_path):
    """The list shows the file in use, and picking a listed model again loads it (it did not change before)."""
    import shutil

    _viewer, widget = plugin_widget
    copy = tmp_path / "elsewhere.safetensors"
    shutil.copy(tiny_model_path, copy)
    widget._model_file.value = copy
    assert widget._model.value == str(copy) and widget.session.model_info.path == copy
    assert "elsewhere.safetensors (file)" in [
        widget._model.native.itemText(i) for i in range(widget._model.native.count())
    ]
    widget._model.value = "tiny"
    assert widget.session.model_info.path == tiny_model_path
    widget._model.value = str(copy)  # back to the file, from the list
    assert widget.session.model_info.path == copy


def test_session_predicts_time_series_headless(tiny_model_path):
    """The session alone (no viewer): a TZYX series through a 2D model, one plane or all of them."""
    from napari_attention_unet.core.predict import run_to_end
    from napari_attention_unet.gui.session import Session

    session = Session(device="cpu")
    session.load_model("tiny")
    series = np.random.default_rng(1).random((2, 3, 32, 40), dtype=np.float32)
    one = run_to_end(session.predict(series, tile_size=32, gates=["gate1"], index=(1, 2)))
    assert one.index == (1, 2) and one.labels.shape == (32, 40) and list(one.gate_maps) == ["gate1"]
    prepared = session.inference_model()
    everything = run_to_end(session.predict(series, tile_size=32))
    assert everything.index == () and everything.labels.shape == series.shape
    assert set(everything.gate_maps) == {"gate1", "gate2"}
    assert session.inference_model() is prepared  # built once per model and device, not per run
    np.testing.assert_allclose(everything.gate_maps["gate1"][1, 2], one.gate_maps["gate1"], atol=1e-5)


def test_training_planes_prefers_corrected_slices():
    from napari_attention_unet.gui.session import MAX_TRAINING_PLANES, training_planes

    labels = np.zeros((5, 8, 8), np.uint8)
    labels[1, 2:4, 2:4] = 1
    labels[3, 5:7, 5:7] = 2
    assert training_planes(labels[0], None, None, 0) == [()]
    assert training_planes(labels, None, None, 1) == [(1,), (3,)]  # the labelled slices
    edited = np.zeros(labels.shape, bool)
    edited[3, 5, 5] = True
    assert training_planes(labels, edited, None, 1) == [(3,)]  # the slices the user painted
    ignore = np.zeros(labels.shape, bool)
    ignore[1] = True  # slice 1's labels are all outside the region that counts
    assert training_planes(labels, None, ignore, 1) == [(3,)]
    with pytest.raises(ValueError, match="no plane"):
        training_planes(np.zeros_like(labels), None, None, 1)
    many = np.ones((40, 4, 4), np.uint8)
    chosen = training_planes(many, None, None, 1)
    assert len(chosen) == MAX_TRAINING_PLANES and chosen[0] == (0,) and chosen[-1] == (39,)


def test_session_finetunes_a_2d_model_on_a_stack(tiny_model_path, nuclei_image):
    """A ZYX stack and labels corrected on one slice: the 2D model trains on that slice only."""
    from napari_attention_unet.core.predict import run_to_end
    from napari_attention_unet.gui.session import Session

    session = Session(device="cpu")
    session.load_model("tiny")
    stack = np.stack([nuclei_image, 0.5 * nuclei_image[::-1], nuclei_image[:, ::-1]]).astype(np.float32)
    labels = np.zeros(stack.shape, np.uint16)
    labels[1] = stack[1] > np.percentile(stack[1], 70)
    result = run_to_end(session.finetune(stack, labels, steps=2, minutes=None))
    assert session.trained_planes == [(1,)]
    assert result.steps == 2 and session.trainer.samples and len(session.trainer.samples) == 1
    # the plane is normalised with its stack's percentiles, as the dock then predicts it
    from napari_attention_unet.core.images import normalize
    from napari_attention_unet.core.predict import stack_intensity_range

    expected = normalize(stack[1][np.newaxis], ranges=stack_intensity_range(stack, 3))
    np.testing.assert_array_equal(session.trainer.samples[0].image, expected)
    assert np.abs(expected - normalize(stack[1][np.newaxis])).max() > 0.1  # not the plane's own
    with pytest.raises(ValueError, match="do not match"):
        session.finetune(stack, labels[:2])


def test_session_finetunes_a_3d_model_on_the_grid_it_predicts_on(tmp_path, monkeypatch):
    """A 3D model fine-tunes on the volume resampled by the layer's scale (as it predicts it), in
    patches fitted to the volume as `train` fits them, not the 64³ cap of 2D-sized patches."""
    import torch

    from napari_attention_unet.core.model import AttentionUNet, ModelConfig
    from napari_attention_unet.core.predict import run_to_end
    from napari_attention_unet.core.train.start import network_shape
    from napari_attention_unet.gui.session import Session

    monkeypatch.setenv("NAPARI_ATTENTION_UNET_HOME", str(tmp_path))
    torch.manual_seed(0)
    session = Session(device="cpu")
    session.set_model(AttentionUNet(ModelConfig(spatial_dims=3, in_channels=1, base_width=4, depth=3)), None)
    rng = np.random.default_rng(0)
    labels = np.zeros((12, 64, 64), np.uint16)
    for i, (z, y, x) in enumerate([(4, 16, 16), (7, 40, 20), (5, 30, 48)]):
        labels[z - 2 : z + 2, y - 5 : y + 5, x - 5 : x + 5] = i + 1
    volume = (labels > 0) * 100.0 + rng.normal(20, 5, labels.shape)
    result = run_to_end(session.finetune(volume, labels, steps=1, minutes=None, spacing=(2.0, 1.0, 1.0)))
    assert result.steps == 1
    sample = session.trainer.samples[0]
    assert sample.image.shape[1:] == network_shape(labels.shape, (2.0, 1.0, 1.0)) == (24, 64, 64)
    assert np.prod(session.trainer.patch) < 20_000  # about 18k voxels, as `train` fits them


def test_a_plane_of_a_stack_is_normalised_with_the_stack_as_on_the_command_line(tiny_model_path, nuclei_image):
    """The dock's plane (current slice) and the whole stack give what ``predict`` gives on the stack at
    once: each plane normalised with the stack's percentiles, so a dim plane stays dim."""
    from napari_attention_unet.core.predict import predict, run_to_end
    from napari_attention_unet.gui.session import Session

    session = Session(device="cpu")
    session.load_model("tiny")
    image = nuclei_image.astype(np.float32)
    stack = np.stack([image, 0.2 * image[::-1], 3.0 * image[:, ::-1] + 50])  # planes of other brightness
    whole = run_to_end(predict(session.model, stack, axes="ZYX", device="cpu"))
    for k in range(3):
        plane = run_to_end(session.predict(stack, index=(k,)))
        for name, values in plane.gate_maps.items():
            np.testing.assert_allclose(values, whole.gate_maps[name][k], atol=1e-5)
    every = run_to_end(session.predict(stack))
    np.testing.assert_allclose(every.gate_maps["gate1"], whole.gate_maps["gate1"], atol=1e-5)
    alone = run_to_end(predict(session.model, stack[1], device="cpu"))  # the dim plane on its own
    assert np.abs(alone.gate_maps["gate1"] - whole.gate_maps["gate1"][1]).max() > 1e-3


def test_session_passes_the_layer_spacing_to_a_3d_model(model_home):
    """A 3D model on an anisotropic ZYX volume: the session hands the layer's scale to the core."""
    import torch

    from napari_attention_unet.core.model import AttentionUNet, ModelConfig
    from napari_attention_unet.core.predict import run_to_end
    from napari_attention_unet.core.weights import save_model
    from napari_attention_unet.gui.session import Session

    torch.manual_seed(0)
    save_model(
        AttentionUNet(ModelConfig(spatial_dims=3, in_channels=1, base_width=2, depth=3)),
        model_home / "models" / "tiny3d",
    )
    session = Session(device="cpu")
    session.load_model("tiny3d")
    assert session.spatial_dims == 3
    volume = np.random.default_rng(3).random((6, 32, 32)).astype(np.float32)
    from napari_attention_unet.core.predict import predict

    # float32: bf16 (auto on CPUs with native bf16) rounds this tiny network's small differences away
    stretched = run_to_end(session.predict(volume, tile_size=32, spacing=(2.0, 0.5, 0.5), precision="fp32"))
    assert stretched.labels.shape == volume.shape and stretched.gate_maps["gate1"].shape == volume.shape
    core = run_to_end(
        predict(session.model, volume, tile_size=32, spacing=(4.0, 1.0, 1.0), device="cpu", precision="fp32")
    )
    np.testing.assert_allclose(stretched.gate_maps["gate1"], core.gate_maps["gate1"], atol=1e-6)
    cubic = run_to_end(predict(session.model, volume, tile_size=32, device="cpu", precision="fp32"))
    assert np.abs(cubic.gate_maps["gate1"] - stretched.gate_maps["gate1"]).max() > 1e-5


def test_anisotropic_volume_with_a_3d_model_in_the_viewer(qtbot, plugin_widget, model_home, nuclei_image):
    """A 3D model on a volume with z step 3x the xy step: 3D attention layers, resampled as the core does."""
    import torch

    from napari_attention_unet.core.model import AttentionUNet, ModelConfig
    from napari_attention_unet.core.predict import predict, run_to_end
    from napari_attention_unet.core.weights import save_model

    viewer, widget = plugin_widget
    torch.manual_seed(0)
    model = AttentionUNet(ModelConfig(spatial_dims=3, in_channels=1, base_width=2, depth=3))
    save_model(model, model_home / "models" / "tiny3d")
    widget._refresh.changed()
    widget.use_model("tiny3d")
    volume = np.stack([nuclei_image[:48, :48]] * 4).astype(np.float32)
    image = viewer.add_image(volume, name="volume", scale=(1.5, 0.5, 0.5))
    widget._image.value = image
    widget._current_slice.value = False
    run_prediction(qtbot, widget)
    gate = viewer.layers["volume attention gate1"]
    assert gate.data.shape == volume.shape
    np.testing.assert_allclose(gate.scale, image.scale)
    expected = run_to_end(predict(model.eval(), volume, device="cpu", spacing=(3.0, 1.0, 1.0)))
    np.testing.assert_allclose(gate.data, expected.gate_maps["gate1"], atol=1e-5)


def test_a_volume_with_no_voxel_size_is_taken_at_the_models(qtbot, plugin_widget, model_home, nuclei_image):
    """A layer left at napari's scale of 1 under a 3D model trained at 2,0.5,0.5: predicted at that voxel size,
    as `attention-unet predict` takes a TIFF that states none, and the status says so; a set scale is kept."""
    import torch

    from napari_attention_unet.core.model import AttentionUNet, ModelConfig
    from napari_attention_unet.core.predict import predict, run_to_end
    from napari_attention_unet.core.weights import save_model
    from napari_attention_unet.gui.block_prediction import predict_spacing

    viewer, widget = plugin_widget
    torch.manual_seed(0)
    model = AttentionUNet(ModelConfig(spatial_dims=3, in_channels=1, base_width=2, depth=3))
    save_model(model, model_home / "models" / "aniso3d", info={"spacing": [2.0, 0.5, 0.5]})
    widget._refresh.changed()
    widget.use_model("aniso3d")
    volume = np.stack([nuclei_image[:48, :48]] * 4).astype(np.float32)
    widget._image.value = viewer.add_image(volume, name="volume")
    widget._current_slice.value = False
    run_prediction(qtbot, widget)
    expected = run_to_end(predict(model.eval(), volume, device="cpu", spacing=(4.0, 1.0, 1.0)))
    np.testing.assert_allclose(viewer.layers["volume attention gate1"].data, expected.gate_maps["gate1"], atol=1e-5)
    assert "no voxel size (scale 1,1,1): taken at the model's, 2,0.5,0.5 (Z,Y,X)" in widget._status.value
    assert viewer.layers["volume masks"].scale.tolist() == [1.0, 1.0, 1.0]  # on the layer's grid
    assert predict_spacing((1.5, 0.5, 0.5), [2.0, 0.5, 0.5], 3) == ((1.5, 0.5, 0.5), "")  # a scale set: kept
    assert predict_spacing((1.0, 1.0, 1.0), None, 3) == ((1.0, 1.0, 1.0), "")  # nothing known: cubic
    assert predict_spacing((1.0, 1.0), [2.0, 0.5, 0.5], 2) == ((1.0, 1.0), "")
    # A Z, C, Y, X hyperstack opened whole is taken as time, Z, Y, X by a 3D model: said, with what to do
    from napari_attention_unet.gui.block_prediction import axes_note

    assert "if they are Z, C, Y, X (a stack of 2 channels), open it with channel_axis=1" in axes_note(
        (40, 2, 128, 128), 3, False
    )
    assert axes_note((3, 40, 64, 64), 3, False) == "" and axes_note((40, 2, 128, 128), 2, False) == ""


def test_the_dock_scrolls_instead_of_growing_the_window_past_the_screen(plugin_widget, qtbot):
    """All controls (predict, new model, versions) are taller than a laptop screen: the window keeps its
    height and the dock's scroll area scrolls to the controls at the bottom."""
    viewer, widget = plugin_widget
    window = viewer.window._qt_window
    window.resize(1200, 700)
    window.show()
    qtbot.waitUntil(lambda: widget.scroll_area.isVisible(), timeout=10_000)
    widget.finetune._start_from.value = "a new model for these labels"  # the tallest form of the dock
    qtbot.wait(200)
    area = widget.scroll_area
    assert area.widget() is widget._panel.native
    assert window.height() <= 720 and area.viewport().height() < widget._panel.native.sizeHint().height()
    bar = area.verticalScrollBar()
    assert bar.maximum() > 0
    area.ensureWidgetVisible(widget.finetune._start.native)  # the Train button, at the bottom, comes into view
    assert bar.value() > 0
    assert widget.finetune._start.native.visibleRegion().boundingRect().height() > 0


def test_long_messages_wrap_instead_of_widening_the_dock(plugin_widget, qtbot):
    """A fine-tune readout of a few hundred characters took the dock from 404 to 638 px (the canvas squeezed)."""
    viewer, widget = plugin_widget
    viewer.window._qt_window.resize(1500, 950)
    viewer.window._qt_window.show()
    qtbot.waitUntil(lambda: widget.scroll_area.isVisible(), timeout=10_000)
    qtbot.wait(200)
    before = widget.native.width()
    long = "Saved as 'nuclei-ft-20261201-0816': trained 11 steps (budget); " + "kept the state of step 11, " * 12
    for label in (widget.finetune._readout, widget._status, widget._model_info, widget.finetune._task):
        label.value = long
    qtbot.wait(300)
    assert widget.native.width() <= before + 2
    readout = widget.finetune._readout.native
    assert readout.height() > 2 * readout.fontMetrics().height()  # wrapped onto several lines, all shown


def test_long_layer_names_do_not_widen_the_dock(make_napari_viewer, tiny_model_path, qtbot):
    """A layer named as a microscope exports it, open when the dock was, took the dock to 690 px and left the
    canvas 30 px of the window: its box shows the start of the name, its list opens whole."""
    name = "a-very-long-image-layer-name-from-a-microscope-export_ch00_t000_z000"
    widths = []
    for layer_name in ("img", name):
        viewer = make_napari_viewer()
        viewer.add_image(np.zeros((32, 32), np.uint8), name=layer_name)
        _dock, widget = viewer.window.add_plugin_dock_widget("napari-attention-unet", "Attention U-Net")
        viewer.window._qt_window.resize(1100, 700)
        viewer.window._qt_window.show()
        qtbot.waitUntil(lambda widget=widget: widget.scroll_area.isVisible(), timeout=10_000)
        qtbot.wait(200)
        widths.append(widget.native.width())
    assert widths[1] <= widths[0] + 2
    combo = widget._image.native
    combo.showPopup()
    qtbot.wait(100)
    assert combo.view().window().width() > combo.fontMetrics().horizontalAdvance(name) > combo.width()
    combo.hidePopup()
