# The README's two commands. Both work from a fresh clone: they create .venv and install into it.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DEMO   ?= demo

.PHONY: demo test install install-test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade --quiet pip

# Stamp files so a second `make` does not reinstall; they depend on pyproject.toml.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

test: install-test
	$(BIN)/python -m pytest -q

demo: install
	PATH="$(abspath $(BIN)):$$PATH" bash scripts/demo.sh $(DEMO)

bench: install-test
	$(BIN)/pip install --quiet -e '.[test,bench]'
	$(BIN)/python bench/build.py
	$(BIN)/python bench/data_path.py
	$(BIN)/python bench/unet.py
	$(BIN)/python bench/train.py

clean:
	rm -rf $(DEMO) .pytest_cache
