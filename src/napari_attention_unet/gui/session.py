"""One prediction session per widget: the current model, its inference copy and the device.

No Qt and no napari here. The widget owns one :class:`Session` and drives :meth:`Session.predict` (a generator)
in a napari worker; scripts and tests can drive it with :func:`napari_attention_unet.core.predict.run_to_end`.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from napari_attention_unet.core import predict as _predict
from napari_attention_unet.core.device import DEVICE_CHOICES, describe_device, pick_device
from napari_attention_unet.core.images import ImageShapeError, leading_channels
from napari_attention_unet.core.model import AttentionUNet
from napari_attention_unet.core.predict import PredictOptions, Progress, predict, prepare_model, stack_intensity_range
from napari_attention_unet.core.train import StepReport, TrainConfig, Trainer, TrainResult
from napari_attention_unet.core.train.start import patch_as_predicted
from napari_attention_unet.core.train.targets import check_corrections
from napari_attention_unet.core.weights import ModelFileError, ModelInfo
from napari_attention_unet.models import registry as _registry
from napari_attention_unet.models.registry import BUNDLED_DEFAULT

__all__ = ["DEVICE_CHOICES", "PartPrediction", "Session", "explain_error", "missing_bundled_model_message"]

#: Progress is reported in these many steps, whatever the number of tiles and planes.
PROGRESS_STEPS = 1000


@dataclass
class PartPrediction:
    """What one Predict run produced, ready to be put into layers.

    ``labels`` and every array in ``gate_maps`` cover the predicted part of the image:
    the whole image when ``index`` is ``()``, or the block at ``index`` (the leading,
    non-spatial indices, e.g. ``(z,)`` or ``(t,)``) when only the current slice was predicted.
    """

    labels: np.ndarray
    gate_maps: dict[str, np.ndarray]
    index: tuple[int, ...]
    device: str
    model_name: str
    semantic: bool = False
    extra: dict = field(default_factory=dict)
    #: The largest factor an image (or plane) was enlarged by for its small objects, or None.
    zoom: float | None = None
    #: Pixel values that were not numbers (NaN), predicted as background (said in the Done line).
    nan_values: int = 0


class Session:
    """Holds the model and the device of one widget, and runs predictions with them.

    The inference copy (batch norm folded, moved to the device) is built once per
    model and device, on the first prediction, and reused by later ones.
    """

    def __init__(self, device: str = "auto") -> None:
        self.model: AttentionUNet | None = None
        self.model_info: ModelInfo | None = None
        self.device: torch.device = pick_device(device)
        self.device_choice = device
        self._inference: AttentionUNet | None = None
        self.trainer: Trainer | None = None
        self.trained_planes: list[tuple[int, ...]] = []  # a stack's planes in the last fine-tune
        self.plan = None  # the last new-model training's plan (gui.new_model), None for fine-tuning

    # -- models -------------------------------------------------------------------------
    @staticmethod
    def available_models() -> list[ModelInfo]:
        """Bundled models (the default first), then the user's saved models."""
        return _registry.all_models()

    @staticmethod
    def bundled_model_missing() -> bool:
        return not any(m.bundled and m.name == BUNDLED_DEFAULT for m in _registry.all_models())

    def load_model(self, name_or_path: str | os.PathLike, *, listed: bool = False) -> ModelInfo:
        """Load a bundled or saved model by name (``listed``: only those), or a model file by path."""
        model, _meta, info = _registry.open_model(name_or_path, listed=listed)
        self.model, self.model_info, self._inference = model, info, None
        return info

    def set_model(self, model: AttentionUNet, info: ModelInfo) -> None:
        """Use ``model`` (e.g. a fine-tuned one, already saved as ``info``) from now on."""
        self.model, self.model_info, self._inference = model.eval(), info, None

    @property
    def gate_names(self) -> tuple[str, ...]:
        return self.model.config.gate_names if self.model is not None else ()

    @property
    def spatial_dims(self) -> int:
        return self.model.config.spatial_dims if self.model is not None else 2

    def describe_model(self) -> str:
        if self.model is None or self.model_info is None:
            return "no model loaded"
        cfg = self.model.config
        saved = "saved" if self.model_info.path.parent == _registry.saved_models_dir() else "file"
        origin = "bundled" if self.model_info.bundled else saved
        task = f"semantic: {', '.join(cfg.classes[1:])}" if cfg.task == "semantic" else "instances"
        averaged = f", {cfg.members} networks averaged" if cfg.members > 1 else ""  # core.train.folds
        shape = f"{cfg.spatial_dims}D {task}, {cfg.in_channels} channel(s), {len(cfg.gate_names)} gates{averaged}"
        return f"{self.model_info.name} ({origin}; {shape})"

    # -- device -------------------------------------------------------------------------
    def set_device(self, choice: str) -> torch.device:
        """Use ``choice`` (auto, cpu, cuda, mps); raises if that device is not there."""
        device = pick_device(choice)
        if device != self.device:
            self._inference = None
        self.device, self.device_choice = device, choice
        return device

    def describe_device(self) -> str:
        return describe_device(self.device)

    def inference_model(self) -> AttentionUNet:
        """The prepared copy of the model on the device, built on first use."""
        if self.model is None:
            raise _registry.ModelNotFoundError(missing_bundled_model_message())
        if self._inference is None:
            self._inference = prepare_model(self.model, self.device)
        return self._inference

    # -- prediction ---------------------------------------------------------------------
    def predict(
        self,
        image: np.ndarray,
        options: PredictOptions | None = None,
        *,
        rgb: bool = False,
        index: Sequence[int] | None = None,
        **settings,
    ) -> Generator[Progress, None, PartPrediction]:
        """Predict a whole image or one block of it; yields :class:`Progress`, returns :class:`PartPrediction`.

        ``image`` is the layer's data (numpy or dask), ``rgb`` says its last axis is colour.
        The model predicts blocks of its own dimensionality (YX planes for a 2D model,
        ZYX volumes for a 3D one); leading axes (Z for a 2D model, time, ...) are looped
        over. ``index`` picks one block by its leading indices (the current slice);
        ``None`` predicts them all. ``options`` (or single ``settings``, e.g. ``tile_size=256``)
        say how; their ``spacing`` (the layer's ``scale``) lets a 3D model see anisotropic
        volumes with cubic voxels, and their ``axes`` are set here from the model and ``rgb``.
        A 2D model's planes of an in-memory stack are normalised with the stack's percentiles
        (:func:`~napari_attention_unet.core.predict.stack_intensity_range`), as ``core.predict``
        normalises a ZYX stack given whole: the dock and the command line agree.
        """
        if self.model is None:
            raise _registry.ModelNotFoundError(missing_bundled_model_message())
        # A semantic model gives class values whatever was asked: no instances, no id offsets.
        options = PredictOptions.of(options, **settings).for_model(self.model.config)
        image, rgb = _channels_last(image, rgb, self.model.config)
        instances = options.instances
        block_dims = self.spatial_dims
        spatial_shape = tuple(image.shape[:-1] if rgb else image.shape)
        _check_shape(spatial_shape, block_dims, rgb)
        leading = spatial_shape[: len(spatial_shape) - block_dims]
        partial = index is not None and len(leading) > 0
        if partial:
            index = tuple(int(i) for i in index)
            if len(index) != len(leading) or any(not 0 <= i < n for i, n in zip(index, leading)):
                raise ValueError(f"slice index {index} does not fit the image's leading axes {leading}")
            blocks, part_shape = [index], spatial_shape[len(leading) :]
        else:
            blocks, part_shape = list(np.ndindex(*leading)), spatial_shape
        gate_names = list(self.gate_names if options.gates is None else options.gates)
        net = self.inference_model()
        spacing = None if options.spacing is None else tuple(options.spacing)[-block_dims:]
        options = PredictOptions.of(
            options, axes="ZYX"[-block_dims:] + ("C" if rgb else ""), gates=tuple(gate_names), spacing=spacing
        )

        if block_dims == 3:  # a volume goes whole through a 3D model: refused before a lazy one is loaded
            _predict.check_volume_memory(self.model.config, part_shape, options)
        labels = np.zeros(part_shape, dtype=np.int32)
        gate_maps = {name: np.zeros(part_shape, dtype=np.float32) for name in gate_names}
        offset, zooms, nan_values = 0, [], 0
        stack_range = _stack_ranges(image, rgb, self.model.config.in_channels, block_dims)
        for k, block in enumerate(blocks):
            block_options = options
            if options.intensity_range is None and (intensity_range := stack_range(block)) is not None:
                block_options = PredictOptions.of(options, intensity_range=intensity_range)
            result = yield from _scaled(
                predict(self.model, np.asarray(image[block]), block_options, device=self.device, inference_model=net),
                k,
                len(blocks),
            )
            where = () if partial else block
            zooms += [result.zoom] if result.zoom else []
            nan_values += result.nan_values
            block_labels = result.labels.astype(np.int32, copy=False)
            if instances and offset:
                block_labels = np.where(block_labels > 0, block_labels + offset, 0)
            labels[where] = block_labels
            if instances:
                offset = max(offset, int(labels[where].max(initial=0)))
            for name in gate_names:
                gate_maps[name][where] = result.gate_maps[name]
        return PartPrediction(
            labels=labels,
            gate_maps=gate_maps,
            index=blocks[0] if partial else (),
            device=describe_device(self.device),
            model_name=self.model_info.name if self.model_info else "model",
            semantic=not instances,
            extra={"classes": list(self.model.config.classes)} if self.model.config.task == "semantic" else {},
            zoom=max(zooms, default=None),
            nan_values=nan_values,
        )

    # -- fine-tuning -----------------------------------------------------------------------
    def finetune(
        self,
        image: np.ndarray,
        labels: np.ndarray,
        *,
        rgb: bool = False,
        ignore: np.ndarray | None = None,
        edited: np.ndarray | None = None,
        minutes: float | None = 2.0,
        steps: int | None = None,
        spacing: Sequence[float] | None = None,
    ) -> Generator[StepReport, None, TrainResult]:
        """Fine-tune the current model on one image and its corrected labels.

        A 3D model trains on the volume as it predicts it: resampled by ``spacing`` (the layer's
        scale; :func:`core.train.start.network_shape`), in patches fitted to it as ``train`` fits them
        (about 18k voxels, not the 64³ cap of 2D-sized patches: 12x faster a step).

        Returns the training generator: it yields :class:`StepReport` and returns the
        :class:`TrainResult`. Shape checks run at once and raise; the :class:`Trainer` is
        built when the generator first runs (in the caller's worker), and its own checks
        (e.g. nothing labelled) raise from there. Stops after ``minutes`` or ``steps``
        (whichever comes first). The trainer stays in ``self.trainer``, so closing the
        generator (cancel) still leaves ``self.trainer.result()`` with the best model so
        far. The session's model is not changed here: the caller decides, with
        :meth:`set_model`.
        """
        self.trainer = None
        if self.model is None:
            raise _registry.ModelNotFoundError(missing_bundled_model_message())
        image, rgb = _channels_last(image, rgb, self.model.config)
        spatial_shape = tuple(image.shape[:-1] if rgb else image.shape)
        n_leading = len(spatial_shape) - self.spatial_dims
        if n_leading < 0:
            raise ImageShapeError(
                f"fine-tuning a {self.spatial_dims}D model needs a {self.spatial_dims}D image "
                f"(or a stack of them), not one of shape {spatial_shape}"
            )
        if tuple(labels.shape) != spatial_shape:
            raise ImageShapeError(f"the labels (shape {tuple(labels.shape)}) do not match the image {spatial_shape}")
        check_corrections(labels, ignore, self.spatial_dims)
        # A stack (Z or T before the model's axes) trains on its planes: the ones the user
        # corrected, else the labelled ones.
        planes = training_planes(labels, edited, ignore, n_leading)
        self.trained_planes = planes
        axes = "ZYX"[-self.spatial_dims :] + ("C" if rgb else "")
        voxels = None
        if self.spatial_dims == 3:
            voxels = None if spacing is None else tuple(float(v) for v in spacing)[-3:]
            sized = {"patch_size": patch_as_predicted(self.model.config, [spatial_shape], [voxels])}
        config = TrainConfig(
            max_steps=steps,
            time_budget=None if minutes is None else 60.0 * minutes,
            # Evaluate often enough that a short run still keeps its best state.
            eval_every=max(1, min(25, (steps or 25) // 2)),
            **(sized if self.spatial_dims == 3 else {}),
        )

        def plane(array: np.ndarray | None, index: tuple[int, ...]) -> np.ndarray | None:
            return None if array is None else np.asarray(array[index])

        model = self.model
        stack_range = _stack_ranges(image, rgb, model.config.in_channels, self.spatial_dims)

        def run() -> Generator[StepReport, None, TrainResult]:
            # Built on the first step, so in the widget's worker: preparing the samples and the
            # optimiser took 1.4 s on a 512x512 image, which froze the viewer when done on click.
            self.trainer = Trainer(
                model,
                [(plane(image, i), plane(labels, i), axes, voxels, stack_range(i)) for i in planes],
                config=config,
                device=self.device,
                ignore_masks=[plane(ignore, i) for i in planes],
                edited_masks=[plane(edited, i) for i in planes],
            )
            return (yield from self.trainer.run())

        return run()


def _channels_last(image, rgb: bool, config):
    """``(image, rgb)``, a layer's leading input channels (:func:`leading_channels`) moved last as colour is."""
    if leading_channels(tuple(image.shape), rgb, config.in_channels, config.spatial_dims):
        return np.moveaxis(image, 0, -1), True  # numpy and dask alike: a view
    return image, rgb


def _stack_ranges(image, rgb: bool, in_channels: int, spatial_dims: int):
    """``index -> percentiles`` of the stack the plane at ``index`` (leading indices) belongs to, each
    stack's taken once: a 2D model's plane of an in-memory stack is normalised with them, as
    ``attention-unet predict`` normalises a ZYX stack whole (and as models trained on volumes'
    planes learnt). None for a single image, a 3D model, or a lazy (dask, zarr) layer."""
    cache: dict[tuple[int, ...], tuple] = {}

    def of(index: tuple[int, ...]) -> tuple | None:
        if spatial_dims != 2 or not index or not isinstance(image, np.ndarray):
            return None
        stack = tuple(index[:-1])
        if stack not in cache:
            cache[stack] = stack_intensity_range(image[stack], in_channels, rgb=rgb)
        return cache[stack]

    return of


MAX_TRAINING_PLANES = 16


def training_planes(
    labels: np.ndarray, edited: np.ndarray | None, ignore: np.ndarray | None, n_leading: int
) -> list[tuple[int, ...]]:
    """Leading indices of the planes of a stack to fine-tune on (``[()]`` for a single image).

    Planes with painted pixels come first; without any, the planes that hold labels in
    the region that counts. At most :data:`MAX_TRAINING_PLANES`, spread over the stack,
    so that a long, fully predicted stack does not fill the memory.
    """
    if n_leading == 0:
        return [()]
    leading_shape = labels.shape[:n_leading]
    indices = list(np.ndindex(*leading_shape))
    chosen = []
    if edited is not None:
        chosen = [i for i in indices if np.any(edited[i])]
    if not chosen:
        counts = ignore is None
        chosen = [i for i in indices if np.any(labels[i] if counts else np.asarray(labels[i])[~ignore[i]])]
    if not chosen:
        raise ValueError("no plane of the stack has labels to learn from: correct at least one slice first")
    if len(chosen) > MAX_TRAINING_PLANES:
        picks = np.linspace(0, len(chosen) - 1, MAX_TRAINING_PLANES).round().astype(int)
        chosen = [chosen[k] for k in picks]
    return chosen


def _check_shape(spatial_shape: tuple[int, ...], block_dims: int, rgb: bool) -> None:
    what = "colour " if rgb else ""
    if len(spatial_shape) < block_dims:
        raise ImageShapeError(
            f"this is a {block_dims}D model but the {what}image is {len(spatial_shape)}D: "
            "choose a 3D stack, or a 2D model"
        )
    if min(spatial_shape, default=0) < 1:
        raise ImageShapeError(f"the image is empty (shape {spatial_shape})")


def _scaled(generator: Generator[Progress, None, object], k: int, n: int):
    """Re-express one block's progress as progress over ``n`` blocks."""
    while True:
        try:
            step = next(generator)
        except StopIteration as stop:
            return stop.value
        done = round(PROGRESS_STEPS * (k + step.fraction) / n)
        yield Progress(done, PROGRESS_STEPS, step.stage)


def missing_bundled_model_message() -> str:
    return (
        f"The bundled '{BUNDLED_DEFAULT}' model is not installed in this version of the plugin, and no "
        "saved model was found. Choose a model file (.safetensors) under 'model file', "
        "or fine-tune and save a model first."
    )


def explain_error(exc: BaseException, doing: str = "Prediction") -> str:
    """One sentence a biologist can act on, for an error raised while predicting (or ``doing``
    something else: "Fine-tuning", "Training a new model")."""
    text = str(exc)
    if isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in text.lower():
        return (
            "The graphics card ran out of memory. Choose a smaller tile size, or set the device to 'cpu' "
            "(slower, but limited only by the computer's memory)."
        )
    if isinstance(exc, ImageShapeError):
        verb = "segmented" if doing == "Prediction" else "trained on"
        return f"This image cannot be {verb} as it is: {text.rstrip('.')}."
    if isinstance(exc, (_registry.ModelNotFoundError, ModelFileError)):
        return f"The model could not be loaded: {text}"
    if isinstance(exc, MemoryError):
        return "The computer ran out of memory. Tick 'current slice only', or crop the image first."
    return f"{doing} failed: {text}"
