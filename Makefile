# Two commands set up a fresh machine and run the project:
#   make train   # venv + torch + the Fashion-MNIST package, then `biasloss train`
#   make test    # the same set-up, then the test suite (what CI runs)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch/torchvision builds available on the project's machines; override for yours,
# e.g. `make test TORCH="torch torchvision"`.
TORCH  ?= torch==2.14.1 torchvision==0.29.1
ARGS   ?=

.PHONY: setup dataset train test
setup: $(VENV)/.stamp-setup dataset

$(VENV)/.stamp-setup: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[test]'
	touch $@

dataset:
	@bash scripts/install-fashion-mnist.sh

train: setup
	$(BIN)/biasloss train $(ARGS)

# in parallel, one torch thread per worker (tests/conftest.py): 5 min instead of 9 on 2 cores
test: setup
	$(BIN)/python -m pytest -q -n auto --maxprocesses 4 $(ARGS)
