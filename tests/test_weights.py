"""Model files: round trip, half precision, and clear errors for bad files."""

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from napari_attention_unet.core.model import AttentionUNet, ModelConfig
from napari_attention_unet.core.weights import ModelFileError, load_model, read_metadata, save_model


@pytest.fixture
def model():
    torch.manual_seed(0)
    m = AttentionUNet(ModelConfig(base_width=4, depth=3, in_channels=1, classes=("bg", "cell", "edge")))
    m.train()
    m(torch.rand(2, 1, 32, 32))
    return m.eval()


def test_round_trip_gives_identical_outputs(model, tmp_path):
    path = save_model(model, tmp_path / "m", info={"name": "test", "score": 0.5})
    assert path.suffix == ".safetensors"
    loaded, info = load_model(path)
    assert info == {"name": "test", "score": 0.5}
    assert loaded.config == model.config
    x = torch.rand(1, 1, 32, 32)
    assert torch.equal(model(x)[0], loaded(x)[0])


def test_half_precision_file_is_smaller_and_close(model, tmp_path):
    full = save_model(model, tmp_path / "full.safetensors")
    half = save_model(model, tmp_path / "half.safetensors", half=True)
    assert half.stat().st_size < 0.7 * full.stat().st_size
    loaded, _ = load_model(half)
    assert next(loaded.parameters()).dtype == torch.float32
    x = torch.rand(1, 1, 32, 32)
    assert torch.allclose(model(x)[0], loaded(x)[0], atol=1e-2)


def test_metadata_without_weights(model, tmp_path):
    path = save_model(model, tmp_path / "m.safetensors", info={"a": 1})
    config, info = read_metadata(path)
    assert config == model.config and info == {"a": 1}


def test_missing_file(tmp_path):
    with pytest.raises(ModelFileError, match="no model file"):
        load_model(tmp_path / "nope.safetensors")


def test_random_bytes_are_refused(tmp_path):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(np.random.default_rng(0).bytes(1000))
    with pytest.raises(ModelFileError, match="not a readable model file"):
        load_model(path)


def test_pickle_is_never_executed(tmp_path):
    path = tmp_path / "evil.safetensors"
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"x": Evil()}, path)
    with pytest.raises(ModelFileError):
        load_model(path)
    assert not marker.exists()


def test_foreign_safetensors_file(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(3)}, str(path))
    with pytest.raises(ModelFileError, match="not an Attention U-Net model"):
        load_model(path)


def test_truncated_file(model, tmp_path):
    path = save_model(model, tmp_path / "m.safetensors")
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ModelFileError, match="damaged"):
        load_model(path)


@pytest.mark.parametrize("change", [{"base_width": 4096}, {"depth": 40}, {"base_width": 16.0}])
def test_a_description_no_memory_holds_is_refused_without_building_it(model, tmp_path, monkeypatch, change):
    """A config edited to a width of 4096 (its weights unchanged) had the system kill the process for
    memory, with no message; the description is now checked on torch's meta device first."""
    import json

    from napari_attention_unet.core import weights

    path = save_model(model, tmp_path / "m.safetensors")
    with open(path, "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    meta = header["__metadata__"]
    meta["config"] = json.dumps({**json.loads(meta["config"]), **change})
    from safetensors.torch import load_file

    save_file(load_file(str(path)), str(tmp_path / "big.safetensors"), metadata=meta)
    built = []
    real = weights.AttentionUNet
    monkeypatch.setattr(weights, "AttentionUNet", lambda config: built.append(torch.empty(1).device) or real(config))
    with pytest.raises(ModelFileError, match="damaged"):
        load_model(tmp_path / "big.safetensors")
    assert built == [torch.device("meta")]  # never built for real


def test_diverged_or_crafted_files_are_refused_clearly(model, tmp_path):
    """NaN weights gave all-background labels and NaN maps with exit code 0; a list as the description a traceback."""
    import json

    from safetensors.torch import load_file

    path = save_model(model, tmp_path / "m.safetensors")
    state = load_file(str(path))
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = torch.full_like(state[name], float("nan"))
    with open(path, "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    save_file(state, str(tmp_path / "nan.safetensors"), metadata=header["__metadata__"])
    with pytest.raises(ModelFileError, match="not numbers"):
        load_model(tmp_path / "nan.safetensors")
    listed = {**header["__metadata__"], "info": "[1, 2]"}
    save_file(load_file(str(path)), str(tmp_path / "list.safetensors"), metadata=listed)
    with pytest.raises(ModelFileError, match="not a readable model file"):
        read_metadata(tmp_path / "list.safetensors")
