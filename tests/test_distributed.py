"""Scale-out deployment: the docker/ files, checked statically, and the same configuration run for real.

No container engine runs on the build machines, so the Dockerfile and compose file are checked
for what can be checked without one (structure, roles, shared settings, interpolation, paths),
and `test_hourly_dag_runs_on_two_celery_workers` proves the configuration natively: api-server,
scheduler, dag-processor and two Celery workers as processes on this machine's PostgreSQL and
Redis (tests/celery_cluster.py), one real hourly DAG run, tasks on both workers, plan published.

That test needs PostgreSQL on 127.0.0.1:5432 and Redis on 127.0.0.1:6379 and takes about two
minutes: it runs under `make test-distributed` (PEERSCALE_DISTRIBUTED=1), which `.ci/run` calls.
"""

from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path

import pytest
import yaml

from pipeline.common.config import REPO_ROOT
from tests.celery_cluster import CeleryCluster
from tests.conftest import RUN_END, RUN_START, settings_for

DOCKER = REPO_ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
DOCKERFILE = DOCKER / "Dockerfile"
ROLES = {  # compose service → the Airflow command it runs
    "airflow-init": ["db", "migrate"],
    "airflow-apiserver": ["api-server"],
    "airflow-scheduler": ["scheduler"],
    "airflow-dag-processor": ["dag-processor"],
    "airflow-worker": ["celery", "worker"],
    "airflow-triggerer": ["triggerer"],
}
# Settings the native cluster and the compose file must agree on: without any one of them a
# CeleryExecutor deployment of these DAGs does not work (see docker/README.md).
SHARED_SETTINGS = [
    "AIRFLOW__CORE__EXECUTOR",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
    "AIRFLOW__CELERY__BROKER_URL",
    "AIRFLOW__CELERY__RESULT_BACKEND",
    "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
    "AIRFLOW__CORE__FERNET_KEY",
    "AIRFLOW__API_AUTH__JWT_SECRET",
    "AIRFLOW__API__SECRET_KEY",
    "AIRFLOW__CORE__DAGS_FOLDER",
    "AIRFLOW__CORE__LOAD_EXAMPLES",
    "AIRFLOW__CORE__HOSTNAME_CALLABLE",
    "AIRFLOW__OPERATORS__DEFAULT_QUEUE",
    "AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER",
    "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT",
    "PEERSCALE_SOURCE",
    "PEERSCALE_LAKE",
    "PEERSCALE_BUILD",
]
INTERPOLATION = re.compile(r"\$(\$|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _default(value: str) -> str:
    """A compose value with `${VAR:-default}` replaced by its default (what runs without a .env)."""
    return INTERPOLATION.sub(lambda m: "$" if m.group(1) == "$" else (m.group(4) if m.group(3) == ":-" else f"<{m.group(2)}>"), value)


# ---- the worker identity Airflow records per task instance ---------------------------------------

def test_worker_identity_is_the_worker_name_else_the_fqdn(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.common.worker_identity import hostname

    monkeypatch.setenv("PEERSCALE_WORKER_NAME", "worker-7")
    assert hostname() == "worker-7"
    monkeypatch.delenv("PEERSCALE_WORKER_NAME")
    assert hostname() == socket.getfqdn()


def test_task_sdk_resolves_the_hostname_callable(monkeypatch: pytest.MonkeyPatch, compose: dict) -> None:
    """The compose value is the dotted path Airflow 3.3 imports (`module.function`, not `module:function`)."""
    from airflow.sdk.api.client import get_hostname  # what a worker reports as TaskInstance.hostname

    callable_path = compose["x-airflow-common"]["environment"]["AIRFLOW__CORE__HOSTNAME_CALLABLE"]
    monkeypatch.setenv("AIRFLOW__CORE__HOSTNAME_CALLABLE", callable_path)
    monkeypatch.setenv("PEERSCALE_WORKER_NAME", "worker-9")
    assert get_hostname() == "worker-9"


# ---- docker/compose.yaml -----------------------------------------------------------------------

def test_compose_runs_every_airflow_role_from_one_image_and_one_environment(compose: dict) -> None:
    services = compose["services"]
    common = compose["x-airflow-common"]
    assert {"postgres", "redis", *ROLES} <= set(services)
    for name, command in ROLES.items():
        service = services[name]
        assert service["image"] == common["image"] and service["build"] == common["build"], name
        assert service["environment"] == common["environment"], f"{name} must share the common environment"
        assert service["command"][: len(command)] == command, name
        assert {"postgres", "redis"} <= set(service["depends_on"]), name
        if name != "airflow-init":
            assert service["depends_on"]["airflow-init"] == {"condition": "service_completed_successfully"}, name
            assert "healthcheck" in service, name
    assert services["airflow-worker"]["deploy"]["replicas"] >= 2, "at least two Celery workers"
    assert services["airflow-worker"]["depends_on"]["airflow-apiserver"]["condition"] == "service_healthy"
    assert services["airflow-init"]["restart"] == "no"
    assert services["postgres"]["image"].startswith("postgres:") and services["redis"]["image"].startswith("redis:")
    assert all("healthcheck" in services[s] for s in ("postgres", "redis"))
    assert (REPO_ROOT / services["airflow-init"]["build"]["context"].replace("..", ".")).resolve() == REPO_ROOT
    assert (DOCKER / services["airflow-init"]["build"]["context"] / services["airflow-init"]["build"]["dockerfile"]).resolve() == DOCKERFILE


def test_compose_wires_celery_postgres_redis_and_the_execution_api(compose: dict) -> None:
    env = {k: _default(str(v)) for k, v in compose["x-airflow-common"]["environment"].items()}
    services = compose["services"]
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    sql_alchemy_conn = env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    assert re.fullmatch(r"postgresql\+psycopg2://airflow:<POSTGRES_PASSWORD>@postgres:5432/airflow", sql_alchemy_conn)
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"] == "db+" + sql_alchemy_conn.replace("+psycopg2", "")
    assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://redis:6379/")
    # Airflow 3: workers run tasks through the api-server's execution API, reachable by service name.
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/"
    api_command = services["airflow-apiserver"]["command"]
    assert api_command[api_command.index("--port") + 1] == "8080"
    # Secrets every process must share are required: compose refuses to start without them.
    for key in ("AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__API__SECRET_KEY"):
        assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]+\}", compose["x-airflow-common"]["environment"][key]), key
    # Workers consume the queue tasks are sent to.
    worker_command = services["airflow-worker"]["command"]
    assert worker_command[worker_command.index("--queues") + 1] == env["AIRFLOW__OPERATORS__DEFAULT_QUEUE"]


def test_compose_shares_the_lake_between_all_workers(compose: dict) -> None:
    common = compose["x-airflow-common"]
    env = {k: _default(str(v)) for k, v in common["environment"].items()}
    mounts = {m.split(":")[1]: m.split(":")[0] for m in common["volumes"]}
    for key in ("PEERSCALE_LAKE", "PEERSCALE_BUILD"):
        mount_point = next((p for p in mounts if env[key] == p or env[key].startswith(p + "/")), None)
        assert mount_point is not None, f"{key}={env[key]} is not on a volume shared by the workers"
        assert mounts[mount_point] in compose["volumes"], "a named volume, the same for every replica"
    for name in ROLES:
        assert compose["services"][name]["volumes"] == common["volumes"], name


def test_compose_matches_the_natively_tested_configuration(compose: dict, tmp_path: Path) -> None:
    """Every setting the native cluster needs is set in the compose file too (and vice versa for ours)."""
    compose_env = compose["x-airflow-common"]["environment"]
    cluster = CeleryCluster(workdir=tmp_path, lake_root=str(tmp_path / "lake"), build_root=str(tmp_path / "build"))
    native_env = cluster.env()
    for key in SHARED_SETTINGS:
        assert key in compose_env, f"compose.yaml does not set {key}"
        assert key in native_env, f"tests/celery_cluster.py does not set {key}"
    assert native_env["AIRFLOW__CORE__HOSTNAME_CALLABLE"] == compose_env["AIRFLOW__CORE__HOSTNAME_CALLABLE"]
    assert native_env["AIRFLOW__CORE__EXECUTOR"] == compose_env["AIRFLOW__CORE__EXECUTOR"]
    image_dags = _dockerfile_env()["AIRFLOW__CORE__DAGS_FOLDER"]
    assert compose_env["AIRFLOW__CORE__DAGS_FOLDER"] == image_dags


def test_compose_variables_are_well_formed_and_documented(compose: dict) -> None:
    text = COMPOSE.read_text()
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", (DOCKER / ".env.example").read_text(), re.MULTILINE))
    for match in re.finditer(r"\$\{[^}]*\}?", text):
        assert INTERPOLATION.fullmatch(match.group(0)), f"malformed interpolation {match.group(0)!r}"
    names = {m.group(2) for m in INTERPOLATION.finditer(text) if m.group(2)}
    assert names <= documented, f"not in docker/.env.example: {sorted(names - documented)}"
    # Shell variables inside health checks are escaped ($$), so compose leaves them to the container.
    bare = {m.group(5) for m in INTERPOLATION.finditer(text) if m.group(5)}
    assert not bare, f"unescaped $VAR (compose would interpolate it): {bare}"
    required = {m.group(2) for m in INTERPOLATION.finditer(text) if m.group(3) == ":?"}
    example = (DOCKER / ".env.example").read_text()
    assert all(re.search(rf"^{name}=$", example, re.MULTILINE) for name in required), "secrets listed, empty, to fill in"
    assert ".env" in (DOCKER / ".gitignore").read_text().split()


# ---- docker/Dockerfile -------------------------------------------------------------------------

def _dockerfile_instructions() -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def _dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for op, args in _dockerfile_instructions():
        if op == "ENV":
            env.update(dict(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=(\S+)", args)))
    return env


def test_dockerfile_installs_the_locked_project_with_everything_it_reads_at_run_time() -> None:
    instructions = _dockerfile_instructions()
    ops = [op for op, _ in instructions]
    known = {"FROM", "ARG", "ENV", "RUN", "COPY", "WORKDIR", "USER", "EXPOSE", "VOLUME", "ENTRYPOINT", "CMD", "LABEL", "HEALTHCHECK"}
    assert set(ops) <= known and ops[0] == "FROM"
    base = dict(instructions)["FROM"]
    requires = re.search(r'requires-python = ">=(\d+\.\d+)', (REPO_ROOT / "pyproject.toml").read_text()).group(1)
    assert base.startswith(f"python:{requires}-"), f"base image {base} must match requires-python {requires}"

    copied = []
    for op, args in instructions:
        if op == "COPY":
            sources = [s for s in args.split()[:-1] if not s.startswith("--")]
            copied += sources
            for source in sources:
                assert (REPO_ROOT / source).exists(), f"COPY {source}: not in the repository"
    # The package (with its feature SQL and IaC templates), the DAGs and the locked stack.
    assert {"pipeline", "dags", "constraints.txt", "pyproject.toml"} <= set(copied)
    runs = " ".join(args for op, args in instructions if op == "RUN")
    assert "-c constraints.txt" in runs, "the image installs the locked versions"
    assert runs.index("-c constraints.txt") < runs.index("pip install --no-deps"), "dependencies layer before sources"
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text().split()
    for source in copied:
        assert f"!{source}" in ignore or f"!{source}/**" in ignore, f"{source} is excluded from the build context"

    env = _dockerfile_env()
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == "/opt/peerscale/dags" and dict(instructions)["WORKDIR"] == "/opt/peerscale"
    assert env["AIRFLOW__CORE__HOSTNAME_CALLABLE"] == "pipeline.common.worker_identity.hostname"
    user = dict(instructions)["USER"]
    assert user not in ("root", "0"), "workers do not run as root"
    assert json.loads(dict(instructions)["ENTRYPOINT"])[-1] == "airflow"


# ---- the same configuration, natively: a real CeleryExecutor run on two workers ------------------

@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.skipif(os.environ.get("PEERSCALE_DISTRIBUTED") != "1", reason="needs PostgreSQL + Redis: `make test-distributed`")
def test_hourly_dag_runs_on_two_celery_workers(seeded_copy: Path, tmp_path: Path) -> None:
    from pipeline.plan import latest_plan_id, read_plan

    settings = settings_for(seeded_copy)
    cluster = CeleryCluster(workdir=tmp_path / "cluster", lake_root=settings.lake_root, build_root=settings.build_root,
                            workers=2, worker_concurrency=1)
    dag_id, run_id = "peerscale_hourly", f"celery__{RUN_END}"
    try:
        cluster.start()
        cluster.wait_for_dag(dag_id)
        tasks = {t["task_id"] for t in cluster.api("GET", f"/api/v2/dags/{dag_id}/tasks")["tasks"]}
        created = cluster.trigger(dag_id, run_id, f"{RUN_START}:00Z", f"{RUN_END}:00Z")
        assert created["data_interval_end"].startswith(f"{RUN_END}:00"), created
        run = cluster.wait_for_run(dag_id, run_id, timeout=1200)  # ~1 min idle; generous for a loaded machine
        tis = cluster.task_instances(dag_id, run_id)
        rows = cluster.query(
            "SELECT task_id, map_index, state, hostname, external_executor_id, try_number FROM task_instance "
            "WHERE dag_id = %s AND run_id = %s", (dag_id, run_id))
        worker_logs = {name: cluster.logs.joinpath(f"{name}.log").read_text(errors="replace") for name in cluster.worker_names}

        assert run["state"] == "success", [(t["task_id"], t["state"]) for t in tis]
        assert run["data_interval_start"].startswith(f"{RUN_START}:00") and run["data_interval_end"].startswith(f"{RUN_END}:00")
        # Within the apply gate (a dry run never asks a person) `route` skips the human approval.
        skipped = [t["task_id"] for t in tis if t["state"] == "skipped"]
        assert {t["task_id"] for t in tis} == tasks and skipped == ["approval"], [(t["task_id"], t["state"]) for t in tis]
        assert all(t["state"] == "success" for t in tis if t["task_id"] != "approval"), [(t["task_id"], t["state"]) for t in tis]
        rows = [row for row in rows if row[2] != "skipped"]

        # Every task ran on one of our two workers, and both of them did work.
        hosts = {row[0] + (f"[{row[1]}]" if row[1] >= 0 else ""): row[3] for row in rows}
        assert set(hosts.values()) == set(cluster.worker_names), hosts
        # Cross-check with Celery itself: the Celery task id Airflow recorded for each task
        # instance was received by the worker the task instance names (and by no other).
        for task_id, _map, _state, host, celery_id, _try in rows:
            assert celery_id, f"{task_id}: no Celery task id recorded (not run by the CeleryExecutor?)"
            received_by = {name for name, text in worker_logs.items() if celery_id in text}
            assert received_by == {host}, (task_id, celery_id, host, received_by)

        # The run published its plan, for the interval it was given, into the shared lake.
        plan_id = latest_plan_id(settings)
        assert plan_id == "plan-20260129T0000Z", "the run covering [23:00, 00:00) publishes the plan from 00:00"
        plan, manifest = read_plan(settings, plan_id)
        assert manifest["status"] == "published" and len(plan) > 0
        assert manifest["data_interval"] == {"start": f"{RUN_START}:00+00:00", "end": f"{RUN_END}:00+00:00"}
        assert Path(manifest["artifacts"]["report"]).exists()
        assert (Path(manifest["artifacts"]["terraform"]) / "plan.json").exists()
        print(f"\ntasks per worker: { {w: sorted(t for t, h in hosts.items() if h == w) for w in cluster.worker_names} }")
    except BaseException:
        print(cluster.log_tails(60))
        raise
    finally:
        cluster.stop()

    # Nothing left behind: processes, database, Redis database.
    assert all(p.popen is None or p.popen.poll() is not None for p in cluster.processes)
    assert cluster.database_exists() is False
    assert cluster.redis_db is None


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.skipif(os.environ.get("PEERSCALE_DISTRIBUTED") != "1", reason="needs PostgreSQL + Redis: `make test-distributed`")
def test_daily_training_shards_spread_over_both_celery_workers(seeded_copy: Path, tmp_path: Path) -> None:
    """The daily DAG's training (train_split → train_global ‖ train_shard mapped → train_promote) on two
    Celery workers: the shards run on both, and the version they train is promoted (a fast zoo:
    PEERSCALE_TRAIN_MODELS, as an operator would set it for a test cluster)."""
    from pipeline.forecast import registry

    settings = settings_for(seeded_copy)
    cluster = CeleryCluster(workdir=tmp_path / "cluster", lake_root=settings.lake_root, build_root=settings.build_root,
                            workers=2, worker_concurrency=1,
                            extra_env={"PEERSCALE_TRAIN_MODELS": "seasonal_naive,seasonal_mean,auto_ets"})
    dag_id, run_id = "peerscale_daily", f"celery__{RUN_END}"
    try:
        cluster.start()
        cluster.wait_for_dag(dag_id)
        cluster.trigger(dag_id, run_id, "2026-01-28T00:00:00Z", "2026-01-29T00:00:00Z")
        run = cluster.wait_for_run(dag_id, run_id, timeout=1500)
        tis = cluster.task_instances(dag_id, run_id)
        assert run["state"] == "success", [(t["task_id"], t["state"]) for t in tis]
        rows = cluster.query("SELECT task_id, map_index, hostname FROM task_instance WHERE dag_id = %s AND run_id = %s "
                             "AND state = 'success'", (dag_id, run_id))
        shards = {m: host for task, m, host in rows if task == "train_shard"}
        assert len(shards) >= 2, rows
        assert set(shards.values()) == set(cluster.worker_names), f"training shards per worker: {shards}"
        current = registry.current(settings.lake_root)
        assert current is not None
        version = registry.load(settings.lake_root, str(current["version"]))
        zoo = {"seasonal_naive", "seasonal_mean", "auto_ets"}
        assert version.entries and set(version.manifest["chosen"]) <= zoo | {"ensemble"}, version.manifest["chosen"]
        used = {name for e in version.entries.values() for name in (e.get("members") or [e["model"]])}
        assert used <= zoo, f"models outside the operator's zoo: {used - zoo}"
        print(f"\ntraining shards per worker: {shards}")
    except BaseException:
        print(cluster.log_tails(60))
        raise
    finally:
        cluster.stop()
