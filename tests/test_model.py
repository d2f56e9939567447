"""The network: shapes, gates, parameter counts, gradients, 2D and 3D."""

import pytest
import torch

from napari_attention_unet.core.model import AttentionUNet, JoinConv, ModelConfig, count_parameters

TINY = ModelConfig(base_width=4, depth=3)


def test_default_size_matches_monai_scale():
    # MONAI's AttentionUnet with channels 16..256 has 1,987,451 parameters; ours is the same scale.
    assert count_parameters(AttentionUNet(ModelConfig())) == 2_030_375


def test_forward_shapes_and_gate_maps_2d():
    model = AttentionUNet(ModelConfig(base_width=4, depth=5, in_channels=1)).eval()
    logits, gates = model(torch.rand(2, 1, 64, 48))
    assert logits.shape == (2, 3, 64, 48)
    assert list(gates) == ["gate4", "gate3", "gate2", "gate1"]  # coarse to fine, as the decoder runs
    for level, name in enumerate(["gate1", "gate2", "gate3", "gate4"]):
        assert gates[name].shape == (2, 1, 64 // 2**level, 48 // 2**level)
        assert 0.0 <= gates[name].min() and gates[name].max() <= 1.0


def test_forward_shapes_3d():
    model = AttentionUNet(ModelConfig(spatial_dims=3, in_channels=2, base_width=2, depth=3, classes=("bg", "fg")))
    logits, gates = model(torch.rand(1, 2, 8, 16, 12))
    assert logits.shape == (1, 2, 8, 16, 12)
    assert gates["gate1"].shape == (1, 1, 8, 16, 12)
    assert gates["gate2"].shape == (1, 1, 4, 8, 6)


def test_every_parameter_gets_a_gradient():
    model = AttentionUNet(TINY).train()
    logits, gates = model(torch.rand(2, 3, 32, 32))
    (logits.square().mean() + sum(g.mean() for g in gates.values())).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert missing == []


def test_gates_reachable_by_name_and_change_the_output():
    model = AttentionUNet(TINY).eval()
    x = torch.rand(1, 3, 32, 32)
    before, _ = model(x)
    with torch.no_grad():
        model.gates["gate1"].psi.bias.fill_(-50.0)  # close the finest gate completely
    after, gates = model(x)
    assert gates["gate1"].max() < 1e-6
    assert not torch.allclose(before, after)


def test_size_not_a_multiple_says_what_works():
    model = AttentionUNet(TINY)
    with pytest.raises(ValueError, match=r"multiple of 4.*\(32, 36\)"):
        model(torch.rand(1, 3, 30, 33))


def test_fused_copy_gives_the_same_output_and_leaves_the_original_trainable():
    model = AttentionUNet(TINY)
    model.train()
    model(torch.rand(4, 3, 32, 32))  # move the batch-norm statistics away from their defaults
    model.eval()
    x = torch.rand(1, 3, 32, 32)
    fused = model.fused_for_inference()
    assert torch.allclose(model(x)[0], fused(x)[0], atol=1e-5)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize("dims", [2, 3])
def test_joined_copy_gives_the_same_outputs_and_gate_maps(dims):
    # On the CPU the decoder convs take the skip and the upsampled features apart (JoinConv):
    # same logits and gate maps as the concatenating network, channels-last as predict runs it.
    torch.manual_seed(0)
    model = AttentionUNet(ModelConfig(spatial_dims=dims, base_width=4, depth=3))
    model.train()
    shape = (2, 3) + (16,) * dims
    model(torch.rand(shape))
    model.eval()
    fused = model.fused_for_inference()
    layout = torch.channels_last if dims == 2 else torch.channels_last_3d
    joined = model.fused_for_inference().joined_for_cpu().to(memory_format=layout)
    assert sum(isinstance(m, JoinConv) for m in joined.modules()) == 2
    x = torch.rand(shape)
    with torch.inference_mode():
        (expected, expected_gates), (logits, gates) = fused(x), joined(x.contiguous(memory_format=layout))
    assert torch.allclose(logits, expected, atol=1e-5)
    assert gates.keys() == expected_gates.keys()
    assert all(torch.allclose(gates[k], expected_gates[k], atol=1e-6) for k in gates)


def test_config_round_trip_and_validation():
    config = ModelConfig(spatial_dims=3, in_channels=1, classes=("bg", "cell"), base_width=8, depth=4)
    assert ModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError):
        ModelConfig(spatial_dims=4)
    with pytest.raises(ValueError):
        ModelConfig(depth=1)
