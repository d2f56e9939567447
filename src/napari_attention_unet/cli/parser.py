"""The ``attention-unet`` argument parser: each sub-command's options, checked as they are read."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from napari_attention_unet import __version__
from napari_attention_unet.cli import finetune, models, predict, train

__all__ = ["build_parser"]


def _device_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="auto: CUDA, then MPS, then the CPU"
    )


def _precision_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="auto: bf16 on GPUs and on CPUs with native bf16 (AMX / AVX512-BF16), else fp32",
    )


def _positive(kind: type):
    """An argparse type: a number of ``kind`` above 0 (a budget of 0 steps trains nothing)."""

    def read(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {'whole ' if kind is int else ''}number") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be above 0, not {text}")
        return value

    return read


def _time_point(text: str) -> int:
    """An argparse type: a time point counted from 0 (-1 would silently be the last one)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"time points count from 0, so not {text}")
    return value


class _OneLineErrors(argparse.ArgumentParser):
    """Usage mistakes end with one line (and where the help is), not the whole usage first."""

    def parse_known_args(self, args=None, namespace=None):
        self._given = list(sys.argv[1:] if args is None else args)  # for the hint below
        return super().parse_known_args(args, namespace)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}{self._dash_hint(message)} (see: {self.prog} --help)\n")

    def _dash_hint(self, message: str) -> str:
        """argparse reads a value that starts with '-' (``--spacing -1,1,1``) as the next option and says only
        'expected one argument'; say what it saw."""
        match = re.match(r"argument (--[\w-]+): expected one argument$", message)
        args = getattr(self, "_given", [])
        given = match and next((b for a, b in zip(args, args[1:]) if a == match.group(1) and b.startswith("-")), None)
        if not given:
            return ""
        return f": {given!r} starts with '-' and was taken for an option (write {match.group(1)}={given} to pass it)"


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineErrors(prog="attention-unet", description="Attention U-Net segmentation with attention maps.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("predict", help="segment images; writes <stem>_labels.tif and <stem>_attention.tif")
    p.add_argument(
        "images",
        nargs="+",
        type=Path,
        metavar="IMAGE",
        help="TIFF or PNG files, NIfTI volumes (.nii, .nii.gz), zarr / OME-Zarr stores (folders ending in .zarr)",
    )
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder (created if missing)")
    p.add_argument(
        "--model", default=None, metavar="NAME_OR_PATH", help="bundled or saved model name, or a .safetensors file"
    )
    _device_option(p)
    p.add_argument("--axes", default=None, help="axes of the images, e.g. YX, YXC, ZYX, CYX (default: guessed)")
    p.add_argument(
        "--channel",
        type=int,
        default=None,
        metavar="C",
        help="predict on channel C (0-based) of multichannel images (an ImageJ hyperstack's, or with --axes CYX)",
    )
    p.add_argument(
        "--tile-size",
        type=int,
        default=None,
        help="tile edge in pixels (default 512 in 2D, 96 in 3D, fitted to the image up to 1/8 larger; at least 32)",
    )
    p.add_argument("--semantic", action="store_true", help="write a 0/1 foreground mask instead of instance labels")
    p.add_argument(
        "--no-auto-zoom",
        dest="auto_zoom",
        action="store_false",
        help="do not look again at an image whose objects come out smaller than the model knows them, enlarged "
        "(the bundled model does so below 12 px; an image predicted block by block is enlarged alike, every block by "
        "one factor)",
    )
    _precision_option(p)
    p.add_argument(
        "--spacing",
        type=_spacing,
        default=None,
        metavar="Z,Y,X",
        help="voxel size of volumes, e.g. 2,0.5,0.5: a 3D model sees them resampled to cubic voxels",
    )
    p.add_argument(
        "--time-point",
        type=_time_point,
        default=None,
        metavar="T",
        help="predict time point T (from 0) of 4D series (NIfTI, or TIFF with time first); writes <stem>_tT_labels...",
    )
    p.add_argument(
        "--block-size",
        type=_block_size,
        default=None,
        metavar="PX",
        help="predict a 2D image block by block in bounded memory (default for images over 4096x4096 px, zarr input "
        "or a .zarr --out: blocks of 2048 px); a multiple of 64, at least 128. Volumes are predicted whole",
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
    p.set_defaults(func=predict.run)

    f = sub.add_parser("finetune", help="fine-tune a model on corrected labels; writes a new model file")
    f.add_argument("--image", action="append", required=True, type=Path, metavar="IMG", help="image (repeatable)")
    f.add_argument("--labels", action="append", required=True, type=Path, metavar="LBL", help="its labels (repeatable)")
    f.add_argument(
        "--out",
        required=True,
        metavar="PATH",
        help="where to write the fine-tuned model (in a folder: PATH/model.safetensors)",
    )
    f.add_argument("--model", default=None, metavar="NAME_OR_PATH", help="model to start from (default: bundled)")
    budget = f.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=_positive(float), default=None, help="time budget (default 5 minutes)")
    budget.add_argument("--steps", type=_positive(int), default=None, help="step budget")
    _device_option(f)
    _precision_option(f)
    f.add_argument("--axes", default=None, help="axes of the images, e.g. YX, YXC (default: guessed)")
    f.add_argument("--seed", type=int, default=0, help="random seed of the patches drawn (default 0)")
    f.add_argument(
        "--time-point", type=_time_point, default=None, metavar="T", help="fine-tune on time point T of 4D series"
    )
    f.set_defaults(func=finetune.run)

    _add_train(sub)

    m = sub.add_parser("models", help="list bundled and saved models")
    m.set_defaults(func=models.list_models)

    x = sub.add_parser("export", help="export a model for other tools: BioImage Model Zoo zip, ONNX or TorchScript")
    x.add_argument("model", metavar="MODEL", help="bundled or saved model name, or a .safetensors file")
    x.add_argument(
        "--format",
        required=True,
        choices=["bioimageio", "onnx", "torchscript"],
        help="bioimageio: a BioImage Model Zoo zip (2D models; needs the [export] extra); onnx; torchscript",
    )
    x.add_argument(
        "--out",
        required=True,
        metavar="PATH",
        help="file to write (.zip, .onnx or .pt added), or a folder (an existing one, or PATH/) "
        "to hold NAME.zip / .onnx / .pt",
    )
    x.add_argument(
        "--test-image",
        type=Path,
        metavar="IMG",
        help="bioimageio: one of the images the model is for, as the package's test data (default: the nuclei sample)",
    )
    x.add_argument(
        "--license",
        default=None,
        metavar="SPDX",
        help="bioimageio: the license of the weights, e.g. CC-BY-4.0 (default BSD-3-Clause, the plugin's: for a model "
        "trained on your images, give what those images allow)",
    )
    x.set_defaults(func=models.export)
    return parser


def _add_train(sub) -> None:
    t = sub.add_parser("train", help="train a new model (instances or semantic classes, 2D or 3D) on labelled images")
    t.add_argument("--image", action="append", required=True, type=Path, metavar="IMG", help="image (repeatable)")
    t.add_argument("--labels", action="append", required=True, type=Path, metavar="LBL", help="its labels (repeatable)")
    t.add_argument(
        "--out",
        required=True,
        metavar="PATH",
        help="where to write the model (.safetensors; in a folder: PATH/model.safetensors)",
    )
    t.add_argument(
        "--task",
        choices=["instances", "semantic"],
        default=None,
        help="instances: objects (ids or a mask of objects); semantic: label value k is class k "
        "(default: inferred from the labels)",
    )
    t.add_argument("--dims", type=int, choices=[2, 3], default=None, help="2D or 3D model (default: 3 for volumes)")
    t.add_argument(
        "--spacing",
        type=_spacing,
        default=None,
        metavar="Z,Y,X",
        help="voxel size; volumes are made cubic",
    )
    t.add_argument(
        "--start",
        default=None,
        metavar="NAME_OR_PATH|scratch",
        help="start from a model's weights (its head replaced for a new task) or from scratch "
        "(default: the bundled model for 2D, scratch for 3D or with --base-width / --depth)",
    )
    t.add_argument("--class-names", default=None, metavar="NAME,NAME,...", help="names of classes 1..K (semantic)")
    t.add_argument(
        "--zero-is",
        choices=["background", "unlabelled", "slices"],
        default="background",
        help="0 is the background (dense labels), unlabelled (strokes, semantic: paint the background "
        "as a class of its own), or slices (classes or objects in a few labelled slices of a volume: 0 is the "
        "background in the slices that hold labels, the other slices are not labelled)",
    )
    t.add_argument(
        "--background-slices",
        action="append",
        default=None,
        metavar="SLICES",
        help="with --zero-is slices: slices of a volume (first axis, from 0; e.g. 0-4,31-35) without the structure, "
        "to count as labelled background (a slice with no label is otherwise not labelled, and the model never "
        "learns where the structure ends); once per --labels, in order, '-' for none",
    )
    budget = t.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=_positive(float), default=None, help="time budget (default 10 minutes)")
    budget.add_argument("--steps", type=_positive(int), default=None, help="step budget")
    _device_option(t)
    _precision_option(t)
    t.add_argument("--axes", default=None, help="axes of the images, e.g. YX, YXC, ZYX, CZYX (default: guessed)")
    t.add_argument(
        "--time-point", type=_time_point, default=None, metavar="T", help="train on time point T of 4D series"
    )
    t.add_argument(
        "--flips",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="random flips and turns (default: on, but off for semantic models of volumes: anatomy has an orientation)",
    )
    t.add_argument(
        "--intensity",
        choices=["auto", "image", "window"],
        default="auto",
        help="how images are normalised: each by its own percentiles (image), or all through one window spanning "
        "the labelled voxels' intensities (window); auto: a window for CT-like images (Hounsfield units), else image",
    )
    t.add_argument("--base-width", type=int, default=None, help="from scratch: channels of the first level")
    t.add_argument("--depth", type=int, default=None, help="from scratch: levels of the network")
    t.add_argument("--seed", type=int, default=0, help="random seed of the new weights and patches (default 0)")
    t.add_argument(
        "--members",
        type=_positive(int),
        default=None,
        help="networks the model averages, each trained holding out other images, while the time budget has room "
        "(default with a time budget: 5 for a new 3D semantic model with 5 or more volumes, 3 for a new 3D instance "
        "model, each for a third of the time; else 1; at most 8)",
    )
    t.set_defaults(func=train.run)


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
