"""``attention-unet finetune``: train the model further on corrected labels, keep the best state."""

from __future__ import annotations

import argparse
import sys

from napari_attention_unet.cli.common import (
    drive_training,
    fail,
    labels_to_image_grid,
    model_target,
    turned_pair,
    use_it,
)

__all__ = ["run"]


def run(args: argparse.Namespace) -> int:
    from napari_attention_unet.core.device import describe_device, pick_device
    from napari_attention_unet.core.images import ImageShapeError
    from napari_attention_unet.core.train import TrainConfig, Trainer
    from napari_attention_unet.core.train.targets import check_corrections
    from napari_attention_unet.core.weights import save_model
    from napari_attention_unet.large_data.files import ImageReadError, declared_axes, read_time_point
    from napari_attention_unet.models.registry import ModelFileError, ModelNotFoundError, open_model
    from napari_attention_unet.models.versions import inherited_info

    if len(args.image) != len(args.labels):
        return fail(f"give one --labels per --image (got {len(args.image)} images and {len(args.labels)} labels)")
    try:
        out_path, out_name = model_target(args.out)  # before any training is spent on it
    except ValueError as exc:
        return fail(str(exc))
    try:
        model, meta, info = open_model(args.model)
        device = pick_device(args.device)
        reads = [read_time_point(i, args.time_point) for i in args.image]  # (pixels, NIfTI volume or None)
        axes = [args.axes or declared_axes(i, args.time_point) for i in args.image]  # a hyperstack's channels
        labels = [  # one label map serves every time point; on the image's grid (NIfTI stored otherwise: turned)
            labels_to_image_grid(*read_time_point(lbl, args.time_point, series=False), volume, lbl, img)
            for lbl, (_, volume), img in zip(args.labels, reads, args.image)
        ]
        pairs = [  # (image, labels, axes, a NIfTI volume's voxel size for a 3D model, or None)
            (data, lbl, ax, None if volume is None or model.config.spatial_dims != 3 else volume.spacing)
            for (data, volume), lbl, ax in zip(reads, labels, axes)
        ]
        pairs = _in_model_orientation(pairs, [volume for _, volume in reads], meta, args.image)
        for _image, labels, *_ in pairs:  # said now, not after the training they would waste
            check_corrections(labels, None, model.config.spatial_dims)
        minutes = 5.0 if args.minutes is None and args.steps is None else args.minutes
        sized = {}
        if model.config.spatial_dims == 3:  # on the grid predict uses, in patches fitted as train fits them
            pairs, sized = _as_predicted(model, meta, pairs)
        config = TrainConfig(
            max_steps=args.steps,
            time_budget=None if minutes is None else 60.0 * minutes,
            seed=args.seed,
            precision=args.precision,
            **sized,
        )
        trainer = Trainer(model, pairs, config=config, device=device)
    except (ModelNotFoundError, ModelFileError, ImageReadError, ImageShapeError, RuntimeError, ValueError) as exc:
        return fail(str(exc))
    print(
        f"fine-tuning {info.name} on {len(pairs)} image(s), {describe_device(device, args.precision)}", file=sys.stderr
    )
    _, result = drive_training(trainer)
    if not result.accepted:
        return fail(f"the fine-tuned model was not written (the starting model stays as it was): {result.message}")
    print(result.message, file=sys.stderr)
    meta = {
        **inherited_info(meta),  # what the model is for, and a 3D model's voxel size
        "name": out_name,
        "parent": info.name,
        "steps": result.steps,
        "kept_step": result.best_step,
        "best_val_dice": result.best_val_dice,
        "best_val_ap": result.best_val_ap,
        "trained_on": [str(p) for p in args.image],
    }
    path = save_model(result.model, out_path, info=meta)
    print(f"wrote {path} {use_it(args.out)}", file=sys.stderr)
    return 0


def _in_model_orientation(pairs: list, volumes: list, meta: dict, paths: list) -> list:
    """NIfTI volumes stored otherwise than the model's training volumes (its info's ``orientation``) turned to it."""
    from napari_attention_unet.core.orientation import valid_orientation

    trained = meta.get("orientation")
    if not valid_orientation(trained):
        return pairs
    return [
        turned_pair(
            pair,
            volume.orientation if volume is not None and pair[2] is None else None,
            trained,
            path.name,
            "the model was trained on",
        )
        for pair, volume, path in zip(pairs, volumes, paths)
    ]


def _as_predicted(model, meta: dict, pairs: list) -> tuple[list, dict]:
    """A 3D model's pairs with their voxel size (a NIfTI header's, as read, else the one the model was
    trained at, as ``predict`` takes it) and the fitted 3D patch (``{"patch_size": ...}``)."""
    import numpy as np

    from napari_attention_unet.core.train.start import patch_as_predicted

    trained = meta.get("spacing")
    sized = []
    for image, labels, axes, stated in pairs:
        spacing = stated or trained
        spacing = None if spacing is None else tuple(float(v) for v in spacing)
        sized.append((image, labels, axes, spacing))
    patch = patch_as_predicted(model.config, [np.shape(p[1]) for p in sized], [p[3] for p in sized])
    return sized, {"patch_size": patch}
