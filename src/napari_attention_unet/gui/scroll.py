"""The dock's controls in a scroll area: below its screen's height, the dock scrolls instead of
growing the napari window past the screen (and squeezing the canvas to a strip).

magicgui's own ``scrollable=True`` does not work in a napari dock (napari embeds a Container's
``native`` widget, the one inside magicgui's scroll area), so the panel's widget is moved into a
QScrollArea of our own, which the dock's Container holds.
"""

from __future__ import annotations

from magicgui.widgets import Container
from qtpy.QtCore import QEvent, QObject, QSize, Qt
from qtpy.QtWidgets import QComboBox, QFrame, QScrollArea, QSizePolicy, QWidget

__all__ = ["in_scroll_area", "narrow_combos", "wrap_text"]

#: Characters a drop-down list shows of its entry; longer ones are cut short in the box, whole in the list.
COMBO_CHARACTERS = 14


class _VerticalScrollArea(QScrollArea):
    """Scrolls up and down only: as wide as its widget needs, now (its labels' texts change), plus the bar."""

    def _width(self, hint) -> int:
        return hint.width() + self.verticalScrollBar().sizeHint().width() + 2 * self.frameWidth()

    def minimumSizeHint(self) -> QSize:
        inner = self.widget()
        return super().minimumSizeHint() if inner is None else QSize(self._width(inner.minimumSizeHint()), 80)

    def sizeHint(self) -> QSize:
        inner = self.widget()
        return super().sizeHint() if inner is None else QSize(self._width(inner.sizeHint()), inner.sizeHint().height())

    def eventFilter(self, watched, event) -> bool:
        if watched is self.widget() and event.type() == QEvent.Type.LayoutRequest:
            self.updateGeometry()  # a label's new text may need more width: the dock follows
        return super().eventFilter(watched, event)


def in_scroll_area(outer: Container, panel: Container) -> QScrollArea:
    """Move ``panel`` (a child of ``outer``) into a vertical scroll area in ``outer``; returns the area."""
    layout = outer.native.layout()
    layout.removeWidget(panel.native)
    area = _VerticalScrollArea()
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    area.setWidget(panel.native)
    panel.native.installEventFilter(area)
    layout.setContentsMargins(0, 0, 0, 0)
    layout.addWidget(area)
    narrow_combos(panel.native)
    return area


class _WholeEntries(QObject):
    """Opens a drop-down list as wide as its longest entry (the box itself may show less of it)."""

    def eventFilter(self, watched, event) -> bool:
        if event.type() == QEvent.Type.Show and isinstance(combo := watched.parent(), QComboBox):
            metrics = combo.fontMetrics()
            widest = max((metrics.horizontalAdvance(combo.itemText(i)) for i in range(combo.count())), default=0)
            watched.setMinimumWidth(min(widest + 40, combo.screen().availableGeometry().width() // 2))
        return False


def narrow_combos(root: QWidget) -> None:
    """Keep the drop-down lists under ``root`` from widening the dock to their longest entry: a layer named
    as a microscope exports it (70 characters) took the dock to 690 px and left the canvas 30 px of a
    1066 px window. Each box asks for :data:`COMBO_CHARACTERS` characters; its list opens whole."""
    whole = _WholeEntries(root)
    for combo in root.findChildren(QComboBox):
        combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        combo.setMinimumContentsLength(COMBO_CHARACTERS)
        combo.view().window().installEventFilter(whole)


def wrap_text(*labels) -> None:
    """Let long texts (messages, readouts) wrap within the dock's width instead of widening it: a wrapped
    QLabel still asks for the width of a few hundred characters (a fine-tune readout took the dock from
    404 to 638 px and squeezed the canvas); with an ignored horizontal size hint it takes the width given."""
    for label in labels:
        label.native.setWordWrap(True)
        label.native.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
