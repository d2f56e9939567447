"""Training generator: learning, cancelling, ignore masks, early stop, sanity check.

Tiny networks (base width 4, depth 3) on one real DSB2018 image (or a synthetic
blob image when the test data is missing), so every test takes a few CPU seconds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from napari_attention_unet.core.augment import IGNORE, augment, stain_jitter
from napari_attention_unet.core.model import AttentionUNet, ModelConfig
from napari_attention_unet.core.predict import run_to_end
from napari_attention_unet.core.train import (
    VALIDATION_MARGIN,
    StepReport,
    TrainConfig,
    Trainer,
    _instance_counts,
    foreground_scores,
    held_out_region,
    prepare_sample,
    segmentation_loss,
    train,
)

DATA = Path(__file__).parent / "data"


def _blobs(size: int = 128, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    labels = np.zeros((size, size), np.uint16)
    for i in range(1, 25):
        cy, cx = rng.integers(8, size - 8, 2)
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 < rng.integers(16, 50)] = i
    image = (labels > 0) * 150.0 + rng.normal(30, 10, labels.shape)
    return np.clip(image, 0, 255).astype(np.uint8), labels


@pytest.fixture(scope="module")
def pair() -> tuple[np.ndarray, np.ndarray]:
    images = sorted((DATA / "images").glob("*.tif"))
    if not images:
        return _blobs()
    import tifffile

    return tifffile.imread(images[0]), tifffile.imread(DATA / "masks" / images[0].name)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def tiny_model() -> AttentionUNet:
    torch.manual_seed(0)
    return AttentionUNet(ModelConfig(base_width=4, depth=3))


def _config(**overrides) -> TrainConfig:
    base = dict(max_steps=40, patch_size=96, batch_size=4, lr=1e-2, warmup_steps=5, eval_every=10, from_scratch=True)
    return TrainConfig(**{**base, **overrides})


def test_a_step_whose_gradients_are_not_numbers_is_skipped(tiny_model, pair):
    """One backward pass giving NaN gradients (bf16 on a CPU did, now and then, for a tiny 3D net) leaves the
    weights as they were, instead of making every one of them NaN, and training goes on."""
    trainer = Trainer(tiny_model, [pair], config=_config(max_steps=3, eval_every=100, precision="fp32"))
    weight = next(trainer.model.parameters())
    seen, before, after = [], {}, {}

    def weights() -> dict:
        return {k: v.detach().clone() for k, v in trainer.model.named_parameters()}

    def poison(grad):  # the second step's gradient is not a number
        seen.append(trainer.step)
        if trainer.step == 1:
            before.update(weights())
            return grad * float("nan")
        if trainer.step == 2:
            after.update(weights())  # the weights the poisoned step left
        return grad

    weight.register_hook(poison)
    reports = list(trainer.run())
    assert seen == [0, 1, 2] and len(reports) == 3 and trainer.stopped == "budget"
    assert all(torch.isfinite(v).all() for v in trainer.model.state_dict().values() if v.is_floating_point())
    assert all(np.isfinite(r.loss) for r in reports)
    assert all(torch.equal(before[k], after[k]) for k in before)  # the poisoned step changed nothing
    assert not torch.equal(before[next(iter(before))], tiny_model.state_dict()[next(iter(before))])  # it trained


def test_overfitting_one_image_lowers_loss_and_raises_score(tiny_model, pair):
    trainer = Trainer(tiny_model, [pair], config=_config(max_steps=60))
    start_dice = trainer.validate()[0]
    reports = list(trainer.run())
    result = trainer.result()
    assert all(isinstance(r, StepReport) for r in reports)
    first, last = np.mean([r.loss for r in reports[:5]]), np.mean([r.loss for r in reports[-6:-1]])
    assert last < 0.8 * first
    assert result.accepted, result.message
    assert result.best_val_dice > max(start_dice, 0.6)
    assert result.model is result.trained_model
    # The model passed in is never changed.
    assert not torch.equal(result.model.head.weight, tiny_model.head.weight)
    assert reports[-1].total_steps == 60 and reports[-1].eta == 0


def test_train_function_returns_result(tiny_model, pair):
    result = run_to_end(train(tiny_model, [pair], config=_config(max_steps=12), device="cpu"))
    assert result.steps == 12 and result.stopped == "budget"


def test_cancel_keeps_best_model(tiny_model, pair):
    trainer = Trainer(tiny_model, [pair], config=_config(max_steps=1000))
    gen = trainer.run()
    for report in gen:
        if report.step >= 22:
            break
    gen.close()  # what worker.quit() does
    result = trainer.result()
    assert result.stopped == "cancelled"
    assert result.steps == 22 and result.best_step in (10, 20)
    model = result.trained_model
    logits, gates = model(torch.zeros(1, 3, 64, 64))
    assert logits.shape == (1, 3, 64, 64) and not model.training
    assert torch.isfinite(logits).all()


def test_cancel_before_first_step_keeps_previous_model(tiny_model, pair):
    trainer = Trainer(tiny_model, [pair], config=_config())
    gen = trainer.run()
    gen.close()
    result = trainer.result()
    assert not result.accepted and result.model is tiny_model


def test_ignored_labels_do_not_change_the_gradient(tiny_model, pair):
    image, labels = pair
    ignore = np.zeros(labels.shape, bool)
    ignore[:, : labels.shape[1] // 2] = True
    garbage = labels.copy()
    garbage[ignore] = np.arange(ignore.sum()) % 7  # nonsense labels where ignored

    def gradient(lab):
        model = AttentionUNet(ModelConfig(base_width=4, depth=3))
        model.load_state_dict(tiny_model.state_dict())
        sample = prepare_sample(image, lab, ignore=ignore)
        assert (sample.target[ignore] == IGNORE).all()
        rng = np.random.default_rng(1)
        x, y = augment(sample.image, sample.target, rng, (96, 96))
        x = torch.from_numpy(np.broadcast_to(x, (3, 96, 96)).copy())[None]
        logits, _ = model(x)
        segmentation_loss(logits, torch.from_numpy(y)[None]).backward()
        return model.head.weight.grad.clone()

    assert torch.allclose(gradient(labels), gradient(garbage))


def test_ignore_mask_equals_training_without_those_labels(tiny_model, pair):
    image, labels = pair
    ignore = np.zeros(labels.shape, bool)
    ignore[: labels.shape[0] // 3] = True
    changed = labels.copy()
    changed[ignore] = 0
    config = _config(max_steps=6, eval_every=100)
    runs = []
    for lab in (labels, changed):
        trainer = Trainer(tiny_model, [(image, lab)], config=config, ignore_masks=[ignore])
        run_to_end(trainer.run())
        runs.append(trainer.model.head.weight.detach().clone())
    assert torch.allclose(runs[0], runs[1])


def test_edited_pixels_attract_patches(tiny_model):
    # A dark 512 x 512 image with one bright edited square in a corner: patches of 64
    # would rarely contain it by chance, but always do when every patch is centred on an edit.
    image = np.random.default_rng(0).integers(0, 50, (512, 512)).astype(np.uint8)
    image[10:20, 10:20] = 255
    labels = np.zeros((512, 512), np.uint16)
    labels[100:130, 100:130] = 1
    edited = image > 200

    def share_with_square(edited_fraction: float) -> float:
        config = _config(patch_size=64, batch_size=16, edited_fraction=edited_fraction, val_fraction=0.1)
        trainer = Trainer(tiny_model, [(image, labels)], config=config, edited_masks=[edited])
        x, _, _ = trainer._batch()
        return float((x.amax(dim=(1, 2, 3)) > 2.0).float().mean())

    assert share_with_square(1.0) == 1.0
    assert share_with_square(0.0) < 0.5


def test_early_stop_and_nothing_better_than_the_start_keeps_the_start(tiny_model, pair):
    # lr 0 and frozen batch norm: no trained state differs from the starting model, so none
    # beats it; patience 2 stops at the second evaluation and the previous model is kept.
    config = _config(max_steps=1000, lr=0.0, eval_every=3, patience=2, freeze_batchnorm=True)
    trainer = Trainer(tiny_model, [pair], config=config)
    result = run_to_end(trainer.run())
    assert trainer.stopped == "early stop"
    assert trainer.step == 6
    assert not result.accepted and result.model is tiny_model
    assert result.best_step == 0 and "starting model" in result.message
    assert result.start_scores["ap"] == result.best_val_ap


def test_best_state_is_chosen_by_instance_score_on_the_held_out_strip(tiny_model, pair):
    trainer = Trainer(tiny_model, [pair], config=_config(max_steps=40))
    assert trainer.select_by == "instances"
    reports = list(trainer.run())
    result = trainer.result()
    scored = [r for r in reports if r.val_dice is not None]
    assert scored and all(r.val_ap is not None and 0 <= r.val_ap <= 1 for r in scored)
    # The kept state is the one with the best AP@0.5 (ties broken by Dice), not the best Dice.
    best = max(
        [(result.start_scores["ap"], result.start_scores["dice"], 0)] + [(r.val_ap, r.val_dice, r.step) for r in scored]
    )
    assert result.best_step == best[2] and result.best_val_ap == pytest.approx(best[0])
    assert result.accepted and result.best_val_ap > result.start_scores["ap"]
    assert "AP@0.5" in result.message and "starting model" in result.message


def test_labels_with_an_edit_record_need_not_beat_the_start(tiny_model, pair):
    # Painted pixels in an L: the held-out strip (right of the painted box) also holds unpainted
    # pixels, the model's own accepted prediction, which the start matches by construction; so the
    # best trained state is kept instead.
    edited = np.zeros(pair[1].shape, bool)
    edited[160:170, 20:130] = True
    edited[170:250, 20:30] = True
    config = _config(max_steps=6, lr=0.0, eval_every=3, freeze_batchnorm=True)
    trainer = Trainer(tiny_model, [pair], config=config, edited_masks=[edited])
    assert not trainer.must_beat_start
    result = run_to_end(trainer.run())
    assert result.best_step == 3 and result.start_scores is not None
    assert "starting model" not in result.message
    assert Trainer(tiny_model, [pair], config=_config()).must_beat_start
    forced = _config(must_beat_start=True)
    assert Trainer(tiny_model, [pair], config=forced, edited_masks=[edited]).must_beat_start
    # Trained on the painted pixels alone, the strip is all the user's: the start must be beaten.
    only_painted = Trainer(tiny_model, [pair], config=config, edited_masks=[edited], ignore_masks=[~edited])
    assert only_painted.must_beat_start


def test_finding_nothing_is_refused_only_where_the_held_out_labels_hold_objects(tiny_model, pair):
    """Erasing a false object and fine-tuning: a model that finds nothing there is right, not broken."""
    from napari_attention_unet.core.train.selection import sanity_verdict
    from napari_attention_unet.core.train.validation import predict_probabilities, score_samples

    image, labels = pair
    probabilities = lambda model, x: predict_probabilities(model, x, torch.device("cpu"), None)  # noqa: E731
    empty = prepare_sample(image, np.zeros_like(labels), val_fraction=0.2)
    full = prepare_sample(image, labels, val_fraction=0.2)
    assert not score_samples([empty], tiny_model, probabilities, "instances")["labelled"]
    assert score_samples([full], tiny_model, probabilities, "instances")["labelled"]
    common = dict(step=5, stopped="budget", best_step=5, best_dice=1.0, best_ap=1.0, start_scores=None)
    refused, why = sanity_verdict({"fraction": 0.0, "labelled": True}, **common)
    assert not refused and "finds no objects" in why
    assert sanity_verdict({"fraction": 0.0, "labelled": False}, **common)[0]
    # Accepted: the message says how many objects were held out, and whether the start was a bar.
    common["start_scores"] = {"ap": 0.857}
    scores = {"fraction": 0.3, "objects": 7}
    said = sanity_verdict(scores, **common)[1]
    assert "AP@0.5 1.000 on 7 held-out objects (starting model 0.857)," in said
    said = sanity_verdict(scores, **common, judged=False)[1]
    assert "(starting model 0.857; not a bar here: the held-out region holds masks you did not correct" in said
    assert score_samples([full], tiny_model, probabilities, "instances")["objects"] == len(
        np.unique(full.val_instances[full.val_instances > 0])
    )
    # Objects found, none of them right (labels transposed on a square image): doubted, not put in use.
    refused, why = sanity_verdict({"fraction": 0.3, "objects": 14, "ap": 0.0}, **common)
    assert not refused and "matches none of the 14 held-out objects (AP@0.5 0.000)" in why
    assert sanity_verdict({"fraction": 0.3, "objects": 14, "ap": 0.05}, **common)[0]


def test_held_out_strip_lies_in_the_labelled_or_painted_region(pair):
    image, labels = pair
    h, w = labels.shape
    # No ignore mask, no edits: the right-hand fifth of the whole image, as before.
    whole = prepare_sample(image, labels, val_fraction=0.2)
    held = whole.val_target != IGNORE
    assert held[:, w - round(0.2 * w) :].all() and not held[:, : w - round(0.2 * w)].any()
    assert (whole.target[held] == IGNORE).all()

    # Labels only inside a box (the rest ignored, as "inside the shapes" gives): the strip is
    # the right fifth of the box, not the ignored right edge of the image.
    ignore = np.ones(labels.shape, bool)
    ignore[10:50, 5:45] = False
    boxed = prepare_sample(image, labels, ignore=ignore, val_fraction=0.2)
    rows, cols = np.nonzero(boxed.val_target != IGNORE)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (10, 49, 37, 44)
    assert (boxed.target[10:50, 5:37] != IGNORE).all() and (boxed.target[:, 37:] == IGNORE).all()
    assert boxed.val_trusted

    # Corrections painted in one corner, whole image trained on: the strip is cut from the
    # painted box, and it counts as the user's only where every labelled pixel there was painted.
    edited = np.zeros(labels.shape, bool)
    edited[5:85, 10:110] = True
    painted = prepare_sample(image, labels, edited=edited, val_fraction=0.2)
    rows, cols = np.nonzero(painted.val_target != IGNORE)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (5, 84, 90, 109)
    assert painted.val_trusted

    # One small correction (an erased object, 20 px): a strip of it could not score a model, so all
    # of it trains and the strip is the whole image's, which checks that the rest still holds.
    small = np.zeros(labels.shape, bool)
    small[5:25, 10:30] = True
    corrected = prepare_sample(image, labels, edited=small, val_fraction=0.2)
    assert np.array_equal(corrected.val_target != IGNORE, held)
    assert (corrected.target[small] != IGNORE).all() and not corrected.val_trusted
    assert held_out_region(np.ones((4, 4), bool), None, 0.2) == (slice(0, 4), slice(3, 4))
    assert held_out_region(np.zeros((4, 4), bool), None, 0.2) is None
    with pytest.raises(ValueError, match="too narrow"):
        held_out_region(np.ones((4, 1), bool), None, 0.2)


def test_strokes_hold_out_a_strip_that_leaves_each_class_most_of_its_pixels():
    """Strokes (0 = unlabelled): a long stroke of a rare class at the right would all but vanish into a
    right-hand strip; the strip is the one holding each class in proportion, every class in it."""
    strokes = np.zeros((100, 200), np.uint8)
    strokes[10:13, 20:190] = 2  # a long stroke of class 2 across the image
    strokes[50:52, 150:200] = 1  # class 1: one short stroke, at the right edge
    strokes[80:82, 20:40] = 1  # and one at the left
    image = strokes.astype(np.float32) * 50
    sample = prepare_sample(image, strokes, in_channels=1, task="semantic", zero_is="unlabelled", val_fraction=0.2)
    held = sample.val_target != IGNORE
    for c in (1, 2):  # each class in the strip, and at most about a third of its pixels there
        share = (held & (strokes == c)).sum() / (strokes == c).sum()
        assert 0 < share < 0.35, (c, share)
    right = held_out_region(strokes > 0, None, 0.2)  # the right-hand strip, as strokes had until now
    assert (strokes[right] == 1).sum() / (strokes == 1).sum() > 0.45  # half of class 1 never trained


def test_dense_class_labels_hold_out_a_strip_where_the_classes_are():
    """A scan whose classes sit in its middle (background margins, as MR crops): the held-out strip
    of dense semantic labels lies in the classes' columns and holds a fair share of each, not the background
    margin nor a sliver of one class (whose Dice would be noise: MR hippocampi, bench_finetune_3d.py)."""
    from napari_attention_unet.core.train.samples import prepare_sample

    labels = np.zeros((12, 20, 40), np.uint8)
    labels[3:9, 5:15, 8:20] = 1
    labels[3:9, 5:15, 20:26] = 2
    image = labels.astype(np.float32) * 50 + np.random.default_rng(0).normal(0, 5, labels.shape)
    sample = prepare_sample(image, labels, axes="ZYX", in_channels=1, val_fraction=0.3, task="semantic")
    held = sample.val_target != IGNORE
    columns = np.flatnonzero(held.any(axis=(0, 1)))
    assert columns.min() >= 8 and columns.max() <= 25  # inside the classes' columns, not the margin
    assert {1, 2} <= set(np.unique(sample.val_target[held]).tolist())
    for c in (1, 2):  # each class in proportion: the right-most strip holding both held 1 of class 1's 12 columns
        share = (held & (labels == c)).sum() / (labels == c).sum()
        assert 0.15 < share < 0.5, (c, share)
    assert (sample.target[held] == IGNORE).all()  # never trained on
    # a class found in one spot only is never held out whole: the model could not learn it
    rare = labels.copy()
    rare[5, 10, 30:32] = 3
    sample = prepare_sample(image, rare, axes="ZYX", in_channels=1, val_fraction=0.3, task="semantic")
    assert (sample.target == 3).any()
    between = labels.copy()  # nor when every strip holding all classes would take it whole
    between[5, 10, 20] = 3
    sample = prepare_sample(image, between, axes="ZYX", in_channels=1, val_fraction=0.3, task="semantic")
    assert (sample.target == 3).any() and (sample.val_target != IGNORE).any()
    # instance labels keep the right-hand strip of the image
    instances = prepare_sample(image, labels, axes="ZYX", in_channels=1, val_fraction=0.3)
    assert np.flatnonzero((instances.val_target != IGNORE).any(axis=(0, 1))).max() == 39


def test_validation_predicts_the_held_out_region_with_context_not_the_whole_image(tiny_model, pair, monkeypatch):
    from napari_attention_unet.core.train import loop

    # Corrections in the top-left corner of a large image: each evaluation predicts the held-out
    # strip plus VALIDATION_MARGIN of context, and scores what the whole image would have scored.
    image, labels = pair
    big_image = np.tile(image, (3, 3) + (1,) * (image.ndim - 2))
    big_labels = np.zeros((3 * labels.shape[0], 3 * labels.shape[1]), np.int32)
    for i in range(3):
        for j in range(3):
            tile = np.where(labels > 0, labels.astype(np.int32) + 1000 * (3 * i + j), 0)
            big_labels[
                i * labels.shape[0] : (i + 1) * labels.shape[0], j * labels.shape[1] : (j + 1) * labels.shape[1]
            ] = tile
    edited = np.zeros(big_labels.shape, bool)
    edited[8:90, 8:110] = True
    trainer = Trainer(tiny_model, [(big_image, big_labels)], config=_config(max_steps=2), edited_masks=[edited])
    sample = trainer.validation[0]
    rows, cols = np.nonzero(sample.val_target != IGNORE)
    assert rows.max() < 90 and cols.min() > 8 and cols.max() < 110

    seen = []
    real = loop.predict_probabilities

    def recording(model, image, device, amp):
        seen.append(image.shape)
        return real(model, image, device, amp)

    monkeypatch.setattr(loop, "predict_probabilities", recording)
    scores = trainer.validation_scores()
    top, left = max(rows.min() - VALIDATION_MARGIN, 0), max(cols.min() - VALIDATION_MARGIN, 0)
    bottom, right = rows.max() + 1 + VALIDATION_MARGIN, cols.max() + 1 + VALIDATION_MARGIN
    assert seen == [(sample.image.shape[0], bottom - top, right - left)]
    assert seen[0][1] * seen[0][2] < big_labels.size / 8

    # The same scores from the whole image (the margin covers this network's receptive field).
    whole = real(trainer.model.eval(), sample.image, trainer.device, trainer.amp)
    dice, iou, fraction = foreground_scores(whole[0] < 0.5, sample.val_target)
    counts = _instance_counts(whole, sample.val_target, sample.val_instances)
    assert scores["dice"] == pytest.approx(dice, abs=1e-6) and scores["iou"] == pytest.approx(iou, abs=1e-6)
    assert scores["ap"] == pytest.approx(counts[0] / counts.sum() if counts.sum() else 1.0)


def test_selection_falls_back_to_foreground_dice_without_a_held_out_strip(tiny_model, pair):
    # Explicit validation images (as the bundled model's recipe gives) carry no object ids.
    validation = [prepare_sample(*pair)]
    trainer = Trainer(tiny_model, [pair], config=_config(max_steps=3), validation=validation)
    assert trainer.select_by == "foreground"
    assert all(r.val_ap is None for r in trainer.run())
    with pytest.raises(ValueError, match="held-out strip"):
        Trainer(tiny_model, [pair], config=_config(select_by="instances"), validation=validation)
    with pytest.raises(ValueError, match="select_by"):
        Trainer(tiny_model, [pair], config=_config(select_by="best"))


def test_images_held_out_whole_are_scored_by_their_objects(tiny_model, pair):
    """From five images on, ``train`` holds out whole images: their objects are scored (AP@0.5), so a model
    matching none of them (labels transposed) is doubted as with a strip, not judged by Dice alone."""
    from napari_attention_unet.core.train.start import split_samples

    image, labels = pair
    pairs = [(image, labels)] * 4 + [(image, labels.T.copy() if labels.shape[0] == labels.shape[1] else labels)]
    samples, validation = split_samples(tiny_model.config, _config(), pairs)
    assert len(samples) == 4 and len(validation) == 1
    held = validation[0].val_instances
    assert held is not None and len(np.unique(held[held > 0])) == len(np.unique(pairs[4][1][pairs[4][1] > 0]))
    trainer = Trainer(tiny_model, config=_config(max_steps=2), samples=samples, validation=validation)
    assert trainer.select_by == "instances"
    reports = list(trainer.run())
    assert reports[-1].val_ap is not None


def test_a_model_without_the_three_classes_is_refused_clearly(pair):
    semantic = AttentionUNet(ModelConfig(base_width=4, depth=3, classes=("background", "cell")))
    with pytest.raises(ValueError, match="background / interior / boundary"):
        Trainer(semantic, [pair], config=_config())


def test_all_background_labels_are_refused(tiny_model, pair):
    """Refused before any training: a model of background alone would find nothing."""
    image, labels = pair
    with pytest.raises(ValueError, match="the labels hold no objects, only background"):
        run_to_end(train(tiny_model, [(image, np.zeros_like(labels))], config=_config(max_steps=30, lr=2e-2)))


def test_checkpoint_round_trip(tiny_model, pair, tmp_path):
    trainer = Trainer(tiny_model, [pair], config=_config(max_steps=11))
    run_to_end(trainer.run())
    torch.save(trainer.checkpoint(), tmp_path / "last.pt")
    again = Trainer(tiny_model, [pair], config=_config(max_steps=11))
    again.load_checkpoint(torch.load(tmp_path / "last.pt", weights_only=True))
    assert again.step == 11 and again.best_dice == trainer.best_dice
    assert torch.equal(again.model.head.weight, trainer.model.head.weight)
    # Resumed for 3 more steps: the ETA comes from this run's pace, not from the 11 earlier steps.
    again.config.max_steps = 14
    elapsed_before = again.elapsed
    generator = again.run()
    first = next(generator)
    assert first.step == 12
    assert first.eta == pytest.approx(2 * (first.elapsed - elapsed_before), rel=0.05)
    generator.close()


def test_augment_keeps_image_and_target_aligned():
    rng = np.random.default_rng(0)
    target = np.zeros((50, 70), np.uint8)
    target[10:20, 30:45] = 1
    image = target[None].astype(np.float32)
    for _ in range(20):
        x, y = augment(image, target, rng, (64, 64))
        assert x.shape == (1, 64, 64) and y.shape == (64, 64)
        inside = y == 1
        # Image bright exactly where the label is, up to interpolation at the rim and intensity jitter.
        assert x[0][inside].mean() > x[0][y == 0].mean() + 0.3


def test_stain_jitter_changes_the_stains_not_the_picture():
    rng = np.random.default_rng(0)
    # An H&E-like patch: pink background, purple-blue nuclei (dark in red and green).
    image = np.empty((3, 40, 40), np.float32)
    image[:] = np.array([0.9, 0.7, 0.85], np.float32)[:, None, None]
    image[:, 10:20, 10:20] = np.array([0.35, 0.2, 0.6], np.float32)[:, None, None]
    assert stain_jitter(image, rng, 0.0) is image
    grey = image[:1]
    assert stain_jitter(grey, rng, 0.1) is grey  # only RGB images have stains
    changes = []
    for _ in range(10):
        out = stain_jitter(image, rng, 0.1)
        assert out.shape == image.shape and out.dtype == np.float32
        nucleus, background = out[:, 15, 15], out[:, 30, 30]
        # The colours move, but nuclei stay darker than the background in every channel.
        assert np.all(nucleus < background)
        changes.append(np.abs(out - image).max())
    assert 0.005 < np.median(changes) < 0.3
    # Without a change of stain amounts, colour deconvolution and back gives the image again.
    same = stain_jitter(image, np.random.default_rng(1), 1e-9)
    np.testing.assert_allclose(same, image, atol=1e-5)


def test_fine_tuning_freezes_batchnorm_statistics(tiny_model, pair):
    before = tiny_model.encoder[0][1].running_mean.clone()
    for from_scratch, frozen in ((False, True), (True, False)):
        trainer = Trainer(tiny_model, [pair], config=_config(max_steps=3, from_scratch=from_scratch))
        run_to_end(trainer.run())
        after = trainer.model.encoder[0][1].running_mean
        assert torch.equal(after, before) == frozen


def test_weight_maps_follow_the_patches(tiny_model, pair):
    image, labels = pair
    weight = np.ones(labels.shape, np.float32)
    weight[labels > 0] = 5.0
    trainer = Trainer(tiny_model, [pair], config=_config(max_steps=3), weight_maps=[weight])
    _, targets, weights = trainer._batch()
    assert weights.shape == targets.shape
    # Heavy weights sit on objects (up to resampling at the rims and the ignored strip).
    on_objects = (targets == 1) & (weights > 0)
    assert float(weights[on_objects].mean()) > 4.0
    run_to_end(trainer.run())


def test_3d_model_trains_on_a_volume():
    rng = np.random.default_rng(0)
    labels = np.zeros((16, 40, 40), np.uint16)
    labels[4:10, 8:20, 8:20] = 1
    labels[6:12, 22:34, 20:32] = 2
    image = ((labels > 0) * 150 + rng.normal(30, 10, labels.shape)).clip(0, 255).astype(np.uint8)
    torch.manual_seed(0)
    model = AttentionUNet(ModelConfig(spatial_dims=3, in_channels=1, base_width=2, depth=2))
    trainer = Trainer(model, [(image, labels, "ZYX")], config=_config(max_steps=3, patch_size=32, batch_size=2))
    run_to_end(trainer.run())
    assert trainer.step == 3 and trainer.patch == (32, 32, 32)
    assert trainer.result().trained_model.config.spatial_dims == 3


def test_optimizer_code_can_be_loaded_ahead_of_the_first_fine_tune():
    # The widget calls load_optimizer_code while its panel is built, so that building the Trainer's
    # optimiser in the worker imports nothing more (imports hold the GIL: the viewer would freeze).
    # A fresh interpreter each time: in this one an optimiser has long been built.
    import subprocess
    import sys

    def new_modules(load_first: bool) -> int:
        code = (
            "import sys, torch\n"
            "from napari_attention_unet.core.train import load_optimizer_code\n"
            + ("load_optimizer_code()\n" if load_first else "")
            + "before = set(sys.modules)\n"
            "torch.optim.AdamW([torch.zeros(2, requires_grad=True)], lr=1e-3)\n"
            "print(len(set(sys.modules) - before))\n"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        return int(out.stdout.strip().splitlines()[-1])

    if new_modules(load_first=False) == 0:
        pytest.skip(f"torch {torch.__version__} imports nothing when its first optimiser is built")
    assert new_modules(load_first=True) == 0


def test_time_budget_keeps_room_for_the_last_evaluation(tiny_model, pair, monkeypatch):
    """A slow evaluation must not push a run past its time budget: training stops early enough
    for the final evaluation to end near the budget (a 5-minute run once took 6:06). A fake clock
    makes it exact: every reading of the clock is 1 s later, and scoring the held-out part 20 s."""
    from napari_attention_unet.core.train import loop

    now = [0.0]

    def perf_counter() -> float:
        now[0] += 1.0
        return now[0]

    real_scores = loop.score_samples

    def slow_scores(*args, **kwargs):
        now[0] += 20.0
        return real_scores(*args, **kwargs)

    monkeypatch.setattr(loop.time, "perf_counter", perf_counter)
    monkeypatch.setattr(loop, "score_samples", slow_scores)
    trainer = Trainer(tiny_model, [pair], config=_config(max_steps=None, time_budget=60.0, eval_every=1000))
    run_to_end(trainer.run())
    evaluated = [r.step for r in trainer.history if r.val_dice is not None]
    assert evaluated == [trainer.step], "one final evaluation, after the last step"
    # Without the reserve, training ran to 60 s and the final evaluation ended at about 83 s.
    assert 50.0 <= trainer.elapsed <= 63.0, trainer.elapsed
    assert trainer.eval_seconds >= 20.0


def test_one_painted_object_alone_is_refused_with_what_to_do():
    """'Only what I edited' after painting one missed nucleus: the painted pixels are one object and no
    background. The refusal says so (it said "one value only (65) on every pixel" of a 65-object layer)."""
    from napari_attention_unet.core.train.targets import check_corrections

    labels = np.zeros((64, 64), np.uint16)
    labels[:8, :8], labels[20:30, 20:30], labels[40:50, 40:50] = 1, 2, 65
    ignore = labels != 65  # only the new nucleus was painted
    with pytest.raises(ValueError, match=r"the pixels you painted are all one object \(65\), and only they count"):
        check_corrections(labels, ignore)
    check_corrections(labels, (labels == 1) | (labels == 2))  # the new nucleus and background painted: fine
    check_corrections(np.zeros_like(labels), labels > 0)  # erased objects only (painted 0s): fine
    with pytest.raises(ValueError, match=r"no objects \(every pixel is 0\)"):
        check_corrections(np.zeros_like(labels), None)
