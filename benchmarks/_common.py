"""Helpers shared by the benchmarks: test images from the shared data and timing."""

from __future__ import annotations

import csv
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
#: The shared data folder beside the repository; SHARED_DATA points elsewhere (e.g. a GPU machine's copy).
DATA = Path(os.environ.get("SHARED_DATA", REPO.parent / "shared" / "data"))
DSB2018 = DATA / "dsb2018_train"


def require_dsb2018() -> Path:
    """The DSB 2018 folder, or exit with a message saying where it was looked for."""
    if not (DSB2018 / "index_train.csv").is_file():
        sys.exit(
            f"benchmark data not found: expected the DSB 2018 training set at {DSB2018} "
            "(images/<id>.tif and index_train.csv); this benchmark needs real image content"
        )
    return DSB2018


def dsb2018_mosaic(size: int, tile: int = 256, masks: bool = False) -> tuple[np.ndarray, list[str]]:
    """A ``size`` x ``size`` uint8 mosaic of 256x256 grey fluorescence DSB 2018 images.

    The images are the ``gray_darkbg`` 256x256 ones, sorted by id and taken at even
    steps, so every run (and every machine) sees the same pixels; a mosaic with more cells
    than images (8192² has 1024) takes all of them in turn, turned 90 degrees more each round. ``masks=True``
    gives the matching mosaic of instance labels (int32, ids unique across images).
    """
    import tifffile

    folder = require_dsb2018()
    with open(folder / "index_train.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["kind"] == "gray_darkbg" and r["height"] == r["width"] == str(tile)]
    ids = sorted(r["id"] for r in rows)
    per_side = size // tile
    count = per_side * per_side
    if not ids:
        sys.exit(f"no suitable DSB 2018 images for a {size}x{size} mosaic")
    # Each image once (at even steps) when there are enough; else all of them again, turned.
    if count <= len(ids):
        chosen = [ids[round(i * (len(ids) - 1) / max(count - 1, 1))] for i in range(count)]
    else:
        chosen = [ids[i % len(ids)] for i in range(count)]
    mosaic = np.zeros((size, size), dtype=np.int32 if masks else np.uint8)
    next_id = 0
    for k, image_id in enumerate(chosen):
        y, x = divmod(k, per_side)
        cell = (slice(y * tile, (y + 1) * tile), slice(x * tile, (x + 1) * tile))
        turn = (k // len(ids)) % 4 if count > len(ids) else 0
        if masks:
            labels = np.rot90(tifffile.imread(folder / "masks" / f"{image_id}.tif").astype(np.int32), turn)
            mosaic[cell] = np.where(labels > 0, labels + next_id, 0)
            next_id = int(mosaic.max())
        else:
            mosaic[cell] = np.rot90(tifffile.imread(folder / "images" / f"{image_id}.tif"), turn)
    return mosaic, chosen


def median_seconds(
    fn: Callable[[], object], repeats: int, sync: Callable[[], None] = lambda: None
) -> tuple[float, list[float]]:
    """Run ``fn`` once to warm up, then ``repeats`` times; return (median, all times) in seconds."""
    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times
