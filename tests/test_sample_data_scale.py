"""Sample data for many regions (bench/pipeline_scale.py): synthetic names get stable, varied profiles."""

from __future__ import annotations

import csv
from pathlib import Path

from pipeline.common import schemas
from pipeline.samples.generate import DEFAULT_REGIONS, _region_profile, generate_sample_data


def _names(n: int) -> list[str]:
    return [*DEFAULT_REGIONS, *(f"xx-region-{i:02d}" for i in range(len(DEFAULT_REGIONS) + 1, n + 1))]


def test_known_and_prefix_profiles_are_unchanged() -> None:
    assert _region_profile("us-east-1") == (-5, 1.00, 1.00)
    assert _region_profile("ap-northeast-1") == (9, 0.35, 1.29)
    assert _region_profile("me-south-1") == (4, 0.20, 1.20)  # by prefix


def test_unknown_names_get_deterministic_varied_sensible_profiles() -> None:
    names = [f"xx-region-{i:02d}" for i in range(7, 101)]
    profiles = [_region_profile(n) for n in names]
    assert profiles == [_region_profile(n) for n in names]  # pure function of the name
    offsets, sizes, prices = zip(*profiles)
    assert all(-12 <= o <= 14 for o in offsets) and len(set(offsets)) >= 8
    assert all(0.15 <= s <= 0.75 for s in sizes) and len(set(sizes)) >= 50
    assert all(1.0 <= p <= 1.4 for p in prices) and len(set(prices)) >= 50


def test_thirty_regions_generate_every_pair_and_pool(tmp_path: Path) -> None:
    regions = _names(30)
    counts = generate_sample_data(tmp_path / "a", days=2, regions=regions, requests_per_hour=400.0, dirty_rows=False)
    assert counts["resource_pools"] == 30 * len(schemas.RESOURCE_TYPES)
    with (tmp_path / "a" / schemas.SOURCES["resource_pools"]["path"]).open() as fh:
        assert {row["region"] for row in csv.DictReader(fh)} == set(regions)
    pairs = set()
    for path in sorted((tmp_path / "a" / "peering_requests").glob("*.csv")):
        with path.open() as fh:
            pairs |= {(r["source_region"], r["destination_region"]) for r in csv.DictReader(fh)}
    assert len(pairs) > 0.8 * 30 * 29 and all(s != d for s, d in pairs)
    generate_sample_data(tmp_path / "b", days=2, regions=regions, requests_per_hour=400.0, dirty_rows=False)
    for path in sorted((tmp_path / "a").rglob("*")):
        if path.is_file():
            assert path.read_bytes() == (tmp_path / "b" / path.relative_to(tmp_path / "a")).read_bytes(), path
