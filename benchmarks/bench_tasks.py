"""A new 3D semantic model from scratch on MR volumes, against MONAI's AttentionUnet in the same time.

Data: ``../shared/data/msd_hippocampus_dev`` (Medical Segmentation Decathlon Task04, CC-BY-SA 4.0:
60 T1 MR crops, ZYX, labels 0 background / 1 anterior / 2 posterior; read in place, never copied).
The volumes sorted by name are split into the first ``--n-train`` (default 20) for training and
the others (40) for scoring. Intensities differ by 10^4 between scans, so every volume is
normalised on its own with percentiles (``core.images.normalize``, 1 / 99.8), for both models.

1. **ours**: what ``attention-unet train --task semantic --dims 3`` does (``core.train.start``:
   a new 3D model sized by ``SCRATCH[3]``, ``default_train_config``: fitted patches, held-out
   strips for choosing the best state; members while the budget has room, ``core.train.folds``), for
   ``--minutes`` of wall time; prediction with ``core.predict.predict``. ``--members N`` sets the most
   members, ``--each`` also scores each member alone.
2. **MONAI**: ``monai.networks.nets.AttentionUnet`` (spatial_dims 3, channels (16, 32, 64, 128),
   strides (2, 2, 2)), ``DiceCELoss`` (softmax, one-hot), Adam (lr 1e-3), random crops of
   32x48x32 (volumes padded to that first), batch 4, for the same wall time, then
   ``sliding_window_inference`` (same roi, overlap 0.25, Gaussian), as a user would write it.
   ``--monai-channels-last`` also gives it the channels-last 3D layout ours uses.

Scores: Dice of each class per test volume, averaged over volumes, and their mean. Ours runs as
``train`` does (``--precision auto``: bf16 autocast on CPUs with native bf16, AMX or AVX512-BF16, else
fp32); MONAI in fp32, or with ``--monai-bf16`` in bf16 autocast (the issue's tuned MONAI run).

``--part 2d`` measures where a 2D semantic model should start (from scratch, or from the
bundled nuclei model's weights with a new head), ``--minutes`` each: ISBI 2012 EM membranes
(``1 - mask``; train on slices 0-1, score membrane Dice on 2-14; non-commercial data, read in
place) and NuInsSeg human-spleen H&E nuclei (ids > 0; train on 3 tiles, score on the other 31).

    python benchmarks/bench_tasks.py [--part 3d|2d] [--minutes 8] [--n-train 20] [--threads 2] [--seed 0]
        [--only both|ours|monai] [--precision fp32|bf16|auto] [--monai-channels-last] [--monai-bf16] [--inner]
        [--patch ZxYxX]
        [--batch N] [--width W] [--last] [--members N] [--each]
        [--slices K --zero-is background|slices] [--mark-background none|ends|all] [--steps N] [--monai-steps N]

``--steps N`` / ``--monai-steps N`` train ours / MONAI for N steps instead of ``--minutes`` (untimed,
so the machine's load does not matter; ``--monai-steps 1672`` is the issue's bf16 MONAI run).

``--slices K`` keeps K labelled slices of each training volume (a user who labelled a few
slices), trained with ``--zero-is background`` or ``slices``; ``--mark-background ends|all`` also
marks slices beyond the structure as background (one at each end, or all of them), as the dock's
"Mark this slice as background" and ``train --background-slices`` do. ``--inner`` chooses settings
without the test volumes: it trains on the first half of the
training volumes and scores on the second half (``--patch`` / ``--batch`` set ours).
"""

from __future__ import annotations

import argparse
import copy
import csv
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DATA  # noqa: E402

from napari_attention_unet.core.device import pick_device  # noqa: E402
from napari_attention_unet.core.images import normalize  # noqa: E402
from napari_attention_unet.core.model import count_parameters  # noqa: E402
from napari_attention_unet.core.predict import predict, run_to_end  # noqa: E402
from napari_attention_unet.core.train import Trainer  # noqa: E402
from napari_attention_unet.core.train.folds import Members, default_members  # noqa: E402
from napari_attention_unet.core.train.start import (  # noqa: E402
    default_train_config,
    new_model,
    split_samples,
    task_classes,
)

#: Where both models train and predict (``--device``; the figures below are the 2-core CPU's).
DEVICE = torch.device("cpu")
PRECISION = "auto"  # ours, training and prediction (--precision)
HIPPOCAMPUS = DATA / "msd_hippocampus_dev"
CLASSES = ("anterior", "posterior")


def load_cases() -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Every case as (name, float32 ZYX image, uint8 labels), sorted by name."""
    import tifffile

    with open(HIPPOCAMPUS / "index.csv", newline="") as f:
        names = sorted(row["name"] for row in csv.DictReader(f))
    return [
        (
            n,
            tifffile.imread(HIPPOCAMPUS / "images" / f"{n}.tif").astype(np.float32),
            tifffile.imread(HIPPOCAMPUS / "masks" / f"{n}.tif").astype(np.uint8),
        )
        for n in names
    ]


def class_dice(predicted: np.ndarray, truth: np.ndarray) -> list[float]:
    """Dice of classes 1 and 2 (1.0 when both are empty)."""
    out = []
    for c in (1, 2):
        p, t = predicted == c, truth == c
        total = p.sum() + t.sum()
        out.append(1.0 if total == 0 else float(2 * (p & t).sum() / total))
    return out


def train_ours(
    train, minutes: float, seed: int, marks=None, width=None, members=None, **settings
) -> tuple[torch.nn.Module, dict]:
    """``settings``: TrainConfig fields that replace the defaults (e.g. ``patch_size``, ``batch_size``);
    ``marks``: per training volume, slices marked as background (``--mark-background``); ``members``: networks the
    model averages (None: as ``train`` decides, ``core.train.folds.default_members``)."""
    torch.manual_seed(seed)
    classes = task_classes("semantic", 2, CLASSES)
    model = new_model("semantic", classes, 3, 1, "scratch", base_width=width)
    shapes = [image.shape for _, image, _ in train]
    config = default_train_config(
        "semantic", 3, shapes, from_scratch=True, minutes=minutes, depth=model.config.depth, seed=seed, **settings
    )
    pairs = [(image, labels, "ZYX") for _, image, labels in train]
    count = members or default_members(3, True, len(pairs), config.time_budget is not None)
    run = Members(model, config, pairs, marks, DEVICE, count)
    start, trainers = time.perf_counter(), []
    for _, trainer in run.trainers():
        run_to_end(trainer.run())
        trainers.append(trainer)
    joined = run.result()
    kept = ", ".join(f"{r.best_step} of {r.steps}" for r in joined.results)
    info = {
        "steps": joined.steps,
        "seconds": time.perf_counter() - start,
        "params": count_parameters(model) * len(joined.results),
        "note": f"patch {'x'.join(map(str, trainers[0].patch))} x{config.batch_size}, "
        f"{len(joined.results)} member(s), best steps {kept}",
        "last": copy.deepcopy(trainers[0].model).cpu().eval(),  # the first member's state at the end, for --last
        "members": [r.trained_model for r in joined.results],  # for --each
    }
    return joined.model, info


def score_ours(model, test) -> np.ndarray:
    scores = []
    for _, image, labels in test:
        prediction = run_to_end(predict(model, image, axes="ZYX", gates=(), device=DEVICE, precision=PRECISION))
        scores.append(class_dice(prediction.labels, labels))
    return np.array(scores)


def train_monai(
    train, minutes: float, seed: int, channels_last: bool, roi=(32, 48, 32), batch=4, max_steps=None, bf16=False
):
    from monai.losses import DiceCELoss
    from monai.networks.nets import AttentionUnet

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = AttentionUnet(spatial_dims=3, in_channels=1, out_channels=3, channels=(16, 32, 64, 128), strides=(2, 2, 2))
    memory_format = torch.channels_last_3d if channels_last else torch.contiguous_format
    model = model.to(DEVICE, memory_format=memory_format)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    volumes = []
    for _, image, labels in train:  # pad to at least the roi (as SpatialPadd would), normalise per volume
        pads = [(0, max(r - n, 0)) for r, n in zip(roi, labels.shape)]
        volumes.append((np.pad(normalize(image[None])[0], pads), np.pad(labels, pads)))
    model.train()
    steps, start = 0, time.perf_counter()
    while (steps < max_steps) if max_steps else (time.perf_counter() - start < 60 * minutes):
        xs, ys = [], []
        for _ in range(batch):  # RandSpatialCrop
            image, labels = volumes[rng.integers(len(volumes))]
            corner = [int(rng.integers(0, n - r + 1)) for n, r in zip(labels.shape, roi)]
            box = tuple(slice(c, c + r) for c, r in zip(corner, roi))
            xs.append(image[box][None])
            ys.append(labels[box][None])
        x = torch.from_numpy(np.stack(xs)).to(DEVICE).contiguous(memory_format=memory_format)
        y = torch.from_numpy(np.stack(ys).astype(np.int64)).to(DEVICE)
        optimizer.zero_grad()
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        loss = loss_fn(logits.float(), y)
        loss.backward()
        optimizer.step()
        steps += 1
    info = {"steps": steps, "seconds": time.perf_counter() - start, "params": count_parameters(model)}
    info["note"] = f"roi {'x'.join(map(str, roi))} x{batch}" + (", channels-last 3D" if channels_last else "")
    info["note"] += ", bf16 autocast" if bf16 else ""
    return model.eval(), info


@torch.no_grad()
def score_monai(model, test, channels_last: bool, roi=(32, 48, 32), bf16=False) -> np.ndarray:
    from monai.inferers import sliding_window_inference

    memory_format = torch.channels_last_3d if channels_last else torch.contiguous_format
    scores = []
    for _, image, labels in test:
        x = torch.from_numpy(normalize(image[None]))[None].to(DEVICE).contiguous(memory_format=memory_format)
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=bf16):
            logits = sliding_window_inference(x, roi, 4, model, overlap=0.25, mode="gaussian")
        scores.append(class_dice(logits.argmax(1)[0].cpu().numpy(), labels))
    return np.array(scores)


def bench_2d(minutes: float, seed: int) -> None:
    """Scratch against the bundled model's weights (new head) for 2D semantic models."""
    import tifffile

    from napari_attention_unet.models.registry import open_model

    def read(folder: Path, names) -> list[tuple[np.ndarray, np.ndarray]]:
        return [(tifffile.imread(folder / "images" / n), tifffile.imread(folder / "masks" / n)) for n in names]

    em = DATA / "isbi2012_em"
    spleen = DATA / "nuinsseg_human_spleen"
    sets = []
    if (em / "images").is_dir():
        pairs = [
            (image, (mask == 0).astype(np.uint8)) for image, mask in read(em, [f"slice_{i:02d}.tif" for i in range(15)])
        ]
        sets.append(("ISBI EM membranes", "membrane", 1, pairs[:2], pairs[2:]))
    if (spleen / "images").is_dir():
        names = sorted(p.name for p in (spleen / "images").glob("*.tif"))
        pairs = [(image, (ids > 0).astype(np.uint8)) for image, ids in read(spleen, names)]
        sets.append(("NuInsSeg spleen nuclei", "nucleus", 3, pairs[:3], pairs[3:]))
    bundled, _, _ = open_model(None)
    print("| data | start | steps | class Dice on held-out images |")
    print("|---|---|---|---|")
    for name, cls, channels, train, test in sets:
        for start_name, start in (("scratch", "scratch"), ("bundled", bundled)):
            torch.manual_seed(seed)
            model = new_model("semantic", task_classes("semantic", 1, [cls]), 2, channels, start)
            shapes = [labels.shape for _, labels in train]
            config = default_train_config("semantic", 2, shapes, from_scratch=start == "scratch", minutes=minutes)
            samples, validation = split_samples(model.config, config, train)
            trainer = Trainer(model, config=config, device=DEVICE, samples=samples, validation=validation)
            run_to_end(trainer.run())
            trained = trainer.result().trained_model
            dice = []
            for image, labels in test:
                predicted = run_to_end(predict(trained, image, gates=(), device=DEVICE, precision="fp32")).labels
                dice.append(class_dice(predicted, labels)[0])
            print(f"| {name} | {start_name} | {trainer.step} | {np.mean(dice):.3f} |", flush=True)


def few_slices(labels: np.ndarray, k: int) -> np.ndarray:
    """``labels`` with only ``k`` of its slices (first axis) kept, evenly spread over those with labels."""
    holding = np.flatnonzero(labels.reshape(len(labels), -1).any(axis=1))
    keep = holding[np.linspace(0, len(holding) - 1, k + 2).round().astype(int)[1:-1]]
    out = np.zeros_like(labels)
    out[keep] = labels[keep]
    return out


def background_marks(labels: np.ndarray, how: str) -> list[int]:
    """Slices beyond the structure a user would mark as background: ``ends``, the middle slice of the
    empty run at each end; ``all``, every slice beyond it."""
    holding = np.flatnonzero(labels.reshape(len(labels), -1).any(axis=1))
    low, high = int(holding[0]), int(holding[-1])
    if how == "ends":
        return [z for z in (low // 2, (high + 1 + len(labels)) // 2) if z < low or z > high]
    return [z for z in range(len(labels)) if z < low or z > high]


def _patch(text: str) -> tuple[int, int, int]:
    sizes = tuple(int(v) for v in text.lower().split("x"))
    if len(sizes) != 3:
        raise argparse.ArgumentTypeError(f"a 3D patch is ZxYxX, e.g. 24x32x24, not {text!r}")
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=8.0, help="training wall time per model")
    parser.add_argument(
        "--steps", type=int, default=None, help="ours: train this many steps instead (untimed: load does not matter)"
    )
    parser.add_argument(
        "--monai-steps", type=int, default=None, help="MONAI: train this many steps (1672: the issue's bf16 run)"
    )
    parser.add_argument("--n-train", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--device", default="cpu", choices=["cpu", "cuda", "mps", "auto"], help="where both models train"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--precision",
        choices=["fp32", "bf16", "auto"],
        default="auto",
        help="ours, training and prediction (auto, as train: bf16 where the CPU has it natively, else fp32)",
    )
    parser.add_argument(
        "--monai-bf16", action="store_true", help="MONAI trains and predicts in bf16 autocast (the issue's tuned run)"
    )
    parser.add_argument("--only", choices=["both", "ours", "monai"], default="both")
    parser.add_argument("--monai-channels-last", action="store_true")
    parser.add_argument("--part", choices=["3d", "2d"], default="3d")
    parser.add_argument(
        "--inner",
        action="store_true",
        help="choose settings without the test volumes: train on the first half of the training volumes, "
        "score on the second half",
    )
    parser.add_argument("--patch", type=_patch, default=None, metavar="ZxYxX", help="our 3D patch (default: fitted)")
    parser.add_argument("--batch", type=int, default=None, help="our batch size (default 4)")
    parser.add_argument("--width", type=int, default=None, help="our network's base width (default: SCRATCH[3])")
    parser.add_argument("--patience", type=int, default=None, help="ours: evaluations without a better state")
    parser.add_argument(
        "--class-fraction", type=float, default=None, help="ours: share of patches centred on a class (TrainConfig)"
    )
    parser.add_argument("--last", action="store_true", help="also score our last state, not only the best one")
    parser.add_argument("--members", type=int, default=None, help="ours: networks averaged (default: as train)")
    parser.add_argument("--each", action="store_true", help="also score each of our members alone")
    parser.add_argument(
        "--slices",
        type=int,
        default=None,
        metavar="K",
        help="keep K labelled slices (first axis, evenly spread over those with labels) of each training volume",
    )
    parser.add_argument("--zero-is", default="background", choices=["background", "slices"], help="with --slices")
    parser.add_argument(
        "--mark-background",
        choices=["none", "ends", "all"],
        default="none",
        help="with --slices --zero-is slices: mark slices beyond the structure as background (one at each end, or all)",
    )
    args = parser.parse_args()
    global DEVICE, PRECISION
    DEVICE, PRECISION = pick_device(args.device), args.precision
    if args.part == "2d":
        torch.set_num_threads(args.threads)
        return bench_2d(args.minutes, args.seed)
    if not (HIPPOCAMPUS / "index.csv").is_file():
        print(f"skipped: the MSD hippocampus volumes are not at {HIPPOCAMPUS} (../shared/data beside the repository)")
        return
    torch.set_num_threads(args.threads)
    cases = load_cases()
    train, test = cases[: args.n_train], cases[args.n_train :]
    if args.inner:  # the test volumes are never used: half of the training volumes stand in for them
        train, test = train[: len(train) // 2], train[len(train) // 2 :]
    marks = None
    if args.mark_background != "none":  # from the full labels: which slices hold no structure at all
        marks = [background_marks(labels, args.mark_background) for _, _, labels in train]
    if args.slices:  # a user who labelled K slices of each volume: the other slices are 0
        train = [(name, image, few_slices(labels, args.slices)) for name, image, labels in train]
    kind = "inner test" if args.inner else "test"
    print(f"{len(train)} training, {len(test)} {kind} volumes, {args.minutes:g} min each, {args.threads} threads")
    rows = []
    if args.only in ("both", "ours"):
        chosen = (
            ("patch_size", args.patch),
            ("batch_size", args.batch),
            ("class_fraction", args.class_fraction),
            ("patience", args.patience),
        )
        settings = {k: v for k, v in chosen if v is not None}
        settings["zero_is"] = args.zero_is
        settings["precision"] = args.precision
        if args.steps:  # step-matched: the same run on any machine, however loaded
            settings.update(max_steps=args.steps, time_budget=None)
        model, info = train_ours(train, args.minutes, args.seed, marks, args.width, args.members, **settings)
        rows.append(("ours (attention-unet train)", info, score_ours(model, test)))
        for k, member in enumerate(info["members"] if args.each and len(info["members"]) > 1 else [], start=1):
            rows.append(
                (
                    f"ours, member {k} alone",
                    {**info, "params": info["params"] / len(info["members"])},
                    score_ours(member, test),
                )
            )
        if args.last:
            last = {**info, "note": info["note"].split(", best")[0] + ", the last state"}
            rows.append(("ours, last state", last, score_ours(info["last"], test)))
    if args.only in ("both", "monai"):
        channels_last, bf16 = args.monai_channels_last, args.monai_bf16
        model, info = train_monai(train, args.minutes, args.seed, channels_last, max_steps=args.monai_steps, bf16=bf16)
        rows.append(("MONAI AttentionUnet", info, score_monai(model, test, channels_last, bf16=bf16)))
    print()
    print("| model | params | steps | s/step | mean Dice | anterior | posterior | setup |")
    print("|---|---|---|---|---|---|---|---|")
    for name, info, scores in rows:
        mean, pace = scores.mean(axis=0), info["seconds"] / max(info["steps"], 1)
        print(
            f"| {name} | {info['params'] / 1e6:.2f} M | {info['steps']} | {pace:.2f} "
            f"| {mean.mean():.3f} | {mean[0]:.3f} | {mean[1]:.3f} | {info['note']} |"
        )


if __name__ == "__main__":
    main()
