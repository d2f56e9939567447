"""CT intensities: one fixed window for every scan against each scan's own percentiles.

No CT with labels is in ../shared, so this makes synthetic abdominal CTs in Hounsfield units with
what makes real ones differ from scan to scan: the value outside the scanner's field of view (none,
-1024, -2048 or -3024, by vendor), metal (3000 HU) in some, contrast-enhanced organs and aorta in some,
body size, noise. Two classes: a liver-like organ (1) and a spleen-like one (2), a few tens of HU
above the muscle around them. A new 3D semantic model is trained as ``attention-unet train --task
semantic --dims 3`` plans it (``core.train.plan.plan_training``), once per ``--intensity`` choice, for
the same number of steps (untimed, so the machine's load does not matter), and scored on other scans
(Dice of each class, mean over scans; also by the kind of scan).

    python benchmarks/bench_ct_window.py                      # image vs window (auto), 3 seeds, 600 steps
    python benchmarks/bench_ct_window.py --arms auto --seeds 0 --steps 100
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from scipy import ndimage

from napari_attention_unet.core.device import pick_device
from napari_attention_unet.core.predict import predict
from napari_attention_unet.core.progress import run_to_end
from napari_attention_unet.core.train.folds import Members
from napari_attention_unet.core.train.plan import plan_training

PADDING = (None, -1024, -2048, -3024)


def _blob(shape, centre, axes, rng, bumps: float = 0.15) -> np.ndarray:
    """An ellipsoid (``centre`` and semi-``axes`` in voxels) with a low-frequency bumpy surface."""
    grid = np.indices(shape, dtype=np.float32)
    r = sum(((g - c) / a) ** 2 for g, c, a in zip(grid, centre, axes))
    noise = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), 4)
    noise *= bumps / (noise.std() + 1e-6)
    return r + noise < 1.0


def synthetic_ct(rng: np.random.Generator, shape=(32, 80, 80)) -> tuple[np.ndarray, np.ndarray, str]:
    """``(image int16 HU, labels uint8, kind)``: one synthetic abdominal scan, cubic voxels."""
    nz, ny, nx = shape
    yy, xx = np.indices(shape[1:], dtype=np.float32)
    cy, cx = ny * rng.uniform(0.47, 0.53), nx * rng.uniform(0.47, 0.53)
    ay, ax = ny * rng.uniform(0.30, 0.38), nx * rng.uniform(0.38, 0.46)
    body = ((yy - cy) / ay) ** 2 + ((xx - cx) / ax) ** 2 < 1
    inner = ((yy - cy) / (ay * 0.88)) ** 2 + ((xx - cx) / (ax * 0.9)) ** 2 < 1
    contrast = rng.random() < 0.5
    image = np.full(shape, -1000.0, np.float32)
    image[:, body] = rng.uniform(-120, -80)  # fat under the skin
    image[:, inner] = rng.uniform(35, 55)  # muscle and the rest
    liver = _blob(shape, (nz * 0.5, cy - ay * 0.05, cx - ax * 0.45), (nz * 0.45, ay * 0.45, ax * 0.38), rng)
    spleen = _blob(shape, (nz * 0.45, cy - ay * 0.05, cx + ax * 0.55), (nz * 0.3, ay * 0.28, ax * 0.18), rng)
    liver &= inner[None]
    spleen &= inner[None] & ~liver
    image[liver] = rng.uniform(55, 70) + (rng.uniform(40, 70) if contrast else 0)
    image[spleen] = rng.uniform(42, 52) + (rng.uniform(60, 90) if contrast else 0)
    spine = ((yy - (cy + ay * 0.55)) ** 2 + (xx - cx) ** 2) < (ny * 0.07) ** 2
    marrow = ((yy - (cy + ay * 0.55)) ** 2 + (xx - cx) ** 2) < (ny * 0.05) ** 2
    image[:, spine] = rng.uniform(700, 1200)
    image[:, marrow] = rng.uniform(180, 300)
    aorta = ((yy - (cy + ay * 0.3)) ** 2 + (xx - (cx - ax * 0.1)) ** 2) < (ny * 0.035) ** 2
    image[:, aorta] = rng.uniform(150, 350) if contrast else rng.uniform(35, 50)
    metal = rng.random() < 0.25
    if metal:  # a screw beside the spine, over a few slices
        screw = ((yy - (cy + ay * 0.55)) ** 2 + (xx - (cx + ny * 0.1)) ** 2) < (ny * 0.03) ** 2
        image[nz // 3 : nz // 3 + 8, screw] = 3000
    image = ndimage.gaussian_filter(image, 0.8)
    image += rng.normal(0, rng.uniform(8, 20), shape).astype(np.float32)
    padding = PADDING[rng.integers(len(PADDING))]
    if padding is not None:  # outside the scanner's round field of view
        outside = ((yy - ny / 2) ** 2 + (xx - nx / 2) ** 2) > (min(ny, nx) / 2) ** 2
        image[:, outside] = padding
    labels = np.zeros(shape, np.uint8)
    labels[liver], labels[spleen] = 1, 2
    kind = ("contrast" if contrast else "plain") + (", metal" if metal else "")
    kind += "" if padding is None else f", pad {padding}"
    return np.round(image).astype(np.int16), labels, kind


def dice(predicted: np.ndarray, truth: np.ndarray, c: int) -> float:
    p, t = predicted == c, truth == c
    return 1.0 if not p.any() and not t.any() else 2.0 * (p & t).sum() / (p.sum() + t.sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arms", default="image,auto", help="--intensity choices to compare (default image,auto)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--n-train", type=int, default=20)
    parser.add_argument("--n-test", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(2)
    device = pick_device("auto")
    rng = np.random.default_rng(1234)  # the scans are the same in every run
    scans = [synthetic_ct(rng) for _ in range(args.n_train + args.n_test)]
    train, test = scans[: args.n_train], scans[args.n_train :]
    kinds = [k for *_, k in test]
    print(
        f"{len(train)} training scans, {len(test)} test scans: "
        + "; ".join(f"{kinds.count(k)} {k}" for k in sorted(set(kinds)))
    )
    for seed in map(int, args.seeds.split(",")):
        for arm in args.arms.split(","):
            start = time.perf_counter()
            plan = plan_training(
                [(im, lb, "ZYX") for im, lb, _ in train],
                task="semantic",
                dims=3,
                steps=args.steps,
                intensity=arm,
                seed=seed,
                class_names=["liver", "spleen"],
            )
            run = Members(plan.model, plan.config, plan.pairs, plan.background_slices, device, 1)
            for _, trainer in run.trainers():
                run_to_end(trainer.run())
            model = run.result().model
            scores, by_kind = [], {}
            for image, labels, kind in test:
                out = run_to_end(predict(model, image, axes="ZYX", gates=(), device=device))
                s = [dice(out.labels, labels, 1), dice(out.labels, labels, 2)]
                scores.append(s)
                for group in (kind.split(",")[0], "metal" if "metal" in kind else "no metal"):
                    by_kind.setdefault(group, []).append(np.mean(s))
                by_kind.setdefault("pad" if "pad" in kind else "no pad", []).append(np.mean(s))
            s = np.array(scores)
            print(
                json.dumps(
                    {
                        "intensity": arm,
                        "seed": seed,
                        "window": model.config.intensity_window,
                        "mean": round(float(s.mean()), 4),
                        "liver": round(float(s[:, 0].mean()), 4),
                        "spleen": round(float(s[:, 1].mean()), 4),
                        "worst scan": round(float(s.mean(1).min()), 4),
                        "by kind": {f"{k} ({len(v)})": round(float(np.mean(v)), 4) for k, v in sorted(by_kind.items())},
                        "seconds": round(time.perf_counter() - start),
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
