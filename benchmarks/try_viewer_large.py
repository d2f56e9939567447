"""A large multiscale zarr image predicted from the real napari viewer, as a user does it.

Writes a ``--size`` x ``--size`` mosaic of real DSB 2018 content (``bench_scale.large_mosaic``)
to an OME-Zarr-like multiscale group (levels halved down to about 1024 px, chunks of 1024),
opens it in ``napari.Viewer`` as a multiscale Image layer, docks the plugin's widget, presses
Predict and lets napari's event loop run until the prediction ends. Reports, as measured:

- time to the first result on screen and to the end, from the widget's own status line;
- the event loop's responsiveness while it runs: the longest gap between two ticks of a
  50 ms ``QTimer`` (a frozen viewer shows as a gap of seconds);
- the process's peak resident memory (``ru_maxrss``), against the size of the image;
- the result layers (their type, shape, whether zarr-backed) and the object count.

Needs an X server (``xvfb-run -a python benchmarks/try_viewer_large.py``) and
``../shared/data/dsb2018_train``. ``--screenshot PATH`` saves the window at the end.

    xvfb-run -a -s "-screen 0 1600x1000x24" python benchmarks/try_viewer_large.py [--size 20480]
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scale import large_mosaic, peak_rss  # noqa: E402

PLUGIN, WIDGET = "napari-attention-unet", "Attention U-Net"


def write_multiscale(path: Path, image: np.ndarray, smallest: int = 1024) -> list:
    """Levels 0..n of ``image`` (2x2 mean each step) as zarr arrays ``path/0``, ``path/1``, ...; opened lazily."""
    import zarr

    group = zarr.open_group(str(path), mode="w")
    level, levels = image, []
    while True:
        name = str(len(levels))
        group.create_array(name, data=level, chunks=(1024, 1024))
        levels.append(zarr.open_array(str(path / name), mode="r"))
        if min(level.shape) // 2 < smallest:
            return levels
        h, w = (level.shape[0] // 2) * 2, (level.shape[1] // 2) * 2
        level = level[:h, :w].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3)).astype(image.dtype)


def seam_check(labels, block_size: int) -> str:
    """Objects cut by a block face keep one id: how often do foreground neighbours across a face differ?

    Counted on every block face and, as a control, on lines half a block away (no face there):
    pixels either side of the line, both foreground; the share with different ids. Without
    stitching, every object crossing a face would differ (a share near 1 at the faces).
    """

    def share(positions):
        pairs = differ = 0
        for pos in positions:
            for axis in (0, 1):
                a = np.asarray(labels[pos - 1, :] if axis == 0 else labels[:, pos - 1])
                b = np.asarray(labels[pos, :] if axis == 0 else labels[:, pos])
                both = (a > 0) & (b > 0)
                pairs, differ = pairs + int(both.sum()), differ + int((both & (a != b)).sum())
        return f"{differ}/{pairs} = {differ / max(pairs, 1):.3f}"

    size = labels.shape[0]
    faces = list(range(block_size, size, block_size))
    control = [p + block_size // 2 for p in faces if p + block_size // 2 < size]
    return f"different ids across block faces {share(faces)}; across control lines {share(control)}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=20480, help="side of the mosaic (multiple of 256)")
    parser.add_argument("--model", default="nuclei")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds before giving up")
    parser.add_argument("--screenshot", type=Path, default=None)
    parser.add_argument("--block-size", type=int, default=None, help="blocks of the widget (default: its own)")
    args = parser.parse_args(argv)

    import napari
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    tmp = tempfile.TemporaryDirectory()
    os.environ.setdefault("NAPARI_ATTENTION_UNET_HOME", tmp.name)  # scratch stores in the temp dir
    # Shifted by half a cell, so that block faces (multiples of the block size) cut through the
    # 256 px images of the mosaic and nuclei cross them: the seam check then means something.
    mosaic = np.roll(large_mosaic(args.size), 128, axis=(0, 1))
    levels = write_multiscale(Path(tmp.name) / "slide.zarr", mosaic)
    del mosaic
    rss_before = peak_rss()

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1500, 950)
    layer = viewer.add_image(levels, multiscale=True, name="slide", contrast_limits=(0, 255))
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    widget.use_model(args.model)
    widget._image.value = layer
    if args.block_size:
        widget.block_size = args.block_size
    viewer.scene.camera.center = (args.size * 3 / 8, args.size * 5 / 8)
    viewer.scene.camera.zoom = 1.0
    app = QApplication.instance()
    for _ in range(20):
        app.processEvents()

    ticks: list[float] = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start(50)
    statuses: list[tuple[float, str]] = []
    start = time.perf_counter()
    widget.predict()
    while widget.is_running and time.perf_counter() - start < args.timeout:
        app.processEvents()
        status = widget._status.value
        if not statuses or statuses[-1][1] != status:
            statuses.append((time.perf_counter() - start, status))
            print(f"  [{statuses[-1][0]:7.1f} s] {status}", flush=True)
        time.sleep(0.01)
    total = time.perf_counter() - start
    timer.stop()
    for _ in range(20):
        app.processEvents()

    gaps = np.diff(ticks) if len(ticks) > 1 else np.array([0.0])
    first = next((t for t, s in statuses if re.search(r": [1-9]\d* of \d+ blocks? done", s)), None)
    print(
        f"{args.size}x{args.size} ({args.size**2 / 1e6:.0f} MP) multiscale zarr ({len(levels)} levels), "
        f"model {args.model}, device {widget.session.device}"
    )
    print(f"finished: {not widget.is_running} after {total:.1f} s ({args.size**2 / 1e6 / total:.2f} MP/s)")
    print(f"first status with a block done: {first if first is None else round(first, 1)} s")
    print(f"final status: {widget._status.value!r}")
    print(
        f"event loop: {len(ticks)} ticks of 50 ms, longest gap {gaps.max() * 1000:.0f} ms, "
        f"99th percentile {np.percentile(gaps, 99) * 1000:.0f} ms"
    )
    print(
        f"peak RSS {peak_rss() / 1e9:.2f} GB (before the viewer: {rss_before / 1e9:.2f} GB; "
        f"the uint8 image alone is {args.size**2 / 1e9:.2f} GB)"
    )
    for result in [lay for lay in viewer.layers if lay.name.startswith("slide ")]:
        data = result.data
        shape = data[0].shape if result.multiscale else data.shape
        kind = type(data[0] if result.multiscale else data).__module__.split(".")[0]
        print(f"  layer {result.name!r}: {type(result).__name__}, {shape}, multiscale={result.multiscale}, {kind}")
    masks = viewer.layers["slide masks"]
    print(seam_check(masks.data[0] if masks.multiscale else masks.data, widget.block_size))
    if args.screenshot:
        args.screenshot.parent.mkdir(parents=True, exist_ok=True)
        viewer.screenshot(str(args.screenshot), canvas_only=False)
        print(f"screenshot: {args.screenshot}")
    viewer.close()
    tmp.cleanup()


if __name__ == "__main__":
    main()
