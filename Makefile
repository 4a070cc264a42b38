# Two targets a user needs: `make demo` and `make test`. Both create/refresh .venv as needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
WORKDIR ?= runs/digits_cnn
# Test processes (pytest-xdist). Most test time is single-threaded (imports, XLA compiles, server
# start-up), so 2 processes use a 2-core machine; tests sharing the exported models stay on one.
TEST_WORKERS ?= 2

.PHONY: demo test install clean bench

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m maasjax.demo --workdir $(WORKDIR)

# The notebooks run too (nbmake), at their smoke size (MAASJAX_SMOKE=1): a notebook that breaks fails the tests.
test: $(STAMP)
	MAASJAX_SMOKE=1 $(BIN)/python -m pytest -q -ra --durations=15 -n $(TEST_WORKERS) --dist loadgroup --nbmake tests notebooks

bench: $(STAMP)
	$(BIN)/python benchmarks/train_throughput.py

clean:
	rm -rf runs exports .pytest_cache
