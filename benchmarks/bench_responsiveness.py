"""How responsive napari stays while the widget predicts.

A 10 ms QTimer runs on napari's event loop while Predict works in its worker on a
1024x1024 real-content image (a mosaic of the nuclei sample). Every gap between two
ticks longer than the timer's period is time the viewer could not react. Printed: the
longest gap and the 99th percentile during prediction, against the same measurement
with the viewer idle (the reference run in the same process), and the ratio.

Run under an X server: ``xvfb-run -a python benchmarks/bench_responsiveness.py``.
``--planes N`` makes it a stack of N planes, of which the widget predicts the plane shown (the
dock's default), so the result layers are the stack's size. ``--lazy`` hands the image to napari
as a dask array, so the widget goes block by block (1024 px blocks, the region on screen first)
into zarr-backed layers refreshed as blocks arrive. ``--again`` measures a second click too, which
updates the plugin's layers in place (on a stack, for the middle plane). ``--finetune S`` then
fine-tunes the model in use for S seconds on the predicted masks grown by 2 px (in a Labels layer of
its own, as a user's corrected layer: outlines drawn wider than the model draws them, something to
learn), from the click on Fine-tune to the new version's layers drawn.
The issue's bar: no event-loop stall over ~100 ms, from the click to the layers drawn (the
measurement goes on for a second after the last layer is added, for their first draw).
"""

from __future__ import annotations

import argparse
import gc
import threading
import time

import numpy as np

#: Measured on after the run ends, so that the first draw of the new layers counts too.
DRAW_TAIL_S = 1.0


def measure_gaps(
    app, seconds: float | None = None, until=None, period_ms: int = 10, ticks: list[float] | None = None
) -> np.ndarray:
    """Gaps (ms) between ticks of a ``period_ms`` QTimer while the event loop runs; ``ticks``
    (a list) receives the tick times (``time.perf_counter``), to find when a gap happened.

    The start and the end of the measurement count as ticks: work that the last
    ``processEvents`` ran before ``until`` came true (e.g. adding the result layers, the
    moment the prediction ends) is a gap too. Before 2026-11-25 the end was left out, and
    that hid the longest stall of a prediction (benchmarks/README.md).
    """
    from qtpy.QtCore import QTimer

    ticks = [] if ticks is None else ticks
    timer = QTimer()
    timer.setInterval(period_ms)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    start = time.perf_counter()
    ticks.append(start)
    timer.start()
    while True:
        app.processEvents()
        time.sleep(0.001)
        if seconds is not None and time.perf_counter() - start > seconds:
            break
        if until is not None and until():
            break
    ticks.append(time.perf_counter())
    timer.stop()
    return np.diff(ticks) * 1000 if len(ticks) > 1 else np.array([0.0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, help="mosaic side in pixels")
    parser.add_argument("--lazy", action="store_true", help="a dask image: block by block into zarr-backed layers")
    parser.add_argument("--again", action="store_true", help="click Predict a second time (updates the layers)")
    parser.add_argument(
        "--planes",
        type=int,
        default=0,
        help="a stack of this many planes (ZYX), of which the widget predicts the one shown",
    )
    parser.add_argument(
        "--finetune", type=float, default=0.0, metavar="S", help="then fine-tune for S seconds on the masks"
    )
    args = parser.parse_args()

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_attention_unet.gui.sample_data import nuclei_sample

    viewer = napari.Viewer(show=True)
    tile = nuclei_sample()[0][0]
    reps = -(-args.size // tile.shape[0])
    image = np.tile(tile, (reps, reps))[: args.size, : args.size]
    if args.planes:  # the dock's default "current slice only": one plane predicted, layers the stack's size
        image = np.stack([np.roll(image, 7 * z, axis=1) for z in range(args.planes)])
    if args.lazy:
        import dask.array as da

        image = da.from_array(image, chunks=1024)
    viewer.add_image(image, name="mosaic")
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-attention-unet", "Attention U-Net")
    app = QApplication.instance()
    widget.session.inference_model()  # the model is prepared once per session, not per click

    idle = measure_gaps(app, seconds=3.0)
    runs = [("while predicting", click_and_measure(app, widget))]
    if args.again:  # a second click updates the plugin's layers (another plane of a stack)
        if args.planes:
            viewer.dims.set_point(0, args.planes // 2)
        runs.append(("again (layers updated)", click_and_measure(app, widget)))
    if args.finetune:
        from scipy import ndimage

        masks = next(layer for layer in viewer.layers if layer.name.endswith("masks"))
        panel = widget.finetune
        wider = ndimage.grey_dilation(np.asarray(masks.data), size=5)  # every object 2 px wider (ids kept)
        panel._corrected.value = viewer.add_labels(np.where(masks.data > 0, masks.data, wider), name="corrections")
        panel._minutes.value = max(args.finetune / 60, panel._minutes.min)
        measure_gaps(app, seconds=1.0)  # the new layer's first draw is not the click's
        runs.append(("while fine-tuning", click_and_measure(app, widget, panel)))
        print(f"fine-tune: {panel._readout.value}")
    layers = [layer.name for layer in viewer.layers]
    viewer.close()

    elapsed = runs[0][1][2]
    print(
        f"{'dask ' if args.lazy else ''}image {f'{args.planes}x' if args.planes else ''}{args.size}x{args.size}, "
        f"prediction took {elapsed:.2f} s; "
        f"layers now: {layers}"
    )
    print(f"{'':28s}{'longest gap':>14s}{'99th pct':>12s}{'median':>10s}")
    for name, gaps in (("viewer idle (reference)", idle), *((name, run[0]) for name, run in runs)):
        print(f"{name:28s}{gaps.max():11.1f} ms{np.percentile(gaps, 99):9.1f} ms{np.median(gaps):7.1f} ms")
    for name, (busy, when, _, full) in runs:
        print(f"longest gaps {name} (time after the click): {when}")
        print(f"longest gap {name} / idle: {busy.max() / max(idle.max(), 1e-9):.2f}x  (bar: under ~100 ms)")
        print(f"full garbage collections {name}: {full or 'none'}")


def click_and_measure(app, widget, panel=None) -> tuple[np.ndarray, str, float, str]:
    """Press Predict (or ``panel``'s Fine-tune) and tick until the layers are drawn: (gaps in ms, the longest
    three and when, seconds, the full garbage collections that ran: when, how long, on which thread). A fine-tune
    ends with the new version's prediction and its layers. A full collection holds the GIL for as long as it
    walks the process's objects (280-410 ms in a napari process, benchmarks/README.md), whichever thread runs it."""
    full = []
    t0 = time.perf_counter()
    gc.callbacks.append(collections := _full_collections(full))
    widget.predict() if panel is None else panel.start()
    ended: list[float] = []

    def drawn() -> bool:
        # The run ends when the last result layer is in; its first draw comes in the next turns.
        busy = widget.is_running or (panel is not None and panel.is_running)
        if not busy and not ended:
            ended.append(time.perf_counter())
        return bool(ended) and time.perf_counter() - ended[0] > DRAW_TAIL_S

    ticks = [t0]  # what the click itself runs on the main thread (a large image's layers are added there) counts
    try:
        busy = measure_gaps(app, until=drawn, ticks=ticks)
    finally:
        gc.callbacks.remove(collections)
    worst = np.argsort(busy)[::-1][:3]
    when = ", ".join(f"{busy[i]:.0f} ms at {ticks[i] - t0:.2f} s" for i in sorted(worst))
    full_text = ", ".join(f"{1000 * took:.0f} ms at {start - t0:.2f} s ({thread})" for start, took, thread in full)
    return busy, when, ended[0] - t0, full_text


def _full_collections(found: list):
    """A ``gc.callbacks`` entry that appends (start, seconds, thread name) of each full collection to ``found``."""
    started = {}

    def callback(phase: str, info: dict) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            started["t"] = time.perf_counter()
        elif "t" in started:
            found.append((started["t"], time.perf_counter() - started.pop("t"), threading.current_thread().name))

    return callback


if __name__ == "__main__":
    main()
