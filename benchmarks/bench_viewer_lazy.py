"""The viewer's block-by-block path on a lazy image: time to the first result on screen, total time, memory.

A ``--size`` x ``--size`` mosaic of real DSB 2018 content (``bench_scale.large_mosaic``) is
written to a zarr array (chunks of 1024 px) and opened as a napari Image layer in a
headless ``ViewerModel`` whose canvas is ``--canvas`` px square at zoom 1, centred on
``--centre``. Each configuration runs in its own child process (peak RSS alone):

- ``lazy``: what the widget does (``_lazy.LazyRun`` on the zarr layer, result layers on
  zarr made by ``_layers.apply_results``), driven here in one thread, with every result
  layer refreshed after every block (the worst case: the widget refreshes at most once a
  second, on its main thread). Reports the time to the first block (the one under the
  view's centre), to the last block meeting the view, and to the end (stitching included).
- ``in-memory``: the widget's path for small numpy images, ``Session.predict`` on the whole
  image read into memory; nothing is shown before it ends.

    python benchmarks/bench_viewer_lazy.py [--size 4096] [--block-size 1024] [--canvas 1000] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scale import RESULT, large_mosaic, peak_rss  # noqa: E402


def child(config: dict) -> dict:
    import torch
    import zarr

    from napari_attention_unet.core.predict import run_to_end
    from napari_attention_unet.gui.session import Session

    if config["threads"]:
        torch.set_num_threads(config["threads"])
    image = zarr.open_array(config["store"], mode="r")
    session = Session(device="cpu")
    session.load_model("nuclei")
    start = time.perf_counter()
    if config["mode"] == "in-memory":
        result = run_to_end(session.predict(np.asarray(image)))
        total = time.perf_counter() - start
        return {"first_s": total, "view_s": total, "total_s": total, "objects": int(result.labels.max())}

    from napari.components import ViewerModel

    from napari_attention_unet.gui import layers as _layers
    from napari_attention_unet.gui import lazy as _lazy
    from napari_attention_unet.gui import scratch as _scratch

    viewer = ViewerModel()
    viewer.canvas.size = (config["canvas"], config["canvas"])
    layer = viewer.add_image(image, name="slide", contrast_limits=(0, 255))
    viewer.scene.camera.center = tuple(config["centre"])
    viewer.scene.camera.zoom = 1.0
    view = _lazy.view_box(viewer, layer)
    run = _lazy.LazyRun(
        session, _lazy.LazyImage.from_layer(layer), _scratch.ScratchStores(), view=view, block_size=config["block_size"]
    )
    placement = _layers.placement_from_layer(layer)
    shown = _layers.apply_results(
        viewer.layers, _layers.lazy_result_layers(run.outputs, placement, "nuclei"), placement
    )
    in_view = sum(1 for b in run.order if _meets(b, view))
    times, refresh_s = [], 0.0
    steps = run.steps()
    try:
        while True:
            if next(steps).refresh:
                times.append(time.perf_counter() - start)
                t = time.perf_counter()
                for result_layer in shown:
                    result_layer.refresh()
                refresh_s += time.perf_counter() - t
    except StopIteration as stop:
        outcome = stop.value
    total = time.perf_counter() - start
    return {
        "first_s": times[0],
        "view_s": times[in_view - 1],
        "total_s": total,
        "objects": outcome.n_objects,
        "blocks": len(run.order),
        "blocks_in_view": in_view,
        "first_block": list(run.order[0].index),
        "refresh_s": refresh_s,
    }


def _meets(block, box) -> bool:
    (y0, y1), (x0, x1) = box
    (a0, a1), (b0, b1) = block.core
    return a0 <= y1 and y0 < a1 and b0 <= x1 and x0 < b1


def run_child(config: dict) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(config)], capture_output=True, text=True, check=False
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith(RESULT)]
    if out.returncode or not lines:
        sys.exit(f"child {config['mode']} failed:\n{out.stderr[-3000:]}")
    return json.loads(lines[-1][len(RESULT) :])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--block-size", type=int, default=1024)
    parser.add_argument("--canvas", type=int, default=1000, help="canvas side in screen px (zoom 1)")
    parser.add_argument(
        "--centre", type=float, nargs=2, default=None, help="view centre (y x), default: 3/8 of the side"
    )
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        config = json.loads(args.child)
        result = child(config)
        result["peak_rss_gb"] = peak_rss() / 1e9
        print(RESULT + json.dumps(result), flush=True)
        return

    import zarr

    centre = args.centre or [args.size * 3 / 8, args.size * 5 / 8]
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["NAPARI_ATTENTION_UNET_HOME"] = tmp  # scratch stores in the temp dir, removed at the end
        store = str(Path(tmp) / "slide.zarr")
        mosaic = large_mosaic(args.size)
        zarr.create_array(store, data=mosaic, chunks=(1024, 1024))
        del mosaic
        common = {"store": store, "threads": args.threads, "block_size": args.block_size, "canvas": args.canvas}
        rows = {mode: run_child({**common, "mode": mode, "centre": centre}) for mode in ("lazy", "in-memory")}
    mp = args.size**2 / 1e6
    print(f"{args.size}x{args.size} ({mp:.1f} MP) zarr image, bundled model, CPU, blocks of {args.block_size} px")
    lazy = rows["lazy"]
    print(
        f"view {args.canvas} px square at zoom 1 around {centre}: {lazy['blocks_in_view']} of {lazy['blocks']} "
        f"blocks, first block {tuple(lazy['first_block'])}"
    )
    print("| path | first result on screen (s) | view done (s) | all done (s) | MP/s | peak RSS (GB) | objects |")
    print("|---|---|---|---|---|---|---|")
    for mode, row in rows.items():
        print(
            f"| {mode} | {row['first_s']:.1f} | {row['view_s']:.1f} | {row['total_s']:.1f} | "
            f"{mp / row['total_s']:.2f} | {row['peak_rss_gb']:.2f} | {row['objects']} |"
        )
    print(f"layer refreshes after each block (lazy): {lazy['refresh_s']:.2f} s in all")


if __name__ == "__main__":
    main()
