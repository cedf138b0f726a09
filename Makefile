# Every target creates its own virtual environment (.venv) on first use.
# The interpreter the venv is made from: the distribution's own Python when it is 3.11 or newer with venv,
# else python3 from PATH; `make PYTHON=...` picks another. The distribution's (Debian's, Ubuntu's) is an
# executable linked statically and built for speed; a plain source build such as pyenv's default (a
# shared libpython, no profile-guided optimisation) runs the engine some 10 % slower (BENCHMARKS.md, Speed).
ifndef PYTHON
PYTHON := $(firstword $(foreach p,/usr/bin/python3 python3,$(shell $(p) -c 'import sys, venv, ensurepip; \
	sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1 && echo $(p))) python3)
endif
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint venv clean

$(BIN)/dialer: pyproject.toml
	@echo "making $(VENV) with $(PYTHON) ($$($(PYTHON) -c 'import sys; print(sys.version.split()[0])'))"
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
