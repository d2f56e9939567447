"""Open napari with the Attention U-Net widget docked and the nuclei sample loaded (``make run``).

Usage: ``python scripts/launch_napari.py [--sample nuclei|nuclei_he] [--model NAME_OR_FILE]``
"""

from __future__ import annotations

import argparse

import napari

PLUGIN, WIDGET = "napari-attention-unet", "Attention U-Net"


def open_viewer(sample: str = "nuclei", model: str | None = None, show: bool = True):
    """A viewer with the sample loaded and the widget docked; returns ``(viewer, widget)``."""
    viewer = napari.Viewer(show=show)
    viewer.open_sample(PLUGIN, sample)
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    if model:
        widget.use_model(model)
    return viewer, widget


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", default="nuclei", choices=["nuclei", "nuclei_he"])
    parser.add_argument("--model", help="a bundled or saved model's name, or a .safetensors file")
    args = parser.parse_args()
    open_viewer(args.sample, args.model)
    napari.run()


if __name__ == "__main__":
    main()
