"""Training a new model for the user's own classes from napari layers, in a real viewer, 2D and 3D."""

from __future__ import annotations

import numpy as np
import pytest

from napari_attention_unet.gui import background_slices as _background_slices
from napari_attention_unet.gui import finetune_widget as _finetune_widget
from napari_attention_unet.gui.new_model import describe_labels

TIMEOUT_MS = 180_000


def three_classes_2d(size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A grey image of two kinds of discs on a background, and its dense class labels 0 / 1 / 2."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    labels = np.zeros((size, size), np.uint8)
    for k in range(8):
        cy, cx = rng.integers(8, size - 8, 2)
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 < 30] = 1 + k % 2
    image = np.where(labels == 1, 200.0, np.where(labels == 2, 100.0, 20.0)) + rng.normal(0, 5, labels.shape)
    return image.astype(np.float32), labels


def two_blobs_3d(z_radii: tuple[float, float] = (5, 4)) -> tuple[np.ndarray, np.ndarray]:
    """A 16x32x32 volume of two ellipsoids (classes 1 and 2) on a noisy background, and its labels."""
    rng = np.random.default_rng(1)
    zz, yy, xx = np.mgrid[:16, :32, :32]
    labels = (((zz - 8) / z_radii[0]) ** 2 + ((yy - 16) / 9) ** 2 + ((xx - 14) / 8) ** 2 < 1).astype(np.uint8)
    labels[((zz - 8) / z_radii[1]) ** 2 + ((yy - 10) / 4) ** 2 + ((xx - 24) / 4) ** 2 < 1] = 2
    return (labels * 80.0 + rng.normal(20, 5, labels.shape)).astype(np.float32), labels


@pytest.fixture
def sane(monkeypatch):
    """Let a few steps of a tiny network pass the sanity check (it rarely predicts more than one class
    by then): these tests are about the dock's flow; a doubted new model has its own test."""
    from napari_attention_unet.core.train import Trainer

    monkeypatch.setattr(Trainer, "_sanity_check", lambda self, trained: (True, "accepted for the test"))


def wait_idle(qtbot, widget) -> None:
    qtbot.waitUntil(lambda: not widget.finetune.is_running and not widget.is_running, timeout=TIMEOUT_MS)


def train_in_dock(qtbot, viewer, widget, name: str, image, labels, start_from: str, steps: int) -> None:
    """Add ``image`` as layer ``name`` and its ``labels`` as ``name labels``, choose both in the dock, and train
    (``start_from``: a new model or the current one) for ``steps``, to the end."""
    viewer.add_image(image, name=name)
    panel = widget.finetune
    panel._corrected.value = viewer.add_labels(labels, name=f"{name} labels")
    widget._image.value = viewer.layers[name]
    panel._start_from.value = start_from
    panel.start(steps=steps)
    wait_idle(qtbot, widget)


def discs_to_train_on(viewer, widget):
    """The discs image and its class labels in the viewer, chosen in the dock; returns the training panel."""
    image, labels = three_classes_2d()
    viewer.add_image(image, name="discs")
    panel = widget.finetune
    panel._corrected.value = viewer.add_labels(labels, name="classes")
    widget._image.value = viewer.layers["discs"]
    return panel


def forty_objects() -> np.ndarray:
    objects = np.zeros((64, 64), np.uint16)
    for i in range(40):
        objects[(i // 8) * 8 : (i // 8) * 8 + 5, (i % 8) * 8 : (i % 8) * 8 + 5] = i + 1
    return objects


def test_what_the_labels_would_teach_is_said_before_the_click():
    _image, labels = three_classes_2d()
    assert describe_labels(labels, "background")[1].startswith("3 classes found")
    task, strokes = describe_labels(labels, "unlabelled")
    assert task == "semantic"
    assert strokes.startswith("2 classes painted (1, 2)") and "0 = unlabelled" in strokes
    objects = forty_objects()
    assert describe_labels(objects, "background") == ("instances", "40 objects: instances; 0 = background")
    # A 0/255 mask (Fiji) is a mask of 40 objects, not one object of id 255; negative values are refused.
    fiji = np.where(objects > 0, 255, 0).astype(np.uint8)
    assert describe_labels(fiji, "background")[1] == "a binary mask of 40 objects: instances; 0 = background"
    assert describe_labels(-fiji.astype(np.int16), "background")[1].startswith("negative values (-255)")
    # Objects are learnt with 0 as their background: strokes of ids would be refused at the click.
    assert describe_labels(objects, "unlabelled")[1].endswith(
        "objects need 0 = background (label 0 is: background, or background in labelled slices)"
    )
    # Objects outlined in 3 slices of a volume: the dock says so, and what would use them.
    volume = np.zeros((9, 64, 64), np.uint16)
    volume[[2, 4, 6]] = objects
    task, text = describe_labels(volume, "background")
    assert task == "instances" and "empty slices between labelled ones" in text and text.endswith("; a 3D model")
    text = describe_labels(volume, "slices")[1]
    assert "0 = background in the 3 labelled slices, the other 6 not labelled; a 3D model" in text
    assert describe_labels(np.zeros((8, 8), np.uint8), "background") == (None, "nothing labelled yet")
    strokes = np.zeros((64, 64), np.uint8)
    strokes[10, 5:40] = 1  # one class painted: said before the click, not "7 objects: instances"
    assert describe_labels(strokes, "unlabelled") == (
        None,
        "one class painted (1): paint a second one (the background as a class of its own)",
    )
    # Strokes on one slice of a stack train a 2D model for every plane; labels through a volume a 3D one.
    stack = np.zeros((12, 64, 64), np.uint8)
    stack[6, 10, 5:40], stack[6, 30, 5:40] = 1, 2
    assert describe_labels(stack, "unlabelled")[1].endswith(
        "; a 2D model, for every plane (label two slices or more for a 3D model)"
    )
    stack[8, 10, 5:40] = 1
    assert describe_labels(stack, "unlabelled")[1].endswith("; a 3D model")
    # Marks belong to "background in labelled slices": with another meaning of 0 they are kept but unused.
    assert "2 marked as background: 0-1)" in describe_labels(stack, "slices", [0, 1])[1]
    unused = describe_labels(stack, "unlabelled", [0, 1])[1]
    assert unused.endswith("the 2 slices marked as background are not used with this label 0")


def test_new_semantic_2d_model_from_dense_labels(plugin_widget, qtbot, notes, sane):
    viewer, widget = plugin_widget
    image, labels = three_classes_2d()
    viewer.add_image(image, name="discs")
    layer = viewer.add_labels(labels, name="classes")
    panel = widget.finetune
    panel._corrected.value = layer
    widget._image.value = viewer.layers["discs"]
    panel._start_from.value = _finetune_widget.NEW_MODEL
    panel._class_names.value = "bright, dim"
    assert not panel._task.native.isHidden() and "3 classes found" in panel._task.value
    assert not panel._class_names.native.isHidden()
    # Objects have no class names: the box goes while an instance layer is chosen.
    panel._corrected.value = viewer.add_labels(forty_objects(), name="objects")
    assert "40 objects" in panel._task.value and panel._class_names.native.isHidden()
    panel._corrected.value = layer
    assert not panel._class_names.native.isHidden()
    assert panel._start.text == "Train" and not widget._output.native.isHidden()  # an instance model now

    panel.start(steps=6)
    wait_idle(qtbot, widget)

    assert not notes["error"], notes["error"]
    model = widget.session.model
    assert model.config.task == "semantic" and model.config.classes == ("background", "bright", "dim")
    assert widget.session.model_info.name.startswith("discs-semantic-2d-")
    assert "2D semantic: bright, dim" in widget._model_info.value  # the dock says what the model is
    masks = viewer.layers["discs masks"]  # re-predicted with the new model, class values
    assert masks.data.shape == labels.shape and set(np.unique(masks.data)) <= {0, 1, 2}
    assert list(masks.features["class"]) == ["background", "bright", "dim"]
    # Each class's held-out Dice is plotted, and the kept state's scores stay in view after saving.
    assert set(panel.plot.class_dices) == {"bright", "dim"}
    assert "Kept step" in panel._readout.value and "bright" in panel._readout.value
    assert np.array_equal(layer.data, labels)  # the user's layer is only read
    # The masks are class values: the choice of instances or a foreground mask does not apply.
    assert widget._output.native.isHidden() and widget._current_slice.text.startswith("current slice")
    # An instance model predicting into the same layer takes the class names away: ids are no classes.
    widget.use_model("tiny")
    widget.predict()
    wait_idle(qtbot, widget)
    assert viewer.layers["discs masks"] is masks and masks.metadata["napari_attention_unet"]["model"] == "tiny"
    assert "class" not in masks.features


def test_a_two_channel_layer_trains_and_predicts_as_channels(plugin_widget, qtbot, notes, sane):
    """A (2, Y, X) layer (napari shows its channels as planes) with (Y, X) labels: a new model of two input
    channels, whose masks are (Y, X) and come from both channels, not one plane each."""
    viewer, widget = plugin_widget
    image, labels = three_classes_2d()
    two = np.stack([image, np.where(labels == 2, 150.0, 20.0).astype(np.float32)])  # class 2 shows in both
    train_in_dock(qtbot, viewer, widget, "two", two, labels, _finetune_widget.NEW_MODEL, steps=4)
    assert not notes["error"], notes["error"]
    assert widget.session.model.config.in_channels == 2
    masks = viewer.layers["two masks"]
    assert masks.data.shape == labels.shape and masks.scale.tolist() == [1.0, 1.0]
    # The two planes go through the network together: the same masks as the (Y, X, 2) image gives.
    from napari_attention_unet.core.predict import run_to_end

    together = run_to_end(widget.session.predict(np.moveaxis(two, 0, -1), rgb=True, gates=())).labels
    np.testing.assert_array_equal(together, masks.data)
    np.testing.assert_array_equal(run_to_end(widget.session.predict(two, gates=())).labels, together)
    # Fine-tuning it on the same layer takes the channels alike (before: "labels do not match the image").
    assert run_to_end(widget.session.finetune(two, labels, steps=2, minutes=None)).steps == 2


def test_new_3d_model_from_a_labelled_volume(plugin_widget, qtbot, notes, sane):
    viewer, widget = plugin_widget
    volume, labels = two_blobs_3d()
    viewer.add_image(volume, name="vol", scale=(2.0, 1.0, 1.0))
    layer = viewer.add_labels(labels, name="vol labels", scale=(2.0, 1.0, 1.0))
    panel = widget.finetune
    panel._corrected.value = layer
    widget._image.value = viewer.layers["vol"]
    panel._start_from.value = _finetune_widget.NEW_MODEL

    panel.start(steps=3)
    wait_idle(qtbot, widget)

    assert not notes["error"], notes["error"]
    model = widget.session.model
    assert model.config.spatial_dims == 3 and model.config.task == "semantic"
    masks = viewer.layers["vol masks"]
    assert masks.data.shape == labels.shape and tuple(masks.scale) == (2.0, 1.0, 1.0)
    gates = [lyr for lyr in viewer.layers if lyr.name.startswith("vol attention")]
    assert gates and all(g.data.shape == labels.shape for g in gates)  # 3D attention maps
    # Stored as `attention-unet train` stores it: `predict` then takes TIFF volumes at the voxel size trained at.
    from napari_attention_unet.core.weights import read_metadata

    _, info = read_metadata(widget.session.model_info.path)
    assert info["spacing"] == [2.0, 1.0, 1.0] and info["task"] == "semantic" and info["zero_is"] == "background"
    assert info["classes"] == list(model.config.classes)
    assert widget._current_slice.text == "current time point only (time series)"  # a 3D model takes volumes


def test_new_3d_instance_model_from_a_labelled_volume_keeps_its_last_state(
    plugin_widget, qtbot, notes, sane, monkeypatch
):
    """Nine nuclei in a volume: instances, a 3D model of one network, kept in its last state. Scored at every
    step, with held-out scores scripted to fall (the network and its states are real): the best state is step 1."""
    from dataclasses import replace

    import napari_attention_unet.core.train.plan as plan_module
    from napari_attention_unet.core.train import Trainer

    defaults, real = plan_module.default_train_config, Trainer.validation_scores
    monkeypatch.setattr(plan_module, "default_train_config", lambda *a, **k: replace(defaults(*a, **k), eval_every=1))

    def falling(self, model=None):
        return {**real(self, model), "dice": 0.9 - 0.1 * self.step, "ap": 0.9 - 0.1 * self.step}

    monkeypatch.setattr(Trainer, "validation_scores", falling)
    viewer, widget = plugin_widget
    rng = np.random.default_rng(2)
    zz, yy, xx = np.mgrid[:16, :48, :48]
    labels = np.zeros((16, 48, 48), np.uint16)
    for i, (cy, cx) in enumerate([(y, x) for y in (10, 24, 38) for x in (10, 24, 38)], start=1):
        labels[(zz - 8) ** 2 + (yy - cy) ** 2 + (xx - cx) ** 2 < 25] = i
    volume = (np.where(labels > 0, 200.0, 20.0) + rng.normal(0, 8, labels.shape)).astype(np.float32)
    viewer.add_image(volume, name="nuclei")
    panel = widget.finetune
    panel._corrected.value = viewer.add_labels(labels, name="nuclei labels")
    widget._image.value = viewer.layers["nuclei"]
    panel._start_from.value = _finetune_widget.NEW_MODEL
    assert "9 objects: instances" in panel._task.value

    panel.start(steps=4)
    wait_idle(qtbot, widget)

    assert not notes["error"], notes["error"]
    model = widget.session.model
    assert (model.config.spatial_dims, model.config.task, model.config.members) == (3, "instances", 1)
    from napari_attention_unet.core.weights import read_metadata

    _, info = read_metadata(widget.session.model_info.path)
    assert info["steps"] == info["kept_step"] == 4  # TrainConfig.keep_last: the last state, not the best (step 1)
    masks = viewer.layers["nuclei masks"]
    assert masks.data.shape == labels.shape and np.issubdtype(masks.data.dtype, np.integer)


def test_a_time_series_trains_on_the_time_point_shown(plugin_widget, qtbot, notes, sane, monkeypatch):
    """A 4D NIfTI series (3 time points) with labels of one volume: the time point on screen trains a one-channel
    3D model (before: the time points became 3 input channels, silently); a series too long for channels alike."""
    viewer, widget = plugin_widget
    volume, labels = two_blobs_3d()
    series = np.stack([volume * 0.5, volume * 0.8, volume])
    layer = viewer.add_image(
        series, name="scan", scale=(1.0, 2.0, 1.0, 1.0), metadata={"nifti": {"shape": [3, 16, 32, 32]}}
    )
    panel = widget.finetune
    panel._corrected.value = viewer.add_labels(labels, name="scan labels", scale=(2.0, 1.0, 1.0))
    widget._image.value = layer
    panel._start_from.value = _finetune_widget.NEW_MODEL
    viewer.dims.set_current_step(0, 2)
    seen = []
    real = _finetune_widget._new_model.train_new_model
    monkeypatch.setattr(
        _finetune_widget._new_model,
        "train_new_model",
        lambda s, image, *a, **k: seen.append(image) or real(s, image, *a, **k),
    )
    panel.start(steps=2)
    wait_idle(qtbot, widget)
    assert not notes["error"], notes["error"]
    assert widget.session.model.config.in_channels == 1 and widget.session.model.config.spatial_dims == 3
    np.testing.assert_array_equal(seen[0], volume)
    assert "'scan' is a time series: training on the time point shown (2)." in notes["info"]

    from napari_attention_unet.gui.new_model import channels_note, time_point_shown

    long = viewer.add_image(np.stack([volume] * 6), name="long")  # no NIfTI header, but 6 cannot be channels
    assert time_point_shown(long, labels.shape, (1, 0, 0, 0))[1] == 1
    two = viewer.add_image(np.stack([volume] * 2), name="two")  # two channels, as napari shows them
    assert time_point_shown(two, labels.shape, (1, 0, 0, 0)) == (two.data, None)
    # ... and the dock says so when it trains on it (a series of 2-4 time points trained a model of as many
    # input channels without a word)
    widget._image.value = two
    notes["info"].clear()
    panel.start(steps=2)
    wait_idle(qtbot, widget)
    assert widget.session.model.config.in_channels == 2
    said = "'two' holds 2 images beside the labels' grid (the slider): taken as 2 channels"
    assert any(said in note for note in notes["info"])
    assert channels_note(layer, labels.shape) is None and channels_note(long, labels.shape) is None


def test_mismatched_labels_are_a_clear_message(plugin_widget, qtbot, notes):
    viewer, widget = plugin_widget
    image, _labels = three_classes_2d()
    viewer.add_image(image, name="discs")
    layer = viewer.add_labels(np.ones((32, 32), np.uint8), name="small")
    widget.finetune._corrected.value = layer
    widget._image.value = viewer.layers["discs"]
    widget.finetune._start_from.value = _finetune_widget.NEW_MODEL
    widget.finetune.start(steps=2)
    wait_idle(qtbot, widget)
    assert notes["error"] and "do not match" in notes["error"][0]
    # The dock says it too, in training words, instead of going on saying "Training…".
    assert widget.finetune._readout.value.startswith("This image cannot be trained on as it is")
    assert widget.finetune._progress.value == 0


def test_a_new_model_needs_no_model_loaded(plugin_widget, qtbot, notes, sane):
    """Without the bundled model (or any model chosen), a new model starts from scratch."""
    viewer, widget = plugin_widget
    panel = discs_to_train_on(viewer, widget)
    widget.session.model, widget.session.model_info = None, None
    panel.start(steps=2)  # fine-tuning needs a model: said, nothing runs
    assert notes["error"] and "Load a model first" in notes["error"][-1] and not panel.is_running
    panel._start_from.value = _finetune_widget.NEW_MODEL
    panel.start(steps=3)
    wait_idle(qtbot, widget)
    assert len(notes["error"]) == 1, notes["error"]
    assert widget.session.model.config.classes == ("background", "class 1", "class 2")


def test_new_model_from_strokes_where_0_is_unlabelled(plugin_widget, qtbot, notes, sane):
    """A partial label map (a few strokes per class, background painted as class 1): 0 is not a class."""
    viewer, widget = plugin_widget
    image, dense = three_classes_2d()
    strokes = np.zeros_like(dense)
    strokes[::7] = dense[::7] + 1  # every 7th row painted: 1 = background, 2 and 3 the two kinds of disc
    viewer.add_image(image, name="discs")
    layer = viewer.add_labels(strokes, name="strokes")
    panel = widget.finetune
    panel._corrected.value = layer
    widget._image.value = viewer.layers["discs"]
    panel._start_from.value = _finetune_widget.NEW_MODEL
    panel._zero.value = _finetune_widget.ZERO_UNLABELLED
    assert "0 = unlabelled" in panel._task.value
    panel.start(steps=3)
    wait_idle(qtbot, widget)
    assert not notes["error"], notes["error"]
    assert widget.session.model.config.classes == ("unlabelled", "class 1", "class 2", "class 3")


def test_new_3d_model_from_a_few_labelled_slices(plugin_widget, qtbot, notes, sane, monkeypatch):
    """Three slices of a volume labelled (background left 0 in them): "background in labelled slices"."""
    viewer, widget = plugin_widget
    volume, dense = two_blobs_3d(z_radii=(6, 5))
    labels = np.zeros_like(dense)
    labels[[5, 8, 11]] = dense[[5, 8, 11]]
    viewer.add_image(volume, name="vol")
    panel = widget.finetune
    panel._corrected.value = viewer.add_labels(labels, name="three slices")
    widget._image.value = viewer.layers["vol"]
    panel._start_from.value = _finetune_widget.NEW_MODEL
    assert "4 empty slices between labelled ones" in panel._task.value  # the dock suggests the mode
    panel._zero.value = _finetune_widget.ZERO_SLICES
    assert panel.zero_is == "slices"
    assert "0 = background in the 3 labelled slices, the other 13 not labelled" in panel._task.value
    assert "mark slices beyond the structure as background" in panel._task.value
    marks = panel._background
    told = []
    monkeypatch.setattr(_background_slices, "show_info", told.append)
    assert not marks.native.isHidden()
    for z in (0, 15):  # the slice shown in the viewer is marked, and shown in the dock
        viewer.dims.set_current_step(0, z)
        assert marks.toggle() == f"Slice {z} marked as background."
    viewer.dims.set_current_step(0, 8)
    assert marks.toggle() == "Slice 8 holds labels: it is labelled already, its 0s are background."
    assert panel._corrected.value.metadata["background_slices"] == [0, 15]
    assert told == ["Slice 8 holds labels: it is labelled already, its 0s are background."]
    marked = "0 = background in the 5 labelled slices (2 marked as background: 0, 15), the other 11"
    assert marked in panel._task.value
    viewer.dims.set_current_step(0, 15)
    assert marks._button.text == "Unmark slice 15 (marked as background)"
    assert marks.toggle() == "Slice 15 is no longer marked." and marks.toggle() == "Slice 15 marked as background."
    panel._zero.value = _finetune_widget.ZERO_BACKGROUND
    assert marks.native.isHidden()  # the marks mean something only with "background in labelled slices"
    panel._zero.value = _finetune_widget.ZERO_SLICES

    panel.start(steps=3)
    wait_idle(qtbot, widget)
    assert not notes["error"], notes["error"]
    assert widget.session.plan.background_slices == [[0, 15]]
    model = widget.session.model
    assert model.config.spatial_dims == 3 and model.config.classes == ("background", "class 1", "class 2")
    assert viewer.layers["vol masks"].data.shape == dense.shape


def test_a_new_model_the_check_doubts_is_listed_not_put_in_use(plugin_widget, qtbot, notes, monkeypatch):
    """A model that predicts one class everywhere is saved (no work lost) but neither picked nor used to
    re-predict: the masks on screen stay those of the model in use, and the dock says how to try it."""
    from napari_attention_unet.core.train import Trainer

    monkeypatch.setattr(Trainer, "_sanity_check", lambda self, trained: (False, "it predicts one class everywhere"))
    viewer, widget = plugin_widget
    panel = discs_to_train_on(viewer, widget)
    panel._start_from.value = _finetune_widget.NEW_MODEL
    panel.start(steps=3)
    wait_idle(qtbot, widget)
    saved = [name for name in widget._model.choices if name.startswith("discs-semantic-2d-")]
    assert len(saved) == 1 and widget._model.value == "tiny" and widget.session.model_info.name == "tiny"
    assert f"Not put in use: pick '{saved[0]}' in the model list to try it." in panel._readout.value
    assert "one class everywhere" in notes["warning"][-1] and "discs masks" not in viewer.layers


def test_a_new_model_cancelled_after_a_few_steps_is_saved_not_put_in_use(plugin_widget, qtbot, notes, sane):
    """Cancel a new model from scratch a few steps in: its state is saved (no work lost), but the model in use
    (and the masks it made) stays, and the dock says how to try the new one."""
    viewer, widget = plugin_widget
    panel = discs_to_train_on(viewer, widget)
    panel._start_from.value = _finetune_widget.NEW_MODEL
    panel.start(steps=100_000)
    trainer = lambda: widget.session.trainer  # noqa: E731 - built in the worker
    qtbot.waitUntil(lambda: trainer() is not None and trainer().step >= 2, timeout=TIMEOUT_MS)
    panel.cancel()
    wait_idle(qtbot, widget)
    saved = [name for name in widget._model.choices if name.startswith("discs-semantic-2d-")]
    assert len(saved) == 1 and widget.session.model_info.name == "tiny"
    assert panel._readout.value.startswith("Cancelled at step")
    assert f"Not put in use: pick '{saved[0]}' in the model list to try it." in panel._readout.value


def test_what_the_plan_inferred_is_shown_while_training_without_command_line_flags():
    from types import SimpleNamespace

    from napari_attention_unet.gui.new_model import plan_notes

    notes = [
        "3 classes found (0, 1, 2): semantic (inferred: --task chooses another)",  # shown before the click
        "the labels lie in one slice of each volume: a 2D model, for every plane (--dims 3: a 3D one)",
        "the classes keep the starting model's names: membrane, mitochondria (--class-names renames)",
        "3 empty slice(s) lie between labelled ones and are trained on as background: if you labelled only some "
        "slices, give --zero-is slices",
    ]
    said = plan_notes(SimpleNamespace(plan=SimpleNamespace(notes=notes)))
    assert said == (
        " Note: the labels lie in one slice of each volume: a 2D model, for every plane; the classes keep the "
        "starting model's names: membrane, mitochondria."
    )
    assert plan_notes(SimpleNamespace(plan=None)) == "" == plan_notes(SimpleNamespace(plan=SimpleNamespace(notes=[])))
    # a CT's window is said in the readout, without the command line's flag
    from napari_attention_unet.core.intensity import choose_window

    scan = np.where(np.arange(64).reshape(4, 4, 4) % 2, -1000, 40).astype(np.int16)  # air and soft tissue, in HU
    scan[1:3, 1:3, 1:3] = [[[60, 70], [80, 90]], [[65, 75], [85, 95]]]
    note = choose_window([scan], [(scan > 50).astype(np.uint8)])[1]
    ct = plan_notes(SimpleNamespace(plan=SimpleNamespace(notes=[note])))
    assert ct.startswith(" Note: intensities look like Hounsfield units (a CT): every image is seen through one window")
    assert ct.endswith("(the labelled voxels' 0.5-99.5 percentiles), not its own percentiles.") and "--" not in ct


def test_fine_tuning_a_new_3d_semantic_model_in_the_dock_keeps_half_of_its_change(
    plugin_widget, qtbot, notes, sane, monkeypatch
):
    """A new 3D semantic model, then "fine-tune the current model" on a corrected volume: the version the dock
    saves and puts in use lies halfway between that model and the state training kept, and the dock says so."""
    import torch

    from napari_attention_unet.core.train import Trainer

    torch.manual_seed(0)  # the new model's random start: the same in every run
    viewer, widget = plugin_widget
    panel = widget.finetune
    train_in_dock(qtbot, viewer, widget, "vol", *two_blobs_3d(), _finetune_widget.NEW_MODEL, steps=3)
    start = {k: v.clone() for k, v in widget.session.model.state_dict().items()}

    # another volume, corrected by the user; a tiny net 3 steps old seldom beats itself on the strip in 4 steps
    # (the verdict has its own tests)
    monkeypatch.setattr(Trainer, "_beats_best", lambda self, scores: True)
    train_in_dock(qtbot, viewer, widget, "next", *two_blobs_3d(z_radii=(6, 3)), _finetune_widget.FINE_TUNE, steps=4)

    assert not notes["error"], notes["error"]
    assert "keeps 50% of the change in weights" in panel._readout.value, panel._readout.value
    assert any(note.startswith("Fine-tuned model saved as") for note in notes["info"]), notes
    trainer = widget.session.trainer
    whole = trainer.best_state if trainer.best_state is not None else trainer.model.state_dict()
    kept = widget.session.model.state_dict()  # the version in use
    assert widget.session.model_info.name != "tiny" and "next masks" in [lyr.name for lyr in viewer.layers]
    weights = [key for key, value in start.items() if value.is_floating_point()]
    assert max(float((whole[k].cpu() - start[k]).abs().max()) for k in weights) > 1e-5  # halfway is not the whole
    for key in weights:
        halfway = (start[key] + whole[key].cpu().to(start[key].dtype)) / 2
        torch.testing.assert_close(kept[key], halfway, atol=1e-6, rtol=0)
