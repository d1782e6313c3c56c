"""Sub-hour plans in the IaC: every window up to the next hourly run is provisioned.

A plan of 15-minute windows provisions its first four (the *span*): each line's group starts at the
first window's size and a scheduled action per later window sets the size that window plans; the
capacity reservation holds the span's minimum; everything ends with the span. Hourly plans keep
their single window and get no scheduled action (their output is pinned byte for byte by
tests/test_iac.py and the golden files of tests/test_iac_cloudformation.py).
"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from pipeline.iac import UnsafePlanValue, render_cloudformation, render_terraform
from pipeline.iac.check import check_rendered
from pipeline.iac.cloudformation import DEPLOYMENT_FILE, template_file
from pipeline.iac.model import WARM_POOL_FRACTION, build_model, logical_id
from pipeline.iac.safety import check_schedule
from pipeline.iac.tfapply import find_terraform, terraform_checks
from tests.test_iac import PLAN_ID, W0, _line_rows, sample_rows
from tests.test_iac_check import checkov  # noqa: F401  (the fixture: fails when checkov is not installed)
from tests.test_iac_terraform_apply import _plugin_dir, offline_terraform  # noqa: F401  (the fixture)

STEP = pd.Timedelta(minutes=15)
WINDOWS = [W0 + k * STEP for k in range(8)]  # two hours of 15-minute windows: only the first hour is provisioned
SPAN_END = "2025-03-01T01:00:00Z"
# Instances per 15-minute window and line (None: the line has no rows in that window).
COUNTS: dict[tuple[str, str, str], list[int | None]] = {
    ("us-east-1", "m5.large", "on_demand"): [3, 5, 5, 2, 9, 9, 9, 9],  # up, flat, down; the second hour never renders
    ("us-east-1", "c5.xlarge", "spot"): [4, 4, 4, 4, 1, 1, 1, 1],  # flat: no schedule
    ("eu-west-1", "r5.large", "on_demand"): [None, 0, 2, 2, 2, 2, 2, 2],  # only from the third window on
    ("eu-west-1", "m5.large", "spot"): [2, 0, 0, 1, None, None, None, None],  # to zero and back
    ("ap-south-1", "t3.micro", "on_demand"): [0, 0, 0, 0, 3, 3, 3, 3],  # nothing in the span: skipped
}


def _line_id(region: str, start: pd.Timestamp, instance_type: str, option: str) -> str:
    """The planner's line id (pipeline.plan.planner): minutes included, so windows of one hour differ."""
    return f"{region}/{start:%Y%m%dT%H%MZ}/{instance_type}/{option}"


def window_rows(counts: dict[tuple[str, str, str], list[int | None]] = COUNTS) -> list[dict[str, Any]]:
    """A 15-minute plan: one line per (window, key) with rows, as tests/test_iac.py builds them."""
    rows: list[dict[str, Any]] = []
    for (region, instance_type, option), per_window in counts.items():
        for start, count in zip(WINDOWS, per_window):
            if count is not None:
                rows += _line_rows(start, start + STEP, region, instance_type, option, count,
                                   line_id=_line_id(region, start, instance_type, option))
    return rows


@pytest.fixture
def manifest() -> dict[str, Any]:
    return {"plan_id": PLAN_ID, "valid_from": W0.isoformat(), "valid_to": (WINDOWS[-1] + STEP).isoformat(), "tau": 0.8}


def _at(k: int) -> str:
    return f"{WINDOWS[k]:%Y-%m-%dT%H:%M:%SZ}"


def _warm(counts: list[int]) -> int:
    """The warm pool of a plan without warm_count: the span's largest ⌈count × fraction⌉."""
    return max(math.ceil(c * WARM_POOL_FRACTION) for c in counts)


def _tfvars(out: Path, region: str) -> dict[str, Any]:
    return json.loads((out / "regions" / region / "plan.auto.tfvars.json").read_text())


def _cfn(out: Path) -> dict[str, Any]:
    return {p.name: json.loads(p.read_text()) for p in sorted(out.iterdir())}


def _actions(template: dict[str, Any], key: str) -> dict[str, dict[str, Any]]:
    """The line's scheduled actions in a template, by logical id (window end excluded)."""
    prefix = logical_id(key) + "Window"
    return {name: r["Properties"] for name, r in template["Resources"].items()
            if r["Type"] == "AWS::AutoScaling::ScheduledAction" and name.startswith(prefix) and not name.endswith("WindowEnd")}


def test_the_model_covers_the_span(manifest: dict) -> None:
    model = build_model(pd.DataFrame(window_rows()), manifest)
    assert (model.valid_from, model.valid_to) == ("2025-03-01T00:00:00Z", SPAN_END)
    lines = {line.key: line for line in model.lines}
    assert sorted(lines) == ["eu-west-1/m5.large/spot", "eu-west-1/r5.large/on_demand",
                             "us-east-1/c5.xlarge/spot", "us-east-1/m5.large/on_demand"]
    od = lines["us-east-1/m5.large/on_demand"]
    assert (od.count, od.instances, od.valid_to) == (3, 3, SPAN_END)
    assert od.schedule == ((_at(1), 5), (_at(3), 2))  # window 2 repeats window 1: no action
    assert od.reserved_zones == (("us-east-1a", 2),) and od.reserved_count == 2
    assert od.warm_pool == _warm([3, 5, 5, 2]) and od.max_size == 5 + od.warm_pool
    assert lines["us-east-1/c5.xlarge/spot"].schedule == ()
    assert lines["eu-west-1/m5.large/spot"].schedule == ((_at(1), 0), (_at(3), 1))
    assert model.skipped_line_ids == tuple(sorted(_line_id("ap-south-1", WINDOWS[k], "t3.micro", "on_demand") for k in range(4)))
    assert model.region_names == ("ap-south-1", "eu-west-1", "us-east-1")  # named by the plan: a provider, no lines


def test_a_line_only_in_a_later_window_starts_at_zero(manifest: dict, tmp_path: Path) -> None:
    model = build_model(pd.DataFrame(window_rows()), manifest)
    late = next(line for line in model.lines if line.key == "eu-west-1/r5.large/on_demand")
    assert (late.count, late.instances, late.zones) == (0, 0, ())
    assert late.line_id == _line_id("eu-west-1", WINDOWS[2], "r5.large", "on_demand")  # its first window with instances
    assert late.schedule == ((_at(2), 2),) and late.availability_zones == ("eu-west-1a",)
    assert late.reserved_count == 0 and late.max_size == 2 + late.warm_pool
    assert _line_id("eu-west-1", WINDOWS[1], "r5.large", "on_demand") not in model.skipped_line_ids  # its group exists

    render_terraform(pd.DataFrame(window_rows()), manifest, tmp_path / "tf")
    line = _tfvars(tmp_path / "tf", "eu-west-1")["lines"]["r5.large/on_demand"]
    assert (line["count"], line["planned_count"], line["zone_counts"], line["availability_zones"]) == (0, 0, {}, ["eu-west-1a"])
    assert line["schedule"] == [{"start_time": _at(2), "desired_capacity": 2}]
    assert line["reserved_zone_counts"] == {"eu-west-1a": 0}  # the module reserves nothing at 0

    files = _render_cfn(manifest, tmp_path / "cfn")
    group = files[template_file("eu-west-1")]["Resources"][logical_id(late.key) + "Group"]["Properties"]
    assert (group["DesiredCapacity"], group["MinSize"], group["MaxSize"]) == ("0", "0", str(late.max_size))
    assert group["AvailabilityZones"] == [{"Ref": "AvailabilityZone"}]
    assert files[template_file("eu-west-1")]["Parameters"]["AvailabilityZone"]["Default"] == "eu-west-1a"
    assert [a["DesiredCapacity"] for a in _actions(files[template_file("eu-west-1")], late.key).values()] == [2]
    assert late.key not in {r["key"] for r in files[DEPLOYMENT_FILE]["capacity_reservations"]}


def test_terraform_schedules_each_later_window(manifest: dict, tmp_path: Path) -> None:
    render_terraform(pd.DataFrame(window_rows()), manifest, tmp_path / "tf")
    us = _tfvars(tmp_path / "tf", "us-east-1")
    assert us["window"] == {"valid_from": "2025-03-01T00:00:00Z", "valid_to": SPAN_END}
    od = us["lines"]["m5.large/on_demand"]
    assert (od["count"], od["max_size"], od["zone_counts"]) == (3, 5 + _warm([3, 5, 5, 2]), {"us-east-1a": 3})
    assert od["schedule"] == [{"start_time": _at(1), "desired_capacity": 5}, {"start_time": _at(3), "desired_capacity": 2}]
    assert od["reserved_zone_counts"] == {"us-east-1a": 2}  # the span's minimum, not the first window's 3
    assert "schedule" not in us["lines"]["c5.xlarge/spot"] and "reserved_zone_counts" not in us["lines"]["c5.xlarge/spot"]
    eu = _tfvars(tmp_path / "tf", "eu-west-1")
    assert eu["lines"]["m5.large/spot"]["schedule"] == [
        {"start_time": _at(1), "desired_capacity": 0}, {"start_time": _at(3), "desired_capacity": 1}]
    summary = json.loads((tmp_path / "tf" / "plan.json").read_text())
    assert summary["window"]["valid_to"] == SPAN_END and len(summary["skipped_line_ids"]) == 4
    text = "".join(p.read_text() for p in sorted((tmp_path / "tf").rglob("*.json")))
    assert "T01:15:00Z" not in text and ": 9" not in text  # nothing of the second hour


def _render_cfn(manifest: dict, out: Path, rows: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    render_cloudformation(pd.DataFrame(window_rows() if rows is None else rows), manifest, out)
    return _cfn(out)


def test_cloudformation_schedules_each_later_window(manifest: dict, tmp_path: Path) -> None:
    files = _render_cfn(manifest, tmp_path / "cfn")
    template = files[template_file("us-east-1")]
    key = "us-east-1/m5.large/on_demand"
    max_size = 5 + _warm([3, 5, 5, 2])
    actions = _actions(template, key)
    assert sorted(actions) == [logical_id(key) + "Window20250301001500", logical_id(key) + "Window20250301004500"]
    assert [(a["StartTime"], a["DesiredCapacity"], a["MinSize"], a["MaxSize"]) for _, a in sorted(actions.items())] == [
        (_at(1), 5, 5, max_size), (_at(3), 2, 2, max_size)]
    assert all(a["AutoScalingGroupName"] == {"Ref": logical_id(key) + "Group"} for a in actions.values())
    group = template["Resources"][logical_id(key) + "Group"]["Properties"]
    assert (group["DesiredCapacity"], group["MaxSize"]) == ("3", str(max_size))
    pool = template["Resources"][logical_id(key) + "WarmPool"]["Properties"]
    assert pool["MinSize"] == _warm([3, 5, 5, 2])  # the span's largest: no scheduled action sizes a warm pool
    assert template["Resources"][logical_id(key) + "WindowEnd"]["Properties"]["StartTime"] == SPAN_END
    assert _actions(template, "us-east-1/c5.xlarge/spot") == {}
    deployment = files[DEPLOYMENT_FILE]
    assert deployment["window"] == {"valid_from": "2025-03-01T00:00:00Z", "valid_to": SPAN_END}
    reservations = {r["key"]: r for r in deployment["capacity_reservations"]}
    assert list(reservations) == [key]  # r5.large's minimum is 0; t3.micro has nothing in the span
    assert (reservations[key]["instance_count"], reservations[key]["end_date"]) == (2, SPAN_END)


def test_zones_follow_the_span(manifest: dict) -> None:
    """With several zones the reservation holds each zone's minimum and the group spans every zone used."""
    model = build_model(pd.DataFrame(window_rows()), manifest, zones_per_region=2)
    od = next(line for line in model.lines if line.key == "us-east-1/m5.large/on_demand")
    assert od.zones == (("us-east-1a", 2), ("us-east-1b", 1))
    assert od.reserved_zones == (("us-east-1a", 1), ("us-east-1b", 1))  # the 2-instance window: 1 + 1
    assert od.max_size == max(n + max(od.warm_pool, math.ceil(n / 2)) for n in (3, 5, 5, 2))
    spot = next(line for line in model.lines if line.key == "eu-west-1/m5.large/spot")
    assert spot.availability_zones == ("eu-west-1a", "eu-west-1b") and spot.reserved_count == 0


def test_hourly_plans_get_no_schedule(tmp_path: Path) -> None:
    manifest = {"plan_id": PLAN_ID, "tau": 0.8}
    render_terraform(pd.DataFrame(sample_rows()), manifest, tmp_path / "tf")
    for region in ("us-east-1", "eu-west-1"):
        for line in _tfvars(tmp_path / "tf", region)["lines"].values():
            assert "schedule" not in line and "reserved_zone_counts" not in line
    files = _render_cfn(manifest, tmp_path / "cfn", rows=sample_rows())
    for region in ("us-east-1", "eu-west-1"):
        kinds = [name for name, r in files[template_file(region)]["Resources"].items() if r["Type"] == "AWS::AutoScaling::ScheduledAction"]
        assert kinds and all(name.endswith("WindowEnd") for name in kinds)


def test_overlapping_windows_are_refused(manifest: dict, tmp_path: Path) -> None:
    rows = window_rows() + _line_rows(W0 + pd.Timedelta(minutes=5), W0 + pd.Timedelta(minutes=20), "us-east-1", "m5.large",
                                      "spot", 1, line_id="us-east-1/odd/m5.large/spot")
    with pytest.raises(ValueError, match="overlaps"):
        render_terraform(pd.DataFrame(rows), manifest, tmp_path / "tf")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("steps", "hint"), [
    ([("2025-03-01T00:15:00+00:00", 1)], "RFC 3339 UTC"),
    ([("2025-03-01T00:00:00Z", 1)], "after"),  # at the span's start: the group starts there anyway
    ([("2025-03-01T01:00:00Z", 1)], "before the span's end"),
    ([("2025-03-01T00:30:00Z", 1), ("2025-03-01T00:15:00Z", 2)], "after"),
    ([("2025-03-01T00:15:00Z", -1)], "negative"),
    ([("2025-03-01T00:15:00Z", 1.0)], "integer"),
])
def test_schedules_are_checked(steps: list[tuple[Any, Any]], hint: str) -> None:
    start, end = W0.to_pydatetime(), (W0 + pd.Timedelta(hours=1)).to_pydatetime()
    with pytest.raises(UnsafePlanValue, match=hint):
        check_schedule(steps, start=start, end=end)
    assert check_schedule([("2025-03-01T00:15:00Z", 0), ("2025-03-01T00:45:00Z", 3)], start=start, end=end) == (
        ("2025-03-01T00:15:00Z", 0), ("2025-03-01T00:45:00Z", 3))


@pytest.fixture
def rendered(manifest: dict, tmp_path: Path) -> Path:
    """The sub-hour plan rendered both ways, without its all-zero region: a region with no line gets a
    placeholder stack whose unused parameters cfn-lint warns about, hourly plans alike (not a span matter)."""
    root = tmp_path / "iac" / PLAN_ID
    rows = pd.DataFrame(window_rows({key: counts for key, counts in COUNTS.items() if key[0] != "ap-south-1"}))
    render_terraform(rows, manifest, root / "terraform")
    render_cloudformation(rows, manifest, root / "cloudformation")
    return root


# Like tests/test_iac_terraform_apply.py: the real binary, offline, skipped where it or the provider is missing.
needs_terraform = pytest.mark.skipif(find_terraform() is None or _plugin_dir() is None,
                                     reason="no terraform binary on PATH or no local hashicorp/aws provider directory")


def _console(root: Path, expression: str) -> Any:
    """``expression`` evaluated by ``terraform console`` in a rendered root. Unlike ``validate``
    (which has no values), the console loads the root's tfvars through the variables' types and
    validations, so a plan's values that the module would refuse fail here."""
    binary = str(find_terraform())
    subprocess.run([binary, "init", "-input=false", "-no-color", f"-plugin-dir={_plugin_dir()}",
                    f"-backend-config=path={root.parent / (root.name + '.tfstate')}"],
                   cwd=root, check=True, capture_output=True, timeout=600)
    done = subprocess.run([binary, "console", "-no-color"], input=f"jsonencode({expression})\n", cwd=root,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(json.loads(done.stdout))


@pytest.mark.terraform
@needs_terraform
@pytest.mark.usefixtures("offline_terraform")
@pytest.mark.long  # terraform / checkov on the sub-hour render (~30 s each): make test-long
def test_sub_hour_render_passes_terraform_validate(rendered: Path) -> None:
    tf = rendered / "terraform"
    assert terraform_checks(tf) == {"fmt": [], "validate": {}}
    steps = _console(tf / "regions" / "us-east-1", "local.window_steps")
    assert steps == {f"m5.large/on_demand/{_at(k)}": {"line": "m5.large/on_demand", "start_time": _at(k), "desired_capacity": n}
                     for k, n in ((1, 5), (3, 2))}
    assert _console(tf / "regions" / "us-east-1", "local.reservations") == {
        "m5.large/on_demand/us-east-1a": {"line": "m5.large/on_demand", "zone": "us-east-1a", "count": 2}}
    assert _console(tf / "regions" / "eu-west-1", "local.reservations") == {}  # r5.large's minimum is 0
    assert sorted(_console(tf / "regions" / "eu-west-1", "local.window_steps")) == [
        f"m5.large/spot/{_at(1)}", f"m5.large/spot/{_at(3)}", f"r5.large/on_demand/{_at(2)}"]


@pytest.mark.terraform
@needs_terraform
@pytest.mark.usefixtures("offline_terraform")
@pytest.mark.long  # terraform / checkov on the sub-hour render (~30 s each): make test-long
def test_the_module_refuses_bad_schedules_and_takes_hourly_plans(rendered: Path, tmp_path: Path) -> None:
    root = rendered / "terraform" / "regions" / "eu-west-1"
    tfvars = root / "plan.auto.tfvars.json"
    values = json.loads(tfvars.read_text())
    values["lines"]["m5.large/spot"]["schedule"].reverse()  # out of order
    tfvars.write_text(json.dumps(values))
    with pytest.raises(AssertionError, match="Invalid value for variable"):
        _console(root, "local.window_steps")
    render_terraform(pd.DataFrame(sample_rows()), {"plan_id": PLAN_ID}, tmp_path / "hourly")
    hourly = tmp_path / "hourly" / "regions" / "us-east-1"
    assert _console(hourly, "local.window_steps") == {}
    assert _console(hourly, "local.reservations") == {
        "m5.large/on_demand/us-east-1a": {"line": "m5.large/on_demand", "zone": "us-east-1a", "count": 3}}


@pytest.mark.long  # terraform / checkov on the sub-hour render (~30 s each): make test-long
def test_sub_hour_render_passes_the_checks(checkov: str, rendered: Path) -> None:
    """Parsing, cfn-lint, checkov (and terraform fmt/validate where installed) on the sub-hour render."""
    report = check_rendered(rendered)
    assert report.parse_errors == [] and report.credential_errors == []
    assert report.cfn_lint_ran and report.cfn_lint == []
    if report.terraform:
        assert report.terraform == {"fmt": [], "validate": {}}
    runs = {run.framework: run for run in report.checkov}
    assert set(runs) == {"terraform", "cloudformation"}
    for run in runs.values():
        assert run.parsing_errors == 0 and run.errors == [] and run.failed == 0, run.failed_checks
    assert report.ok
