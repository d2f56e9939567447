"""New 3D instance models: members that share the time budget and keep their last states (``TrainConfig.keep_last``,
``core.train.folds``), in the trainer, the defaults and the command line. Tiny networks on synthetic volumes."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
from test_object_scale import balls
from test_train_cli import TINY, run_cli

from napari_attention_unet.core.model import AttentionUNet, ModelConfig
from napari_attention_unet.core.predict import run_to_end
from napari_attention_unet.core.train import TrainConfig, Trainer
from napari_attention_unet.core.train.folds import INSTANCE_MEMBERS, Members, default_members
from napari_attention_unet.core.train.plan import plan_training
from napari_attention_unet.core.train.start import default_train_config
from napari_attention_unet.core.weights import read_metadata

pytestmark = pytest.mark.usefixtures("one_thread")

CENTRES = [(8, 12, 12), (8, 12, 30), (8, 30, 12), (8, 30, 30), (8, 21, 21)]


def nuclei() -> tuple[np.ndarray, np.ndarray]:
    return balls((16, 44, 44), 6, CENTRES)


@pytest.mark.parametrize("keep_last", [False, True])
def test_keep_last_keeps_the_last_state_and_stops_at_no_early_point(monkeypatch, keep_last):
    # The held-out scores of each evaluation are scripted to fall (the network and its states are real): the best
    # state picks step 1 and stops early after 2 evaluations without a better one; keep_last trains to the end.
    image, labels = nuclei()
    torch.manual_seed(0)
    model = AttentionUNet(ModelConfig(spatial_dims=3, in_channels=1, base_width=4, depth=3))
    settings = dict(max_steps=6, eval_every=1, patience=2, patch_size=(16, 32, 32), precision="fp32")
    config = TrainConfig(**settings, from_scratch=True, must_beat_start=False, keep_last=keep_last)
    trainer = Trainer(model, [(image, labels, "ZYX")], config=config)
    assert trainer.select_by == "instances"
    real, states = trainer.validation_scores, {}

    def scripted(model=None):
        scores = real(model)
        if model in (None, trainer.model):  # the live state (whole: keep_share 1)
            states[trainer.step] = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
            scores = {**scores, "dice": 0.9 - 0.1 * trainer.step, "ap": 0.9 - 0.1 * trainer.step}
        return scores

    monkeypatch.setattr(trainer, "validation_scores", scripted)
    result = run_to_end(trainer.run())
    if keep_last:
        assert (result.steps, result.best_step, trainer.stopped) == (6, 6, "budget")
        torch.testing.assert_close(result.trained_model.head.weight, trainer.model.head.weight)
    else:
        assert (result.steps, result.best_step, trainer.stopped) == (3, 1, "early stop")
    kept = states[result.best_step]
    assert all(torch.equal(trainer.best_state[k], kept[k]) for k in kept)


def test_members_that_keep_their_last_state_share_the_budget_equally():
    image, labels = nuclei()
    torch.manual_seed(0)
    pairs = [(image, labels, "ZYX", None)]
    plan = plan_training(pairs, task="instances", dims=3, minutes=0.05, base_width=4, depth=3, precision="fp32")
    assert plan.config.keep_last and plan.config.time_budget == pytest.approx(3.0)
    run = Members(plan.model, plan.config, plan.pairs, None, "cpu", 3)
    budgets = []
    for _, trainer in run.trainers():
        budgets.append(trainer.config.time_budget)
        run_to_end(trainer.run())
    joined = run.result()
    assert len(budgets) == 3 and joined.model.config.members == 3
    # Each a share of what was left: the first a third of the whole, none more than was left for it.
    assert budgets[0] <= 1.0 and sum(budgets) <= 3.0
    assert all(t.stopped == "budget" and t.step > 0 and t.best_step == t.step for t in run.done)
    assert {t.config.seed for t in run.done} == {0, 1, 2}


def test_new_3d_instance_models_from_scratch_get_members_that_keep_their_last_state():
    assert default_members(3, True, 1, timed=True, task="instances") == INSTANCE_MEMBERS == 3
    assert default_members(3, True, 1, timed=False, task="instances") == 1  # a step count asks for one network
    assert default_members(2, True, 1, timed=True, task="instances") == 1  # not measured in 2D
    assert default_members(3, False, 1, timed=True, task="instances") == 1  # from a start model: not measured
    shape = [(40, 64, 64)]
    assert default_train_config("instances", 3, shape, from_scratch=True, minutes=1).keep_last
    assert not default_train_config("instances", 3, shape, from_scratch=False, minutes=1).keep_last
    assert not default_train_config("instances", 2, [(256, 256)], from_scratch=True, minutes=1).keep_last
    assert not default_train_config("semantic", 3, shape, from_scratch=True, minutes=1).keep_last


def test_train_a_3d_instance_model_of_members_then_predict_with_the_path_as_typed(tmp_path):
    image, labels = nuclei()
    tifffile.imwrite(tmp_path / "vol.tif", image)
    tifffile.imwrite(tmp_path / "vol_labels.tif", labels)
    args = ["--image", "vol.tif", "--labels", "vol_labels.tif", "--out", "nuclei3d", "--task", "instances"]
    done = run_cli("train", *args, "--dims", "3", "--minutes", "0.15", *TINY, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (
        "3 members, each for an equal share of the time left" in done.stderr
        and "member 3 (of up to 3): holding out a strip" in done.stderr
    )
    assert "the model averages 3 members" in done.stderr and "Traceback" not in done.stderr
    config, info = read_metadata(tmp_path / "nuclei3d.safetensors")
    assert config.members == 3 and config.task == "instances" and len(info["members"]) == 3
    done = run_cli("predict", "vol.tif", "--out", "out", "--model", "nuclei3d", "--device", "cpu", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    predicted = tifffile.imread(tmp_path / "out" / "vol_labels.tif")
    assert predicted.shape == image.shape and np.issubdtype(predicted.dtype, np.integer)
