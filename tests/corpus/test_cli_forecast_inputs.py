"""Corpus: `peerscale forecast` on bad input files and bad options. Each case asserts exit code 2, the
one-line error that says what is wrong (and what to do), and that no output (nor a temporary file)
was written."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from pipeline.cli.app import app
from tests.corpus.test_cli_lake_faults import one_line_error

runner = CliRunner()


def panel(n_series: int = 2, hours: int = 72) -> pd.DataFrame:
    k = np.arange(hours)
    return pd.concat([pd.DataFrame({"unique_id": f"s{j}", "ds": pd.date_range("2026-01-01", periods=hours, freq="h", tz="UTC"),
                                    "y": np.round(20 + 8 * np.sin(2 * np.pi * k / 24) + j, 3)}) for j in range(n_series)],
                     ignore_index=True)


def _csv(frame: Callable[[], pd.DataFrame]) -> Callable[[Path], Path]:
    def write(folder: Path) -> Path:
        path = folder / "in.csv"
        frame().to_csv(path, index=False)
        return path
    return write


def _raw(name: str, data: bytes) -> Callable[[Path], Path]:
    def write(folder: Path) -> Path:
        (folder / name).write_bytes(data)
        return folder / name
    return write


def _many_series(folder: Path) -> Path:
    path = folder / "in.parquet"
    frame = panel(1, 3)
    pd.concat([frame.assign(unique_id=f"s{j}") for j in range(1001)], ignore_index=True).to_parquet(path)
    return path


def _with_y(values: Callable[[pd.DataFrame], pd.Series]) -> Callable[[], pd.DataFrame]:
    def frame() -> pd.DataFrame:
        f = panel()
        return f.assign(y=values(f))
    return frame


GOOD = _csv(panel)
# case id → (input file, extra options, text the one-line error holds)
CASES: dict[str, tuple[Callable[[Path], Path], list[str], str]] = {
    "missing-column": (_csv(lambda: panel().drop(columns="y")), [], "input lacks column(s) ['y']"),
    "non-numeric-y": (_csv(lambda: panel().astype({"y": object}).assign(y=lambda f: f["y"].where(f.index != 5, "twelve"))), [],
                      "column y must be numeric: 1 value(s) are not, e.g. 'twelve'"),
    "duplicate-rows": (_csv(lambda: pd.concat([panel(), panel().iloc[[0]]])), [], "duplicate timestamps: 2 rows share (unique_id, ds)"),
    "off-grid": (_csv(lambda: panel().assign(ds=lambda f: f["ds"] + pd.to_timedelta((np.arange(len(f)) % 3 == 1) * 13, unit="min"))),
                 [], "irregular frequency"),
    "unparseable-ds": (_csv(lambda: panel().astype({"ds": object}).assign(ds=lambda f: f["ds"].where(f.index != 3, "yesterday"))),
                       [], "column ds has values that are not timestamps"),
    "all-nan-y": (_csv(_with_y(lambda f: pd.Series(np.nan, index=f.index))), [],
                  "2 series have no finite y value, e.g. 's0': there is nothing to forecast from; fill in y or drop such series"),
    "one-series-all-nan": (_csv(_with_y(lambda f: f["y"].where(f["unique_id"] != "s1"))), [],
                           "1 series has no finite y value, e.g. 's1'"),
    "infinite-y": (_csv(_with_y(lambda f: f["y"].where(f.index != 7, np.inf))), [],
                   "column y has 1 infinite value(s), e.g. 's0' at 2026-01-01 07:00:00; remove them or leave them empty"),
    "missing-unique-id": (_csv(lambda: panel().assign(unique_id=lambda f: f["unique_id"].where(f.index != 4))), [],
                          "column unique_id is empty in 1 row(s), e.g. row 5; every row needs a series id"),
    "empty-file": (_raw("in.csv", b""), [], "in.csv is empty: expected a header unique_id,ds,y and one row per observation"),
    "header-only": (_raw("in.csv", b"unique_id,ds,y\n"), [], "input has no rows: nothing to forecast"),
    "corrupt-parquet": (_raw("in.parquet", b"PAR1 this is not parquet PAR1"), [],
                        "in.parquet cannot be read as Parquet: "),
    "not-utf8-csv": (_raw("in.csv", b"unique_id,ds,y\ns\xff0,2026-01-01T00:00Z,1\n"), [], "in.csv cannot be read as CSV: "),
    "wrong-extension": (_raw("in.json", b'{"unique_id": "s0"}'), [], "in.json: unknown file type '.json'; use .csv or .parquet"),
    "directory-as-input": (lambda folder: (folder / "data.csv").mkdir() or folder / "data.csv", [], "data.csv cannot be read as CSV"),
    "missing-file": (lambda folder: folder / "nope.csv", [], "nope.csv does not exist"),
    "huge-horizon": (GOOD, ["--horizon", "1000000000"], "Invalid value for '--horizon': Input should be less than or equal to 10000"),
    "zero-horizon": (GOOD, ["--horizon", "0"], "Invalid value for '--horizon'"),
    "too-many-rows": (_many_series, ["--horizon", "10000"],
                      "1001 series × --horizon 10000 = 10,010,000 forecast rows, more than 10,000,000"),
    "level-over-100": (GOOD, ["--levels", "80", "120"], "--levels must be between 0 and 100 (exclusive), got [120]"),
    "season-length-zero": (GOOD, ["--season-length", "0"], "Invalid value for '--season-length'"),
    "season-length-negative": (GOOD, ["--season-length", "-3"], "Invalid value for '--season-length'"),
    "tau-out-of-range": (GOOD, ["--tau", "2"], "Invalid value for '--tau'"),
    "unknown-frequency": (GOOD, ["--freq", "7x"], "unknown frequency '7x'; use h (hourly) or D (daily)"),
    "unknown-model": (GOOD, ["--models", "magic"], "unknown models"),
    "output-unknown-type": (GOOD, ["--output-name", "out.json"], "error: --output "),
}
# Cases today's main already got right (kept as regressions): missing-column, non-numeric-y, duplicate-rows,
# off-grid, unparseable-ds, header-only, wrong-extension, missing-file, level-over-100, unknown-frequency, unknown-model.


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_forecast_input_is_refused_in_one_line(case: str, tmp_path: Path) -> None:
    make_input, options, expected = CASES[case]
    source = make_input(tmp_path)
    output = tmp_path / "out.parquet"
    if options[:1] == ["--output-name"]:
        output, options = tmp_path / options[1], options[2:]
    before = sorted(p.name for p in tmp_path.iterdir())
    result = runner.invoke(app, ["forecast", "--input", str(source), "--output", str(output), "--horizon", "6",
                                 "--models", "seasonal_naive", *options], env={"COLUMNS": "200"})
    line = one_line_error(result, 2)
    assert expected in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == before, "an output or temporary file was written"
