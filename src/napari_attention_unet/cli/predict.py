"""``attention-unet predict``: images in, labels and attention maps out, in this process or on dask."""

from __future__ import annotations

import argparse
import sys

from tqdm import tqdm

from napari_attention_unet.cli.common import bar_settings, drive, fail, writable_folder

__all__ = ["run"]


def _options(args: argparse.Namespace):
    """The one :class:`~napari_attention_unet.core.predict.PredictOptions` every engine below gets."""
    from napari_attention_unet.core.predict import PredictOptions

    return PredictOptions(
        axes=args.axes,
        tile_size=args.tile_size,
        instances=not args.semantic,
        precision=args.precision,
        spacing=args.spacing,
        auto_zoom=args.auto_zoom,
        channel=args.channel,
    )


def _trained_spacing(args: argparse.Namespace, model, meta: dict) -> tuple[float, ...] | None:
    """The voxel size a 3D model was trained at, for volumes that state none (TIFF) when --spacing is not given
    (said on stderr)."""
    spacing = meta.get("spacing")
    if args.spacing is not None or model.config.spatial_dims != 3 or not spacing or len(spacing) != 3:
        return None
    spacing = tuple(float(s) for s in spacing)
    from napari_attention_unet.large_data.nifti import is_nifti_path

    if all(is_nifti_path(path) for path in args.images):  # each has its header's voxel size: nothing to say
        return spacing
    print(
        f"no --spacing: volumes without a voxel size are taken at the model's training spacing "
        f"{','.join(f'{v:g}' for v in spacing)} (NIfTI headers and ImageJ or OME-TIFF voxel sizes are used)",
        file=sys.stderr,
    )
    return spacing


def _orientation(paths, meta: dict, dims: int = 3, time_point: int | None = None) -> str | None:
    """The orientation the model was trained on (its info's, e.g. ``RAS``), saying on stderr which NIfTI
    volumes are stored otherwise: they are turned to it for the model, their outputs written on their own grid."""
    from napari_attention_unet.core.orientation import valid_orientation
    from napari_attention_unet.large_data.nifti import header_orientation, is_nifti_path

    trained = meta.get("orientation")
    if not valid_orientation(trained):
        return None
    for path in paths:
        if not is_nifti_path(path) and dims == 3:  # a TIFF volume: no orientation to go by
            tqdm.write(
                f"{path.name} states no orientation (it is not NIfTI): it is predicted as stored, as if it were "
                f"{trained} like the model's training volumes",
                file=sys.stderr,
            )
        stored = header_orientation(path, time_point) if is_nifti_path(path) else None
        if stored is not None and stored != trained:
            tqdm.write(
                f"{path.name} is stored {stored}, the model was trained on {trained} volumes: it is turned to "
                f"{trained} for the model, and its outputs written on its own grid",
                file=sys.stderr,
            )
    return trained


def _whole_series_only(args: argparse.Namespace) -> None:
    """The block engine reads one image, not a time point of a series."""
    if args.time_point is not None:
        raise ValueError(
            "--time-point works on series read whole (NIfTI, TIFF), not block by block: leave out "
            "--block-size and the .zarr output"
        )


def _few_planes(args: argparse.Namespace, model, path, result) -> bool:
    """A 2D model read a file's short first axis (2-4, its axes unsaid) as planes: channels, more likely."""
    from napari_attention_unet.large_data.files import declared_axes

    if args.axes or model.config.spatial_dims != 2 or getattr(result, "spatial_axes", None) != "ZYX":
        return False
    return len(result.labels) <= 4 and declared_axes(path, args.time_point) is None


def _clashing_outputs(args: argparse.Namespace) -> str | None:
    """Two inputs whose outputs would have the same names (``a/cells.tif`` and ``b/cells.tif``): the
    second would overwrite the first's without a word, so it is said before anything runs."""
    from napari_attention_unet.large_data.pipeline import stem_of

    seen: dict[str, object] = {}
    for path in args.images:
        stem = stem_of(path)
        if stem in seen and seen[stem] != path:
            return (
                f"{seen[stem]} and {path} would both write {stem}_labels... into {args.out}: "
                "predict them into different --out folders, or rename one"
            )
        seen[stem] = path
    return None


def run(args: argparse.Namespace) -> int:
    if (clash := _clashing_outputs(args)) is not None:
        return fail(clash)
    if args.workers is not None or args.scheduler is not None:
        return _run_on_dask(args)
    from napari_attention_unet.core.device import describe_device, pick_device
    from napari_attention_unet.core.images import NOT_NUMBERS, ImageShapeError
    from napari_attention_unet.core.predict import check_tile_size, prepare_model
    from napari_attention_unet.large_data.files import ImageReadError
    from napari_attention_unet.large_data.nifti import header_spacing, is_nifti_path, spacing_conflict
    from napari_attention_unet.large_data.pipeline import needs_blocks, predict_file_in_blocks, predict_file_steps
    from napari_attention_unet.models.registry import ModelFileError, ModelNotFoundError, open_model

    try:
        model, meta, info = open_model(args.model)
        device = pick_device(args.device)
        where = describe_device(device, args.precision)  # an unusable precision (fp16 on the CPU) is said here
        check_tile_size(args.tile_size, model.config.spatial_dims)
        if model.config.spatial_dims == 3 and (args.block_size is not None or args.out.suffix.lower() == ".zarr"):
            raise ValueError(
                f"{info.name} is a 3D model: it predicts whole volumes, not 2D blocks (--block-size, a .zarr "
                "--out); give a folder as --out and leave out --block-size"
            )
        writable_folder(args.out)
    except (ModelNotFoundError, ModelFileError, RuntimeError, ValueError) as exc:
        return fail(str(exc))
    print(f"model {info.name} on {where}", file=sys.stderr)
    if args.semantic and model.config.task == "semantic":
        print("--semantic gives an instance model's 0/1 mask; this model's labels are classes", file=sys.stderr)
    net = prepare_model(model, device)
    given = _options(args)
    trained = _trained_spacing(args, model, meta)
    failures = 0
    leave = len(args.images) == 1
    images = tqdm(args.images, desc="images", unit="image", disable=len(args.images) < 2, **bar_settings())
    for path in images:
        if args.spacing is not None and is_nifti_path(path):
            if (conflict := spacing_conflict(path.name, args.spacing, header_spacing(path))) is not None:
                tqdm.write(conflict, file=sys.stderr)
        try:
            if needs_blocks(path, args.out, args.axes, args.block_size):
                _whole_series_only(args)  # the block engine takes 2D images only: no spacing to give
                steps = predict_file_in_blocks(
                    model, path, args.out, given, block_size=args.block_size, device=device, inference_model=net
                )
            else:
                steps = predict_file_steps(
                    model,
                    path,
                    args.out,
                    given,
                    device=device,
                    inference_model=net,
                    time_point=args.time_point,
                    default_spacing=trained,
                    orientation=_orientation([path], meta, model.config.spatial_dims, args.time_point),
                )
            result = drive(steps, path.name, leave=leave)
            if getattr(result, "nan_values", 0):
                tqdm.write(f"{path.name}: {result.nan_values} value(s) were {NOT_NUMBERS}", file=sys.stderr)
            if _few_planes(args, model, path, result):
                tqdm.write(
                    f"{path.name}: read as {len(result.labels)} planes (Z, Y, X), each predicted alone; if its first "
                    "axis holds channels, give --axes CYX (and --channel C to use one)",
                    file=sys.stderr,
                )
            if getattr(result, "zoom", None):  # it took about zoom² the time: say why
                tqdm.write(
                    f"{path.name}: small objects: looked again at {result.zoom:.1f}x (--no-auto-zoom leaves it out)",
                    file=sys.stderr,
                )
            tqdm.write(_written(args, model, path, result), file=sys.stderr)
        except (ImageReadError, ImageShapeError, ValueError, OSError) as exc:  # OSError: an output not writable
            failures += 1
            tqdm.write(f"attention-unet: skipping {path}: {exc}", file=sys.stderr)
    if failures:
        print(f"{failures} of {len(args.images)} image(s) failed", file=sys.stderr)
        return 1
    return 0


def _written(args: argparse.Namespace, model, path, result) -> str:
    """What was found and where it went: "cells.tif: 212 objects -> out/cells_labels.tif (+ attention maps)"."""
    import numpy as np

    from napari_attention_unet.large_data.pipeline import result_paths

    labels = getattr(result, "labels", None)
    if not isinstance(labels, np.ndarray):  # block by block: written as the blocks went
        return f"{path.name}: labels and attention maps written to {args.out}"
    if model.config.task == "semantic":
        present = [model.config.classes[v] for v in np.unique(labels).tolist() if 0 < v < len(model.config.classes)]
        found = f"classes {', '.join(present)}" if present else "no class but 0"
    elif args.semantic:
        found = f"{np.count_nonzero(labels) / max(labels.size, 1):.0%} foreground"
    else:
        found = f"{int(labels.max(initial=0))} objects"
    labels_path, attention_path = result_paths(args.out, path, args.time_point)
    maps = f" (+ attention maps, {attention_path.name})" if result.gate_maps else ""
    return f"{path.name}: {found} -> {labels_path}{maps}"


def _run_on_dask(args: argparse.Namespace) -> int:
    """One task per file, or per block for the images :func:`needs_blocks` picks; stitched here."""
    from napari_attention_unet.core.images import ImageShapeError
    from napari_attention_unet.large_data.cluster import SchedulerUnreachableError, dask_client, usable_cores
    from napari_attention_unet.large_data.distributed import model_spec, predict_batch
    from napari_attention_unet.large_data.distributed_blocks import predict_large
    from napari_attention_unet.large_data.pipeline import BLOCK_SIZE, needs_blocks
    from napari_attention_unet.models.registry import ModelFileError, ModelNotFoundError, open_model

    if args.workers is not None and args.workers < 0:
        return fail(f"--workers must be at least 1, got {args.workers}")
    try:
        writable_folder(args.out)
    except ValueError as exc:
        return fail(str(exc))
    workers = args.workers or usable_cores()  # --workers alone (or 0): one per core
    try:
        model, meta, info = open_model(args.model)  # a bad model fails here, before any worker starts
    except (ModelNotFoundError, ModelFileError) as exc:
        return fail(str(exc))
    spec = model_spec(info.name if info.bundled else info.path, args.device)
    options = _options(args)
    trained = _trained_spacing(args, model, meta)
    large = [path for path in args.images if needs_blocks(path, args.out, args.axes, args.block_size)]
    files = [path for path in args.images if path not in large]
    where = args.scheduler or f"a local cluster of {workers} worker process(es)"
    print(f"model {info.name} on {where} (device {args.device} on each worker)", file=sys.stderr)
    failures = 0
    try:
        with dask_client(args.scheduler, None if args.scheduler else workers) as client:
            if files:
                args.out.mkdir(parents=True, exist_ok=True)
                results = predict_batch(
                    client,
                    files,
                    args.out,
                    spec,
                    options,
                    time_point=args.time_point,
                    default_spacing=trained,
                    orientation=_orientation(files, meta, model.config.spatial_dims, args.time_point),
                )
                failures += sum(not r.ok for r in results)
            for path in large:
                try:
                    _whole_series_only(args)
                    size = args.block_size or BLOCK_SIZE
                    predict_large(client, path, args.out, spec, model.config, block_size=size, options=options)
                except (ImageShapeError, ValueError, OSError) as exc:  # OSError: unreadable input, unwritable output
                    failures += 1
                    tqdm.write(f"attention-unet: skipping {path}: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print("interrupted: the cluster was stopped; files already written are kept", file=sys.stderr)
        return 130
    except SchedulerUnreachableError as exc:
        return fail(str(exc))
    if failures:
        print(f"{failures} of {len(args.images)} image(s) failed", file=sys.stderr)
        return 1
    return 0
