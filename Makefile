# The two commands of the README:
#   make run    installs the plugin with napari + PyQt6 into .venv and opens napari with the widget and the nuclei sample
#   make test   installs the plugin with its test extra into .venv and runs the whole test suite
# Both install torch first ($(TORCH), the CPU build where one is on disk) when no torch is installed.

VENV ?= .venv
PYTHON := $(VENV)/bin/python
TORCH ?= torch==2.13.0
XVFB := xvfb-run -a -s "-screen 0 1600x1000x24"

.PHONY: run install install-test test test-gui screenshot lint

$(PYTHON):
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip

## install: the project with the [all] extra (napari + PyQt6), torch first
install: $(PYTHON)
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install -q "$(TORCH)"
	@$(PYTHON) -c "import napari, qtpy, napari_attention_unet" 2>/dev/null || $(PYTHON) -m pip install -q -e ".[all]"

## install-test: the project with the [testing] extra, torch first
install-test: $(PYTHON)
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install -q "$(TORCH)"
	$(PYTHON) -m pip install -q -e ".[testing]"

## run: napari with the "Attention U-Net" widget docked and the nuclei sample open
run: install
	$(PYTHON) scripts/launch_napari.py $(if $(MODEL),--model $(MODEL))

## test: the whole test suite (pytest-xvfb starts an X server for the napari tests)
test: install-test
	$(PYTHON) -m pytest -q

## test-gui: the plugin's napari tests only
test-gui:
	$(PYTHON) -m pytest -q tests/test_widget.py tests/test_layers.py tests/test_sample_data.py tests/test_manifest.py

## screenshot: regenerate docs/images/screenshot.png under Xvfb (MODEL=name-or-file to choose the model)
screenshot: install
	$(XVFB) $(PYTHON) docs/screenshot.py $(if $(MODEL),--model $(MODEL))

lint:
	$(PYTHON) -m ruff check src tests benchmarks training
