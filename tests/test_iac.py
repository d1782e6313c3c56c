"""Terraform rendering from a plan: the fixed modules plus plan.auto.tfvars.json per root.

Structure, determinism, validation of plan values. The real ``terraform fmt``/``validate``/
``plan``/``apply`` runs are in tests/test_iac_terraform_apply.py.
"""

from __future__ import annotations

import json
from datetime import UTC
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pytest

from pipeline.common.schemas import PLAN
from pipeline.iac import UnsafePlanValue, UnsafeRenderedOutput, render_terraform
from pipeline.iac.terraform import MODULES_ENV_VAR, default_modules_dir

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
# structure
# --------------------------------------------------------------------------------------------


def _render(plan: Any, manifest: dict[str, Any], out_dir: Path, **kwargs: Any) -> list[Path]:
    return render_terraform(plan, manifest, out_dir, **kwargs)


def _tfvars(out_dir: Path, root: str) -> dict[str, Any]:
    return json.loads((out_dir / root / "plan.auto.tfvars.json").read_text())


def test_roots_are_copies_of_the_fixed_modules(plan_df: pd.DataFrame, manifest: dict, tmp_path: Path) -> None:
    written = _render(plan_df, manifest, tmp_path / "tf")
    names = sorted(str(p.relative_to(tmp_path / "tf")) for p in written)
    assert "plan.json" in names
    assert sorted({n.rsplit("/", 1)[0] for n in names if "/" in n}) == [
        "peering/eu_west_1__us_east_1", "regions/eu-west-1", "regions/us-east-1"]
    modules = default_modules_dir()
    for path in written:
        if path.suffix == ".tf":
            module = modules / ("region" if "/regions/" in str(path) else "peering")
            assert path.read_bytes() == (module / path.name).read_bytes()
    # No plan value in any HCL file: the plan id and line ids live in the tfvars only.
    hcl = "".join(p.read_text() for p in written if p.suffix == ".tf")
    assert PLAN_ID not in hcl and "r5.large" not in hcl and "eu-west-1" not in hcl


def test_region_tfvars_carry_the_first_window_lines(plan_df: pd.DataFrame, manifest: dict, tmp_path: Path) -> None:
    _render(plan_df, manifest, tmp_path / "tf")
    us = _tfvars(tmp_path / "tf", "regions/us-east-1")
    assert us["plan_id"] == PLAN_ID and us["region"] == "us-east-1" and us["transit_gateway"] is True
    assert us["window"] == {"valid_from": "2025-03-01T00:00:00Z", "valid_to": "2025-03-01T01:00:00Z"}
    assert set(us["lines"]) == {"m5.large/on_demand", "c5.xlarge/spot"}
    on_demand = us["lines"]["m5.large/on_demand"]
    assert on_demand == {
        "line_id": "us-east-1/2025-03-01T00/m5.large/on_demand", "line_key": "us-east-1/m5.large/on_demand",
        "instance_type": "m5.large", "purchase_option": "on_demand", "count": 3, "planned_count": 3, "zone_headroom": 0,
            "warm_pool": 1, "max_size": 4,
        "storage_gib": 4, "availability_zones": ["us-east-1a"], "zone_counts": {"us-east-1a": 3},
    }
    assert us["lines"]["c5.xlarge/spot"]["warm_pool"] == 0
    eu = _tfvars(tmp_path / "tf", "regions/eu-west-1")
    assert {k: v["count"] for k, v in eu["lines"].items()} == {"r5.large/on_demand": 2, "m5.large/spot": 5}
    pair = _tfvars(tmp_path / "tf", "peering/eu_west_1__us_east_1")
    assert pair == {"plan_id": PLAN_ID, "requester_region": "eu-west-1", "accepter_region": "us-east-1",
                    "expected_requests": None}


def test_only_forecast_pairs_are_peered(plan_df: pd.DataFrame, manifest: dict, tmp_path: Path) -> None:
    """Pairs come from the caller (the pair forecast); pairs naming a region without lines are dropped."""
    _render(plan_df, manifest, tmp_path / "none", peering=[], peering_source="pair forecast f1")
    assert not (tmp_path / "none" / "peering").exists()
    assert _tfvars(tmp_path / "none", "regions/us-east-1")["transit_gateway"] is False
    assert "pair forecast f1" in (tmp_path / "none" / "plan.json").read_text()
    _render(plan_df, manifest, tmp_path / "some", peering=[("us-east-1", "eu-west-1", 12.5), ("us-east-1", "ap-south-1", 9.0)])
    assert [p.name for p in (tmp_path / "some" / "peering").iterdir()] == ["eu_west_1__us_east_1"]
    assert _tfvars(tmp_path / "some", "peering/eu_west_1__us_east_1")["expected_requests"] == 12.5
    with pytest.raises(UnsafePlanValue, match="peering region"):
        _render(plan_df, manifest, tmp_path / "bad", peering=[("us-east-1", 'eu-west-1"', None)])


def test_lines_spread_over_availability_zones(plan_df: pd.DataFrame, manifest: dict, tmp_path: Path) -> None:
    from pipeline.iac.model import build_model, zone_split
    from pipeline.iac.terraform import render_terraform_model

    assert zone_split("us-east-1", 5, 2) == (("us-east-1a", 3), ("us-east-1b", 2))
    assert zone_split("us-east-1", 1, 3) == (("us-east-1a", 1),)  # never a zone without an instance
    with pytest.raises(ValueError, match="at least 1"):
        zone_split("us-east-1", 3, 0)
    render_terraform_model(build_model(plan_df, manifest, zones_per_region=2), tmp_path / "tf")
    line = _tfvars(tmp_path / "tf", "regions/us-east-1")["lines"]["c5.xlarge/spot"]
    assert line["availability_zones"] == ["us-east-1a", "us-east-1b"]
    assert line["zone_counts"] == {"us-east-1a": 2, "us-east-1b": 2}
    assert line["max_size"] == 4 + 2  # N+1 across zones: either zone's 2 can be relaunched in the other


def test_empty_regions_get_a_root_without_lines(plan_df: pd.DataFrame, manifest: dict, tmp_path: Path) -> None:
    from pipeline.iac.model import build_model
    from pipeline.iac.terraform import render_terraform_model

    render_terraform_model(build_model(plan_df, manifest), tmp_path / "tf", empty_regions=["ap-south-1"])
    gone = _tfvars(tmp_path / "tf", "regions/ap-south-1")
    assert gone["lines"] == {} and gone["transit_gateway"] is False


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
    text = "".join(p.read_text() for p in sorted((tmp_path / "tf").rglob("*.json")))
    assert "2025-03-01T01" in text  # first window's end
    assert "T02:00:00Z" not in text  # second window's end
    assert "c5.2xlarge" not in text
    assert "/2025-03-01T01/" not in text  # second-window line ids
    assert _tfvars(tmp_path / "tf", "regions/us-east-1")["lines"]["m5.large/on_demand"]["count"] == 3  # not 7


def test_zero_count_lines_are_skipped_and_noted(manifest: dict, tmp_path: Path) -> None:
    rows = sample_rows() + _line_rows(W0, W1, "us-east-1", "t3.micro", "spot", 0)
    _render(pd.DataFrame(rows), manifest, tmp_path / "tf")
    assert "t3.micro/spot" not in _tfvars(tmp_path / "tf", "regions/us-east-1")["lines"]
    assert "us-east-1/2025-03-01T00/t3.micro/spot" in json.loads((tmp_path / "tf" / "plan.json").read_text())["skipped_line_ids"]


def _tree_bytes(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


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
# validation of plan values
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




def _copy_modules(dst: Path) -> Path:
    for name in ("region", "peering"):
        (dst / name).mkdir(parents=True)
        for path in (default_modules_dir() / name).glob("*.tf"):
            (dst / name / path.name).write_bytes(path.read_bytes())
    return dst


def test_credentials_in_modules_are_refused(plan_df: pd.DataFrame, manifest: dict, tmp_path: Path) -> None:
    modules = _copy_modules(tmp_path / "modules")
    (modules / "region" / "leak.tf").write_text('provider "aws" {\n  access_key = "AKIAABCDEFGHIJKLMNOP"\n}\n')
    with pytest.raises(UnsafeRenderedOutput, match="environment"):
        _render(plan_df, manifest, tmp_path / "out" / "tf", modules_dir=modules)
    assert not (tmp_path / "out" / "tf").exists()


def test_modules_dir_env_override_and_missing_module(
    plan_df: pd.DataFrame, manifest: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    modules = _copy_modules(tmp_path / "modules")
    (modules / "region" / "extra.tf").write_text("# site addition\n")
    monkeypatch.setenv(MODULES_ENV_VAR, str(modules))
    _render(plan_df, manifest, tmp_path / "tf")
    assert (tmp_path / "tf" / "regions" / "us-east-1" / "extra.tf").read_text() == "# site addition\n"
    (modules / "peering").rename(tmp_path / "elsewhere")
    with pytest.raises(FileNotFoundError, match="peering"):
        _render(plan_df, manifest, tmp_path / "tf2")
    assert not (tmp_path / "tf2").exists()
