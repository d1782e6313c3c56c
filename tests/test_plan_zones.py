"""Multi-AZ: each region's lines spread over its availability zones with N+1 across them (pipeline.plan.zones)."""

from __future__ import annotations

import itertools
import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from pipeline.common.intervals import DataInterval
from pipeline.plan.policy import PlannerConfig, config_from_dict
from pipeline.plan.zones import (
    ZoneCatalog,
    layer_from_dict,
    layer_from_text,
    parse_zone_catalog,
    resolve_zones,
    spread_rows,
    zone_spread,
    zone_total,
)
from tests.conftest import RUN_END, SAMPLES, settings_for

CATALOG = ZoneCatalog(zones={"eu-west-1": ("eu-west-1a", "eu-west-1b", "eu-west-1c"), "eu-south-2": ("eu-south-2a",)},
                      source="zones.csv")


def _survives(spread: tuple[tuple[str, int], ...], n: int) -> bool:
    total = sum(k for _, k in spread)
    return all(total - k >= n for _, k in spread)


@pytest.mark.parametrize("zones", [2, 3, 4])
def test_the_zone_total_is_the_least_that_survives_any_one_zone(zones: int) -> None:
    for n in range(0, 13):
        total = zone_total(n, zones)
        # brute force: no smaller total has a distribution over `zones` that survives the loss of any one zone
        smaller = [d for t in range(n, total) for d in itertools.product(range(t + 1), repeat=zones)
                   if sum(d) == t and all(t - k >= n for k in d)]
        assert not smaller, (n, zones, total)
        spread = zone_spread(n, tuple(f"eu-west-1{c}" for c in "abcd"[:zones]))
        assert sum(k for _, k in spread) == total
        assert _survives(spread, n)
        assert all(k <= math.ceil(n / (zones - 1)) for _, k in spread)


def test_three_zones_losing_any_one_still_holds_the_planned_count() -> None:
    zones = ("eu-west-1a", "eu-west-1b", "eu-west-1c")
    assert zone_spread(5, zones) == (("eu-west-1a", 3), ("eu-west-1b", 3), ("eu-west-1c", 2))
    assert zone_spread(4, zones) == (("eu-west-1a", 2), ("eu-west-1b", 2), ("eu-west-1c", 2))
    assert zone_spread(1, zones) == (("eu-west-1a", 1), ("eu-west-1b", 1))  # no empty zone listed
    assert zone_spread(5, zones, n_plus_one=False) == (("eu-west-1a", 2), ("eu-west-1b", 2), ("eu-west-1c", 1))
    assert zone_spread(7, ("eu-west-1a",)) == (("eu-west-1a", 7),)


def test_default_is_three_zones_where_the_catalog_lists_them_and_one_zone_says_why() -> None:
    got = resolve_zones(CATALOG, ["eu-west-1", "eu-south-2", "us-east-1"], [])
    assert got["eu-west-1"].zones == ("eu-west-1a", "eu-west-1b", "eu-west-1c") and got["eu-west-1"].n_plus_one
    assert got["eu-south-2"].zones == ("eu-south-2a",) and not got["eu-south-2"].n_plus_one
    assert "lists only eu-south-2a" in got["eu-south-2"].reason and "no spread" in got["eu-south-2"].reason
    assert got["us-east-1"].zones == () and "lists no zone for us-east-1" in got["us-east-1"].reason


def test_layers_apply_in_order_and_a_count_for_every_region_is_capped() -> None:
    layers = [layer_from_dict({"per_region": 3, "regions": {"eu-west-1": ["eu-west-1a", "eu-west-1c"]}}, "planner config"),
              layer_from_text("4", "PEERSCALE_ZONES")]
    got = resolve_zones(CATALOG, ["eu-west-1", "eu-south-2"], layers)
    assert got["eu-west-1"].zones == ("eu-west-1a", "eu-west-1b", "eu-west-1c")  # the later every-region count wins
    assert "capped at the 3" in got["eu-west-1"].reason
    assert got["eu-south-2"].zones == ("eu-south-2a",)
    named = resolve_zones(CATALOG, ["eu-west-1"], [layer_from_text("eu-west-1=eu-west-1a+eu-west-1c", "--zones")])
    assert named["eu-west-1"].zones == ("eu-west-1a", "eu-west-1c")
    off = resolve_zones(CATALOG, ["eu-west-1"], [layer_from_dict({"n_plus_one": False}, "planner config")])
    assert off["eu-west-1"].spread and not off["eu-west-1"].n_plus_one


@pytest.mark.parametrize(("text", "message"), [
    ("eu-west-1=eu-west-1a+eu-west-1d", "['eu-west-1d'] for eu-west-1 are not in the zone catalog"),
    ("eu-west-1=eu-west-1a+us-east-1a", "are not availability zones of eu-west-1"),
    ("eu-west-1=4", "4 zones asked for eu-west-1, but zones.csv lists 3"),
    ("eu-south-2=2", "2 zones asked for eu-south-2"),
    ("0", "out of range"),
    ("two", "not a whole number"),
    ("Europe=2", "not a region code"),
])
def test_zone_settings_that_cannot_be_met_are_refused_with_the_zone_named(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        resolve_zones(CATALOG, ["eu-west-1", "eu-south-2"], [layer_from_text(text, "--zones")])


def test_the_zone_catalog_and_planner_json_are_checked() -> None:
    assert parse_zone_catalog("region,zone\neu-west-1,eu-west-1b\neu-west-1,eu-west-1a\n", "z") == {
        "eu-west-1": ("eu-west-1a", "eu-west-1b")}
    for text, message in (("region,zone\neu-west-1,us-east-1a\n", "line 2: 'us-east-1a' is not an availability zone of eu-west-1"),
                          ("region,zone\neu-west-1,eu-west-1a\neu-west-1,eu-west-1a\n", "line 3: zone eu-west-1a is listed twice"),
                          ("region\neu-west-1\n", "header must name the columns region,zone")):
        with pytest.raises(ValueError, match=message):
            parse_zone_catalog(text, "z")
    with pytest.raises(ValueError, match="zones has unknown keys"):
        config_from_dict({"zones": {"per_regoin": 2}})


def test_spread_rows_price_the_headroom_into_the_cost_columns() -> None:
    zones = resolve_zones(CATALOG, ["eu-west-1"], [layer_from_text("3", "x")])
    row = {"region": "eu-west-1", "count": 4, "hourly_cost": 1.0, "line_id": "l", "valid_from": 0}
    (out,) = spread_rows([row], zones)
    assert json.loads(out["zone_counts"]) == {"eu-west-1a": 2, "eu-west-1b": 2, "eu-west-1c": 2}
    assert out["zone_spare_count"] == 2 and out["zone_spare_hourly_cost"] == 0.5 and out["hourly_cost"] == 1.5
    assert out["count"] == 4  # the optimiser's n: what must survive, and the next plan's churn baseline


def test_headroom_beyond_the_pool_is_reported() -> None:
    from pipeline.plan.zones import beyond_pool

    zones = resolve_zones(CATALOG, ["eu-west-1"], [layer_from_text("2", "test")])  # 2 zones: the headroom doubles the line
    rows = spread_rows([{"region": "eu-west-1", "count": 4, "hourly_cost": 1.0, "line_id": "l", "valid_from": 0,
                         "resource_type": r, "quantity": q} for r, q in (("vcpu", 32.0), ("memory_gib", 128.0))], zones)
    assert beyond_pool(rows, {"eu-west-1": {"vcpu": 100.0, "memory_gib": 200.0}}) == [
        {"window": "0", "region": "eu-west-1", "resource_type": "memory_gib", "planned": 128.0, "zone_headroom": 128.0, "pool": 200.0}]


def _plan(root: Path, tmp_path: Path, source: Path, config: PlannerConfig, publish: bool = False) -> tuple[pd.DataFrame, dict]:
    from pipeline.plan.planner import build_plan
    from pipeline.publish.pointer import publish_attempt

    shutil.copytree(root / "lake", tmp_path / "lake")
    settings = settings_for(tmp_path, source=source)
    manifest = json.loads(next((tmp_path / "lake" / "plans").glob("plan_id=*/attempt=*/manifest.json")).read_text())
    out = build_plan(DataInterval.ending_at(RUN_END), settings, manifest["forecast_run_id"], config=config)
    plan_dir = tmp_path / "lake" / "plans" / f"plan_id={out['plan_id']}" / f"attempt={out['attempt']}"
    if publish:
        publish_attempt(str(tmp_path / "lake"), out["plan_id"], out["attempt"], pointer="always")
    return pd.read_parquet(plan_dir / "plan.parquet"), json.loads((plan_dir / "manifest.json").read_text())


def test_the_plan_spreads_lines_over_three_zones_and_prices_the_headroom(published_root: Path, tmp_path: Path) -> None:
    config = PlannerConfig(zones={"regions": {"eu-west-1": 3}})
    plan, manifest = _plan(published_root, tmp_path, SAMPLES, config, publish=True)
    lines = plan.drop_duplicates("line_id")
    assert (lines["count"] > 0).any()
    for line in lines.itertuples(index=False):
        spread = tuple(json.loads(line.zone_counts).items()) if line.zone_counts else ()
        if line.region == "eu-west-1":
            assert {z for z, _ in spread} <= {"eu-west-1a", "eu-west-1b", "eu-west-1c"}
        if line.count > 0:
            assert len(spread) >= 2 and _survives(spread, line.count), line  # any one zone lost: still `count`
            assert sum(k for _, k in spread) == line.count + line.zone_spare_count
    zones = manifest["zones"]
    assert zones["by_region"]["eu-west-1"]["zones"] == ["eu-west-1a", "eu-west-1b", "eu-west-1c"]
    assert zones["by_region"]["us-east-1"]["zones"] == ["us-east-1a", "us-east-1b", "us-east-1c"]  # default: 3 of the 6 listed
    assert zones["hourly_cost_zone_headroom"] == pytest.approx(plan["zone_spare_hourly_cost"].sum(), abs=1e-5)
    assert manifest["hourly_cost_total"] == pytest.approx(zones["hourly_cost_before_zones"] + zones["hourly_cost_zone_headroom"])
    assert manifest["hourly_cost_total"] == pytest.approx(plan["hourly_cost"].sum(), rel=1e-6)
    assert zones["hourly_cost_zone_headroom"] > 0
    from pipeline.plan.explain import explain_region

    text = "\n".join(explain_region(plan, manifest, "eu-west-1"))
    assert "zones eu-west-1a, eu-west-1b, eu-west-1c — 3 zone(s) for eu-west-1 in planner config" in text
    assert "N+1 across zones: +" in text and "so losing any one zone leaves" in text


def test_a_catalog_with_one_zone_per_region_plans_no_spread_and_says_why(published_root: Path, tmp_path: Path) -> None:
    source = tmp_path / "source"
    (source / "inventory").mkdir(parents=True)
    regions = sorted(pd.read_csv(SAMPLES / "inventory" / "pools.csv")["region"].unique())
    (source / "inventory" / "zones.csv").write_text("region,zone\n" + "".join(f"{r},{r}b\n" for r in regions))
    plan, manifest = _plan(published_root, tmp_path, source, PlannerConfig())
    assert (plan["zone_spare_count"] == 0).all() and manifest["zones"]["hourly_cost_zone_headroom"] == 0
    for region, entry in manifest["zones"]["by_region"].items():
        assert entry["zones"] == [f"{region}b"] and f"lists only {region}b" in entry["reason"]
    assert manifest["hourly_cost_total"] == manifest["zones"]["hourly_cost_before_zones"]


def test_an_unknown_zone_in_planner_json_stops_the_plan_with_the_zone_named(published_root: Path, tmp_path: Path) -> None:
    config = PlannerConfig(zones={"regions": {"eu-west-1": ["eu-west-1a", "eu-west-1z"]}})
    with pytest.raises(ValueError, match=r"\['eu-west-1z'\] for eu-west-1 are not in the zone catalog"):
        _plan(published_root, tmp_path, SAMPLES, config)
    assert replace(config, zones={}).zones == {}


def test_the_irc_explains_where_the_capacity_sits(published_root: Path, tmp_path: Path) -> None:
    """The IRC reads the zones once per plan load: `irc request` and GET /v1/plan/zones name them."""
    from typer.testing import CliRunner

    from pipeline.cli.app import app
    from pipeline.irc.plan_source import load_latest_plan
    from tests.test_irc_service import Served

    _, manifest = _plan(published_root, tmp_path, SAMPLES, PlannerConfig(zones={"regions": {"eu-west-1": 3}}), publish=True)
    loaded = load_latest_plan(tmp_path / "lake")
    note = loaded.zone_note("eu-west-1")
    first = manifest["zones"]["by_region"]["eu-west-1"]["instances_first_window"]
    assert note is not None and all(f"{zone} ({n})" in note for zone, n in first.items()) and len(first) == 3
    assert "losing any one zone still leaves the planned capacity" in note
    result = CliRunner().invoke(app, ["irc", "request", "--from", "us-east-1", "--to", "eu-west-1", "--vcpu", "1",
                                      "--at", manifest["valid_from"], "--lake", str(tmp_path / "lake")])
    decision = json.loads(result.stdout)
    assert decision["path"] == "preallocated" and decision["zones"] == note, result.output
    with Served("--lake", str(tmp_path / "lake"), "--no-log-outcomes") as served:
        status, body = served.call("GET", "/v1/plan/zones")
        served.stop()
    assert status == 200 and body["plan_id"] == manifest["plan_id"]
    assert body["regions"]["eu-west-1"]["zones"] == ["eu-west-1a", "eu-west-1b", "eu-west-1c"]
    assert body["regions"]["eu-west-1"]["explanation"] == note
