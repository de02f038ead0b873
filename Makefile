# Two commands for a newcomer: `make demo` and `make test`. Each builds .venv when missing.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast lint docs bench clean

# the exact versions CI tests (constraints.txt) of the ranges pyproject.toml declares
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[all,dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/reparam demo --out runs/demo

# everything: lint, the docs site build (mkdocs --strict) and the whole suite (each test under
# pytest-timeout's limit in pyproject.toml)
test: lint docs
	$(BIN)/python -m pytest -n 2 --dist worksteal

# the inner loop: the suite without the tests marked slow
test-fast: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist worksteal -m "not slow"

bench: $(STAMP)
	BIN=$(BIN) benchmarks/run_speed.sh

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir site

lint: $(STAMP)
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs site
