"""The rooms of the package and the one-way arrows between them (docs/architecture.md).

Every ``import`` in the package is read from the source (module level, inside functions and
under ``TYPE_CHECKING`` alike) and checked against three rules: a room imports only the
rooms it may, only the GUI room imports napari or Qt, and no modules import each other in a
circle. The checker is tested on a small package made here, so a rule that stopped catching
anything would fail too.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = "napari_attention_unet"
PACKAGE_DIR = Path(__file__).resolve().parents[1] / "src" / PACKAGE

#: room -> the rooms it may import (itself included). The package root holds only ``__version__``.
ALLOWED = {
    "core": {"core"},
    "models": {"models", "core"},
    "export": {"export", "core"},
    "large_data": {"large_data", "models", "core"},
    "gui": {"gui", "large_data", "models", "export", "core"},
    "cli": {"cli", "large_data", "models", "export", "core"},
}
GUI_PACKAGES = {"napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "magicgui", "superqt", "vispy", "app_model"}
#: core is the network and the math: these libraries and the standard library, nothing else.
CORE_PACKAGES = {"numpy", "torch", "scipy", "skimage", "safetensors"}
MAX_LINES = 400


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def read_modules(root: Path) -> dict[str, Path]:
    return {module_name(p, root): p for p in sorted(root.rglob("*.py"))}


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[int, str]]:
    """``(line, imported name)`` for every import in the file; internal names resolved to modules."""
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = name.split(".")[: len(name.split(".")) - node.level + is_package]
                base = ".".join(parent + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.append((node.lineno, full if full in modules else base))
    return found


def room_of(module: str, root_name: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == root_name and len(parts) > 1 else None


def check(root: Path) -> list[str]:
    """Every broken rule in the package at ``root``, as ``module:line: why``."""
    root_name = root.name
    modules = read_modules(root)
    problems, graph = [], {m: set() for m in modules}
    stdlib = set(sys.stdlib_module_names)
    for name, path in modules.items():
        room = room_of(name, root_name)
        lines = len(path.read_text().splitlines())
        if lines > MAX_LINES:
            problems.append(f"{name}: {lines} lines, more than {MAX_LINES}")
        if room is None and any(target.startswith(root_name + ".") for _, target in imports_of(name, path, modules)):
            problems.append(f"{name}: the package root must not import its rooms")
        for line, target in imports_of(name, path, modules):
            top = target.split(".")[0]
            if top == root_name:
                if target in modules and target != name:
                    graph[name].add(target)
                other = room_of(target, root_name)
                if room is not None and other is not None and other not in ALLOWED.get(room, {room}):
                    problems.append(f"{name}:{line}: room {room!r} may not import {target} (room {other!r})")
                if room is not None and room not in ALLOWED:
                    problems.append(f"{name}: {room!r} is not a room of the architecture (docs/architecture.md)")
            elif top in GUI_PACKAGES and room != "gui":
                problems.append(f"{name}:{line}: only the gui room may import {top}")
            elif room == "core" and top not in CORE_PACKAGES and top not in stdlib and top != "__future__":
                problems.append(f"{name}:{line}: core may import numpy/torch/scipy/skimage/safetensors only, not {top}")
    problems += [f"import circle: {' -> '.join(cycle)}" for cycle in cycles(graph)]
    return sorted(set(problems))


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One circle through each strongly connected group of modules (Tarjan)."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node), on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group) + [sorted(group)[0]])

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def test_the_package_keeps_its_rooms_and_arrows():
    assert check(PACKAGE_DIR) == []


def test_every_room_is_a_folder_of_the_package():
    rooms = {p.name for p in PACKAGE_DIR.iterdir() if (p / "__init__.py").is_file()}
    assert rooms == set(ALLOWED)


def write(root: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.fixture
def toy(tmp_path) -> dict[str, str]:
    """A well-built package with every room; tests break one rule each."""
    files = {"pkg/__init__.py": "__version__ = '1'\n"}
    for room in ALLOWED:
        files[f"pkg/{room}/__init__.py"] = ""
    files["pkg/core/model.py"] = "import numpy\nimport torch\n"
    files["pkg/large_data/blocks.py"] = "from pkg.core.model import torch\nimport dask\n"
    files["pkg/gui/widget.py"] = "import napari\nfrom pkg.large_data import blocks\nfrom pkg import __version__\n"
    return files


def test_the_checker_passes_a_well_built_package(tmp_path, toy):
    assert check(write(tmp_path, toy) / "pkg") == []


@pytest.mark.parametrize(
    ("path", "text", "complaint"),
    [
        (
            "pkg/core/predict.py",
            "def f():\n    from pkg.gui import widget\n",
            "room 'core' may not import pkg.gui.widget",
        ),
        ("pkg/core/predict.py", "import zarr\n", "core may import numpy/torch/scipy/skimage/safetensors only"),
        ("pkg/export/onnx.py", "from qtpy.QtWidgets import QWidget\n", "only the gui room may import qtpy"),
        ("pkg/large_data/io.py", "from pkg.export import onnx\n", "room 'large_data' may not import pkg.export"),
        ("pkg/core/a.py", "from . import b\n", "import circle: pkg.core.a -> pkg.core.b -> pkg.core.a"),
        ("pkg/core/big.py", "x = 1\n" * (MAX_LINES + 1), f"pkg.core.big: {MAX_LINES + 1} lines"),
        ("pkg/utils/misc.py", "from pkg.core import model\n", "'utils' is not a room"),
    ],
)
def test_the_checker_catches_a_broken_rule(tmp_path, toy, path, text, complaint):
    toy[path] = text
    toy["pkg/core/b.py"] = "from pkg.core.a import x\n" if path == "pkg/core/a.py" else ""
    problems = check(write(tmp_path, toy) / "pkg")
    assert any(complaint in p for p in problems), problems


# What the source rules cannot see: what importing a room pulls in at run time, transitively.


def imported_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return {name.split(".")[0] for name in out.split()}


def test_core_imports_no_gui_or_storage_modules_at_run_time():
    modules = imported_after(
        "import napari_attention_unet.core.model, napari_attention_unet.core.predict, "
        "napari_attention_unet.core.images, napari_attention_unet.core.instances, napari_attention_unet.core.train, "
        "napari_attention_unet.core.weights, napari_attention_unet.core.device"
    )
    assert not modules & (GUI_PACKAGES | {"zarr", "dask", "distributed", "tifffile"})


def test_cli_imports_no_gui_modules():
    modules = imported_after("import napari_attention_unet.cli as c; c.build_parser()")
    assert not modules & GUI_PACKAGES


def test_block_engine_imports_no_storage_or_cluster_library():
    """large_data.blocks takes array-likes; zarr, dask and distributed are for the modules that need them."""
    modules = imported_after("import napari_attention_unet.large_data.blocks")
    assert not modules & {"zarr", "dask", "distributed", *GUI_PACKAGES}
