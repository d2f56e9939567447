"""Result layers into the viewer over several event-loop turns, each drawn in a turn of its own.

napari takes 50-150 ms to add one large layer (its Qt controls, its vispy visual) and the canvas's next
frame takes 40-60 ms more with software GL. Both used to land in one event-loop turn: the viewer froze for
their sum, 120-130 ms, over the 100 ms a user feels (benchmarks/README.md, bench_responsiveness). Here the
canvas's drawing is held while napari adds a layer and let go in the next turn, so the frame is a turn of
its own, and the next layer goes in only after that frame.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from napari_attention_unet.gui import layers as _layers

if TYPE_CHECKING:
    import napari

    from napari_attention_unet.gui.layers import Placement, ResultLayer


def scene_canvases() -> list:
    """The OpenGL widgets the application's windows draw in: napari's canvas is one (vispy's Qt backend), found
    through Qt alone (a plugin reading napari's private window attributes gets a deprecation warning). None
    found (another backend): drawing is not held, and the layers go in as before."""
    from qtpy.QtWidgets import QApplication

    try:
        from qtpy.QtOpenGLWidgets import QOpenGLWidget
    except ImportError:  # a Qt binding without it
        return []
    app = QApplication.instance()
    if app is None:
        return []
    found = []
    for window in app.topLevelWidgets():
        found.extend([window] if isinstance(window, QOpenGLWidget) else window.findChildren(QOpenGLWidget))
    return found


def hold_drawing(canvases: list, held: bool) -> None:
    """Hold (or let go) the canvases' drawing; letting go asks each for one frame, drawn in the next turn. A
    canvas already gone (its window closed meanwhile) is left alone."""
    for canvas in canvases:
        try:
            canvas.setUpdatesEnabled(not held)
        except RuntimeError:  # the Qt object was deleted with its window
            pass


def add_one_per_turn(
    viewer: napari.Viewer,
    results: Sequence[ResultLayer],
    placement: Placement,
    *,
    added: Callable = lambda _: None,
    done: Callable[[], None],
    failed: Callable[[BaseException], None],
) -> None:
    """Put ``results`` in ``viewer.layers`` one at a time, each handed to ``added``, then select the masks and call
    ``done``; a layer napari refuses stops there, with ``failed(exc)``.

    Each layer takes three turns: napari adds it with the canvas's drawing held; the next turn lets the canvas
    go, and the frame with the new layer is drawn first thing in the turn after, whose timers then bring the
    next layer. 1 ms timers: with 0 ms ones, which Qt 6 delivers as posted events, two steps ran back to back
    before the viewer's own timers and drawing did.
    """
    from qtpy.QtCore import QTimer

    canvases = scene_canvases()

    def later(step: Callable[[], None]) -> None:
        QTimer.singleShot(1, step)

    def add(rest: list) -> None:
        hold_drawing(canvases, True)
        try:
            for shown in _layers.apply_results(viewer.layers, rest[:1], placement):
                added(shown)
        except Exception as exc:  # noqa: BLE001 - a layer napari refused: say so, keep the widget usable
            hold_drawing(canvases, False)
            failed(exc)
            return
        later(lambda: draw(rest[1:]))

    def draw(rest: list) -> None:
        hold_drawing(canvases, False)
        if rest:
            later(lambda: later(lambda: add(rest)))  # the frame is drawn in between
            return
        _layers.select_masks(viewer.layers, placement)
        done()

    later(lambda: add(list(results)))
