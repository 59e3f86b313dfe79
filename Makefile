# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# A GPU user can pick another torch build, e.g. make run TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench

export WANDB_MODE ?= offline

.PHONY: install run test bench lint clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[runner,launchers,sweepers,hpo,diffusion,dev]"
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m metaopt.run +experiment=pes_digits

test: $(STAMP)
	$(PY) -m pytest tests

# The benchmarks' optional extra (jax, for the PES-against-JAX rows); if it cannot be installed, those rows
# say so and the other benchmarks run.
$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install -q -e ".[bench-jax]" && touch $(BENCH_STAMP) || echo "bench-jax extra not installed: the JAX rows will be skipped"

bench: $(STAMP) $(BENCH_STAMP)
	$(PY) -m experiments.benchmarks.run

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf outputs multirun wandb .pytest_cache
