"""The analyst's HTML report, opened in a real headless browser."""

from __future__ import annotations

from pathlib import Path

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
    assert (tmp_path / "report.png").stat().st_size > 10_000
