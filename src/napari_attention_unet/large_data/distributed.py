"""Prediction on ``dask.distributed``: many files at once, one model per worker.

The client (the CLI, a script) never sends a model: it sends a :class:`ModelSpec`, the
bundled model's name or a model file's absolute path. Each worker process loads that model
once, on its own device (CUDA when the worker has a GPU, else MPS, else the CPU), and keeps
the inference copy for every later task (:func:`worker_model`). A task is one file: the
worker reads it, predicts, and writes ``<stem>_labels.tif`` and ``<stem>_attention.tif``
exactly as the single-process ``attention-unet predict`` does, and hands back only a small
:class:`FileResult`.

:func:`dask_client` starts a :class:`~distributed.LocalCluster` of worker processes, or
connects to an existing scheduler, and closes what it started on exit and on Ctrl-C.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from distributed import Client, LocalCluster, WorkerPlugin, as_completed, get_worker

if TYPE_CHECKING:
    import torch

    from napari_attention_unet.core.model import AttentionUNet

__all__ = [
    "FileResult",
    "LargeResult",
    "ModelSpec",
    "PredictOptions",
    "SchedulerUnreachableError",
    "TorchThreads",
    "block_sinks",
    "dask_client",
    "local_cluster",
    "model_spec",
    "predict_batch",
    "predict_file",
    "predict_large",
    "result_paths",
    "submit_files",
    "worker_model",
]

PLUGIN_NAME = "napari-attention-unet-threads"


class SchedulerUnreachableError(ConnectionError):
    """No dask scheduler answered at the address given."""


@dataclass(frozen=True)
class ModelSpec:
    """What a worker needs to load a model: a bundled name or an absolute file path, and the device."""

    source: str
    device: str = "auto"


@dataclass(frozen=True)
class PredictOptions:
    """The per-image settings of ``attention-unet predict`` (see :func:`~.core.predict.predict`)."""

    axes: str | None = None
    tile_size: int | None = None
    instances: bool = True
    precision: str = "auto"


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


def result_paths(out_dir: Path, image_path: Path) -> tuple[Path, Path]:
    """Where ``attention-unet predict`` writes an image's labels and attention maps."""
    stem = Path(image_path).name.split(".")[0]
    return out_dir / f"{stem}_labels.tif", out_dir / f"{stem}_attention.tif"


def predict_file(image_path: Path, out_dir: Path, spec: ModelSpec, options: PredictOptions) -> FileResult:
    """Read, predict and write one file (a dask task; runs anywhere).

    An unreadable file, an image the model cannot take, or a model or device this worker
    does not have becomes a :class:`FileResult` with ``error`` set, so one bad file
    neither stops the batch nor floods the worker's log; other failures (out of memory,
    a bug) propagate to the client.
    """
    from napari_attention_unet.core.images import ImageShapeError
    from napari_attention_unet.core.predict import predict, run_to_end
    from napari_attention_unet.large_data.files import ImageReadError, read_image, write_attention, write_labels
    from napari_attention_unet.models.registry import ModelFileError, ModelNotFoundError

    start = time.perf_counter()
    worker = _worker_name()
    try:
        model, net, device = worker_model(spec)
    except (ModelNotFoundError, ModelFileError, RuntimeError) as exc:  # RuntimeError: no such device here
        return FileResult(Path(image_path), worker=worker, error=f"on worker {worker}: {exc}")
    try:
        image = read_image(image_path)
        result = run_to_end(
            predict(
                model,
                image,
                axes=options.axes,
                device=device,
                tile_size=options.tile_size,
                instances=options.instances,
                precision=options.precision,
                inference_model=net,
            )
        )
    except (ImageReadError, ImageShapeError, ValueError) as exc:
        return FileResult(Path(image_path), worker=worker, error=str(exc))
    labels_path, attention_path = result_paths(Path(out_dir), Path(image_path))
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    write_labels(labels_path, result.labels)
    write_attention(attention_path, result.gate_maps, result.spatial_axes)
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


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


class TorchThreads(WorkerPlugin):
    """Give torch this worker's share of the cores.

    The nanny starts workers with ``OMP_NUM_THREADS=1``, which would leave torch one
    thread per worker even where a worker has several cores to itself.
    """

    name = PLUGIN_NAME

    def __init__(self, threads: int) -> None:
        self.threads = threads

    def setup(self, worker) -> None:
        import torch

        torch.set_num_threads(self.threads)


def local_cluster(workers: int, *, memory_limit: str | float = "auto", host: str = "127.0.0.1") -> LocalCluster:
    """``workers`` worker processes with one thread each, listening on ``host`` only, no dashboard.

    The scheduler's HTTP server (health and metrics) still runs; it gets a free port
    instead of 8787, so a second cluster on the machine neither clashes nor warns.
    """
    return LocalCluster(
        n_workers=workers,
        threads_per_worker=1,
        processes=True,
        host=host,
        dashboard_address=None,
        scheduler_kwargs={"dashboard": False, "dashboard_address": f"{host}:0"},
        memory_limit=memory_limit,
        silence_logs=logging.ERROR,  # no worker-state warnings on the terminal when Ctrl-C cancels tasks
    )


@contextmanager
def dask_client(
    scheduler: str | None = None,
    workers: int | None = None,
    *,
    memory_limit: str | float = "auto",
    host: str = "127.0.0.1",
) -> Iterator[Client]:
    """A :class:`distributed.Client`, closed (with any cluster it started) on exit.

    With ``scheduler`` (an address such as ``tcp://10.0.0.5:8786``) it connects to that
    cluster, whose workers keep their own thread settings. Otherwise it starts a local
    cluster of ``workers`` processes (default: one per core) on ``host``, without a
    dashboard. Each local worker runs one task at a time, so one model's activations
    are in memory per worker, and torch gets the worker's share of the cores.
    """
    if scheduler is not None:
        try:
            client = Client(scheduler)
        except (OSError, TimeoutError) as exc:
            raise SchedulerUnreachableError(f"could not reach the dask scheduler {scheduler}: {exc}") from exc
        try:
            yield client
        finally:
            client.close()
        return
    cores = usable_cores()
    n = workers if workers is not None else cores
    if n < 1:
        raise ValueError(f"--workers must be at least 1, got {n}")
    cluster = local_cluster(n, memory_limit=memory_limit, host=host)
    try:
        client = Client(cluster)
        try:
            client.register_plugin(TorchThreads(max(1, cores // n)), name=PLUGIN_NAME)
            yield client
        finally:
            client.close()
    finally:
        cluster.close()


def submit_files(client: Client, paths: Sequence[Path], out_dir: Path, spec: ModelSpec, options: PredictOptions):
    """One future per file; keys are unique, so the same file predicted again is new work."""
    batch = uuid.uuid4().hex[:12]
    return [
        client.submit(predict_file, Path(p), Path(out_dir), spec, options, key=f"predict-file-{batch}-{i}")
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
) -> list[FileResult]:
    """Predict every file on the cluster; returns one :class:`FileResult` per file, in order.

    Files are reported as they finish (tqdm on stderr); a file that fails is reported
    with its reason and the others go on. On Ctrl-C the outstanding tasks are cancelled.
    """
    from tqdm import tqdm

    futures = submit_files(client, paths, out_dir, spec, options)
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


# --------------------------------------------------------------------------- one large image, block by block


@dataclass(frozen=True)
class LargeResult:
    """What :func:`predict_large` wrote for one image: ``n_objects`` stitched objects in ``blocks`` blocks."""

    path: Path
    labels: object
    attention: object
    n_objects: int
    blocks: int
    seconds: float


def _open_source(source):
    """A path is opened lazily where the task runs (a worker reads only its block); arrays pass through."""
    from napari_attention_unet.large_data.files import open_lazy_image

    return open_lazy_image(source)[0] if isinstance(source, str) else source


def _predict_block_task(source, block, plan, spec: ModelSpec, normalization, options, sinks):
    """One block on a worker: read its outer region, predict, write its core; returns the small links."""
    from dataclasses import replace

    from napari_attention_unet.large_data.blocks import predict_block, write_block

    source = _open_source(source)
    model, net, device = worker_model(spec)
    result = predict_block(
        source, block, plan, model, normalization, replace(options, device=str(device)), inference_model=net
    )
    write_block(result, sinks)
    return result.links


def _normalization_task(source, plan, in_channels: int):
    from napari_attention_unet.large_data.blocks import global_normalization

    return global_normalization(_open_source(source), plan, in_channels)


def block_sinks(out: Path, stem: str, plan, gate_names: Sequence[str], instances: bool = True):
    """Where a large image's blocks go: ``out/<stem>/{labels,attention,probability}`` in a ``.zarr`` ``out``,
    else ``out/<stem>_labels.tif`` and ``out/<stem>_attention.tif`` (uncompressed, written in place)."""
    from napari_attention_unet.large_data.files import create_tiff_sinks, create_zarr_sinks

    out = Path(out)
    if out.suffix.lower() == ".zarr":
        return create_zarr_sinks(out, stem, plan.shape, gate_names, plan.chunk_size(), instances)
    out.mkdir(parents=True, exist_ok=True)
    return create_tiff_sinks(out, stem, plan.shape, gate_names)


def predict_large(
    client: Client,
    image_path: Path,
    out: Path,
    spec: ModelSpec,
    config,
    *,
    axes: str | None = None,
    block_size: int = 2048,
    options: PredictOptions = PredictOptions(),
    progress: bool = True,
) -> LargeResult:
    """Predict one large image block by block on the cluster (the engine of ``core.blocks``).

    The workers read their blocks straight from ``image_path`` (a TIFF or zarr / OME-Zarr;
    other formats are read by the client and scattered) and write their cores into
    the arrays of :func:`block_sinks` under ``out`` (a folder, or a ``.zarr`` store), which
    every worker must reach (on several machines: a shared file system or object store);
    only each block's small link bands come back. The client stitches them
    (:class:`~.core.blocks.Stitcher`) as blocks finish, then the workers relabel their
    blocks with the global ids. ``config`` is the model's :class:`~.core.model.ModelConfig`.
    """
    from tqdm import tqdm

    from napari_attention_unet.large_data.blocks import BlockOptions, Stitcher, plan_blocks, relabel_block
    from napari_attention_unet.large_data.files import TIFF_SUFFIXES, is_zarr_path, open_lazy_image, read_image

    start = time.perf_counter()
    if Path(image_path).suffix.lower() in TIFF_SUFFIXES or is_zarr_path(image_path):
        source, file_axes = open_lazy_image(image_path)
        source_arg = str(image_path)  # each worker opens it and reads its own blocks
    else:  # PNG, JPEG: read here once, shared with the workers
        source, file_axes = read_image(image_path), None
        source_arg = client.scatter(source, broadcast=False)
    plan = plan_blocks(source.shape, axes or file_axes, block_size=block_size)
    sinks = block_sinks(out, Path(image_path).name.split(".")[0], plan, config.gate_names, options.instances)
    block_options = BlockOptions(
        gates=tuple(config.gate_names),
        instances=options.instances,
        tile_size=options.tile_size,
        precision=options.precision,
        device=spec.device,
    )
    normalization = client.submit(_normalization_task, source_arg, plan, config.in_channels, pure=False).result()
    blocks = plan.blocks
    futures = [
        client.submit(_predict_block_task, source_arg, b, plan, spec, normalization, block_options, sinks, pure=False)
        for b in blocks
    ]
    stitcher = Stitcher(plan)
    try:
        with tqdm(
            total=len(blocks), desc=Path(image_path).name, unit="block", disable=not progress, file=sys.stderr
        ) as bar:
            for future in as_completed(futures):
                stitcher.add(future.result())
                future.release()
                bar.update(1)
            n_objects = 0
            if options.instances:
                bar.set_postfix_str("relabelling")
                stitching = stitcher.finish()
                n_objects = stitching.n_objects
                futures = [
                    client.submit(relabel_block, sinks.labels, b, stitching.lut(b.index), pure=False) for b in blocks
                ]
                client.gather(futures)
    except BaseException:  # Ctrl-C, or a block failed: stop the blocks still queued or running
        client.cancel(futures)
        raise
    return LargeResult(
        Path(image_path), sinks.labels, sinks.attention, n_objects, len(blocks), time.perf_counter() - start
    )
