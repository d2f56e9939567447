"""The protocol of long work: generators that yield :class:`Progress` and return a result.

Prediction and training in ``core`` are generators; scripts drive them with :func:`run_to_end`,
the CLI with a progress bar, and the napari widget in a worker (``worker.quit()`` closes the
generator at its next ``yield``, which is how Cancel works).
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import TypeVar

__all__ = ["Progress", "run_to_end"]

T = TypeVar("T")


@dataclass(frozen=True)
class Progress:
    """A progress report: ``done`` of ``total`` units of ``stage``."""

    done: int
    total: int
    stage: str = "predicting"

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0


def run_to_end(generator: Generator[object, None, T]) -> T:
    """Drive a progress generator to its end and return its result."""
    while True:
        try:
            next(generator)
        except StopIteration as stop:
            return stop.value
