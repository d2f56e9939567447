"""Fold members: a model that averages networks trained apart, each holding out other images (``core.train.folds``),
in the model file, in training, on the command line and in prediction. Tiny networks on synthetic volumes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import torch
from safetensors.torch import load_file, save_file
from test_train_cli import TINY, run_cli, three_classes

from napari_attention_unet.core.model import AttentionUNet, ModelConfig, join_members
from napari_attention_unet.core.predict import predict, run_to_end
from napari_attention_unet.core.train import Trainer
from napari_attention_unet.core.train.folds import Members, default_members
from napari_attention_unet.core.train.start import default_train_config, split_samples
from napari_attention_unet.core.weights import ModelFileError, load_model, read_metadata, save_model

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIG = ModelConfig(
    spatial_dims=3, in_channels=1, classes=("background", "a", "b"), base_width=4, depth=3, task="semantic"
)


def networks(n: int) -> list[AttentionUNet]:
    out = []
    for seed in range(n):
        torch.manual_seed(seed)
        out.append(AttentionUNet(CONFIG).eval())
    return out


def test_a_joined_model_averages_its_members_probabilities_and_gate_maps(tmp_path):
    singles = networks(3)
    joined = join_members(singles).eval()
    x = torch.randn(1, 1, 8, 16, 16)
    logits, gates = joined(x)
    with torch.no_grad():
        outputs = [net(x) for net in singles]
    mean = torch.stack([torch.softmax(logits, 1) for logits, _ in outputs]).mean(0)
    torch.testing.assert_close(torch.softmax(logits, 1), mean, atol=1e-6, rtol=0)
    for name in CONFIG.gate_names:
        torch.testing.assert_close(gates[name], torch.stack([g[name] for _, g in outputs]).mean(0))
    assert not torch.allclose(mean, torch.softmax(outputs[0][0], 1), atol=1e-3)  # the members do differ
    fast = joined.fused_for_inference().joined_for_cpu()  # what prediction runs on the CPU
    torch.testing.assert_close(torch.softmax(fast(x)[0], 1), mean, atol=1e-5, rtol=0)

    path = save_model(joined, tmp_path / "m.safetensors")
    config, _ = read_metadata(path)
    assert config.members == 3 and config == joined.config
    loaded, _ = load_model(path)
    torch.testing.assert_close(torch.softmax(loaded(x)[0], 1), mean, atol=1e-6, rtol=0)
    assert "members" not in CONFIG.to_dict()  # single networks are described as before members existed


def test_the_dock_says_a_model_averages_members(tmp_path):
    from napari_attention_unet.gui.session import Session

    session = Session(device="cpu")
    session.load_model(save_model(join_members(networks(3)), tmp_path / "hippocampus.safetensors"))
    assert "3D semantic: a, b" in session.describe_model() and "3 networks averaged" in session.describe_model()
    session.load_model(save_model(networks(1)[0], tmp_path / "one.safetensors"))
    assert "averaged" not in session.describe_model()


@pytest.mark.parametrize("members", [0, 9, 2.5])
def test_a_member_count_out_of_range_is_refused_and_a_file_claiming_one_is_damaged(tmp_path, members):
    with pytest.raises(ValueError, match="members must be a whole number from 1 to 8"):
        ModelConfig(members=members)
    path = save_model(join_members(networks(2)), tmp_path / "m.safetensors")
    state = load_file(str(path))
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata())
    description = json.loads(meta["config"])
    description["members"] = members
    save_file(state, str(path), metadata={**meta, "config": json.dumps(description)})
    with pytest.raises(ModelFileError):
        load_model(path)


def test_only_single_networks_of_one_description_join():
    other = AttentionUNet(ModelConfig(spatial_dims=3, in_channels=1, classes=CONFIG.classes, base_width=6, depth=3))
    with pytest.raises(ValueError, match="same description"):
        join_members([networks(1)[0], other])
    with pytest.raises(ValueError, match="same description"):
        join_members([join_members(networks(2))])


def volumes(n: int) -> list[tuple]:
    return [(*three_classes((12, 24, 24), seed=i), "ZYX") for i in range(n)]


def test_each_member_holds_out_another_fifth_of_the_images():
    pairs = volumes(7)
    config = default_train_config("semantic", 3, [p[0].shape for p in pairs], from_scratch=True, steps=4)
    run = Members(AttentionUNet(CONFIG).train(), config, pairs, None, "cpu", 5)
    seen = []
    for k in range(5):
        samples, validation = split_samples(CONFIG, config, pairs, fold=k)
        held = run.held_out(k)
        assert len(samples) + len(validation) == 7 and len(validation) == len(held)
        seen += held
    assert sorted(seen) == list(range(7))  # every image is held out by exactly one member
    assert run.held_out(0) == [4] and run.held_out(1) == [3] and run.held_out(4) == [0, 5]


def test_members_train_while_the_budget_has_room_and_join():
    pairs = volumes(5)
    shapes = [p[0].shape for p in pairs]
    settings = dict(from_scratch=True, eval_every=2, patience=2, precision="fp32")
    roomy = default_train_config("semantic", 3, shapes, minutes=5, steps=4, **settings)
    run = Members(AttentionUNet(CONFIG).train(), roomy, pairs, None, "cpu", 3)
    trainers = []
    for _, trainer in run.trainers():
        run_to_end(trainer.run())
        trainers.append(trainer)
    joined = run.result()
    assert len(trainers) == 3 and len(joined.results) == 3 and joined.model.config.members == 3
    assert {t.config.seed for t in trainers} == {0, 1, 2}  # each from its own start and patches
    firsts = [t.model.encoder[0][0].weight for t in trainers]
    assert not torch.allclose(firsts[0], firsts[1])
    for member, result in zip(joined.model.members, joined.results):  # the kept states, copied
        torch.testing.assert_close(member.head.weight, result.trained_model.head.weight)
    image = pairs[0][0]
    prediction = run_to_end(predict(joined.model, image, axes="ZYX", device="cpu", precision="fp32"))
    assert prediction.labels.shape == image.shape and set(prediction.gate_maps) == set(CONFIG.gate_names)

    settings["patience"] = 10_000  # no early stop: the first member takes the whole 1.8 s, leaving no room
    tight = default_train_config("semantic", 3, shapes, minutes=0.03, steps=10_000, **settings)
    run = Members(AttentionUNet(CONFIG).train(), tight, pairs, None, "cpu", 3)
    assert len([run_to_end(t.run()) for _, t in run.trainers()]) == 1
    assert run.result().model.config.members == 1


def test_a_member_stopped_half_way_is_left_out():
    pairs = volumes(5)
    config = default_train_config("semantic", 3, [p[0].shape for p in pairs], from_scratch=True, steps=3)
    run = Members(AttentionUNet(CONFIG).train(), config, pairs, None, "cpu", 4)
    for k, trainer in run.trainers():
        run_to_end(trainer.run())
        run.interrupted = k == 1  # Ctrl-C during the second member
    assert len(run.result().results) == 1 and run.result().model.config.members == 1


def test_new_3d_semantic_models_from_scratch_on_five_volumes_get_members_by_default():
    assert default_members(3, True, 5, timed=True) == 5
    assert default_members(3, True, 4, timed=True) == 1  # a strip of each held out: no folds to rotate
    assert default_members(2, True, 20, timed=True) == 1  # 2D: a large image would predict 5 times slower
    assert default_members(3, False, 20, timed=True) == 1
    assert default_members(3, True, 20, timed=False) == 1  # a step count asks for one network of that many


def test_a_new_model_started_from_a_joined_one_takes_its_first_members_weights():
    from napari_attention_unet.core.train.start import new_model

    joined = join_members(networks(2))
    model = new_model("semantic", ("background", "x"), 3, 1, joined)
    assert model.members is None
    torch.testing.assert_close(model.encoder[0][0].weight, joined.members[0].encoder[0][0].weight)


def test_a_joined_model_fine_tunes_every_member():
    image, labels = three_classes((12, 24, 24))
    joined = join_members(networks(2)).train()
    before = [m.head.weight.detach().clone() for m in joined.members]
    config = default_train_config("semantic", 3, [image.shape], from_scratch=False, steps=3, precision="fp32")
    trainer = Trainer(joined, [(image, labels, "ZYX")], config=config, device="cpu")
    run_to_end(trainer.run())
    after = [m.head.weight for m in trainer.model.members]
    assert all(not torch.allclose(b, a) and torch.isfinite(a).all() for b, a in zip(before, after))


def test_train_members_then_predict_with_the_path_as_typed(tmp_path):
    args = []
    for i in range(5):
        image, labels = three_classes((12, 24, 24), seed=i)
        tifffile.imwrite(tmp_path / f"v{i}.tif", image)
        tifffile.imwrite(tmp_path / f"v{i}_labels.tif", labels)
        args += ["--image", f"v{i}.tif", "--labels", f"v{i}_labels.tif"]
    done = run_cli("train", *args, "--out", "ens", "--dims", "3", "--steps", "4", "--members", "2", *TINY, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "member 2 (of up to 2): holding out images 4" in done.stderr
    assert "\nmember 1: " in done.stderr and "\nmember 2: " in done.stderr  # each one's outcome, as it ends
    assert "the model averages 2 members" in done.stderr
    config, info = read_metadata(tmp_path / "ens.safetensors")
    assert config.members == 2 and [m["held_out"] for m in info["members"]] == [[4], [3]]
    assert info["steps"] == 8
    done = run_cli("predict", "v0.tif", "--out", "out", "--model", "ens", "--device", "cpu", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    labels = tifffile.imread(tmp_path / "out" / "v0_labels.tif")
    assert labels.shape == (12, 24, 24) and set(np.unique(labels)) <= {0, 1, 2}
    two = args[:8]  # two volumes: each member holds out a strip of each (the same), and differs by its seed
    done = run_cli("train", *two, "--out", "two", "--dims", "3", "--steps", "2", "--members", "2", *TINY, cwd=tmp_path)
    assert done.returncode == 0 and "member 2 (of up to 2): holding out a strip of each image" in done.stderr
    done = run_cli("train", *args, "--out", "x", "--dims", "3", "--steps", "4", "--members", "9", *TINY, cwd=tmp_path)
    assert done.returncode == 2 and "--members is at most 8" in done.stderr and "Traceback" not in done.stderr


def test_each_members_outcome_is_worked_out_once(monkeypatch):
    """The CLI prints each member's outcome as it ends and then joins them: the held-out images are scored for
    each member once (at the end of its run), not again for the note or by :meth:`Members.result`."""
    from napari_attention_unet.cli.common import drive_training
    from napari_attention_unet.core.train.loop import Trainer

    calls = []
    real = Trainer.result
    monkeypatch.setattr(Trainer, "result", lambda self: calls.append(self) or real(self))
    pairs = volumes(5)
    config = default_train_config("semantic", 3, [p[0].shape for p in pairs], from_scratch=True, steps=2)
    run = Members(AttentionUNet(CONFIG).train(), config, pairs, None, "cpu", 2)
    outcomes = []
    for _, trainer in run.trainers():
        finished, outcome = drive_training(trainer)  # as the CLI drives it
        assert finished and outcome.steps == 2
        run.record(trainer, outcome)
        outcomes.append(run.outcome(trainer))
    joined = run.result()
    assert joined.results == outcomes and run.outcome(run.done[1]) is outcomes[1]
    assert [calls.count(t) for t in run.done] == [1, 1]  # the end of run(), and no more


def test_finetune_scores_its_held_out_images_once(tmp_path, tiny_model_path, monkeypatch):
    """`finetune` takes the result its run returned: the held-out images are not scored a second time."""
    import tifffile

    from napari_attention_unet.cli import main
    from napari_attention_unet.core.train.loop import Trainer

    calls = []
    real = Trainer.result
    monkeypatch.setattr(Trainer, "result", lambda self: calls.append(self) or real(self))
    rng = np.random.default_rng(0)
    image = rng.random((64, 64, 3)).astype(np.float32)
    labels = np.zeros((64, 64), np.uint16)
    labels[8:20, 8:20], labels[30:44, 30:40] = 1, 2
    tifffile.imwrite(tmp_path / "cells.tif", image)
    tifffile.imwrite(tmp_path / "cells_labels.tif", labels)
    args = ["finetune", "--image", tmp_path / "cells.tif", "--labels", tmp_path / "cells_labels.tif"]
    main([*map(str, args), "--out", str(tmp_path / "tuned"), "--model", str(tiny_model_path), "--steps", "2",
          "--device", "cpu"])  # fmt: skip
    assert len(calls) == 1


def test_finetune_stopped_with_ctrl_c_works_out_what_it_kept(tmp_path, tiny_model_path, monkeypatch, capsys):
    """Ctrl-C during `finetune`: the run returns nothing, so the best state so far is worked out once, after it."""
    import tifffile

    from napari_attention_unet.cli import main
    from napari_attention_unet.core.train.loop import Trainer

    calls, batches = [], []
    real_result, real_batch = Trainer.result, Trainer._batch
    monkeypatch.setattr(Trainer, "result", lambda self: calls.append(self) or real_result(self))

    def batch(self):
        batches.append(1)
        if len(batches) == 4:
            raise KeyboardInterrupt
        return real_batch(self)

    monkeypatch.setattr(Trainer, "_batch", batch)
    rng = np.random.default_rng(0)
    tifffile.imwrite(tmp_path / "cells.tif", rng.random((64, 64, 3)).astype(np.float32))
    labels = np.zeros((64, 64), np.uint16)
    labels[8:20, 8:20], labels[30:44, 30:40] = 1, 2
    tifffile.imwrite(tmp_path / "cells_labels.tif", labels)
    args = ["finetune", "--image", tmp_path / "cells.tif", "--labels", tmp_path / "cells_labels.tif"]
    code = main([*map(str, args), "--out", str(tmp_path / "tuned"), "--model", str(tiny_model_path), "--steps", "10",
                 "--device", "cpu"])  # fmt: skip
    err = capsys.readouterr().err
    assert "interrupted: keeping the best model so far" in err and "Traceback" not in err
    assert len(calls) == 1 and calls[0].step == 3
    assert code == 0 and (tmp_path / "tuned.safetensors").is_file() or code == 2 and "was not written" in err
