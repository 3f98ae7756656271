# Everything runs from the virtual environment at .venv, which `make install` creates.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
ARTIFACTS_URI ?= ./artifacts
SCORES_NAME ?= prompt_scores
export ARTIFACTS_URI

.PHONY: install demo test lint pipeline clean

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -r requirements.txt -r requirements-dev.txt
	# --no-deps: kronfluence declares torchvision, which it never imports and which breaks
	# transformers imports beside the CPU torch build. Its real dependencies are in requirements.txt.
	$(PIP) install --quiet --no-deps kronfluence==1.0.1
	touch $@

## demo: train, fit factors, score the shipped prompts and write the report, on the built-in corpus
demo: install
	$(PY) -m jobs pipeline
	@echo "Report: $(ARTIFACTS_URI)/reports/$(SCORES_NAME)/$(SCORES_NAME)_report.md"

## test: the whole test suite
test: install
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf artifacts .pytest_cache
