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
from itertools import chain
from pathlib import Path

import numpy as np

from napari_attention_unet.cli.common import (
    drive_training,
    fail,
    labels_to_image_grid,
    model_target,
    turned_pair,
    use_it,
)

__all__ = ["run"]


def _read(path: Path, time_point: int | None, *, series: bool = True) -> tuple[np.ndarray, object]:
    """Pixels of an image file (at ``time_point`` of a series: ``files.read_time_point``) and, for
    NIfTI, its ``NiftiVolume`` (voxel size, affine; None otherwise)."""
    from napari_attention_unet.large_data.files import read_time_point

    data, volume = read_time_point(path, time_point, series=series)
    return np.asarray(data), volume


def _voxel_sizes(plan) -> set[tuple[float, ...]]:
    """The distinct voxel sizes of the volumes (--spacing or the NIfTI headers)."""
    return {tuple(float(v) for v in p[3]) for p in plan.pairs if p[3] is not None}


def _spacing(plan) -> list[float] | None:
    """The voxel size a 3D model was trained at (--spacing or the NIfTI headers), when all volumes share it."""
    sizes = _voxel_sizes(plan)
    return list(sizes.pop()) if plan.dims == 3 and len(sizes) == 1 else None


def _spacing_note(plan, given) -> str:
    """One line on the voxel size the volumes were trained at (resampled to cubic voxels when anisotropic)."""
    sizes = _voxel_sizes(plan)
    if not sizes:
        return "voxel size: not given (no --spacing, no NIfTI header): voxels are taken as cubic"
    where = "--spacing" if given else "the files' headers"
    if len(sizes) > 1:
        return f"voxel sizes (from {where}) differ between volumes; each is resampled to cubic voxels"
    size = ",".join(f"{v:g}" for v in sizes.pop())
    return (
        f"voxel size {size} (Z,Y,X, from {where}); predict takes new volumes at their own voxel size (--spacing "
        "or a NIfTI header), and at this one when they have none"
    )


def _load_pairs(args: argparse.Namespace) -> tuple[list[tuple], str | None]:
    """Every (image, labels, axes, spacing) as read (one time point of a series with --time-point), NIfTI
    volumes turned to the orientation of the first (:func:`.common.turned_pair`), and that orientation (or None)."""
    from napari_attention_unet.large_data.files import declared_axes, declared_voxel_size
    from napari_attention_unet.large_data.nifti import spacing_conflict

    pairs, orientation, unoriented = [], None, []
    for image_path, labels_path in zip(args.image, args.labels):
        image, volume = _read(image_path, args.time_point)
        labels, labels_volume = _read(labels_path, args.time_point, series=False)
        labels = labels_to_image_grid(labels, labels_volume, volume, labels_path, image_path)
        spacing = None if volume is None or volume.spacing is None else tuple(volume.spacing)
        if (conflict := spacing_conflict(Path(image_path).name, args.spacing, spacing)) is not None:
            print(conflict, file=sys.stderr)
        axes = args.axes or (None if volume is not None else declared_axes(image_path, args.time_point))
        spacing = spacing or (None if volume is not None else declared_voxel_size(image_path))  # ImageJ/OME-TIFF
        pair = (image, labels, axes, args.spacing or spacing)
        stored = volume.orientation if volume is not None and image.ndim == 3 and not axes else None
        pairs.append(turned_pair(pair, stored, orientation, Path(image_path).name))
        orientation = orientation or stored
        unoriented += [Path(image_path).name] if volume is None and np.ndim(labels) == 3 else []
    if orientation and unoriented:  # TIFF volumes among NIfTI scans: nothing says how they lie
        print(
            f"{', '.join(unoriented)} state(s) no orientation (not NIfTI): taken as stored, as if {orientation} like "
            "the NIfTI volumes",
            file=sys.stderr,
        )
    return pairs, orientation


def _start(args: argparse.Namespace, dims: int):
    """``(start model or "scratch", its name)``: --start; else the bundled model's weights for 2D
    models (with a new head at zero, a semantic model learns H&E nuclei and brightness classes from
    strokes better from them than from scratch, EM membranes about as well: benchmarks/README.md,
    "Where a new 2D semantic model starts"), scratch for 3D ones or when sizes are given."""
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
    from napari_attention_unet.core.model import MAX_MEMBERS, count_parameters
    from napari_attention_unet.core.train.folds import Members, default_members
    from napari_attention_unet.core.train.plan import infer_dims, plan_training
    from napari_attention_unet.core.weights import save_model
    from napari_attention_unet.large_data.files import ImageReadError
    from napari_attention_unet.models.registry import ModelFileError, ModelNotFoundError

    if len(args.image) != len(args.labels):
        return fail(f"give one --labels per --image (got {len(args.image)} images and {len(args.labels)} labels)")
    try:
        out_path, out_name = model_target(args.out)  # before any training is spent on it
    except ValueError as exc:
        return fail(str(exc))
    try:
        device = pick_device(args.device)
        pairs, orientation = _load_pairs(args)
        start, start_name = _start(args, args.dims or infer_dims([p[1] for p in pairs], args.zero_is))
        marks = _background_slices(args.background_slices, pairs)
        plan = plan_training(
            pairs,
            task=args.task,
            dims=args.dims,
            class_names=args.class_names.split(",") if args.class_names else None,
            zero_is=args.zero_is,
            start=start,
            minutes=10.0 if args.minutes is None and args.steps is None else args.minutes,
            steps=args.steps,
            base_width=args.base_width,
            depth=args.depth,
            background_slices=marks,
            intensity=args.intensity,
            seed=args.seed,
            precision=args.precision,
            **({} if args.flips is None else {"flips": args.flips}),
        )
        for note in plan.notes:
            print(note, file=sys.stderr)
        timed = plan.config.time_budget is not None
        count = args.members or default_members(plan.dims, plan.scratch, len(plan.pairs), timed, plan.task)
        if count > MAX_MEMBERS:
            raise ValueError(f"--members is at most {MAX_MEMBERS}, not {count}")
        members = Members(plan.model, plan.config, plan.pairs, plan.background_slices, device, count)
        member_trainers = members.trainers()
        _, first = next(member_trainers)  # the first member: built now, so that bad input fails before training
    except (ModelNotFoundError, ModelFileError, ImageReadError, ImageShapeError, RuntimeError, ValueError) as exc:
        return fail(str(exc))
    model, task, dims, classes = plan.model, plan.task, plan.dims, plan.classes
    start_name = "scratch" if plan.scratch else start_name
    named = classes[1:] if model.config.unlabelled_channel else classes  # strokes: 0 is no class
    what = f"{task} ({', '.join(named)})" if task == "semantic" else task
    print(
        f"training a {dims}D {what} model ({count_parameters(model) / 1e6:.2f} M parameters, from {start_name}) "
        f"on {len(first.samples)} image(s) (validation: {_validation(first.validation)}), "
        f"patches {'x'.join(map(str, first.patch))}, {describe_device(device, args.precision)}",
        file=sys.stderr,
    )
    if dims == 3:  # where the voxel size came from, and what the model will expect of new volumes
        print(_spacing_note(plan, args.spacing), file=sys.stderr)
    elif args.spacing:
        print("--spacing is the voxel size of volumes for a 3D model: a 2D model does not use it", file=sys.stderr)
    if count > 1 and plan.config.keep_last and timed:  # new 3D instance models: core.train.folds
        print(f"{count} members, each for an equal share of the time left, kept in its last state", file=sys.stderr)
    elif count > 1:
        print(
            f"up to {count} members, each holding out other images, while the time budget has room (--members 1: one)",
            file=sys.stderr,
        )
    for k, trainer in chain([(0, first)], member_trainers):
        if k:
            print(f"member {k + 1} (of up to {count}): holding out {_images(members.held_out(k))}", file=sys.stderr)
        finished, outcome = drive_training(trainer)
        members.interrupted = not finished
        members.record(trainer, outcome)
        if trainer.step:  # each member's outcome as it ends (members: "member 2: trained 1100 steps ...")
            print(_outcome(outcome, f"member {k + 1}: " if count > 1 else ""), file=sys.stderr)
    joined = members.result()
    result = joined.results[0]
    if joined.steps == 0:  # nothing learnt: writing random weights would only mislead
        return fail(
            f"no training step was done ({trainer.elapsed:.0f} s went on preparing and scoring), so no model was "
            "written: give more --minutes, or --steps N"
        )
    if few := plan.few_steps(result.steps):
        print(f"note: {few}", file=sys.stderr)
    if len(joined.results) > 1:
        print(_members_note(joined), file=sys.stderr)
    meta = {
        "name": out_name,
        "task": task,
        "classes": list(classes),
        "zero_is": args.zero_is,
        **({"background_slices": plan.background_slices} if plan.background_slices else {}),
        "start": start_name,
        "spacing": _spacing(plan),
        **({"orientation": orientation} if orientation else {}),
        "steps": joined.steps,
        "kept_step": result.best_step,
        "best_val_dice": joined.mean_score("best_val_dice"),
        "best_val_ap": joined.mean_score("best_val_ap"),
        "best_val_class_dice": joined.mean_class_dice(),
        "trained_on": [str(p) for p in args.image],
    }
    if len(joined.results) > 1:  # each member's own figures, on the images it held out
        meta["members"] = [
            {"steps": r.steps, "kept_step": r.best_step, "val_dice": r.best_val_dice, "held_out": held}
            for r, held in zip(joined.results, joined.held_out)
        ]
    path = save_model(joined.model, out_path, info=meta)
    print(f"wrote {path} {use_it(args.out)}", file=sys.stderr)
    return 0


def _outcome(result, prefix: str) -> str:
    if result.accepted:
        return prefix + result.message
    # a new model has no previous one to fall back on: the best state is written, with why to doubt it
    return (
        f"{prefix}warning: {result.message.rstrip('.')}. A new model has no earlier one to fall back on, so it is "
        "written: check its predictions before relying on it."
    )


def _images(indices: list[int]) -> str:
    """The images a member held out, as the user numbers them (fewer than five: a strip of each, the same for all)."""
    return "images " + ", ".join(str(i + 1) for i in indices) if indices else "a strip of each image"


def _members_note(joined) -> str:
    """What the members did, and the held-out figure of the model: each member scored on images it did not train on."""
    lines = [f"the model averages {len(joined.results)} members:"]
    for k, (r, held) in enumerate(zip(joined.results, joined.held_out), start=1):
        score = "-" if r.best_val_dice is None else f"{r.best_val_dice:.3f}"
        lines.append(f"  member {k}: kept step {r.best_step} of {r.steps}, Dice {score} on {_images(held)}")
    mean = joined.mean_score("best_val_dice")
    if mean is not None:
        lines.append(
            f"  mean {mean:.3f}: each member on images it did not train on (every image trained some member, so "
            "the averaged model has none left to score)"
        )
    return "\n".join(lines)


def _background_slices(texts: list[str] | None, pairs: list[tuple]) -> list[list[int]] | None:
    """``--background-slices``, once per ``--labels``, as slice numbers of each (checked against its slices)."""
    from napari_attention_unet.core.train.targets import parse_slices

    if not texts:
        return None
    if len(texts) != len(pairs):
        raise ValueError(
            f"give --background-slices once per --labels, in order ('-' for none): got {len(texts)} for "
            f"{len(pairs)} labels"
        )
    return [parse_slices(t, np.shape(p[1])[0] if np.ndim(p[1]) == 3 else None) for t, p in zip(texts, pairs)]


def _validation(validation) -> str:
    # A strip held out of a training image has its own target; an image held out whole has none.
    if validation and all(s.val_target is not None for s in validation):
        return "a held-out strip of each"
    return f"{len(validation)} held-out image(s)"
