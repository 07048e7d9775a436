# placeholder-etl — `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.8
STAMP := $(VENV)/.installed
OUTPUT_DIR ?= output
USERS ?= 10
PYTEST_ARGS ?=

.PHONY: help install run test lint format serve-api lab strip-notebooks clean

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*?## "}; {printf "  %-16s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check uv==$(UV_VERSION)
	$(BIN)/uv pip install -q --python $(BIN)/python -e '.[dev]'
	@touch $@

install: $(STAMP) ## Create .venv (if missing) and install the package with its dev extra

run: $(STAMP) ## Run the pipeline offline: bundled API server, ephemeral Prefect, local Dask
	$(BIN)/placeholder-etl run --api-url bundled --bundled-users $(USERS) \
		--runner dask --output-dir $(OUTPUT_DIR)

test: $(STAMP) ## Install and run the test suite (ruff, then pytest)
	$(BIN)/ruff check .
	$(BIN)/pytest $(PYTEST_ARGS)

lint: $(STAMP) ## ruff check and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check src tests flows

format: $(STAMP) ## Format the code with ruff
	$(BIN)/ruff format src tests flows
	$(BIN)/ruff check --fix .

lab: $(STAMP) ## Start JupyterLab on 127.0.0.1 in notebooks/ (the project's .venv as kernel)
	$(BIN)/jupyter lab --ip 127.0.0.1 --notebook-dir notebooks

strip-notebooks: $(STAMP) ## Clear outputs and execution counts before committing notebooks
	$(BIN)/jupyter nbconvert --clear-output --inplace notebooks/*.ipynb

serve-api: $(STAMP) ## Serve the bundled JSONPlaceholder API on 127.0.0.1:3000 (USERS=10)
	$(BIN)/placeholder-etl serve-api --users $(USERS)

clean: ## Remove caches and build files (keeps .venv and output/)
	rm -rf .pytest_cache .ruff_cache build src/*.egg-info
	find . -name __pycache__ -not -path './.venv/*' -prune -exec rm -rf {} +
