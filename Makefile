# Two commands do everything on a fresh machine: `make demo` and `make test` (see README).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install browser demo detect-demo test lint table bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	VENV=$(VENV) bash scripts/demo.sh

# BoTNet Mask R-CNN on the generated digits-on-photos COCO set: data, detector, COCOeval, drawn PNGs (~9 min, 1 core).
detect-demo: $(STAMP)
	VENV=$(VENV) bash scripts/detect_demo.sh

# Debian's chromium + chromedriver for the attention explorer's browser tests (tests/test_explorer.py), where missing.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } || \
	  echo "make browser: could not install chromium; the browser tests will be skipped (outside CI)" >&2

test: $(STAMP) browser
	$(PY) -m ruff check src tests benchmarks scripts
	$(PY) -m ruff format --check src tests benchmarks scripts
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check src tests benchmarks scripts
	$(PY) -m ruff format --check src tests benchmarks scripts

table: $(STAMP)
	$(PY) benchmarks/model_table.py --readme README.md

# CPU-sized sweeps (minutes); results in benchmarks/results/. On a GPU: make bench BENCH_ARGS="--device cuda".
BENCH_ARGS ?= --quick
bench: $(STAMP)
	$(PY) benchmarks/flops.py
	$(PY) benchmarks/throughput.py $(BENCH_ARGS)
	$(PY) benchmarks/attention_memory.py $(BENCH_ARGS)
	$(PY) benchmarks/model_memory.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
