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
POOL ?= placeholder-etl
PREFECT_PORT ?= 4200
# What the deployments run: the *-local ones this checkout; daily-git a clone of this
# checkout's `origin` remote, or of this checkout itself when it has none (git clones a path:
# its last commit, not uncommitted work), at the branch checked out here (none when detached:
# the repository's default).
# Handed to `prefect deploy` only, so that a make run inside this one (the tests) works out
# its own checkout's values.
PLACEHOLDER_ETL_HOME := $(CURDIR)
PLACEHOLDER_ETL_REPO ?= $(shell git -C '$(CURDIR)' remote get-url origin 2>/dev/null || echo '$(CURDIR)')
PLACEHOLDER_ETL_BRANCH ?= $(shell git -C '$(CURDIR)' symbolic-ref --quiet --short HEAD 2>/dev/null)

.PHONY: help install run verify test test-quick lint format serve-api lab strip-notebooks server deploy worker serve automation saturn-recipes bench bench-quick soak chaos clean

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*?## "}; {printf "  %-16s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check uv==$(UV_VERSION)
	$(BIN)/uv pip install -q --compile-bytecode --python $(BIN)/python -e '.[dev]'
	$(BIN)/python -m compileall -q src flows  # bytecode even where PYTHONDONTWRITEBYTECODE is set
	@touch $@

install: $(STAMP) ## Create .venv (if missing) and install the package with every extra (dev: all of them)

run: $(STAMP) ## Run the pipeline offline: bundled API server, ephemeral Prefect, local Dask
	$(BIN)/placeholder-etl run --api-url bundled --bundled-users $(USERS) \
		--runner dask --output-dir $(OUTPUT_DIR)

verify: $(STAMP) ## Check the newest run in OUTPUT_DIR against its manifest (sizes, sha256, rows)
	$(BIN)/placeholder-etl verify $(OUTPUT_DIR)

test: $(STAMP) ## Install and run every test (ruff, then unit, integration and end-to-end tiers)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest $(PYTEST_ARGS)

test-quick: $(STAMP) ## The unit tier only: no servers, no Dask, no kernels (seconds)
	$(BIN)/pytest tests/unit -q $(PYTEST_ARGS)

lint: $(STAMP) ## ruff check and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP) ## Format the code with ruff
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

lab: $(STAMP) ## Start JupyterLab on 127.0.0.1 in notebooks/ (the project's .venv as kernel)
	$(BIN)/jupyter lab --ip 127.0.0.1 --notebook-dir notebooks $(if $(filter 0,$(shell id -u)),--allow-root)

strip-notebooks: $(STAMP) ## Clear outputs and execution counts before committing notebooks
	$(BIN)/jupyter nbconvert --clear-output --inplace notebooks/*.ipynb

serve-api: $(STAMP) ## Serve the bundled JSONPlaceholder API on 127.0.0.1:3000 (USERS=10)
	$(BIN)/placeholder-api --users $(USERS)

server: $(STAMP) ## Start a Prefect server and its UI on 127.0.0.1:4200 (PREFECT_PORT=…; SQLite in PREFECT_HOME)
	PREFECT_SERVER_UI_API_URL=http://127.0.0.1:$(PREFECT_PORT)/api \
		$(BIN)/prefect server start --host 127.0.0.1 --port $(PREFECT_PORT)

# Deployments and served flows live on a lasting Prefect server or Cloud workspace.
REQUIRE_PREFECT_API = test -n "$$PREFECT_API_URL" || $(BIN)/prefect config view | grep -q PREFECT_API_URL || \
	{ echo "error: set PREFECT_API_URL (make server) or run 'prefect cloud login' first" >&2; exit 2; }

deploy: $(STAMP) ## Deploy prefect.yaml to PREFECT_API_URL; daily-git clones origin (or this checkout)
	@$(REQUIRE_PREFECT_API)
	@GIT_TERMINAL_PROMPT=0 timeout 30 git ls-remote --exit-code '$(PLACEHOLDER_ETL_REPO)' \
		$(PLACEHOLDER_ETL_BRANCH) >/dev/null 2>&1 || \
		echo "warning: daily-git will fail: git cannot read branch '$(PLACEHOLDER_ETL_BRANCH)' of" \
			"$(PLACEHOLDER_ETL_REPO) from here (set PLACEHOLDER_ETL_REPO / PLACEHOLDER_ETL_BRANCH)" >&2
	@echo "daily-git clones $(PLACEHOLDER_ETL_REPO) $(if $(PLACEHOLDER_ETL_BRANCH),branch $(PLACEHOLDER_ETL_BRANCH),at its default branch)"
	$(BIN)/prefect work-pool inspect $(POOL) >/dev/null 2>&1 || \
		$(BIN)/prefect work-pool create $(POOL) --type process
	PLACEHOLDER_ETL_HOME='$(PLACEHOLDER_ETL_HOME)' PLACEHOLDER_ETL_REPO='$(PLACEHOLDER_ETL_REPO)' \
		PLACEHOLDER_ETL_BRANCH='$(PLACEHOLDER_ETL_BRANCH)' $(BIN)/prefect --no-prompt deploy --all

worker: $(STAMP) ## Start a process worker on the work pool (POOL=placeholder-etl)
	$(BIN)/prefect worker start --pool $(POOL)

serve: $(STAMP) ## Run flow.serve with the daily schedule in this process (needs PREFECT_API_URL)
	@$(REQUIRE_PREFECT_API)
	$(BIN)/placeholder-etl serve --output-dir $(OUTPUT_DIR)

automation: $(STAMP) ## Install the server-side failure notification (PLACEHOLDER_ETL_NOTIFY_WEBHOOK)
	$(BIN)/placeholder-etl setup-alerts

bench: $(STAMP) ## Flow vs plain script vs dlt, a first command with no Prefect server, Dask scaling at 1M users, an expired-cache rerun (writes benchmarks/RESULTS.md)
	$(BIN)/python benchmarks/bench.py --first-command --scaling --expired-rerun

bench-quick: $(STAMP) ## A quick benchmark (10 and 10,000 users, one run)
	$(BIN)/python benchmarks/bench.py --quick

soak: $(STAMP) ## 50 runs against a flaky API (10 % 503s, random latency); writes benchmarks/SOAK.md
	$(BIN)/python benchmarks/soak.py --runs 50

chaos: $(STAMP) ## 42 faulted runs (killed, flaky API, lost Dask worker), each rerun, to folders then S3; writes benchmarks/CHAOS.md
	$(BIN)/python benchmarks/chaos.py --store local,s3 --runs 24,12 --commit-kills 4,2

saturn-recipes: $(STAMP) ## Write build/saturn/*.json: the Saturn recipes for origin (REPO=… for another URL)
	$(BIN)/python tools/saturn_recipes.py write --out build/saturn $(if $(REPO),--repo '$(REPO)')

clean: ## Remove caches and build files (keeps .venv and output/)
	rm -rf .pytest_cache .ruff_cache build src/*.egg-info
	find . -name __pycache__ -not -path './.venv/*' -prune -exec rm -rf {} +
