"""A tiny training plot: loss and validation scores against the step, drawn with QPainter, and the
one-line readout of a step (:func:`describe_report`).

No plotting library: a few polylines on a dark background are all a training run needs.
Loss is scaled to its own maximum; validation Dice and AP@0.5 are on a 0..1 scale, a dot at each
evaluation. A semantic model's run also draws each class's Dice (dashed, one colour per class). The
legend names the curves with their latest values, and the step is shown on the right.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qtpy.QtCore import QPointF, Qt
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QSizePolicy, QWidget

if TYPE_CHECKING:
    from napari_attention_unet.core.train import StepReport

__all__ = ["TrainingPlot", "describe_report"]

LOSS_COLOR, DICE_COLOR, AP_COLOR = QColor(240, 160, 60), QColor(90, 200, 250), QColor(120, 220, 120)
#: Per-class Dice curves, in the order the classes come (then round again).
CLASS_COLORS = [QColor(c) for c in ("#e377c2", "#bcbd22", "#17becf", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2")]


class TrainingPlot(QWidget):
    """Loss (orange), validation Dice (blue), AP@0.5 (green) and per-class Dice curves, updated by :meth:`add`."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.losses: list[tuple[int, float]] = []
        self.dices: list[tuple[int, float]] = []
        self.aps: list[tuple[int, float]] = []
        self.class_dices: dict[str, list[tuple[int, float]]] = {}
        self.setMinimumHeight(80)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setToolTip(
            "Training: loss (orange, scaled to its maximum), and on the held-out part (0 to 1) the "
            "mean Dice (blue), AP@0.5 of the objects (green) and, for classes, each class's Dice (dashed)"
        )

    def clear(self) -> None:
        self.losses.clear()
        self.dices.clear()
        self.aps.clear()
        self.class_dices.clear()
        self.update()

    def add(
        self,
        step: int,
        loss: float,
        val_dice: float | None,
        val_ap: float | None = None,
        class_dice: dict[str, float] | None = None,
    ) -> None:
        self.losses.append((step, loss))
        if val_dice is not None:
            self.dices.append((step, val_dice))
        if val_ap is not None:
            self.aps.append((step, val_ap))
        for name, value in (class_dice or {}).items():
            self.class_dices.setdefault(name, []).append((step, value))
        self.update()

    def curves(self) -> list[tuple[str, QColor, list[tuple[int, float]], bool]]:
        """``(name, colour, points, dashed)`` of every curve with points, loss first."""
        top_loss = max((v for _, v in self.losses), default=1.0) or 1.0
        out = [("loss", LOSS_COLOR, [(s, v / top_loss) for s, v in self.losses], False)]
        out += [("Dice", DICE_COLOR, self.dices, False), ("AP@0.5", AP_COLOR, self.aps, False)]
        if len(self.class_dices) > 1:  # one class: its Dice is the mean Dice already drawn
            for i, (name, points) in enumerate(self.class_dices.items()):
                out.append((name, CLASS_COLORS[i % len(CLASS_COLORS)], points, True))
        return [curve for curve in out if curve[2]]

    def paintEvent(self, event) -> None:  # noqa: N802 - Qt's name
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.fillRect(self.rect(), QColor(30, 30, 35))
        last_step = max((s for s, _ in self.losses), default=0)
        if last_step > 0:
            x = 6.0
            for (name, color, points, dashed), text in zip(self.curves(), self.legend()):
                self._line(painter, points, last_step, color, dashed, dots=name != "loss")
                painter.setPen(color)  # the legend, along the top, with the latest values
                painter.drawText(QPointF(x, 12.0), text)
                x += painter.fontMetrics().horizontalAdvance(text) + 10.0
            painter.setPen(QColor(160, 160, 160))
            text = f"step {last_step}"
            painter.drawText(QPointF(self.width() - painter.fontMetrics().horizontalAdvance(text) - 6.0, 12.0), text)
        painter.end()

    def legend(self) -> list[str]:
        """Each curve's name and latest value ("loss 0.412", "Dice 0.87"): numbers a flat line hides."""
        out = []
        for name, _, points, _ in self.curves():
            value = self.losses[-1][1] if name == "loss" else points[-1][1]
            out.append(f"{name} {value:.3f}" if name == "loss" else f"{name} {value:.2f}")
        return out

    def _line(
        self,
        painter: QPainter,
        points: list[tuple[int, float]],
        last_step: int,
        color: QColor,
        dashed: bool,
        dots: bool = False,
    ) -> None:
        margin, top, width = 4.0, 16.0, self.width() - 8.0
        height = self.height() - top - margin
        polygon = QPolygonF(
            [QPointF(margin + width * s / last_step, top + height * (1.0 - min(max(v, 0.0), 1.0))) for s, v in points]
        )
        painter.setPen(QPen(color, 1.5, Qt.PenStyle.DashLine if dashed else Qt.PenStyle.SolidLine))
        if len(points) > 1:
            painter.drawPolyline(polygon)
        if dots or len(points) == 1:  # each evaluation visible, even the first one alone
            for point in polygon:
                painter.drawEllipse(point, 2.0, 2.0)


def describe_report(report: StepReport) -> str:
    """One line for a step report: step, loss, validation scores, time left."""
    steps = f"step {report.step}" + (f"/{report.total_steps}" if report.total_steps else "")
    parts = [steps, f"loss {report.loss:.3f}"]
    if report.val_ap is not None:
        parts.append(f"val AP {report.val_ap:.3f}")
    if report.val_dice is not None:
        parts.append(f"val Dice {report.val_dice:.3f}")
    if report.val_class_dice:
        parts.append(", ".join(f"{name} {value:.2f}" for name, value in report.val_class_dice.items()))
    if report.best_val_ap is not None:
        parts.append(f"kept AP {report.best_val_ap:.3f}")
    elif report.best_val_dice is not None:
        parts.append(f"kept Dice {report.best_val_dice:.3f}")
    if report.eta is not None:
        minutes, seconds = divmod(round(report.eta), 60)
        parts.append(f"ETA {minutes}:{seconds:02d}")
    # The trainer's own line repeats the figures above; only other messages (e.g. a stop) are added.
    said = report.message and not report.message.startswith(f"step {report.step}: loss")
    return " · ".join(parts) + (f" — {report.message}" if said else "")
