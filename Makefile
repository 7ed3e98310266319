# Two commands on a fresh checkout: `make demo` and `make test`.
# Each creates .venv if needed and installs into it once (scripts/setup.sh: the pinned CPU torch first,
# then softprompt with its test tools and the embedded models, at the versions in constraints.txt);
# later runs skip the install until pyproject.toml, constraints.txt or scripts/setup.sh changes.
# `make constraints` refreshes constraints.txt to the newest releases pyproject.toml admits.

PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test setup constraints

demo: $(STAMP)
	$(VENV)/bin/softprompt demo

# browser.sh installs Debian's chromium for the page test (under CI=true a missing browser fails it).
test: $(STAMP)
	bash scripts/browser.sh
	$(VENV)/bin/python -m pytest -q

setup: $(STAMP)

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# setup.sh installs into the active Python, so it runs with the venv's bin first on PATH.
$(STAMP): pyproject.toml constraints.txt scripts/setup.sh | $(VENV)/bin/python
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" VIRTUAL_ENV="$(CURDIR)/$(VENV)" bash scripts/setup.sh
	touch $@

# A throwaway venv installs without constraints (the newest releases in range); its freeze, less torch
# (setup.sh pins that) and softprompt itself, becomes the new constraints.txt.
constraints:
	set -e; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(PYTHON) -m venv "$$tmp"; \
	PATH="$$tmp/bin:$$PATH" VIRTUAL_ENV="$$tmp" SOFTPROMPT_CONSTRAINTS= bash scripts/setup.sh; \
	{ sed -n '/^#/p' constraints.txt; "$$tmp/bin/python" -m pip freeze --exclude-editable | grep -iv '^torch=='; } > constraints.txt.new; \
	mv constraints.txt.new constraints.txt
	@echo "constraints.txt refreshed: run make test, then commit it"
