# Two commands do all the set-up: `make run` (the main job) and `make test` (the tests).
# Both create a local .venv on first use (pinned dependencies from pyproject.toml) and reuse it.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test venv clean-runs embedded-assets

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (nifi)" >/dev/null
	touch $(STAMP)

# The main job: every notebook in order on the embedded default (papermill), executed copies in
# runs/notebooks/, figures in figures/ (the committed ones), and a run report in runs/report.md (+ runs/report.json).
run: $(STAMP)
	$(PY) -m nifi_lib.cli run-notebooks --profile embedded --out runs/notebooks

# The tests: pytest on tests/, then nbval on every notebook with its smoke parameters. Nothing is written
# into tracked paths: the prepared notebooks carry figures_dir = runs/nbval/figures (configs/notebooks/
# _profiles.yaml), and NIFI_FIGURES_DIR catches any figure saved without a folder.
test: $(STAMP)
	NIFI_FIGURES_DIR=runs/test_figures $(PY) -m pytest -q tests
	$(PY) -m nifi_lib.cli run-notebooks --profile smoke --prepare-only --out runs/nbval
	NIFI_FIGURES_DIR=runs/nbval/figures $(PY) -m pytest -q --nbval-lax -p no:cacheprovider runs/nbval

# The GPU rebuild of the embedded assets (issue 17; docs/embedded_assets.md): v3 scenes, prior v3 and a NiFi
# checkpoint into runs/embedded_assets (git-ignored), resumable per stage (assets_log.json). STAGE=scenes|prior|nifi|all.
STAGE ?= all
embedded-assets: $(STAMP)
	$(PY) -m nifi_lib.cli embedded-assets --config configs/embedded_assets_v3.yaml --out runs/embedded_assets \
		--device cuda --stage $(STAGE) --resume

clean-runs:
	rm -rf runs
