"""Training and fine-tuning as a generator.

``train(model, pairs, config=TrainConfig())`` yields a :class:`StepReport` every few steps
and returns a :class:`TrainResult`; :class:`Trainer` holds a run's state so that its best
model outlives a cancelled generator. What each module holds:

- :mod:`.config`: :class:`TrainConfig` (the settings), :class:`StepReport` and
  :class:`TrainResult` (what a run reports), ``INSTANCE_CLASSES``.
- :mod:`.targets`: labels to what the network learns (instance classes, or class values for a
  semantic model, with ``zero_is``), and the checks of bad input (one line each).
- :mod:`.samples`: (image, labels) pairs to :class:`TrainingSample` (:func:`prepare_sample`;
  volumes resampled to cubic voxels with ``spacing``), the held-out validation strip
  (:func:`held_out_region`), augmented batches (:func:`draw_batch`).
- :mod:`.losses`: :func:`segmentation_loss`, cross-entropy plus soft foreground Dice;
  ``semantic_loss``, cross-entropy plus soft Dice over the classes present.
- :mod:`.validation`: scoring on the held-out region (:func:`validation_view`,
  ``VALIDATION_MARGIN``, :func:`foreground_scores`, AP@0.5 of the objects, and
  ``semantic_scores``: Dice of each class).
- :mod:`.selection`: which score picks the best state, whether it beats the starting model,
  and the sanity check before a trained model replaces the one passed in.
- :mod:`.optimizer`: AdamW, the warm-up/cosine learning-rate schedule, the budget and ETA,
  :func:`load_optimizer_code`.
- :mod:`.checkpoints`: what a checkpoint holds, for runs that span several sessions.
- :mod:`.loop`: :class:`Trainer` (the loop of :meth:`Trainer.run`, results, checkpoints) and
  :func:`train`.
- :mod:`.start`: a new model for a task (its classes, from scratch or another model's weights),
  the task inferred from labels, the settings and validation split of ``attention-unet train``.
- :mod:`.plan`: a new model's run planned from labelled images, for the CLI and the dock.
- :mod:`.folds`: members of a new model, each holding out another fifth of the images, while the
  time budget has room; joined into one model that averages them.

Modules of this package import each other from the module that defines a name, never from
the package itself.
"""

from napari_attention_unet.core.train.config import INSTANCE_CLASSES, StepReport, TrainConfig, TrainResult
from napari_attention_unet.core.train.holdout import held_out_region
from napari_attention_unet.core.train.loop import Trainer, train
from napari_attention_unet.core.train.losses import segmentation_loss
from napari_attention_unet.core.train.optimizer import load_optimizer_code
from napari_attention_unet.core.train.samples import (
    TrainingSample,
    draw_batch,
    prepare_image,
    prepare_sample,
)
from napari_attention_unet.core.train.validation import (
    VALIDATION_MARGIN,
    foreground_scores,
    validation_view,
)

# Not public; re-exported because tests/test_train.py imports it from here.
from napari_attention_unet.core.train.validation import _instance_counts as _instance_counts

__all__ = [
    "INSTANCE_CLASSES",
    "VALIDATION_MARGIN",
    "StepReport",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "TrainingSample",
    "draw_batch",
    "foreground_scores",
    "held_out_region",
    "load_optimizer_code",
    "prepare_image",
    "prepare_sample",
    "segmentation_loss",
    "train",
    "validation_view",
]
