# The single entry point. `make run` is the quick start; `make test` runs the suite.
PYTHON ?= python3
STAMP := .genqueue/.installed

.PHONY: install run lint test bench services

$(STAMP): pyproject.toml
	# torch is pinned to the CPU wheel first: an unpinned torch pulls a multi-GB CUDA build.
	$(PYTHON) -m pip install -q torch==2.13.0
	$(PYTHON) -m pip install -q -e ".[dev]"
	@mkdir -p $(dir $(STAMP)) && touch $(STAMP)

install: $(STAMP)

## Quick start: a real job end to end on the embedded defaults (no servers to start).
run: install
	genqueue run examples/reviews.jsonl --kind generate \
	  --template "Review: {review} Sentiment:" --model tiny-gpt2 --max-new-tokens 16 \
	  -o examples/reviews.results.jsonl

lint: install
	ruff check .
	ruff format --check .
	mypy genqueue storage scheduler worker client cli api

## Two test processes: most tests wait on real services and worker processes, and the
## test files share no state (each has its own databases and Redis database).
test: install
	$(PYTHON) -m pytest -q -n 2 --dist loadfile

bench: install
	$(PYTHON) bench/run_all.py
