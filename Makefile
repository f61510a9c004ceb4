# alseg: the two commands a new machine needs are `make demo` and `make test`; both install first.
VENV ?= .venv
PY := $(VENV)/bin/python
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: install demo test test-fast lint clean-venv

install:
	@bash scripts/install.sh

demo: install
	$(VENV)/bin/alseg demo

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
