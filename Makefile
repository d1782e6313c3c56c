# peerscale — the two commands that matter: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: install demo test bench clean lock

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test]"
	@touch $(STAMP)

install: $(STAMP)  ## create .venv if missing and install the locked stack

demo: install  ## run the whole pipeline on data_samples/ through Airflow, then send requests through the IRC
	bash scripts/demo.sh

test: install  ## run the test suite
	$(PY) -m pytest -q

lock:  ## re-resolve the stack and rewrite constraints.txt (needs a clean venv)
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install --quiet --upgrade "pip>=24" && .venv-lock/bin/pip install --quiet -e ".[test]"
	.venv-lock/bin/pip freeze --exclude-editable | grep -v '^peerscale' > constraints.txt
	rm -rf .venv-lock

clean:
	rm -rf build lake .pytest_cache
