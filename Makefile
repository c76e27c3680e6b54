# Two commands do everything (see README):
#   make quickstart   set up, then train the slides' LeNet on Fashion-MNIST and print its test accuracy
#   make test         set up, then run the whole test suite (real-data accuracy tests included)
#   make docs         set up, then build the documentation site into site/ (offline, strict)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
FASHION_MNIST_DIR := /usr/share/datasets/fashion-mnist

.PHONY: setup data quickstart test test-fast lint docs clean-runs

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Re-install only when the project's dependencies change.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[dev,export,stream,docs,tune]"
	touch $@

setup: $(VENV)/.installed

# Fashion-MNIST from Debian's package, so the quick start and the accuracy tests work offline. Elsewhere the
# datamodule downloads it on first use.
data:
	@if [ -d $(FASHION_MNIST_DIR) ]; then echo "Fashion-MNIST: $(FASHION_MNIST_DIR)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
	else echo "Fashion-MNIST will be downloaded into ./data on first use"; fi

quickstart: setup data
	$(BIN)/python cli.py fit --config configs/lenet_fashion_mnist.yaml

# The tests in one pytest-xdist worker per core, then the multi-process ones (DDP, kill and resume) one at a time,
# so two process groups never compete; the exit status is non-zero if either part fails.
test: setup data
	$(BIN)/python -m pytest -n auto -m "not multiprocess"; single=$$?; \
	$(BIN)/python -m pytest -m multiprocess; multi=$$?; \
	test $$single = 0 && test $$multi = 0

test-fast: setup
	$(BIN)/python -m pytest -n auto -m "not slow and not multiprocess"

# Strict: any warning (a broken link or anchor, a page missing from the nav, a docstring mkdocstrings cannot read)
# fails the build. The two variables silence notices about MkDocs' future that no setting here can act on.
docs: setup
	NO_MKDOCS_2_WARNING=1 DISABLE_MKDOCS_2_WARNING=true $(BIN)/mkdocs build --strict --quiet

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
