"""End-to-end prediction speed: our tiled Attention U-Net against MONAI's sliding window.

Both sides run a whole process on the same 2048x2048 mosaic of DSB 2018 images
(``--quick``: 1024x1024): percentile normalisation -> network -> stitched class
probabilities as a numpy array. Ours also stitches every attention gate's map and,
in the second figure, turns the probabilities into instance labels (watershed).

    python benchmarks/bench_predict.py [--quick] [--device auto|cpu|cuda] [--repeats 3]
    python benchmarks/bench_predict.py --processes [--size 2048] [--repeats 3]

``--processes`` times whole processes as a user runs them, start-up, reading and writing
included: ``attention-unet predict MOSAIC.tif --out DIR`` (instance labels and every gate map
written as TIFFs) against ``monai_predict_file.py`` (MONAI's network and sliding window, class
probabilities written), plain and CPU-tuned, in turns, after one warm-up turn.

Each measurement is warmed up once, then the median of ``--repeats`` runs is shown.
The ratio is our throughput over MONAI's (above 1 = we are faster). A second MONAI row is
what a MONAI user who tunes for the CPU would run: channels-last, 512 px windows with overlap
0.125, and bf16 autocast where the CPU runs bf16 natively (as our ``precision="auto"``). On CUDA, and
on CPUs with native bf16, a second section runs ours in bf16 (on the CPU against plain MONAI in fp32).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import dsb2018_mosaic, median_seconds  # noqa: E402

from napari_attention_unet.core.device import autocast_dtype, describe_device, pick_device  # noqa: E402
from napari_attention_unet.core.images import match_channels, normalize  # noqa: E402
from napari_attention_unet.core.model import AttentionUNet, count_parameters  # noqa: E402
from napari_attention_unet.core.predict import predict, prepare_model, run_to_end  # noqa: E402

MONAI_ROI = 256
MONAI_OVERLAP = 0.25
#: The CPU-tuned MONAI reference: bigger windows, less overlap (and channels-last, bf16 where native).
TUNED_ROI = 512
TUNED_OVERLAP = 0.125


def load_our_model() -> tuple[AttentionUNet, str]:
    """The bundled default model if it is installed, else a random default-size one."""
    from napari_attention_unet.models.registry import ModelNotFoundError, open_model

    try:
        model, _meta, info = open_model()
        return model, f"bundled model {info.name!r} ({info.path})"
    except ModelNotFoundError:
        torch.manual_seed(0)
        print(
            "note: no bundled model installed; using a randomly initialised default AttentionUNet "
            "(network speed does not depend on the weights, watershed time does)"
        )
        return AttentionUNet(), "random default AttentionUNet"


def monai_model(device: torch.device) -> torch.nn.Module:
    from monai.networks.nets import AttentionUnet

    torch.manual_seed(0)
    net = AttentionUnet(
        spatial_dims=2, in_channels=3, out_channels=3, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2)
    )
    return net.eval().to(device)


def monai_predict(
    net: torch.nn.Module,
    image: np.ndarray,
    device: torch.device,
    amp: torch.dtype | None,
    sw_batch: int,
    roi: int = MONAI_ROI,
    overlap: float = MONAI_OVERLAP,
    channels_last: bool = False,
):
    """MONAI's usual inference: normalise, sliding window (Gaussian blend), softmax, back to numpy."""
    from monai.inferers import sliding_window_inference

    x = torch.from_numpy(normalize(match_channels(image[np.newaxis], 3)))[None].to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast(device.type, dtype=amp, enabled=amp is not None):
        logits = sliding_window_inference(x, roi, sw_batch, net, overlap=overlap, mode="gaussian")
        probs = torch.softmax(logits.float(), dim=1)[0]
    return probs.cpu().numpy()


def count_tiles(model: AttentionUNet, image: np.ndarray, device: torch.device, inference_model: torch.nn.Module) -> int:
    """How many tiles ``predict`` cuts ``image`` into (its first progress report says)."""
    generator = predict(model, image, device=device, instances=False, inference_model=inference_model)
    first = next(generator)
    generator.close()
    return first.total - 1


def ground_truth_probabilities(size: int) -> np.ndarray:
    """(background, interior, boundary) probabilities made from the mosaic's true masks, softened."""
    from scipy import ndimage as ndi

    from napari_attention_unet.core.instances import instances_to_classes

    labels, _ = dsb2018_mosaic(size, masks=True)
    classes = instances_to_classes(labels)
    probs = np.stack([ndi.gaussian_filter((classes == c).astype(np.float32), 1.5) for c in range(3)])
    return probs / probs.sum(axis=0, keepdims=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1024x1024 instead of 2048x2048 (smoke test)")
    parser.add_argument("--size", type=int, default=None, help="mosaic side in pixels (multiple of 256)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after one warm-up (median shown)")
    parser.add_argument("--sw-batch", type=int, default=4, help="MONAI sliding-window batch size")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--processes", action="store_true", help="whole processes, as a user runs them (CPU)")
    args = parser.parse_args(argv)

    warnings.filterwarnings("ignore", category=UserWarning, module="monai")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    size = args.size or (1024 if args.quick else 2048)
    image, _ids = dsb2018_mosaic(size)
    if args.processes:
        return whole_processes(image, args.repeats)
    megapixels = image.size / 1e6

    model, model_name = load_our_model()
    random_weights = model_name.startswith("random")
    ours = prepare_model(model, device)
    theirs = monai_model(device)
    tuned = monai_model(device).to(memory_format=torch.channels_last)
    tuned_amp = autocast_dtype(device, "auto")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    print(f"torch {torch.__version__}, python {platform.python_version()}, {platform.machine()}")
    print(f"device: {describe_device(device)}; torch threads: {torch.get_num_threads()}")
    print(f"image: {size}x{size} uint8 mosaic of {len(_ids)} DSB 2018 images ({megapixels:.2f} MP)")
    print(
        f"ours:  {model_name}, {count_parameters(model) / 1e6:.2f} M parameters; "
        f"{count_tiles(model, image, device, ours)} tiles "
        "(default tiling: up to 576 px fitted to the image, overlap >= 64), gate maps on"
    )
    print(
        f"MONAI: AttentionUnet 16..256, {count_parameters(theirs) / 1e6:.2f} M parameters; "
        f"sliding_window_inference roi {MONAI_ROI}, overlap {MONAI_OVERLAP}, gaussian, sw_batch {args.sw_batch}"
    )
    print(
        f"MONAI tuned: the same network channels-last, roi {TUNED_ROI}, overlap {TUNED_OVERLAP}, "
        f"autocast {tuned_amp or 'off (no native bf16)'}"
    )
    print(f"median of {args.repeats} runs after 1 warm-up\n")

    precisions = [("fp32", None)]
    if device.type == "cuda" or tuned_amp is not None:  # GPUs, and CPUs that run bf16 natively
        precisions.append(("bf16", torch.bfloat16))
    for label, amp in precisions:
        precision = "fp32" if amp is None else "bf16"

        def ours_network(precision=precision):
            return run_to_end(
                predict(model, image, device=device, precision=precision, instances=False, inference_model=ours)
            )

        def ours_full(precision=precision):
            return run_to_end(
                predict(model, image, device=device, precision=precision, instances=True, inference_model=ours)
            )

        def monai(amp=amp if device.type == "cuda" else None):
            # On the CPU "plain MONAI" stays what a user writes first: float32, 256 px windows.
            return monai_predict(theirs, image, device, amp, args.sw_batch)

        def monai_tuned(amp=amp):
            amp = amp or tuned_amp
            return monai_predict(tuned, image, device, amp, 1, TUNED_ROI, TUNED_OVERLAP, channels_last=True)

        rows = []
        for name, fn in [
            ("MONAI sliding window", monai),
            ("MONAI tuned (channels-last, 512 px)", monai_tuned),
            ("ours: network + stitching + gate maps", ours_network),
            ("ours: + instance labels (watershed)", ours_full),
        ]:
            seconds, _ = median_seconds(fn, args.repeats, sync)
            rows.append((name, seconds))
        monai_seconds, tuned_seconds = rows[0][1], rows[1][1]
        print(f"[{label}]")
        for name, seconds in rows:
            ratio = monai_seconds / seconds
            print(
                f"  {name:40s} {seconds:8.3f} s  {megapixels / seconds:7.3f} MP/s  ratio vs MONAI {ratio:5.2f}x"
                f"  vs tuned MONAI {tuned_seconds / seconds:5.2f}x"
            )
        if random_weights:
            # Random weights find (almost) no nuclei, so the watershed above costs next to nothing.
            # Time it on probabilities shaped like real nuclei and add it to the network path.
            from napari_attention_unet.core.instances import probabilities_to_instances

            probs = ground_truth_probabilities(size)
            watershed_seconds, _ = median_seconds(lambda probs=probs: probabilities_to_instances(probs), args.repeats)
            seconds = rows[2][1] + watershed_seconds
            name = "estimate: network path + real watershed"
            print(f"  (watershed on ground-truth-like probabilities: {watershed_seconds:.3f} s)")
            print(
                f"  {name:40s} {seconds:8.3f} s  {megapixels / seconds:7.3f} MP/s  "
                f"ratio vs MONAI {monai_seconds / seconds:5.2f}x"
            )
        print()


def whole_processes(image: np.ndarray, repeats: int) -> None:
    """Each command as its own process, in turns (one warm-up turn first); the median of ``repeats``."""
    import tifffile

    here = Path(__file__).resolve().parent
    cli = Path(sys.executable).parent / "attention-unet"
    ours = [str(cli)] if cli.is_file() else [sys.executable, "-m", "napari_attention_unet.cli"]
    monai = [sys.executable, str(here / "monai_predict_file.py")]
    bf16 = ["--bf16"] if autocast_dtype(torch.device("cpu"), "auto") is not None else []
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "mosaic.tif"
        tifffile.imwrite(source, image)
        commands = {
            "MONAI sliding window (probabilities written)": [*monai, str(source), f"{tmp}/monai.tif"],
            "MONAI tuned (probabilities written)": [*monai, str(source), f"{tmp}/tuned.tif", "--tuned", *bf16],
            "attention-unet predict (labels + gate maps)": [*ours, "predict", str(source), "--out", f"{tmp}/ours"],
        }
        times: dict[str, list[float]] = {name: [] for name in commands}
        for turn in range(repeats + 1):
            for name, command in commands.items():
                start = time.perf_counter()
                subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                if turn:  # the first turn warms the file cache
                    times[name].append(time.perf_counter() - start)
    print(f"torch {torch.__version__}, python {platform.python_version()}, {platform.machine()}")
    print(f"{image.shape[0]}x{image.shape[1]} mosaic, whole processes, median of {repeats} turns\n")
    plain, tuned = (statistics.median(times[name]) for name in list(commands)[:2])
    for name, runs in times.items():
        seconds = statistics.median(runs)
        ratios = f"vs MONAI {plain / seconds:5.2f}x  vs tuned MONAI {tuned / seconds:5.2f}x"
        print(f"  {name:46s} {seconds:7.2f} s  {ratios}")


if __name__ == "__main__":
    main()
