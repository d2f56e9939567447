"""Train the bundled ``nuclei`` model from scratch on DSB2018 stage1_train (BBBC038).

Reproducible recipe: a fixed seed, a whole-image train/validation split stratified
by image kind (written to ``training/split.json`` and reused when it exists), and
the same loss, augmentation and patch sampling as fine-tuning in the plugin
(``napari_attention_unet.core.train.Trainer``). Checkpoints every few minutes to
``runs/bundled/last.pt`` so that ``--resume`` can continue in a later session.

    python training/train_bundled.py --minutes 60
    python training/train_bundled.py --minutes 30 --resume
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import tifffile
import torch

from napari_attention_unet.core.model import AttentionUNet, ModelConfig, count_parameters
from napari_attention_unet.core.train import TrainConfig, Trainer, TrainingSample, draw_batch, prepare_sample
from napari_attention_unet.core.weights import load_model, save_model

ROOT = Path(__file__).resolve().parents[1]
#: The shared data folder sits next to the repository; DSB2018_DATA points elsewhere.
DATA = Path(os.environ.get("DSB2018_DATA", ROOT.parent / "shared" / "data" / "dsb2018_train"))
#: NuInsSeg human-spleen H&E tiles (CC BY 4.0): a second source of H&E nuclei (--nuinsseg).
NUINSSEG = Path(os.environ.get("NUINSSEG_DATA", ROOT.parent / "shared" / "data" / "nuinsseg_human_spleen"))
SPLIT = ROOT / "training" / "split.json"
MODEL_OUT = ROOT / "src" / "napari_attention_unet" / "models" / "nuclei.safetensors"
#: Share of training patches per kind. Fluorescence dominates the data (541 of 664);
#: colour (H&E) and brightfield are oversampled so the model serves them too.
KIND_SHARE = {"gray_darkbg": 0.55, "color": 0.30, "gray_brightbg": 0.15}
#: Object sizes the model knows (ModelConfig.extra, read by core.predict's auto_zoom): an image whose
#: nuclei come out under 12 px across is looked at again, enlarged to 18 px nuclei. Chosen on 40
#: training images shrunk to 0.5 and 0.7 of their size (training/README.md, "Small nuclei").
SMALL_OBJECTS = {"below": 12.0, "to": 18.0, "max_zoom": 3.0}
#: The same with NuInsSeg's H&E tiles (kind ``he``), which take a share from the other kinds.
KIND_SHARE_NUINSSEG = {"gray_darkbg": 0.45, "color": 0.20, "gray_brightbg": 0.15, "he": 0.20}


def read_index(data: Path = DATA) -> list[dict]:
    with open(data / "index_train.csv") as f:
        return list(csv.DictReader(f))


def make_split(rows: list[dict], val_fraction: float, seed: int) -> dict:
    """Whole images, stratified by kind: at least three validation images of every kind."""
    rng = np.random.default_rng(seed)
    split = {"seed": seed, "val_fraction": val_fraction, "train": [], "validation": []}
    for kind in sorted({r["kind"] for r in rows}):
        ids = sorted(r["id"] for r in rows if r["kind"] == kind)
        rng.shuffle(ids)
        n_val = max(3, int(round(len(ids) * val_fraction)))
        split["validation"] += sorted(ids[:n_val])
        split["train"] += sorted(ids[n_val:])
    return split


def load_split(rows: list[dict], val_fraction: float, seed: int) -> dict:
    split = json.loads(SPLIT.read_text()) if SPLIT.exists() else make_split(rows, val_fraction, seed)
    drawn = not SPLIT.exists()
    if "nuinsseg" not in split and NUINSSEG.exists():
        # NuInsSeg came later: its own whole-tile split, drawn once and kept beside DSB's.
        tiles = read_nuinsseg_index()
        split["nuinsseg"] = {k: v for k, v in make_split(tiles, 0.3, seed).items() if k in ("train", "validation")}
        drawn = True
    if drawn:
        SPLIT.write_text(json.dumps(split, indent=1) + "\n")
    return split


def read_nuinsseg_index(data: Path = NUINSSEG) -> list[dict]:
    with open(data / "index.csv") as f:
        return list(csv.DictReader(f))


def load_nuinsseg(tile: str, data: Path = NUINSSEG) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(image, instance labels, ignore mask or None): the authors' "vague areas" are not scored or trained."""
    vague = data / "vague" / f"{tile}.tif"
    ignore = tifffile.imread(vague).astype(bool) if vague.exists() else None
    return (*load_pair(tile, data), ignore)


def load_pair(image_id: str, data: Path = DATA) -> tuple[np.ndarray, np.ndarray]:
    return tifffile.imread(data / "images" / f"{image_id}.tif"), tifffile.imread(data / "masks" / f"{image_id}.tif")


def sample_weights(rows: list[dict], patch: int, shares: dict[str, float] = KIND_SHARE) -> list[float]:
    """Each kind gets its share; within a kind, bigger images get more patches (sqrt of area)."""
    area = [max(1.0, int(r["height"]) * int(r["width"]) / patch**2) ** 0.5 for r in rows]
    totals: dict[str, float] = {}
    for r, a in zip(rows, area):
        totals[r["kind"]] = totals.get(r["kind"], 0.0) + a
    present = sum(shares[k] for k in totals)
    return [shares[r["kind"]] / present * a / totals[r["kind"]] for r, a in zip(rows, area)]


class PatchStream(torch.utils.data.IterableDataset):
    """Endless augmented batches (:func:`core.train.draw_batch`), made in DataLoader worker processes.

    On a GPU the network is faster than one CPU core can crop and augment patches;
    workers keep it fed. Each worker has its own seeded RNG.
    """

    def __init__(self, samples: list[TrainingSample], p: np.ndarray, patch: tuple, channels: int, config, seed: int):
        self.samples, self.p, self.patch, self.channels, self.config, self.seed = (
            samples, p, patch, channels, config, seed,
        )  # fmt: skip

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        rng = np.random.default_rng([self.seed, info.id if info else 0])
        while True:
            images, targets, weights = draw_batch(self.samples, self.p, rng, self.patch, self.channels, self.config)
            yield torch.from_numpy(images), torch.from_numpy(targets), weights


class StreamTrainer(Trainer):
    """A :class:`Trainer` whose batches come from :class:`PatchStream` workers."""

    def __init__(self, *args, workers: int, stream_seed: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.workers, self.stream_seed, self.stream = workers, stream_seed, None

    def _host_batch(self) -> tuple:
        if self.stream is None:
            dataset = PatchStream(
                self.samples, self.sample_p, self.patch, self.model.config.in_channels, self.config, self.stream_seed
            )
            loader = torch.utils.data.DataLoader(
                dataset,
                batch_size=None,
                num_workers=self.workers,
                pin_memory=self.device.type == "cuda",
                prefetch_factor=4,
                persistent_workers=True,
                worker_init_fn=lambda _: torch.set_num_threads(1),
            )
            self.stream = iter(loader)
        return next(self.stream)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=60.0, help="time budget of this session")
    parser.add_argument(
        "--steps", type=int, default=None, help="total steps of the LR schedule (default: from --minutes)"
    )
    parser.add_argument("--steps-per-second", type=float, default=1.1, help="measured throughput, to size --steps")
    parser.add_argument("--resume", action="store_true", help="continue from runs/bundled/last.pt")
    parser.add_argument("--patch", type=int, default=192)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--val-fraction", type=float, default=0.11)
    parser.add_argument("--eval-every", type=int, default=300, help="steps between validation scores")
    parser.add_argument("--checkpoint-minutes", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--limit", type=int, default=None, help="use only this many training images (smoke tests)")
    parser.add_argument(
        "--kinds",
        default=",".join(KIND_SHARE),
        help="image kinds to train and validate on (index_train.csv's kind column; default: all). "
        "Leaving one out makes a start model to which that kind is a new domain (benchmarks/bench_finetune.py)",
    )
    parser.add_argument(
        "--nuinsseg", action="store_true", help="also train on the NuInsSeg H&E tiles of split.json's nuinsseg.train"
    )
    parser.add_argument("--scale-min", type=float, default=0.8, help="smallest random zoom of a patch")
    parser.add_argument("--scale-max", type=float, default=1.25, help="largest random zoom of a patch")
    parser.add_argument("--stain", type=float, default=0.0, help="stain jitter of RGB patches (0: off; e.g. 0.05)")
    parser.add_argument(
        "--select",
        choices=("validation", "none"),
        default="validation",
        help="keep the state with the best validation Dice (validation), or the last state and never look "
        "at the validation images (none: they stay unseen for training/evaluate.py)",
    )
    parser.add_argument("--width", type=int, default=ModelConfig.base_width, help="channels of the first level")
    parser.add_argument("--depth", type=int, default=ModelConfig.depth)
    parser.add_argument("--init", type=Path, default=None, help="start from these weights (a warm start)")
    parser.add_argument("--device", default="auto", help="auto (CUDA, MPS, CPU), cuda, mps or cpu")
    parser.add_argument(
        "--workers", type=int, default=0, help="processes that make the patches (0: in the loop; use 4+ on a GPU)"
    )
    parser.add_argument("--checkpoint", type=Path, default=None, help="resume file (default: OUT/last.pt)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bundled")
    parser.add_argument("--model-out", type=Path, default=MODEL_OUT)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = read_index()
    split = load_split(rows, args.val_fraction, args.seed)
    by_id = {r["id"]: r for r in rows}
    kinds = set(args.kinds.split(","))
    if not kinds <= set(KIND_SHARE):
        parser.error(f"--kinds: unknown kind(s) {sorted(kinds - set(KIND_SHARE))}; known: {', '.join(KIND_SHARE)}")
    train_rows = [by_id[i] for i in split["train"] if by_id[i]["kind"] in kinds][: args.limit]
    val_rows = [by_id[i] for i in split["validation"] if by_id[i]["kind"] in kinds]
    print(f"{len(train_rows)} training images, {len(val_rows)} validation images", flush=True)

    if args.init is not None:
        model, _ = load_model(args.init)
        config = model.config
        print(f"warm start from {args.init} ({config.to_dict()})", flush=True)
    else:
        config = ModelConfig(base_width=args.width, depth=args.depth)
        model = AttentionUNet(config)
    torch.backends.cudnn.benchmark = True  # fixed patch size: let cuDNN pick its fastest kernels
    t0 = time.perf_counter()
    samples = [prepare_sample(*load_pair(r["id"]), in_channels=config.in_channels) for r in train_rows]
    validation = [prepare_sample(*load_pair(r["id"]), in_channels=config.in_channels) for r in val_rows]
    shares = KIND_SHARE
    if args.nuinsseg:
        tiles = {r["id"]: r for r in read_nuinsseg_index()}
        for tile in split["nuinsseg"]["train"]:
            image, labels, ignore = load_nuinsseg(tile)
            samples.append(prepare_sample(image, labels, ignore=ignore, in_channels=config.in_channels))
            train_rows.append(tiles[tile])
        shares = KIND_SHARE_NUINSSEG
        print(f"+ {len(split['nuinsseg']['train'])} NuInsSeg training tiles", flush=True)
    if args.select == "none":
        validation = []
    print(f"loaded and prepared the data in {time.perf_counter() - t0:.0f} s", flush=True)

    steps = args.steps or int(args.minutes * 60 * args.steps_per_second)
    train_config = TrainConfig(
        max_steps=steps,
        time_budget=args.minutes * 60,
        patch_size=args.patch,
        batch_size=args.batch,
        lr=args.lr,
        weight_decay=1e-4,
        warmup_steps=min(200, steps // 10),
        eval_every=args.eval_every,
        patience=10**6,  # a from-scratch run keeps going; the best state is kept anyway
        from_scratch=args.init is None,
        freeze_batchnorm=False,  # many images per batch: batch statistics are sound
        must_beat_start=False,  # each run keeps its best state, as when the bundled model was trained
        seed=args.seed,
        scale_range=(args.scale_min, args.scale_max),
        stain_jitter=args.stain,
    )
    common = dict(
        config=train_config,
        device=args.device,
        samples=samples,
        validation=validation,
        sample_weights=sample_weights(train_rows, args.patch, shares),
    )
    if args.workers > 0:
        trainer = StreamTrainer(model, workers=args.workers, stream_seed=args.seed, **common)
    else:
        trainer = Trainer(model, **common)
    print(f"training on {trainer.device} ({count_parameters(model):,} parameters)", flush=True)
    last = args.checkpoint or args.out / "last.pt"
    if args.resume and last.exists():
        trainer.load_checkpoint(torch.load(last, weights_only=True, map_location=trainer.device))
        print(f"resumed from {last} at step {trainer.step}", flush=True)
        if not args.steps:
            # The schedule's length was sized for one session: stretch it over this one too.
            train_config.max_steps = trainer.step + steps
    steps_before = trainer.step

    def save_checkpoint() -> None:
        tmp = last.with_suffix(".tmp")
        torch.save(trainer.checkpoint(), tmp)
        tmp.replace(last)

    log = open(args.out / "history.jsonl", "a")
    last_save = time.perf_counter()
    losses: list[float] = []
    for report in trainer.run():
        losses.append(report.loss)
        if report.val_dice is not None or report.step % 50 == 0 or report.message.startswith("stop"):
            record = {
                "step": report.step,
                "elapsed_s": round(report.elapsed, 1),
                "loss_mean50": round(float(np.mean(losses[-50:])), 4) if losses else None,
                "lr": report.lr,
                "val_dice": report.val_dice,
                "best_val_dice": report.best_val_dice,
                "eta_s": None if report.eta is None else round(report.eta),
            }
            log.write(json.dumps(record) + "\n")
            log.flush()
            rate = (report.step - steps_before) / max(report.elapsed, 1e-9)
            print(f"{record} {rate:.2f} steps/s", flush=True)
        if time.perf_counter() - last_save > args.checkpoint_minutes * 60:
            save_checkpoint()
            last_save = time.perf_counter()
    save_checkpoint()

    result = trainer.result()
    best = result.trained_model
    best.config.extra["small_objects"] = dict(SMALL_OBJECTS)
    info = {
        "name": "nuclei",
        "description": "Nuclei in fluorescence, brightfield and H&E images (DSB2018 / BBBC038)"
        if kinds == set(KIND_SHARE)
        else f"Nuclei, trained on DSB2018 / BBBC038 images of kind {', '.join(sorted(kinds))} only",
        "data": "BBBC038v1 / DSB2018 stage1_train with community mask fixes (CC0)"
        + (", NuInsSeg human spleen (Mahbod et al. 2024, CC BY 4.0)" if args.nuinsseg else ""),
        "split": "training/split.json",
        "kinds": sorted(kinds),
        "steps": result.steps,
        "best_step": result.best_step,
        "val_foreground_dice": result.best_val_dice,
        "val_foreground_iou": result.best_val_iou,
        "parameters": count_parameters(best),
        "trained": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "recipe": "python training/train_bundled.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    if result.accepted:
        save_model(best, args.model_out, info=info, half=True)
        print(f"wrote {args.model_out}", flush=True)
    save_model(best, args.out / "best.safetensors", info=info)
    print(json.dumps({"accepted": result.accepted, "message": result.message, **info}), flush=True)
    os.sync() if hasattr(os, "sync") else None
    if not math.isfinite(losses[-1] if losses else math.nan):
        sys.exit(1)


if __name__ == "__main__":
    main()
