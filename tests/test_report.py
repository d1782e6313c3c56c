"""The analyst's HTML report, opened in a real headless browser."""

from __future__ import annotations

from pathlib import Path

from pipeline.common import lake, storage
from pipeline.plan import latest_plan_id, read_plan
from tests.browser import open_page
from tests.conftest import settings_for


def test_plan_report_renders_in_chromium(published_root: Path, tmp_path: Path) -> None:
    settings = settings_for(published_root)
    plan_id = latest_plan_id(settings)
    _, manifest = read_plan(settings, plan_id)
    report = Path(manifest["artifacts"]["report"])
    check = open_page(report, screenshot=tmp_path / "report.png")

    assert check.console_errors == [] and check.page_errors == []
    assert plan_id in check.title
    rendered = {img["id"]: img for img in check.images}
    for figure in ("fig-vcpu", "fig-bandwidth", "fig-cost"):
        assert rendered[figure]["complete"] and rendered[figure]["width"] > 300 and rendered[figure]["height"] > 150, figure
    assert check.tables["summary"] == 1 + 6 * 4  # header + every region × resource
    assert check.tables["reasons"] > 1
    # the forecast's quantile method per series, with its CV score against seasonal naive
    forecast_manifest = lake.read_json(storage.join(lake.forecast_dir(settings.lake_root, manifest["forecast_run_id"]), "manifest.json"))
    assert check.tables["quantile-methods"] == 1 + len(forecast_manifest["selection"])
    assert (tmp_path / "report.png").stat().st_size > 10_000


HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'


def test_plan_report_escapes_data_and_keeps_its_figures(published_root: Path, tmp_path: Path) -> None:
    """A quarantine reason (source data) holding HTML is shown as text; the figures are still inline PNGs."""
    import shutil

    import pyarrow as pa

    from pipeline.common import lake
    from pipeline.common.intervals import DataInterval
    from pipeline.common.schemas import QUARANTINE
    from pipeline.report.html import write_plan_report

    shutil.copytree(published_root / "lake", tmp_path / "lake")
    settings = settings_for(tmp_path)
    plan_id = latest_plan_id(settings)
    _, manifest = read_plan(settings, plan_id)
    interval = DataInterval.between(manifest["data_interval"]["start"], manifest["data_interval"]["end"])
    row = {"dataset": "peering_requests", "source_file": "x.csv", "line_number": 7, "reason": f"{HOSTILE}: bad", "raw": HOSTILE}
    quarantined = pa.Table.from_pylist([row], schema=QUARANTINE)
    lake.write_hour_partitions(quarantined, lake.quarantine_dir(settings.lake_root, "peering_requests"), None, interval)

    html = Path(write_plan_report(plan_id, interval, settings)).read_text()
    assert "<script>" not in html and "<img src=x" not in html
    assert "<td>&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;</td>" in html
    assert html.count('src="data:image/png;base64,') == 3
    # The change against the applied plan (nothing applied here: every line is an addition).
    assert 'id="plan-diff"' in html and "From nothing applied" in html and "<td>added</td>" in html


def test_backtest_report_escapes_policy_names(tmp_path: Path) -> None:
    from dataclasses import dataclass, field
    from datetime import UTC, datetime

    import pandas as pd

    from pipeline.report.html import write_backtest_report

    start, end = datetime(2026, 1, 29, tzinfo=UTC), datetime(2026, 1, 29, 2, tzinfo=UTC)
    hours = pd.date_range(start, periods=2, freq="h")
    costs = {"preallocation": 1.0, "on_demand": 0.5, "cold_start_penalty": 0.1, "shortfall_penalty": 0.0, "total": 1.6}
    policy = {"requests": 10, "hit_rate": 0.9, "on_demand_share": 0.1, "failures": 0, "latency_p50_s": 1.0, "latency_p95_s": 2.0,
              "latency_p99_s": 3.0, "idle_vcpu_hours": 4.0, "cost": costs, "cost_vs_oracle": 1.1}

    @dataclass
    class Replay:
        hourly: list[dict] = field(default_factory=lambda: [{"hour": str(h), "requests": 5, "hit_rate": 0.9} for h in hours])
        capacity: list[dict] = field(default_factory=lambda: [
            {"hour": str(h), "region": "eu-west-1", "resource_type": "vcpu", "quantity": 8.0} for h in hours])

    @dataclass
    class Window:
        start: datetime
        end: datetime

    @dataclass
    class Result:
        config: Window
        results: dict
        demand: pd.DataFrame
        forecasts: pd.DataFrame | None = None

        def summary(self) -> dict:
            return {"from": f"{HOSTILE}2026", "to": end.isoformat(), "hours": 2, "policies": {HOSTILE: policy}}

    result = Result(Window(start, end), {HOSTILE: Replay()}, pd.DataFrame({"hour": hours, "region": "eu-west-1", "vcpu": [4.0, 6.0]}))
    html = Path(write_backtest_report(result, str(tmp_path / "backtest.html"))).read_text()
    assert "<script>" not in html and "<img src=x" not in html
    assert "<td>&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;</td>" in html
    assert html.count('src="data:image/png;base64,') == 3


def test_figures_draw_the_busiest_regions_when_there_are_many() -> None:
    import pandas as pd

    from pipeline.report.html import MAX_FIGURE_REGIONS, figure_regions

    regions = [f"eu-test-{i}" for i in range(30)]
    history = pd.DataFrame({"region": [r for r in regions for _ in range(3)],
                            "vcpu": [float(i * 10 + k) for i in range(30) for k in range(3)]})
    shown = figure_regions(history, regions, "vcpu")
    assert shown == sorted(f"eu-test-{i}" for i in range(30 - MAX_FIGURE_REGIONS, 30))
    assert figure_regions(history, regions[:5], "vcpu") == regions[:5]
