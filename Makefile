# `make repro` runs the whole pipeline on built-in synthetic data; `make test` runs the tests.
# Both create .venv and install the project into it first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: install lock repro test test-tools lint clean npm-install plots plots-diff remote exps exps-recipe

LOCK := requirements.lock

# Exact versions of every package (requirements.lock: the same bytes from every fresh clone),
# packages whose declared dependencies would conflict (requirements-nodeps.txt, see there), then
# the project itself, editable, without resolving anything again.
$(INSTALLED): pyproject.toml $(LOCK) requirements-nodeps.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r $(LOCK)
	$(BIN)/pip install --quiet --no-deps -r requirements-nodeps.txt
	$(BIN)/pip install --quiet --no-deps -e '.[test,ray]'
	touch $@

# `make lock` re-resolves requirements.lock after a change of pyproject.toml's dependencies (the
# main ones and the test and ray extras); versions pinned there stay unless the change moves
# them, and requirements-pins.txt holds torch at 2.13.0. The CPU build's local label (+cpu) is
# dropped: torch==2.13.0 matches the CPU file where one lies on disk, and PyPI's build elsewhere.
PIP_TOOLS := pip-tools==7.6.2

lock: $(INSTALLED)
	$(BIN)/pip install --quiet $(PIP_TOOLS)
	$(BIN)/pip-compile --quiet --extra test --extra ray --strip-extras --allow-unsafe --no-emit-index-url \
		--no-emit-find-links --constraint requirements-pins.txt --output-file $(LOCK) pyproject.toml
	sed -i 's/^torch==\(.*\)+cpu$$/torch==\1/' $(LOCK)

install: $(INSTALLED)

repro: $(INSTALLED)
	dvc repro

# Two worker processes, each taking whole modules (--dist loadscope: a module's fixtures, such as
# the DVC workspaces of test_dvc_workflow.py, are built once): CI's 2 cores. In fresh clones on a
# 2-core machine: 13.9-15.2 minutes (2026-12-07) against 15.2-16.0 in one process (2026-12-06/07);
# the stages' own threads already keep both cores partly busy, so the gain is small.
test: $(INSTALLED) test-tools
	pytest -n 2 --dist loadscope

# `make lint`: ruff over the whole tree with the rules of pyproject.toml's [tool.ruff], then mypy
# over the package with its [tool.mypy] settings, at the versions requirements.lock pins (the
# test extra). CI runs it before `make test` (.ci/run).
lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/mypy src

# tests/test_offline_plots.py needs npm (for `npm ci`) and headless Chromium: Debian's packages,
# installed with apt (as root) when missing.
test-tools:
	@missing=""; \
	command -v npm >/dev/null || missing="$$missing npm"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing; \
	fi

# Offline plots: vega, vega-lite and vega-embed from npm (package-lock.json) replace DVC's CDN
# scripts in the page (plots/templates/offline.html, set in .dvc/config); DVC prints its path.
NPM_INSTALLED := node_modules/.installed
BASE ?= HEAD

$(NPM_INSTALLED): package.json package-lock.json .npmrc
	npm ci --no-audit --no-fund
	touch $@

npm-install: $(NPM_INSTALLED)

plots: $(INSTALLED) $(NPM_INSTALLED)
	dvc plots show

plots-diff: $(INSTALLED) $(NPM_INSTALLED)
	dvc plots diff $(BASE)

# `make remote` sets the default DVC remote: an S3 bucket, or any S3-compatible server when
# DVC_REMOTE_ENDPOINT is given (e.g. http://localhost:9000). It writes .dvc/config (commit it);
# credentials never go there: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE in the
# environment, or `dvc remote modify --local $(DVC_REMOTE) access_key_id ...` (README).
DVC_REMOTE ?= storage
DVC_REMOTE_URL ?= s3://av-grounding/dvc
DVC_REMOTE_ENDPOINT ?=

remote: $(INSTALLED)
	dvc remote add --force --default $(DVC_REMOTE) $(DVC_REMOTE_URL)
	$(if $(DVC_REMOTE_ENDPOINT),dvc remote modify $(DVC_REMOTE) endpointurl $(DVC_REMOTE_ENDPOINT))

# `make report [BASE=main] [OUT=report.md]`: markdown of `dvc metrics diff` and `dvc params diff`
# of the workspace against BASE (default main here), to stdout or OUT; CI posts it on pull
# requests (.github/workflows/pr-report.yml).
.PHONY: report
report: BASE = main
report: $(INSTALLED)
	@$(BIN)/python -m av_grounding.report --base $(BASE) $(if $(OUT),--output $(OUT))

clean:
	rm -rf $(VENV) data/synthetic data/extracted

# `make exps`: the experiments of this commit side by side in a 120-column terminal: the
# parameters that differ between them, the final training loss and those headline metrics of the
# final model that differ (metrics/headline.json; its `columns.*` hold the other checkpoints');
# `make exps-recipe`: the same with the recipe's five metrics instead of the project's six.
EXP_SHOW_FLAGS := --only-changed --drop 'Created|State|Executor|(data|src|stages|prompts)/|columns\.|.*grad_norm|step$$|dvclive/.*:train\.lr$$|dvclive/rl/.*:rl\.(grounding|answer|kl|loss|reward_std)'
EXP_SHOW_HEADLINE := --drop 'r_.*'
EXP_SHOW_RECIPE := --drop '(ap2d|ap2d50|ap3d|cd_map|recall|precision)$$'

exps: $(INSTALLED)
	dvc exp show $(EXP_SHOW_FLAGS) $(EXP_SHOW_HEADLINE)

exps-recipe: $(INSTALLED)
	dvc exp show $(EXP_SHOW_FLAGS) $(EXP_SHOW_RECIPE)
