"""Shared fixtures: a tiny random model in a private model folder, and the plugin's widget.

Tests never depend on the bundled model: ``model_home`` points the saved-models folder at
a temporary directory and hides the bundled models, so the only model is a tiny random one.
"""

from __future__ import annotations

import pytest

TINY_MODEL = "tiny"


@pytest.fixture(scope="module")
def tiny_model():
    """A tiny random 2D Attention U-Net (3 channels, depth 3) in eval mode, with non-trivial batch-norm statistics."""
    import torch

    from napari_attention_unet.core.model import AttentionUNet, ModelConfig

    torch.manual_seed(0)
    model = AttentionUNet(ModelConfig(base_width=4, depth=3))
    model.train()
    model(torch.rand(4, 3, 32, 32))
    return model.eval()


@pytest.fixture
def model_home(tmp_path, monkeypatch):
    """``$NAPARI_ATTENTION_UNET_HOME`` in a temp dir, no bundled models; returns the home folder."""
    from napari_attention_unet.models import registry as _registry

    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    monkeypatch.setenv("NAPARI_ATTENTION_UNET_HOME", str(home))
    monkeypatch.setattr(_registry, "bundled_models", lambda: [])
    return home


@pytest.fixture
def tiny_model_path(model_home):
    """A tiny random 2D Attention U-Net (3 channels, gates gate1 and gate2) saved as 'tiny'."""
    import torch

    from napari_attention_unet.core.model import AttentionUNet, ModelConfig
    from napari_attention_unet.core.weights import save_model

    torch.manual_seed(0)
    model = AttentionUNet(ModelConfig(base_width=4, depth=3))
    return save_model(model, model_home / "models" / TINY_MODEL, info={"note": "random weights, for tests"})


@pytest.fixture
def nuclei_image():
    """The fluorescent nuclei sample as an array (256 x 256, uint8)."""
    from napari_attention_unet.gui.sample_data import nuclei_sample

    return nuclei_sample()[0][0]


@pytest.fixture
def plugin_widget(make_napari_viewer, tiny_model_path, qtbot):
    """``(viewer, widget)``: a viewer with the plugin's dock widget opened through the manifest."""
    viewer = make_napari_viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-attention-unet", "Attention U-Net")
    yield viewer, widget
    if widget.is_running:  # never leave a worker running into the next test
        widget.cancel()
        qtbot.waitUntil(lambda: not widget.is_running, timeout=60_000)


@pytest.fixture
def one_thread():
    """One torch thread: tiny networks gain nothing from threads, and on a shared machine
    idle-spinning OpenMP threads cost a lot of time."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def notes_of(monkeypatch):
    """``notes_of(module)``: the messages ``module`` sends to napari's notifications, by kind."""

    def capture(module) -> dict[str, list]:
        seen = {"error": [], "warning": [], "info": []}
        for kind in seen:
            monkeypatch.setattr(module, f"show_{kind}", seen[kind].append)
        return seen

    return capture


@pytest.fixture
def notes(notes_of):
    """Messages the fine-tune / train controls send to napari's notifications, by kind."""
    from napari_attention_unet.gui import finetune_widget

    return notes_of(finetune_widget)
