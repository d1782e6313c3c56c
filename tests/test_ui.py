"""The analyst app (pipeline.ui) over a real lake: two published plans, IRC outcomes, a recorded backtest.

Pages are served by a real uvicorn on loopback and driven in Debian's Chromium (tests/browser.py);
HTTP-level checks (errors, escaping, read-only) use FastAPI's TestClient on the same app.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.browser import CHROMIUM_ARGS, chromium_path
from tests.conftest import settings_for
from tests.moto_server import aws_env, moto_server, s3_bucket  # noqa: F401

FIRST, SECOND = "plan-20260129T0000Z", "plan-20260129T0100Z"


@pytest.fixture(autouse=True, scope="module")
def validated_charts() -> Iterator[None]:
    """Every chart spec the pages build is checked against Altair's Vega-Lite schema (the app skips it for speed)."""
    from pipeline.ui import charts

    charts.VALIDATE = True
    yield
    charts.VALIDATE = False


def _send_requests(lake_root: str) -> int:
    """Serve the first hour of 2026-01-29's sample requests through the IRC (it logs every decision to the lake)."""
    import pyarrow.compute as pc

    from pipeline.common import lake
    from pipeline.irc import Coordinator
    from pipeline.irc.messages import PeeringRequest

    start = datetime(2026, 1, 29, tzinfo=UTC)
    table = lake.read_time_range(lake_root, "peering_requests", start, start + timedelta(hours=1), "requested_at")
    rows = table.sort_by("requested_at").to_pylist()[:120]
    assert rows and pc.min(table["requested_at"]).as_py() >= start
    with Coordinator(lake_root, reload_interval_s=None) as irc:
        for row in rows:
            irc.handle_peering_request(PeeringRequest.from_row(row))
    return len(rows)


def _record_backtest(lake_root: str) -> None:
    import pandas as pd

    from pipeline.ops.backtest import BacktestConfig, BacktestResult, PolicyResult, record_backtest

    start = datetime(2026, 1, 28, tzinfo=UTC)
    results = {name: PolicyResult(name, requests=100, preallocated=hits, on_demand=100 - hits, preallocation_cost=cost,
                                  hourly=[{"hour": str(start), "requests": 100, "hit_rate": hits / 100}])
               for name, hits, cost in (("predictive", 92, 40.0), ("static", 80, 55.0), ("oracle", 99, 35.0))}
    record_backtest(lake_root, BacktestResult(BacktestConfig(start, start + timedelta(hours=1)), results, pd.DataFrame(), pd.DataFrame()))


@pytest.fixture(scope="module")
def ui_root(published_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The published lake plus the next hour's plan, the IRC's outcomes for the first window and a backtest."""
    from pipeline.run import run_hourly

    root = tmp_path_factory.mktemp("ui")
    shutil.copytree(published_root / "lake", root / "lake")
    run_hourly("2026-01-29T01:00", settings_for(root))
    assert _send_requests(str(root / "lake")) > 0
    _record_backtest(str(root / "lake"))
    return root


@pytest.fixture(scope="module")
def server(ui_root: Path) -> Iterator[str]:
    """The app on a real uvicorn on 127.0.0.1 (a thread of this process)."""
    import uvicorn

    from pipeline.ui.webapp import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(create_app(str(ui_root / "lake")), host="127.0.0.1", port=port, log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.started
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser() -> Iterator:
    if chromium_path() is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        yield b
        b.close()


class Visit:
    """A page in Chromium with its console errors, failed requests and rendered charts."""

    def __init__(self, browser, url: str) -> None:
        self.page = browser.new_page(viewport={"width": 1280, "height": 900})
        self.errors: list[str] = []
        self.external: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("requestfailed", lambda r: self.errors.append(f"failed: {r.url}"))
        self.page.on("request", lambda r: self.external.append(r.url) if not r.url.startswith(("http://127.0.0.1", "data:")) else None)
        self.goto(url)

    def goto(self, url: str) -> None:
        response = self.page.goto(url, wait_until="load")
        assert response is not None and response.status == 200, (url, response and response.status)
        self.wait_charts()

    def wait_charts(self) -> None:
        self.page.wait_for_function(
            "() => Array.from(document.querySelectorAll('div.chart')).every(c => c.dataset.rendered)", timeout=20_000)

    def charts(self) -> dict[str, dict]:
        return dict(self.page.evaluate("""() => Array.from(document.querySelectorAll('div.chart')).map(c => [c.id, {
            rendered: c.dataset.rendered, marks: c.querySelectorAll('svg path, svg circle, svg rect, svg line').length}])"""))

    def close(self) -> None:
        self.page.close()


PAGES = {
    "/": ["chart-history"],
    f"/plans/{SECOND}": ["chart-region", "chart-costs"],
    f"/plans/{FIRST}?window=1&region=eu-west-1": ["chart-region", "chart-costs"],
    "/compare": [],
    "/forecasts": [],
    "/forecasts/series?id=region:us-east-1:vcpu": ["chart-series"],
    "/forecasts/series?id=pair:us-east-1%E2%86%92eu-west-1:requests": ["chart-series"],
    "/operations": ["chart-hits", "chart-backtest"],
    "/requests?region=eu-west-1&start=2026-01-29T00:00&end=2026-01-29T01:00": [],
}


@pytest.mark.parametrize("path", list(PAGES))
def test_every_page_loads_without_errors_and_charts_render(server: str, browser, path: str) -> None:
    visit = Visit(browser, server + path)
    try:
        assert visit.errors == []
        assert visit.external == []  # no CDN: every script and style comes from the app
        charts = visit.charts()
        for chart in PAGES[path]:
            assert charts[chart]["rendered"] == "true", (chart, charts)
            assert charts[chart]["marks"] > 20, (chart, charts)  # drawn with data, not an empty frame
        assert set(charts) == set(PAGES[path])
    finally:
        visit.close()


def test_plan_detail_shows_actual_demand_tiers_and_linked_reasons(server: str, browser) -> None:
    visit = Visit(browser, f"{server}/plans/{FIRST}")
    try:
        page = visit.page
        cells = page.locator("#cells-table tbody tr")
        assert cells.count() == 6 * 4  # every region × resource of the window
        actual = page.locator("#cells-table tbody tr td:nth-child(7)").all_inner_texts()
        assert all(a.strip() for a in actual)  # the next hour's run saw what happened in the first window
        warm = page.locator("#lines-table tbody tr").filter(has_text="on_demand").first.locator("td:nth-child(6)").inner_text()
        assert int(warm) >= 1
        link = page.locator("#lines-table tbody tr td:first-child a").last  # a line of the last region
        target = link.get_attribute("href").split("#")[1]
        assert page.locator(f"#{target}").count() == 0  # the reasons shown are the first region's
        with page.expect_navigation():
            link.click()
        assert page.locator(f"#{target}").count() == 1  # the line's reason is on the page it links to
        page.fill("input[data-filter='reasons-table']", "spot")
        shown = page.locator("#reasons-table tbody tr:not([hidden])").all_inner_texts()
        assert shown and all("spot" in row.lower() for row in shown)
        page.fill("#reasons input[name='q'], form[role='search'] input[name='q']", "churn")
        with page.expect_navigation():
            page.locator("form[role='search'] button").click()
        assert page.locator("#reasons-table tbody tr").count() > 6 * 4  # a search spans every window and region
        assert "churn" in page.locator("#reasons-table tbody tr").first.inner_text()
    finally:
        visit.close()


def test_compare_flow_defaults_to_previous_vs_latest_and_picks_plans(server: str, browser) -> None:
    visit = Visit(browser, f"{server}/compare")
    try:
        page = visit.page
        summary = page.locator("#compare-summary").inner_text()
        assert f"{FIRST} (A" in summary and f"{SECOND} (B" in summary  # nothing applied: the plan before LATEST vs LATEST
        assert page.locator("#capacity-table tbody tr").count() == 6 * 4
        page.select_option("#plan-a", SECOND)
        page.select_option("#plan-b", FIRST)
        with page.expect_navigation():
            page.locator("#compare-form button").click()
        assert f"{SECOND} (A" in page.locator("#compare-summary").inner_text()
        assert page.locator("#reasons-delta-table tbody tr").count() > 0
        assert visit.errors == []
    finally:
        visit.close()


def test_series_search_and_keyboard_sorting(server: str, browser) -> None:
    visit = Visit(browser, f"{server}/forecasts")
    try:
        page = visit.page
        page.fill("#series-search input[name='q']", "→eu-west-1")
        page.select_option("#series-search select[name='kind']", "pair")
        with page.expect_navigation():
            page.locator("#series-search button").click()
        rows = page.locator("#series-table tbody tr td:first-child").all_inner_texts()
        assert len(rows) == 5 and all(r.startswith("pair:") and "→eu-west-1" in r for r in rows)
        header = page.locator("#series-table thead th").nth(4)
        header.locator("button").focus()
        page.keyboard.press("Enter")
        assert header.get_attribute("aria-sort") == "ascending"
        values = [float(v) for v in page.locator("#series-table tbody tr td:nth-child(5)").evaluate_all(
            "tds => tds.map(td => td.dataset.value)")]
        assert values == sorted(values)
        with page.expect_navigation():
            page.locator("#series-table tbody a").first.click()
        visit.wait_charts()
        assert visit.charts()["chart-series"]["rendered"] == "true"
        assert visit.errors == []
    finally:
        visit.close()


def test_operations_shows_irc_outcomes_quarantine_and_backtest(ui_root: Path) -> None:
    from fastapi.testclient import TestClient

    from pipeline.ui.webapp import create_app

    html = TestClient(create_app(str(ui_root / "lake"))).get("/operations?start=2026-01-12T00:00&end=2026-01-30T00:00").text
    assert "predictive" in html and "oracle" in html
    assert "duplicate request_id" in html  # the samples' planted bad rows, with their reason
    assert "eu-west-1" in html.split('id="irc-table"')[1].split("</table>")[0]


HOSTILE = '<script>alert("x")</script>'


def test_bad_input_gets_a_clear_page_and_the_lake_is_never_written(ui_root: Path) -> None:
    from fastapi.testclient import TestClient

    from pipeline.ui.webapp import create_app

    lake_dir = ui_root / "lake"
    before = {p: p.stat().st_mtime_ns for p in lake_dir.rglob("*")}
    client = TestClient(create_app(str(lake_dir)))
    assert client.get("/plans/plan-29990101T0000Z").status_code == 404
    bad = client.get(f"/plans/{HOSTILE}")
    assert bad.status_code == 404 and "<script>alert" not in bad.text
    assert client.get(f"/plans/{FIRST}?window=6").status_code == 400
    assert "start" in client.get("/?start=yesterday").text
    assert client.get("/forecasts/series?id=region:nowhere-1:vcpu").status_code == 404
    assert client.get(f"/forecasts?q={HOSTILE}").text.count("<script>alert") == 0
    assert client.get(f"/requests?region={HOSTILE}&start=2026-01-29T00:00&end=2026-01-29T01:00").status_code == 400
    for path in PAGES:
        assert client.get(path).status_code == 200, path
    assert {p: p.stat().st_mtime_ns for p in lake_dir.rglob("*")} == before


def test_a_corrupt_plan_is_reported_not_shown(ui_root: Path, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from pipeline.ui.webapp import create_app

    shutil.copytree(ui_root / "lake", tmp_path / "lake")
    target = tmp_path / "lake" / "plans" / f"plan_id={FIRST}" / "attempt=1" / "plan.parquet"
    target.write_bytes(target.read_bytes()[:-10] + b"0123456789")
    client = TestClient(create_app(str(tmp_path / "lake")))
    response = client.get(f"/plans/{FIRST}")
    assert response.status_code == 409 and "does not match its manifest" in response.text
    assert client.get("/").status_code == 200  # the list still works
    manifest = tmp_path / "lake" / "plans" / f"plan_id={SECOND}" / "attempt=1" / "manifest.json"
    manifest.write_text("{not json")
    listing = client.get("/").text
    row = next(r for r in listing.split("<tr") if f"/plans/{SECOND}" in r)
    assert "unreadable" in row and "not valid JSON" in row  # listed with what is wrong, not dropped
    assert client.get(f"/plans/{SECOND}").status_code == 409


def test_the_cli_serves_the_app(ui_root: Path) -> None:
    import subprocess
    import sys
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "ui", "--port", str(port), "--lake", str(ui_root / "lake")],
                            env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                    body = response.read().decode()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode() if proc.stderr else ""
                time.sleep(0.3)
        assert SECOND in body and "LATEST" in body
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.mark.slow
def test_the_airflow_plugin_page_loads_inside_a_real_api_server(ui_root: Path, browser, tmp_path: Path) -> None:
    """`airflow api-server` on loopback loads plugins/peerscale_ui.py: the app answers under /peerscale behind
    Airflow's authentication, and the UI's Browse entry shows it in an iframe that renders its charts."""
    import json
    import subprocess
    import sys
    import urllib.error
    import urllib.request

    from tests.celery_cluster import free_port, wait_until

    repo = Path(__file__).resolve().parents[1]
    airflow = Path(sys.executable).with_name("airflow")
    home = tmp_path / "airflow-home"
    (home / "dags").mkdir(parents=True)
    (tmp_path / "passwords.json").write_text(json.dumps({"analyst": "an4lyst-pass"}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PEERSCALE_"))}
    env.update({"AIRFLOW_HOME": str(home), "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
                "AIRFLOW__CORE__PLUGINS_FOLDER": str(repo / "plugins"), "AIRFLOW__API__WORKERS": "1",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "analyst:viewer",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(tmp_path / "passwords.json"),
                "PEERSCALE_LAKE": str(ui_root / "lake"), "PYTHONPATH": str(repo)})
    migrate = subprocess.run([str(airflow), "db", "migrate"], env=env, capture_output=True, text=True, timeout=300)
    assert migrate.returncode == 0, migrate.stdout[-3000:] + migrate.stderr[-3000:]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = (tmp_path / "api-server.log").open("w")
    proc = subprocess.Popen([str(airflow), "api-server", "--host", "127.0.0.1", "--port", str(port)], env=env, stdout=log,
                            stderr=subprocess.STDOUT)

    def status(path: str, token: str | None = None) -> int:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            with urllib.request.urlopen(urllib.request.Request(base + path, headers=headers), timeout=10) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code

    def alive() -> None:
        assert proc.poll() is None, (tmp_path / "api-server.log").read_text()[-4000:]

    try:
        wait_until("the api-server to answer", lambda: status("/api/v2/monitor/health") == 200, 120, alive=alive)
        assert status("/peerscale/") == 401  # Airflow's authentication guards the app
        login = urllib.request.Request(base + "/auth/token", data=json.dumps({"username": "analyst", "password": "an4lyst-pass"}).encode(),
                                       headers={"content-type": "application/json"})
        with urllib.request.urlopen(login, timeout=10) as response:
            token = json.load(response)["access_token"]
        assert status(f"/peerscale/plans/{SECOND}", token) == 200
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        context.add_cookies([{"name": "_token", "value": token, "url": base}])
        page = context.new_page()
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(f"{base}/plugin/peerscale", wait_until="load")
        page.wait_for_function("() => Array.from(document.querySelectorAll('iframe')).some(f => f.src.includes('/peerscale/'))",
                               timeout=30_000)
        frame = None
        for _ in range(150):  # page.frames is only updated while Playwright runs: wait with its clock, not time.sleep
            frame = next((f for f in page.frames if f is not page.main_frame and f.url == f"{base}/peerscale/"), None)
            if frame is not None:
                break
            page.wait_for_timeout(200)
        assert frame is not None, [f.url for f in page.frames]
        frame.wait_for_function("() => (document.querySelector('#chart-history') || {dataset: {}}).dataset.rendered", timeout=30_000)
        assert frame.evaluate("document.querySelector('#chart-history').dataset.rendered") == "true"
        assert SECOND in frame.inner_text("#plans-table")
        with frame.expect_navigation():
            frame.click(f"#plans-table a[href$='/peerscale/plans/{SECOND}']")
        assert frame.url.endswith(f"/peerscale/plans/{SECOND}")  # links keep the mount prefix
        assert errors == []
        context.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def _section(html: str, table_id: str) -> str:
    return html.split(f'id="{table_id}"', 1)[1].split("</table>", 1)[0]


@pytest.mark.slow
def test_the_app_reads_a_lake_on_s3(ui_root: Path, s3_bucket: str) -> None:
    """The same pages over the same lake uploaded to S3 (moto server on loopback) show the same numbers."""
    from concurrent.futures import ThreadPoolExecutor

    import boto3
    from fastapi.testclient import TestClient

    from pipeline.ui.webapp import create_app
    from tests.moto_server import REGION

    lake_dir = ui_root / "lake"
    recent = ("date=2026-01-28", "date=2026-01-29")
    files = [p for p in lake_dir.rglob("*") if p.is_file() and not p.name.startswith(".")
             and (p.relative_to(lake_dir).parts[0] != "raw" or any(part in recent for part in p.parts))]
    s3 = boto3.client("s3", region_name=REGION)
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda p: s3.put_object(Bucket=s3_bucket, Key=f"lake/{p.relative_to(lake_dir).as_posix()}", Body=p.read_bytes()),
                      files))
    local, remote = TestClient(create_app(str(lake_dir))), TestClient(create_app(f"s3://{s3_bucket}/lake"))
    checks = {f"/plans/{FIRST}": "cells-table", "/": "plans-table", "/compare": "capacity-table",
              "/forecasts/series?id=region:us-east-1:vcpu": "scores-table",
              "/operations?start=2026-01-28T00:00&end=2026-01-30T00:00": "irc-table",
              "/requests?region=eu-west-1&start=2026-01-29T00:00&end=2026-01-29T01:00": "requests-table"}
    for path, table in checks.items():
        a, b = local.get(path), remote.get(path)
        assert a.status_code == b.status_code == 200, (path, b.text[:2000])
        assert _section(a.text, table) == _section(b.text, table), path
        assert _section(b.text, table).count("<tr") > 1, path
