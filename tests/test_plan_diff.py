"""`peerscale plan diff A B` and :mod:`pipeline.publish.diff`: first-window changes between two plans."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from pipeline.cli.app import app
from pipeline.common import storage
from pipeline.common.config import Settings
from pipeline.iac.apply import applied_pointer
from pipeline.publish.diff import diff_plans, format_diff
from tests.test_iac_apply import PLAN_A, PLAN_B, PLAN_D, _publish, _rows

runner = CliRunner()


def _frame(plan_id: str, lines: list[tuple[str, str, str, int]]) -> pd.DataFrame:
    return pd.DataFrame(_rows(plan_id, lines))


def test_diff_counts_cost_capacity_and_reasons() -> None:
    result = diff_plans(_frame("a", PLAN_A), _frame("b", PLAN_B), "a", "b")
    changed = {(line["region"], line["instance_type"], line["purchase_option"]): line
               for line in result["lines"] if line["change"] != "same"}
    assert set(changed) == {("us-east-1", "c5.xlarge", "spot"), ("us-east-1", "c5.large", "on_demand")}
    grow = changed[("us-east-1", "c5.xlarge", "spot")]
    assert (grow["change"], grow["count_old"], grow["count_new"], grow["count_delta"]) == ("changed", 4, 6, 2)
    # _line_rows: hourly_cost 0.05 x count per resource row, 4 resource rows; vcpu quantity = count.
    assert grow["cost_delta"] == pytest.approx(4 * 0.05 * 2)
    assert grow["capacity"]["vcpu"] == {"old": 4.0, "new": 6.0, "delta": 2.0}
    assert grow["reasons_new"] == ["tau-quantile demand"]
    new_line = changed[("us-east-1", "c5.large", "on_demand")]
    assert new_line["change"] == "added" and new_line["count_old"] == 0 and new_line["count_new"] == 1
    totals = result["totals"]
    assert totals["instances_added"] == 3 and totals["instances_removed"] == 0 and totals["churn"] == 3
    assert totals["cost_delta"] == pytest.approx(4 * 0.05 * 3)
    assert totals["regions_removed"] == [] and totals["lines_changed"] == 2
    regions = {r["region"]: r for r in result["regions"]}
    assert regions["eu-west-1"]["change"] == "same" and regions["us-east-1"]["change"] == "changed"
    assert result["old_window"] == result["new_window"]  # the first windows are compared, the second never


def test_region_removal_and_nothing_applied() -> None:
    gone = diff_plans(_frame("b", PLAN_B), _frame("d", PLAN_D), "b", "d")
    assert gone["totals"]["regions_removed"] == ["eu-west-1"]
    assert gone["totals"]["instances_removed"] == 2 + 3
    assert {r["region"]: r["change"] for r in gone["regions"]} == {"eu-west-1": "removed", "us-east-1": "same"}
    text = format_diff(gone)
    assert "regions removed: eu-west-1" in text and "eu-west-1 r5.large on_demand: removed 2 → 0" in text
    first = diff_plans(None, _frame("a", PLAN_A), None, "a")
    assert first["totals"]["instances_added"] == 2 + 3 + 3 + 4 and first["totals"]["instances_old"] == 0
    assert all(line["change"] == "added" for line in first["lines"])
    assert "(nothing applied)" in format_diff(first)
    same = diff_plans(_frame("a", PLAN_A), _frame("a2", PLAN_A))
    assert same["totals"]["churn"] == 0 and "no line changes" in format_diff(same)


def test_cli_defaults_to_latest_against_applied(tmp_path: Path) -> None:
    settings = Settings(source_root=str(tmp_path / "src"), lake_root=str(tmp_path / "lake"), build_root=str(tmp_path / "build"))
    _publish(settings, "plan-a", PLAN_A)
    _publish(settings, "plan-b", PLAN_B)  # LATEST
    where = ["--lake", settings.lake_root]
    nothing = runner.invoke(app, ["plan", "diff", "--json", *where])
    assert nothing.exit_code == 0, nothing.output
    assert json.loads(nothing.output)["old_plan_id"] is None
    storage.write_text_atomic(applied_pointer(settings.lake_root), "plan-a\n")
    result = runner.invoke(app, ["plan", "diff", "--json", *where])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert (data["old_plan_id"], data["new_plan_id"], data["totals"]["instances_added"]) == ("plan-a", "plan-b", 3)
    table = runner.invoke(app, ["plan", "diff", "plan-b", "plan-a", *where], env={"COLUMNS": "200"})
    assert table.exit_code == 0, table.output
    assert "plan diff plan-b → plan-a" in table.output and "c5.xlarge" in table.output and "removed" in table.output
    missing = runner.invoke(app, ["plan", "diff", "no-such-plan", "plan-a", *where])
    assert missing.exit_code != 0 and "no-such-plan" in missing.output
