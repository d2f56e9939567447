"""Batch prediction on dask: speed-up with 1, 2 and 4 local worker processes.

A batch of real DSB 2018 files (default 50, every kind and size, chosen by sorted id
at even steps so every run sees the same files) is predicted by ``attention-unet
predict``'s two engines, each reading the files and writing ``<stem>_labels.tif`` and
``<stem>_attention.tif``:

- in-process: the single-process loop (one model, torch on every core);
- dask: :func:`napari_attention_unet.large_data.distributed.predict_batch` on a ``LocalCluster``
  of N worker processes (one task at a time per worker, torch on cores / N threads).

    python benchmarks/bench_distributed.py [--files 50] [--workers 1 2 4] [--repeats 1] [--model nuclei]

For dask, the cluster start and the model load and warm-up on each worker are timed
apart from the batch (``start``), since a long-lived cluster pays them once; the
in-process run is warmed up the same way. Ratios are
batch throughput against the 1-worker run of the same invocation (and the in-process
one against it too).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scale import batch_files  # noqa: E402

from napari_attention_unet.core.predict import PredictOptions  # noqa: E402
from napari_attention_unet.large_data.cluster import dask_client, usable_cores  # noqa: E402
from napari_attention_unet.large_data.distributed import model_spec, predict_batch, predict_file, worker_model  # noqa: E402


def warm_up(spec) -> None:
    """Load the model and run it once on a small image: first calls pay one-time costs."""
    import numpy as np

    from napari_attention_unet.core.predict import predict, run_to_end

    model, net, device = worker_model(spec)
    image = np.random.default_rng(0).integers(0, 255, (256, 256), dtype=np.uint8)
    run_to_end(predict(model, image, device=device, inference_model=net))


def in_process(files: list[Path], out: Path, spec, options, repeats: int) -> float:
    """The CLI's single-process loop: one model loaded once, then file after file; median seconds."""
    warm_up(spec)  # outside the timing, as for the dask runs
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for path in files:
            result = predict_file(path, out, spec, options)
            assert result.ok, result.error
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def on_dask(files: list[Path], out: Path, spec, options, workers: int, repeats: int) -> tuple[float, float]:
    """(start-up seconds: cluster + model load and warm-up on every worker, median batch seconds)."""
    start = time.perf_counter()
    with dask_client(workers=workers) as client:
        client.run(warm_up, spec)  # every worker loads its model now
        startup = time.perf_counter() - start
        times = []
        for _ in range(repeats):
            begin = time.perf_counter()
            results = predict_batch(client, files, out, spec, options, progress=False)
            times.append(time.perf_counter() - begin)
            failed = [r for r in results if not r.ok]
            assert not failed, failed
    return startup, statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=50)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--model", default=None, help="model name or file (default: the bundled model)")
    parser.add_argument("--repeats", type=int, default=1, help="batches per engine; the median is shown")
    parser.add_argument(
        "--threads", type=int, nargs="+", default=None, help="torch threads for in-process runs (default: all cores)"
    )
    args = parser.parse_args()

    files = batch_files(args.files)
    pixels = sum(_pixels(p) for p in files) / 1e6
    spec = model_spec(args.model, "cpu")
    options = PredictOptions()
    cores = usable_cores()
    print(
        f"{len(files)} DSB 2018 files ({pixels:.2f} MP), model {spec.source}, {platform.machine()} "
        f"{cores} cores, torch {torch.__version__}, python {platform.python_version()}"
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.workers:
            startup, seconds = on_dask(files, Path(tmp) / f"dask-{n}", spec, options, n, args.repeats)
            per_worker = max(1, cores // n)
            rows.append((f"dask, {n} worker(s) x {per_worker} torch thread(s)", startup, seconds))
        for threads in args.threads or [cores]:
            torch.set_num_threads(threads)
            seconds = in_process(files, Path(tmp) / "in-process", spec, options, args.repeats)
            rows.append((f"in-process, {threads} torch thread(s)", None, seconds))
    reference = next((s for name, _, s in rows if name.startswith("dask, 1 ")), rows[0][2])
    print(f"{'engine':42s} {'start':>7s} {'batch':>7s} {'total':>7s} {'files/s':>8s} {'vs 1 worker':>12s}")
    for name, startup, seconds in rows:
        start_text = "-" if startup is None else f"{startup:.1f}s"
        total = seconds + (startup or 0.0)
        ratio = reference / seconds
        print(f"{name:42s} {start_text:>7s} {seconds:6.1f}s {total:6.1f}s {len(files) / seconds:8.2f} {ratio:11.2f}x")


def _pixels(path: Path) -> int:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        shape = tif.pages[0].shape
    return int(shape[0]) * int(shape[1])


if __name__ == "__main__":
    main()
