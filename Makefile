# peerscale — the two commands that matter: `make demo` and `make test` (and `make lint` before a commit).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: install tools demo test test-long test-terraform test-distributed lint bench clean lock

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test,lint]"
	@touch $(STAMP)

install: $(STAMP)  ## create .venv if missing and install the locked stack

TOOLS_VENV  := .venv-tools
TOOLS_STAMP := $(TOOLS_VENV)/.installed-stamp
$(TOOLS_STAMP): requirements-tools.txt
	@test -x $(TOOLS_VENV)/bin/python || $(PYTHON) -m venv $(TOOLS_VENV)
	$(TOOLS_VENV)/bin/python -m pip install --quiet --upgrade "pip>=24"
	$(TOOLS_VENV)/bin/python -m pip install --quiet -r requirements-tools.txt
	@touch $(TOOLS_STAMP)

tools: $(TOOLS_STAMP)  ## checkov (pinned in requirements-tools.txt) in its own venv: its pins would downgrade boto3 in .venv

demo: install  ## run the whole pipeline on data_samples/ through Airflow, then send requests through the IRC
	bash scripts/demo.sh

test: install tools  ## run the test suite (10-19 min on 2 cores, by machine; without the longest end-to-end suites: make test-long, and the terraform apply sequence: make test-terraform)
	$(PY) -m pytest -q -m "not terraform_apply and not long"

test-long: install tools  ## the longest end-to-end suites (14-20 min): a kill at every write point, the Airflow DAG run, checkov on the published plan, S3 and backfill runs
	$(PY) -m pytest -q -m "long and not terraform_apply"

test-terraform: install  ## the real terraform plan/apply sequence against the moto server (~10 min; skips without terraform)
	$(PY) -m pytest -q -m terraform_apply -s tests/test_iac_terraform_apply.py

LINT_PATHS := pipeline dags plugins bench tests scripts

lint: install  ## ruff (all Python), mypy (pipeline/) and the layout rules (tests/test_layout.py); runs all three, fails if any fails
	@status=0; \
	$(PY) -m ruff check $(LINT_PATHS) || status=1; \
	$(PY) -m mypy || status=1; \
	$(PY) -m pytest -q tests/test_layout.py || status=1; \
	exit $$status

test-distributed: install  ## the hourly DAG on CeleryExecutor (api-server, scheduler, dag-processor, 2 workers; PostgreSQL + Redis on 127.0.0.1), the daily training shards on both workers, then `airflow backfill create` vs `peerscale backfill`, then the apply approval answered through the REST API (moto)
	PEERSCALE_DISTRIBUTED=1 $(PY) -m pytest -q tests/test_distributed.py::test_hourly_dag_runs_on_two_celery_workers tests/test_distributed.py::test_daily_training_shards_spread_over_both_celery_workers tests/test_airflow_backfill.py tests/test_airflow_approval.py

lock:  ## re-resolve the stack and rewrite constraints.txt (needs a clean venv)
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install --quiet --upgrade "pip>=24" && .venv-lock/bin/pip install --quiet -e ".[test,lint]"
	.venv-lock/bin/pip freeze --exclude-editable | grep -v '^peerscale' > constraints.txt
	rm -rf .venv-lock

clean:
	rm -rf build lake .pytest_cache .mypy_cache .ruff_cache
