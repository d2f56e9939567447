"""``attention-unet``: predict (and, later, fine-tune) from the command line.

attention-unet predict IMAGE [IMAGE ...] --out DIR [--model NAME_OR_PATH] [--device auto|cpu|cuda|mps]
attention-unet models
attention-unet export MODEL --format bioimageio|onnx|torchscript --out PATH
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from napari_attention_unet import __version__

__all__ = ["main"]


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="attention-unet", description="Attention U-Net segmentation with attention maps."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("predict", help="segment images; writes <stem>_labels.tif and <stem>_attention.tif")
    p.add_argument(
        "images",
        nargs="+",
        type=Path,
        metavar="IMAGE",
        help="TIFF or PNG files, zarr / OME-Zarr stores (folders ending in .zarr)",
    )
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder (created if missing)")
    p.add_argument(
        "--model", default=None, metavar="NAME_OR_PATH", help="bundled or saved model name, or a .safetensors file"
    )
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--axes", default=None, help="axes of the images, e.g. YX, YXC, ZYX, CYX (default: guessed)")
    p.add_argument("--tile-size", type=int, default=None, help="tile edge in pixels (default 512 in 2D)")
    p.add_argument("--semantic", action="store_true", help="write a 0/1 foreground mask instead of instance labels")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument(
        "--spacing",
        type=_spacing,
        default=None,
        metavar="Z,Y,X",
        help="voxel size of volumes, e.g. 2,0.5,0.5: a 3D model sees them resampled to cubic voxels",
    )
    p.add_argument(
        "--block-size",
        type=_block_size,
        default=None,
        metavar="PX",
        help="predict block by block in bounded memory (default for images over 4096x4096 px, zarr input or a "
        ".zarr --out: blocks of 2048 px); a multiple of 64",
    )
    engine = p.add_mutually_exclusive_group()
    engine.add_argument(
        "--workers",
        type=int,
        nargs="?",
        const=0,
        default=None,
        metavar="N",
        help="run on a local dask cluster of N worker processes (--workers alone: one per core)",
    )
    engine.add_argument(
        "--scheduler", default=None, metavar="ADDRESS", help="run on an existing dask scheduler, e.g. tcp://host:8786"
    )
    p.set_defaults(func=_cmd_predict)

    f = sub.add_parser("finetune", help="fine-tune a model on corrected labels; writes a new model file")
    f.add_argument("--image", action="append", required=True, type=Path, metavar="IMG", help="image (repeatable)")
    f.add_argument("--labels", action="append", required=True, type=Path, metavar="LBL", help="its labels (repeatable)")
    f.add_argument("--out", required=True, type=Path, metavar="PATH", help="where to write the fine-tuned model")
    f.add_argument("--model", default=None, metavar="NAME_OR_PATH", help="model to start from (default: bundled)")
    budget = f.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float, default=None, help="time budget (default 5 minutes)")
    budget.add_argument("--steps", type=int, default=None, help="step budget")
    f.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    f.add_argument("--axes", default=None, help="axes of the images, e.g. YX, YXC (default: guessed)")
    f.add_argument("--seed", type=int, default=0)
    f.set_defaults(func=_cmd_finetune)

    m = sub.add_parser("models", help="list bundled and saved models")
    m.set_defaults(func=_cmd_models)

    x = sub.add_parser("export", help="export a model for other tools: BioImage Model Zoo zip, ONNX or TorchScript")
    x.add_argument("model", metavar="MODEL", help="bundled or saved model name, or a .safetensors file")
    x.add_argument("--format", required=True, choices=["bioimageio", "onnx", "torchscript"])
    x.add_argument("--out", required=True, type=Path, metavar="PATH", help="file to write (.zip, .onnx or .pt added)")
    x.add_argument("--test-image", type=Path, metavar="IMG", help="bioimageio: real image for the test data")
    x.set_defaults(func=_cmd_export)
    return parser


def _spacing(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 2,0.5,0.5, got {text!r}") from None
    if len(values) != 3 or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected three positive sizes Z,Y,X, got {text!r}")
    return values


def _block_size(text: str) -> int:
    """A block edge in px: a multiple of 64, so that the zarr chunks of the outputs (which divide it) stay large."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of pixels like 2048, got {text!r}") from None
    if value < 128 or value % 64:
        nearest = max(128, round(value / 64) * 64)
        raise argparse.ArgumentTypeError(
            f"expected a multiple of 64 px, at least 128 (e.g. 1024, 2048), got {value}; try {nearest}: the "
            "output chunks divide the blocks, and other sizes make them tiny"
        )
    return value


def _fail(message: str) -> int:
    print(f"attention-unet: error: {message}", file=sys.stderr)
    return 2


def _cmd_models(args: argparse.Namespace) -> int:
    from napari_attention_unet.models.registry import all_models, saved_models_dir

    models = all_models()
    for info in models:
        kind = "bundled" if info.bundled else "saved"
        print(f"{info.name:30s} {kind:8s} {info.path}")
    if not models:
        print("no models yet")
    print(f"(saved models folder: {saved_models_dir()})")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    if args.workers is not None or args.scheduler is not None:
        return _cmd_predict_dask(args)
    from napari_attention_unet.core.device import describe_device, pick_device
    from napari_attention_unet.core.images import ImageShapeError
    from napari_attention_unet.core.predict import predict, prepare_model
    from napari_attention_unet.large_data.files import ImageReadError, read_image, write_attention, write_labels
    from napari_attention_unet.models.registry import ModelFileError, ModelNotFoundError, open_model

    try:
        model, _, info = open_model(args.model)
        device = pick_device(args.device)
    except (ModelNotFoundError, ModelFileError, RuntimeError, ValueError) as exc:
        return _fail(str(exc))
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"model {info.name} on {describe_device(device)}", file=sys.stderr)
    net = prepare_model(model, device)
    failures = 0
    images = tqdm(args.images, desc="images", unit="image", disable=len(args.images) < 2, file=sys.stderr)
    for path in images:
        if _wants_blocks(args, path):
            failures += not _predict_in_blocks(args, model, net, device, path, leave=len(args.images) == 1)
            continue
        try:
            image = read_image(path)
            gen = predict(
                model,
                image,
                axes=args.axes,
                device=device,
                tile_size=args.tile_size,
                instances=not args.semantic,
                precision=args.precision,
                inference_model=net,
                spacing=args.spacing,
            )
            with tqdm(desc=path.name, unit="tile", leave=len(args.images) == 1, file=sys.stderr) as bar:
                while True:
                    try:
                        progress = next(gen)
                    except StopIteration as stop:
                        result = stop.value
                        break
                    bar.total = progress.total
                    bar.set_postfix_str(progress.stage)
                    bar.update(progress.done - bar.n)
        except (ImageReadError, ImageShapeError, ValueError) as exc:
            failures += 1
            tqdm.write(f"attention-unet: skipping {path}: {exc}", file=sys.stderr)
            continue
        stem = path.name.split(".")[0]
        write_labels(args.out / f"{stem}_labels.tif", result.labels)
        write_attention(args.out / f"{stem}_attention.tif", result.gate_maps, result.spatial_axes)
    if failures:
        print(f"{failures} of {len(args.images)} image(s) failed", file=sys.stderr)
        return 1
    return 0


def _wants_blocks(args: argparse.Namespace, path: Path) -> bool:
    """Large 2D images, zarr input and a ``.zarr`` --out go block by block (core.blocks)."""
    from napari_attention_unet.core.images import ImageShapeError, guess_axes
    from napari_attention_unet.large_data.files import LARGE_PIXELS, image_shape, is_zarr_path

    if args.block_size is not None or args.out.suffix.lower() == ".zarr" or is_zarr_path(path):
        return True
    shape = image_shape(path)
    if shape is None:
        return False
    try:
        axes = (args.axes or guess_axes(shape)).upper()
    except ImageShapeError:
        return False
    if axes not in ("YX", "YXC", "CYX") or len(axes) != len(shape):
        return False
    return shape[axes.index("Y")] * shape[axes.index("X")] > LARGE_PIXELS


def _predict_in_blocks(args: argparse.Namespace, model, net, device, path: Path, leave: bool) -> bool:
    """One image through the block engine, outputs written straight to disk; False when it failed."""
    from napari_attention_unet.core.images import ImageShapeError
    from napari_attention_unet.large_data.blocks import plan_blocks, predict_blocks
    from napari_attention_unet.large_data.files import (
        ImageReadError,
        create_tiff_sinks,
        create_zarr_sinks,
        open_lazy_image,
        read_image,
    )

    stem = path.name.split(".")[0]
    try:
        if path.suffix.lower() in {".tif", ".tiff"} or path.is_dir() or path.suffix.lower() == ".zarr":
            source, axes = open_lazy_image(path)
        else:
            source, axes = read_image(path), None
        axes = args.axes or axes
        plan = plan_blocks(source.shape, axes, block_size=args.block_size or 2048)
        gate_names = list(model.config.gate_names)
        if args.out.suffix.lower() == ".zarr":
            sinks = create_zarr_sinks(args.out, stem, plan.shape, gate_names, plan.chunk_size(), not args.semantic)
        else:
            sinks = create_tiff_sinks(args.out, stem, plan.shape, gate_names)
        gen = predict_blocks(
            model,
            source,
            axes=plan.axes,
            sinks=sinks,
            block_size=plan.block_size,
            tile_size=args.tile_size,
            instances=not args.semantic,
            precision=args.precision,
            device=device,
            inference_model=net,
        )
        with tqdm(desc=path.name, unit="tile", leave=leave, file=sys.stderr) as bar:
            while True:
                try:
                    progress = next(gen)
                except StopIteration:
                    break
                bar.total = progress.total
                bar.set_postfix_str(progress.stage)
                bar.update(progress.done - bar.n)
    except (ImageReadError, ImageShapeError, ValueError) as exc:
        tqdm.write(f"attention-unet: skipping {path}: {exc}", file=sys.stderr)
        return False
    return True


def _cmd_predict_dask(args: argparse.Namespace) -> int:
    """``predict`` on dask: one task per file, or per block for the images :func:`_wants_blocks` picks.

    Each worker loads the model once (see _distributed); large images are stitched here.
    """
    from napari_attention_unet.core.images import ImageShapeError
    from napari_attention_unet.large_data.distributed import (
        PredictOptions,
        SchedulerUnreachableError,
        dask_client,
        model_spec,
        predict_batch,
        predict_large,
        usable_cores,
    )
    from napari_attention_unet.models.registry import ModelFileError, ModelNotFoundError, open_model

    if args.workers is not None and args.workers < 0:
        return _fail(f"--workers must be at least 1, got {args.workers}")
    workers = args.workers or usable_cores()  # --workers alone (or 0): one per core
    try:
        model, _meta, info = open_model(args.model)  # a bad model fails here, before any worker starts
    except (ModelNotFoundError, ModelFileError) as exc:
        return _fail(str(exc))
    spec = model_spec(info.name if info.bundled else info.path, args.device)
    options = PredictOptions(args.axes, args.tile_size, not args.semantic, args.precision)
    large = [path for path in args.images if _wants_blocks(args, path)]
    files = [path for path in args.images if path not in large]
    where = args.scheduler or f"a local cluster of {workers} worker process(es)"
    print(f"model {info.name} on {where} (device {args.device} on each worker)", file=sys.stderr)
    failures = 0
    try:
        with dask_client(args.scheduler, None if args.scheduler else workers) as client:
            if files:
                args.out.mkdir(parents=True, exist_ok=True)
                failures += sum(not r.ok for r in predict_batch(client, files, args.out, spec, options))
            for path in large:
                try:
                    size = args.block_size or 2048
                    predict_large(
                        client, path, args.out, spec, model.config, axes=args.axes, block_size=size, options=options
                    )
                except (ImageShapeError, ValueError, OSError) as exc:  # OSError: unreadable input, unwritable output
                    failures += 1
                    tqdm.write(f"attention-unet: skipping {path}: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print("interrupted: the cluster was stopped; files already written are kept", file=sys.stderr)
        return 130
    except SchedulerUnreachableError as exc:
        return _fail(str(exc))
    if failures:
        print(f"{failures} of {len(args.images)} image(s) failed", file=sys.stderr)
        return 1
    return 0


def _cmd_finetune(args: argparse.Namespace) -> int:
    from napari_attention_unet.core.device import describe_device, pick_device
    from napari_attention_unet.core.images import ImageShapeError
    from napari_attention_unet.core.train import TrainConfig, Trainer
    from napari_attention_unet.core.weights import save_model
    from napari_attention_unet.large_data.files import ImageReadError, read_image
    from napari_attention_unet.models.registry import ModelFileError, ModelNotFoundError, open_model

    if len(args.image) != len(args.labels):
        return _fail(f"give one --labels per --image (got {len(args.image)} images and {len(args.labels)} labels)")
    try:
        model, _, info = open_model(args.model)
        device = pick_device(args.device)
        pairs = [(read_image(i), read_image(lbl), args.axes) for i, lbl in zip(args.image, args.labels)]
        minutes = 5.0 if args.minutes is None and args.steps is None else args.minutes
        config = TrainConfig(
            max_steps=args.steps, time_budget=None if minutes is None else 60.0 * minutes, seed=args.seed
        )
        trainer = Trainer(model, pairs, config=config, device=device)
    except (ModelNotFoundError, ModelFileError, ImageReadError, ImageShapeError, RuntimeError, ValueError) as exc:
        return _fail(str(exc))
    print(f"fine-tuning {info.name} on {len(pairs)} image(s), {describe_device(device)}", file=sys.stderr)
    total = config.max_steps if config.time_budget is None else None
    run = trainer.run()
    try:
        with tqdm(total=total, unit="step", file=sys.stderr) as bar:
            for report in run:
                bar.update(report.step - bar.n)
                if report.best_val_ap is not None:
                    best = f"best val AP@0.5 {report.best_val_ap:.3f}"
                else:
                    best = "best val Dice " + ("-" if report.best_val_dice is None else f"{report.best_val_dice:.3f}")
                bar.set_postfix_str(f"loss {report.loss:.3f}, {best}")
                if report.val_dice is not None:
                    ap = "" if report.val_ap is None else f"AP@0.5 {report.val_ap:.3f}, "
                    tqdm.write(f"step {report.step}: validation {ap}Dice {report.val_dice:.3f}", file=sys.stderr)
    except KeyboardInterrupt:
        run.close()
        print("interrupted: keeping the best model so far", file=sys.stderr)
    result = trainer.result()
    print(result.message, file=sys.stderr)
    if not result.accepted:
        return _fail(f"the fine-tuned model was not written: {result.message}")
    meta = {
        "name": args.out.stem,
        "parent": info.name,
        "steps": result.steps,
        "best_val_dice": result.best_val_dice,
        "best_val_ap": result.best_val_ap,
        "trained_on": [str(p) for p in args.image],
    }
    path = save_model(result.model, args.out, info=meta)
    print(f"wrote {path}", file=sys.stderr)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from napari_attention_unet.core.images import ImageShapeError
    from napari_attention_unet.export.network import ExportError, export_model
    from napari_attention_unet.large_data.files import ImageReadError, read_image
    from napari_attention_unet.models.registry import ModelFileError, ModelNotFoundError, bundled_dir, open_model

    if args.test_image is not None and args.format != "bioimageio":
        return _fail("--test-image is only used by --format bioimageio")
    try:
        model, meta, info = open_model(args.model)
        extra = {}
        if args.format == "bioimageio":
            card = bundled_dir() / f"{info.name}.json"
            extra["model_card"] = card if info.bundled and card.is_file() else None
            extra["test_image"] = None if args.test_image is None else read_image(args.test_image)
        print(f"exporting {info.name} as {args.format}", file=sys.stderr)
        path = export_model(model, args.format, args.out, info.name, meta, **extra)
    except (ModelNotFoundError, ModelFileError, ImageReadError, ImageShapeError, ExportError, OSError) as exc:
        return _fail(str(exc))
    print(f"wrote {path}", file=sys.stderr)
    return _check_bioimageio(path) if args.format == "bioimageio" else 0


def _check_bioimageio(path: Path) -> int:
    """Validate a package with the bioimage.io libraries when they are installed (offline)."""
    from napari_attention_unet.export.bioimageio import validate_package
    from napari_attention_unet.export.network import ExportError

    try:
        import bioimageio.core  # noqa: F401 - with it, the weights are run on the test data too

        run_test = True
    except ImportError:
        run_test = False
    try:
        passed, report = validate_package(path, run_test=run_test)
    except ExportError as exc:
        print(f"not validated: {exc}", file=sys.stderr)
        return 0
    if not passed:
        print(report, file=sys.stderr)
        return _fail(f"{path} did not pass bioimage.io validation (report above)")
    what = "format and test run (bioimageio.core)" if run_test else "format (bioimageio.spec)"
    print(f"bioimage.io validation passed: {what}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
