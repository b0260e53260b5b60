# Two commands set everything up on a fresh machine and run the work:
#   make train   # set up (first time), then the tutorial's training run in JAX
#   make test    # set up (first time), then the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
ARGS ?=

.PHONY: setup train test parity bench data clean

setup: $(VENV)/.installed data

# Installs the package with its dependencies. constraints.txt pins torch to the
# CPU wheel this machine's mirror serves (an open range pulls a multi-GB CUDA build).
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[tfds,dev]"
	touch $@

# FashionMNIST's IDX files from Debian's dataset-fashion-mnist, when this is a
# Debian machine and we are root; otherwise pass --data-dir (see README).
data:
	@if [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
	  || echo "warning: could not install dataset-fashion-mnist; pass --data-dir DIR" >&2; \
	else echo "note: not root or no apt-get; install dataset-fashion-mnist or pass --data-dir DIR" >&2; fi

train: setup
	$(BIN)/jaxtrain train $(ARGS)

test: setup
	$(BIN)/python -m pytest -q $(ARGS)

parity: setup
	$(BIN)/jaxtrain parity $(ARGS)

bench: setup
	$(BIN)/jaxtrain bench $(ARGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
