"""Label one volume, predict the next: a new 3D instance model against a classic 3D watershed.

Data: synthetic nuclei volumes made here (:func:`synthetic_volume`, seeded): 48x128x128 voxels
(ZYX) with voxel size 2,1,1 (so objects look flattened in z on the voxel grid), holding about 50
ellipsoids of random axis lengths (6-12 units in world space) and random orientations, packed in
clusters so that most touch or overlap (a voxel belongs to the ellipsoid whose normalised distance
is smallest), each with its own brightness and a little texture, blurred by an anisotropic Gaussian
(sigma 2.5 units in z, 1.2 in y and x), on a mild background gradient, with Poisson (photon) and
Gaussian (read) noise. Ground truth: the uint16 instance labels. Training: volume seed 0; tests:
seeds 1..``--n-test``.

1. **ours**: what ``attention-unet train --task instances --dims 3 --spacing 2,1,1`` does with
   default settings (``core.train.plan.plan_training``: a new 3D model from scratch,
   ``default_train_config`` on the network's cubic-voxel shape, ``split_samples``: a held-out
   strip of the one volume; ``core.train.folds.Members``: three members, each trained to the end
   of a third of the time and kept in its last state), on the one labelled volume for ``--minutes``
   of wall time; prediction with ``core.predict.predict`` (instances, ``spacing``, no gates, fp32, CPU).
2. **classic**: what a user would write with scikit-image: Gaussian smoothing (1 unit), Otsu
   threshold, holes filled, Euclidean distance transform with the voxel spacing, its peaks
   (``peak_local_max``, ``--min-distance`` voxels apart, inside the mask) as markers, watershed
   of the negated distance inside the mask, objects under 100 voxels removed. ``--min-distance``
   4 is its best on these volumes (mean AP@0.5 of seeds 1-3: 2 voxels 0.59, 3 0.70, 4 0.70, 6 0.54).

Score: AP@0.5 per test volume (``core.metrics.match_counts``: one-to-one matches at IoU > 0.5,
TP / (TP + FP + FN)), its mean, and the objects missed (FN) and false (FP) over all test volumes.

    python benchmarks/bench_instances_3d.py [--minutes 5] [--n-test 3] [--threads 2] [--seed 0]
        [--shape 48,128,128] [--only both|ours|classic] [--min-distance 4]
        [--irregular A] [--first-test 1] [--split-depths D,D,...] [--split-large F,F,...] [--last] [--finer F]
        [--steps N] [--slices N [--zero-is background|slices]] [--members N] [--keep best|last]

``--irregular A`` makes the nuclei lumpy (radii vary with the direction by about A);
``--first-test 4`` scores volumes 4.. (those the split depth was chosen on) instead of 1..;
``--split-depths`` also scores our model with other split depths, ``--split-large`` with other factors of the
second split of large objects (0: none; ``core.instances.SPLIT_LARGE_3D``), ``--last`` its last state;
``--finer F`` samples the same scenes F times finer (voxels F times smaller, as many objects);
``--steps N`` trains ours for N steps instead of minutes (step-matched runs on a loaded machine);
``--slices N`` outlines the nuclei of only N evenly spread slices of the training volume, the
others left 0, as ``--zero-is slices`` reads them (or ``--zero-is background``, the dense reading);
``--members 1 --keep best`` trains what ``train`` did before session 32: one network, its best state on the
held-out strip, stopped early.
"""

from __future__ import annotations

import argparse
import copy
import time
from dataclasses import replace

import numpy as np
import torch
from scipy import ndimage

from napari_attention_unet.core import instances
from napari_attention_unet.core.metrics import match_counts
from napari_attention_unet.core.model import count_parameters, join_members
from napari_attention_unet.core.predict import predict, run_to_end
from napari_attention_unet.core.train.folds import Members, default_members
from napari_attention_unet.core.train.plan import plan_training

SHAPE = (48, 128, 128)
SPACING = (2.0, 1.0, 1.0)
#: Objects in a volume of SHAPE at SPACING; other extents (``--shape``) get as many per unit of volume.
OBJECTS = 50


def _rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.diag(r))


def _centres(rng: np.random.Generator, n: int, extent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``n`` centres (world units) and semi-axes, in clusters: most sit beside an earlier one, close enough to touch."""
    centres, radii = [], []
    for _ in range(200 * n):
        if len(centres) == n:
            break
        axes = rng.uniform(6.0, 12.0, size=3)
        if centres and rng.random() < 0.8:  # beside an earlier object, a little closer than touching
            k = rng.integers(len(centres))
            direction = rng.normal(size=3)
            distance = rng.uniform(0.75, 1.0) * (radii[k].mean() + axes.mean())
            centre = centres[k] + distance * direction / np.linalg.norm(direction)
        else:
            centre = rng.uniform(0, extent)
        if np.any(centre < 0) or np.any(centre > extent):
            continue
        gaps = [np.linalg.norm(centre - c) / (r.mean() + axes.mean()) for c, r in zip(centres, radii)]
        if gaps and min(gaps) < 0.7:  # no object swallowed by another
            continue
        centres.append(centre)
        radii.append(axes)
    return np.array(centres), np.array(radii)


def _lumps(rng: np.random.Generator, local: np.ndarray, amount: float) -> np.ndarray:
    """A smooth factor around 1 over each direction from the centre: ``amount`` 0.2 makes radii vary by about 20 %."""
    direction = local / np.maximum(np.linalg.norm(local, axis=-1, keepdims=True), 1e-6)
    waves = rng.normal(size=(4, 3))
    waves *= 2.5 / np.linalg.norm(waves, axis=1, keepdims=True)  # low frequencies over the sphere: lobes, dents
    phases = rng.uniform(0, 2 * np.pi, size=4)
    bumps = np.cos(direction @ waves.T + phases).sum(-1) / 2.0  # about unit spread
    return 1.0 + amount * np.clip(bumps, -2.5, 2.5)


def synthetic_volume(
    seed: int,
    shape: tuple[int, int, int] = SHAPE,
    spacing: tuple[float, float, float] = SPACING,
    irregular: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """A seeded (float32 image, uint16 instance labels) pair of touching ellipsoidal nuclei, ZYX.

    ``irregular`` > 0 makes each nucleus lumpy (its radius varies smoothly with the direction by
    about that fraction: lobes and dents, as real nuclei have), where a distance-transform split
    may cut one nucleus in two.
    """
    rng = np.random.default_rng(seed)
    step = np.asarray(spacing, dtype=np.float64)
    extent = np.asarray(shape) * step
    n = max(4, int(round(OBJECTS * np.prod(extent) / np.prod(np.multiply(SHAPE, SPACING)))))
    centres, radii = _centres(rng, n, extent)
    labels = np.zeros(shape, np.uint16)
    nearest = np.full(shape, np.inf, np.float32)  # the smallest normalised distance so far
    brightness = np.zeros(len(centres) + 1, np.float32)
    for i, (centre, axes) in enumerate(zip(centres, radii), start=1):
        reach = axes.max() * (1.0 + 2.5 * irregular)  # the farthest a (lumpy) surface can be from the centre
        lo = np.maximum(np.floor((centre - reach) / step).astype(int), 0)
        hi = np.minimum(np.ceil((centre + reach) / step).astype(int) + 1, shape)
        if np.any(hi <= lo):
            continue
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        grid = np.stack(np.meshgrid(*[np.arange(a, b) * s for a, b, s in zip(lo, hi, step)], indexing="ij"), -1)
        local = (grid - centre) @ _rotation(rng) / axes  # into the ellipsoid's frame, in units of its semi-axes
        distance = np.sqrt((local**2).sum(-1)).astype(np.float32)
        if irregular > 0:
            distance = (distance / _lumps(rng, local, irregular)).astype(np.float32)
        mine = (distance < 1.0) & (distance < nearest[box])
        labels[box][mine] = i
        nearest[box][mine] = distance[mine]
        brightness[i] = rng.uniform(0.35, 1.0)
    present = np.unique(labels)  # renumbered 1..N: objects that lost every voxel to others are dropped
    lut = np.zeros(len(brightness), np.int64)
    lut[present] = np.arange(len(present))
    ids, brightness = lut[labels], brightness[present]
    texture = ndimage.gaussian_filter(rng.normal(size=shape), 1.5 / step)
    texture = 1.0 + 0.2 * texture / texture.std()
    image = brightness[ids] * np.clip(texture, 0.3, None) * (1.0 - 0.3 * nearest.clip(0, 1) ** 4)
    image = ndimage.gaussian_filter(image, np.array([2.5, 1.2, 1.2]) / step)
    z, y, x = np.meshgrid(*[np.linspace(0, 1, k) for k in shape], indexing="ij", sparse=True)
    image = image + 0.08 + 0.12 * (0.5 * z + 0.3 * y + 0.2 * x)  # background and a mild gradient
    photons = 25.0  # photons at brightness 1: shot noise, then read noise
    image = rng.poisson(image * photons) / photons + rng.normal(0, 0.04, size=shape)
    return image.astype(np.float32), ids.astype(np.uint16)


def classic_watershed(image: np.ndarray, spacing=SPACING, min_distance: int = 4, min_size: int = 100) -> np.ndarray:
    """Otsu mask, distance-transform peaks as markers, watershed: the textbook 3D nuclei split."""
    from skimage.feature import peak_local_max
    from skimage.filters import threshold_otsu
    from skimage.segmentation import watershed

    smooth = ndimage.gaussian_filter(image.astype(np.float32), 1.0 / np.asarray(spacing))
    mask = ndimage.binary_fill_holes(smooth > threshold_otsu(smooth))
    distance = ndimage.distance_transform_edt(mask, sampling=spacing)
    peaks = peak_local_max(distance, min_distance=min_distance, labels=mask.astype(np.int32), exclude_border=False)
    markers = np.zeros(image.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    labels = watershed(-distance, markers, mask=mask)
    small = np.bincount(labels.ravel()) < min_size
    small[0] = False
    labels[small[labels]] = 0
    return labels


def train_ours(
    volume,
    minutes: float,
    seed: int,
    spacing=SPACING,
    steps: int | None = None,
    zero_is: str = "background",
    members: int | None = None,
    keep: str | None = None,
) -> tuple[torch.nn.Module, dict]:
    """As ``attention-unet train --task instances --dims 3 --spacing 2,1,1 --minutes M`` (CPU);
    ``steps``: as ``--steps N`` instead (untimed), ``zero_is``: as ``--zero-is``, ``members``: as ``--members``.
    ``keep``: "best" or "last" state of each member, instead of the default (``TrainConfig.keep_last``)."""
    torch.manual_seed(seed)
    image, labels = volume
    budget = {"steps": steps} if steps else {"minutes": minutes}
    pair = [(image, labels, "ZYX", spacing)]
    plan = plan_training(pair, task="instances", dims=3, seed=seed, zero_is=zero_is, **budget)
    if keep is not None:  # the best state by the held-out strip (early stop) or the last one (to the end)
        plan = replace(plan, config=replace(plan.config, keep_last=keep == "last"))
    timed = plan.config.time_budget is not None
    count = members or default_members(3, plan.scratch, 1, timed, "instances")
    run, lasts, notes = Members(plan.model, plan.config, plan.pairs, plan.background_slices, "cpu", count), [], []
    for _, trainer in run.trainers():
        result = run_to_end(trainer.run())
        run.record(trainer, result)
        lasts.append(copy.deepcopy(trainer.model).cpu().eval())  # the state at the end, for --last
        strip = "-" if result.best_val_ap is None else f"{result.best_val_ap:.2f}"
        notes.append(f"{result.best_step} of {result.steps} (strip AP {strip})")
    joined = run.result()
    patch, config = run.done[0].patch, run.done[0].config
    info = {
        "last": join_members(lasts),
        "steps": joined.steps,
        "seconds": sum(t.elapsed for t in run.done),
        "note": f"{count_parameters(plan.model) / 1e6:.2f} M params, patch {'x'.join(map(str, patch))} "
        f"x{config.batch_size}, {len(joined.results)} member(s), kept step {'; '.join(notes)}",
    }
    return joined.model, info


def segment_ours(model, image: np.ndarray, spacing=SPACING) -> np.ndarray:
    options = dict(axes="ZYX", spacing=spacing, gates=(), precision="fp32", instances=True)
    return run_to_end(predict(model, image, device="cpu", **options)).labels


def score(test, segment) -> tuple[np.ndarray, np.ndarray]:
    """(AP@0.5 per volume, (TP, FP, FN) per volume) of ``segment(image)`` against the truth."""
    counts = np.array([match_counts(labels, segment(image)) for image, labels in test])
    return counts[:, 0] / np.maximum(counts.sum(1), 1), counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="training wall time of ours")
    parser.add_argument("--n-test", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="training seed (the volumes' seeds are fixed)")
    parser.add_argument("--shape", default=",".join(map(str, SHAPE)), help="Z,Y,X voxels of every volume")
    parser.add_argument("--only", choices=["both", "ours", "classic"], default="both")
    parser.add_argument("--min-distance", type=int, default=4, help="classic: voxels between markers")
    parser.add_argument("--irregular", type=float, default=0.0, help="lumpy nuclei: radii vary by about this fraction")
    parser.add_argument("--first-test", type=int, default=1, help="first test volume's seed (4: those that chose)")
    parser.add_argument("--last", action="store_true", help="ours: also score the last state, not only the kept one")
    parser.add_argument(
        "--split-depths", default=None, help="ours: also score these split depths (e.g. 0.25,0.5,1), same model"
    )
    parser.add_argument(
        "--split-large",
        default=None,
        help="ours: also score these factors of the second split of large objects (0: off; e.g. 0,2), same model",
    )
    parser.add_argument("--finer", type=float, default=1.0, help="sample the same scenes this many times finer")
    parser.add_argument("--steps", type=int, default=None, help="ours: train this many steps (untimed), not minutes")
    parser.add_argument(
        "--slices", type=int, default=None, help="ours: only N slices of the training volume outlined, evenly spread"
    )
    parser.add_argument(
        "--zero-is", choices=["background", "slices"], default=None, help="with --slices (default: slices)"
    )
    parser.add_argument("--members", type=int, default=None, help="ours: as train --members (default: train's)")
    parser.add_argument(
        "--keep", choices=["best", "last"], default=None, help="ours: each member's best or last state (default: last)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shape = tuple(int(round(int(v) * args.finer)) for v in args.shape.split(","))
    spacing = tuple(s / args.finer for s in SPACING)
    train = synthetic_volume(0, shape, spacing, irregular=args.irregular)
    zero_is = "background"
    if args.slices:  # a user who outlined the nuclei of a few slices only
        image, labels = train
        kept = np.linspace(0, len(labels) - 1, args.slices + 2)[1:-1].round().astype(int)
        sparse = np.zeros_like(labels)
        sparse[kept] = labels[kept]
        train, zero_is = (image, sparse), args.zero_is or "slices"
        print(f"training labels: slices {', '.join(map(str, kept))} only, --zero-is {zero_is}")
    seeds = range(args.first_test, args.first_test + args.n_test)
    test = [synthetic_volume(s, shape, spacing, irregular=args.irregular) for s in seeds]
    counts = ", ".join(str(int(labels.max())) for _, labels in test)
    lumps = f", lumps {args.irregular:g}" if args.irregular else ""
    print(
        f"volumes {'x'.join(map(str, shape))}{lumps} (spacing {','.join(f'{s:g}' for s in spacing)}): "
        f"1 to train ({int(train[1].max())} objects), {len(test)} to test ({counts} objects); "
        f"{args.minutes:g} min, {args.threads} threads"
    )
    rows = []
    if args.only in ("both", "ours"):
        model, info = train_ours(train, args.minutes, args.seed, spacing, args.steps, zero_is, args.members, args.keep)
        start = time.perf_counter()
        ap, tally = score(test, lambda image: segment_ours(model, image, spacing))
        info["note"] += f", {(time.perf_counter() - start) / len(test):.1f} s/volume to predict"
        rows.append(("ours (attention-unet train, 3D instances)", info, ap, tally))
        models = [("", model)] + ([(", last state", info["last"])] if args.last else [])
        for depth in [float(v) for v in args.split_depths.split(",")] if args.split_depths else [None]:
            for state, net in models:
                if depth is None and not state:
                    continue  # the default depth and the kept state: the first row
                default = instances.SPLIT_DEPTH_3D
                instances.SPLIT_DEPTH_3D = default if depth is None else depth
                ap, tally = score(test, lambda image, net=net: segment_ours(net, image, spacing))
                instances.SPLIT_DEPTH_3D = default
                name = f"ours{state}" + ("" if depth is None else f", split depth {depth:g}")
                rows.append((name, {**info, "note": "the same run"}, ap, tally))
        for factor in [float(v) for v in args.split_large.split(",")] if args.split_large else []:
            default = instances.SPLIT_LARGE_3D
            instances.SPLIT_LARGE_3D = factor
            ap, tally = score(test, lambda image: segment_ours(model, image, spacing))
            instances.SPLIT_LARGE_3D = default
            name = f"ours, large objects split again over {factor:g}x the median" if factor else "ours, no second split"
            rows.append((name, {**info, "note": "the same run"}, ap, tally))
    if args.only in ("both", "classic"):
        start = time.perf_counter()
        # The classic's sizes are in voxels: scaled with the sampling (its best distance, 4, at --finer 1).
        distance, smallest = int(round(args.min_distance * args.finer)), int(round(100 * args.finer**3))
        ap, tally = score(test, lambda image: classic_watershed(image, spacing, distance, smallest))
        note = f"min distance {distance}, {(time.perf_counter() - start) / len(test):.1f} s/volume"
        rows.append(("classic (Otsu + distance watershed)", {"steps": None, "note": note}, ap, tally))
    print()
    print("| method | steps | AP@0.5 mean | per volume | missed | false | notes |")
    print("|---|---|---|---|---|---|---|")
    for name, info, ap, tally in rows:
        steps = "-" if info["steps"] is None else f"{info['steps']} in {info['seconds']:.0f} s"
        per = " / ".join(f"{a:.2f}" for a in ap)
        _, fp, fn = tally.sum(0)
        print(f"| {name} | {steps} | {ap.mean():.3f} | {per} | {fn} | {fp} | {info['note']} |")


if __name__ == "__main__":
    main()
