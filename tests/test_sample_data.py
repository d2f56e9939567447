"""Sample images: real DSB 2018 data, no torch import, reachable through the manifest."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from napari_attention_unet.gui.sample_data import he_sample, nuclei_sample, sample_path


def test_nuclei_sample_is_a_grey_fluorescence_image():
    [(data, kwargs, kind)] = nuclei_sample()
    assert kind == "image" and kwargs["name"] == "nuclei"
    assert data.shape == (256, 256) and data.dtype == np.uint8 and data.std() > 5


def test_he_sample_is_rgb():
    [(data, kwargs, kind)] = he_sample()
    assert kind == "image" and kwargs["rgb"] is True
    assert data.shape == (256, 320, 3) and data.dtype == np.uint8


def test_samples_are_attributed():
    readme = sample_path("README.md").read_text()
    assert "CC0" in readme and "BBBC038" in readme
    for name in ("nuclei_fluorescence.tif", "nuclei_he.tif"):
        assert name in readme and sample_path(name).is_file()


def test_loading_samples_does_not_import_torch():
    code = (
        "import sys; from napari_attention_unet.gui.sample_data import nuclei_sample, he_sample; "
        "nuclei_sample(); he_sample(); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_sample_opens_through_the_manifest(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-attention-unet", "nuclei")
    assert viewer.layers[-1].name == "nuclei" and viewer.layers[-1].data.shape == (256, 256)
    viewer.open_sample("napari-attention-unet", "nuclei_he")
    assert viewer.layers[-1].rgb
