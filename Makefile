# Two commands do all the set-up: `make demo` and `make test`.
# VENV can come from the environment, so CI can reuse one venv (torch is ~5 GB) outside the clone.
VENV ?= .venv
PY := $(VENV)/bin/python
# The stamp is named after pyproject.toml's hash: a changed pyproject means a fresh install.
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: demo test install clean

# The embedded demo: look at the data, then train on frozen EfficientNet-Lite0 features (CPU, ~1 min).
demo: $(STAMP)
	$(VENV)/bin/headstart inspect demo --out runs/demo-inspect
	$(VENV)/bin/headstart train demo --strategy features --input-size 96

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $@

clean:
	rm -rf runs .pytest_cache
