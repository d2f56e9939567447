"""Small nuclei in a large image: the second look block by block, as a user runs the command.

An image over ``large_data.files.LARGE_PIXELS`` goes through the block engine. This builds a
mosaic of the bundled model's grey fluorescence *validation* images (``training/split.json``,
256 x 256 ``gray_darkbg``) shrunk to ``--scale`` of their size (nuclei about 7-9 px across at
0.5, below the 12 px where the model looks again, enlarged), with each cell flipped or turned,
and runs, each as its own process and timed whole:

- ``attention-unet predict mosaic.tif --out DIR`` (the block engine decides the enlargement
  once for the image, ``large_data.blocks.probe_zoom``);
- the same with ``--no-auto-zoom`` (what every large image got before);

then scores AP@0.5 cell by cell (each cell's objects against its own truth, the cell cut from
the whole labels) and reports the mean and the worst quarter of cells. ``--whole`` adds
``predict()`` on the whole image in this process, the engine a small image goes through.

    python benchmarks/bench_small_objects.py [--size 4608] [--scale 0.5] [--whole]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, require_dsb2018  # noqa: E402


def validation_mosaic(size: int, scale: float) -> tuple[np.ndarray, np.ndarray, int]:
    """``size`` x ``size`` uint8 mosaic of shrunk validation images, its labels, and the cell edge."""
    import csv

    import tifffile
    from scipy import ndimage

    folder = require_dsb2018()
    validation = set(json.loads((REPO / "training" / "split.json").read_text())["validation"])
    with open(folder / "index_train.csv", newline="") as f:
        ids = sorted(
            r["id"]
            for r in csv.DictReader(f)
            if r["id"] in validation and r["kind"] == "gray_darkbg" and r["height"] == r["width"] == "256"
        )
    cell = int(round(256 * scale))
    per_side = size // cell
    image = np.zeros((per_side * cell,) * 2, np.uint8)
    labels = np.zeros(image.shape, np.int32)
    next_id = 0
    for k in range(per_side * per_side):
        image_id = ids[k % len(ids)]
        turn, flip = (k // len(ids)) % 4, (k // (4 * len(ids))) % 2
        pixels = tifffile.imread(folder / "images" / f"{image_id}.tif")
        truth = tifffile.imread(folder / "masks" / f"{image_id}.tif").astype(np.int32)
        pixels = ndimage.zoom(pixels, cell / 256, order=1)[:cell, :cell]
        truth = ndimage.zoom(truth, cell / 256, order=0)[:cell, :cell]
        pixels, truth = np.rot90(pixels, turn), np.rot90(truth, turn)
        if flip:
            pixels, truth = pixels[:, ::-1], truth[:, ::-1]
        y, x = divmod(k, per_side)
        where = (slice(y * cell, (y + 1) * cell), slice(x * cell, (x + 1) * cell))
        image[where] = pixels
        labels[where] = np.where(truth > 0, truth + next_id, 0)
        next_id = int(labels.max())
    return image, labels, cell


def cell_scores(truth: np.ndarray, predicted: np.ndarray, cell: int) -> np.ndarray:
    """AP@0.5 of each cell (truth and prediction cut to the cell; empty cells left out)."""
    from napari_attention_unet.core.metrics import average_precision

    scores = []
    for y in range(0, truth.shape[0], cell):
        for x in range(0, truth.shape[1], cell):
            t, p = truth[y : y + cell, x : x + cell], predicted[y : y + cell, x : x + cell]
            if t.any():
                scores.append(average_precision(t, p))
    return np.array(scores)


def main() -> None:
    import tifffile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4608, help="mosaic edge in px (over 4096: block by block)")
    parser.add_argument("--scale", type=float, default=0.5, help="how much the validation images are shrunk")
    parser.add_argument("--whole", action="store_true", help="also predict() the whole image in this process")
    args = parser.parse_args()
    image, truth, cell = validation_mosaic(args.size, args.scale)
    exe = Path(sys.executable).with_name("attention-unet")
    print(f"{image.shape[0]}x{image.shape[1]} mosaic of {cell} px cells ({truth.max()} nuclei), {exe.name} predict")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mosaic.tif"
        tifffile.imwrite(path, image)
        for name, flags in (("blocks, second look (default)", []), ("blocks, --no-auto-zoom", ["--no-auto-zoom"])):
            out = Path(tmp) / name.split(",")[1].strip().replace(" ", "_")
            start = time.perf_counter()
            done = subprocess.run(
                [str(exe), "predict", str(path), "--out", str(out), *flags], capture_output=True, text=True
            )
            seconds = time.perf_counter() - start
            if done.returncode != 0:
                sys.exit(done.stderr)
            labels = tifffile.imread(out / "mosaic_labels.tif")
            rows.append((name, seconds, cell_scores(truth, labels, cell)))
    if args.whole:
        from napari_attention_unet.core.predict import predict, run_to_end
        from napari_attention_unet.models.registry import open_model

        start = time.perf_counter()
        result = run_to_end(predict(open_model()[0], image))
        rows.append(
            (
                f"predict() whole, zoom {result.zoom}",
                time.perf_counter() - start,
                cell_scores(truth, result.labels, cell),
            )
        )
    print("\n| run | seconds | AP@0.5 mean over cells | worst quarter of cells |")
    print("|---|---|---|---|")
    for name, seconds, scores in rows:
        worst = np.sort(scores)[: max(len(scores) // 4, 1)].mean()
        print(f"| {name} | {seconds:.1f} | {scores.mean():.3f} | {worst:.3f} |")


if __name__ == "__main__":
    main()
