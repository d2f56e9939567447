"""Peak memory of predicting a volume whole with a 3D model, against ``core.memory``'s estimate.

Each case runs in a fresh process (``ru_maxrss`` only grows): a new 3D model as ``train --dims 3`` makes it
(``SCRATCH[3]``, random weights: memory does not depend on them), a random uint16 volume, and
``core.predict.predict`` with the given voxel size; the peak resident memory above the process's before the
call is compared with :func:`core.memory.volume_prediction_bytes` (the dock and ``predict`` refuse a volume
whose estimate is over 80 % of the memory available).

    python benchmarks/bench_memory.py [--cases 32x128x128:1,1,1 64x256x256:1,1,1 64x256x256:2,1,1] [--task semantic]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys
import numpy as np, torch
torch.set_num_threads(2)
from napari_attention_unet.core.memory import volume_prediction_bytes
from napari_attention_unet.core.predict import predict, run_to_end
from napari_attention_unet.core.resampling import grid_zoom, isotropic_shape
from napari_attention_unet.core.train.start import new_model, task_classes
shape, spacing, task = json.loads(sys.argv[1])
classes = task_classes(task, 2) if task == "semantic" else task_classes("instances", None)
model = new_model(task, classes, 3, 1, "scratch").eval()
volume = (np.random.default_rng(0).random(shape) * 1000).astype(np.uint16)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
run_to_end(predict(model, volume, axes="ZYX", spacing=spacing, device="cpu"))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
zoom = grid_zoom(spacing, 3, model.config.voxel_size)
grid = shape if zoom is None else isotropic_shape(shape, zoom)
c = model.config
estimate = volume_prediction_bytes(shape, grid, channels=1, classes=c.out_channels, gates=len(c.gate_names),
                                   base_width=c.base_width, instances=task == "instances")
print(json.dumps({"peak": peak, "estimate": estimate, "voxels": int(np.prod(shape))}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=["32x128x128:1,1,1", "64x256x256:1,1,1", "64x256x256:2,1,1"])
    parser.add_argument("--task", default="semantic", choices=("semantic", "instances"))
    args = parser.parse_args()
    print(f"{'volume':<14} {'spacing':<10} {'measured peak':>14} {'estimate':>10} {'estimate / measured':>20}")
    for case in args.cases:
        shape_text, spacing_text = case.split(":")
        shape = [int(n) for n in shape_text.split("x")]
        spacing = [float(v) for v in spacing_text.split(",")]
        done = subprocess.run(
            [sys.executable, "-c", CHILD, json.dumps([shape, spacing, args.task])], capture_output=True, text=True
        )
        if done.returncode:
            sys.exit(done.stderr[-2000:])
        r = json.loads(done.stdout.strip().splitlines()[-1])
        print(
            f"{shape_text:<14} {spacing_text:<10} {r['peak'] / 1e6:11.0f} MB {r['estimate'] / 1e6:7.0f} MB "
            f"{r['estimate'] / r['peak']:20.2f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
