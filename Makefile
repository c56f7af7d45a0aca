# `make repro` runs the whole pipeline on built-in synthetic data; `make test` runs the tests.
# Both create .venv and install the project into it first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: install repro test clean

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The CPU build of torch first: without the pin pip would fetch a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

install: $(INSTALLED)

repro: $(INSTALLED)
	dvc repro

test: $(INSTALLED)
	pytest

clean:
	rm -rf $(VENV) data/synthetic data/extracted
