"""The IRC's Prometheus rules, scrape configuration and Grafana dashboard, with the real tools.

`promtool` and `prometheus` come from Debian's `prometheus` package (installed by `.ci/run`); the
tests skip when they are absent. The last one runs a real Prometheus on loopback that scrapes a
live `peerscale irc serve` (with its bearer token) and evaluates the rules of deploy/prometheus.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.test_irc_service import EU, GOOD, REPO, TOKEN, Served, lake  # noqa: F401 (lake: the fixture)

DEPLOY = REPO / "deploy"
RULES = DEPLOY / "prometheus" / "irc_alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "irc_dashboard.json"
promtool = shutil.which("promtool")
prometheus_bin = shutil.which("prometheus")
needs_promtool = pytest.mark.skipif(promtool is None, reason="promtool not installed (apt-get install prometheus)")


@needs_promtool
def test_rules_pass_promtool_check_and_their_unit_tests() -> None:
    check = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)  # type: ignore[list-item]
    assert check.returncode == 0, check.stdout + check.stderr
    tested = subprocess.run([promtool, "test", "rules", "irc_alerts_test.yml"], cwd=RULES.parent,  # type: ignore[list-item]
                            capture_output=True, text=True, timeout=120)
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr


@needs_promtool
def test_a_broken_rule_fails_promtool(tmp_path: Path) -> None:
    """The check above can fail: a rule with a PromQL syntax error is refused."""
    rules = yaml.safe_load(RULES.read_text())
    rules["groups"][1]["rules"][0]["expr"] = "peerscale_irc:hit_rate:ratio15m < < 0.9"
    broken = tmp_path / "broken.yml"
    broken.write_text(yaml.safe_dump(rules))
    check = subprocess.run([promtool, "check", "rules", str(broken)], capture_output=True, text=True, timeout=60)  # type: ignore[list-item]
    assert check.returncode != 0


def _config_with(tmp_path: Path, target: str, token_file: Path, interval: str = "15s") -> Path:
    """deploy/prometheus/prometheus.yml with the target, the token file and the rules' path made local."""
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    config["global"].update(scrape_interval=interval, evaluation_interval=interval)
    config["rule_files"] = [str(RULES)]
    job = config["scrape_configs"][0]
    job["authorization"]["credentials_file"] = str(token_file)
    job["static_configs"][0]["targets"] = [target]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


@needs_promtool
def test_scrape_config_passes_promtool(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text(TOKEN)
    check = subprocess.run([promtool, "check", "config", str(_config_with(tmp_path, "irc:8787", token))],  # type: ignore[list-item]
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr


def test_dashboard_queries_metrics_the_service_exports() -> None:
    """Every metric a panel queries is one the IRC exports (or a recording rule of irc_alerts.yml)."""
    import re

    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert len(exprs) >= 8
    names = {name for expr in exprs for name in re.findall(r"\b(peerscale_irc[:\w]*)", expr)}
    recorded = {rule["record"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]
                if "record" in rule}
    source = "".join((REPO / "pipeline" / "irc" / f).read_text() for f in ("metrics.py", "prometheus.py", "coordinator.py"))
    exported = set(re.findall(r'"(peerscale_irc_\w+)"', source)) | {
        f"peerscale_irc_worker_{n}" for n in ("resident_memory_bytes", "open_fds", "start_time_seconds")}
    histogram = {f"peerscale_irc_decision_duration_seconds_{s}" for s in ("bucket", "sum", "count")}
    unknown = names - recorded - exported - histogram
    assert not unknown, f"the dashboard queries metrics nobody exports: {sorted(unknown)}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _query(base: str, expr: str) -> list[dict[str, Any]]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())["data"]["result"]  # type: ignore[no-any-return]


def _wait(what: str, check: Any, timeout_s: float = 90.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            value = check()
        except OSError:
            value = None
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def live_prometheus(tmp_path: Path) -> Iterator[Any]:
    if prometheus_bin is None:
        pytest.skip("prometheus not installed (apt-get install prometheus)")
    procs: list[subprocess.Popen] = []

    def start(target: str, token_file: Path) -> str:
        port = _free_port()
        proc = subprocess.Popen([prometheus_bin, f"--config.file={_config_with(tmp_path, target, token_file, '1s')}",  # type: ignore[list-item]
                                 f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        procs.append(proc)
        return f"http://127.0.0.1:{port}"

    yield start
    for proc in procs:
        proc.terminate()
        proc.communicate(timeout=60)


def test_prometheus_scrapes_a_live_irc_and_evaluates_its_rules(lake: Path, tmp_path: Path, live_prometheus: Any) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    with Served("--lake", str(lake), "--token-file", str(token_file), "--reload-interval", "0.2", "--no-log-outcomes",
                token=TOKEN) as served:
        base = live_prometheus(served.base.removeprefix("http://"), token_file)
        _wait("a first scrape", lambda: [s for s in _query(base, 'up{job="peerscale-irc"}') if s["value"][1] == "1"])
        for _ in range(10):  # 7 pre-allocated (95 % of 8 vcpu), then 3 on demand
            served.call("POST", "/v1/requests", {**GOOD, "vcpu": 1})
        hit_rate = _wait("the hit-rate rule", lambda: _query(base, "peerscale_irc:hit_rate:ratio15m"))
        assert float(hit_rate[0]["value"][1]) == pytest.approx(0.7)
        share = _query(base, "peerscale_irc:on_demand_share:ratio15m")
        assert float(share[0]["value"][1]) == pytest.approx(0.3)

        (lake / "plans" / "LATEST").write_text("plan-zzz\n")  # a broken publication: every reload fails
        alerts = _wait("IrcPlanReloadFailures to fire", lambda: [
            a for a in json.loads(urllib.request.urlopen(f"{base}/api/v1/alerts", timeout=10).read())["data"]["alerts"]
            if a["labels"]["alertname"] == "IrcPlanReloadFailures" and a["state"] == "firing"])
        assert alerts[0]["labels"]["severity"] == "warning"
        assert served.call("GET", "/readyz")[0] == 200  # the previous plan stays in use
        served.stop()
