"""Average the weights of several runs of the same network (a "model soup").

Runs warm-started from one model stay in one basin of the loss, so the mean of their
weights is a model too, usually as good as the best run and better than a typical one,
without choosing a run by its validation score (Wortsman et al. 2022, "Model soups").

    python training/average_models.py run1.safetensors run2.safetensors ... --out soup.safetensors \\
        --recipe "what produced the runs"
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

from napari_attention_unet.core.model import AttentionUNet
from napari_attention_unet.core.weights import load_model, save_model


def average(models: list[AttentionUNet]) -> AttentionUNet:
    """A copy of ``models[0]`` holding the mean of every floating-point tensor (weights and BN statistics)."""
    if len(models) < 2:
        raise ValueError("give at least two models to average")
    configs = {repr(m.config.to_dict()) for m in models}
    if len(configs) > 1:
        raise ValueError(f"the models have different architectures: {sorted(configs)}")
    states = [m.state_dict() for m in models]
    mean = {}
    for key, value in states[0].items():
        if value.is_floating_point():
            mean[key] = (sum(s[key].double() for s in states) / len(states)).to(value.dtype)
        else:  # e.g. BatchNorm's num_batches_tracked
            mean[key] = value.clone()
    soup = AttentionUNet(models[0].config)
    soup.load_state_dict(mean)
    return soup.eval()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", type=Path, nargs="+")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--recipe", default="", help="how the averaged runs were trained (kept in the metadata)")
    parser.add_argument("--half", action="store_true", help="store float16 weights (as the bundled model)")
    args = parser.parse_args(argv)
    loaded = [load_model(path) for path in args.models]
    soup = average([model for model, _ in loaded])
    infos = [info for _, info in loaded]
    info = {
        **{k: v for k, v in infos[0].items() if k in ("name", "description", "data", "split")},
        "steps": [info.get("steps") for info in infos],
        "averaged": [str(p) for p in args.models],
        "trained": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "recipe": args.recipe or "python training/average_models.py " + " ".join(argv or sys.argv[1:]),
    }
    save_model(soup, args.out, info=info, half=args.half)
    n = sum(p.numel() for p in soup.parameters())
    print(f"averaged {len(loaded)} models ({n:,} parameters each) into {args.out}")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
