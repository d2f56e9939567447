"""``attention-unet train``: a new model for a task (instances or semantic classes, 2D or 3D) from labelled images.

What is not given is inferred from the labels and said: the task (few class values: semantic;
many ids: instances), the dimension (volumes with volume labels: 3D) and the start (the bundled
model's weights for 2D models, scratch for 3D ones). Bad input ends with one line and
exit code 2, with the text the trainer would raise. The best state on the held-out strips is
written even when the sanity check doubts it (with a warning): a new model has nothing to fall
back on.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from napari_attention_unet.cli.common import fail

__all__ = ["run"]


def _read(path: Path) -> tuple[np.ndarray, tuple[float, ...] | None]:
    """Pixels of an image file and, for NIfTI, its voxel size (None otherwise)."""
    from napari_attention_unet.large_data import files

    if path.name.lower().endswith((".nii", ".nii.gz")) and hasattr(files, "read_nifti_volume"):
        volume = files.read_nifti_volume(path)
        return np.asarray(volume.data), tuple(volume.spacing) if volume.spacing is not None else None
    return files.read_image(path), None


def _pick_time_point(image: np.ndarray, labels: np.ndarray, t: int | None) -> tuple[np.ndarray, np.ndarray]:
    if t is None:
        return image, labels
    if image.ndim != 4:
        raise ValueError(f"--time-point picks one time point of a 4D series; this image is {image.ndim}D")
    if not 0 <= t < image.shape[0]:
        raise ValueError(f"--time-point {t} is outside the series (time points 0..{image.shape[0] - 1})")
    return image[t], labels[t] if labels.ndim == 4 else labels


def _load_pairs(args: argparse.Namespace) -> tuple[list[tuple], list[tuple[int, ...]], int]:
    """``(pairs, spatial shapes, channels)``: every (image, labels, axes, spacing) checked as the
    trainer checks them, and the most channels of an image (1 for grey, 3 for colour)."""
    from napari_attention_unet.core.images import to_channel_first
    from napari_attention_unet.core.train.targets import check_image, check_labels_shape

    pairs, shapes, channels = [], [], 1
    for image_path, labels_path in zip(args.image, args.labels):
        image, spacing = _read(image_path)
        labels, _ = _read(labels_path)
        image, labels = _pick_time_point(image, labels, args.time_point)
        check_image(image, args.axes)
        channels_first, _ = to_channel_first(image, args.axes)
        check_labels_shape(labels.shape, channels_first.shape[1:])
        pairs.append((image, labels, args.axes, args.spacing or spacing))
        shapes.append(tuple(channels_first.shape[1:]))
        channels = max(channels, min(channels_first.shape[0], 3))
    return pairs, shapes, channels


def _planes(pairs: list[tuple]) -> list[tuple]:
    """Volumes cut into their Z planes (each with its labels), for a 2D model."""
    out = []
    for image, labels, axes, _ in pairs:
        if labels.ndim == 2:
            out.append((image, labels, axes, None))
        else:
            out.extend((image[z], labels[z], None, None) for z in range(labels.shape[0]))
    return out


def _start(args: argparse.Namespace, dims: int):
    """``(start model or "scratch", its name)``: --start; else the bundled model's weights for 2D
    models (on EM membranes and H&E nuclei a semantic model learns faster from them than from
    scratch: benchmarks/bench_tasks.py --part 2d), scratch for 3D ones or when sizes are given."""
    from napari_attention_unet.models.registry import ModelNotFoundError, open_model

    if args.start == "scratch" or (args.start is None and (dims == 3 or args.base_width or args.depth)):
        return "scratch", "scratch"
    try:
        model, _, info = open_model(args.start)
    except ModelNotFoundError:
        if args.start is not None:
            raise
        print("no bundled model is installed: starting from scratch", file=sys.stderr)
        return "scratch", "scratch"
    return model, info.name


def run(args: argparse.Namespace) -> int:
    from napari_attention_unet.core.device import describe_device, pick_device
    from napari_attention_unet.core.images import ImageShapeError
    from napari_attention_unet.core.model import count_parameters
    from napari_attention_unet.core.train import Trainer
    from napari_attention_unet.core.train.start import (
        default_train_config,
        infer_task,
        network_shape,
        new_model,
        split_samples,
        task_classes,
    )
    from napari_attention_unet.core.train.targets import check_not_constant, check_spatial_dims, semantic_values
    from napari_attention_unet.core.weights import save_model
    from napari_attention_unet.large_data.files import ImageReadError
    from napari_attention_unet.models.registry import ModelFileError, ModelNotFoundError

    if len(args.image) != len(args.labels):
        return fail(f"give one --labels per --image (got {len(args.image)} images and {len(args.labels)} labels)")
    try:
        device = pick_device(args.device)
        pairs, shapes, in_channels = _load_pairs(args)
        check_not_constant([p[1] for p in pairs], args.zero_is)
        task = args.task
        if task is None:
            task, why = infer_task([p[1] for p in pairs])
            print(f"{why} (give --task to choose)", file=sys.stderr)
        volumes = all(len(s) == 3 for s in shapes)
        dims = args.dims or (3 if volumes else 2)
        if dims == 3:
            check_spatial_dims(shapes, 3)
        elif any(len(s) == 3 for s in shapes):
            pairs = _planes(pairs)
            print("volumes are trained on as Z planes by a 2D model (--dims 3 for a 3D model)", file=sys.stderr)
        n_classes = int(max(semantic_values(p[1]).max() for p in pairs)) if task == "semantic" else 0
        names = [n for n in args.class_names.split(",") if n.strip()] if args.class_names else None
        classes = task_classes(task, n_classes, names, args.zero_is)
        start, start_name = _start(args, dims)
        if start != "scratch" and (args.base_width or args.depth):
            raise ValueError("--base-width and --depth size a model from scratch; a --start model keeps its own size")
        model = new_model(task, classes, dims, in_channels, start, base_width=args.base_width, depth=args.depth)
        sizes = [network_shape(s, p[3]) for s, p in zip(shapes, pairs)] if dims == 3 else shapes
        minutes = 10.0 if args.minutes is None and args.steps is None else args.minutes
        config = default_train_config(
            task,
            dims,
            sizes,
            from_scratch=isinstance(start, str),
            minutes=minutes,
            steps=args.steps,
            depth=model.config.depth,
            zero_is=args.zero_is,
            seed=args.seed,
            precision=args.precision,
            **({} if args.flips is None else {"flips": args.flips}),
        )
        samples, validation = split_samples(model.config, config, pairs)
        trainer = Trainer(model, config=config, device=device, samples=samples, validation=validation)
    except (ModelNotFoundError, ModelFileError, ImageReadError, ImageShapeError, RuntimeError, ValueError) as exc:
        return fail(str(exc))
    what = f"{task} ({', '.join(classes)})" if task == "semantic" else task
    print(
        f"training a {dims}D {what} model ({count_parameters(model) / 1e6:.2f} M parameters, from {start_name}) "
        f"on {len(samples)} image(s) (validation: {_validation(samples, validation)}), "
        f"patches {'x'.join(map(str, trainer.patch))}, {describe_device(device, args.precision)}",
        file=sys.stderr,
    )
    _drive(trainer, config)
    result = trainer.result()
    if result.accepted:
        print(result.message, file=sys.stderr)
    else:  # a new model has no previous one to fall back on: write the best state, and say why to doubt it
        print(f"warning: {result.message} It is written all the same (there is no previous model).", file=sys.stderr)
    meta = {
        "name": args.out.stem,
        "task": task,
        "classes": list(classes),
        "zero_is": args.zero_is,
        "start": start_name,
        "spacing": list(args.spacing) if args.spacing else None,
        "steps": result.steps,
        "best_val_dice": result.best_val_dice,
        "best_val_ap": result.best_val_ap,
        "best_val_class_dice": result.best_val_class_dice,
        "trained_on": [str(p) for p in args.image],
    }
    path = save_model(result.trained_model, args.out, info=meta)
    print(f"wrote {path} (use it with: attention-unet predict IMAGE --out DIR --model {args.out})", file=sys.stderr)
    return 0


def _validation(samples, validation) -> str:
    if any(s in samples for s in validation):
        return "a held-out strip of each"
    return f"{len(validation)} held-out image(s)"


def _drive(trainer, config) -> None:
    """Run the trainer under a tqdm bar; Ctrl-C keeps the best model so far."""
    total = config.max_steps if config.time_budget is None else None
    steps = trainer.run()
    try:
        with tqdm(total=total, unit="step", file=sys.stderr) as bar:
            for report in steps:
                bar.update(report.step - bar.n)
                best = "-" if report.best_val_dice is None else f"{report.best_val_dice:.3f}"
                bar.set_postfix_str(f"loss {report.loss:.3f}, best val Dice {best}")
                if report.val_dice is not None:
                    tqdm.write(report.message, file=sys.stderr)
    except KeyboardInterrupt:
        steps.close()
        print("interrupted: keeping the best model so far", file=sys.stderr)
