"""Fine-tuning a 3D semantic model keeps half of its change in weights (TrainConfig.keep_share): on one
corrected MR volume the whole change cost other volumes 0.05-0.14 Dice (benchmarks/bench_finetune_3d.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_attention_unet.core.model import AttentionUNet, ModelConfig
from napari_attention_unet.core.predict import run_to_end
from napari_attention_unet.core.train import TrainConfig, Trainer
from napari_attention_unet.core.train.start import default_train_config

pytestmark = pytest.mark.usefixtures("one_thread")


def volume(shape=(24, 40, 40), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Bright balls (1) and mid-grey cubes (2) on a dark background (0), with noise."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.mgrid[: shape[0], : shape[1], : shape[2]]
    labels = np.zeros(shape, np.uint8)
    for _ in range(3):
        c = [rng.integers(5, n - 5) for n in shape]
        labels[(zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 < 25] = 1
        s = [rng.integers(0, n - 8) for n in shape]
        labels[s[0] : s[0] + 8, s[1] : s[1] + 8, s[2] : s[2] + 8] = 2
    image = np.choose(labels, [20.0, 200.0, 110.0]) + rng.normal(0, 8, shape)
    return image.astype(np.float32), labels


def semantic(dims: int, base_width: int = 4) -> AttentionUNet:
    torch.manual_seed(0)
    config = ModelConfig(dims, 1, ("background", "ball", "cube"), task="semantic", base_width=base_width, depth=3)
    return AttentionUNet(config)


@pytest.fixture(scope="module")
def trained_3d() -> AttentionUNet:
    """A tiny 3D semantic model that tells balls from cubes (the start a user fine-tunes)."""
    image, labels = volume()
    model = semantic(3, base_width=6)
    scratch = dict(max_steps=60, batch_size=4, lr=2e-2, warmup_steps=5, eval_every=10, must_beat_start=False)
    trainer = Trainer(model, [(image, labels, "ZYX")], config=TrainConfig(**scratch, from_scratch=True, patch_size=32))
    run_to_end(trainer.run())
    return trainer.result().trained_model


def test_a_fine_tuned_3d_semantic_model_lies_halfway_between_its_start_and_the_trained_state(trained_3d):
    image, labels = volume(seed=1)  # a new volume, corrected
    start = trained_3d
    settings = dict(max_steps=20, patch_size=(24, 40, 40), batch_size=2, eval_every=5, precision="fp32")
    halfway = Trainer(start, [(image, labels, "ZYX")], config=TrainConfig(**settings))
    assert halfway.config.keep_share == 0.5  # settled for a 3D semantic model being fine-tuned
    run_to_end(halfway.run())
    half = halfway.result()
    whole = Trainer(start, [(image, labels, "ZYX")], config=TrainConfig(**settings, keep_share=1))
    run_to_end(whole.run())
    full = whole.result()
    first, last, kept = start.state_dict(), full.trained_model.state_dict(), half.trained_model.state_dict()
    weights = [k for k, v in first.items() if v.is_floating_point()]
    assert any(not torch.equal(first[k], last[k]) for k in weights)  # it trained
    for k in weights:  # the same run (same seed, float32): what it keeps is halfway
        torch.testing.assert_close(kept[k], (first[k] + last[k]) / 2, atol=1e-5, rtol=1e-4)
    assert half.accepted and "keeps 50% of the change in weights" in half.message, half.message
    assert half.model is not start  # the model to use from now on is the halfway one
    torch.testing.assert_close(half.model.state_dict()[weights[0]], kept[weights[0]])


def test_new_models_and_other_kinds_keep_all_of_their_training():
    image, labels = volume()
    pairs_3d = [(image, labels, "ZYX")]
    assert Trainer(semantic(2), [(image[12], labels[12])], config=TrainConfig(max_steps=1)).config.keep_share == 1.0
    scratch = TrainConfig(max_steps=1, from_scratch=True, patch_size=(24, 40, 40))
    assert Trainer(semantic(3), pairs_3d, config=scratch).config.keep_share == 1.0
    new = default_train_config("semantic", 3, [labels.shape], from_scratch=False, steps=1, depth=3)
    assert Trainer(semantic(3), pairs_3d, config=new).config.keep_share == 1.0  # a new model from another's weights
    for share in (0, 1.5):
        with pytest.raises(ValueError, match="share of the change in weights"):
            TrainConfig(keep_share=share)
