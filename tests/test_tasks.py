"""Any task, any dimension: semantic models (dense labels and strokes), 3D training, semantic
prediction (whole image and block engine), new models from scratch or by transfer, and the checks
of bad input. Tiny networks on synthetic images: seconds each."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from napari_attention_unet.core.augment import IGNORE, random_flips_rotations
from napari_attention_unet.core.images import ImageShapeError
from napari_attention_unet.core.model import AttentionUNet, ModelConfig
from napari_attention_unet.core.predict import predict, run_to_end
from napari_attention_unet.core.train import TrainConfig, Trainer, prepare_sample
from napari_attention_unet.core.train.losses import semantic_loss
from napari_attention_unet.core.train.plan import plan_training
from napari_attention_unet.core.train.start import (
    default_train_config,
    infer_task,
    new_model,
    split_samples,
    task_classes,
)
from napari_attention_unet.core.weights import load_model, save_model

pytestmark = pytest.mark.usefixtures("one_thread")


def three_classes_2d(size: int = 96, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Dark background (0), bright disks (1) and mid-grey squares (2), with noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    labels = np.zeros((size, size), np.uint8)
    for _ in range(10):
        cy, cx = rng.integers(8, size - 8, 2)
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 < 36] = 1
        sy, sx = rng.integers(4, size - 12, 2)
        labels[sy : sy + 8, sx : sx + 8] = 2
    image = np.choose(labels, [20.0, 200.0, 110.0]) + rng.normal(0, 8, labels.shape)
    return image.astype(np.float32), labels


def three_classes_3d(shape=(24, 40, 40), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Dark background (0), bright balls (1) and mid-grey cubes (2), with noise."""
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


def semantic_model(dims: int = 2, classes=("background", "disk", "square"), **size) -> AttentionUNet:
    torch.manual_seed(0)
    size = {"base_width": 4, "depth": 3, **size}
    return AttentionUNet(ModelConfig(spatial_dims=dims, in_channels=1, classes=classes, task="semantic", **size))


def config(**overrides) -> TrainConfig:
    base = dict(max_steps=40, patch_size=64, batch_size=4, lr=1e-2, warmup_steps=5, eval_every=10)
    return TrainConfig(**{**base, "from_scratch": True, "must_beat_start": False, **overrides})


# -- the model file ------------------------------------------------------------------------


def test_task_is_saved_and_old_descriptions_load_as_instances(tmp_path):
    semantic = semantic_model()
    assert semantic.config.to_dict()["task"] == "semantic"
    assert "task" not in ModelConfig().to_dict()  # instance models are described as before
    old = {"spatial_dims": 2, "in_channels": 3, "classes": ["background", "interior", "boundary"], "depth": 3}
    assert ModelConfig.from_dict(old).task == "instances"
    loaded, _ = load_model(save_model(semantic, tmp_path / "sem"))
    assert loaded.config == semantic.config and loaded.config.task == "semantic"
    with pytest.raises(ValueError, match="task"):
        ModelConfig(task="panoptic")


# -- semantic training ---------------------------------------------------------------------


def test_semantic_2d_dense_learns_every_class():
    image, labels = three_classes_2d()
    trainer = Trainer(semantic_model(), [(image, labels)], config=config(max_steps=60))
    returned = run_to_end(trainer.run())
    result = trainer.result()
    assert result.accepted, result.message
    assert f"kept the state of step {result.best_step}:" in result.message  # not "best": see keep_within
    assert set(result.best_val_class_dice) == {"disk", "square"}
    assert min(result.best_val_class_dice.values()) > 0.8, result.best_val_class_dice
    evaluated = [r for r in result.history if r.val_dice is not None]
    assert evaluated and all(set(r.val_class_dice) <= {"disk", "square"} for r in evaluated)
    assert all(r.val_ap is None for r in evaluated) and returned.best_val_class_dice == result.best_val_class_dice


@pytest.mark.parametrize("keep_within", [0.0, 0.005])
def test_a_later_state_within_keep_within_of_the_best_is_kept(monkeypatch, keep_within):
    # The held-out Dice of each evaluation is scripted (the network and its states are real): the
    # best comes at step 2, steps 3 and 5 are within 0.005 of it, step 4 is not.
    image, labels = three_classes_2d()
    settings = config(max_steps=5, eval_every=1, keep_within=keep_within)
    trainer = Trainer(semantic_model(), [(image, labels)], config=settings)
    real, script, states = trainer.validation_scores, {1: 0.5, 2: 0.8, 3: 0.797, 4: 0.7, 5: 0.796}, {}

    def scripted(model=None):
        scores = real(model)
        if model in (None, trainer.model) and trainer.step in script:  # the live state (whole: keep_share 1)
            states[trainer.step] = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
            scores = {**scores, "dice": script[trainer.step]}
        return scores

    monkeypatch.setattr(trainer, "validation_scores", scripted)
    run_to_end(trainer.run())
    expected = 5 if keep_within else 2
    assert trainer.best_step == expected and trainer.top_dice == 0.8
    assert all(torch.equal(trainer.best_state[k], states[expected][k]) for k in states[expected])


def test_new_semantic_models_keep_a_later_state_near_the_best():
    from napari_attention_unet.core.train.start import KEEP_WITHIN_SEMANTIC, default_train_config

    semantic = default_train_config("semantic", 3, [(36, 50, 35)], from_scratch=True, minutes=1)
    instances = default_train_config("instances", 2, [(256, 256)], from_scratch=True, minutes=1)
    assert semantic.keep_within == KEEP_WITHIN_SEMANTIC > 0 and instances.keep_within == 0


def test_semantic_3d_dense_learns_every_class():
    image, labels = three_classes_3d()
    other_image, other_labels = three_classes_3d(seed=1)  # validated on a volume of its own
    validation = [prepare_sample(other_image, other_labels, axes="ZYX", in_channels=1, task="semantic")]
    model = semantic_model(3, base_width=6, depth=3)
    settings = config(max_steps=60, lr=2e-2, patch_size=(24, 40, 40))
    trainer = Trainer(model, [(image, labels, "ZYX")], config=settings, validation=validation)
    run_to_end(trainer.run())
    result = trainer.result()
    assert trainer.patch == (24, 40, 40) and result.trained_model.config.spatial_dims == 3
    assert min(result.best_val_class_dice.values()) > 0.8, result.best_val_class_dice
    prediction = run_to_end(predict(result.trained_model, other_image, axes="ZYX", device="cpu"))
    assert prediction.labels.shape == labels.shape and prediction.labels.dtype == np.uint8
    for c in (1, 2):
        p, t = prediction.labels == c, other_labels == c
        assert 2 * (p & t).sum() / (p.sum() + t.sum()) > 0.8


def test_strokes_count_only_painted_pixels():
    image, dense = three_classes_2d()
    strokes = np.zeros_like(dense)  # background painted as class 1, disks as 2, squares as 3
    rows = np.zeros(dense.shape, bool)
    rows[::6] = True
    strokes[rows] = dense[rows] + 1
    sample = prepare_sample(image, strokes, in_channels=1, task="semantic", zero_is="unlabelled")
    assert (sample.target[~rows] == IGNORE).all() and (sample.target[rows] == dense[rows] + 1).all()
    dense_sample = prepare_sample(image, dense, in_channels=1, task="semantic")
    assert (dense_sample.target == dense).all()  # 0 is the background when labels are dense

    # The loss does not see unpainted pixels: any logits there give the same loss.
    target = torch.from_numpy(sample.target[None].astype(np.int64))
    logits = torch.randn(1, 4, *dense.shape)
    other = logits.clone()
    other[:, :, ~torch.from_numpy(rows)] = torch.randn_like(other[:, :, ~torch.from_numpy(rows)]) * 10
    assert torch.allclose(semantic_loss(logits, target), semantic_loss(other, target))
    # ... while a 0 read as background (dense) changes it.
    dense_target = torch.from_numpy(np.where(rows, sample.target, 0)[None].astype(np.int64))
    assert not torch.allclose(semantic_loss(logits, dense_target), semantic_loss(other, dense_target))

    classes = task_classes("semantic", 3, None, "unlabelled")
    assert classes == ("unlabelled", "class 1", "class 2", "class 3")
    torch.manual_seed(0)
    model = new_model("semantic", classes, 2, 1, "scratch", base_width=4, depth=3)
    trainer = Trainer(model, [(image, strokes)], config=config(max_steps=60, zero_is="unlabelled"))
    _, targets, _ = trainer._batch()
    assert not (targets == 0).any()  # channel 0 is never a target
    run_to_end(trainer.run())
    result = trainer.result()
    assert set(result.best_val_class_dice) == {"class 1", "class 2", "class 3"}
    assert np.mean(list(result.best_val_class_dice.values())) > 0.7, result.best_val_class_dice
    labels = run_to_end(predict(result.trained_model, image, device="cpu")).labels
    agree = (labels == dense + 1).mean()
    assert agree > 0.8 and not (labels == 0).any()
    # Channel 0 was never trained: even where it drifts above the painted classes, no pixel is
    # class 0 ("unlabelled"), whole or block by block; a dense model's channel 0 is its background.
    with torch.no_grad():
        model.head.bias.copy_(torch.tensor([50.0, 0.0, 1.0, 0.0]))
    assert model.config.unlabelled_channel
    from napari_attention_unet.large_data.blocks import predict_blocks

    whole = run_to_end(predict(model, image, device="cpu")).labels
    blocks = np.asarray(run_to_end(predict_blocks(model, image, block_size=64, halo=32, device="cpu")).labels)
    assert whole.min() >= 1 and blocks.min() >= 1
    dense_model = new_model("semantic", task_classes("semantic", 3), 2, 1, "scratch", base_width=4, depth=3)
    with torch.no_grad():
        dense_model.head.bias.copy_(torch.tensor([50.0, 0.0, 1.0, 0.0]))
    assert not dense_model.config.unlabelled_channel
    assert (run_to_end(predict(dense_model, image, device="cpu")).labels == 0).all()


def test_strokes_weigh_each_painted_class_alike_in_the_cross_entropy(monkeypatch):
    """A user paints the background with a large brush and nuclei with dabs: 9 to 1 in pixels. Balanced, the
    cross-entropy is the mean of each class's own; the trainer balances strokes, and dense labels not."""
    from torch.nn import functional as F

    from napari_attention_unet.core.train import losses

    target = torch.full((1, 10, 10), IGNORE, dtype=torch.long)
    target[0, :9] = 1  # 90 pixels of class 1
    target[0, 9] = 2  # 10 of class 2
    target[0, 9, :5] = IGNORE  # 5 of them not counted
    logits = torch.randn(1, 3, 10, 10)
    ce = F.cross_entropy(logits, target.clamp(max=2), reduction="none")  # IGNORE pixels left out below
    per_class = [ce[target == c].mean() for c in (1, 2)]
    balanced = semantic_loss(logits, target, dice_weight=0.0, balance=True)
    torch.testing.assert_close(balanced, torch.stack(per_class).mean())
    plain = semantic_loss(logits, target, dice_weight=0.0)
    torch.testing.assert_close(plain, ce[target != IGNORE].mean())

    seen = []
    monkeypatch.setattr(losses, "_class_balance", lambda t: seen.append(t) or torch.ones(t.shape))
    image, dense = three_classes_2d()
    for zero_is, labels, calls in (("unlabelled", dense + 1, 1), ("background", dense, 1)):  # dense: no new call
        classes = task_classes("semantic", 3, None, zero_is)
        model = new_model("semantic", classes, 2, 1, "scratch", base_width=4, depth=3)
        run_to_end(Trainer(model, [(image, labels)], config=config(max_steps=1, zero_is=zero_is)).run())
        assert len(seen) == calls, zero_is


def test_fine_tuning_a_model_trained_on_strokes_keeps_counting_only_painted_pixels():
    """A model trained on strokes is fine-tuned (dock, ``finetune``) with the default settings, where 0 would be
    taken as a class: its unpainted pixels must stay unlabelled, or the strokes' model learns 'all is class 0'."""
    image, dense = three_classes_2d()
    strokes = np.zeros_like(dense)
    strokes[::6] = dense[::6] + 1  # a stroke across every sixth row
    model = new_model(
        "semantic", task_classes("semantic", 3, None, "unlabelled"), 2, 1, "scratch", base_width=4, depth=3
    )
    trainer = Trainer(model, [(image, strokes)], config=config(max_steps=1))  # zero_is left at its default
    assert trainer.config.zero_is == "unlabelled"
    _, targets, _ = trainer._batch()
    assert not (targets == 0).any() and (targets == IGNORE).any()
    dense_model = semantic_model()
    assert Trainer(dense_model, [(image, dense)], config=config(max_steps=1)).config.zero_is == "background"


def test_instances_3d_train_and_predict():
    image, classes = three_classes_3d()
    from skimage.measure import label

    instances = label(classes > 0).astype(np.uint16)
    torch.manual_seed(0)
    model = AttentionUNet(ModelConfig(spatial_dims=3, in_channels=1, base_width=4, depth=3))
    trainer = Trainer(model, [(image, instances, "ZYX")], config=config(max_steps=6, patch_size=(24, 32, 32)))
    run_to_end(trainer.run())
    assert trainer.select_by == "instances"
    result = trainer.result().trained_model
    prediction = run_to_end(predict(result, image, axes="ZYX", device="cpu", min_size=1))
    assert prediction.labels.shape == image.shape and np.issubdtype(prediction.labels.dtype, np.integer)


def test_spacing_resamples_volumes_as_prediction_does():
    image, labels = three_classes_3d((12, 40, 40))
    sample = prepare_sample(image, labels, axes="ZYX", in_channels=1, task="semantic", spacing=(2.0, 1.0, 1.0))
    assert sample.image.shape == (1, 24, 40, 40) and sample.target.shape == (24, 40, 40)
    assert set(np.unique(sample.target)) <= {0, 1, 2, IGNORE}
    # Nearest neighbour on the voxel centres: each z plane comes twice.
    assert (sample.target[0::2, :, :20] == sample.target[1::2, :, :20]).all()
    trainer = Trainer(semantic_model(3), [(image, labels, "ZYX")], config=config(max_steps=1, spacing=(2, 1, 1)))
    assert trainer.samples[0].target.shape == (24, 40, 40)


def test_3d_objects_are_separated_on_the_cubic_grid(monkeypatch):
    """With a voxel size, the instance step runs where the network sees cubic voxels (true
    distances), with the 3D split depth, and the labels come back on the volume's own grid."""
    import napari_attention_unet.core.predict as predict_module
    from napari_attention_unet.core.instances import SPLIT_DEPTH_3D, probabilities_to_instances

    seen = []

    def recorded(probabilities, **settings):
        seen.append(probabilities.shape)
        return probabilities_to_instances(probabilities, **settings)

    monkeypatch.setattr(predict_module, "probabilities_to_instances", recorded)
    torch.manual_seed(0)
    model = AttentionUNet(ModelConfig(spatial_dims=3, in_channels=1, base_width=4, depth=3)).eval()
    image, _ = three_classes_3d((12, 32, 32))
    result = run_to_end(predict(model, image, axes="ZYX", spacing=(2.0, 1.0, 1.0), gates=(), device="cpu"))
    assert seen == [(3, 24, 32, 32)] and result.labels.shape == (12, 32, 32)
    # the 3D default split depth is the shallower one
    z, y, x = np.mgrid[:16, :16, :16]
    ball = ((z - 8) ** 2 + (y - 8) ** 2 + (x - 8) ** 2 < 25).astype(np.float32)
    probs = np.stack([1 - ball, ball, 0 * ball])
    assert SPLIT_DEPTH_3D < 1.0
    np.testing.assert_array_equal(
        probabilities_to_instances(probs), probabilities_to_instances(probs, split_depth=SPLIT_DEPTH_3D)
    )


def test_3d_seeds_take_an_interior_the_network_is_less_sure_of():
    """A 3D model's p(interior) sits lower than a 2D one's (the boundary rim is a larger share of a
    3D object): two touching nuclei whose cores read 0.4 interior / 0.55 boundary are two objects
    with the 3D default (SEED_THRESHOLD_3D); with the 2D threshold of 0.5 they have no seed at all."""
    from napari_attention_unet.core.instances import SEED_THRESHOLD_3D, probabilities_to_instances

    z, y, x = np.mgrid[:20, :20, :32]
    a = np.sqrt((z - 10) ** 2 + (y - 10) ** 2 + (x - 10) ** 2)
    b = np.sqrt((z - 10) ** 2 + (y - 10) ** 2 + (x - 22) ** 2)
    foreground = (a < 7) | (b < 7)
    rim = foreground & ((np.minimum(a, b) > 5.5) | (np.abs(x - 16) <= 1))  # surfaces and the contact
    p_interior = np.where(rim, 0.05, 0.4) * foreground
    p_boundary = np.where(rim, 0.9, 0.55) * foreground
    probs = np.stack([np.where(foreground, 0.05, 1.0), p_interior, p_boundary]).astype(np.float32)
    probs /= probs.sum(0)
    assert SEED_THRESHOLD_3D < 0.4
    two = probabilities_to_instances(probs)
    assert two.max() == 2 and len(np.unique(two[10, 10, [10, 22]])) == 2
    assert probabilities_to_instances(probs, seed_threshold=0.5).max() == 0
    # 2D keeps 0.5: the middle plane, alone, has no seed either
    assert probabilities_to_instances(probs[:, 10]).max() == 0


def test_3d_flips_and_turns_keep_z_and_alignment():
    rng = np.random.default_rng(0)
    target = np.zeros((8, 16, 16), np.uint8)
    target[:, 2:6, 3:12] = 1 + np.arange(8)[:, None, None]  # a bar whose value is its plane's z + 1
    image = target[None].astype(np.float32)
    turned = False
    for _ in range(20):
        x, y = random_flips_rotations(image, target, rng)
        assert y.shape == (8, 16, 16) and (x[0] == y).all()
        # Rotations are in the YX plane only: each output plane holds one input plane's values.
        assert all(len(np.unique(plane[plane > 0])) == 1 for plane in y)
        turned |= bool(y[:, 2:6, 3:12].sum() != target[:, 2:6, 3:12].sum()) and (y > 0).sum() == (target > 0).sum()
    assert turned


# -- prediction of a semantic model -----------------------------------------------------------


def test_semantic_prediction_is_class_values_whole_and_in_blocks():
    from napari_attention_unet.large_data.blocks import predict_blocks

    image, labels = three_classes_2d(160)
    trainer = Trainer(semantic_model(), [(image, labels)], config=config(max_steps=30))
    run_to_end(trainer.run())
    model = trainer.result().trained_model
    whole = run_to_end(predict(model, image, device="cpu", keep_class_probabilities=True))
    assert whole.labels.dtype == np.uint8 and set(np.unique(whole.labels)) <= {0, 1, 2}
    assert (whole.labels == whole.class_probabilities.argmax(0)).all()
    np.testing.assert_allclose(whole.probability, 1 - whole.class_probabilities[0], atol=1e-6)
    as_mask = run_to_end(predict(model, image, device="cpu", instances=False))
    assert (as_mask.labels == whole.labels).all()  # instances is ignored by a semantic model
    blocks = run_to_end(predict_blocks(model, image, block_size=64, halo=32, device="cpu"))
    assert blocks.n_objects == 0 and (np.asarray(blocks.labels) == whole.labels).mean() > 0.99


# -- where a new model starts -------------------------------------------------------------------


def test_transfer_keeps_the_encoder_and_replaces_the_head():
    torch.manual_seed(0)
    start = AttentionUNet(ModelConfig(base_width=4, depth=3))  # 3 colour channels, instance head
    classes = task_classes("semantic", 4, ["a", "b", "c", "d"])
    model = new_model("semantic", classes, 2, 3, start)
    assert model.config.task == "semantic" and model.head.out_channels == 5
    state = model.state_dict()
    for key, value in start.state_dict().items():
        if key.startswith("head."):
            continue
        assert torch.equal(state[key], value), key
    assert state["head.weight"].shape[0] == 5
    # The new head starts at zero: every class equally likely on any image, whatever the features.
    assert not state["head.weight"].any() and not state["head.bias"].any()
    probabilities = torch.softmax(model.eval()(torch.rand(1, 3, 32, 32))[0], dim=1)
    torch.testing.assert_close(probabilities, torch.full_like(probabilities, 0.2))
    # Grey images: one input channel whose kernels are the colour kernels summed (same network on grey).
    grey = new_model("semantic", classes, 2, 1, start).eval()
    x = torch.rand(1, 1, 32, 32)
    np.testing.assert_allclose(
        grey.encoder[0](x).detach().numpy(), start.eval().encoder[0](x.expand(1, 3, 32, 32)).detach().numpy(), atol=1e-5
    )
    same = new_model("instances", task_classes("instances"), 2, 3, start)
    assert torch.equal(same.head.weight, start.head.weight)  # same task and classes: the head is kept
    with pytest.raises(ValueError, match="2D, so it cannot start a 3D model"):
        new_model("semantic", classes, 3, 1, start)


def test_a_semantic_model_trained_on_without_names_keeps_its_class_names_and_head():
    """``train --start my-model`` (or the dock's new model from the current one) on labels of as many classes,
    names not given: the classes keep the start's names, and its head; given names, or other classes, do not."""
    image, labels = three_classes_2d()
    start = semantic_model(classes=("background", "membrane", "mitochondria"))
    with torch.no_grad():
        start.head.bias.copy_(torch.tensor([0.5, -0.25, 1.0]))
    plan = plan_training([(image, labels, None, None)], task="semantic", start=start, steps=1)
    assert plan.classes == ("background", "membrane", "mitochondria") == plan.model.config.classes
    assert torch.equal(plan.model.head.bias, start.head.bias)  # the head goes on learning, not from zero
    assert any("keep the starting model's names: membrane, mitochondria" in n for n in plan.notes)
    named = plan_training([(image, labels, None, None)], task="semantic", start=start, steps=1, class_names=["a", "b"])
    assert named.classes == ("background", "a", "b")
    more = labels.copy()
    more[:8, :8] = 3
    assert plan_training([(image, more, None, None)], task="semantic", start=start, steps=1).classes[1] == "class 1"


def test_the_task_is_inferred_from_the_labels():
    image, labels = three_classes_2d()
    assert infer_task([labels]) == ("semantic", "3 classes found (0, 1, 2): semantic")
    # Strokes: 0 is no class, so the painted values are the classes.
    assert infer_task([labels], "unlabelled") == ("semantic", "2 classes painted (1, 2): semantic")
    from skimage.measure import label

    ids = label(labels > 0)
    assert infer_task([ids])[0] == "instances" and infer_task([ids])[1].endswith("objects: instances")
    assert infer_task([labels > 0])[0] == "instances"  # a mask of many separate objects


def test_objects_with_0_not_background_are_refused():
    """An instance model learns the background from 0: with 0 unlabelled it would never see any."""
    from skimage.measure import label

    image, labels = three_classes_2d(64)
    ids = label(labels > 0)
    with pytest.raises(ValueError, match="0 must be background") as error:
        plan_training([(image, ids)], task="instances", zero_is="unlabelled", steps=1)
    assert "\n" not in str(error.value) and "--zero-is slices" in str(error.value)
    with pytest.raises(ValueError, match="0 must be background"):  # inferred instances too (300 ids)
        plan_training([(image, (np.arange(image.size) % 300).reshape(image.shape))], zero_is="unlabelled", steps=1)


def test_objects_outlined_in_a_few_slices_train_a_3d_instance_model():
    """Nuclei outlined in a few slices of a volume (``zero_is="slices"``): the other slices teach
    nothing, and a lone labelled slice keeps its objects' interiors (in 3D all of it was boundary)."""
    from napari_attention_unet.core.augment import IGNORE
    from napari_attention_unet.core.instances import INTERIOR, instances_to_classes
    from napari_attention_unet.core.train.targets import labels_to_target

    zz, yy, xx = np.mgrid[:16, :32, :32]
    full = np.zeros((16, 32, 32), np.uint16)
    for i, (z, y, x) in enumerate([(4, 8, 8), (4, 8, 24), (10, 24, 8), (10, 24, 24), (8, 16, 16)], 1):
        full[(zz - z) ** 2 / 9 + ((yy - y) ** 2 + (xx - x) ** 2) / 36 < 1] = i
    labels = np.zeros_like(full)
    for z in (4, 8, 9, 10):  # a lone slice, then a run of three
        labels[z] = full[z]
    target, instances = labels_to_target(labels, "instances", "slices")
    unlabelled = [z not in (4, 8, 9, 10) for z in range(16)]
    assert (target[unlabelled] == IGNORE).all() and (instances[unlabelled] == 0).all()
    assert (target[4] == instances_to_classes(labels[4])).all() and (target[4] == INTERIOR).any()
    assert not (labels_to_target(labels, "instances")[0][4] == INTERIOR).any()  # dense: the lone slice all outline
    assert (target[9] == instances_to_classes(labels)[9]).all()  # inside a run: the 3D outlines

    image = (full > 0).astype(np.float32) * 100 + 10
    plan = plan_training([(image, labels, "ZYX")], task="instances", zero_is="slices", depth=2, steps=4)
    assert plan.task == "instances" and plan.dims == 3
    notes = " ".join(plan.notes)
    assert "0 = background in the 4 labelled slices" in notes and "Mark slices" not in notes
    samples, validation = split_samples(plan.model.config, plan.config, plan.pairs, plan.background_slices)
    trainer = Trainer(plan.model, config=plan.config, device="cpu", samples=samples, validation=validation)
    run_to_end(trainer.run())
    result = trainer.result()
    assert result.steps == 4 and trainer.select_by == "instances" and result.best_val_ap is not None
    dense = plan_training([(image, labels, "ZYX")], task="instances", depth=2, steps=1)
    assert "give --zero-is slices" in " ".join(dense.notes)  # empty slices between labelled ones
    assert "only 4 steps" in plan.few_steps(4) and plan.few_steps(200) is None
    plan.scratch = False  # from a trained model's weights, a few steps can be enough
    assert plan.few_steps(4) is None


# -- bad input: one clear line --------------------------------------------------------------------


@pytest.mark.parametrize(
    "case, match",
    [
        ("shape", "do not match the image's spatial shape"),
        ("one value", "one value only"),
        ("too many classes", "at most 255 classes"),
        ("3d model on 2d", "a 3D model trains on volumes"),
        ("nan", "NaN pixel"),
        ("too small", "too small for this network"),
        ("time series", "time series"),
        ("class past the head", "has 3 outputs"),
    ],
)
def test_bad_input_is_refused_clearly(case, match):
    image, labels = three_classes_2d(64)
    model = semantic_model()
    pairs = [(image, labels)]
    if case == "shape":
        pairs = [(image, labels[:60])]
    elif case == "one value":
        pairs = [(image, np.ones_like(labels))]
    elif case == "too many classes":
        pairs = [(image, (np.arange(image.size) % 300).reshape(image.shape).astype(np.uint16))]
    elif case == "3d model on 2d":
        model = semantic_model(3)
    elif case == "nan":
        image = image.copy()
        image[3, 4] = np.nan
        pairs = [(image, labels)]
    elif case == "too small":
        model = semantic_model(depth=4)  # needs 8 px per axis
        pairs = [(image[:6], labels[:6])]
    elif case == "time series":
        pairs = [(np.stack([image[None].repeat(8, 0)] * 2), np.stack([labels[None].repeat(8, 0)] * 2))]
    elif case == "class past the head":
        pairs = [(image, np.where(labels == 2, 3, labels).astype(np.uint8))]
    with pytest.raises(ValueError, match=match) as error:
        Trainer(model, pairs, config=config(max_steps=1))
    assert "\n" not in str(error.value)
    if case in ("shape", "3d model on 2d", "too small", "time series"):
        assert isinstance(error.value, ImageShapeError)


# -- training settings -------------------------------------------------------------------------


def test_a_2d_model_trains_on_the_planes_of_a_volume_normalised_whole():
    """The planes keep the volume's intensity scale, as a stack is normalised whole at prediction."""
    from napari_attention_unet.core.images import normalize
    from napari_attention_unet.core.train.plan import plan_training
    from napari_attention_unet.core.train.samples import training_samples

    image, labels = three_classes_3d()
    image[:4] *= 0.1  # dim top planes: stretched to the full range if each plane were normalised alone
    labels[-3:] = 0
    plan = plan_training([(image, labels, "ZYX", None)], task="semantic", dims=2, steps=1, base_width=4, depth=3)
    assert plan.model.config.spatial_dims == 2 and len(plan.pairs) == 1
    assert any("Z planes" in note for note in plan.notes)
    samples, validation = training_samples(plan.model.config, plan.config, plan.pairs)
    whole = normalize(image[None])[0]
    assert all(s.image.shape == (1, 40, 40) and s.target.shape == (40, 40) for s in samples + validation)
    # the held-out strip of the volume is a strip of every plane; planes without labels are left out
    assert len(samples) == image.shape[0] and 0 < len(validation) <= image.shape[0]
    np.testing.assert_allclose(samples[0].image[0], whole[0], atol=1e-6)
    assert samples[0].image.max() < 0.5 < samples[10].image.max()
    trainer = Trainer(plan.model, config=plan.config, device="cpu", samples=samples, validation=validation)
    run_to_end(trainer.run())
    assert trainer.step == 1


def test_3d_patches_hold_about_the_voxel_budget_and_fit_small_volumes():
    from napari_attention_unet.core.train.start import PATCH_VOXELS_3D, patch_3d

    assert patch_3d([(45, 59, 39), (26, 40, 31)], 8) == (24, 32, 24)  # MR hippocampus crops
    big = patch_3d([(200, 300, 300)], 8)
    assert all(n % 8 == 0 and n >= 16 for n in big) and 0.5 < np.prod(big) / PATCH_VOXELS_3D < 1.5
    assert patch_3d([(12, 30, 30)], 8) == (16, 32, 32)  # small: the whole volume, rounded up
    assert patch_3d([(20, 20, 20)], 4) == (20, 20, 20)


def test_a_few_labelled_slices_of_a_volume_train_with_zero_is_slices():
    """``zero_is="slices"``: 0 is the background in the planes that hold labels; planes without any
    are not labelled, so they teach nothing (with ``background`` they would teach "all background")."""
    from napari_attention_unet.core.augment import IGNORE
    from napari_attention_unet.core.train.targets import labels_to_target, unlabelled_slices

    labels = np.zeros((10, 16, 16), np.uint8)
    for z in (2, 5, 8):  # three labelled slices, background 0 around the classes
        labels[z, 4:8, 4:8], labels[z, 9:13, 9:13] = 1, 2
    target, _ = labels_to_target(labels, "semantic", "slices")
    labelled = ~unlabelled_slices(labels)
    assert labelled.tolist() == [z in (2, 5, 8) for z in range(10)]
    assert (target[~labelled] == IGNORE).all()
    assert (target[labelled] == labels[labelled]).all()  # 0 stays class 0 where the slice is labelled
    dense, _ = labels_to_target(labels, "semantic", "background")
    assert (dense == labels).all()
    plane, _ = labels_to_target(np.zeros((8, 8), np.uint8), "semantic", "slices")
    assert (plane == IGNORE).all()  # an unlabelled 2D plane of a stack counts nowhere


def test_slices_marked_as_background_count_as_labelled():
    """A slice beyond the structure holds no label; marked, its 0s are background (trained and held
    out like any labelled slice), on the resampled grid too, and the plan says how many were marked."""
    from napari_attention_unet.core.train.samples import prepare_samples
    from napari_attention_unet.core.train.start import split_samples
    from napari_attention_unet.core.train.targets import format_slices, labels_to_target, parse_slices

    labels = np.zeros((10, 16, 16), np.uint8)
    for z in (3, 5, 7):
        labels[z, 4:8, 4:8], labels[z, 9:13, 9:13] = 1, 2
    target, _ = labels_to_target(labels, "semantic", "slices", background_slices=[0, 9])
    assert [bool((target[z] != IGNORE).all()) for z in range(10)] == [z in (0, 3, 5, 7, 9) for z in range(10)]
    assert (target[[0, 9]] == 0).all()
    assert (
        parse_slices("0-2, 9") == [0, 1, 2, 9] and parse_slices("-") == [] and format_slices([9, 0, 1, 2]) == "0-2, 9"
    )
    for bad, match in (("a-b", "numbers and ranges"), ("4-2", "not a range"), ("12", "past the volume")):
        with pytest.raises(ValueError, match=match):
            parse_slices(bad, 10)

    # Spacing 2,1,1: the volume is resampled to 20 slices, and slice 9 becomes the last two.
    (sample,) = prepare_samples(
        [(labels.astype(np.float32), labels, "ZYX", (2.0, 1.0, 1.0))],
        in_channels=1,
        task="semantic",
        zero_is="slices",
        background_slices=[[9]],
    )
    labelled = (sample.target != IGNORE).reshape(len(sample.target), -1).all(axis=1)
    assert len(labelled) == 20 and labelled[-2:].all() and not labelled[:2].any() and labelled.sum() == 8

    image = labels.astype(np.float32) * 100
    plan = plan_training(
        [(image, labels, "ZYX")] * 5, zero_is="slices", background_slices=[[0, 9]] * 5, depth=2, steps=1
    )
    assert "0 = background in the 25 labelled slices (10 marked as background); the other 25" in " ".join(plan.notes)
    samples, validation = split_samples(plan.model.config, plan.config, plan.pairs, plan.background_slices)
    assert len(samples) == 4 and len(validation) == 1  # the fifth volume held out whole, its marks with it
    assert ((validation[0].target[[0, 9]]) == 0).all()
    plain = plan_training([(image, labels, "ZYX")], zero_is="slices", depth=2, steps=1)
    assert "Mark slices beyond the structure as background" in " ".join(plain.notes)
    for marks, zero_is, match in (
        ([[0]], "background", "go with label 0 as 'background in labelled slices'"),
        ([[0], [1]], "slices", "given for 2 label images, but there are 1"),
        ([[10]], "slices", "slice 10 is not one of them"),
        ([[0, 5]], "slices", "slice 5 is marked as background but holds labels"),  # --background-slices 0,5
    ):
        with pytest.raises(ValueError, match=match):
            plan_training([(image, labels, "ZYX")], zero_is=zero_is, background_slices=marks, depth=2, steps=1)


def test_strokes_on_one_slice_of_a_volume_train_a_2d_model():
    """An EM user paints one section of a stack: a 2D model learns from that plane and predicts every
    plane; the spacing (anisotropic sections) does not make planes up; --dims 3 still gives a 3D one."""
    from napari_attention_unet.core.train.plan import infer_dims

    image, dense = three_classes_3d((12, 40, 40))
    strokes = np.zeros_like(dense)
    strokes[6] = np.where(dense[6] > 0, dense[6], 0)
    strokes[6, :2] = 3  # the background, painted as a class of its own
    pair = (image, strokes, "ZYX", (10.0, 1.0, 1.0))
    plan = plan_training([pair], zero_is="unlabelled", steps=1, depth=2)
    assert plan.dims == 2 and plan.pairs[0][3] is None
    assert any("the labels lie in one slice of each volume: a 2D model" in note for note in plan.notes)
    assert infer_dims([strokes], "unlabelled") == 2 and infer_dims([dense], "unlabelled") == 3
    assert infer_dims([strokes], "background") == 3  # dense labels: the other slices are background
    assert plan_training([pair], zero_is="unlabelled", dims=3, steps=1, depth=2).dims == 3


def test_patches_centred_on_classes_bring_a_rare_class_into_most_batches():
    from napari_attention_unet.core.train.samples import class_points

    rng = np.random.default_rng(0)
    labels = np.ones((256, 256), np.uint8)  # class 1 everywhere but one small spot of class 2
    labels[200:206, 30:36] = 2
    labels[0, :8] = 0
    image = (labels * 50 + rng.normal(0, 5, labels.shape)).astype(np.float32)
    points = class_points(prepare_sample(image, labels, in_channels=1, task="semantic").target)
    assert sorted(points) == [1, 2] and len(points[2]) == 36 and len(points[1]) == 4096
    assert (labels[tuple(points[2].T)] == 2).all() and (labels[tuple(points[1].T)] == 1).all()

    def rare_share(fraction: float) -> float:
        model = semantic_model(classes=("background", "common", "rare"))
        settings = dict(patch_size=64, val_fraction=0.0, class_fraction=fraction)
        trainer = Trainer(model, [(image, labels)], config=config(**settings))
        batches = [trainer._host_batch()[1] for _ in range(50)]
        return np.mean([(patch == 2).any() for targets in batches for patch in targets])

    # Drawn anywhere, a 64 px patch holds the spot about one time in ten; centred on a class drawn
    # evenly among the two, at least half the time.
    assert rare_share(0.0) < 0.2 < 0.45 < rare_share(1.0)


def test_a_semantic_model_that_matches_no_labelled_class_is_doubted():
    """Held-out class Dice of 0 for every class is refused like one class everywhere (before, a new user's
    two runs with mean Dice 0.00 were one put in use, one not); a model that matches some is accepted."""
    from napari_attention_unet.core.train.selection import semantic_verdict

    def verdict(dice, predicted=3):
        scores = {"dice": float(np.mean(list(dice.values()))), "class_dice": dice}
        scores.update(classes_predicted=predicted, classes_labelled=3)
        return semantic_verdict(scores, step=40, stopped="time budget", best_step=40)

    accepted, message = verdict({"anterior": 0.0, "posterior": 0.0})
    assert not accepted and "matches none of the labelled classes" in message and "0.000" in message
    assert not verdict({"anterior": 0.6, "posterior": 0.5}, predicted=1)[0]  # one class everywhere, as before
    accepted, message = verdict({"anterior": 0.31, "posterior": 0.0})
    assert accepted and "anterior 0.310, posterior 0.000" in message


def test_fine_tuning_a_3d_model_on_a_few_labelled_slices_is_refused_before_training():
    """0 is background in every slice when fine-tuning: outlines in 4 slices of 40 would teach 'nothing here'
    in the other 36. Refused at once, with what to do; dense labels, painted-only runs and 2D models pass."""
    from napari_attention_unet.core.train.targets import check_corrections

    volume = np.zeros((40, 32, 32), np.uint16)
    volume[:, 8:14, 8:14] = 1
    volume[:, 20:26, 18:26] = 2
    check_corrections(volume, None, 3)  # dense: fine
    sliced = np.zeros_like(volume)
    sliced[[9, 19, 28, 38]] = volume[[9, 19, 28, 38]]
    with pytest.raises(ValueError, match="the labels fill 4 of the volume's 40 slices.*--zero-is slices"):
        check_corrections(sliced, None, 3)
    one = np.zeros_like(volume)
    one[20] = volume[20]
    with pytest.raises(ValueError, match="fill 1 of"):
        check_corrections(one, None, 3)
    check_corrections(sliced, None, 2)  # a 2D model trains on the labelled planes only
    check_corrections(sliced, np.zeros(sliced.shape, bool) | (sliced == 0), 3)  # only what was painted counts


# -- fine-tuning a 3D semantic model keeps half of its change (TrainConfig.keep_share) ----------------------
# On one corrected MR volume the whole change cost other volumes 0.05-0.14 Dice (benchmarks/bench_finetune_3d.py).


@pytest.fixture(scope="module")
def trained_3d() -> AttentionUNet:
    """A tiny 3D semantic model that tells balls from cubes (the start a user fine-tunes)."""
    image, labels = three_classes_3d()
    model = semantic_model(3, base_width=6)
    scratch = dict(max_steps=60, batch_size=4, lr=2e-2, warmup_steps=5, eval_every=10, must_beat_start=False)
    trainer = Trainer(model, [(image, labels, "ZYX")], config=TrainConfig(**scratch, from_scratch=True, patch_size=32))
    run_to_end(trainer.run())
    return trainer.result().trained_model


def test_a_fine_tuned_3d_semantic_model_lies_halfway_between_its_start_and_the_trained_state(trained_3d):
    image, labels = three_classes_3d(seed=1)  # a new volume, corrected
    start = trained_3d
    settings = dict(max_steps=20, patch_size=(24, 40, 40), batch_size=2, eval_every=5, precision="fp32")
    halfway = Trainer(start, [(image, labels, "ZYX")], config=TrainConfig(**settings))
    assert halfway.config.keep_share == 0.5  # settled for a 3D semantic model being fine-tuned
    run_to_end(halfway.run())
    half = halfway.result()
    assert half.accepted and "keeps 50% of the change in weights" in half.message, half.message
    assert f"starting model {half.start_scores['dice']:.3f})" in half.message  # the bar it cleared, said
    whole = copy.deepcopy(start)
    whole.load_state_dict(halfway.best_state)  # the whole trained state of the step kept
    first, last, kept = start.state_dict(), whole.state_dict(), half.trained_model.state_dict()
    weights = [k for k, v in first.items() if v.is_floating_point()]
    assert any(not torch.equal(first[k], last[k]) for k in weights)  # it trained
    for k in weights:  # what it keeps is halfway
        torch.testing.assert_close(kept[k], (first[k] + last[k]) / 2, atol=1e-5, rtol=1e-4)
    # each state was judged as it is kept, halfway: the kept model scores what the run reported for it,
    # the whole state otherwise (on one MR volume's strip, the whole state lost where halfway gained)
    assert halfway.validation_scores(half.trained_model)["dice"] == pytest.approx(half.best_val_dice, abs=1e-9)
    assert halfway.validation_scores(whole)["dice"] != pytest.approx(half.best_val_dice, abs=1e-6)
    assert half.model is not start  # the model to use from now on is the halfway one
    torch.testing.assert_close(half.model.state_dict()[weights[0]], kept[weights[0]])


def test_new_models_and_other_kinds_keep_all_of_their_training():
    image, labels = three_classes_3d()
    pairs_3d = [(image, labels, "ZYX")]
    plane = [(image[12], labels[12])]
    assert Trainer(semantic_model(2), plane, config=TrainConfig(max_steps=1)).config.keep_share == 1.0
    scratch = TrainConfig(max_steps=1, from_scratch=True, patch_size=(24, 40, 40))
    assert Trainer(semantic_model(3), pairs_3d, config=scratch).config.keep_share == 1.0
    new = default_train_config("semantic", 3, [labels.shape], from_scratch=False, steps=1, depth=3)
    assert Trainer(semantic_model(3), pairs_3d, config=new).config.keep_share == 1.0  # a new model, from another's
    for share in (0, 1.5):
        with pytest.raises(ValueError, match="share of the change in weights"):
            TrainConfig(keep_share=share)


def test_many_classes_are_summed_up_in_messages_not_listed_one_by_one():
    from napari_attention_unet.core.train.config import class_scores, step_message

    assert class_scores({"anterior": 0.861, "posterior": 0.828}) == "anterior 0.861, posterior 0.828"
    many = {f"class {k}": 0.5 + k / 100 for k in range(1, 31)} | {"synapse": 0.12}
    text = step_message(100, 0.5, 0.6, None, 0.6, None, many)  # 31 classes: the lowest five, then a count
    assert "lowest: synapse 0.120, class 1 0.510, class 2 0.520" in text and "; 26 more classes" in text
    assert "class 30" not in text and len(text) < 200
