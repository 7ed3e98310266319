# Two commands on a fresh checkout: `make demo` and `make test`.
# Each creates .venv if needed and installs into it once (scripts/setup.sh: the pinned CPU torch first,
# then softprompt with its test tools and the embedded models); later runs skip the install until
# pyproject.toml or scripts/setup.sh changes.

PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test setup

demo: $(STAMP)
	$(VENV)/bin/softprompt demo

test: $(STAMP)
	bash scripts/browser.sh
	$(VENV)/bin/python -m pytest -q

setup: $(STAMP)

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# setup.sh installs into the active Python, so it runs with the venv's bin first on PATH.
$(STAMP): pyproject.toml scripts/setup.sh | $(VENV)/bin/python
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" VIRTUAL_ENV="$(CURDIR)/$(VENV)" bash scripts/setup.sh
	touch $@
