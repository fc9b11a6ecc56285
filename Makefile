# The two commands the README gives. Each sets up .venv on first use (see bootstrap.sh).
VENV := .venv

.PHONY: demo test

$(VENV)/.installed: pyproject.toml bootstrap.sh
	./bootstrap.sh

demo: $(VENV)/.installed
	$(VENV)/bin/hypersr demo tests/data/bbb_640x360.mp4 -o demo-out

test: $(VENV)/.installed
	$(VENV)/bin/python -m pytest
