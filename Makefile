# Two commands on a fresh machine: `make run` (set-up + the whole pipeline on SynthMuse)
# and `make test` (set-up + the test suite). Everything else here is a convenience.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(CURDIR)/$(VENV)/bin
PYTHON ?= python3

# Offline and private by default (see tokenfocus/env.py, which sets the same for the CLI).
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DVC_NO_ANALYTICS := 1
export GX_ANALYTICS_ENABLED := false
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 90
export PREFECT_HOME := $(CURDIR)/.prefect
# `mlflow models serve` execs uvicorn: the venv's bin must be on PATH.
export PATH := $(BIN):$(PATH)

.PHONY: setup constraints data bases run test test-all lint bench scale bench-retrain gpu-check learnability serve schedule ui ui-check loadtest offline-run clean

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# The CPU torch wheel first, so no dependency can pull a CUDA build; never torchvision.
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	# The rest through uv: the same versions pip resolves (compared: identical freeze), in ~1 min
	# where pip takes ~2; torch stays the installed CPU build. Without uv, pip does it. Compiled to
	# bytecode as pip does: where PYTHONDONTWRITEBYTECODE is set (CI), every dvc, mlflow and prefect
	# process would otherwise compile its imports anew (measured: make test's pytest 782 -> 955 s).
	# constraints.txt pins every version: a later install computes with the same libraries.
	if $(PY) -m pip install -q --disable-pip-version-check 'uv>=0.9,<1' && \
	  $(BIN)/uv pip install -q --compile-bytecode --python $(PY) -c constraints.txt -e '.[dev]' torch==2.13.0; then :; \
	else $(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'; fi
	touch $@

# constraints.txt from a fresh venv that resolved pyproject.toml's ranges anew (after a dependency
# change): the newest versions that install together, torch kept the CPU 2.13.0 build.
constraints:
	rm -rf .venv-constraints && $(PYTHON) -m venv .venv-constraints
	.venv-constraints/bin/pip install -q --disable-pip-version-check torch==2.13.0 'uv>=0.9,<1'
	.venv-constraints/bin/uv pip install -q --python .venv-constraints/bin/python -e '.[dev]' torch==2.13.0
	{ sed -n '/^#/p' constraints.txt; .venv-constraints/bin/uv pip freeze --python .venv-constraints/bin/python \
	  | grep -viE '^(-e|tokenfocus|uv|pip|setuptools|wheel)[ =]' | sed 's/+cpu$$//'; } > constraints.new
	mv constraints.new constraints.txt && rm -rf .venv-constraints

setup: $(VENV)/.installed
	$(BIN)/dvc config core.check_update false
	$(BIN)/dvc config core.analytics false

# The default data is regenerated deterministically; `dvc commit` then fills the empty cache of a
# fresh clone, and the unchanged data.dvc proves the bytes are the versioned ones.
data: setup
	if ! $(BIN)/dvc status data.dvc 2>/dev/null | grep -q "up to date"; then \
	  [ -f data/train_list.json ] || $(BIN)/tokenfocus synth; \
	  $(BIN)/dvc commit -f -q data.dvc; \
	  if ! git diff --quiet -- data.dvc; then git checkout -- data.dvc; \
	    echo "error: data/ does not match data.dvc: regenerate SynthMuse (rm -rf data; make data), 'dvc pull' it, or 'dvc add data' your own" >&2; exit 1; fi; \
	fi
	$(BIN)/dvc status data.dvc

# The pre-trained tiny bases are shipped in the DVC remote inside the repository (dvc-store/):
# pulled in seconds, so `dvc repro` finds build@* and pretrain@* up to date. A base missing from
# the remote (changed pre-training params) is left to `dvc repro`, which pre-trains it.
bases: data
	$(BIN)/dvc pull -q --allow-missing build pretrain

run: bases
	$(BIN)/tokenfocus repro  # dvc repro, the backbones' stages side by side (tokenfocus/repro.py)
	$(BIN)/tokenfocus report --print
	@echo "Next: 'make ui' for the MLflow and Prefect UIs, '$(BIN)/dvc metrics show', 'make serve'."

# pytest-xdist: one worker per core of the 2-core target, each test file on one worker (its module
# fixtures built once), the longest files first (tests/conftest.py's LONG_FILES); each worker builds
# the session fixtures (the tiny bases, the gate) for itself.
TEST_WORKERS ?= 2
XDIST := -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder
test: bases
	$(PY) -m pytest -q -x $(XDIST) --durations=25

# In one process: under two workers the triggered-deployment test (slow) once found a challenger
# registered by another flow run than its own; not reproduced beside the Dask flow test, not
# diagnosed. test-all has no time budget.
test-all: bases
	$(PY) -m pytest -q -m "" -x

lint: setup
	$(BIN)/ruff check tokenfocus flows tests scripts
	$(BIN)/ruff format --check tokenfocus flows tests scripts

bench: bases
	$(BIN)/dvc repro split pretrain  # the splits and tiny bases it times (no-ops once there)
	$(PY) scripts/bench_dp.py  # data-parallel: 1 vs 2 ranks on the CPU, the plan for 1-8 GPUs
	$(PY) scripts/bench.py

# The dress rehearsal at EvalMuse-40K's shape: every stage after fine-tuning at 4,000, 10,000 and
# 40,000 pairs, timed, with its peak RSS (docs/scaling.md). It scores with the models `make run` trained.
scale: run
	$(PY) scripts/scale.py

# The triggered retrain deployment against `dvc repro` on the same work (after `make run`).
bench-retrain: bases
	$(PY) scripts/bench_retrain.py

# Scoring + 5 training steps of every tiny family on CUDA ("no CUDA device" and exit 0 without one).
gpu-check: data
	$(PY) scripts/gpu_check.py

# Is the weak tiny-backbone score the backbones' fault or the task's? (docs/tiny-backbones.md)
learnability: setup data
	$(BIN)/dvc repro split
	$(PY) scripts/learnability.py

serve: setup
	$(BIN)/tokenfocus serve

schedule: setup
	$(PY) -m flows.schedule

# The MLflow UI on :5000 and the Prefect UI on :4200 with the retrain deployment served;
# Ctrl-C stops everything it started.
ui: setup
	$(PY) scripts/ui.py

# Renders the registered-model and deployment pages in headless Chromium (Debian's `chromium`),
# screenshots under eval/ui/; fails if the champion alias or the cron schedule is missing.
ui-check: setup
	$(PY) scripts/ui_check.py

loadtest: setup
	$(PY) scripts/loadtest.py

# The whole pipeline in a network namespace with loopback only (set-up, which installs, runs first).
offline-run: setup
	unshare -rn bash -c 'ip link set lo up 2>/dev/null || true; $(MAKE) run'

clean:
	rm -rf work eval models mlruns mlflow.db .prefect
