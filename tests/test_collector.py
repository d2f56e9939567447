"""Old objects out of Python's full garbage collections while the dock predicts or trains (gui.collector)."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest

from napari_attention_unet.gui.collector import RunFreeze

TIMEOUT_MS = 120_000


@pytest.fixture
def nothing_frozen():
    """A clean start and end, whatever ran before."""
    gc.unfreeze()
    yield
    gc.unfreeze()


class Cycle:
    """An object that only the cyclic collector can free."""

    def __init__(self) -> None:
        self.me = self


def test_a_run_leaves_the_objects_alive_at_its_start_out_of_collections(nothing_frozen):
    old = Cycle()
    old_ref = weakref.ref(old)
    tracked = len(gc.get_objects())
    freeze = RunFreeze()
    freeze.hold(True)
    assert freeze.frozen
    assert gc.get_freeze_count() > 0.9 * tracked
    assert len(gc.get_objects()) < 0.1 * tracked  # what a full collection walks now
    new = Cycle()
    new_ref = weakref.ref(new)
    del old, new
    gc.collect()
    assert new_ref() is None  # made during the run: collected as before
    assert old_ref() is not None  # older: kept until the run ends
    freeze.hold(True)  # a second start (a fine-tune's re-prediction) changes nothing
    freeze.hold(False)
    assert not freeze.frozen and gc.get_freeze_count() == 0
    gc.collect()
    assert old_ref() is None  # then collected, as it would have been


def test_objects_frozen_by_someone_else_stay_frozen(nothing_frozen):
    gc.freeze()
    count = gc.get_freeze_count()
    freeze = RunFreeze()
    freeze.hold(True)
    assert not freeze.frozen
    freeze.hold(False)
    assert gc.get_freeze_count() == count


def test_the_dock_freezes_from_the_click_to_the_layers_added(qtbot, plugin_widget, nuclei_image, nothing_frozen):
    viewer, widget = plugin_widget
    viewer.add_image(nuclei_image, name="nuclei")
    widget._tile_size.value = 128
    widget.predict()
    assert widget.is_running and gc.get_freeze_count() > 0
    qtbot.waitUntil(lambda: not widget.is_running, timeout=TIMEOUT_MS)
    assert "nuclei masks" in viewer.layers and "nuclei attention gate2" in viewer.layers
    assert gc.get_freeze_count() == 0

    # Fine-tuning too, until its end (here cancelled at once).
    corrected = viewer.add_labels((nuclei_image > np.percentile(nuclei_image, 70)).astype(np.uint8), name="mine")
    widget.finetune._corrected.value = corrected
    widget._image.value = viewer.layers["nuclei"]
    widget.finetune.start()
    assert widget.finetune.is_running and gc.get_freeze_count() > 0
    widget.finetune.cancel()
    qtbot.waitUntil(lambda: not widget.finetune.is_running and not widget.is_running, timeout=TIMEOUT_MS)
    assert gc.get_freeze_count() == 0
