# `make repro` runs the whole pipeline on built-in synthetic data; `make test` runs the tests.
# Both create .venv and install the project into it first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: install repro test test-tools clean npm-install plots plots-diff remote

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The CPU build of torch first: without the pin pip would fetch a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

install: $(INSTALLED)

repro: $(INSTALLED)
	dvc repro

test: $(INSTALLED) test-tools
	pytest

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
