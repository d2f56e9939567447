"""The built wheel carries the manifest (as a real file), sample data, models and entry points."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "napari_attention_unet"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    build = tmp_path_factory.mktemp("build")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        cwd=build,
        timeout=600,
    )
    if done.returncode != 0:
        pytest.fail(f"building the wheel failed:\n{done.stdout}\n{done.stderr}")
    (path,) = out.glob("napari_attention_unet-*.whl")
    return zipfile.ZipFile(path)


def test_manifest_is_shipped_inside_the_package(wheel):
    shipped = wheel.read(f"{PACKAGE}/napari.yaml")
    assert shipped == (ROOT / "napari.yaml").read_bytes()


def test_entry_points(wheel):
    (name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    text = wheel.read(name).decode()
    assert "[napari.manifest]" in text and f"napari-attention-unet = {PACKAGE}:napari.yaml" in text
    assert f"attention-unet = {PACKAGE}.cli:main" in text


def test_package_data_is_shipped(wheel):
    names = set(wheel.namelist())
    for source in [*(ROOT / "src" / PACKAGE / "sample_data").glob("*"), *(ROOT / "src" / PACKAGE / "models").glob("*")]:
        if source.is_file() and source.suffix != ".py":
            assert f"{PACKAGE}/{source.parent.name}/{source.name}" in names
