"""``attention-unet``: the command line. Argument parsing only; the work is done by the other rooms.

attention-unet predict IMAGE [IMAGE ...] --out DIR [--model NAME_OR_PATH] [--device auto|cpu|cuda|mps]
attention-unet finetune --image IMG --labels LBL [...] --out PATH [--model NAME_OR_PATH]
attention-unet train --image IMG --labels LBL [...] --out PATH [--task instances|semantic] [--dims 2|3]
attention-unet models
attention-unet export MODEL --format bioimageio|onnx|torchscript --out PATH
"""

from __future__ import annotations

from collections.abc import Sequence

from napari_attention_unet.cli.common import collect_less, reuse_freed_memory, skip_collection_at_exit
from napari_attention_unet.cli.parser import build_parser

__all__ = ["build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (None: this program's own arguments, ``sys.argv``)."""
    if argv is None:  # run as a program: this process is ours alone (not a test's, not napari's)
        reuse_freed_memory()
        collect_less()
    parser = build_parser()
    args = parser.parse_args(argv)
    code = args.func(args)
    if argv is None:
        skip_collection_at_exit()
    return code
