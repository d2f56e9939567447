"""The bundled model's recipe pieces: batches made in worker processes, and weight averaging.

Real DSB2018 test images and tiny networks; no GPU and no ../shared needed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from napari_attention_unet.core.augment import IGNORE
from napari_attention_unet.core.model import AttentionUNet, ModelConfig
from napari_attention_unet.core.train import TrainConfig, prepare_sample
from napari_attention_unet.core.weights import load_model, save_model

TRAINING = Path(__file__).parents[1] / "training"
sys.path.insert(0, str(TRAINING))
from average_models import average  # noqa: E402
from average_models import main as average_main  # noqa: E402
from train_bundled import PatchStream, StreamTrainer, read_index  # noqa: E402

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def samples():
    out = []
    for path in sorted((DATA / "images").glob("*.tif")):
        out.append(prepare_sample(tifffile.imread(path), tifffile.imread(DATA / "masks" / path.name)))
    return out


def _random_model(seed: int, width: int = 4) -> AttentionUNet:
    torch.manual_seed(seed)
    model = AttentionUNet(ModelConfig(base_width=width, depth=3))
    model.train()
    model(torch.rand(2, 3, 32, 32))  # non-trivial batch-norm statistics
    return model.eval()


def test_patch_stream_batches_match_the_trainer_layout(samples):
    config = TrainConfig(patch_size=64, batch_size=3)
    p = np.full(len(samples), 1 / len(samples))
    stream = iter(PatchStream(samples, p, (64, 64), 3, config, seed=0))
    x, y, weights = next(stream)
    assert weights is None  # no weight maps in these samples
    assert x.shape == (3, 3, 64, 64) and x.dtype == torch.float32
    assert y.shape == (3, 64, 64) and y.dtype == torch.uint8
    assert set(np.unique(y.numpy())) <= {0, 1, 2, IGNORE}
    # The same seed gives the same patches; another seed gives others.
    again = next(iter(PatchStream(samples, p, (64, 64), 3, config, seed=0)))[0]
    other = next(iter(PatchStream(samples, p, (64, 64), 3, config, seed=1)))[0]
    assert torch.equal(x, again) and not torch.equal(x, other)


def test_stream_trainer_learns_with_worker_processes():
    # The two fluorescence images, each with a right-hand strip held out for validation.
    paths = sorted((DATA / "images").glob("*.tif"))[:2]
    samples = [
        prepare_sample(tifffile.imread(p), tifffile.imread(DATA / "masks" / p.name), val_fraction=0.25) for p in paths
    ]
    torch.manual_seed(0)
    model = AttentionUNet(ModelConfig(base_width=4, depth=3))
    config = TrainConfig(
        max_steps=40, patch_size=96, batch_size=4, lr=1e-2, warmup_steps=5, eval_every=10, from_scratch=True
    )
    trainer = StreamTrainer(model, config=config, device="cpu", samples=samples, workers=2, stream_seed=0)
    start = trainer.validate()[0]
    losses = [r.loss for r in trainer.run()]
    result = trainer.result()
    assert trainer.step == 40 and len(losses) == 40
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
    assert result.accepted and result.best_val_dice > start


def test_average_is_the_elementwise_mean(tmp_path):
    a, b = _random_model(0), _random_model(1)
    soup = average([a, b])
    for key, value in soup.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, (a.state_dict()[key] + b.state_dict()[key]) / 2)
    logits, _ = soup(torch.rand(1, 3, 32, 32))
    assert logits.shape == (1, 3, 32, 32) and torch.isfinite(logits).all()

    save_model(a, tmp_path / "a.safetensors", info={"steps": 10, "name": "x"})
    save_model(b, tmp_path / "b.safetensors", info={"steps": 12, "name": "x"})
    average_main([str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"), "--out", str(tmp_path / "s")])
    loaded, info = load_model(tmp_path / "s.safetensors")
    assert info["steps"] == [10, 12] and info["name"] == "x" and "average_models.py" in info["recipe"]
    torch.testing.assert_close(loaded.state_dict(), soup.state_dict())


def test_average_refuses_different_architectures_and_a_single_model():
    with pytest.raises(ValueError, match="different architectures"):
        average([_random_model(0), _random_model(0, width=8)])
    with pytest.raises(ValueError, match="at least two"):
        average([_random_model(0)])


def test_bench_finetune_scores_only_images_the_start_model_never_saw():
    """bench_finetune's test pool: the validation split for the bundled model (it trained on every
    kind), every image of a kind that a model made with ``train_bundled.py --kinds`` left out."""
    benchmarks = Path(__file__).parents[1] / "benchmarks"
    sys.path.insert(0, str(benchmarks))
    import bench_finetune

    if not (bench_finetune.DSB2018 / "index_train.csv").is_file():
        pytest.skip(f"DSB 2018 data not found at {bench_finetune.DSB2018} (../shared/data)")
    import json

    split = json.loads((TRAINING / "split.json").read_text())
    kinds = {r["id"]: r["kind"] for r in read_index(bench_finetune.DSB2018)}
    known, where = bench_finetune.unseen_ids("color", {})
    assert known and set(known) <= set(split["validation"]) and "validation" in where
    assert all(kinds[i] == "color" for i in known)
    new, where = bench_finetune.unseen_ids("color", {"kinds": ["gray_darkbg"]})
    assert sorted(new) == sorted(i for i, k in kinds.items() if k == "color") and "never trained" in where
    assert set(known) < set(new) and set(new) & set(split["train"])
    # A model that trained on the kind: back to its validation split.
    assert bench_finetune.unseen_ids("color", {"kinds": ["color", "gray_darkbg"]})[0] == known


def test_grouped_scores_pool_small_groups_and_name_the_worst():
    from evaluate import grouped, groups_of

    rows = [
        {"id": "a", "kind": "color", "height": "256", "width": "320"},
        {"id": "b", "kind": "color", "height": "256", "width": "320"},
        {"id": "c", "kind": "color", "height": "256", "width": "320"},
        {"id": "d", "kind": "gray_darkbg", "height": "512", "width": "640"},
        {"id": "e", "kind": "gray_darkbg", "height": "603", "width": "1272"},
    ]
    groups = groups_of({"validation": ["a", "b", "c", "d", "e"]}, rows)
    assert groups["a"] == "dsb color 256x320"
    # One image of a size is not a group of its own: it pools with its kind's other small sizes.
    assert groups["d"] == groups["e"] == "dsb gray_darkbg other sizes"

    def row(group, ap, tp, fp, fn):
        return {"group": group, "model": {"ap50": ap, "dice": 0.9, "tp": tp, "fp": fp, "fn": fn}}

    scored = [
        row("dsb color 256x320", 0.9, 9, 0, 1),
        row("dsb color 256x320", 0.7, 7, 1, 2),
        row("nuinsseg he 512x512", 0.3, 3, 4, 3),
        row("stress: half scale color", 0.1, 1, 5, 4),
    ]
    out = grouped(scored, ["model"])
    assert out["per_group"]["dsb color 256x320"]["model"] == {
        "n": 2, "ap50": 0.8, "dice": 0.9, "missed": 3, "nuclei": 19, "false": 1,
    }  # fmt: skip
    # The stress group is reported but is neither in the overall figures nor the worst group.
    assert out["overall"]["model"]["n"] == 3 and out["overall"]["model"]["ap50"] == pytest.approx(0.6333, abs=1e-4)
    assert out["groups"]["model"] == {"n_groups": 2, "ap50_mean_over_groups": 0.55}
    assert out["worst_group"]["model"] == {"group": "nuinsseg he 512x512", "ap50": 0.3}
    assert "stress: half scale color" in out["per_group"]
