"""Full garbage collections that do not freeze the viewer while the dock works.

Python's full (oldest-generation) collection walks every object the process tracks, holding the GIL. A napari
process with torch loaded tracks over half a million objects: a full collection took 280-410 ms here (2-core
CPU, timed with ``gc.callbacks``), on whichever thread happened to allocate. Often that was the prediction
worker, so the viewer froze for that long in the middle of a prediction, and for 1.1-1.5 s during training
(benchmarks/README.md, bench_responsiveness).

``gc.freeze()`` moves every object alive now into a permanent generation that collections skip. It costs
nothing (the lists are spliced), objects made later are collected as before, and frozen ones are still freed
by reference counting. :class:`RunFreeze` freezes the objects alive when a run starts and unfreezes them when
it ends. So a collection during the run walks only what the run and the viewer made since, and the one thing
delayed is a reference cycle among older objects that becomes garbage during the run (a layer the user deletes
meanwhile): the collector frees it after the run, as it always would have.
"""

from __future__ import annotations

import gc

__all__ = ["RunFreeze"]


class RunFreeze:
    """Old objects out of full garbage collections while a run goes on (see the module's docstring)."""

    def __init__(self) -> None:
        self._frozen = False

    @property
    def frozen(self) -> bool:
        """Whether this run froze the objects (and will unfreeze them)."""
        return self._frozen

    def hold(self, running: bool) -> None:
        """Freeze when a run starts (``running``), unfreeze when it ends. Objects frozen already (by napari,
        another plugin, or the dock of another viewer) are left as they are: unfreezing would undo their
        freeze too."""
        if running and not self._frozen and not gc.get_freeze_count():
            gc.freeze()
            self._frozen = True
        elif not running and self._frozen:
            self._frozen = False
            gc.unfreeze()
