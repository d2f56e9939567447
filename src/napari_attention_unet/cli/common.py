"""What the sub-commands share: one way to fail, one way to show a generator's progress, one way to train."""

from __future__ import annotations

import gc
import os
import shlex
import sys
from collections.abc import Generator
from pathlib import Path
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")


def reuse_freed_memory() -> bool:
    """Let this process reuse the memory of freed arrays instead of handing it back to the system at once.

    By default glibc returns a freed block of more than a few MB to the system, so the next array of
    that size is new memory, paid for again in page faults (kernel time). A prediction makes many
    such arrays (tiles, stitching, the instance step, the outputs): on a 2048² image,
    ``attention-unet predict`` spent 1.0-1.7 s of kernel time, 0.5 s with blocks up to 32 MB kept on
    the heap and the heap never trimmed, 3.4-4.8 s -> 3.3 s in all (benchmarks/README.md, "Freed memory kept for
    reuse"). The peak memory stays the same (the largest arrays are mapped and unmapped as before).
    Only for a process that runs one command and ends: the napari process keeps glibc's defaults.
    Returns whether glibc took both settings (False on other C libraries and systems).
    """
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, ...)
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    trimmed = mallopt(m_trim_threshold, 2**31 - 1)
    mapped = mallopt(m_mmap_threshold, 32 * 2**20)  # glibc's largest (HEAP_MAX_SIZE / 2 on 64-bit)
    return bool(trimmed and mapped)


def collect_less() -> None:
    """Run Python's garbage collector after 50,000 new objects instead of 700, and full collections less often.

    Importing torch makes hundreds of thousands of objects that live until the exit, and with the default
    thresholds the collector walked them again and again: three full collections during the imports of
    ``attention-unet predict``, 0.13 s. Collecting less often saves 0.1-0.15 s of its 1.1-1.2 s of imports
    (benchmarks/README.md, "The exit, the collector and the gate maps"); most objects are freed by reference
    counting anyway, and cycles wait a little longer. Only for a process that runs one command and ends.
    """
    gc.set_threshold(50_000, 20, 20)


def skip_collection_at_exit() -> None:
    """Leave the objects alive now out of the garbage collections that Python runs as this process ends.

    Once a command is done, everything it imported lives until the exit, and the collections of the
    interpreter's shutdown walk all of it (torch alone makes hundreds of thousands of objects): 0.35-0.45 s
    of the 3.3 s that ``attention-unet predict`` took on a 2048² image, 0.1-0.15 s with them frozen
    (``gc.freeze``; benchmarks/README.md, "The exit, the collector and the gate maps"). Frozen objects are still
    freed when nothing refers to them, and files are closed by then; a reference cycle among them is left to
    the system, as at any exit. Only for a process that runs one command and ends, as :func:`reuse_freed_memory`.
    """
    gc.freeze()


def fail(message: str) -> int:
    """Print ``attention-unet: error: message`` on stderr; returns the exit code 2."""
    print(f"attention-unet: error: {message}", file=sys.stderr)
    return 2


def model_target(out: str) -> tuple[Path, str]:
    """``(file, name)`` of the model ``--out`` asks for (see ``models.registry.model_out_path``);
    raises ``ValueError`` before any training when it cannot be written there."""
    from napari_attention_unet.models.registry import FOLDER_MODEL, SUFFIX, bundled_models, model_out_path

    bare = out.removesuffix(SUFFIX)
    bundled = {m.name.casefold(): m.name for m in bundled_models()}
    if bare.casefold() in bundled and "/" not in out and os.sep not in out:
        # --model nuclei would then mean this file in this folder and the bundled model anywhere else; on a
        # case-insensitive file system (macOS, Windows) Nuclei.safetensors is nuclei.safetensors too
        name = bundled[bare.casefold()]
        case = "" if bare == name else " (letter case aside)"
        raise ValueError(
            f"'{bare}' is the bundled model's name{case}: give the new model a name of its own (--out my-{name})"
        )
    path = model_out_path(out)
    return path, (path.parent.resolve().name if path.name == FOLDER_MODEL else path.stem) or "model"


def writable_folder(folder: Path) -> None:
    """Make ``folder`` (or, for a ``.zarr`` output, the folder it goes in) and check that files can be
    written there; raises ``ValueError`` with one line, before any work is done, when they cannot."""
    from napari_attention_unet.core.weights import unwritable_reason

    reason = unwritable_reason(folder.parent if folder.suffix.lower() == ".zarr" else folder)
    if reason is not None:
        raise ValueError(f"cannot write into {folder}: {reason} (choose another --out)")


def use_it(out: str) -> str:
    """The hint printed after writing a model: ``--model`` as the user typed ``--out`` (quoted for the shell)."""
    safe = out.startswith("~/") and shlex.quote(out[2:]) == out[2:]  # ~/models/m1: the shell's home, unquoted
    return f"(use it with: attention-unet predict IMAGE --out DIR --model {out if safe else shlex.quote(out)})"


def bar_settings() -> dict:
    """tqdm's settings: on stderr, redrawn at most every 10 s when it is no terminal (a log file, a pipe),
    where each redraw is kept (257 of them for one image of 257 tiles)."""
    return {"file": sys.stderr, **({} if sys.stderr.isatty() else {"mininterval": 10.0})}


def drive(generator: Generator[object, None, T], desc: str, *, leave: bool = True, unit: str = "tile") -> T:
    """Run a progress generator to its end under a tqdm bar on stderr; returns its result.

    The bar starts at the first report, with its total: made before, it drew an empty
    ``0tile [00:00, ?tile/s]`` that stays in a log."""
    bar = None
    try:
        while True:
            try:
                progress = next(generator)
            except StopIteration as stop:
                return stop.value
            if bar is None:
                bar = tqdm(desc=desc, unit=unit, leave=leave, total=progress.total, **bar_settings())
            bar.total = progress.total
            bar.set_postfix_str(progress.stage, refresh=False)
            bar.update(progress.done - bar.n)
    finally:
        if bar is not None:
            bar.close()


def drive_training(trainer):
    """Run ``trainer`` under a tqdm bar on stderr (steps, or open-ended under a time budget), each
    validation on its own line. Returns ``(finished, result)``: ``(True, the TrainResult the run returned)``;
    Ctrl-C stops it and keeps the best model so far: ``(False, trainer.result())``.

    Callers use this result: asking ``trainer.result()`` again would score the held-out images once
    more (a second sanity check)."""
    config = trainer.config
    total = config.max_steps if config.time_budget is None else None
    steps = trainer.run()
    try:
        with tqdm(total=total, unit="step", **bar_settings()) as bar:
            while True:
                try:
                    report = next(steps)
                except StopIteration as end:
                    return True, end.value
                bar.update(report.step - bar.n)
                if report.best_val_ap is not None:
                    best = f"kept val AP@0.5 {report.best_val_ap:.3f}"
                else:
                    best = "kept val Dice " + ("-" if report.best_val_dice is None else f"{report.best_val_dice:.3f}")
                bar.set_postfix_str(f"loss {report.loss:.3f}, {best}", refresh=False)
                if report.val_dice is not None:
                    tqdm.write(report.message, file=sys.stderr)
    except KeyboardInterrupt:
        steps.close()
        print("interrupted: keeping the best model so far", file=sys.stderr)
        return False, trainer.result()


def labels_to_image_grid(labels, labels_volume, volume, labels_path, image_path):
    """NIfTI labels turned onto their NIfTI image's grid when stored in another orientation, and said; a
    warning when the grids still differ (the shape check says the rest). Other files: as they are."""
    import numpy as np

    from napari_attention_unet.core import orientation

    if volume is None or labels_volume is None:
        return labels
    names = (str(labels_path), str(image_path))
    labels, notes = orientation.labels_on_image_grid(
        labels, labels_volume.affine, volume.affine, np.shape(volume.data), names
    )
    for note in notes:
        print(note, file=sys.stderr)
    return labels


def turned_pair(pair: tuple, stored: str | None, orientation: str | None, name: str, whose: str = "the first volume"):
    """A NIfTI volume and its labels, ``(image, labels, axes[, spacing])``, stored ``stored`` (``LAS``...) turned
    to ``orientation`` and said: the first volume's, which the model is trained on and which predict turns new
    volumes to (or, fine-tuning, the model's). A 2D label map (one plane for a 2D model) is left as it is."""
    import numpy as np

    from napari_attention_unet.core.orientation import reorient_spacing, reorient_volumes

    if stored is None or orientation is None or stored == orientation:
        return pair
    image, labels, axes, *spacing = pair
    print(f"{name} is stored {stored}, {whose} {orientation}: it is turned to {orientation}", file=sys.stderr)
    [image] = reorient_volumes([image], stored, orientation)
    if np.ndim(labels) == 3:
        [labels] = reorient_volumes([labels], stored, orientation)
    return (image, labels, axes, *(reorient_spacing(s, stored, orientation) for s in spacing))
