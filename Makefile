# Every target creates its own virtual environment (.venv) on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint venv clean

$(BIN)/dialer: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,sim]'
	touch $(BIN)/dialer

venv: $(BIN)/dialer

demo: venv
	$(BIN)/dialer run config/demo.toml

test: venv
	@command -v redis-server >/dev/null || { echo "redis-server is required by the tests: apt-get install redis-server"; exit 1; }
	$(BIN)/ruff check engine plugins simulations tests examples
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) results .pytest_cache
