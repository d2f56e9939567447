"""Result layers without Qt: names, placement, and which layers a new result may replace."""

from __future__ import annotations

import numpy as np
import pytest
from napari.components import LayerList
from napari.layers import Image, Labels

from napari_attention_unet.gui import layers as _layers
from napari_attention_unet.gui.layers import MARKER, Placement, apply_results, result_layers, slice_index
from napari_attention_unet.gui.session import PartPrediction


def make_prediction(shape=(6, 8), index=(), gates=("gate1", "gate2"), fill=1):
    labels = np.full(shape, fill, dtype=np.int32)
    maps = {g: np.full(shape, 0.25 * (k + 1), dtype=np.float32) for k, g in enumerate(gates)}
    return PartPrediction(labels=labels, gate_maps=maps, index=index, device="CPU", model_name="tiny")


@pytest.fixture
def placement():
    return Placement(shape=(6, 8), scale=(0.5, 2.0), translate=(10.0, -3.0), source_id="abc", source_name="cells")


def test_names():
    assert _layers.masks_name("cells") == "cells masks"
    assert _layers.attention_name("cells", "gate3") == "cells attention gate3"
    assert _layers.unique_name(["a", "a [2]"], "a") == "a [3]"
    assert _layers.unique_name(["b"], "a") == "a"


def test_placement_from_rgb_layer_is_spatial_only():
    layer = Image(np.zeros((6, 8, 3), dtype=np.uint8), rgb=True, scale=(2, 3), translate=(1, 1), name="he")
    placement = _layers.placement_from_layer(layer)
    assert placement.shape == (6, 8) and placement.scale == (2.0, 3.0) and placement.translate == (1.0, 1.0)
    assert placement.source_name == "he" and placement.source_id == str(layer.unique_id)


def test_result_layers_kwargs(placement):
    masks, gate1, gate2 = result_layers(make_prediction(), placement)
    data, kwargs, kind = masks.as_layer_data_tuple()
    assert kind == "labels" and kwargs["name"] == "cells masks" and data.shape == (6, 8)
    assert kwargs["scale"] == placement.scale and kwargs["translate"] == placement.translate
    assert kwargs["metadata"][MARKER] == {"role": "masks", "gate": None, "source": "abc", "model": "tiny"}
    _, kwargs, kind = gate1.as_layer_data_tuple()
    assert kind == "image" and kwargs["name"] == "cells attention gate1"
    assert kwargs["colormap"] == "magma" and kwargs["blending"] == "additive"
    assert kwargs["opacity"] == 0.5 and kwargs["contrast_limits"] == (0.0, 1.0)
    assert kwargs["visible"] and not gate2.kwargs["visible"]  # only the first map starts visible


def test_gate_maps_are_shown_from_their_median_to_their_top(placement):
    """A map between 0.1 and 0.5 drawn on [0, 1] tinted the whole image alike; it is now shown from its
    median (the lower half adds nothing) to its 99.5th percentile, and its values are kept."""
    from napari_attention_unet.gui.layer_style import display_range

    rng = np.random.default_rng(0)
    values = rng.uniform(0.1, 0.5, (6, 8)).astype(np.float32)
    prediction = make_prediction()
    prediction.gate_maps["gate1"] = values
    gate1 = result_layers(prediction, placement)[1]
    low, high = gate1.kwargs["contrast_limits"]
    assert low == pytest.approx(np.median(values)) and high == pytest.approx(np.percentile(values, 99.5))
    assert 0.1 < low < high < 0.5 and gate1.full_data() is values
    big = rng.uniform(0.0, 1.0, (3000, 3000)).astype(np.float32)  # 9 M values: a subsample is read
    assert display_range(big) == pytest.approx((0.5, 0.995), abs=0.003)
    assert display_range(np.full((4, 4), 0.3)) == (0.0, 1.0)  # flat: nothing to stretch
    assert display_range(np.full((4, 4), np.nan)) == (0.0, 1.0)

    # predicting again into our own layer gives it the new map's range
    layers = LayerList()
    apply_results(layers, result_layers(prediction, placement), placement)
    prediction.gate_maps["gate1"] = values * 2
    apply_results(layers, result_layers(prediction, placement), placement)
    assert tuple(layers["cells attention gate1"].contrast_limits) == pytest.approx((2 * low, 2 * high))


def test_block_is_embedded_in_a_full_size_layer():
    placement = Placement((3, 6, 8), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), "abc", "stack")
    masks = result_layers(make_prediction(index=(1,)), placement)[0]
    full = masks.full_data()
    assert full.shape == (3, 6, 8) and (full[1] == 1).all() and not full[0].any() and not full[2].any()


def test_slice_index_uses_world_coordinates():
    placement = Placement((5, 6, 8), (2.0, 1.0, 1.0), (10.0, 0.0, 0.0), "abc", "stack")
    assert slice_index((14.0, 0.0, 0.0), placement, 1) == (2,)
    assert slice_index((0.0, 14.0, 0.0, 0.0), placement, 1) == (2,)  # the viewer may have more axes
    assert slice_index((99.0, 0.0, 0.0), placement, 1) == (4,)  # clipped to the stack
    assert slice_index((99.0, 0.0, 0.0), placement, 0) == ()


def test_apply_adds_then_updates_own_layers(placement):
    layers = LayerList()
    first = apply_results(layers, result_layers(make_prediction(), placement), placement)
    # the maps under the masks (an additive map over them would tint every mask), as when added one at a time
    assert [layer.name for layer in layers] == ["cells attention gate1", "cells attention gate2", "cells masks"]
    assert isinstance(first[0], Labels) and isinstance(first[1], Image)
    np.testing.assert_allclose(layers["cells masks"].scale, placement.scale)

    second = apply_results(layers, result_layers(make_prediction(fill=2), placement), placement)
    assert len(layers) == 3 and all(a is b for a, b in zip(first, second))
    assert (layers["cells masks"].data == 2).all()


def test_apply_keeps_painted_and_user_layers(placement):
    layers = LayerList()
    user = Labels(np.full((6, 8), 5, dtype=np.int32), name="cells masks")
    layers.append(user)
    apply_results(layers, result_layers(make_prediction(), placement), placement)
    ours = layers["cells masks [2]"]
    assert (user.data == 5).all() and MARKER not in user.metadata

    ours.paint((1, 1), 9)
    assert _layers.is_user_modified(ours)
    apply_results(layers, result_layers(make_prediction(fill=3), placement), placement)
    assert ours.data[1, 1] == 9 and (layers["cells masks [3]"].data == 3).all()


def test_apply_slice_into_existing_stack_layer():
    placement = Placement((3, 6, 8), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), "abc", "stack")
    layers = LayerList()
    apply_results(layers, result_layers(make_prediction(index=(0,), fill=1), placement), placement)
    apply_results(layers, result_layers(make_prediction(index=(2,), fill=4), placement), placement)
    masks = layers["stack masks"]
    assert len(layers) == 3
    assert (masks.data[0] == 1).all() and not masks.data[1].any() and (masks.data[2] == 4).all()
    assert not _layers.is_user_modified(masks)


def test_apply_replaces_layer_of_other_shape(placement):
    layers = LayerList()
    apply_results(layers, result_layers(make_prediction(), placement), placement)
    bigger = Placement((12, 8), placement.scale, placement.translate, "abc", "cells")
    apply_results(layers, result_layers(make_prediction(shape=(12, 8)), bigger), bigger)
    assert layers["cells masks [2]"].data.shape == (12, 8)


def test_layers_and_session_import_no_qt():
    import subprocess
    import sys

    code = (
        "import sys, napari_attention_unet.gui.layers, napari_attention_unet.gui.session; "
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert not {"qtpy", "PyQt6", "PySide6", "magicgui", "superqt", "vispy"} & set(out)


def test_layers_prepared_in_the_worker_carry_the_fingerprint_the_main_thread_would_compute():
    """``predict_into_layers`` (run in the worker) builds the full stack and hashes it there; the layers
    added from it record that very fingerprint, and a later change to them is still noticed."""
    from vispy.visuals.line import dash_atlas

    placement = Placement((3, 6, 8), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), "abc", "stack")

    def steps():
        yield "progress"
        return make_prediction(index=(1,), fill=7)

    # The first Labels outline's dash patterns are computed here too (once), not on the main thread.
    _layers.warm_up_drawing.cache_clear()
    dash_atlas._make_pattern.cache_clear()
    generator = _layers.predict_into_layers(steps(), placement)
    assert next(generator) == "progress"
    with pytest.raises(StopIteration) as done:
        next(generator)
    prediction, prepared = done.value.value
    assert prediction.index == (1,) and all(r.full_fingerprint for r in prepared)
    assert prepared[0].full.shape == (3, 6, 8) and (prepared[0].full[1] == 7).all()
    assert dash_atlas._make_pattern.cache_info().currsize >= 13

    layers = LayerList()
    added = apply_results(layers, prepared, placement)
    for layer, result in zip(added, prepared):
        assert layer.data is result.full
        assert layer.metadata[MARKER]["fingerprint"] == _layers.fingerprint(layer.data)
        assert not _layers.is_user_modified(layer)
    added[1].data[0, 0, 0] = 0.9  # a change that bypassed paint events
    assert _layers.is_user_modified(added[1])


def test_fingerprint_after_write_is_the_fingerprint_of_the_written_array():
    rng = np.random.default_rng(0)
    stack = rng.integers(0, 500, (4, 3, 6, 8)).astype(np.uint16)
    block = rng.integers(0, 70000, (6, 8))  # int64, cast on writing as numpy does
    expected = stack.copy()
    expected[2, 1] = block
    assert _layers.fingerprint_after_write(stack, (2, 1), block) == _layers.fingerprint(expected)
    assert _layers.fingerprint(stack) != _layers.fingerprint(expected)  # stack itself is untouched


def test_a_second_plane_is_checked_in_the_worker_and_written_in_place():
    """Re-predicting another plane: the worker hashes our earlier layers (none changed), the main thread
    writes the block in place and records the digest the worker computed; an edit that bypassed paint
    events between two clicks is still noticed, and that layer is kept."""
    placement = Placement((3, 6, 8), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), "abc", "stack")
    layers = LayerList()

    def click(index, fill):
        earlier = _layers.own_layer_states(layers, placement.source_id)

        def steps():
            return make_prediction(index=index, fill=fill)
            yield  # a generator, as Session.predict is

        generator = _layers.predict_into_layers(steps(), placement, earlier)
        with pytest.raises(StopIteration) as done:
            next(generator)
        _, prepared = done.value.value
        return prepared, apply_results(layers, prepared, placement)

    _, first = click((0,), 1)
    prepared, second = click((2,), 4)
    assert all(r.checked is not None and r.checked[1] and r.full is None for r in prepared)
    assert all(a is b for a, b in zip(first, second)) and len(layers) == 3
    masks = layers["stack masks"]
    assert (masks.data[0] == 1).all() and (masks.data[2] == 4).all()
    for layer in second:
        assert layer.metadata[MARKER]["fingerprint"] == _layers.fingerprint(layer.data)

    masks.data[1, 0, 0] = 5  # not through a paint event
    prepared, third = click((1,), 2)
    assert prepared[0].checked[1] is False and prepared[0].full is not None
    assert third[0] is not masks and masks.data[1, 0, 0] == 5 and not masks.data[1, 1:].any()
    assert layers["stack masks [2]"].data[1].min() == 2 and third[1] is second[1]
