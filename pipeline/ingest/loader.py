"""Ingest: read one data interval of a source dataset, validate it, land it in the lake.

Valid rows go to `lake/raw/<dataset>/date=/hour=/`; every other row goes to
`lake/quarantine/<dataset>/...` with its true line number, its raw text, the reason and the
rule it broke (`reason_kind`), and is counted in the report. Nothing is dropped silently.

Each line is read and typed alone (`lines`, `cells`), so one bad line never costs another.
Whether a row is the first valid occurrence of its key depends on the rows before it, and invalid
rows never count as occurrences; so a run checks the lines it places *and every line sharing a key
with one of them*, whichever hour they hold (`_lines_to_check`), and its verdicts are those of a
check of every line. An hourly run over a day file types the time and key cells of the day's other
lines, not the lines. A `request_id` is unique across the whole dataset: the lake's earlier days count.

Where a bad row lands: a row with a readable timestamp in the file's day is quarantined in its own
hour; a row whose time cannot be read (malformed line, unparseable or out-of-day timestamp)
belongs to no hour, so the run whose interval contains the file's first hour (00:00 UTC)
quarantines it. Reference data (calendar, pools, catalog) all belongs to the interval's last hour.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, time
from typing import Any

import pandas as pd
import pyarrow as pa

from pipeline.common import lake, storage
from pipeline.common.config import Settings
from pipeline.common.intervals import HOUR, DataInterval
from pipeline.common.schemas import QUARANTINE, REFERENCE_SOURCES, SOURCES, UTC_TS
from pipeline.ingest.cells import shown, type_columns, type_row
from pipeline.ingest.expectations import ROW_KEY, failing_rows
from pipeline.ingest.lines import Problem, SourceLine, SourceUnreadable, read_lines

__all__ = ["IngestReport", "SourceFileMissing", "SourceUnreadable", "ingest", "ingest_all", "known_regions"]

DUPLICATE_KEYS: dict[str, list[str]] = {
    "peering_requests": ["request_id"],
    "region_telemetry": ["ts", "region"],
    "app_telemetry": ["ts", "region"],
    "calendar": ["event_id"],
    "resource_pools": ["region", "resource_type"],
    "instance_catalog": ["region", "instance_type"],
}
# Keys unique across the whole dataset, not only within a file: earlier days in the lake count.
# (Telemetry keys hold their time, which pins them to one day file; reference data is one file.)
DATASET_WIDE_KEYS: dict[str, str] = {"peering_requests": "request_id"}
# A daily source file: peering_requests/YYYY-MM-DD.csv (or .jsonl, .parquet, .csv.gz).
_DAY_FILE = re.compile(r"^(\d{4}-\d{2}-\d{2})\.[A-Za-z0-9.]+$")


class SourceFileMissing(FileNotFoundError):
    """A source file the interval needs does not exist."""


@dataclass
class IngestReport:
    """What one ingest did: counts per outcome and quarantine reasons (by rule broken)."""

    dataset: str
    interval: str
    source_files: list[str]
    rows_read: int = 0
    rows_valid: int = 0
    rows_quarantined: int = 0
    quarantine_reasons: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def source_files_for(dataset: str, interval: DataInterval, source_root: str) -> list[str]:
    """The files that hold `dataset` for `interval`; raise SourceFileMissing naming the first absent one."""
    spec = SOURCES[dataset]
    if spec["time_column"] is None:
        paths = [storage.join(source_root, spec["path"])]
    else:
        paths = [storage.join(source_root, dataset, f"{day:%Y-%m-%d}.{spec['ext']}") for day in interval.days()]
    for path in paths:
        if not storage.exists(path):
            layout = spec.get("path") or f"{dataset}/YYYY-MM-DD.{spec['ext']} (one file per UTC day)"
            raise SourceFileMissing(
                f"source file not found: {path} — dataset {dataset!r} needs it for interval {interval}. "
                f"Expected layout under the source root: {layout}; see data_samples/README.md."
            )
    return paths


def last_source_day(source_root: str) -> date:
    """The last UTC day with a `peering_requests/YYYY-MM-DD.*` file under a local or s3:// source."""
    folder = storage.join(source_root, "peering_requests")
    days = sorted(date.fromisoformat(m.group(1)) for name in storage.list_names(folder) if (m := _DAY_FILE.match(name)))
    if not days:
        raise FileNotFoundError(f"no peering_requests/YYYY-MM-DD.* files under {source_root}: point --source (or PEERSCALE_SOURCE) "
                                "at a source root in the documented layout (see data_samples/README.md)")
    return days[-1]


def known_regions(source_root: str) -> list[str]:
    """Regions peerscale knows: those with a *valid* row in the resource pool inventory.

    A pool row that is quarantined (an infinite quantity, a bad resource type) does not make its
    region known, or requests to a region without a usable pool would pass ingest.
    """
    path = storage.join(source_root, SOURCES["resource_pools"]["path"])
    if not storage.exists(path):
        raise SourceFileMissing(f"source file not found: {path} — the resource pool inventory defines the known regions.")
    checked = _check_file(path, dataset="resource_pools", regions=[], seen={})
    valid = checked.rows[~checked.rows[ROW_KEY].isin(list(checked.problems))]
    return sorted(set(valid["region"].dropna()))


@dataclass(frozen=True)
class _CheckedFile:
    """Every non-blank line of one source file, typed, with the problems of the bad ones.

    `rows` holds one row per line (ROW_KEY, line_number, raw, the schema's columns; a value that
    could not be typed is None), `problems` maps a row key to what is wrong with it.
    """

    uri: str
    rows: pd.DataFrame
    problems: dict[int, list[Problem]]
    lines_read: int  # every non-blank line of the file, checked or not


def _check_file(uri: str, *, dataset: str, regions: Sequence[str], seen: dict[Any, str],
                earlier: Callable[[list[Any]], dict[Any, str]] | None = None,
                only_for: DataInterval | None = None) -> _CheckedFile:
    """Read, type and validate the lines of one file; `seen` (key → where) gains its valid keys.

    earlier: the lake's keys (key → where) among the given values of the dataset-wide key column
    (`_earlier_keys`), added to `seen` before the duplicate check.
    only_for: check only the lines a run over this interval needs (`_lines_to_check`): the verdicts
    of those lines are the same as when every line is checked, so a day file's hourly runs stop
    re-checking its earlier hours. Only for a run that reads this one file (a key seen in another
    file of the run would need that file's lines too)."""
    spec = SOURCES[dataset]
    schema: pa.Schema = spec["schema"]
    lines = read_lines(storage.read_bytes(uri), uri=uri, columns=schema.names, ext=spec["ext"])
    day = _file_day(uri) if spec["time_column"] else None
    from_json = spec["ext"] == "jsonl"
    keys = (range(len(lines)) if only_for is None or day is None
            else _lines_to_check(lines, dataset=dataset, day=day, interval=only_for))
    records: list[dict[str, Any]] = []
    problems: dict[int, list[Problem]] = {}
    for key in keys:
        line = lines[key]
        typed, found = _type_line(line, schema, from_json=from_json)
        if day is not None:
            found += _check_day(typed, spec["time_column"], day)
        if found:
            problems[key] = found
        records.append({ROW_KEY: key, "line_number": line.number, "raw": line.raw, **typed})
    rows = _frame(records, schema)
    candidates = rows[~rows[ROW_KEY].isin(list(problems))]
    if len(candidates):
        for key, found in failing_rows(dataset, candidates.drop(columns=["line_number", "raw"]), regions).items():
            problems.setdefault(key, []).extend(found)
    column = DATASET_WIDE_KEYS.get(dataset)
    if earlier is not None and column is not None:
        for identity, where in earlier(rows[column].dropna().unique().tolist()).items():
            seen.setdefault(identity, where)
    _flag_duplicates(rows, dataset=dataset, problems=problems, seen=seen, file_name=uri.rsplit("/", 1)[-1])
    return _CheckedFile(uri=uri, rows=rows, problems=problems, lines_read=len(lines))


def _lines_to_check(lines: list[SourceLine], *, dataset: str, day: date, interval: DataInterval) -> list[int]:
    """Indexes (in file order) of the lines of a day file that a run over `interval` must check: those
    it places — their time in the interval, or no usable time (a malformed line, a time that cannot
    be read or lies outside the file's day) when the interval holds the day's first hour (see the
    module docstring) — and every line sharing a duplicate key with one of those.

    Why that is enough: a row's own problems depend on its line alone; the expectations are
    row-level; and whether it repeats an earlier valid row of its key depends only on the earlier
    lines of that key, whose own verdicts depend only on lines of the same key again. Only the
    time column and the key columns of the other lines are typed (by the same rules)."""
    spec = SOURCES[dataset]
    time_column: str = spec["time_column"]
    key_columns = DUPLICATE_KEYS[dataset]
    names = list(dict.fromkeys([time_column, *key_columns]))
    owns_unplaced = interval.start <= datetime.combine(day, time(), UTC) < interval.end
    placed: list[int] = []
    key_of: list[tuple[Any, ...] | None] = []
    for index, line in enumerate(lines):
        if line.fields is None:
            key_of.append(None)
            if owns_unplaced:
                placed.append(index)
            continue
        typed = type_columns(line.fields, spec["schema"], names, from_json=spec["ext"] == "jsonl")
        _check_day(typed, time_column, day)  # misfiled: it places nowhere
        ts = typed[time_column]
        values = tuple(typed[c] for c in key_columns)
        key_of.append(None if any(v is None for v in values) else values)
        if (owns_unplaced if ts is None else interval.start <= ts < interval.end):
            placed.append(index)
    wanted = {key_of[i] for i in placed} - {None}
    chosen = set(placed)
    return [i for i, key in enumerate(key_of) if i in chosen or (key is not None and key in wanted)]


def _type_line(line: SourceLine, schema: pa.Schema, *, from_json: bool) -> tuple[dict[str, Any], list[Problem]]:
    if line.fields is None:
        return dict.fromkeys(schema.names), [line.problem] if line.problem else []
    return type_row(line.fields, schema, from_json=from_json)


def _check_day(typed: dict[str, Any], time_column: str, day: date) -> list[Problem]:
    """A day file holds its UTC day only; a row outside it is misfiled (or its clock is skewed)."""
    ts = typed[time_column]
    if ts is None or ts.date() == day:
        return []
    typed[time_column] = None  # it places nowhere (and may lie outside what pandas can hold)
    return [Problem(f"{time_column}: outside the file's day",
                    f"{time_column} {ts.isoformat()} is outside the file's day {day} (clock skew or misfiled row)")]


def _frame(records: list[dict[str, Any]], schema: pa.Schema) -> pd.DataFrame:
    """The typed rows as a frame: floats as float64, timestamps as UTC datetimes, the rest as objects."""
    rows = pd.DataFrame.from_records(records, columns=[ROW_KEY, "line_number", "raw", *schema.names])
    for fld in schema:
        if pa.types.is_timestamp(fld.type):
            rows[fld.name] = pd.to_datetime(rows[fld.name], utc=True)
        elif pa.types.is_floating(fld.type):
            rows[fld.name] = pd.to_numeric(rows[fld.name]).astype("float64")
    return rows


def _flag_duplicates(
    rows: pd.DataFrame, *, dataset: str, problems: dict[int, list[Problem]], seen: dict[Any, str], file_name: str
) -> None:
    """A valid row repeating the key of an earlier *valid* row is a duplicate; the first one stays.

    Rows that already failed are no occurrence at all, so a broken row never turns the corrected
    row after it into a "duplicate". `seen` holds the keys of earlier files and of the lake.
    """
    columns = DUPLICATE_KEYS[dataset]
    kind = f"duplicate {'+'.join(columns)}"
    for key, line_number, *values in rows[[ROW_KEY, "line_number", *columns]].itertuples(index=False):
        if key in problems or any(v is None or v != v for v in values):
            continue
        identity = tuple(values)
        if identity in seen:
            shown_key = shown(values[0] if len(values) == 1 else identity)
            problems[key] = [Problem(kind, f"{kind}: {shown_key} already seen ({seen[identity]})")]
        else:
            seen[identity] = f"line {line_number} of {file_name}"


def _earlier_keys(settings: Settings, dataset: str, before: date, values: list[Any]) -> dict[Any, str]:
    """Those of `values` that are dataset-wide keys already in the lake on days before `before`
    (their day says where).

    Only earlier days count, so re-running a day gives the verdicts of its first run. This scans
    one column of every earlier hour partition (its cost grows with the lake's history), filtered
    in Arrow: only the keys of the file being checked become Python objects (every key of the
    lake as a Python dict took 0.2 GB at 30 regions, 0.53M keys; 6.5M at 100 regions).
    """
    column = DATASET_WIDE_KEYS.get(dataset)
    if column is None or not values:
        return {}
    import pyarrow.dataset as ds
    import pyarrow.fs as pafs

    base = lake.raw_dir(settings.lake_root, dataset)
    fs, path = storage.filesystem(base)

    def read() -> pa.Table:
        if fs.get_file_info(path).type == pafs.FileType.NotFound:
            return pa.table({column: pa.array([], pa.string()), "date": pa.array([], pa.string())})
        found = ds.dataset(path, filesystem=fs, format="parquet", partitioning=lake.HIVE)
        wanted = ds.field(column).isin(pa.array(values, found.schema.field(column).type))
        return found.to_table(columns=[column, "date"], filter=(ds.field("date") < f"{before:%Y-%m-%d}") & wanted)

    table = storage.with_retries("read dataset", base, read)
    keys: dict[Any, str] = {}
    for value, day in zip(table.column(column).to_pylist(), table.column("date").to_pylist()):
        keys.setdefault((value,), f"ingested from the day file of {day}")
    return keys


@dataclass(frozen=True)
class _Ingest:
    """What every source file of one ingest shares."""

    dataset: str
    interval: DataInterval
    regions: list[str]
    time_column: str | None


def ingest(dataset: str, interval: DataInterval, settings: Settings, regions: Sequence[str] | None = None) -> IngestReport:
    """Ingest `dataset` for `interval` into the lake; idempotent for the interval."""
    if dataset not in SOURCES:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {sorted(SOURCES)}")
    run = _Ingest(
        dataset=dataset,
        interval=interval,
        regions=list(regions) if regions is not None else known_regions(settings.source_root),
        time_column=SOURCES[dataset]["time_column"],
    )
    files = source_files_for(dataset, interval, settings.source_root)
    report = IngestReport(dataset=dataset, interval=str(interval), source_files=files)
    seen: dict[Any, str] = {}  # gains the lake's keys file by file, those the file holds (_check_file)

    def earlier(values: list[Any]) -> dict[Any, str]:
        return _earlier_keys(settings, dataset, interval.start.date(), values)

    valid_parts: list[pd.DataFrame] = []
    quarantine_parts: list[pd.DataFrame] = []
    only_for = interval if len(files) == 1 else None  # see _check_file
    for uri in files:
        checked = _check_file(uri, dataset=dataset, regions=run.regions, seen=seen, earlier=earlier, only_for=only_for)
        report.rows_read += checked.lines_read
        valid, bad = _split(checked, run)
        valid_parts.append(valid)
        quarantine_parts.append(bad)

    report.rows_valid = _write_valid(valid_parts, run, settings)
    non_empty = [part for part in quarantine_parts if len(part)]
    quarantined = pd.concat(non_empty, ignore_index=True) if non_empty else quarantine_parts[0]
    report.rows_quarantined = _write_quarantine(quarantined, dataset, interval, settings)
    for kinds in quarantined["reason_kind"]:
        for kind in kinds.split("; "):
            report.quarantine_reasons[kind] = report.quarantine_reasons.get(kind, 0) + 1
    lake.write_json_atomic(lake.ingest_manifest_path(settings.lake_root, dataset, interval), report.to_dict())
    return report


def _split(checked: _CheckedFile, run: _Ingest) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The file's valid rows inside the interval, and the bad rows this run quarantines."""
    rows, interval = checked.rows, run.interval
    if run.time_column:
        hour = rows[run.time_column].dt.floor("h")
        unplaced_hour = pd.Timestamp(_file_day(checked.uri), tz="UTC")
    else:
        hour = pd.Series(pd.Timestamp(interval.end - HOUR), index=rows.index)
        unplaced_hour = pd.Timestamp(interval.end - HOUR)
    owns_unplaced = interval.start <= unplaced_hour.to_pydatetime() < interval.end
    in_interval = hour.notna() & (hour >= pd.Timestamp(interval.start)) & (hour < pd.Timestamp(interval.end))
    is_bad = rows[ROW_KEY].isin(list(checked.problems))
    take_bad = is_bad & (in_interval | (hour.isna() & owns_unplaced))
    bad = rows[take_bad]
    quarantined = pd.DataFrame({
        "dataset": run.dataset,
        "source_file": checked.uri,
        "line_number": bad["line_number"].astype("int64").to_numpy(),
        "reason": ["; ".join(p.message for p in checked.problems[int(k)]) for k in bad[ROW_KEY]],
        "raw": bad["raw"].to_numpy(),
        "reason_kind": ["; ".join(dict.fromkeys(p.kind for p in checked.problems[int(k)])) for k in bad[ROW_KEY]],
        "partition_hour": hour[take_bad].fillna(unplaced_hour).to_numpy(),
    })
    return rows[in_interval & ~is_bad], quarantined


def _write_valid(valid_parts: list[pd.DataFrame], run: _Ingest, settings: Settings) -> int:
    """Land the valid rows in their hour partitions (sorted for stable files); returns the row count."""
    spec = SOURCES[run.dataset]
    columns, time_column, interval = spec["schema"].names, run.time_column, run.interval
    parts = [part for part in valid_parts if len(part)]
    valid = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)
    valid = valid.sort_values([c for c in (time_column, *DUPLICATE_KEYS[run.dataset]) if c], kind="stable") if len(valid) else valid
    table = _to_arrow(valid[columns] if len(valid) else spec["schema"].empty_table().to_pandas(), spec["schema"])
    write_interval = interval if time_column else DataInterval(interval.end - HOUR, interval.end)
    return lake.write_hour_partitions(table, lake.raw_dir(settings.lake_root, run.dataset), time_column, write_interval)


def _file_day(uri: str) -> date:
    name = uri.rsplit("/", 1)[-1].split(".", 1)[0]
    try:
        return date.fromisoformat(name)
    except ValueError as exc:
        raise SourceUnreadable(f"{uri}: daily source files must be named YYYY-MM-DD.<ext>") from exc


def _to_arrow(frame: pd.DataFrame, schema: pa.Schema) -> pa.Table:
    """Convert a typed frame to the dataset's Arrow schema (UTC microsecond timestamps)."""
    arrays = []
    for fld in schema:
        column = frame[fld.name]
        if pa.types.is_timestamp(fld.type):
            arrays.append(pa.array(pd.to_datetime(column, utc=True), type=pa.timestamp("ns", tz="UTC")).cast(fld.type))
        elif pa.types.is_date(fld.type):
            arrays.append(pa.array(list(column), type=fld.type))
        else:
            arrays.append(pa.array(column.tolist(), type=fld.type, from_pandas=True))
    return pa.Table.from_arrays(arrays, schema=schema)


def _write_quarantine(frame: pd.DataFrame, dataset: str, interval: DataInterval, settings: Settings) -> int:
    base = lake.quarantine_dir(settings.lake_root, dataset)
    schema = QUARANTINE.append(pa.field("partition_hour", UTC_TS))
    if frame.empty:
        return lake.write_hour_partitions(schema.empty_table(), base, "partition_hour", interval)
    frame = frame.assign(partition_hour=pd.to_datetime(frame["partition_hour"], utc=True))
    frame = frame.sort_values(["partition_hour", "source_file", "line_number"], kind="stable")
    return lake.write_hour_partitions(_to_arrow(frame, schema), base, "partition_hour", interval)


def ingest_all(interval: DataInterval, settings: Settings, datasets: Sequence[str] | None = None) -> list[IngestReport]:
    """Ingest reference data and every time-partitioned dataset for one interval."""
    names = list(datasets) if datasets else [*REFERENCE_SOURCES, *[d for d in SOURCES if d not in REFERENCE_SOURCES]]
    regions = known_regions(settings.source_root)
    return [ingest(name, interval, settings, regions) for name in names]
