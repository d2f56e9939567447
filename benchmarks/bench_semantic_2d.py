"""2D semantic models with several classes, as ``attention-unet train --dims 2`` makes them.

1. ``--part mr``: the MR hippocampus volumes (``../shared/data/msd_hippocampus_dev``, MSD Task04,
   CC-BY-SA 4.0) as a 3-class 2D task: a 2D model trains on the Z planes of the first
   ``--n-train`` (20) volumes (``--task semantic --dims 2``, which starts from the bundled model's
   weights with a new head) and predicts the other 40 plane by plane; Dice of anterior and
   posterior per volume. Side by side, for the same wall time: MONAI's ``AttentionUnet``
   (spatial_dims 2, channels 16..256), DiceCE, Adam 1e-3, random 48x48 crops of the planes
   (padded first), batch 16, each volume normalised on its own, then ``sliding_window_inference``
   plane by plane, as a user would write it.
2. ``--part em``: ISBI 2012 EM (non-commercial: read in place, never copied) as a membrane /
   cell-interior task trained **from strokes** on slices 0-1 (``--zero-is unlabelled``: only
   painted pixels count), scored on slices 2-14 (membrane Dice, pixels where the mask is 0). The
   strokes stand in for a user's brush: per slice, ``--strokes`` short pieces of membrane
   skeleton (3 px wide) and as many 25x3 px lines inside cells; the same run on the dense labels
   of the same slices is the reference (what full labels would give).

fp32 (``--precision bf16`` for ours: as ``auto`` on CPUs with native bf16), 2 torch threads. Prints a
markdown table.

    python benchmarks/bench_semantic_2d.py [--part mr|em|both] [--minutes 3] [--strokes 20] [--seed 0]
        [--steps N] [--precision fp32|bf16|auto]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DATA  # noqa: E402
from bench_tasks import HIPPOCAMPUS, class_dice, load_cases  # noqa: E402

from napari_attention_unet.core.images import normalize  # noqa: E402
from napari_attention_unet.core.predict import predict, run_to_end  # noqa: E402
from napari_attention_unet.core.train import Trainer  # noqa: E402
from napari_attention_unet.core.train.plan import plan_training  # noqa: E402
from napari_attention_unet.core.train.start import split_samples  # noqa: E402
from napari_attention_unet.models.registry import open_model  # noqa: E402

EM = DATA / "isbi2012_em"


#: ``--steps N``: our models train N steps instead of ``--minutes`` (untimed: the machine's load does not matter).
STEPS: int | None = None
#: ``--precision``: ours, training and prediction (bf16: as ``auto`` does on CPUs with native bf16).
PRECISION = "fp32"


def train_like_the_cli(pairs, minutes: float, seed: int, **plan_settings):
    """``attention-unet train`` on ``pairs``: plan, split, train for ``minutes`` (or :data:`STEPS`); the best
    state and steps."""
    torch.manual_seed(seed)
    bundled, _, _ = open_model(None)
    budget = {"steps": STEPS} if STEPS else {"minutes": minutes}
    plan = plan_training(
        pairs, task="semantic", dims=2, start=bundled, seed=seed, precision=PRECISION, **budget, **plan_settings
    )
    samples, validation = split_samples(plan.model.config, plan.config, plan.pairs)
    trainer = Trainer(plan.model, config=plan.config, device="cpu", samples=samples, validation=validation)
    run_to_end(trainer.run())
    result = trainer.result()
    return result.trained_model, {"steps": result.steps, "seconds": trainer.elapsed, "best": result.best_step}


def predicted(model, image: np.ndarray, axes: str) -> np.ndarray:
    return run_to_end(predict(model, image, axes=axes, gates=(), device="cpu", precision=PRECISION)).labels


def train_monai_2d(train, minutes: float, seed: int, roi=(48, 48), batch: int = 16):
    from monai.losses import DiceCELoss
    from monai.networks.nets import AttentionUnet

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = AttentionUnet(2, 1, 3, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2))
    loss_fn, optimizer = DiceCELoss(to_onehot_y=True, softmax=True), torch.optim.Adam(model.parameters(), lr=1e-3)
    planes = []
    for _, image, labels in train:  # normalise per volume, pad every plane to at least the roi
        volume = normalize(image[None])[0]
        pads = [(0, 0)] + [(0, max(r - n, 0)) for r, n in zip(roi, labels.shape[1:])]
        planes += list(zip(np.pad(volume, pads), np.pad(labels, pads)))
    model.train()
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < 60 * minutes:
        xs, ys = [], []
        for _ in range(batch):
            image, labels = planes[rng.integers(len(planes))]
            y0, x0 = (int(rng.integers(0, n - r + 1)) for n, r in zip(labels.shape, roi))
            box = (slice(y0, y0 + roi[0]), slice(x0, x0 + roi[1]))
            xs.append(image[box][None])
            ys.append(labels[box][None])
        optimizer.zero_grad()
        loss = loss_fn(model(torch.from_numpy(np.stack(xs))), torch.from_numpy(np.stack(ys).astype(np.int64)))
        loss.backward()
        optimizer.step()
        steps += 1
    return model.eval(), {"steps": steps, "seconds": time.perf_counter() - start, "best": steps}


@torch.no_grad()
def predicted_monai_2d(model, image: np.ndarray, roi=(48, 48)) -> np.ndarray:
    from monai.inferers import sliding_window_inference

    x = torch.from_numpy(normalize(image[None])[0])[:, None]  # the planes as a batch
    return sliding_window_inference(x, roi, 16, model, overlap=0.25, mode="gaussian").argmax(1).numpy()


def bench_mr(minutes: float, n_train: int, seed: int) -> list[tuple]:
    cases = load_cases()
    train, test = cases[:n_train], cases[n_train:]
    pairs = [(image, labels, "ZYX", None) for _, image, labels in train]
    rows = []
    model, info = train_like_the_cli(pairs, minutes, seed, class_names=("anterior", "posterior"))
    scores = np.array([class_dice(predicted(model, image, "ZYX"), labels) for _, image, labels in test])
    rows.append(("MR hippocampus 2D, ours (train --dims 2)", info, scores))
    model, info = train_monai_2d(train, minutes, seed)
    scores = np.array([class_dice(predicted_monai_2d(model, image), labels) for _, image, labels in test])
    rows.append(("MR hippocampus 2D, MONAI AttentionUnet", info, scores))
    return rows


def strokes(membrane: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """A user's few strokes per class: 1 on pieces of membrane skeleton, 2 on lines inside cells, 0 elsewhere."""
    from skimage.morphology import skeletonize

    out = np.zeros(membrane.shape, np.uint8)
    skeleton = np.argwhere(skeletonize(membrane))
    for centre in skeleton[rng.choice(len(skeleton), n, replace=False)]:
        piece = np.zeros(membrane.shape, bool)  # the skeleton within 12 px of a point: a stroke along a membrane
        piece[tuple(skeleton[np.abs(skeleton - centre).max(axis=1) <= 12].T)] = True
        out[ndimage.binary_dilation(piece) & membrane] = 1
    deep = ndimage.distance_transform_edt(~membrane) > 6
    for y, x in np.argwhere(deep)[rng.choice(int(deep.sum()), n, replace=False)]:
        line = np.zeros(membrane.shape, bool)  # a 25 px line across the inside of a cell
        line[y, max(x - 12, 0) : x + 13] = True
        out[ndimage.binary_dilation(line) & deep] = 2
    return out


def bench_em(minutes: float, n_strokes: int, seed: int) -> list[tuple]:
    import tifffile

    rng = np.random.default_rng(seed)
    slices = [
        (tifffile.imread(EM / "images" / f"slice_{i:02d}.tif"), tifffile.imread(EM / "masks" / f"slice_{i:02d}.tif"))
        for i in range(15)
    ]
    train, test = slices[:2], slices[2:]
    painted = [strokes(mask == 0, n_strokes, rng) for _, mask in train]
    dense = [np.where(mask == 0, 1, 2).astype(np.uint8) for _, mask in train]
    share = np.mean([(p > 0).mean() for p in painted])
    rows = []
    for name, labels, zero_is in (
        (f"ISBI EM from strokes ({n_strokes} per class a slice, {100 * share:.1f} % of pixels)", painted, "unlabelled"),
        ("ISBI EM dense labels (reference)", dense, "background"),
    ):
        pairs = [(image, lbl, "YX", None) for (image, _), lbl in zip(train, labels)]
        model, info = train_like_the_cli(pairs, minutes, seed, class_names=("membrane", "interior"), zero_is=zero_is)
        scores = []
        for image, mask in test:
            membrane, truth = predicted(model, image, "YX") == 1, mask == 0
            scores.append([2 * (membrane & truth).sum() / (membrane.sum() + truth.sum())])
        rows.append((name, info, np.array(scores)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["mr", "em", "both"], default="both")
    parser.add_argument("--minutes", type=float, default=3.0, help="training wall time per model")
    parser.add_argument("--n-train", type=int, default=20)
    parser.add_argument("--strokes", type=int, default=20, help="strokes per class on each EM training slice")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None, help="ours: train this many steps instead (untimed)")
    parser.add_argument("--precision", choices=["fp32", "bf16", "auto"], default="fp32", help="ours: train and predict")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    global STEPS, PRECISION
    STEPS, PRECISION = args.steps, args.precision
    rows = []
    if args.part in ("mr", "both"):
        if (HIPPOCAMPUS / "index.csv").is_file():
            rows += bench_mr(args.minutes, args.n_train, args.seed)
        else:
            print(f"skipped mr: the MSD hippocampus volumes are not at {HIPPOCAMPUS}")
    if args.part in ("em", "both"):
        if (EM / "images").is_dir():
            rows += bench_em(args.minutes, args.strokes, args.seed)
        else:
            print(f"skipped em: the ISBI 2012 slices are not at {EM}")
    print(f"\n{args.minutes:g} min each, {args.threads} threads, ours in {args.precision}\n")
    print("| run | steps | best step | Dice per class (mean over test images) | mean |")
    print("|---|---|---|---|---|")
    for name, info, scores in rows:
        per_class = " / ".join(f"{v:.3f}" for v in scores.mean(axis=0))
        print(f"| {name} | {info['steps']} | {info['best']} | {per_class} | {scores.mean():.3f} |")


if __name__ == "__main__":
    main()
