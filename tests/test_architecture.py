"""Dependencies point one way: core never imports the GUI stack, the CLI starts without it."""

import subprocess
import sys

GUI_MODULES = ("napari", "qtpy", "PyQt6", "PySide6", "magicgui", "superqt", "vispy")


def imported_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return {name.split(".")[0] for name in out.split()}


def test_core_imports_no_gui_modules():
    modules = imported_after(
        "import napari_attention_unet.core.model, napari_attention_unet.core.predict, "
        "napari_attention_unet.core.data, napari_attention_unet.core.weights, napari_attention_unet.core.device"
    )
    assert not modules & set(GUI_MODULES)


def test_cli_imports_no_gui_modules():
    modules = imported_after("import napari_attention_unet.cli as c; c._build_parser()")
    assert not modules & set(GUI_MODULES)


def test_block_engine_imports_no_storage_or_cluster_library():
    """core.blocks takes array-likes; zarr, dask and distributed stay outside core."""
    modules = imported_after("import napari_attention_unet.core.blocks")
    assert not modules & {"zarr", "dask", "distributed", *GUI_MODULES}
