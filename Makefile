# mmrec — the two commands a newcomer needs: `make train` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch / torchvision pinned to the releases that install from local disk here.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: install train test test-slow bench serve clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed  ## create .venv and install mmrec with its dev extras

train: $(VENV)/.installed  ## train + evaluate LightGCN on the generated demo dataset
	$(PY) -m mmrec.train $(ARGS)

test: $(VENV)/.installed  ## the unit/integration test suite (slow tests excluded)
	$(PY) -m pytest $(ARGS)

test-slow: $(VENV)/.installed  ## heavy tests only
	$(PY) -m pytest -m slow $(ARGS)

# The demo served end to end: train FREEDOM on the demo (once), export it (once), serve it on :8000.
DEMO_RUN := logs/serve_demo
serve: $(VENV)/.installed  ## page + API at http://127.0.0.1:8000/ (ARGS=port=9000 ...)
	test -f $(DEMO_RUN)/metrics.json || $(PY) -m mmrec.train model=freedom trainer.max_epochs=40 hydra.run.dir=$(DEMO_RUN)
	test -f $(DEMO_RUN)/bundle/manifest.json || $(PY) -m mmrec.export run=$(DEMO_RUN)
	$(PY) -m mmrec.serve bundle=$(DEMO_RUN)/bundle $(ARGS)

bench: $(VENV)/.installed  ## LightGCN benchmark on Amazon Baby -> experiments/RESULTS.md
	$(PY) experiments/bench_lightgcn_baby.py $(ARGS)

clean:
	rm -rf outputs multirun logs .pytest_cache
