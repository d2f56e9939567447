"""A tiny training plot: loss and validation scores against the step, drawn with QPainter.

No plotting library: a few polylines on a dark background are all a fine-tuning run needs.
Loss is scaled to its own maximum; validation Dice and AP@0.5 are on a 0..1 scale.
"""

from __future__ import annotations

from qtpy.QtCore import QPointF, Qt
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QSizePolicy, QWidget

__all__ = ["TrainingPlot"]

LOSS_COLOR, DICE_COLOR, AP_COLOR = QColor(240, 160, 60), QColor(90, 200, 250), QColor(120, 220, 120)


class TrainingPlot(QWidget):
    """Loss (orange), validation Dice (blue) and validation AP@0.5 (green) curves, updated by :meth:`add`."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.losses: list[tuple[int, float]] = []
        self.dices: list[tuple[int, float]] = []
        self.aps: list[tuple[int, float]] = []
        self.setMinimumHeight(70)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setToolTip(
            "Fine-tuning: loss (orange, scaled to its maximum), and on the held-out strip (0 to 1) "
            "foreground Dice (blue) and AP@0.5 of the objects (green), which picks the model kept"
        )

    def clear(self) -> None:
        self.losses.clear()
        self.dices.clear()
        self.aps.clear()
        self.update()

    def add(self, step: int, loss: float, val_dice: float | None, val_ap: float | None = None) -> None:
        self.losses.append((step, loss))
        if val_dice is not None:
            self.dices.append((step, val_dice))
        if val_ap is not None:
            self.aps.append((step, val_ap))
        self.update()

    def paintEvent(self, event) -> None:  # noqa: N802 - Qt's name
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.fillRect(self.rect(), QColor(30, 30, 35))
        last_step = max((s for s, _ in self.losses), default=0)
        if last_step > 0:
            top_loss = max((v for _, v in self.losses), default=1.0) or 1.0
            self._line(painter, [(s, v / top_loss) for s, v in self.losses], last_step, LOSS_COLOR)
            self._line(painter, self.dices, last_step, DICE_COLOR)
            self._line(painter, self.aps, last_step, AP_COLOR)
        painter.end()

    def _line(self, painter: QPainter, points: list[tuple[int, float]], last_step: int, color: QColor) -> None:
        if not points:
            return
        margin, width, height = 4.0, self.width() - 8.0, self.height() - 8.0
        polygon = QPolygonF(
            [
                QPointF(margin + width * s / last_step, margin + height * (1.0 - min(max(v, 0.0), 1.0)))
                for s, v in points
            ]
        )
        painter.setPen(QPen(color, 1.5, Qt.PenStyle.SolidLine))
        if len(points) == 1:
            painter.drawEllipse(polygon[0], 2.0, 2.0)
        else:
            painter.drawPolyline(polygon)


def _clip(value: float) -> float:
    return min(max(value, 0.0), 1.0)
