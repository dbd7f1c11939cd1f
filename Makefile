PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/loom check samples/mlp.loom
	$(BIN)/loom compile samples/mlp.loom --target cpu --emit shared -o build/mlp.so
	$(BIN)/loom run samples/mlp.loom --target cpu --random-inputs 0 --check --print-outputs

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 tests

bench: $(STAMP)
	$(BIN)/python benchmarks/cpu_matmul.py
	$(BIN)/python benchmarks/cpu_models.py
	$(BIN)/python benchmarks/systolic_vs_scalesim.py
	$(BIN)/python benchmarks/systolic_utilization.py
	$(BIN)/python benchmarks/systolic_quant.py

clean:
	rm -rf $(VENV) build *.egg-info
