"""The Parquet lake's layout and its partitioned reads and writes.

Raw and quarantine data are Hive-partitioned by `date=YYYY-MM-DD/hour=HH`; a write replaces
exactly the hour partitions of its interval, so re-running an interval is idempotent.
"""

from __future__ import annotations

import json
from datetime import datetime

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from pipeline.common import storage
from pipeline.common.intervals import DataInterval

PARTITION_SCHEMA = pa.schema([("date", pa.string()), ("hour", pa.string())])
HIVE = ds.partitioning(PARTITION_SCHEMA, flavor="hive")


def raw_dir(lake_root: str, dataset: str) -> str:
    return storage.join(lake_root, "raw", dataset)


def quarantine_dir(lake_root: str, dataset: str) -> str:
    return storage.join(lake_root, "quarantine", dataset)


def ingest_manifest_path(lake_root: str, dataset: str, interval: DataInterval) -> str:
    return storage.join(lake_root, "_ingest", dataset, f"{interval.start:%Y%m%dT%H%MZ}-{interval.token}.json")


def features_path(lake_root: str, name: str, run_token: str) -> str:
    return storage.join(lake_root, "features", name, f"run={run_token}", "part-0.parquet")


def forecast_dir(lake_root: str, run_id: str) -> str:
    return storage.join(lake_root, "forecasts", f"run={run_id}")


def plans_root(lake_root: str) -> str:
    return storage.join(lake_root, "plans")


def plan_dir(lake_root: str, plan_id: str) -> str:
    return storage.join(lake_root, "plans", f"plan_id={plan_id}")


def latest_pointer(lake_root: str) -> str:
    return storage.join(lake_root, "plans", "LATEST")


def hour_partition(base: str, hour: datetime) -> str:
    return storage.join(base, f"date={hour:%Y-%m-%d}", f"hour={hour:%H}")


def write_hour_partitions(table: pa.Table, base: str, time_column: str | None, interval: DataInterval) -> int:
    """Replace every hour partition of `interval` under `base` with the rows of `table`.

    Rows are placed by `time_column` (or all into the interval's first hour when None).
    Partitions of the interval that receive no rows are removed, so a re-run never leaves
    stale rows behind. Returns the number of rows written.
    """
    for hour in interval.hours():
        storage.delete_dir(hour_partition(base, hour))
    if table.num_rows == 0:
        return 0
    if time_column is None:
        dates = pa.array([f"{interval.start:%Y-%m-%d}"] * table.num_rows)
        hours = pa.array([f"{interval.start:%H}"] * table.num_rows)
    else:
        ts = table.column(time_column)
        dates = pc.strftime(ts, format="%Y-%m-%d", locale="C")
        hours = pc.strftime(ts, format="%H", locale="C")
    with_keys = table.append_column("date", dates).append_column("hour", hours)
    fs, path = storage.filesystem(base)
    # Idempotent (delete_matching replaces the same partitions), so a transient S3 error retries it whole.
    storage.with_retries(
        "write dataset",
        base,
        lambda: ds.write_dataset(
            with_keys,
            path,
            filesystem=fs,
            format="parquet",
            partitioning=HIVE,
            existing_data_behavior="delete_matching",
            basename_template="part-{i}.parquet",
        ),
    )
    return table.num_rows


def read_partitioned(base: str, schema: pa.Schema | None = None, filter_expr: ds.Expression | None = None) -> pa.Table:
    """Read a Hive-partitioned dataset (typed partition keys); an absent dataset reads as empty."""
    fs, path = storage.filesystem(base)

    def read() -> pa.Table:
        if fs.get_file_info(path).type == pafs.FileType.NotFound:
            if schema is None:
                return pa.table({})
            return schema.empty_table()
        dataset = ds.dataset(path, filesystem=fs, format="parquet", partitioning=HIVE)
        return dataset.to_table(filter=filter_expr)

    return storage.with_retries("read dataset", base, read)


def write_parquet_atomic(table: pa.Table, uri: str) -> None:
    """One Parquet file (zstd), published atomically: readers see the old file or the new one."""
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    storage.write_bytes_atomic(uri, sink.getvalue().to_pybytes())


def write_json_atomic(uri: str, payload: dict) -> None:
    storage.write_text_atomic(uri, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def read_json(uri: str) -> dict:
    return json.loads(storage.read_text(uri))


def read_reference(lake_root: str, dataset: str, as_of: datetime) -> pa.Table:
    """The newest snapshot of a reference dataset (pools, catalog, calendar) ingested before `as_of`.

    Raises FileNotFoundError with the fix when none exists yet, since nothing can be planned
    without an inventory.
    """
    table = read_partitioned(raw_dir(lake_root, dataset))
    if table.num_rows:
        stamp = pc.binary_join_element_wise(table.column("date"), table.column("hour"), "T")
        cutoff = f"{as_of:%Y-%m-%d}T{as_of:%H}"
        eligible = pc.less(stamp, cutoff)
        if pc.any(eligible).as_py():
            newest = pc.max(pc.filter(stamp, eligible)).as_py()
            return table.filter(pc.equal(stamp, newest)).drop_columns(["date", "hour"])
    raise FileNotFoundError(
        f"no snapshot of {dataset!r} in the lake before {as_of.isoformat()}: "
        f"ingest it first (peerscale ingest --to {as_of:%Y-%m-%dT%H:%M})"
    )


def read_time_range(lake_root: str, dataset: str, start: datetime, end: datetime, time_column: str) -> pa.Table:
    """Rows of a time-partitioned raw dataset with start <= time < end (partition-pruned)."""
    first, last = f"{start:%Y-%m-%d}", f"{end:%Y-%m-%d}"
    expr = (ds.field("date") >= first) & (ds.field("date") <= last)
    table = read_partitioned(raw_dir(lake_root, dataset), filter_expr=expr)
    if table.num_rows == 0:
        return table
    ts = table.column(time_column)
    mask = pc.and_(pc.greater_equal(ts, pa.scalar(start, type=ts.type)), pc.less(ts, pa.scalar(end, type=ts.type)))
    return table.filter(mask).drop_columns(["date", "hour"])
