# Two set-up commands: `make demo` runs the main job, `make test` runs the suite.
# Each creates .venv when it is missing; nothing else is installed by hand.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch and torchvision come first, pinned, so pip takes the local CUDA wheels
# instead of resolving a different build through the other dependencies.
TORCH := "torch>=2.5,<2.15" "torchvision>=0.20,<0.30"

.PHONY: demo test venv clean

$(BIN)/samtune: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $(BIN)/samtune

venv: $(BIN)/samtune

demo: venv
	$(BIN)/samtune demo

test: venv
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) runs demo_output
