"""What a MONAI user runs instead of ``attention-unet predict``: one image file in, probabilities out.

The whole-process reference of ``bench_predict.py --processes``. It imports only what such a
script needs (numpy, torch, tifffile, MONAI), reads a TIFF, normalises it with the 1 / 99.8
percentiles (as ours does), runs MONAI's ``AttentionUnet`` (16..256 channels, randomly initialised:
its speed does not depend on the weights) with ``sliding_window_inference``, and writes the
softmax class probabilities as a float32 TIFF, plainly, as a user would.

    python benchmarks/monai_predict_file.py IMAGE.tif OUT.tif [--tuned] [--bf16]

``--tuned`` is what a MONAI user who tunes for the CPU writes: channels-last, 512 px windows
with overlap 0.125 (``--bf16``: with bf16 autocast, for CPUs that run it natively); else 256 px
windows, overlap 0.25, batches of 4 windows.
"""

from __future__ import annotations

import argparse
import warnings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image")
    parser.add_argument("out")
    parser.add_argument("--tuned", action="store_true")
    parser.add_argument("--bf16", action="store_true")
    args = parser.parse_args()

    import numpy as np
    import tifffile
    import torch
    from monai.inferers import sliding_window_inference
    from monai.networks.nets import AttentionUnet

    warnings.filterwarnings("ignore", category=UserWarning, module="monai")
    image = tifffile.imread(args.image).astype(np.float32)
    lo, hi = np.percentile(image, [1.0, 99.8])
    x = torch.from_numpy(((image - lo) / max(hi - lo, 1e-6)).astype(np.float32))[None, None].repeat(1, 3, 1, 1)
    torch.manual_seed(0)
    net = AttentionUnet(
        spatial_dims=2, in_channels=3, out_channels=3, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2)
    ).eval()
    roi, overlap, batch = (512, 0.125, 1) if args.tuned else (256, 0.25, 4)
    if args.tuned:
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
        logits = sliding_window_inference(x, roi, batch, net, overlap=overlap, mode="gaussian")
        probs = torch.softmax(logits.float(), dim=1)[0].numpy()
    tifffile.imwrite(args.out, probs)


if __name__ == "__main__":
    main()
