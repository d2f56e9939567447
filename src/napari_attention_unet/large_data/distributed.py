"""Prediction on ``dask.distributed``: many files at once, one model per worker.

The client (the CLI, a script) never sends a model: it sends a :class:`ModelSpec`, the
bundled model's name or a model file's absolute path. Each worker process loads that model
once, on its own device (CUDA when the worker has a GPU, else MPS, else the CPU), and keeps
the inference copy for every later task (:func:`worker_model`). A task is one file: the
worker reads it, predicts, and writes ``<stem>_labels.tif`` and ``<stem>_attention.tif``
exactly as the single-process ``attention-unet predict`` does, and hands back only a small
:class:`FileResult`. The clusters themselves come from :mod:`.cluster`; one large image cut
into blocks is :mod:`.distributed_blocks`.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from distributed import Client, as_completed, get_worker

from napari_attention_unet.core.predict import PredictOptions
from napari_attention_unet.large_data.pipeline import result_paths

if TYPE_CHECKING:
    import torch

    from napari_attention_unet.core.model import AttentionUNet

__all__ = [
    "FileResult",
    "ModelSpec",
    "PredictOptions",
    "model_spec",
    "predict_batch",
    "predict_file",
    "result_paths",
    "submit_files",
    "worker_model",
]


@dataclass(frozen=True)
class ModelSpec:
    """What a worker needs to load a model: a bundled name or an absolute file path, and the device."""

    source: str
    device: str = "auto"


@dataclass(frozen=True)
class FileResult:
    """What a worker reports for one file: where it wrote, or why it could not."""

    path: Path
    labels_path: Path | None = None
    attention_path: Path | None = None
    objects: int = 0
    device: str = ""
    worker: str = ""
    seconds: float = 0.0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def model_spec(name_or_path: str | os.PathLike | None, device: str = "auto") -> ModelSpec:
    """Resolve a model on the client; raises the registry's errors if it does not exist.

    A bundled model travels by name (each worker has the package, hence the file); any
    other model by its absolute path, which every worker must be able to read.
    """
    from napari_attention_unet.models.registry import resolve_model

    info = resolve_model(name_or_path)
    source = info.name if info.bundled else str(Path(info.path).resolve())
    return ModelSpec(source, device)


# One inference copy per (file, device) in each worker process, shared by the worker's threads.
_MODELS: dict[tuple, tuple[AttentionUNet, AttentionUNet, torch.device]] = {}
_MODELS_LOCK = threading.Lock()


def _worker_device(preference: str) -> torch.device:
    """The device on this process; with several GPUs, local workers take them in turn."""
    import torch

    from napari_attention_unet.core.device import pick_device

    device = pick_device(preference)
    if device.type == "cuda" and device.index is None and torch.cuda.device_count() > 1:
        try:
            name = get_worker().name
        except ValueError:  # not on a dask worker
            return device
        index = name if isinstance(name, int) else sum(map(ord, str(name)))
        device = torch.device("cuda", index % torch.cuda.device_count())
    return device


def worker_model(spec: ModelSpec) -> tuple[AttentionUNet, AttentionUNet, torch.device]:
    """``(model, inference copy, device)`` for ``spec``, loaded once per process.

    The cache key includes the file's size and modification time, so a model file that
    is overwritten (a new fine-tuned version under the same path) is loaded again.
    """
    from napari_attention_unet.core.predict import prepare_model
    from napari_attention_unet.core.weights import load_model
    from napari_attention_unet.models.registry import resolve_model

    path = Path(resolve_model(spec.source).path)
    device = _worker_device(spec.device)
    stat = path.stat()
    key = (str(path), stat.st_mtime_ns, stat.st_size, str(device))
    with _MODELS_LOCK:
        if key not in _MODELS:
            model, _meta = load_model(path)
            _MODELS[key] = (model, prepare_model(model, device), device)
        return _MODELS[key]


def predict_file(
    image_path: Path,
    out_dir: Path,
    spec: ModelSpec,
    options: PredictOptions,
    time_point: int | None = None,
    default_spacing: tuple[float, ...] | None = None,
    orientation: str | None = None,
) -> FileResult:
    """Read, predict and write one file (a dask task; runs anywhere). ``time_point``, ``default_spacing``
    and ``orientation``: as :func:`~napari_attention_unet.large_data.pipeline.predict_file_steps`.

    An unreadable file, an image the model cannot take, or a model or device this worker
    does not have becomes a :class:`FileResult` with ``error`` set, so one bad file
    neither stops the batch nor floods the worker's log; other failures (out of memory,
    a bug) propagate to the client.
    """
    from napari_attention_unet.core.images import ImageShapeError
    from napari_attention_unet.core.predict import run_to_end
    from napari_attention_unet.large_data.files import ImageReadError
    from napari_attention_unet.large_data.pipeline import predict_file_steps
    from napari_attention_unet.models.registry import ModelFileError, ModelNotFoundError

    start = time.perf_counter()
    worker = _worker_name()
    try:
        model, net, device = worker_model(spec)
    except (ModelNotFoundError, ModelFileError, RuntimeError) as exc:  # RuntimeError: no such device here
        return FileResult(Path(image_path), worker=worker, error=f"on worker {worker}: {exc}")
    try:
        steps = predict_file_steps(
            model,
            Path(image_path),
            Path(out_dir),
            options,
            device=device,
            inference_model=net,
            time_point=time_point,
            default_spacing=default_spacing,
            orientation=orientation,
        )
        result = run_to_end(steps)
    except (ImageReadError, ImageShapeError, ValueError) as exc:
        return FileResult(Path(image_path), worker=worker, error=str(exc))
    labels_path, attention_path = result_paths(Path(out_dir), Path(image_path), time_point)
    return FileResult(
        Path(image_path),
        labels_path,
        attention_path,
        objects=int(result.labels.max(initial=0)) if options.instances else 0,
        device=result.device,
        worker=worker,
        seconds=time.perf_counter() - start,
    )


def _worker_name() -> str:
    try:
        return str(get_worker().name)
    except ValueError:
        return "local"


def submit_files(
    client: Client, paths: Sequence[Path], out_dir: Path, spec: ModelSpec, options: PredictOptions, **reading
):
    """One future per file; keys are unique, so the same file predicted again is new work.
    ``reading``: ``time_point``, ``default_spacing`` and ``orientation`` for :func:`predict_file`."""
    batch = uuid.uuid4().hex[:12]
    return [
        client.submit(predict_file, Path(p), Path(out_dir), spec, options, **reading, key=f"predict-file-{batch}-{i}")
        for i, p in enumerate(paths)
    ]


def predict_batch(
    client: Client,
    paths: Sequence[Path],
    out_dir: Path,
    spec: ModelSpec,
    options: PredictOptions,
    *,
    progress: bool = True,
    time_point: int | None = None,
    default_spacing: tuple[float, ...] | None = None,
    orientation: str | None = None,
) -> list[FileResult]:
    """Predict every file on the cluster; returns one :class:`FileResult` per file, in order.

    Files are reported as they finish (tqdm on stderr); a file that fails is reported
    with its reason and the others go on. On Ctrl-C the outstanding tasks are cancelled.
    ``time_point``, ``default_spacing`` and ``orientation``: as for :func:`predict_file`.
    """
    from tqdm import tqdm

    reading = {"time_point": time_point, "default_spacing": default_spacing, "orientation": orientation}
    futures = submit_files(client, paths, out_dir, spec, options, **reading)
    index = {f.key: i for i, f in enumerate(futures)}
    results: list[FileResult | None] = [None] * len(futures)
    try:
        with tqdm(total=len(futures), desc="images", unit="image", disable=not progress, file=sys.stderr) as bar:
            for future in as_completed(futures):
                i = index[future.key]
                try:
                    result = future.result()
                except Exception as exc:  # noqa: BLE001 - a lost worker or a bug fails this file only
                    result = FileResult(Path(paths[i]), error=f"{type(exc).__name__}: {exc}")
                results[i] = result
                if not result.ok:
                    tqdm.write(f"attention-unet: skipping {result.path}: {result.error}", file=sys.stderr)
                bar.update(1)
                future.release()
    except KeyboardInterrupt:
        client.cancel(futures)
        raise
    return [r for r in results if r is not None]
