"""Terraform rendering from a plan: structure, determinism, injection safety, golden files.

Golden files live in tests/golden/terraform/. After an intended template change, regenerate them
with ``PEERSCALE_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_iac.py -k golden`` and
review the diff before committing.
"""

from __future__ import annotations

import os
import re
from datetime import UTC
from pathlib import Path
from typing import Any

import hcl2
import pandas as pd
import pyarrow as pa
import pytest

from pipeline.common.schemas import PLAN
from pipeline.iac import UnsafePlanValue, UnsafeRenderedOutput, render_terraform, safety
from pipeline.iac.terraform import TEMPLATES_ENV_VAR, default_templates_dir, resource_name

GOLDEN_DIR = Path(__file__).parent / "golden" / "terraform"
UPDATE_GOLDEN_ENV = "PEERSCALE_UPDATE_GOLDEN"

PLAN_ID = "plan-20250301T00-7f3a9c"
W0 = pd.Timestamp("2025-03-01T00:00:00Z")
W1 = W0 + pd.Timedelta(hours=1)
W2 = W1 + pd.Timedelta(hours=1)
RESOURCE_TYPES = ("vcpu", "memory_gib", "bandwidth_gbps", "storage_gib")  # storage: 4 GiB per instance


def _line_id(region: str, start: pd.Timestamp, instance_type: str, option: str) -> str:
    return f"{region}/{start:%Y-%m-%dT%H}/{instance_type}/{option}"


def _line_rows(
    start: pd.Timestamp,
    end: pd.Timestamp,
    region: str,
    instance_type: str,
    option: str,
    count: int,
    *,
    plan_id: str = PLAN_ID,
    line_id: str | None = None,
) -> list[dict[str, Any]]:
    """One plan line: the same (region, window, instance, option, count) once per resource type."""
    line_id = line_id or _line_id(region, start, instance_type, option)
    return [
        {
            "plan_id": plan_id,
            "valid_from": start,
            "valid_to": end,
            "region": region,
            "resource_type": resource_type,
            "quantity": float(count * (i + 1)),
            "instance_type": instance_type,
            "purchase_option": option,
            "count": count,
            "hourly_cost": 0.05 * count,
            "demand_quantile": float(count),
            "line_id": line_id,
            "reason": "tau-quantile demand",
        }
        for i, resource_type in enumerate(RESOURCE_TYPES)
    ]


def sample_rows() -> list[dict[str, Any]]:
    """Two regions, on-demand and spot lines, two windows; the second window must not render."""
    rows: list[dict[str, Any]] = []
    rows += _line_rows(W0, W1, "us-east-1", "m5.large", "on_demand", 3)
    rows += _line_rows(W0, W1, "us-east-1", "c5.xlarge", "spot", 4)
    rows += _line_rows(W0, W1, "eu-west-1", "r5.large", "on_demand", 2)
    rows += _line_rows(W0, W1, "eu-west-1", "m5.large", "spot", 5)
    # Second window: different counts and a type that appears nowhere in the first window.
    rows += _line_rows(W1, W2, "us-east-1", "m5.large", "on_demand", 7)
    rows += _line_rows(W1, W2, "eu-west-1", "c5.2xlarge", "spot", 9)
    return rows


FIRST_WINDOW_ON_DEMAND = {
    _line_id("us-east-1", W0, "m5.large", "on_demand"): ("us-east-1", "m5.large", 3),
    _line_id("eu-west-1", W0, "r5.large", "on_demand"): ("eu-west-1", "r5.large", 2),
}
FIRST_WINDOW_SPOT = {
    _line_id("us-east-1", W0, "c5.xlarge", "spot"): ("us-east-1", "c5.xlarge", 4),
    _line_id("eu-west-1", W0, "m5.large", "spot"): ("eu-west-1", "m5.large", 5),
}


@pytest.fixture
def plan_df() -> pd.DataFrame:
    return pd.DataFrame(sample_rows())


@pytest.fixture
def manifest() -> dict[str, Any]:
    return {
        "plan_id": PLAN_ID,
        "valid_from": W0.isoformat(),
        "valid_to": W2.isoformat(),
        "tau": 0.8,
        "status": "OPTIMAL",
    }


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _unquote(value: str) -> str:
    return value[1:-1] if len(value) >= 2 and value[0] == value[-1] == '"' else value


def _norm(obj: Any) -> Any:
    """python-hcl2 output without its version-specific quoting and block markers."""
    if isinstance(obj, dict):
        return {_unquote(k): _norm(v) for k, v in obj.items() if not k.startswith("__")}
    if isinstance(obj, list):
        return [_norm(v) for v in obj]
    if isinstance(obj, str):
        return _unquote(obj)
    return obj


def _parse_dir(out_dir: Path) -> dict[str, dict[str, Any]]:
    """Parse every rendered .tf file; a syntax error fails the test here."""
    parsed = {}
    for path in sorted(out_dir.glob("*.tf")):
        parsed[path.name] = _norm(hcl2.loads(path.read_text(encoding="utf-8")))
    return parsed


def _resources(parsed: dict[str, dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for document in parsed.values():
        for entry in document.get("resource", []):
            for name, body in entry.get(kind, {}).items():
                found[name] = body
    return found


def _asg_tags(body: dict[str, Any]) -> dict[str, str]:
    return {tag["key"]: tag["value"] for tag in body["tag"]}


def _render(plan: Any, manifest: dict[str, Any], out_dir: Path, **kwargs: Any) -> list[Path]:
    return render_terraform(plan, manifest, out_dir, **kwargs)


# --------------------------------------------------------------------------------------------
# structure
# --------------------------------------------------------------------------------------------


def test_renders_expected_files(plan_df: pd.DataFrame, manifest: dict, tmp_path: Path) -> None:
    out_dir = tmp_path / "build" / "iac" / PLAN_ID / "terraform"
    written = _render(plan_df, manifest, out_dir)
    names = [p.name for p in written]
    assert names == sorted(names)
    assert set(names) == {
        "main.tf",
        "network.tf",
        "outputs.tf",
        "providers.tf",
        "terraform.tfvars.json",
        "variables.tf",
        "versions.tf",
    }
    assert sorted(p.name for p in out_dir.iterdir()) == names
    # No staging or retired directories left next to the output.
    assert [p.name for p in out_dir.parent.iterdir()] == ["terraform"]


def test_every_tf_file_parses_and_declares_providers(
    plan_df: pd.DataFrame, manifest: dict, tmp_path: Path
) -> None:
    _render(plan_df, manifest, tmp_path / "tf")
    parsed = _parse_dir(tmp_path / "tf")
    assert set(parsed) == {"main.tf", "network.tf", "outputs.tf", "providers.tf", "variables.tf", "versions.tf"}

    providers = [block["aws"] for block in parsed["providers.tf"]["provider"]]
    assert sorted(p["alias"] for p in providers) == ["eu_west_1", "us_east_1"]
    for provider in providers:
        assert provider["alias"] == provider["region"].replace("-", "_")
        tags = provider["default_tags"][0]["tags"]
        assert tags["plan_id"] == PLAN_ID
        assert tags["peerscale"] == "true"
        assert not {"access_key", "secret_key", "token", "profile"} & set(provider)

    aws = parsed["versions.tf"]["terraform"][0]["required_providers"][0]["aws"]
    assert aws["source"] == "hashicorp/aws"


def test_capacity_reservations_for_on_demand_lines(
    plan_df: pd.DataFrame, manifest: dict, tmp_path: Path
) -> None:
    _render(plan_df, manifest, tmp_path / "tf")
    reservations = _resources(_parse_dir(tmp_path / "tf"), "aws_ec2_capacity_reservation")
    by_line = {body["tags"]["line_id"]: (name, body) for name, body in reservations.items()}
    assert set(by_line) == set(FIRST_WINDOW_ON_DEMAND)
    for line_id, (region, instance_type, count) in FIRST_WINDOW_ON_DEMAND.items():
        name, body = by_line[line_id]
        assert re.fullmatch(r"[a-z0-9_]+", name)
        assert body["provider"] == f"${{aws.{region.replace('-', '_')}}}"
        assert body["instance_type"] == instance_type
        assert body["instance_platform"] == "Linux/UNIX"
        assert body["instance_count"] == count
        assert body["end_date_type"] == "limited"
        assert body["end_date"] == "2025-03-01T01:00:00Z"  # end of the first window
        assert "var.availability_zones" in body["availability_zone"]
        assert f"{region}a" in body["availability_zone"]
        assert body["tags"]["plan_id"] == PLAN_ID
        assert body["tags"]["peerscale"] == "true"


def test_spot_lines_become_spot_only_autoscaling_groups(
    plan_df: pd.DataFrame, manifest: dict, tmp_path: Path
) -> None:
    _render(plan_df, manifest, tmp_path / "tf")
    parsed = _parse_dir(tmp_path / "tf")
    groups = _resources(parsed, "aws_autoscaling_group")
    templates = _resources(parsed, "aws_launch_template")
    schedules = _resources(parsed, "aws_autoscaling_schedule")
    by_line = {
        _asg_tags(body)["line_id"]: (name, body)
        for name, body in groups.items()
        if _asg_tags(body)["purchase_option"] == "spot"
    }
    assert set(by_line) == set(FIRST_WINDOW_SPOT)
    for line_id, (region, instance_type, count) in FIRST_WINDOW_SPOT.items():
        name, body = by_line[line_id]
        alias = region.replace("-", "_")
        assert body["provider"] == f"${{aws.{alias}}}"
        assert body["desired_capacity"] == count
        assert body["max_size"] == count
        assert body["min_size"] == 0
        assert "warm_pool" not in body  # AWS refuses warm pools on mixed-instances (spot) groups
        assert f'var.subnet_ids, "{region}"' in body["vpc_zone_identifier"]
        tags = _asg_tags(body)
        assert tags["plan_id"] == PLAN_ID
        assert all(tag["propagate_at_launch"] is True for tag in body["tag"])

        policy = body["mixed_instances_policy"][0]
        distribution = policy["instances_distribution"][0]
        assert distribution["on_demand_base_capacity"] == 0
        assert distribution["on_demand_percentage_above_base_capacity"] == 0
        assert distribution["spot_allocation_strategy"] == "price-capacity-optimized"
        launch = policy["launch_template"][0]
        assert launch["override"][0]["instance_type"] == instance_type
        spec = launch["launch_template_specification"][0]
        assert spec["launch_template_id"] == f"${{aws_launch_template.{name}.id}}"

        template = templates[name]
        assert template["provider"] == f"${{aws.{alias}}}"
        assert template["instance_type"] == instance_type
        assert template["tags"]["plan_id"] == PLAN_ID
        assert template["metadata_options"][0]["http_tokens"] == "required"
        kinds = {spec["resource_type"] for spec in template["tag_specifications"]}
        assert kinds == {"instance", "volume"}
        volume = template["block_device_mappings"][0]["ebs"][0]
        assert (volume["volume_size"], volume["volume_type"], volume["encrypted"]) == (4, "gp3", True)
        assert "capacity_reservation_specification" not in template

        schedule = schedules[f"{name}_window_end"]
        assert schedule["desired_capacity"] == 0
        assert schedule["start_time"] == "2025-03-01T01:00:00Z"


def test_on_demand_lines_run_in_their_reservation_with_a_warm_pool(
    plan_df: pd.DataFrame, manifest: dict, tmp_path: Path
) -> None:
    _render(plan_df, manifest, tmp_path / "tf")
    parsed = _parse_dir(tmp_path / "tf")
    groups = _resources(parsed, "aws_autoscaling_group")
    templates = _resources(parsed, "aws_launch_template")
    reservations = _resources(parsed, "aws_ec2_capacity_reservation")
    on_demand = {
        _asg_tags(body)["line_id"]: (name, body)
        for name, body in groups.items()
        if _asg_tags(body)["purchase_option"] == "on_demand"
    }
    assert set(on_demand) == set(FIRST_WINDOW_ON_DEMAND)
    for line_id, (region, instance_type, count) in FIRST_WINDOW_ON_DEMAND.items():
        name, body = on_demand[line_id]
        assert name in reservations  # same stable name as its capacity reservation
        assert body["desired_capacity"] == count
        warm = body["warm_pool"][0]
        assert warm["min_size"] == max(1, -(-count // 5))  # ceil(count x 0.2)
        assert body["max_size"] == count + warm["min_size"] == warm["max_group_prepared_capacity"]
        assert warm["pool_state"] == "${var.warm_pool_state}"
        assert "mixed_instances_policy" not in body
        assert body["launch_template"][0]["id"] == f"${{aws_launch_template.{name}.id}}"
        template = templates[name]
        assert template["instance_type"] == instance_type
        assert template["capacity_reservation_specification"][0]["capacity_reservation_preference"] == "open"
        assert _asg_tags(body)["plan_id"] == PLAN_ID
        assert _asg_tags(body)["line_key"] == f"{region}/{instance_type}/on_demand"


def test_resource_names_are_stable_across_plans(plan_df: pd.DataFrame, manifest: dict, tmp_path: Path) -> None:
    """The next hour's plan updates the same resources: names do not carry the window or plan."""
    _render(plan_df, manifest, tmp_path / "a")
    later = plan_df.copy()
    later["valid_from"] = later["valid_from"] + pd.Timedelta(hours=1)
    later["valid_to"] = later["valid_to"] + pd.Timedelta(hours=1)
    later["plan_id"] = "plan-next"
    later["line_id"] = later["line_id"].str.replace("T00/", "T01/").str.replace("T01/", "T02/", regex=False)
    _render(later, {**manifest, "plan_id": "plan-next"}, tmp_path / "b")
    for kind in ("aws_autoscaling_group", "aws_launch_template", "aws_ec2_capacity_reservation"):
        assert set(_resources(_parse_dir(tmp_path / "a"), kind)) == set(_resources(_parse_dir(tmp_path / "b"), kind))


def test_peering_between_planned_region_pairs(plan_df: pd.DataFrame, manifest: dict, tmp_path: Path) -> None:
    _render(plan_df, manifest, tmp_path / "tf")
    parsed = _parse_dir(tmp_path / "tf")
    gateways = _resources(parsed, "aws_ec2_transit_gateway")
    assert set(gateways) == {"tgw_eu_west_1", "tgw_us_east_1"}
    assert all(g["tags"]["plan_id"] == PLAN_ID for g in gateways.values())
    attachments = _resources(parsed, "aws_ec2_transit_gateway_peering_attachment")
    accepters = _resources(parsed, "aws_ec2_transit_gateway_peering_attachment_accepter")
    assert set(attachments) == set(accepters) == {"peer_eu_west_1__us_east_1"}
    attachment = attachments["peer_eu_west_1__us_east_1"]
    assert attachment["provider"] == "${aws.eu_west_1}"  # the alphabetically first region requests
    assert attachment["peer_region"] == "us-east-1"
    assert attachment["peer_transit_gateway_id"] == "${aws_ec2_transit_gateway.tgw_us_east_1.id}"
    assert attachment["tags"]["plan_id"] == PLAN_ID
    assert accepters["peer_eu_west_1__us_east_1"]["provider"] == "${aws.us_east_1}"
    assert "# Planned pairs: all plan regions." in (tmp_path / "tf" / "network.tf").read_text()


def test_only_forecast_pairs_are_peered(plan_df: pd.DataFrame, manifest: dict, tmp_path: Path) -> None:
    """Pairs come from the caller (the pair forecast); pairs naming a region without lines are dropped."""
    _render(plan_df, manifest, tmp_path / "none", peering=[], peering_source="pair forecast f1")
    parsed = _parse_dir(tmp_path / "none")
    assert not _resources(parsed, "aws_ec2_transit_gateway")
    assert not _resources(parsed, "aws_ec2_transit_gateway_peering_attachment")
    assert "pair forecast f1" in (tmp_path / "none" / "network.tf").read_text()
    _render(plan_df, manifest, tmp_path / "some", peering=[("us-east-1", "eu-west-1", 12.5), ("us-east-1", "ap-south-1", 9.0)])
    attachments = _resources(_parse_dir(tmp_path / "some"), "aws_ec2_transit_gateway_peering_attachment")
    assert set(attachments) == {"peer_eu_west_1__us_east_1"}
    assert "12.5 requests expected" in (tmp_path / "some" / "network.tf").read_text()
    with pytest.raises(UnsafePlanValue, match="peering region"):
        _render(plan_df, manifest, tmp_path / "bad", peering=[("us-east-1", 'eu-west-1"', None)])


def test_pairs_from_forecast() -> None:
    from datetime import datetime

    from pipeline.iac.model import pairs_from_forecast

    t0 = datetime(2026, 1, 29, tzinfo=UTC)
    hours = [pd.Timestamp(t0) + pd.Timedelta(hours=h) for h in range(3)]
    rows = []
    for ds in hours:
        rows += [
            {"series_id": "pair:us-east-1→eu-west-1:requests", "ds": ds, "mean": 0.4},
            {"series_id": "pair:eu-west-1→us-east-1:requests", "ds": ds, "mean": 0.3},
            {"series_id": "pair:us-east-1→us-west-2:requests", "ds": ds, "mean": 0.1},
            {"series_id": "pair:us-east-1→ap-south-1:requests", "ds": ds, "mean": 5.0},
            {"series_id": "region:us-east-1:vcpu", "ds": ds, "mean": 100.0},
        ]
    table = pa.Table.from_pandas(pd.DataFrame(rows), preserve_index=False)
    pairs = pairs_from_forecast(table, ["us-east-1", "eu-west-1", "us-west-2"], t0, t0.replace(hour=2))
    # Two hours in range: (0.4 + 0.3) x 2 = 1.4 >= 1; us-west-2 pair 0.2 < 1; ap-south-1 has no lines.
    assert pairs == [("eu-west-1", "us-east-1", 1.4)]


def test_only_first_window_is_rendered(
    plan_df: pd.DataFrame, manifest: dict, tmp_path: Path
) -> None:
    _render(plan_df, manifest, tmp_path / "tf")
    text = "".join(p.read_text() for p in sorted((tmp_path / "tf").iterdir()))
    assert "2025-03-01T01" in text  # first window's end
    assert "T02:00:00Z" not in text  # second window's end
    assert "c5.2xlarge" not in text
    assert "/2025-03-01T01/" not in text  # second-window line ids
    parsed = _parse_dir(tmp_path / "tf")
    reservations = _resources(parsed, "aws_ec2_capacity_reservation").values()
    counts = [body["instance_count"] for body in reservations]
    assert 7 not in counts


def test_variables_and_tfvars_cover_every_region(
    plan_df: pd.DataFrame, manifest: dict, tmp_path: Path
) -> None:
    import json

    _render(plan_df, manifest, tmp_path / "tf")
    variables = {
        name: body
        for entry in _parse_dir(tmp_path / "tf")["variables.tf"]["variable"]
        for name, body in entry.items()
    }
    assert {"availability_zones", "subnet_ids", "image_ids", "ami_ssm_parameter"} <= set(variables)
    assert variables["availability_zones"]["default"] == {
        "eu-west-1": "eu-west-1a",
        "us-east-1": "us-east-1a",
    }
    tfvars = json.loads((tmp_path / "tf" / "terraform.tfvars.json").read_text())
    assert set(tfvars) <= set(variables)  # terraform warns on undeclared tfvars
    assert tfvars["availability_zones"] == {"eu-west-1": "eu-west-1a", "us-east-1": "us-east-1a"}
    assert tfvars["subnet_ids"] == {"eu-west-1": [], "us-east-1": []}


def test_zero_count_lines_are_skipped_and_noted(manifest: dict, tmp_path: Path) -> None:
    rows = _line_rows(W0, W1, "us-east-1", "m5.large", "on_demand", 0)
    rows += _line_rows(W0, W1, "us-east-1", "c5.large", "on_demand", 1)
    _render(pd.DataFrame(rows), manifest, tmp_path / "tf")
    reservations = _resources(_parse_dir(tmp_path / "tf"), "aws_ec2_capacity_reservation")
    assert [b["instance_type"] for b in reservations.values()] == ["c5.large"]
    assert "# Skipped (count 0): us-east-1/2025-03-01T00/m5.large/on_demand" in (
        tmp_path / "tf" / "main.tf"
    ).read_text()


def test_resource_names_are_safe_and_distinct() -> None:
    line_ids = ("us-east-1/m5.large", "us-east-1/m5-large", "US-EAST-1/M5.LARGE")
    names = {resource_name(line_id) for line_id in line_ids}
    assert len(names) == 3
    for name in names | {resource_name("€€€"), resource_name("9/x")}:
        assert re.fullmatch(r"[a-z_][a-z0-9_]*", name)
    assert resource_name("us-east-1/m5.large") == resource_name("us-east-1/m5.large")


# --------------------------------------------------------------------------------------------
# determinism and atomic replacement
# --------------------------------------------------------------------------------------------


def _tree_bytes(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_rendering_is_deterministic(plan_df: pd.DataFrame, manifest: dict, tmp_path: Path) -> None:
    _render(plan_df, manifest, tmp_path / "a")
    _render(plan_df, manifest, tmp_path / "b")
    # Row order and input type must not matter either.
    shuffled = plan_df.sample(frac=1.0, random_state=7).reset_index(drop=True)
    _render(shuffled, manifest, tmp_path / "c")
    table = pa.Table.from_pandas(plan_df, schema=PLAN, preserve_index=False)
    _render(table, manifest, tmp_path / "d")
    first = _tree_bytes(tmp_path / "a")
    for other in ("b", "c", "d"):
        assert _tree_bytes(tmp_path / other) == first


def test_rerender_replaces_the_output_directory(
    plan_df: pd.DataFrame, manifest: dict, tmp_path: Path
) -> None:
    out_dir = tmp_path / "tf"
    _render(plan_df, manifest, out_dir)
    (out_dir / "stale.tf").write_text("# left over from an older render\n")
    _render(plan_df, manifest, out_dir)
    assert not (out_dir / "stale.tf").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["tf"]


# --------------------------------------------------------------------------------------------
# safety
# --------------------------------------------------------------------------------------------


def _with(rows: list[dict[str, Any]], **changes: Any) -> pd.DataFrame:
    """The sample plan with ``changes`` applied to every row of its first line."""
    first_line = rows[0]["line_id"]
    return pd.DataFrame(
        [{**row, **changes} if row["line_id"] == first_line else row for row in rows]
    )


# case -> (changes to the first line's rows, field the error must name)
INJECTIONS: dict[str, tuple[dict[str, Any], str]] = {
    "region": ({"region": 'us-east-1"\n resource'}, "region"),
    "plan_id": ({"plan_id": 'plan-${file("/etc/passwd")}'}, "plan_id"),
    "instance_type": ({"instance_type": 'm5.large" }\nresource "x" "y" {'}, "instance_type"),
    "line_id_newline": ({"line_id": "us-east-1/m5.large\n# injected"}, "line_id"),
    "line_id_template": ({"line_id": "us-east-1/%{ for x in y }"}, "line_id"),
    "line_id_backslash": ({"line_id": "us-east-1\\m5"}, "line_id"),
    "purchase_option": ({"purchase_option": "reserved"}, "purchase_option"),
    "negative_count": ({"count": -1}, "count"),
    "float_count": ({"count": 2.5}, "count"),
    "naive_timestamp": ({"valid_from": pd.Timestamp("2025-03-01T00:00:00")}, "valid_from"),
    "resource_type": ({"resource_type": 'vcpu"\n}'}, "resource_type"),
    "nan_quantity": ({"quantity": float("nan")}, "quantity"),
    "negative_quantity": ({"quantity": -3.0}, "quantity"),
}


@pytest.mark.parametrize("case", sorted(INJECTIONS))
def test_unsafe_values_are_refused_before_writing(
    case: str, manifest: dict, tmp_path: Path
) -> None:
    changes, field = INJECTIONS[case]
    plan = _with(sample_rows(), **changes)
    if case == "plan_id":  # the manifest carries the same hostile id; it is checked first
        manifest = {**manifest, "plan_id": changes["plan_id"]}
        field = "manifest.plan_id"
    out_root = tmp_path / "build"
    with pytest.raises(UnsafePlanValue) as excinfo:
        _render(plan, manifest, out_root / "iac" / "terraform")
    assert excinfo.value.field == field
    assert " — " in str(excinfo.value)  # the message says what to fix
    assert not out_root.exists()
    assert list(tmp_path.iterdir()) == []


def test_unsafe_plan_id_in_rows_only_is_refused(manifest: dict, tmp_path: Path) -> None:
    plan = _with(sample_rows(), plan_id="plan-${x}")
    with pytest.raises(UnsafePlanValue) as excinfo:
        _render(plan, manifest, tmp_path / "tf")
    assert excinfo.value.field == "plan_id"
    assert not (tmp_path / "tf").exists()


def test_unsafe_value_in_a_later_window_is_refused(manifest: dict, tmp_path: Path) -> None:
    rows = sample_rows()
    rows[-1] = {**rows[-1], "instance_type": 'c5.large"'}
    with pytest.raises(UnsafePlanValue, match="instance_type"):
        _render(pd.DataFrame(rows), manifest, tmp_path / "tf")
    assert not (tmp_path / "tf").exists()


def test_manifest_plan_id_must_match_rows(plan_df: pd.DataFrame, tmp_path: Path) -> None:
    with pytest.raises(UnsafePlanValue, match="plan_id"):
        _render(plan_df, {"plan_id": "another-plan"}, tmp_path / "tf")
    with pytest.raises(UnsafePlanValue, match=r"manifest\.plan_id"):
        _render(plan_df, {"plan_id": "bad id ${x}"}, tmp_path / "tf")
    assert not (tmp_path / "tf").exists()


def test_failed_render_keeps_previous_output(
    plan_df: pd.DataFrame, manifest: dict, tmp_path: Path
) -> None:
    out_dir = tmp_path / "tf"
    _render(plan_df, manifest, out_dir)
    before = _tree_bytes(out_dir)
    with pytest.raises(UnsafePlanValue):
        _render(_with(sample_rows(), region="us-east-1\n"), manifest, out_dir)
    assert _tree_bytes(out_dir) == before


def test_malformed_plans_get_clear_errors(manifest: dict, tmp_path: Path) -> None:
    rows = sample_rows()
    with pytest.raises(ValueError, match="no rows"):
        _render(pd.DataFrame(rows).iloc[0:0], manifest, tmp_path / "tf")
    with pytest.raises(ValueError, match="missing columns"):
        _render(pd.DataFrame(rows).drop(columns=["line_id"]), manifest, tmp_path / "tf")
    inconsistent = [dict(r) for r in rows]
    inconsistent[1]["count"] = 99  # second resource row of the first line
    with pytest.raises(ValueError, match="inconsistent"):
        _render(pd.DataFrame(inconsistent), manifest, tmp_path / "tf")
    ragged = [dict(r) for r in rows]
    ragged[0]["valid_to"] = W2
    with pytest.raises(ValueError, match="several valid_to"):
        _render(pd.DataFrame(ragged), manifest, tmp_path / "tf")
    assert list(tmp_path.iterdir()) == []


def test_template_filters_refuse_unsafe_text() -> None:
    for value in ('a"b', "a\\b", "a${b}", "a%{b}", "a\nb", "", None, 3):
        with pytest.raises(UnsafePlanValue):
            safety.hcl_string(value)
    for value in ("Bad", "a-b", "1a", ""):
        with pytest.raises(UnsafePlanValue):
            safety.hcl_identifier(value)
    for value in (-1, 1.0, True, "3"):
        with pytest.raises(UnsafePlanValue):
            safety.hcl_number(value)
    assert safety.hcl_string("us-east-1/m5.large") == '"us-east-1/m5.large"'


def _copy_templates(dst: Path) -> Path:
    src = default_templates_dir()
    dst.mkdir(parents=True)
    for path in src.iterdir():
        if path.is_file():
            (dst / path.name).write_bytes(path.read_bytes())
    return dst


def test_credentials_in_templates_are_refused(
    plan_df: pd.DataFrame, manifest: dict, tmp_path: Path
) -> None:
    templates = _copy_templates(tmp_path / "templates")
    (templates / "leak.tf").write_text(
        'provider "aws" {\n  access_key = "AKIAABCDEFGHIJKLMNOP"\n}\n'
    )
    with pytest.raises(UnsafeRenderedOutput, match="environment"):
        _render(plan_df, manifest, tmp_path / "out" / "tf", templates_dir=templates)
    assert not (tmp_path / "out" / "tf").exists()


def test_templates_dir_env_override(
    plan_df: pd.DataFrame, manifest: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "only.tf.j2").write_text("# {{ plan_id | text }} {{ regions | length }}\n")
    monkeypatch.setenv(TEMPLATES_ENV_VAR, str(templates))
    written = _render(plan_df, manifest, tmp_path / "tf")
    assert [p.name for p in written] == ["only.tf", "terraform.tfvars.json"]
    assert (tmp_path / "tf" / "only.tf").read_text() == f"# {PLAN_ID} 2\n"


def test_templates_use_strict_undefined(
    plan_df: pd.DataFrame, manifest: dict, tmp_path: Path
) -> None:
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "main.tf.j2").write_text("# {{ no_such_value }}\n")
    with pytest.raises(Exception, match="no_such_value"):
        _render(plan_df, manifest, tmp_path / "tf", templates_dir=templates)
    assert not (tmp_path / "tf").exists()


# --------------------------------------------------------------------------------------------
# golden files
# --------------------------------------------------------------------------------------------


def test_golden_files(plan_df: pd.DataFrame, manifest: dict, tmp_path: Path) -> None:
    """Rendered bytes equal tests/golden/terraform/ exactly (see the module docstring to update)."""
    out_dir = tmp_path / "tf"
    _render(plan_df, manifest, out_dir)
    rendered = _tree_bytes(out_dir)
    if os.environ.get(UPDATE_GOLDEN_ENV) == "1":
        GOLDEN_DIR.mkdir(parents=True, exist_ok=True)
        for stale in GOLDEN_DIR.iterdir():
            if stale.name not in rendered:
                stale.unlink()
        for name, data in rendered.items():
            (GOLDEN_DIR / name).write_bytes(data)
    how = (
        f"rendered Terraform differs from {GOLDEN_DIR}; if the change is intended, run "
        f"`{UPDATE_GOLDEN_ENV}=1 .venv/bin/python -m pytest tests/test_iac.py -k golden` "
        "and review the diff"
    )
    assert GOLDEN_DIR.is_dir(), how
    golden = _tree_bytes(GOLDEN_DIR)
    assert sorted(rendered) == sorted(golden), how
    for name in rendered:
        assert rendered[name] == golden[name], f"{name}: {how}"
