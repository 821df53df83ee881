# Two entry points; each does all of its own set-up on a fresh machine.
#   make demo   installs and runs the main job on the shipped default weights
#   make test   installs and runs the lint and the test suite
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
OUT     ?= demo_out

.PHONY: demo test lint install clean

$(STAMP): pyproject.toml scripts/setup.sh
	bash scripts/setup.sh $(VENV) $(PY)
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

test: $(STAMP) lint
	bash scripts/install_browser.sh || true
	OMP_NUM_THREADS=2 $(BIN)/python -m pytest

demo: $(STAMP)
	bash scripts/demo.sh $(BIN) $(OUT)

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache
