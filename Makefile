# Two entry points: `make demo` (the main job on the bundled DEM) and `make test`; `make docs`
# builds the documentation site.
# Both create the virtual environment on first use (idempotent) with torch pinned to the CPU
# build through constraints.txt.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= runs/demo

.PHONY: setup demo test lint docs clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/demsr demo --output-dir $(DEMO_DIR) --overwrite

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy src/demsr

# The documentation site into site/ (tests/test_docs.py builds it strictly in CI).
docs: $(STAMP)
	$(BIN)/mkdocs build --strict

test: $(STAMP) lint
	$(BIN)/pytest -q
	$(BIN)/pytest -q -m slow

clean:
	rm -rf $(VENV) runs site .pytest_cache .mypy_cache .ruff_cache
