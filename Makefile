# The two set-up commands of the README:
#   make demo   - install, then run the OSFGIR demo on the embedded synthetic benchmark
#   make test   - install (with dev extras), then run the whole test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: install demo test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/fgia demo

test: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -n 2 --durations=15 $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) fgia-out .pytest_cache
