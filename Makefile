# Two commands a user needs: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-all lint clean

install: $(STAMP)

# constraints.txt pins every tested version; torch==2.13.0 resolves to the CPU wheel
# offered locally instead of a multi-GB CUDA build.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: install
	$(BIN)/sae run configs/quickstart.yaml --out runs/quickstart

test: install
	$(BIN)/pytest -q --durations=15

test-all: install
	$(BIN)/pytest -q -m ''

lint: install
	$(BIN)/ruff check sae pipelines tests

clean:
	rm -rf $(VENV) runs
