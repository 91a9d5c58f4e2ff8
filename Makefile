# The two set-up commands of the README. Each installs whatever is missing first
# (tools/install.sh: a venv in .venv, or the Python named by CVATTN_PYTHON).
PYTHON := $(or $(CVATTN_PYTHON),.venv/bin/python)

.PHONY: install quickstart test lint

install:
	bash tools/install.sh

quickstart: install
	$(PYTHON) tools/quickstart.py

test: install
	$(PYTHON) -m pytest tests

lint: install
	$(PYTHON) -m ruff check .
