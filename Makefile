# speechimp: the two commands of the README, plus helpers.
#   make demo   # install (once) + the whole recipe on the built-in offline demo
#   make test   # install (once) + the linter + the test suite
.PHONY: install demo test fault-trials clean-demo

VENV ?= tools/venv
PY := $(VENV)/bin/python

install:
	SPEECHIMP_VENV=$(abspath $(VENV)) tools/install.sh

demo: install
	tools/install_voices.sh
	cd egs2/speechimp && ./run.sh

test: install
	$(PY) -m ruff check .
	$(PY) -m pytest -q -n 2 --dist loadfile tests

# SIGKILL trials of the training, decoding, feature-dump, importance and warm-up jobs (~10 min on 2 cores; not in make test)
fault-trials: install
	$(PY) tests/fault_trials.py --trials 8 --seed 0

clean-demo:
	cd egs2/speechimp && rm -rf data dump exp
