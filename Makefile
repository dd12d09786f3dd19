# Fresh machine: `make demo` or `make test` runs the set-up first.
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel is local here; on a GPU cluster use e.g. TORCH_SPEC="torch==2.5.1" with your CUDA index.
TORCH_SPEC ?= torch==2.13.0
LLAVA_SPEC := llava-torch==1.2.2.post1

.PHONY: setup setup-eval demo test test-fast patch-check clean

setup: $(VENV)/.setup-done

$(VENV)/.setup-done: setup.py constraints.txt $(wildcard patches/*.patch)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	# llava's own pins are obsolete: install it without them, then apply patches/ to it.
	$(PY) -m pip install -q --no-deps $(LLAVA_SPEC)
	# torchvision breaks transformers' CLIP import beside the CPU torch wheel; the PIL processors need none.
	-$(PY) -m pip uninstall -q -y torchvision
	$(VENV)/bin/llava-dpa patch-llava
	touch $@

# lmms-eval (the evaluation harness) with the model stack held at the installed versions, so it cannot move
# torch or transformers; constraints-eval.txt says what must move instead.
HELD := torch|transformers|tokenizers|accelerate|peft|safetensors|numpy|huggingface_hub|bitsandbytes|deepspeed
setup-eval: $(VENV)/.eval-done

$(VENV)/.eval-done: $(VENV)/.setup-done constraints-eval.txt
	$(PY) -m pip freeze | grep -i -E '^($(HELD))==' > $(VENV)/held.txt
	$(PY) -m pip install -q -c $(VENV)/held.txt -c constraints-eval.txt -e ".[eval]"
	-$(PY) -m pip uninstall -q -y torchvision
	touch $@

demo: setup
	$(PY) -m llava_dpa.demo

test: setup setup-eval
	$(PY) -m pytest -q tests

# The fast tier: pure logic, no training subprocess (pytest marker `fast`).
test-fast: setup
	$(PY) -m pytest -q -m fast tests

patch-check: setup
	$(VENV)/bin/llava-dpa patch-llava --check

clean:
	rm -rf $(VENV) demo_output .pytest_cache
