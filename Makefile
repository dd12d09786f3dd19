# Fresh machine: `make demo` or `make test` runs the set-up first.
#
# The two transformers lines this project supports and tests (setup.py admits exactly these):
TRANSFORMERS_4 := 4.57.6
TRANSFORMERS_5 := 5.24.0
# `make setup TRANSFORMERS=5.24.0` chooses the line; each line has its own virtualenv.
TRANSFORMERS ?= $(TRANSFORMERS_4)
VENV ?= $(if $(filter 5.%,$(TRANSFORMERS)),.venv-tf5,.venv)
PY := $(VENV)/bin/python
# The CPU wheel is local here; on a GPU cluster use e.g. TORCH_SPEC="torch==2.5.1" with your CUDA index.
TORCH_SPEC ?= torch==2.13.0
LLAVA_SPEC := llava-torch==1.2.2.post1
SETUP_STAMP := $(VENV)/.setup-$(TRANSFORMERS)
EVAL_STAMP := $(VENV)/.eval-$(TRANSFORMERS)

.PHONY: setup setup-eval demo test test-line test-fast browser patch-check clean

setup: $(SETUP_STAMP)

$(SETUP_STAMP): setup.py constraints.txt $(wildcard patches/*.patch)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -c constraints.txt -e ".[dev,serve]" "transformers==$(TRANSFORMERS)"
	# llava's own pins are obsolete: install it without them (afresh, so a changed patch applies to pristine code), then apply patches/.
	$(PY) -m pip install -q --force-reinstall --no-deps $(LLAVA_SPEC)
	# torchvision breaks transformers' CLIP import beside the CPU torch wheel; the PIL processors need none.
	-$(PY) -m pip uninstall -q -y torchvision
	$(VENV)/bin/llava-dpa patch-llava
	rm -f $(VENV)/.setup-* $(VENV)/.eval-*
	touch $@

# lmms-eval (the evaluation harness) with the model stack held at the installed versions, so it cannot move
# torch (to a CUDA build) or, on the 4.57 line, transformers (to 5.x); on the 5 line lmms-eval accepts the
# installed transformers, so it is not held. constraints-eval.txt says what must move instead.
# gradio 5.50 (the serve extra) pins pillow and pandas below their newest: held too.
HELD := torch|accelerate|peft|safetensors|numpy|bitsandbytes|deepspeed|gradio|pillow|pandas$(if $(filter 4.%,$(TRANSFORMERS)),|transformers|tokenizers|huggingface_hub)
setup-eval: $(EVAL_STAMP)

$(EVAL_STAMP): $(SETUP_STAMP) constraints-eval.txt
	$(PY) -m pip freeze | grep -i -E '^($(HELD))==' > $(VENV)/held.txt
	$(PY) -m pip install -q -c $(VENV)/held.txt -c constraints-eval.txt -e ".[eval]"
	-$(PY) -m pip uninstall -q -y torchvision
	touch $@

demo: setup
	$(PY) -m llava_dpa.demo

# Both lines, one after the other, each in its own virtualenv; each line's cross-line test loads its
# checkpoints with the other line's python (tests/test_cross_line.py).
test:
	$(MAKE) setup setup-eval TRANSFORMERS=$(TRANSFORMERS_4)
	$(MAKE) setup setup-eval TRANSFORMERS=$(TRANSFORMERS_5)
	rc=0; \
	$(MAKE) test-line TRANSFORMERS=$(TRANSFORMERS_4) OTHER_VENV=.venv-tf5 || rc=1; \
	$(MAKE) test-line TRANSFORMERS=$(TRANSFORMERS_5) OTHER_VENV=.venv || rc=1; \
	exit $$rc

# The web UI's browser test drives Debian's chromium (a system package; nothing is downloaded at run time).
browser:
	@command -v chromium >/dev/null || { apt-get update -q && apt-get install -y -q chromium; }

# One line's whole suite on two xdist workers: make test-line TRANSFORMERS=5.24.0. It prints the 25 slowest
# tests and a line for every skip and failure, so each CI log shows where the time goes.
WORKERS ?= 2
test-line: browser setup setup-eval
	@echo "== transformers $(TRANSFORMERS) ($(VENV))"
	LLAVA_DPA_OTHER_PYTHON=$(if $(OTHER_VENV),$(CURDIR)/$(OTHER_VENV)/bin/python) \
	  $(PY) -m pytest -q -n $(WORKERS) --dist loadgroup --durations=25 -ra tests

# The fast tier: pure logic, no training (pytest marker `fast`). Its evaluation-protocol tests read commands with
# lmms-eval's own parser, so it installs the eval extra too.
test-fast: setup setup-eval
	$(PY) -m pytest -q -m fast --durations=10 -ra tests

patch-check: setup
	$(VENV)/bin/llava-dpa patch-llava --check

clean:
	rm -rf .venv .venv-tf5 demo_output .pytest_cache build dist

# ---- the prepared GPU check (docs/gpu.md) -------------------------------------------------------------------
# On a development machine with PyPI: the wheels scripts/gpu/check.sh installs offline on the GPU machine
# (llava-torch, bitsandbytes, DeepSpeed built here from its sdist without ops, and the small dependencies the GPU
# image lacks) into gpu_bundle/ (ignored), for the GPU machine's Python (GPU_PYTHON); refused when it and the
# working tree pass 60 MiB.
.PHONY: gpu-bundle
GPU_PYTHON ?= 3.12
gpu-bundle:
	bash scripts/gpu/bundle.sh gpu_bundle $(GPU_PYTHON)
