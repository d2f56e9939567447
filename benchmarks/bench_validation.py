"""What one validation pass of fine-tuning costs when the user corrected a corner of a large image.

Fine-tuning scores the held-out strip of the user's labels every ``eval_every`` steps. The
strip is cut from the painted region, so after corrections in one corner it is a small box in
a large image. ``core.train.validation_view`` predicts that box plus ``VALIDATION_MARGIN``
pixels of context; the reference run in the same process predicts the whole image, as the
trainer did before. Printed per image size: seconds per validation pass (median of
``--repeats``), the ratio, and the difference between the two runs' scores.

Image: a mosaic of real DSB 2018 fluorescence images (``_common.dsb2018_mosaic``) with
their instance masks; the "corrections" are the top-left ``--corner`` x ``--corner`` pixels.

    python benchmarks/bench_validation.py [--sizes 512,1024,2048] [--corner 256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import dsb2018_mosaic, median_seconds  # noqa: E402

import napari_attention_unet.core.train.validation as train_module  # noqa: E402
from napari_attention_unet.core.augment import IGNORE  # noqa: E402
from napari_attention_unet.core.train import VALIDATION_MARGIN, TrainConfig, Trainer  # noqa: E402


def whole_image(sample, margin=VALIDATION_MARGIN):
    """The reference: the whole image, as validation predicted it before ``validation_view``."""
    target = sample.val_target if sample.val_target is not None else sample.target
    return sample.image, target, sample.val_instances


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="512,1024,2048")
    parser.add_argument("--corner", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    from napari_attention_unet.models.registry import open_model

    model, _, info = open_model()
    print(f"model {info.name!r}, CPU, {torch.get_num_threads()} threads, margin {VALIDATION_MARGIN} px")
    print("| image | held-out box | predicted (cropped) | s / pass cropped | s / pass whole | ratio | max score diff |")
    print("|---|---|---|---|---|---|---|")
    view = train_module.validation_view
    for size in (int(s) for s in args.sizes.split(",")):
        image, _ = dsb2018_mosaic(size)
        labels, _ = dsb2018_mosaic(size, masks=True)
        edited = np.zeros(labels.shape, bool)
        edited[: args.corner, : args.corner] = True
        trainer = Trainer(model, [(image, labels)], config=TrainConfig(), device="cpu", edited_masks=[edited])
        sample = trainer.validation[0]
        rows, cols = np.nonzero(sample.val_target != IGNORE)
        crop = view(sample)[0].shape[1:]
        try:
            cropped_s, _ = median_seconds(trainer.validation_scores, args.repeats)
            cropped = trainer.validation_scores()
            train_module.validation_view = whole_image
            whole_s, _ = median_seconds(trainer.validation_scores, args.repeats)
            whole = trainer.validation_scores()
        finally:
            train_module.validation_view = view
        diff = max(abs(cropped[k] - whole[k]) for k in ("dice", "iou", "ap"))
        print(
            f"| {size}x{size} | {rows.max() - rows.min() + 1}x{cols.max() - cols.min() + 1} | "
            f"{crop[0]}x{crop[1]} | {cropped_s:.3f} | {whole_s:.3f} | {whole_s / cropped_s:.1f}x | {diff:.4f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
