# Two commands do all the set-up: `make demo` and `make test`.
# VENV can come from the environment, so CI can reuse one venv (torch is ~5 GB) outside the clone.
VENV ?= .venv
PY := $(VENV)/bin/python
# The stamp is named after pyproject.toml's hash: a changed pyproject means a fresh install.
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: demo test lint format install clean

# The embedded demo: the tutorial's comparison on the bundled photos and backbone, sized for a
# laptop CPU (64 px, 4 epochs a strategy; a few minutes on 2 cores). Ends with the report to open.
demo: install
	$(VENV)/bin/headstart compare demo --strategies features,half,full,scratch --input-size 64 --epochs 4

# Lint first (seconds), then the suite on every core (pytest-xdist): about 10 minutes on 2 cores (target: under 5).
test: lint
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -n auto --dist worksteal

# ruff: pyflakes, pycodestyle, import order, bugbear; and the formatter's check (pyproject.toml).
lint: install
	$(VENV)/bin/ruff check src tests bench scripts
	$(VENV)/bin/ruff format --check src tests bench scripts

# Fix what ruff can: import order, formatting.
format: install
	$(VENV)/bin/ruff check --fix src tests bench scripts
	$(VENV)/bin/ruff format src tests bench scripts

# The dependencies once per pyproject.toml; this checkout every time (cheap), so a VENV shared by
# several clones (CI's) always runs the code of the clone at hand.
install: $(STAMP)
	$(PY) -c "import headstart, sys; sys.exit(not headstart.__file__.startswith('$(CURDIR)/src/'))" 2>/dev/null \
		|| $(PY) -m pip install --quiet --no-deps -e .

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $@

clean:
	rm -rf runs .pytest_cache
