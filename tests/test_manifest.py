"""The npe2 manifest: valid, found from the installed package, ids and names as documented."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import npe2
import pytest

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = "napari-attention-unet"


@pytest.fixture(scope="module")
def manifest():
    return npe2.PluginManifest.from_file(ROOT / "napari.yaml")


def test_manifest_names_and_contributions(manifest):
    assert manifest.name == PLUGIN and manifest.display_name == "Attention U-Net"
    assert all(command.id.startswith(f"{PLUGIN}.") for command in manifest.contributions.commands)
    assert [w.display_name for w in manifest.contributions.widgets] == ["Attention U-Net"]
    assert "nuclei" in [s.key for s in manifest.contributions.sample_data]


def test_manifest_shipped_in_package_is_the_top_level_one():
    packaged = ROOT / "src" / "napari_attention_unet" / "napari.yaml"
    assert packaged.read_bytes() == (ROOT / "napari.yaml").read_bytes()


def test_npe2_finds_the_installed_plugin():
    pm = npe2.PluginManager()
    pm.discover()
    found = pm.get_manifest(PLUGIN)
    assert found.display_name == "Attention U-Net"
    assert any(c.id == f"{PLUGIN}.make_widget" for c in found.contributions.commands)


def test_npe2_validate_passes():
    npe2_cli = shutil.which("npe2", path=str(Path(sys.executable).parent)) or shutil.which("npe2")
    assert npe2_cli, "the npe2 command line tool is not installed"
    result = subprocess.run([npe2_cli, "validate", PLUGIN, "--imports"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
