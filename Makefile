# smcli developer commands. `make demo` and `make test` work on a fresh clone: both install
# into .venv first when needed.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARCH := $(shell uname -m)
OS := $(shell uname -s)

# torch/torchvision pins that install offline on this project's Linux x86_64 machines;
# elsewhere pip resolves the ranges in pyproject.toml.
ifeq ($(OS)-$(ARCH),Linux-x86_64)
TORCH_PIN := torch==2.14.1 torchvision==0.29.1
endif

.PHONY: install test test-faults-long demo bench bench-flickr8k bench-flickr8k-pair pretrained lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(if $(TORCH_PIN),$(BIN)/python -m pip install --quiet $(TORCH_PIN))
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest -q

# The fault-injection suite's long version (RELIABILITY.md): more truncation offsets and
# flipped bytes, more signal points, 25x the hypothesis examples. `make test` runs the short one.
test-faults-long: install
	$(BIN)/python -m pytest -q -p no:cacheprovider --faults-long tests/test_faults.py tests/test_faults_props.py \
	    tests/test_faults_signals.py

demo: install
	PATH="$(CURDIR)/$(BIN):$$PATH" bash examples/demo.sh

bench: install
	PATH="$(CURDIR)/$(BIN):$$PATH" bash bench/run_all.sh

DATA ?= ../shared/data/flickr8k
bench-flickr8k: install
	PATH="$(CURDIR)/$(BIN):$$PATH" bash bench/flickr8k.sh "$(DATA)"

# The best recipe (issue 13): efficientnet-lite0+lite2 features, for seeds 0-2 a vse head and
# the smlstm, no-context and mean re-rankers on it, then the table (bench/flickr8k_pair_report.py).
bench-flickr8k-pair: install
	PATH="$(CURDIR)/$(BIN):$$PATH" STEP=tokenize bash bench/flickr8k.sh "$(DATA)"
	PATH="$(CURDIR)/$(BIN):$$PATH" VARIANTS="smlstm no-context mean" bash bench/flickr8k_pair.sh "$(DATA)"
	$(BIN)/python bench/flickr8k_pair_report.py --work runs/flickr8k

# Rebuild the shipped pretrained models (smcli/pretrained/) from the Flickr8k benchmark's
# vse and smlstm runs (features, vse head, sm-LSTM re-ranker), and flickr8k-pair from
# bench/flickr8k_pair.sh's seeds 0-2 (the seed with the best val rsum); then float16 copies checked on test.
pretrained: install
	for step in extract tokenize train eval; do \
	    PATH="$(CURDIR)/$(BIN):$$PATH" STEP=$$step VARIANT="vse smlstm" EXHAUSTIVE=0 \
	    SMLSTM_EXTRA="--cross-scale 9 --coverage 1 --epochs 3" bash bench/flickr8k.sh "$(DATA)" || exit 1; \
	done
	PATH="$(CURDIR)/$(BIN):$$PATH" bash bench/flickr8k_pair.sh "$(DATA)"
	$(BIN)/python bench/package_pretrained.py --work runs/flickr8k

lint: install
	$(BIN)/ruff check smcli tests bench

clean:
	rm -rf demo-out .pytest_cache .hypothesis
