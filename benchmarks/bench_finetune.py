"""Fine-tuning a starting model on a domain it has not seen: before/after scores.

1. ISBI 2012 electron microscopy (``../shared/data/isbi2012_em``, non-commercial: read
   in place, never copied): fine-tune on ``--train-slices`` slices, score cell-interior
   Dice on every other slice. Masks are binary (1 = cell interior, 0 = membrane); the
   trainer splits them into connected components and interior/boundary classes, and
   its foreground (interior + boundary) is exactly mask == 1, so what is scored is
   foreground Dice: ``Prediction.probability > 0.5`` against ``mask == 1``.
2. DSB 2018 H&E (``kind == color``) or, with ``--domain bf``, greyscale brightfield
   (``gray_brightbg``): only images the starting model never trained on (see
   :func:`unseen_ids`: for the bundled model, its validation split). Fine-tune on
   ``--n-train`` of them, score foreground Dice and AP@0.5 (training/evaluate.py's
   ``match_ap``) on the others.
3. ``--domain nuinsseg``: NuInsSeg human-spleen H&E tiles (``../shared/data/nuinsseg_human_spleen``,
   another lab and scanner than DSB): training/split.json's ``nuinsseg.validation`` tiles,
   ``--n-train`` to fine-tune on, the rest scored. A model trained without NuInsSeg (the model card's
   ``data`` does not name it) has never seen this source.

The bundled model trained on DSB H&E and brightfield images too, so for it those are
known domains. ``--model runs/fluo/nuclei.safetensors`` starts from a model trained on
fluorescence only (``training/train_bundled.py --kinds gray_darkbg``), to which H&E and
brightfield are new.

Every run uses ``TrainConfig`` defaults (as the widget and ``attention-unet finetune``
do) with ``time_budget = --minutes`` (and ``max_steps = --steps``, default none).

    python benchmarks/bench_finetune.py [--minutes 4] [--steps N] [--device auto|cpu|cuda]
        [--train-slices 0,1] [--seed 0] [--domain isbi|he|bf|nuinsseg|both] [--n-train 3] [--model M]
        [--precision auto|fp32|bf16]

``--precision bf16`` trains and scores in bf16 autocast, as ``auto`` does on CPUs with native bf16
(on others it is emulated: slow, but the same numbers), so its scores can be set against fp32's
step for step (``--steps N`` with a long ``--minutes``).
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DATA, DSB2018, REPO  # noqa: E402

from napari_attention_unet.core.device import describe_device, pick_device  # noqa: E402
from napari_attention_unet.core.predict import predict, run_to_end  # noqa: E402
from napari_attention_unet.core.train import TrainConfig, Trainer  # noqa: E402

ISBI = DATA / "isbi2012_em"
PRECISION = "auto"  # training and scoring (--precision)


def require_data() -> None:
    missing = [p for p in (ISBI / "images", ISBI / "masks", DSB2018 / "index_train.csv") if not p.exists()]
    if missing:
        sys.exit(
            "benchmark data not found: this benchmark needs ../shared/data next to the repository "
            f"(missing: {', '.join(str(p) for p in missing)})"
        )


def imread(path: Path) -> np.ndarray:
    import tifffile

    return tifffile.imread(path)


def dice(pred: np.ndarray, true: np.ndarray) -> float:
    total = np.count_nonzero(pred) + np.count_nonzero(true)
    return 1.0 if total == 0 else 2.0 * np.count_nonzero(pred & true) / total


def match_ap_fn():
    """training/evaluate.py's match_ap, or None if it cannot be imported."""
    try:
        sys.path.insert(0, str(REPO / "training"))
        from evaluate import match_ap

        return match_ap
    except Exception as exc:  # noqa: BLE001 - the score is optional
        print(f"note: AP@0.5 left out (training/evaluate.py did not import: {exc})")
        return None


def score(model, images, masks, device, foreground, match_ap=None) -> dict:
    """Mean foreground Dice (probability > 0.5) and, with ``match_ap``, AP@0.5 of the instances."""
    dices, aps = [], []
    start = time.perf_counter()
    for image, mask in zip(images, masks):
        out = run_to_end(
            predict(model, image, device=device, gates=[], instances=match_ap is not None, precision=PRECISION)
        )
        dices.append(dice(out.probability > 0.5, foreground(mask)))
        if match_ap is not None:
            aps.append(match_ap(mask, out.labels)[0])
    result = {"dice": float(np.mean(dices)), "seconds": time.perf_counter() - start}
    if aps:
        result["ap50"] = float(np.mean(aps))
    return result


def finetune(model, pairs, args, device) -> tuple:
    extra = {"lr": args.lr} if args.lr else {}
    config = TrainConfig(
        max_steps=args.steps, time_budget=60.0 * args.minutes, seed=args.seed, precision=args.precision, **extra
    )
    trainer = Trainer(model, pairs, config=config, device=device)
    start = time.perf_counter()
    for report in trainer.run():
        if report.val_dice is not None:
            print(f"  {report.message} [{report.elapsed:.0f} s]", flush=True)
    result = trainer.result()
    wall = time.perf_counter() - start
    print(f"  {result.message}; {result.steps} steps in {wall:.0f} s ({wall / max(result.steps, 1):.2f} s/step)")
    return result, wall


def run_domain(name, model, train, test, args, device, foreground, match_ap=None) -> dict:
    print(f"\n== {name}: fine-tune on {len(train[0])} image(s), score on {len(test[0])} ==")
    before = score(model, *test, device, foreground, match_ap)
    print(f"  before: {before}")
    # The trainer gets raw labels (binary for ISBI, instances for H&E), as the CLI and the widget pass them.
    result, wall = finetune(model, list(zip(*train)), args, device)
    after = score(result.model, *test, device, foreground, match_ap)
    after_trained = after if result.accepted else score(result.trained_model, *test, device, foreground, match_ap)
    print(f"  after:  {after}")
    return {
        "domain": name,
        "n_train": len(train[0]),
        "n_test": len(test[0]),
        "before": before,
        "after": after,
        "after_trained": after_trained,
        "accepted": result.accepted,
        "steps": result.steps,
        "best_step": result.best_step,
        "best_val_dice": result.best_val_dice,
        "stopped": result.stopped,
        "train_seconds": wall,
    }


def isbi(model, args, device) -> dict:
    slices = sorted(p.name for p in (ISBI / "images").glob("slice_*.tif"))
    chosen = [f"slice_{int(i):02d}.tif" for i in args.train_slices.split(",")]
    if not set(chosen) <= set(slices):
        sys.exit(f"--train-slices {args.train_slices}: not all of {chosen} are in {ISBI / 'images'}")
    rest = [s for s in slices if s not in chosen]

    def load(names):
        return [imread(ISBI / "images" / n) for n in names], [imread(ISBI / "masks" / n) for n in names]

    return run_domain(
        f"ISBI 2012 EM (train {', '.join(chosen)})", model, load(chosen), load(rest), args, device, lambda m: m == 1
    )


#: DSB 2018 kinds (index_train.csv) that can be a fine-tuning domain, with their names in the table.
DSB_DOMAINS = {"he": ("color", "DSB 2018 H&E"), "bf": ("gray_brightbg", "DSB 2018 brightfield")}


def unseen_ids(kind: str, meta: dict) -> tuple[list[str], str]:
    """Images of ``kind`` the starting model never trained on, and where they come from.

    The bundled model trained on every kind (its card has no ``kinds``), so only the
    validation split of training/split.json is unseen. A model made with
    ``train_bundled.py --kinds ...`` lists its kinds; for a kind not among them, every
    image of the kind is unseen: a new domain to that model.
    """
    with open(DSB2018 / "index_train.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["kind"] == kind]
    trained_kinds = meta.get("kinds")
    if trained_kinds is not None and kind not in trained_kinds:
        return sorted(r["id"] for r in rows), f"all {kind} images; the model never trained on this kind"
    validation = set(json.loads((REPO / "training" / "split.json").read_text())["validation"])
    return sorted(r["id"] for r in rows if r["id"] in validation), "the model's validation split"


def load_pairs(folder: Path, names: list[str]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(images, masks) of ``names`` from a folder's ``images/`` and ``masks/`` TIFF pairs."""
    return [imread(folder / "images" / f"{n}.tif") for n in names], [
        imread(folder / "masks" / f"{n}.tif") for n in names
    ]


def dsb_domain(domain: str, model, meta: dict, args, device) -> dict:
    kind, title = DSB_DOMAINS[domain]
    ids, pool = unseen_ids(kind, meta)
    if len(ids) <= args.n_train:
        sys.exit(f"only {len(ids)} {kind} images unseen by the model ({pool}): too few to fine-tune on {args.n_train}")
    rng = np.random.default_rng(args.seed)
    order = [ids[i] for i in rng.permutation(len(ids))]

    return run_domain(
        f"{title} ({pool})",
        model,
        load_pairs(DSB2018, order[: args.n_train]),
        load_pairs(DSB2018, order[args.n_train :]),
        args,
        device,
        lambda m: m > 0,
        match_ap_fn(),
    )


def nuinsseg_domain(model, meta: dict, args, device) -> dict:
    folder = DATA / "nuinsseg_human_spleen"
    tiles = json.loads((REPO / "training" / "split.json").read_text())["nuinsseg"]["validation"]
    seen = "NuInsSeg" in str(meta.get("data", ""))
    pool = "split.json's NuInsSeg validation tiles; " + (
        "the model trained on other tiles of this source" if seen else "a source the model never saw"
    )
    rng = np.random.default_rng(args.seed)
    order = [tiles[i] for i in rng.permutation(len(tiles))]

    train, test = load_pairs(folder, order[: args.n_train]), load_pairs(folder, order[args.n_train :])
    return run_domain(f"NuInsSeg H&E ({pool})", model, train, test, args, device, lambda m: m > 0, match_ap_fn())


def table(rows: list[dict]) -> None:
    print("\n| domain | train / test images | metric | before | after | delta | ratio |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        for metric in ("dice", "ap50"):
            if metric not in r["before"]:
                continue
            b, a = r["before"][metric], r["after"][metric]
            ratio = f"{a / b:.2f}x" if b > 0 else "-"
            print(
                f"| {r['domain']} | {r['n_train']} / {r['n_test']} | {metric} | {b:.3f} | {a:.3f} | "
                f"{a - b:+.3f} | {ratio} |"
            )
    for r in rows:
        print(
            f"- {r['domain']}: {r['steps']} steps in {r['train_seconds']:.0f} s, stopped: {r['stopped']}, "
            f"best step {r['best_step']}, best val Dice {r['best_val_dice']:.3f}, accepted {r['accepted']}"
        )


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=4.0, help="time budget per fine-tune (default 4)")
    parser.add_argument("--steps", type=int, default=None, help="step budget as well (default: time only)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    parser.add_argument("--train-slices", default="0,1", help="ISBI slices to fine-tune on (default 0,1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--domain",
        default="both",
        choices=["isbi", "he", "bf", "nuinsseg", "both"],
        help="both: isbi and he (default)",
    )
    parser.add_argument("--n-train", type=int, default=3, help="DSB images to fine-tune on (default 3)")
    parser.add_argument(
        "--model", default=None, help="starting model, name or file (default: the bundled one); see unseen_ids"
    )
    parser.add_argument("--lr", type=float, default=None, help="learning rate (default: TrainConfig's)")
    parser.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        default="auto",
        help="training and scoring (auto: bf16 on CPUs with native bf16 and on CUDA, as the plugin does)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    global PRECISION
    PRECISION = args.precision
    require_data()
    from napari_attention_unet.models.registry import open_model

    model, meta, info = open_model(args.model)
    device = pick_device(args.device)
    print(
        f"model: {info.name!r} ({info.path}); device: {describe_device(device)}; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"
    )
    budget = f"time_budget={60 * args.minutes:.0f} s, max_steps={args.steps}, precision={args.precision}"
    print(f"TrainConfig defaults except {budget}, seed={args.seed}")
    rows = []
    if args.domain in ("isbi", "both"):
        rows.append(isbi(model, args, device))
    for domain in DSB_DOMAINS:
        if args.domain == domain or (domain == "he" and args.domain == "both"):
            rows.append(dsb_domain(domain, model, meta, args, device))
    if args.domain == "nuinsseg":
        rows.append(nuinsseg_domain(model, meta, args, device))
    table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
