"""NIfTI volumes stored in another orientation than the training volumes: the CLI as a user runs it.

Data: ``../shared/data/msd_hippocampus_dev`` (Medical Segmentation Decathlon Task04, CC-BY-SA 4.0, 1 mm
voxels; read in place). The volumes sorted by name are split into the first ``--n-train`` for training and
the next ``--n-test`` for scoring; every one is written as NIfTI (nibabel) into a temporary folder, the
training ones ``RAS``, the test ones in each of ``--orientations`` (``RAS`` as trained; ``LAS`` and
``RPS``: one axis flipped; ``PSR``: stored in sagittal slices), with the affine that keeps each voxel at
the same place in the world (``nibabel``'s ``as_reoriented``, not our code). Then, as whole processes:

    attention-unet train --image ... --labels ... --out model.safetensors --task semantic --dims 3 --minutes M
    attention-unet predict TEST.nii.gz --model model.safetensors --out DIR

once with the model as written (it records the orientation of its training volumes) and once with a copy
whose info lacks it (what every model was before, and what a TIFF-trained one is). Each label map is
brought back to ``RAS`` by nibabel and scored against the truth: Dice per class, mean over volumes.

    python benchmarks/bench_orientation.py [--minutes 3] [--n-train 10] [--n-test 10] [--orientations RAS,LAS,RPS,PSR]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DATA  # noqa: E402

MSD = DATA / "msd_hippocampus_dev"


def write_volume(path: Path, zyx: np.ndarray, orientation: str) -> None:
    """``zyx`` (a RAS volume in napari's order) stored in ``orientation``, each voxel where it was in the world."""
    import nibabel as nib

    image = nib.Nifti1Image(np.ascontiguousarray(np.transpose(zyx)), np.eye(4))
    image.set_qform(np.eye(4), code="scanner")
    turn = nib.orientations.ornt_transform(
        nib.orientations.axcodes2ornt("RAS"), nib.orientations.axcodes2ornt(orientation)
    )
    image = image.as_reoriented(turn)
    assert nib.aff2axcodes(image.affine) == tuple(orientation)
    nib.save(image, str(path))


def read_as_ras(path: Path) -> np.ndarray:
    import nibabel as nib

    image = nib.load(str(path))
    turn = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(image.affine), nib.orientations.axcodes2ornt("RAS")
    )
    return np.transpose(np.asarray(image.as_reoriented(turn).dataobj))


def dice(prediction: np.ndarray, truth: np.ndarray, value: int) -> float:
    a, b = prediction == value, truth == value
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * (a & b).sum() / total)


def cli(*args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "napari_attention_unet.cli", *args], capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"attention-unet {args[0]} failed:\n{done.stderr[-3000:]}")
    notes = [line for line in done.stderr.splitlines() if "stored" in line]
    for line in notes[:1]:
        print(f"    ({line.strip()})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--n-train", type=int, default=10)
    parser.add_argument("--n-test", type=int, default=10)
    parser.add_argument("--orientations", default="RAS,LAS,RPS,PSR")
    args = parser.parse_args()
    import tifffile

    from napari_attention_unet.core.weights import load_model, save_model

    if not (MSD / "images").is_dir():
        sys.exit(f"benchmark data not found: expected the MSD hippocampus volumes at {MSD}")
    names = sorted(p.stem for p in (MSD / "images").glob("*.tif"))
    train, test = names[: args.n_train], names[args.n_train : args.n_train + args.n_test]
    orientations = args.orientations.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pairs = []
        for name in train:
            image, labels = (tifffile.imread(MSD / kind / f"{name}.tif") for kind in ("images", "masks"))
            write_volume(tmp / f"{name}.nii.gz", image.astype(np.float32), "RAS")
            write_volume(tmp / f"{name}_truth.nii.gz", labels.astype(np.uint8), "RAS")
            pairs += ["--image", str(tmp / f"{name}.nii.gz"), "--labels", str(tmp / f"{name}_truth.nii.gz")]
        model = tmp / "model.safetensors"
        print(f"training on {len(train)} RAS volumes for {args.minutes:g} min ...", flush=True)
        cli("train", *pairs, "--out", str(model), "--task", "semantic", "--dims", "3", "--minutes", str(args.minutes))
        net, info = load_model(model)
        print(f"model info orientation: {info.get('orientation')!r}")
        unaware = tmp / "unaware.safetensors"
        save_model(net, unaware, info={k: v for k, v in info.items() if k != "orientation"})
        truths = {name: tifffile.imread(MSD / "masks" / f"{name}.tif") for name in test}
        print(f"\n{'stored as':<10} {'model':<28} {'anterior':>9} {'posterior':>10} {'mean':>6}")
        for orientation in orientations:
            folder = tmp / orientation
            folder.mkdir()
            for name in test:
                image = tifffile.imread(MSD / "images" / f"{name}.tif").astype(np.float32)
                write_volume(folder / f"{name}.nii.gz", image, orientation)
            inputs = [str(folder / f"{name}.nii.gz") for name in test]
            for label, path in (("records its orientation", model), ("no orientation in its info", unaware)):
                out = folder / path.stem
                cli("predict", *inputs, "--model", str(path), "--out", str(out))
                scores = np.array(
                    [
                        [dice(read_as_ras(out / f"{name}_labels.nii.gz"), truths[name], c) for c in (1, 2)]
                        for name in test
                    ]
                )
                a, p = scores.mean(axis=0)
                print(f"{orientation:<10} {label:<28} {a:9.3f} {p:10.3f} {(a + p) / 2:6.3f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
