"""The forecast fan-out (pipeline.forecast.shards): shard counts, sharded == single-process, retries.

The hourly DAG maps the forecast over shards of series; these tests run the same steps in this
process on the seeded lake and compare with `run_forecast`, byte for byte.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.common import lake
from pipeline.common.config import Settings
from pipeline.common.intervals import DataInterval
from pipeline.forecast import engine, shards
from pipeline.forecast.engine import forecast_run_id
from tests.conftest import RUN_END, settings_for

INTERVAL = DataInterval.ending_at(RUN_END)
RUN_ID = forecast_run_id("hourly", INTERVAL)
CHEAP = ("seasonal_naive", "seasonal_mean")  # local models only: fast, for the failure-path tests


@pytest.fixture(scope="module")
def featured_root(seeded_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The seeded lake with the run's hour ingested and its features built (what the forecast reads)."""
    from pipeline.run import stage_features, stage_ingest

    root = tmp_path_factory.mktemp("featured")
    shutil.copytree(seeded_root / "lake", root / "lake")
    settings = settings_for(root)
    stage_ingest(INTERVAL, settings)
    stage_features(INTERVAL, settings)
    return root


def _lake_copy(featured_root: Path, target: Path) -> Settings:
    shutil.copytree(featured_root / "lake", target / "lake")
    return settings_for(target)


def _published(settings: Settings) -> tuple[object, dict]:
    out = Path(lake.forecast_dir(settings.lake_root, RUN_ID))
    return pq.read_table(out / "forecast.parquet"), json.loads((out / "manifest.json").read_text())


def test_shard_count_follows_the_series_and_respects_the_caps() -> None:
    assert shards.shard_count(60, series_per_shard=25) == 3
    assert shards.shard_count(1, series_per_shard=25) == 1
    assert shards.shard_count(0, series_per_shard=25) == 1
    assert shards.shard_count(10_000, series_per_shard=25, max_shards=16) == 16
    assert shards.shard_count(5_000, series_per_shard=1, max_shards=5_000) == 1024, "never more than max_map_length"
    assert shards.shard_count(5_000, series_per_shard=1, max_shards=5_000, max_map_length=100) == 100
    with pytest.raises(ValueError):
        shards.shard_count(10, series_per_shard=0)


def test_shard_count_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PEERSCALE_FORECAST_SERIES_PER_SHARD", "10")
    monkeypatch.setenv("PEERSCALE_FORECAST_MAX_SHARDS", "4")
    assert shards.shard_count(35) == 4
    assert shards.shard_count(25) == 3


def test_split_is_contiguous_balanced_and_complete() -> None:
    ids = [f"s{i:03d}" for i in reversed(range(61))]
    parts = shards.contiguous_chunks(ids, 4)
    assert [len(p) for p in parts] == [16, 15, 15, 15]
    assert [sid for p in parts for sid in p] == sorted(ids)


@pytest.mark.long
def test_sharded_forecast_equals_the_single_process_forecast(featured_root: Path, tmp_path: Path) -> None:
    """Default models (with the global GBM, fitted once): same parquet bytes' content, same manifest."""
    single = _lake_copy(featured_root, tmp_path / "single")
    engine.run_forecast(INTERVAL, single)
    sharded = _lake_copy(featured_root, tmp_path / "sharded")
    out = shards.run_sharded(INTERVAL, sharded, series_per_shard=25)

    # 60 feature series + 24 fresh parts of the region series (6 regions × 4 resources)
    assert out["shards"] == 4 and out["series"] == 84 and out["run_id"] == RUN_ID
    (table_a, manifest_a), (table_b, manifest_b) = _published(single), _published(sharded)
    assert table_b.schema == table_a.schema
    assert table_b.equals(table_a), "sharded forecast rows differ from the single-process forecast"
    assert manifest_b == manifest_a
    assert manifest_b["engine"]["models"] == ["seasonal_naive", "seasonal_mean", "global_gbm"]
    # The split is kept as the run's record; the bulky intermediates are gone.
    work = Path(shards.work_dir(sharded, RUN_ID))
    recorded = json.loads((work / "shards.json").read_text())
    assert [len(s) for s in recorded["shards"]] == [21, 21, 21, 21] and recorded["published"] == out
    assert sorted(p.name for p in work.iterdir()) == ["shards.json"]


def test_a_failed_shard_retries_alone_and_the_run_is_complete(featured_root: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    single = _lake_copy(featured_root, tmp_path / "single")
    engine.run_forecast(INTERVAL, single, models=CHEAP)
    settings = _lake_copy(featured_root, tmp_path / "sharded")
    descriptors = shards.split_shards(INTERVAL, settings, models=CHEAP, series_per_shard=30)  # 84 series
    assert [s["shard"] for s in descriptors] == [0, 1, 2] and {s["shards"] for s in descriptors} == {3}

    # Shard 1 dies once in the middle of its work (worker lost); the others are unaffected.
    split = json.loads((Path(shards.work_dir(settings, RUN_ID)) / "shards.json").read_text())
    doomed, real = set(split["shards"][1]), engine.cross_validate_model
    failures: list[str] = []

    def flaky(p, name):
        if doomed & set(p.ids) and not failures:
            failures.append(name)
            raise RuntimeError("worker lost")
        return real(p, name)

    monkeypatch.setattr(engine, "cross_validate_model", flaky)
    for shard in (2, 1, 0):  # any order: mapped task instances run as workers free up
        if shard == 1:
            with pytest.raises(RuntimeError, match="worker lost"):
                shards.forecast_shard(RUN_ID, shard, settings)
        else:
            shards.forecast_shard(RUN_ID, shard, settings)
    shards.fit_global(RUN_ID, settings)
    data = Path(shards.work_dir(settings, RUN_ID)) / "data"
    (data / ".part-00001-of-00003.pkl.x1y2z3.tmp").write_bytes(b"half a part")  # what a killed writer leaves

    with pytest.raises(shards.MissingShards, match="00001-of-00003"):
        shards.reduce_shards(INTERVAL, settings, models=CHEAP)
    assert not Path(lake.forecast_dir(settings.lake_root, RUN_ID), "forecast.parquet").exists(), "nothing half-published"

    others = {name: (data / f"part-{name}.pkl").read_bytes() for name in ("00000-of-00003", "00002-of-00003", "global")}
    retried = shards.forecast_shard(RUN_ID, 1, settings)  # the retry: this shard only
    assert retried["series"] == 28 and failures == ["seasonal_naive"]
    assert {name: (data / f"part-{name}.pkl").read_bytes() for name in others} == others

    out = shards.reduce_shards(INTERVAL, settings, models=CHEAP)
    (table_a, manifest_a), (table_b, manifest_b) = _published(single), _published(settings)
    assert table_b.equals(table_a) and manifest_b == manifest_a
    assert table_b.num_rows == 60 * settings.horizon_hours, "every series, every step"
    assert shards.reduce_shards(INTERVAL, settings, models=CHEAP) == out, "a retried reduce returns what it published"


def test_parts_of_an_earlier_split_are_rejected(featured_root: Path, tmp_path: Path) -> None:
    settings = _lake_copy(featured_root, tmp_path)
    shards.split_shards(INTERVAL, settings, models=CHEAP, series_per_shard=42)  # 84 series: 2 shards
    shards.forecast_shard(RUN_ID, 0, settings)
    data = Path(shards.work_dir(settings, RUN_ID)) / "data"
    stale = (data / "part-00000-of-00002.pkl").read_bytes()

    shards.split_shards(INTERVAL, settings, models=CHEAP, series_per_shard=42)  # the run is split again
    assert not (data / "part-00000-of-00002.pkl").exists(), "splitting again starts from nothing"
    shards.fit_global(RUN_ID, settings)
    shards.forecast_shard(RUN_ID, 1, settings)
    (data / "part-00000-of-00002.pkl").write_bytes(stale)  # a slow shard of the old split finishing late
    with pytest.raises(shards.MissingShards, match="from another split"):
        shards.reduce_shards(INTERVAL, settings, models=CHEAP)
    shards.forecast_shard(RUN_ID, 0, settings)
    assert shards.reduce_shards(INTERVAL, settings, models=CHEAP)["series"] == 84
    with pytest.raises(ValueError, match="out of range"):
        shards.forecast_shard(RUN_ID, 2, settings)
