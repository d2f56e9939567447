"""Scale: an 8192x8192 image block by block in bounded memory, and a 50-file batch.

Every configuration runs in its own child process, so that its peak resident memory
(``ru_maxrss`` of that process: Python, torch, the model, the input image, the outputs and
the working set) is measured alone:

- ``reference``: ``predict()`` on the 2048x2048 DSB 2018 mosaic of ``bench_predict.py``
  (whole image in memory, instance labels and all gate maps; median of ``--repeats``).
- ``blocks-memory``: ``large_data.blocks.predict_blocks`` on the 8192x8192 mosaic, outputs in
  memory (labels int32, probability and the 4 gate maps float16).
- ``blocks-zarr`` / ``blocks-tiff``: the same, outputs written straight to a zarr store
  (``large_data.files.create_zarr_sinks``) or to memory-mapped TIFFs (``large_data.files.create_tiff_sinks``).
- ``whole`` (``--whole``): ``predict()`` on the whole 8192x8192 image, for comparison.
- ``batch``: ``attention-unet predict`` on ``--files`` DSB 2018 images (every kind and
  size, chosen by sorted id at even steps), as one command.

Throughput (megapixels per second) is compared with the reference measured in the same run.

    python benchmarks/bench_scale.py [--size 8192] [--reference-size 2048] [--block-size 2048]
        [--files 50] [--whole] [--quick] [--only NAME,...]

The 8192x8192 mosaic holds 1024 cells of 256x256 grey fluorescence images (``gray_darkbg``):
the 334 such DSB 2018 images, sorted by id, each used up to 4 times, flipped or rotated.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import dsb2018_mosaic, require_dsb2018  # noqa: E402

RESULT = "RESULT "


def large_mosaic(size: int, tile: int = 256) -> np.ndarray:
    """``size`` x ``size`` uint8 mosaic of grey DSB 2018 images, reused with the 8 flips/rotations."""
    import tifffile

    folder = require_dsb2018()
    with open(folder / "index_train.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["kind"] == "gray_darkbg" and r["height"] == r["width"] == str(tile)]
    ids = sorted(r["id"] for r in rows)
    per_side = size // tile
    mosaic = np.zeros((size, size), np.uint8)
    for k in range(per_side * per_side):
        image = tifffile.imread(folder / "images" / f"{ids[k % len(ids)]}.tif")
        turn = (k // len(ids)) % 8
        image = np.rot90(image, turn % 4)
        image = np.fliplr(image) if turn >= 4 else image
        y, x = divmod(k, per_side)
        mosaic[y * tile : (y + 1) * tile, x * tile : (x + 1) * tile] = image
    return mosaic


def batch_files(count: int) -> list[Path]:
    """``count`` DSB 2018 training images of every kind and size, by sorted id at even steps."""
    folder = require_dsb2018()
    with open(folder / "index_train.csv", newline="") as f:
        ids = sorted(r["id"] for r in csv.DictReader(f))
    chosen = [ids[round(i * (len(ids) - 1) / max(count - 1, 1))] for i in range(count)]
    return [folder / "images" / f"{i}.tif" for i in chosen]


# ----------------------------------------------------------------------------- child side


def current_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def cpu_seconds() -> float:
    """CPU time of this process (all threads): less sensitive than wall time to other work on the machine."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def child(config: dict) -> dict:
    import torch

    from napari_attention_unet.core.predict import predict, prepare_model, run_to_end
    from napari_attention_unet.large_data.blocks import predict_blocks
    from napari_attention_unet.models.registry import open_model

    if config.get("threads"):
        torch.set_num_threads(config["threads"])
    name = config["name"]
    model = open_model()[0]
    net = prepare_model(model, torch.device("cpu"))
    run_to_end(predict(model, np.zeros((512, 512), np.uint8), device="cpu", inference_model=net))  # warm up
    out: dict = {"name": name, "threads": torch.get_num_threads()}

    if name == "batch":
        from napari_attention_unet import cli

        files = [Path(p) for p in config["files"]]
        pixels = 0
        for path in files:
            import tifffile

            shape = tifffile.TiffFile(path).series[0].shape
            pixels += shape[0] * shape[1]
        with tempfile.TemporaryDirectory() as out_dir:
            baseline = current_rss()
            start, cpu = time.perf_counter(), cpu_seconds()
            code = cli.main(["predict", *map(str, files), "--out", out_dir, "--device", "cpu"])
            seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
        out.update(seconds=seconds, cpu=cpu, megapixels=pixels / 1e6, files=len(files), rc=code, baseline=baseline)
        out["peak"] = peak_rss()
        return out

    image = np.load(config["image"])
    out["megapixels"] = image.size / 1e6
    baseline = current_rss()
    if name == "reference" or name == "whole":
        times, cpus = [], []
        for _ in range(config.get("repeats", 1)):
            start, cpu = time.perf_counter(), cpu_seconds()
            result = run_to_end(predict(model, image, device="cpu", inference_model=net))
            times.append(time.perf_counter() - start)
            cpus.append(cpu_seconds() - cpu)
            n_objects = int(result.labels.max())
            del result
        out.update(seconds=statistics.median(times), cpu=statistics.median(cpus), times=times, objects=n_objects)
    else:
        sinks = None
        tmp = tempfile.TemporaryDirectory(dir=config.get("tmp"))
        if name in ("blocks-zarr", "blocks-tiff"):
            from napari_attention_unet.large_data.blocks import plan_blocks
            from napari_attention_unet.large_data.files import create_tiff_sinks, create_zarr_sinks

            plan = plan_blocks(image.shape, block_size=config["block_size"])
            gates = model.config.gate_names
            if name == "blocks-zarr":
                sinks = create_zarr_sinks(Path(tmp.name) / "out.zarr", "mosaic", plan.shape, gates, plan.chunk_size())
            else:
                sinks = create_tiff_sinks(tmp.name, "mosaic", plan.shape, gates)
        start, cpu = time.perf_counter(), cpu_seconds()
        result = run_to_end(
            predict_blocks(
                model, image, sinks=sinks, block_size=config["block_size"], device="cpu", inference_model=net
            )
        )
        out.update(seconds=time.perf_counter() - start, cpu=cpu_seconds() - cpu, objects=result.n_objects)
        if name == "blocks-memory":
            out["output_bytes"] = int(result.labels.nbytes + result.probability.nbytes + result.attention.nbytes)
        tmp.cleanup()
    out["baseline"] = baseline
    out["peak"] = peak_rss()
    return out


# ----------------------------------------------------------------------------- parent side


def run_child(config: dict) -> dict:
    done = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(config)], capture_output=True, text=True, check=False
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT)]
    if done.returncode != 0 or not lines:
        sys.exit(f"configuration {config['name']} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len(RESULT) :])


def gigabytes(n: int) -> str:
    return f"{n / 2**30:5.2f} GB"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=8192, help="side of the large mosaic (multiple of 256)")
    parser.add_argument("--reference-size", type=int, default=2048, help="side of the reference mosaic")
    parser.add_argument("--block-size", type=int, default=2048)
    parser.add_argument("--files", type=int, default=50, help="files in the batch")
    parser.add_argument("--repeats", type=int, default=3, help="reference: timed runs (median shown)")
    parser.add_argument("--whole", action="store_true", help="also predict the large image whole (old path)")
    parser.add_argument("--quick", action="store_true", help="4096 / 1024 / 1024-px blocks / 10 files (smoke test)")
    parser.add_argument("--only", default=None, help="comma-separated configurations to run")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads in every child")
    args = parser.parse_args(argv)
    if args.child:
        print(RESULT + json.dumps(child(json.loads(args.child))), flush=True)
        return
    if args.quick:
        args.size, args.reference_size, args.block_size, args.files, args.repeats = 4096, 1024, 1024, 10, 1
    require_dsb2018()

    import torch

    print(f"torch {torch.__version__}, python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as tmp:
        reference_path, large_path = Path(tmp) / "reference.npy", Path(tmp) / "large.npy"
        np.save(reference_path, dsb2018_mosaic(args.reference_size)[0])
        np.save(large_path, large_mosaic(args.size))
        common = {"threads": args.threads, "block_size": args.block_size, "tmp": tmp}
        configs = [
            {"name": "reference", "image": str(reference_path), "repeats": args.repeats},
            {"name": "blocks-memory", "image": str(large_path)},
            {"name": "blocks-zarr", "image": str(large_path)},
            {"name": "blocks-tiff", "image": str(large_path)},
        ]
        if args.whole:
            configs.append({"name": "whole", "image": str(large_path)})
        configs.append({"name": "batch", "files": [str(p) for p in batch_files(args.files)]})
        if args.only:
            wanted = set(args.only.split(",")) | {"reference"}
            configs = [c for c in configs if c["name"] in wanted]
        print(
            f"reference: predict() on a {args.reference_size}x{args.reference_size} mosaic (median of {args.repeats}); "
            f"large: {args.size}x{args.size} mosaic, blocks of {args.block_size} px, halo 64; bundled model, CPU\n"
        )
        results = []
        for config in configs:
            result = run_child({**common, **config})
            results.append(result)
            print(f"  done {result['name']}: {result['seconds']:.1f} s", file=sys.stderr, flush=True)

    reference = results[0]
    ref_rate = reference["megapixels"] / reference["seconds"]
    ref_cpu_rate = reference["megapixels"] / reference["cpu"]
    columns = (
        ("image", 11),
        ("seconds", 9),
        ("MP/s", 7),
        ("vs ref", 7),
        ("CPU s", 8),
        ("MP/CPU s", 9),
        ("vs ref", 7),
        ("peak RSS", 9),
        ("start RSS", 9),
    )
    print(f"{'configuration':16s} " + " ".join(f"{name:>{width}s}" for name, width in columns))
    for r in results:
        rate = r["megapixels"] / r["seconds"]
        side = int(round((r["megapixels"] * 1e6) ** 0.5))
        image = f"{r['files']} files" if r["name"] == "batch" else f"{side}x{side}"
        cpu_rate = r["megapixels"] / r["cpu"]
        print(
            f"{r['name']:16s} {image:>11s} {r['seconds']:9.2f} {rate:7.3f} {rate / ref_rate:6.2f}x "
            f"{r['cpu']:8.1f} {cpu_rate:9.3f} {cpu_rate / ref_cpu_rate:6.2f}x "
            f"{gigabytes(r['peak']):>9s} {gigabytes(r['baseline']):>9s}"
        )
    for r in results:
        if r["name"] == "batch":
            print(f"\nbatch: {r['files']} files, {r['megapixels']:.2f} MP, {r['seconds'] / r['files']:.3f} s per file")
        if r["name"] == "blocks-memory":
            print(f"blocks-memory: the outputs themselves take {gigabytes(r['output_bytes'])}")
        if "objects" in r and r["name"] != "reference":
            print(f"{r['name']}: {r['objects']} objects")


if __name__ == "__main__":
    main()
