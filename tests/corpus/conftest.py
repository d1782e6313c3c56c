"""Shared helpers of the bad-input corpus: a private copy of the samples, one call to ingest a
day, and a builder that plants bad lines between good ones and remembers their line numbers.

Tests import the plain helpers (`from tests.corpus.conftest import ...`) and request the
fixtures by name; nothing here knows a particular dataset's rules.
"""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest

from pipeline.common import lake
from pipeline.common.config import REPO_ROOT, Settings
from pipeline.common.intervals import DataInterval, parse_utc
from pipeline.common.schemas import SOURCES, TIME_PARTITIONED_SOURCES
from pipeline.ingest.lines import raw_text

SAMPLES = REPO_ROOT / "data_samples"


def copy_samples(dest: Path, days: Sequence[str] = ()) -> Path:
    """A source root at `dest`: the sample calendar and inventory, and `days` of every daily dataset."""
    for folder in ("inventory", "calendar"):
        shutil.copytree(SAMPLES / folder, dest / folder, ignore=shutil.ignore_patterns("*.md"), dirs_exist_ok=True)
    for dataset in TIME_PARTITIONED_SOURCES:
        (dest / dataset).mkdir(parents=True, exist_ok=True)
        for day in days:
            name = f"{day}.{SOURCES[dataset]['ext']}"
            shutil.copyfile(SAMPLES / dataset / name, dest / dataset / name)
    return dest


def day_interval(day: str, hours: int = 24, first_hour: int = 0) -> DataInterval:
    """`hours` hours of `day` (YYYY-MM-DD) from `first_hour`; the whole day by default."""
    start = parse_utc(f"{day}T{first_hour:02d}:00")
    return DataInterval(start, start + timedelta(hours=hours))


@dataclass(frozen=True)
class Case:
    """One planted line of an ingest corpus case: its id, its bytes, and the rule it breaks."""

    id: str
    line: bytes
    kind: str | None  # None: the line is valid and must land


@dataclass
class Planted:
    """A source file's bytes with bad lines planted between good ones, and where each landed."""

    data: bytes = b""
    lines: dict[str, int] = field(default_factory=dict)  # case id -> 1-based line number
    good: int = 0  # data lines that must be ingested


def plant(header: bytes | None, good: Sequence[bytes], cases: Sequence[tuple[str, bytes]], *, every: int = 3,
          valid: frozenset[str] = frozenset()) -> Planted:
    """Lines of `good`, with one case after every `every` good lines (while good lines last; the
    rest of `good` after the last case).

    `valid` names cases whose line is acceptable and must land. A case may span several physical
    lines (`\\n` inside it): its number is that of its first line.
    """
    out = Planted()
    chunks: list[bytes] = [header] if header is not None else []
    lines = len(chunks)
    good_iter = iter(good)

    def add(chunk: bytes) -> None:
        nonlocal lines
        chunks.append(chunk)
        lines += chunk.count(b"\n") + 1

    for case_id, line in cases:
        for row in itertools.islice(good_iter, every):
            add(row)
            out.good += 1
        add(line)
        out.lines[case_id] = lines - line.count(b"\n")
        out.good += case_id in valid
    for row in good_iter:
        add(row)
        out.good += 1
    out.data = b"\n".join(chunks) + b"\n"
    return out


@dataclass(frozen=True)
class Corpus:
    """A source root and a lake under one temporary directory."""

    root: Path

    @property
    def source(self) -> Path:
        return self.root / "source"

    @property
    def settings(self) -> Settings:
        return Settings(source_root=str(self.source), lake_root=str(self.root / "lake"), build_root=str(self.root / "build"))

    def ingest(self, dataset: str, interval: DataInterval):  # -> IngestReport
        from pipeline.ingest.loader import ingest

        return ingest(dataset, interval, self.settings)

    def ingest_day(self, dataset: str, day: str):  # -> IngestReport
        return self.ingest(dataset, day_interval(day))

    def raw(self, dataset: str) -> pd.DataFrame:
        """Every row of the dataset in the lake."""
        return lake.read_partitioned(lake.raw_dir(self.settings.lake_root, dataset)).to_pandas()

    def quarantine(self, dataset: str) -> pd.DataFrame:
        """Every quarantined line of the dataset, by line number."""
        table = lake.read_partitioned(lake.quarantine_dir(self.settings.lake_root, dataset)).to_pandas()
        return table.sort_values(["source_file", "line_number"]).reset_index(drop=True) if len(table) else table


@pytest.fixture()
def corpus(tmp_path: Path) -> Corpus:
    """A private copy of the sample calendar and inventory (add day files with `copy_samples`)."""
    copy_samples(tmp_path / "source")
    return Corpus(tmp_path)


def check_planted_case(quarantine: pd.DataFrame, kept: pd.DataFrame, planted: Planted, case: Case,
                       cases: Sequence[Case]) -> pd.DataFrame:
    """The outcome every planted ingest case asserts: a bad line is quarantined alone with its rule
    and raw text, a valid one lands, and exactly the good rows are kept. Returns the case's own
    quarantine rows for the dataset's extra checks."""
    mine = quarantine[quarantine["line_number"] == planted.lines[case.id]]
    if case.kind is None:
        assert mine.empty, mine.to_dict("records")
    else:
        assert mine["reason_kind"].tolist() == [case.kind]
        assert mine["raw"].tolist() == [raw_text(case.line)]
    assert len(kept) == planted.good
    assert len(quarantine) == sum(1 for c in cases if c.kind is not None)
    return mine
