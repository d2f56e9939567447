"""Fine-tuning a 3D semantic model on one corrected volume: better on it, and still as good on others?

A user trains a model on a few MR volumes, predicts a new one, corrects it and fine-tunes. This
script plays that out on ``../shared/data/msd_hippocampus_dev`` (MSD Task04, CC-BY-SA 4.0, read in
place), the volumes sorted by name:

1. **start**: a new model on the first ``--n-start`` volumes, as ``attention-unet train --task semantic
   --dims 3`` makes it (``bench_tasks.train_ours``), for ``--start-minutes``.
2. **fine-tune**: for each of the next ``--corrected`` volumes, with its full labels as the
   corrections, what ``attention-unet finetune`` does (``TrainConfig`` defaults, the fitted 3D patch,
   the held-out strip of that volume and its must-beat-the-start rule), for ``--minutes``.
3. **scores**: mean class Dice of the start, of the fine-tuned state (whether or not the strip
   accepted it) and of states between the two (``--shares``: the share of the fine-tuned weights;
   batch norm is frozen while fine-tuning, so both keep the same statistics), on the corrected volume
   itself and on two sets of other volumes: the 31st-45th (to choose a rule on) and the 46th-60th
   (to report it on). Share 0.5 is what ``finetune`` and the dock keep (``TrainConfig.keep_share``).

    python benchmarks/bench_finetune_3d.py [--n-start 5] [--start-minutes 1] [--corrected 3] [--minutes 1]
        [--shares 0,0.5,1] [--seed 0]
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_tasks import HIPPOCAMPUS, class_dice, load_cases, train_ours  # noqa: E402

from napari_attention_unet.core.predict import predict, run_to_end  # noqa: E402
from napari_attention_unet.core.train import TrainConfig, Trainer  # noqa: E402
from napari_attention_unet.core.train.checkpoints import part_of_the_change  # noqa: E402
from napari_attention_unet.core.train.start import patch_as_predicted  # noqa: E402

CHOOSE, REPORT = slice(30, 45), slice(45, 60)


def fine_tune(start: torch.nn.Module, image: np.ndarray, labels: np.ndarray, minutes: float, seed: int):
    """What ``attention-unet finetune`` does with one TIFF volume: (trained state, accepted, message)."""
    model = copy.deepcopy(start)
    patch = patch_as_predicted(model.config, [labels.shape], [None])
    config = TrainConfig(max_steps=None, time_budget=60.0 * minutes, seed=seed, patch_size=patch)
    trainer = Trainer(model, [(image, labels, "ZYX", None)], config=config, device="cpu")
    run_to_end(trainer.run())
    result = trainer.result()  # judged as finetune judges it: the kept share of each state's change
    # The whole state kept (the live one when none was), which the shares below mix with the start.
    model.load_state_dict(trainer.best_state or trainer.model.state_dict())
    return model.cpu().eval(), result.accepted, result.message


def mean_dice(model: torch.nn.Module, cases) -> float:
    scores = [class_dice(run_to_end(predict(model, image, axes="ZYX", gates=())).labels, t) for _, image, t in cases]
    return float(np.mean(scores))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-start", type=int, default=5, help="volumes the start model trains on")
    parser.add_argument("--start-minutes", type=float, default=1.0)
    parser.add_argument("--corrected", type=int, default=3, help="volumes fine-tuned on, one at a time")
    parser.add_argument("--minutes", type=float, default=1.0, help="each fine-tune's budget")
    parser.add_argument("--shares", default="0,0.5,1", help="shares of the fine-tuned weights to score")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not (HIPPOCAMPUS / "index.csv").is_file():
        print(f"skipped: the MSD hippocampus volumes are not at {HIPPOCAMPUS} (../shared/data beside the repository)")
        return
    torch.set_num_threads(2)
    cases = load_cases()
    if args.n_start + args.corrected > CHOOSE.start:
        parser.error(f"--n-start + --corrected must leave the volumes from the {CHOOSE.start + 1}st on to scoring")
    shares = [float(s) for s in args.shares.split(",")]
    start, info = train_ours(cases[: args.n_start], args.start_minutes, args.seed)
    start = start.cpu().eval()
    print(f"start: {info['steps']} steps on {args.n_start} volumes ({info['note']})")
    print("\n| corrected volume | strip verdict | share of fine-tuned weights | itself | 31st-45th | 46th-60th |")
    print("|---|---|---|---|---|---|")
    for name, image, labels in cases[args.n_start : args.n_start + args.corrected]:
        tuned, accepted, message = fine_tune(start, image, labels, args.minutes, args.seed)
        verdict = "accepted" if accepted else "refused"
        for share in shares:
            model = part_of_the_change(start, copy.deepcopy(tuned), share).eval()  # what keep_share keeps
            row = [mean_dice(model, s) for s in ([(name, image, labels)], cases[CHOOSE], cases[REPORT])]
            print(f"| {name} | {verdict} | {share:g} | " + " | ".join(f"{v:.3f}" for v in row) + " |", flush=True)
        print(f"<!-- {name}: {message} -->")


if __name__ == "__main__":
    main()
