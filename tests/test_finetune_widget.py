"""The fine-tune controls in a real viewer: fine-tune, cancel, painted-pixel tracking."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_attention_unet.gui import finetune_widget as _finetune_widget
from napari_attention_unet.gui import layers as _layers
from napari_attention_unet.gui import versions_widget as _versions_widget
from napari_attention_unet.models import versions as _versions

TIMEOUT_MS = 180_000


@pytest.fixture
def corrected(plugin_widget, qtbot):
    """The nuclei sample and a user's Labels layer (the thresholded image) chosen for fine-tuning."""
    viewer, widget = plugin_widget
    viewer.open_sample("napari-attention-unet", "nuclei")
    widget._tile_size.value = 128
    image = viewer.layers["nuclei"].data
    layer = viewer.add_labels((image > np.percentile(image, 70)).astype(np.uint8), name="my corrections")
    widget.finetune._corrected.value = layer
    widget._image.value = viewer.layers["nuclei"]
    yield viewer, widget, layer
    if widget.finetune.is_running:
        widget.finetune.cancel()
    qtbot.waitUntil(lambda: not widget.finetune.is_running and not widget.is_running, timeout=TIMEOUT_MS)


def wait_idle(qtbot, widget):
    qtbot.waitUntil(lambda: not widget.finetune.is_running and not widget.is_running, timeout=TIMEOUT_MS)


@pytest.fixture
def accept_all(monkeypatch):
    """Make every trained state count as better than the start and pass the sanity check: a tiny
    random net rarely earns either in 5 steps (the core tests cover both)."""
    from napari_attention_unet.core.train import Trainer

    monkeypatch.setattr(Trainer, "_beats_best", lambda self, scores: True)
    monkeypatch.setattr(Trainer, "_sanity_check", lambda self, trained: (True, "accepted for the test"))


def test_refused_finetune_keeps_the_model(qtbot, corrected, notes, monkeypatch):
    from napari_attention_unet.core.train import Trainer

    # No trained state beats the start on the held-out strip (forced: whether a tiny random
    # net does after 5 steps is not a thing to rely on).
    monkeypatch.setattr(Trainer, "_beats_best", lambda self, scores: False)
    viewer, widget, layer = corrected
    before = layer.data.copy()
    widget.finetune.start(steps=5)
    wait_idle(qtbot, widget)

    assert notes["warning"] and "the previous model is kept" in notes["warning"][0]
    assert "no trained state scored better" in notes["warning"][0]
    assert not notes["error"]
    assert widget._model.value == "tiny" and widget.session.model_info.name == "tiny"
    assert [m.name for m in _versions.list_versions()] == ["tiny"]
    assert "nuclei masks" not in [lay.name for lay in viewer.layers]  # no re-prediction
    np.testing.assert_array_equal(layer.data, before)
    assert widget.finetune._start.enabled and not widget.finetune._cancel.enabled


def test_finetune_saves_a_version_and_repredicts(qtbot, corrected, notes, accept_all, monkeypatch):
    from napari_attention_unet.core.weights import load_model
    from napari_attention_unet.models import registry

    viewer, widget, layer = corrected
    before = layer.data.copy()
    opened = []  # the new version is in memory: reading it back on the main thread froze the viewer 90 ms
    monkeypatch.setattr(registry, "open_model", lambda *a, **k: opened.append(a) or pytest.fail("read back"))
    widget.finetune.start(steps=5)
    assert widget.finetune.is_running and not widget.finetune._start.enabled
    wait_idle(qtbot, widget)

    assert not notes["error"], notes
    np.testing.assert_array_equal(layer.data, before)  # the user's layer is only read
    assert not _layers.is_ours(layer)
    versions = [m.name for m in _versions.list_versions() if m.name.startswith("tiny-ft-")]
    assert len(versions) == 1, notes["warning"]
    name = versions[0]
    assert widget._model.value == name and widget.session.model_info.name == name and not opened
    assert name in widget._model_info.value  # the dock describes the model now in use
    saved, _ = load_model(widget.session.model_info.path)  # what is in use is what a restart would load
    in_use = widget.session.model.state_dict()
    assert all(torch.equal(in_use[k], v) for k, v in saved.state_dict().items())
    info = _versions.version_info(name)
    assert info["parent"] == "tiny" and info["steps"] == 5 and info["image"] == "nuclei"
    assert 1 <= info["kept_step"] <= 5  # the state kept, not only the steps trained
    masks = viewer.layers["nuclei masks"]  # re-predicted into the plugin's own layer
    assert masks.metadata[_layers.MARKER]["model"] == name
    assert "Saved as" in widget.finetune._readout.value
    assert [step for step, _ in widget.finetune.plot.losses] == [1, 2, 3, 4, 5]
    assert widget.finetune.plot.dices  # validation scores are plotted too
    widget.finetune.plot.grab()  # draws without error
    loss, dice = widget.finetune.plot.legend()[:2]  # the latest values, in numbers
    assert loss == f"loss {widget.finetune.plot.losses[-1][1]:.3f}"
    assert dice == f"Dice {widget.finetune.plot.dices[-1][1]:.2f}"
    # The viewer stays usable: layers can be added and a new prediction runs.
    viewer.add_points([[1, 1]])
    widget.predict()
    wait_idle(qtbot, widget)
    np.testing.assert_array_equal(layer.data, before)


def test_cancel_keeps_a_valid_model(qtbot, corrected, notes, accept_all):
    viewer, widget, layer = corrected
    before = layer.data.copy()
    widget.finetune._minutes.value = 10.0
    widget.finetune.start()
    qtbot.waitUntil(lambda: "step" in widget.finetune._readout.value, timeout=TIMEOUT_MS)
    widget.finetune.cancel()
    wait_idle(qtbot, widget)

    assert not notes["error"], notes
    assert widget.session.model is not None
    assert widget.session.model_info.name == widget._model.value
    versions = [m.name for m in _versions.list_versions() if m.name.startswith("tiny-ft-")]
    assert versions == [widget.session.model_info.name]  # the best model so far, kept as a version
    assert _versions.version_info(versions[0])["steps"] >= 1
    assert viewer.layers["nuclei masks"].metadata[_layers.MARKER]["model"] == versions[0]
    np.testing.assert_array_equal(layer.data, before)


def test_paint_events_record_edited_pixels(plugin_widget, notes):
    viewer, widget = plugin_widget
    layer = viewer.add_labels(np.zeros((64, 64), dtype=np.uint8), name="painted")
    untouched = viewer.add_labels(np.zeros((64, 64), dtype=np.uint8), name="untouched")
    edits = widget.finetune.edits
    assert edits.edited_mask(layer) is None
    layer.brush_size = 3
    layer.paint((10, 10), 1)
    layer.paint((40, 20), 2)
    mask = edits.edited_mask(layer)
    assert mask.shape == layer.data.shape
    assert mask[10, 10] and mask[40, 20] and not mask[60, 60]
    np.testing.assert_array_equal(mask, layer.data > 0)
    assert edits.edited_mask(untouched) is None


def test_only_edited_without_painting_is_refused(plugin_widget, notes):
    viewer, widget = plugin_widget
    viewer.open_sample("napari-attention-unet", "nuclei")
    widget._image.value = viewer.layers["nuclei"]
    widget.finetune._corrected.value = viewer.add_labels(np.zeros((256, 256), dtype=np.uint8))
    widget.finetune._region.value = _finetune_widget.ONLY_EDITED
    widget.finetune.start(steps=2)
    assert not widget.finetune.is_running
    assert notes["error"] and "painted" in notes["error"][0]


def test_edited_falls_back_to_our_last_prediction(make_napari_viewer):
    viewer = make_napari_viewer()
    image = viewer.add_image(np.zeros((16, 16), dtype=np.float32), name="img")
    ours = viewer.add_labels(np.zeros((16, 16), dtype=np.uint32), name="img masks")
    ours.metadata[_layers.MARKER] = {"role": "masks", "gate": None, "source": str(image.unique_id)}
    _layers.stamp(ours)
    user = np.zeros((16, 16), dtype=np.uint8)
    user[2:4, 5:7] = 1
    corrected = viewer.add_labels(user, name="fixed")
    changed = _finetune_widget.edited_from_prediction(viewer.layers, corrected, image)
    np.testing.assert_array_equal(changed, user > 0)


def test_predict_and_model_locked_while_finetuning(qtbot, corrected, notes):
    viewer, widget, layer = corrected
    widget.finetune._minutes.value = 10.0
    widget.finetune.start()
    assert not widget._predict.enabled and not widget._model.enabled
    assert not widget._versions.enabled  # the model being trained on is not renamed or deleted meanwhile
    assert "first scoring the start" in widget.finetune._readout.value  # what the first seconds are spent on
    widget.finetune.cancel()
    wait_idle(qtbot, widget)
    assert widget._predict.enabled and widget._model.enabled and widget.finetune._start.enabled
    assert widget._versions.enabled


def test_rename_export_delete_from_the_widget(plugin_widget, tmp_path, monkeypatch):
    from napari_attention_unet.core.weights import load_model

    viewer, widget = plugin_widget
    errors = []
    monkeypatch.setattr(_versions_widget, "show_error", errors.append)
    model, _ = load_model(widget.session.model_info.path)
    saved = _versions.save_version(model, "tiny", steps=3)
    widget._refresh.changed()  # the Refresh button
    widget.use_model(saved.name)
    assert widget.session.model_info.name == saved.name

    infos = []
    monkeypatch.setattr(_versions_widget, "show_info", infos.append)
    widget._versions.rename("nuclei mine")
    assert widget._model.value == "nuclei-mine" and widget.session.model_info.name == "nuclei-mine"
    assert infos == ["Renamed to 'nuclei-mine' (a model name holds letters, digits, '-', '_' and '.')."]
    assert saved.name not in widget._model.choices
    widget._versions.export(tmp_path / "shared.safetensors")
    assert (tmp_path / "shared.safetensors").is_file()
    widget._versions._on_delete()  # the first click asks, and deletes nothing
    assert "nuclei-mine" in widget._model.choices and "Click again" in widget._versions._delete.text
    widget._versions._on_delete()
    assert "nuclei-mine" not in widget._model.choices and widget._versions._delete.text == "Delete model"
    assert widget.session.model_info.name == "tiny"
    assert not errors
    widget.use_model(str(tmp_path / "shared.safetensors"))  # load from a file: the exported copy
    assert widget.session.model_info.name == "shared"


def test_the_new_version_predicts_only_the_image_it_was_trained_on(qtbot, corrected, notes, accept_all):
    """The image closed while training: the picker falls back to another, which is not predicted unasked."""
    viewer, widget, layer = corrected
    viewer.add_image(np.zeros((64, 64), np.float32), name="other")
    widget._image.value = viewer.layers["nuclei"]
    widget.finetune.start(steps=3)
    viewer.layers.remove("nuclei")
    wait_idle(qtbot, widget)
    assert not notes["error"], notes
    assert widget.session.model_info.name.startswith("tiny-ft-")  # the version is saved and chosen
    assert "other masks" not in viewer.layers and widget._image.value is viewer.layers["other"]


def test_finetune_on_painted_pixels_only(qtbot, corrected, notes, accept_all):
    viewer, widget, layer = corrected
    layer.brush_size = 9
    layer.paint((100, 60), 0)  # erase a blob, left of the held-out strip
    layer.paint((60, 100), 3)  # a new object (painting an unchanged pixel records nothing)
    before = layer.data.copy()
    edited = widget.finetune.edits.edited_mask(layer)
    assert edited is not None and edited[100, 60] and edited[60, 100]
    widget.finetune._region.value = _finetune_widget.ONLY_EDITED
    widget.finetune.start(steps=3)
    wait_idle(qtbot, widget)

    assert not notes["error"], notes
    assert widget.session.model_info.name.startswith("tiny-ft-")
    np.testing.assert_array_equal(layer.data, before)


def test_finetune_inside_a_rectangle(qtbot, corrected, notes, accept_all):
    viewer, widget, layer = corrected
    before = layer.data.copy()
    widget.finetune._region.value = _finetune_widget.IN_SHAPES
    widget.finetune._readout.value = "Not used: the last run's outcome"
    widget.finetune.start(steps=2)
    assert notes["error"] and "Shapes" in notes["error"][0]  # no shapes layer yet
    assert widget.finetune._readout.value == ""  # refused: not the last run's outcome left in view
    rectangle = viewer.add_shapes([[[0, 0], [0, 200], [255, 200], [255, 0]]], shape_type="rectangle")
    widget.finetune._shapes.value = rectangle
    inside = _finetune_widget.shapes_mask(rectangle, layer.data.shape)
    assert inside[10, 10] and inside[200, 150] and not inside[10, 230]
    widget.finetune.start(steps=3)
    wait_idle(qtbot, widget)
    assert len(notes["error"]) == 1, notes
    assert widget.session.model_info.name.startswith("tiny-ft-")
    np.testing.assert_array_equal(layer.data, before)


@pytest.fixture
def bundled_widget(make_napari_viewer, tmp_path, monkeypatch, qtbot):
    """The widget with the real bundled model (saved versions go to a temp folder)."""
    monkeypatch.setenv("NAPARI_ATTENTION_UNET_HOME", str(tmp_path / "home"))
    viewer = make_napari_viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-attention-unet", "Attention U-Net")
    yield viewer, widget
    if widget.finetune.is_running:
        widget.finetune.cancel()
    qtbot.waitUntil(lambda: not widget.finetune.is_running and not widget.is_running, timeout=TIMEOUT_MS)


def test_finetune_of_the_bundled_model_is_accepted_as_a_new_version(qtbot, bundled_widget, notes):
    """The user's path with nothing patched: predict, correct a copy of the masks, fine-tune, get a new version."""
    viewer, widget = bundled_widget
    assert widget._model.value == "nuclei"
    viewer.open_sample("napari-attention-unet", "nuclei")
    widget._image.value = viewer.layers["nuclei"]
    widget.predict()
    wait_idle(qtbot, widget)
    predicted = viewer.layers["nuclei masks"].data.copy()
    assert predicted.max() > 5

    # The user's corrections: erase the largest predicted nucleus, paint a new one.
    corrected = predicted.copy()
    ids, sizes = np.unique(predicted[predicted > 0], return_counts=True)
    corrected[predicted == ids[sizes.argmax()]] = 0
    corrected[10:20, 10:20] = corrected.max() + 1
    layer = viewer.add_labels(corrected, name="my corrections")
    widget.finetune._corrected.value = layer
    widget.finetune.start(steps=3)
    wait_idle(qtbot, widget)

    assert not notes["error"] and not notes["warning"], notes  # accepted by the real sanity check
    versions = [m.name for m in _versions.list_versions() if m.name.startswith("nuclei-ft-")]
    assert len(versions) == 1
    assert widget._model.value == versions[0] and widget.session.model_info.name == versions[0]
    assert _versions.version_info(versions[0])["parent"] == "nuclei"
    masks = viewer.layers["nuclei masks"]
    assert masks.metadata[_layers.MARKER]["model"] == versions[0]  # re-predicted with the new version
    assert masks.data.max() > 5  # still finds nuclei after 3 small steps
    np.testing.assert_array_equal(layer.data, corrected)  # the user's layer is only read


def test_finetune_on_a_stack_trains_on_the_painted_slice(qtbot, plugin_widget, notes, accept_all, nuclei_image):
    viewer, widget = plugin_widget
    stack = np.stack([nuclei_image, nuclei_image[::-1], nuclei_image[:, ::-1]])
    widget._image.value = viewer.add_image(stack, name="stack")
    widget._tile_size.value = 128
    widget._current_slice.value = False
    labels = viewer.add_labels(np.zeros(stack.shape, np.uint8), name="my corrections")
    labels.data[0] = stack[0] > np.percentile(stack[0], 70)  # set directly: no paint event
    labels.n_edit_dimensions = 2
    labels.brush_size = 15
    labels.paint((2, 100, 100), 1)  # the user's correction, on slice 2
    widget.finetune._corrected.value = labels
    before = labels.data.copy()
    widget.finetune.start(steps=2)
    assert "slices 2" in widget.finetune._readout.value
    wait_idle(qtbot, widget)

    assert not notes["error"], notes
    assert widget.session.trained_planes == [(2,)]
    assert widget.session.model_info.name.startswith("tiny-ft-")
    masks = viewer.layers["stack masks"]  # the whole stack re-predicted with the new version
    assert masks.data.shape == stack.shape and masks.metadata[_layers.MARKER]["model"] == widget._model.value
    np.testing.assert_array_equal(labels.data, before)


def test_the_progress_line_says_each_figure_once():
    from napari_attention_unet.core.train.config import StepReport, step_message
    from napari_attention_unet.gui.plot import describe_report

    scores = {"anterior": 0.81, "posterior": 0.77}
    message = step_message(42, 1.1869, 0.79, None, 0.8, None, scores)
    report = StepReport(42, None, 30.0, 19.0, 1.1869, 0.79, 0.8, 1e-3, message, val_class_dice=scores)
    line = describe_report(report)
    assert line == "step 42 · loss 1.187 · val Dice 0.790 · anterior 0.81, posterior 0.77 · kept Dice 0.800 · ETA 0:19"
    stop = StepReport(43, None, 31.0, None, float("nan"), None, 0.8, 1e-3, "loss is not finite; stopping")
    assert describe_report(stop).endswith(" — loss is not finite; stopping")


def test_labels_that_hold_one_value_are_refused_for_fine_tuning(qtbot, corrected, notes):
    """One object on every pixel (or nothing at all on the whole image) teaches nothing: said at the
    click, the model and its versions unchanged, and the dock says it failed."""
    viewer, widget, layer = corrected
    model_before = widget.session.model_info.name
    for value in (1, 0):
        layer.data = np.full_like(layer.data, value)
        widget.finetune.start(steps=2)
        wait_idle(qtbot, widget)
        assert notes["error"] and "fine-tuning learns objects against background" in notes["error"][-1]
        assert widget.finetune._readout.value.startswith("Fine-tuning failed")
    assert len(notes["error"]) == 2
    assert widget.session.model_info.name == model_before
    assert not [m for m in _versions.list_versions() if m.name.startswith(f"{model_before}-ft")]
