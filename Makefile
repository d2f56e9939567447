# Developer shortcuts. `make run` opens napari with the plugin's widget and the nuclei sample.

VENV ?= .venv
PYTHON := $(VENV)/bin/python
XVFB := xvfb-run -a -s "-screen 0 1600x1000x24"

.PHONY: run install test test-gui screenshot

## install: create .venv if missing and install the project with the [all] extra (napari + Qt) when needed
install:
	@test -x $(PYTHON) || python3 -m venv $(VENV)
	@$(PYTHON) -c "import napari, qtpy, napari_attention_unet" 2>/dev/null || $(PYTHON) -m pip install -e ".[all]"

## run: napari with the "Attention U-Net" widget docked and the nuclei sample open
run: install
	$(PYTHON) scripts/launch_napari.py $(if $(MODEL),--model $(MODEL))

## test-gui: the plugin's napari tests (pytest-xvfb provides the X server)
test-gui:
	$(PYTHON) -m pytest -q tests/test_widget.py tests/test_layers.py tests/test_sample_data.py tests/test_manifest.py

## test: the whole test suite
test:
	$(PYTHON) -m pytest -q

## screenshot: regenerate docs/images/screenshot.png under Xvfb (MODEL=name-or-file to choose the model)
screenshot: install
	$(XVFB) $(PYTHON) docs/screenshot.py $(if $(MODEL),--model $(MODEL))
