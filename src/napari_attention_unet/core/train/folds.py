"""Fold members: the time a new model leaves unused trains more networks, each holding out other images.

With five or more images, ``attention-unet train`` holds every fifth image out whole to choose the state
to keep (:func:`.start.split_samples`), and stops early once their scores stop rising: a new 3D model of
the MR hippocampi stopped after 1.5 of its 8 minutes on a CPU with native bf16. :class:`Members` spends
the rest on further members, each from its own random start and holding out another fifth (member k:
``fold=k``), for as long as the budget has room for one more; the model then averages their class
probabilities and gate maps (``ModelConfig.members``; nnU-Net's five-fold ensemble, in the time one
model had). On a CPU that needs the whole budget for one network, nothing changes: one member.
benchmarks/README.md (bench_tasks) has the figures.

A new 3D instance model is often trained on one labelled volume: its held-out strip holds too few objects to
pick a state by, so its members keep their last states (:attr:`.config.TrainConfig.keep_last`), stop at no
early point, and share the budget equally instead (benchmarks/README.md, bench_instances_3d).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import torch

from napari_attention_unet.core.model import AttentionUNet, join_members
from napari_attention_unet.core.train.config import TrainConfig, TrainResult
from napari_attention_unet.core.train.loop import Trainer
from napari_attention_unet.core.train.start import WHOLE_IMAGE_VALIDATION, split_samples, whole_images_held_out

__all__ = ["INSTANCE_MEMBERS", "MEMBER_STEPS", "Members", "MembersResult", "default_members"]

#: A member's steps when the run is timed and no step count is given: new 3D models of the MR hippocampi
#: stopped early between 750 and 1,500 steps (the cosine schedule follows the further of steps and time).
MEMBER_STEPS = 1500
#: A further member starts only when the time left is this many times the longest member's so far.
ROOM = 1.1
#: Members of a new 3D instance model: each trained for a third of the budget, their last states averaged, scored
#: 0.83 AP@0.5 on synthetic volumes against 0.75 for one network's best state (three seeds each, benchmarks/README.md).
INSTANCE_MEMBERS = 3


def default_members(dims: int, scratch: bool, n_images: int, timed: bool, task: str = "semantic") -> int:
    """For a new 3D model from scratch with a time budget: a 3D semantic model on enough images for whole-image
    folds has as many members as folds, each stopping early; a 3D instance model has :data:`INSTANCE_MEMBERS`,
    each training to the end of its share of the budget (:attr:`TrainConfig.keep_last`). Else one: a 2D model
    of a large image would predict that many times slower, and a step count asks for one model."""
    if dims != 3 or not scratch or not timed:
        return 1
    if task == "instances":
        return INSTANCE_MEMBERS
    return WHOLE_IMAGE_VALIDATION if n_images >= WHOLE_IMAGE_VALIDATION else 1


@dataclass
class MembersResult:
    """The joined model and each finished member's result (its own fold's held-out figures)."""

    model: AttentionUNet
    results: list[TrainResult]
    held_out: list[list[int]]  # per member, the images it held out (indices into the pairs)

    @property
    def steps(self) -> int:
        return sum(r.steps for r in self.results)

    def mean_score(self, name: str) -> float | None:
        """The mean over members of a held-out score (``best_val_dice`` ...): each on images it did not train on."""
        values = [getattr(r, name) for r in self.results if getattr(r, name) is not None]
        return sum(values) / len(values) if values else None

    def mean_class_dice(self) -> dict[str, float] | None:
        dicts = [r.best_val_class_dice for r in self.results if r.best_val_class_dice]
        return {k: sum(d[k] for d in dicts) / len(dicts) for k in dicts[0]} if dicts else None


class Members:
    """Trains up to ``count`` members one after another: :meth:`trainers` hands each one out (the caller runs it),
    :meth:`result` joins those that finished. ``first`` is the plan's model; the others are new ones of its
    description, seeded ``config.seed + k``."""

    def __init__(
        self,
        first: AttentionUNet,
        config: TrainConfig,
        pairs: Sequence[tuple],
        background_slices,
        device: torch.device | str,
        count: int,
    ) -> None:
        self.count = max(1, count)
        self.first, self.pairs, self.marks, self.device = first, list(pairs), background_slices, device
        steps = config.max_steps or (MEMBER_STEPS if self.count > 1 else None)
        self.config = replace(config, max_steps=steps)
        self.done: list[Trainer] = []
        self.interrupted = False
        self._outcomes: dict[Trainer, TrainResult] = {}

    def trainers(self) -> Iterator[tuple[int, Trainer]]:
        """``(k, trainer)`` for each member that has room in the budget; the caller runs each to its end (or
        sets :attr:`interrupted`, which ends the members there)."""
        start = time.perf_counter()
        for k in range(self.count):
            config = self.config
            if config.time_budget is not None:  # the budget counts preparing each member's images too
                left = config.time_budget - (time.perf_counter() - start)
                if config.keep_last:  # no early stop: each member trains to the end of an equal share of what is left
                    config = replace(config, time_budget=left / (self.count - k))
                elif k:
                    if left < ROOM * max(t.elapsed for t in self.done):
                        return
                    config = replace(config, time_budget=left)
            config = replace(config, seed=config.seed + k)
            model = self.first if k == 0 else self._new_member(config.seed)
            samples, validation = split_samples(model.config, config, self.pairs, self.marks, fold=k)
            trainer = Trainer(model, config=config, device=self.device, samples=samples, validation=validation)
            yield k, trainer
            if not (self.interrupted and k):  # a later member stopped half-way is left out; the first is kept
                self.done.append(trainer)
            if self.interrupted:
                return

    def _new_member(self, seed: int) -> AttentionUNet:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return AttentionUNet(self.first.config).train()

    def outcome(self, trainer: Trainer) -> TrainResult:
        """``trainer``'s result once it has ended: the one :meth:`record` kept, else worked out once
        (``Trainer.result`` copies the model and scores the held-out images again on every call)."""
        if trainer not in self._outcomes:
            self._outcomes[trainer] = trainer.result()
        return self._outcomes[trainer]

    def record(self, trainer: Trainer, result: TrainResult) -> None:
        """Keep the result ``trainer.run()`` returned as its outcome, so that it is not worked out again."""
        self._outcomes[trainer] = result

    def held_out(self, k: int) -> list[int]:
        """The images member ``k`` held out whole (none when a strip of each was held out)."""
        return whole_images_held_out(len(self.pairs), self.config.val_fraction, k)

    def result(self) -> MembersResult:
        """The members that trained, joined (members that did no step are left out; the first stays if alone)."""
        results = [self.outcome(t) for t in self.done]
        kept = [k for k, r in enumerate(results) if r.steps > 0 and r.stopped != "diverged"] or [0]
        model = join_members([results[k].trained_model for k in kept])
        return MembersResult(model, [results[k] for k in kept], [self.held_out(k) for k in kept])
