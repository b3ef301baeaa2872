# Two entry points on a fresh machine with Python 3.11: `make demo` and `make test`.
# Both create or update .venv first and are safe to run again.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
# cpu: tensorflow-cpu; gpu: tensorflow[and-cuda] (see BUILD.md).
TF_EXTRA ?= cpu
STAMP  := $(VENV)/.installed-$(TF_EXTRA)

.PHONY: venv demo test bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "Python 3.11 is required (TensorFlow 2.16.2 + tensorflow-io 0.37.1); set PYTHON=/path/to/python3.11")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[$(TF_EXTRA),test]"
	# gRPC types for the serving test; --no-deps: it would pull a second TensorFlow.
	$(BIN)/python -m pip install --quiet --no-deps tensorflow-serving-api==2.16.1
	rm -f $(VENV)/.installed-*
	touch $@

demo: venv
	$(BIN)/python -m samplernn_tf.demo

test: venv
	$(BIN)/python -m pytest -q tests

bench: venv
	$(BIN)/python bench/pipeline.py
	$(BIN)/python bench/train_throughput.py
	$(BIN)/python bench/generate_speed.py
	$(BIN)/python bench/scaling.py

clean:
	rm -rf $(VENV) runs
