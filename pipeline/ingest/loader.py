"""Ingest: read one data interval of a source dataset, validate it, land it in the lake.

Valid rows go to `lake/raw/<dataset>/date=/hour=/`; every other row goes to
`lake/quarantine/<dataset>/...` with its line number, its raw text and the reason, and is
counted in the report. Nothing is dropped silently.

Where a bad row lands: a row with a readable timestamp is quarantined in its own hour; a row
whose time cannot be read (malformed line, unparseable or out-of-day timestamp) belongs to no
hour, so the run whose interval contains the file's first hour (00:00 UTC) quarantines it.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta

import pandas as pd
import pyarrow as pa

from pipeline.common import lake, storage
from pipeline.common.config import Settings
from pipeline.common.intervals import DataInterval
from pipeline.common.schemas import QUARANTINE, REFERENCE_SOURCES, SOURCES, UTC_TS
from pipeline.ingest.expectations import ROW_KEY, failing_rows

DUPLICATE_KEYS: dict[str, list[str]] = {
    "peering_requests": ["request_id"],
    "region_telemetry": ["ts", "region"],
    "app_telemetry": ["ts", "region"],
    "calendar": ["event_id"],
    "resource_pools": ["region", "resource_type"],
    "instance_catalog": ["region", "instance_type"],
}
# A daily source file: peering_requests/YYYY-MM-DD.csv (or .jsonl, .parquet, .csv.gz).
_DAY_FILE = re.compile(r"^(\d{4}-\d{2}-\d{2})\.[A-Za-z0-9.]+$")


class SourceFileMissing(FileNotFoundError):
    """A source file the interval needs does not exist."""


class SourceUnreadable(ValueError):
    """A source file exists but cannot be read at all (not one row could be recovered)."""


@dataclass
class IngestReport:
    """What one ingest did: counts per outcome and quarantine reasons."""

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
    """Regions peerscale knows: those in the resource pool inventory (anything else is 'unknown')."""
    path = storage.join(source_root, SOURCES["resource_pools"]["path"])
    if not storage.exists(path):
        raise SourceFileMissing(f"source file not found: {path} — the resource pool inventory defines the known regions.")
    rows = list(csv.DictReader(io.StringIO(storage.read_text(path))))
    return sorted({(r.get("region") or "").strip() for r in rows if (r.get("region") or "").strip()})


def _read_lines(uri: str, dataset: str) -> tuple[list[dict], list[dict]]:
    """Parse a CSV or JSONL file into string records (with line numbers) and unparseable lines."""
    spec = SOURCES[dataset]
    columns = spec["schema"].names
    try:
        text = storage.read_bytes(uri).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SourceUnreadable(f"{uri} is not UTF-8 text ({exc}); re-export it as UTF-8 CSV/JSONL.") from exc
    records: list[dict] = []
    bad: list[dict] = []
    if spec["ext"] == "jsonl":
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                if not isinstance(obj, dict):
                    raise ValueError("not a JSON object")
            except ValueError as exc:
                bad.append({"line_number": number, "reason": f"malformed JSON line: {exc}", "raw": line})
                continue
            missing = [c for c in columns if c not in obj]
            if missing:
                bad.append({"line_number": number, "reason": f"malformed row: missing fields {missing}", "raw": line})
                continue
            records.append({c: None if obj[c] is None else str(obj[c]) for c in columns} | {"line_number": number})
        return records, bad
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise SourceUnreadable(f"{uri} is empty: expected a header row {','.join(columns)}") from None
    header = [h.strip() for h in header]
    missing = [c for c in columns if c not in header]
    if missing:
        raise SourceUnreadable(f"{uri}: header lacks columns {missing}; expected {','.join(columns)}")
    index = [header.index(c) for c in columns]
    for row in reader:
        number = reader.line_num
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            bad.append({
                "line_number": number,
                "reason": f"malformed row: expected {len(header)} fields, got {len(row)}",
                "raw": ",".join(row),
            })
            continue
        records.append({c: row[i].strip() for c, i in zip(columns, index)} | {"line_number": number})
    return records, bad


def _coerce(dataset: str, frame: pd.DataFrame) -> tuple[pd.DataFrame, dict[int, list[str]]]:
    """Type every column by the dataset schema; non-empty values that do not parse are reasons."""
    schema = SOURCES[dataset]["schema"]
    typed = frame[[ROW_KEY, "line_number"]].copy()
    problems: dict[int, list[str]] = {}
    for fld in schema:
        raw = frame[fld.name].where(frame[fld.name].notna(), None)
        blank = raw.isna() | (raw.astype("string").str.strip() == "")
        if pa.types.is_timestamp(fld.type):
            values = pd.to_datetime(raw.where(~blank), utc=True, format="ISO8601", errors="coerce")
        elif pa.types.is_floating(fld.type) or pa.types.is_integer(fld.type):
            values = pd.to_numeric(raw.where(~blank), errors="coerce")
        elif pa.types.is_date(fld.type):
            values = pd.to_datetime(raw.where(~blank), format="%Y-%m-%d", errors="coerce").dt.date
        else:
            values = raw.where(~blank, None)
        failed = values.isna() & ~blank
        for key, value in zip(frame.loc[failed, ROW_KEY], raw[failed]):
            problems.setdefault(int(key), []).append(f"{fld.name}: cannot parse {value!r} as {fld.type}")
        typed[fld.name] = values
    return typed, problems


def _raw_json(frame: pd.DataFrame, columns: Sequence[str]) -> pd.Series:
    return frame[list(columns)].apply(lambda r: json.dumps({c: r[c] for c in columns}, default=str), axis=1)


@dataclass(frozen=True)
class _Ingest:
    """What every source file of one ingest shares."""

    dataset: str
    interval: DataInterval
    regions: list[str]
    columns: list[str]
    time_column: str | None


@dataclass(frozen=True)
class _Placement:
    """Where one file's rows land: the hour each belongs to (NaT when its time is unknown), and
    whether this run is the one that quarantines the rows that belong to no hour."""

    hour: pd.Series
    unattributable_hour: pd.Timestamp
    owns_unattributable: bool


@dataclass
class _FileOutcome:
    """One source file split into rows to land and rows to quarantine."""

    valid: pd.DataFrame
    quarantine: list[pd.DataFrame] = field(default_factory=list)


def ingest(dataset: str, interval: DataInterval, settings: Settings, regions: Sequence[str] | None = None) -> IngestReport:
    """Ingest `dataset` for `interval` into the lake; idempotent for the interval."""
    if dataset not in SOURCES:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {sorted(SOURCES)}")
    spec = SOURCES[dataset]
    run = _Ingest(
        dataset=dataset,
        interval=interval,
        regions=list(regions) if regions is not None else known_regions(settings.source_root),
        columns=spec["schema"].names,
        time_column=spec["time_column"],
    )
    files = source_files_for(dataset, interval, settings.source_root)
    report = IngestReport(dataset=dataset, interval=str(interval), source_files=files)

    valid_parts: list[pd.DataFrame] = []
    quarantine_parts: list[pd.DataFrame] = []
    for uri in files:
        outcome = _ingest_file(uri, run, report)
        valid_parts.append(outcome.valid)
        quarantine_parts.extend(outcome.quarantine)

    report.rows_valid = _write_valid(valid_parts, run, settings)
    quarantined = pd.concat(quarantine_parts, ignore_index=True) if quarantine_parts else None
    report.rows_quarantined = _write_quarantine(quarantined, dataset, interval, settings)
    if quarantined is not None:
        _count_reasons(quarantined, report)
    lake.write_json_atomic(lake.ingest_manifest_path(settings.lake_root, dataset, interval), report.to_dict())
    return report


def _ingest_file(uri: str, run: _Ingest, report: IngestReport) -> _FileOutcome:
    """Read, type and check one source file; count what was read in `report`."""
    records, bad_lines = _read_lines(uri, run.dataset)
    report.rows_read += len(records) + len(bad_lines)
    file_day = _file_day(uri) if run.time_column else None
    frame = pd.DataFrame.from_records(records, columns=[*run.columns, "line_number"])
    frame.insert(0, ROW_KEY, range(len(frame)))
    typed, reasons = _coerce(run.dataset, frame)
    _flag_duplicates(typed, DUPLICATE_KEYS[run.dataset], reasons)
    placement = _place_rows(typed, run, file_day=file_day, reasons=reasons)
    in_interval = (
        placement.hour.notna()
        & (placement.hour >= pd.Timestamp(run.interval.start))
        & (placement.hour < pd.Timestamp(run.interval.end))
    )

    candidates = typed[in_interval & ~typed[ROW_KEY].isin(list(reasons))]
    reasons.update(failing_rows(run.dataset, candidates.drop(columns=["line_number"]), run.regions) if len(candidates) else {})

    is_bad = typed[ROW_KEY].isin(set(reasons))
    take_bad = is_bad & (in_interval | (placement.hour.isna() & placement.owns_unattributable))
    outcome = _FileOutcome(valid=typed[in_interval & ~is_bad])
    if take_bad.any():
        rows = frame.loc[take_bad.values]
        outcome.quarantine.append(pd.DataFrame({
            "dataset": run.dataset,
            "source_file": uri,
            "line_number": rows["line_number"].astype("int64").values,
            "reason": ["; ".join(reasons[int(k)]) for k in rows[ROW_KEY]],
            "raw": _raw_json(rows, run.columns).values,
            "partition_hour": list(placement.hour[take_bad].fillna(placement.unattributable_hour)),
        }))
    if bad_lines and placement.owns_unattributable:
        outcome.quarantine.append(pd.DataFrame({
            "dataset": run.dataset,
            "source_file": uri,
            "line_number": [b["line_number"] for b in bad_lines],
            "reason": [b["reason"] for b in bad_lines],
            "raw": [b["raw"] for b in bad_lines],
            "partition_hour": [placement.unattributable_hour] * len(bad_lines),
        }))
    return outcome


def _flag_duplicates(typed: pd.DataFrame, dup_cols: list[str], reasons: dict[int, list[str]]) -> None:
    """A row repeating an earlier row's key (all key columns present) is a reason; the first one stays."""
    dup = typed.duplicated(subset=dup_cols, keep="first") & typed[dup_cols].notna().all(axis=1)
    for key in typed.loc[dup, ROW_KEY]:
        reasons.setdefault(int(key), []).append(f"duplicate {'+'.join(dup_cols)} (an earlier row in the file has it)")


def _place_rows(typed: pd.DataFrame, run: _Ingest, *, file_day: date | None, reasons: dict[int, list[str]]) -> _Placement:
    """The hour each row belongs to; a timestamp outside the file's day is a reason and places nowhere.

    Reference data (no time column) belongs to the interval's last hour.
    """
    interval = run.interval
    if run.time_column:
        ts = typed[run.time_column]
        day_start = pd.Timestamp(file_day, tz="UTC")
        out_of_day = ts.notna() & ((ts < day_start) | (ts >= day_start + pd.Timedelta(days=1)))
        for key, value in zip(typed.loc[out_of_day, ROW_KEY], ts[out_of_day]):
            reasons.setdefault(int(key), []).append(
                f"{run.time_column} {value.isoformat()} is outside the file's day {file_day} (clock skew or misfiled row)"
            )
        hour = ts.where(ts.notna() & ~out_of_day).dt.floor("h")
    else:
        hour = pd.Series(pd.Timestamp(interval.end - timedelta(hours=1)), index=typed.index)
    unattributable_hour = pd.Timestamp(file_day, tz="UTC") if run.time_column else pd.Timestamp(interval.start)
    return _Placement(
        hour=hour,
        unattributable_hour=unattributable_hour,
        owns_unattributable=interval.start <= unattributable_hour.to_pydatetime() < interval.end,
    )


def _write_valid(valid_parts: list[pd.DataFrame], run: _Ingest, settings: Settings) -> int:
    """Land the valid rows in their hour partitions (sorted for stable files); returns the row count."""
    spec = SOURCES[run.dataset]
    columns, time_column, interval = run.columns, run.time_column, run.interval
    valid = pd.concat(valid_parts, ignore_index=True) if valid_parts else pd.DataFrame(columns=columns)
    valid = valid.sort_values([c for c in (time_column, *DUPLICATE_KEYS[run.dataset]) if c], kind="stable") if len(valid) else valid
    table = _to_arrow(valid[columns] if len(valid) else spec["schema"].empty_table().to_pandas(), spec["schema"])
    write_interval = interval if time_column else DataInterval(interval.end - timedelta(hours=1), interval.end)
    return lake.write_hour_partitions(table, lake.raw_dir(settings.lake_root, run.dataset), time_column, write_interval)


def _count_reasons(quarantined: pd.DataFrame, report: IngestReport) -> None:
    """Tally quarantine reasons by kind for the report."""
    for text in quarantined["reason"]:
        for reason in text.split("; "):
            key = _reason_kind(reason)
            report.quarantine_reasons[key] = report.quarantine_reasons.get(key, 0) + 1


def _reason_kind(reason: str) -> str:
    """Group reasons for the report: keep what was wrong, drop the offending values."""
    column, _, detail = reason.partition(": ")
    for marker, label in (
        ("unknown region", "unknown region"),
        ("cannot parse", "cannot parse"),
        ("out of range", "out of range"),
        ("missing value", "missing value"),
        ("expected", "wrong number of fields"),
        ("is outside the file's day", "outside the file's day"),
    ):
        if marker in detail or (marker in reason and not detail):
            return f"{column}: {label}"
    if reason.startswith("duplicate"):
        return reason.split(" (")[0]
    return reason if not detail else f"{column}: {detail.split(' ')[0]}…"


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


def _write_quarantine(frame: pd.DataFrame | None, dataset: str, interval: DataInterval, settings: Settings) -> int:
    base = lake.quarantine_dir(settings.lake_root, dataset)
    schema = QUARANTINE.append(pa.field("partition_hour", UTC_TS))
    if frame is None or frame.empty:
        return lake.write_hour_partitions(schema.empty_table(), base, "partition_hour", interval)
    frame = frame.assign(partition_hour=pd.to_datetime(frame["partition_hour"], utc=True))
    frame = frame.sort_values(["partition_hour", "source_file", "line_number"], kind="stable")
    table = _to_arrow(frame, schema)
    return lake.write_hour_partitions(table, base, "partition_hour", interval)


def ingest_all(interval: DataInterval, settings: Settings, datasets: Sequence[str] | None = None) -> list[IngestReport]:
    """Ingest reference data and every time-partitioned dataset for one interval."""
    names = list(datasets) if datasets else [*REFERENCE_SOURCES, *[d for d in SOURCES if d not in REFERENCE_SOURCES]]
    regions = known_regions(settings.source_root)
    return [ingest(name, interval, settings, regions) for name in names]

