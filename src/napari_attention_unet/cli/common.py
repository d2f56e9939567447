"""What the sub-commands share: one way to fail, one way to show a generator's progress."""

from __future__ import annotations

import sys
from collections.abc import Generator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")


def fail(message: str) -> int:
    """Print ``attention-unet: error: message`` on stderr; returns the exit code 2."""
    print(f"attention-unet: error: {message}", file=sys.stderr)
    return 2


def drive(generator: Generator[object, None, T], desc: str, *, leave: bool = True, unit: str = "tile") -> T:
    """Run a progress generator to its end under a tqdm bar on stderr; returns its result."""
    with tqdm(desc=desc, unit=unit, leave=leave, file=sys.stderr) as bar:
        while True:
            try:
                progress = next(generator)
            except StopIteration as stop:
                return stop.value
            bar.total = progress.total
            bar.set_postfix_str(progress.stage)
            bar.update(progress.done - bar.n)
