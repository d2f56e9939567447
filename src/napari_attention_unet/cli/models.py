"""``attention-unet models`` and ``attention-unet export``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from napari_attention_unet.cli.common import fail

__all__ = ["export", "list_models"]


def _what(info) -> str:
    """What a model file holds ("2D instances", "3D semantic: anterior, posterior"), or why it cannot be used."""
    from napari_attention_unet.core.weights import ModelFileError, read_metadata

    try:
        config, _ = read_metadata(info.path)
    except ModelFileError as exc:
        return f"DAMAGED: {exc}"
    what = f"{config.spatial_dims}D {config.task}"
    return what + (f": {', '.join(config.classes[1:])}" if config.task == "semantic" else "")


def list_models(args: argparse.Namespace) -> int:
    from napari_attention_unet.models.registry import all_models, saved_models_dir

    models, seen = all_models(), set()
    rows = [(info, "bundled" if info.bundled else "saved", _what(info)) for info in models]
    name_width = max([30, *(len(info.name) for info, _, _ in rows)])  # long names keep the columns aligned
    what_width = min(max([40, *(len(what) for _, _, what in rows)]), 60)
    for info, kind, what in rows:
        hidden = " (hidden by the bundled model of that name: give its path)" if info.name in seen else ""
        seen.add(info.name)
        print(f"{info.name:{name_width}s} {kind:8s} {what:{what_width}s} {info.path}{hidden}")
    if not models:
        print("no models yet")
    print(f"(saved models folder: {saved_models_dir()}; models written with --out elsewhere are used by their path)")
    return 0


def export(args: argparse.Namespace) -> int:
    from napari_attention_unet.core.images import ImageShapeError
    from napari_attention_unet.export import ExportError, export_model
    from napari_attention_unet.export.bioimageio import check_package
    from napari_attention_unet.large_data.files import ImageReadError, read_image
    from napari_attention_unet.models.registry import ModelFileError, ModelNotFoundError, bundled_dir, open_model

    for given, option in ((args.test_image, "--test-image"), (args.license, "--license")):
        if given is not None and args.format != "bioimageio":
            return fail(f"{option} is only used by --format bioimageio")
    try:
        model, meta, info = open_model(args.model)
        extra = {}
        if args.format == "bioimageio":
            check_package(model, args.license)  # a 3D model or a mistyped license: before any warning or work
            card = bundled_dir() / f"{info.name}.json"
            extra["model_card"] = card if info.bundled and card.is_file() else None
            extra["test_image"] = None if args.test_image is None else read_image(args.test_image)
            extra["license"] = args.license or "BSD-3-Clause"
            for warning in _package_warnings(args, model, meta, info):
                print(f"warning: {warning}", file=sys.stderr)
        print(f"exporting {info.name} as {args.format}", file=sys.stderr)
        path = export_model(model, args.format, args.out, info.name, meta, **extra)
    except (ModelNotFoundError, ModelFileError, ImageReadError, ImageShapeError, ExportError, OSError) as exc:
        return fail(str(exc))
    print(f"wrote {path}", file=sys.stderr)
    return _check_bioimageio(path) if args.format == "bioimageio" else 0


def _package_warnings(args: argparse.Namespace, model, meta: dict, info) -> list[str]:
    """What a bioimage.io package of a model the user trained would get wrong without a word."""
    out = []
    nuclei_like = model.config.task != "semantic" and model.config.in_channels == 3 and meta.get("start") != "scratch"
    if args.test_image is None and not nuclei_like:
        out.append(
            "the package's test image will be the plugin's nuclei sample, which is not what this model is for: "
            "give --test-image with one of your images"
        )
    dice = meta.get("best_val_dice")
    if isinstance(dice, (int, float)) and dice < 0.05:
        out.append(f"this model scored Dice {dice:.2f} on its held-out part when trained: check it before sharing")
    if args.license is None and not info.bundled:
        out.append(
            "the package states license BSD-3-Clause (the plugin's) for the weights; weights trained on your images "
            "take what those images allow: give it with --license (an SPDX id, e.g. CC-BY-4.0)"
        )
    return out


def _check_bioimageio(path: Path) -> int:
    """Validate a package with the bioimage.io libraries when they are installed (offline)."""
    from napari_attention_unet.export import ExportError
    from napari_attention_unet.export.bioimageio import validate_package

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
        return fail(f"{path} did not pass bioimage.io validation (report above)")
    what = "format and test run (bioimageio.core)" if run_test else "format (bioimageio.spec)"
    print(f"bioimage.io validation passed: {what}", file=sys.stderr)
    return 0
