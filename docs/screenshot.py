"""Make docs/images/screenshot.png: napari with the widget, the nuclei sample, its masks and one attention map.

Needs a display; on a machine without one run it under Xvfb::

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python docs/screenshot.py [--model NAME_OR_FILE]

By default the widget's first model is used (the bundled ``nuclei`` model once it is installed).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from qtpy.QtWidgets import QApplication

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from launch_napari import open_viewer  # noqa: E402

OUT = Path(__file__).resolve().parent / "images" / "screenshot.png"


def wait_for(condition, timeout_s: float = 600.0) -> None:
    """Process Qt events until ``condition()`` holds (the prediction runs in a worker thread)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("prediction did not finish in time")
        QApplication.processEvents()
        time.sleep(0.02)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a bundled or saved model's name, or a .safetensors file")
    parser.add_argument("--gate", default="gate1", help="the attention map to show (default: gate1, the finest)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    viewer, widget = open_viewer("nuclei", args.model, show=True)
    viewer.window.resize(1500, 950)
    if widget.session.model is None:
        sys.exit("no model available: install the bundled model or pass --model FILE")
    print(f"model: {widget.session.describe_model()}; device: {widget.session.describe_device()}")
    widget.predict()
    wait_for(lambda: not widget.is_running)

    name = viewer.layers[0].name
    for layer in viewer.layers:
        if layer.name.startswith(f"{name} attention "):
            layer.visible = layer.name == f"{name} attention {args.gate}"
    viewer.layers.selection.active = viewer.layers[f"{name} masks"]
    viewer.layers[f"{name} masks"].contour = 1  # outlines: the image and the attention map stay visible
    viewer.reset_view()
    QApplication.processEvents()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(args.out), canvas_only=False, flash=False)
    print(f"wrote {args.out}")
    viewer.close()


if __name__ == "__main__":
    main()
