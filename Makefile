# Two commands set everything up on a fresh machine and run the work:
#   make train   # set up (first time), then the tutorial's training run in JAX
#   make test    # set up (first time), then the test suite
# On a CUDA machine: make setup CUDA=12 (JAX's cuda12 extra and PyPI's CUDA build of torch).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
ARGS ?=
CUDA ?=

.PHONY: setup train test parity bench corpus gpu-report data docs browser clean

ifeq ($(CUDA),)
# constraints.txt pins torch to the CPU wheel this machine's mirror serves (an open range
# pulls a multi-GB CUDA build).
INSTALLED := $(VENV)/.installed
PIP_INSTALL := $(BIN)/python -m pip install --quiet -c constraints.txt -e ".[tfds,dev]"
else ifeq ($(CUDA),12)
# PyPI's Linux torch wheels are CUDA builds; --isolated skips the local find-links (CPU wheel).
INSTALLED := $(VENV)/.installed-cuda12
PIP_INSTALL := $(BIN)/python -m pip --isolated install --quiet -c constraints.txt -e ".[tfds,dev]" "jax[cuda12]"
else
$(error CUDA=$(CUDA) is not supported; use CUDA=12 or leave it unset for the CPU build)
endif

setup: $(INSTALLED) data

$(INSTALLED): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(PIP_INSTALL)
	touch $@

# FashionMNIST's IDX files from Debian's dataset-fashion-mnist, when this is a
# Debian machine and we are root; otherwise pass --data-dir (see README).
data:
	@if [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
	  || echo "warning: could not install dataset-fashion-mnist; pass --data-dir DIR" >&2; \
	else echo "note: not root or no apt-get; install dataset-fashion-mnist or pass --data-dir DIR" >&2; fi

# Debian's chromium for the HTML report's browser test (make corpus): as root with apt-get, else a note.
browser:
	@if command -v chromium >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	  || echo "warning: could not install chromium; the HTML report's browser test will fail" >&2; \
	else echo "note: not root or no apt-get; install chromium for the HTML report's browser test" >&2; fi

train: setup
	$(BIN)/jaxtrain train $(ARGS)

# Two pytest workers (the machines have 2 cores; much of the suite waits on subprocesses), one test file
# each at a time: a file's tests share their processes' ports and fixtures. WORKERS=0 runs in one process.
WORKERS ?= 2
test: setup
	$(BIN)/python -m pytest -q $(if $(filter 0,$(WORKERS)),,-n $(WORKERS) --dist loadfile) $(ARGS)

parity: setup
	$(BIN)/jaxtrain parity $(ARGS)

bench: setup
	$(BIN)/jaxtrain bench $(ARGS)

# The long checks: the whole verdict corpus (writes the README's table), then every test marked
# `corpus` but the corpus cases themselves (the 10-epoch tutorial parity, the GPU report's quick
# run on the CPU, the bench end to end, the example scripts and the parity CLI on them).
# `pytest -m corpus` runs the corpus cases as tests too.
corpus: setup browser
	$(BIN)/python -m jaxtrain.parity.corpus --json results/corpus.json --markdown results/corpus.md $(ARGS)
	$(BIN)/python -m jaxtrain.parity.corpus.written --json results/port_writer.json --markdown results/port_writer.md
	$(BIN)/python -m pytest -q -m corpus --ignore=parity_tests/test_corpus.py

# The docs site (mkdocs-material) into site/: --strict fails on any warning (a broken link, a results file
# missing its renderer, an API name that does not resolve).
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

# On a CUDA machine: tutorial parity, the corpus' short subset and the bench -> results/gpu/<device>.*
gpu-report: setup
	$(BIN)/python -m jaxtrain.gpu_report $(ARGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache site
