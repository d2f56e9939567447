"""Fine-tuning as a new user does it, in the real napari viewer, measured.

The "done when" of the fine-tuning issue, scripted on ISBI 2012 EM (read in place from
``../shared/data``, never copied; the bundled nuclei model has never seen EM):

1. open a slice, dock the widget, press **Predict** (the model finds almost no cells);
2. correct one corner of the masks layer as a user does with the brush and eraser: paint
   each true cell there with its own label and erase the rest (through
   ``Labels.data_setitem``, which records the edits and emits ``Labels.events.paint``
   as napari's brush does), and draw a rectangle around the corrected corner in a
   Shapes layer;
3. choose "train on: inside the shapes" and press **Fine-tune** (widget default budget),
   while a 10 ms ``QTimer`` measures how long the event loop is ever kept waiting;
4. when the widget has saved the new version and re-predicted: score cell-interior Dice
   on **the rest of the slice** (outside the corrected corner) and on **the next slice**,
   before and after, and check the user's corrected layer was not touched;
5. "restart napari": a new Python process opens a new viewer, finds the version in the
   model picker and predicts the next slice with it (same Dice as before the restart).

Everything lives in a throw-away ``NAPARI_ATTENTION_UNET_HOME`` unless ``--home`` is given.
Run under an X server::

    xvfb-run -a -s "-screen 0 1400x900x24" python benchmarks/try_finetune_viewer.py [--minutes 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_finetune import ISBI, dice, imread  # noqa: E402
from bench_responsiveness import measure_gaps  # noqa: E402

PLUGIN, WIDGET = "napari-attention-unet", "Attention U-Net"


def read_slice(index: int) -> tuple[np.ndarray, np.ndarray]:
    name = f"slice_{index:02d}.tif"
    return imread(ISBI / "images" / name), imread(ISBI / "masks" / name)


def open_viewer():
    import napari
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(show=True)
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    return viewer, widget, QApplication.instance()


def predict_layer(app, viewer, widget, image_layer) -> np.ndarray:
    """Press Predict on ``image_layer``; the plugin's masks layer's data when done."""
    widget._image.value = image_layer
    widget.predict()
    gaps = measure_gaps(app, until=lambda: not widget.is_running)
    return np.asarray(viewer.layers[f"{image_layer.name} masks"].data).copy(), gaps


def after_restart(args) -> None:
    """Second process: the saved version is in the picker and predicts as before."""
    viewer, widget, app = open_viewer()
    choices = list(widget._model.choices)
    found = args.after_restart in choices
    result = {"version_listed": found, "choices": choices}
    if found:
        widget._model.value = args.after_restart
        image, mask = read_slice(args.slice + 1)
        layer = viewer.add_image(image, name="next slice")
        labels, _ = predict_layer(app, viewer, widget, layer)
        result["next_slice_dice"] = dice(labels > 0, mask == 1)
        result["model_in_use"] = widget.session.model_info.name
    viewer.close()
    print(json.dumps(result))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slice", type=int, default=2, help="ISBI slice to correct (the next one is scored too)")
    parser.add_argument("--corner", type=int, default=256, help="side of the corrected top-left corner (px)")
    parser.add_argument("--minutes", type=float, default=None, help="time budget (default: the widget's)")
    parser.add_argument("--home", type=Path, default=None, help="NAPARI_ATTENTION_UNET_HOME (default: a temp dir)")
    parser.add_argument("--screenshot", type=Path, default=None, help="save the window after fine-tuning")
    parser.add_argument("--after-restart", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not (ISBI / "images").exists():
        sys.exit(f"needs ../shared/data/isbi2012_em (not found at {ISBI})")
    if args.home is None:
        args.home = Path(tempfile.mkdtemp(prefix="attention-unet-home-"))
    os.environ["NAPARI_ATTENTION_UNET_HOME"] = str(args.home)
    if args.after_restart:
        after_restart(args)
        return {}

    from napari_attention_unet.gui import finetune_widget as _finetune_widget

    viewer, widget, app = open_viewer()
    start_model = widget._model.value
    image, truth = read_slice(args.slice)
    nxt_image, nxt_truth = read_slice(args.slice + 1)
    layer = viewer.add_image(image, name="em")
    next_layer = viewer.add_image(nxt_image, name="next slice", visible=False)

    # 1. Predict, on this slice and (for the "before" figure) on the next one.
    before, predict_gaps = predict_layer(app, viewer, widget, layer)
    next_before, _ = predict_layer(app, viewer, widget, next_layer)
    masks = viewer.layers["em masks"]

    # 2. Correct the top-left corner: every true cell gets its own label, the rest is erased.
    from scipy import ndimage

    corner = (slice(0, args.corner), slice(0, args.corner))
    cells, n_cells = ndimage.label(truth[corner] == 1)
    corrected = np.zeros_like(masks.data[corner])
    corrected[cells > 0] = cells[cells > 0] + int(masks.data.max())
    rows, cols = np.indices(corrected.shape)
    masks.data_setitem((rows.ravel(), cols.ravel()), corrected.ravel())
    painted = widget.finetune.edits.edited_mask(masks)
    user_labels = np.asarray(masks.data).copy()
    shapes = viewer.add_shapes(
        [[[0, 0], [0, args.corner - 1], [args.corner - 1, args.corner - 1], [args.corner - 1, 0]]],
        shape_type="rectangle",
        name="corrected region",
        edge_color="yellow",
        face_color="transparent",
    )

    # 3. Fine-tune on the corrected corner, with the widget's controls.
    ft = widget.finetune
    ft._corrected.value = masks
    ft._region.value = _finetune_widget.IN_SHAPES
    ft._shapes.value = shapes
    widget._image.value = layer
    if args.minutes is not None:
        ft._minutes.value = args.minutes
    # Let the viewer draw the new Shapes layer first: its first draw (vispy loads the text glyphs,
    # 0.3-0.4 s with software GL) came right after the click and was taken for the click's stall.
    measure_gaps(app, seconds=1.0)
    t0 = time.perf_counter()
    ft.start()
    ticks: list[float] = []
    train_gaps = measure_gaps(app, until=lambda: not ft.is_running and not widget.is_running, ticks=ticks)
    wall = time.perf_counter() - t0
    worst = int(np.argmax(train_gaps))
    version = widget._model.value
    readout = ft._readout.value
    if args.screenshot:
        viewer.screenshot(str(args.screenshot), canvas_only=False)

    # 4. Scores after: the re-predicted layer (rest of this slice) and the next slice.
    outside = np.ones(truth.shape, bool)
    outside[corner] = False
    ours = [lay.name for lay in viewer.layers if lay.name.startswith("em masks")]
    after = np.asarray(viewer.layers[ours[-1]].data)
    next_after, _ = predict_layer(app, viewer, widget, next_layer)
    result = {
        "slice": args.slice,
        "corrected_cells": int(n_cells),
        "painted_pixels": int(painted.sum()) if painted is not None else 0,
        "start_model": start_model,
        "version": version,
        "readout": readout,
        "finetune_wall_s": round(wall, 1),
        "validation_curve": [(s, round(d, 3)) for s, d in ft.plot.dices],
        "validation_ap_curve": [(s, round(a, 3)) for s, a in getattr(ft.plot, "aps", [])],
        "loss_first_last": [round(ft.plot.losses[0][1], 3), round(ft.plot.losses[-1][1], 3)]
        if ft.plot.losses
        else None,
        "rest_of_slice_dice": [round(dice(before[outside] > 0, truth[outside] == 1), 3)],
        "next_slice_dice": [round(dice(next_before > 0, nxt_truth == 1), 3)],
        "user_layer_unchanged": bool(np.array_equal(np.asarray(masks.data), user_labels)),
        "layers": [lay.name for lay in viewer.layers],
        "gaps_ms_predict": [round(float(predict_gaps.max()), 1), round(float(np.percentile(predict_gaps, 99)), 1)],
        "gaps_ms_finetune": [round(float(train_gaps.max()), 1), round(float(np.percentile(train_gaps, 99)), 1)],
        # When the longest gap ended, in seconds after pressing Fine-tune (the clicking itself,
        # which builds the training samples on the main thread, is before the first tick).
        "longest_gap_ends_s": round(ticks[worst + 1] - t0, 2) if len(ticks) > 1 else None,
        "press_to_first_tick_ms": round((ticks[0] - t0) * 1000, 1) if ticks else None,
    }
    result["rest_of_slice_dice"].append(round(dice(after[outside] > 0, truth[outside] == 1), 3))
    result["next_slice_dice"].append(round(dice(next_after > 0, nxt_truth == 1), 3))
    viewer.close()

    # 5. Restart: a fresh process with the same home.
    child = subprocess.run(
        [sys.executable, __file__, "--home", str(args.home), "--slice", str(args.slice), "--after-restart", version],
        capture_output=True,
        text=True,
        timeout=600,
    )
    last = child.stdout.strip().splitlines()[-1] if child.stdout.strip() else ""
    result["after_restart"] = json.loads(last) if last.startswith("{") else {"error": child.stderr[-2000:]}
    result["after_restart"].pop("choices", None)

    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
