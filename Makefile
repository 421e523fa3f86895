# Everything runs from a virtual environment in .venv, created on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
ARGS   ?=

.PHONY: install train test lint format tensorboard bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e ".[dev,export]"
	touch $(STAMP)

install: $(STAMP)

train: $(STAMP)
	$(BIN)/python -m mnist_lit $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check mnist_lit tests
	$(BIN)/ruff format --check mnist_lit tests

format: $(STAMP)
	$(BIN)/ruff format mnist_lit tests
	$(BIN)/ruff check --fix mnist_lit tests

tensorboard: $(STAMP)
	$(BIN)/tensorboard --logdir outputs

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build dist *.egg-info
