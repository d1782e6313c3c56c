"""Corpus: data is never interpreted on the terminal. Rich markup (`[/]`, `[link=…]`, `[bold]`), emoji
codes and control characters inside region names, reasons, ids and model names print literally, in
tables, notes and errors, and the command still exits as it should."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.cli.app import app
from pipeline.common import lake
from tests.conftest import SAMPLES
from tests.corpus.test_cli_lake_faults import one_line_error, publish_plan, snapshot

runner = CliRunner()
WIDE = {"COLUMNS": "400"}

CLOSE_TAG = "[/]"
LINK = "[link=https://evil.example/x]click[/link]"
BOLD = "[bold]eu[/bold]-west-9"
EMOJI = ":thumbs_up:-1"
ESCAPE = "us-\x1b[2Jeast-9"  # ESC [2J clears a terminal


@pytest.fixture()
def hostile_lake(tmp_path: Path) -> Path:
    root = tmp_path / "lake"
    lines = [(CLOSE_TAG, "m5.large", "spot", 1), (LINK, "m5.large", "spot", 2), (BOLD, "c5.large", "on_demand", 3),
             (EMOJI, "m5.large", "spot", 1), (ESCAPE, "m5.large", "spot", 1)]
    publish_plan(str(root), "plan-h", lines)
    return root


def test_plan_show_prints_markup_in_region_names_literally(hostile_lake: Path, clean_env: None) -> None:
    result = runner.invoke(app, ["plan", "show", "--lake", str(hostile_lake)], env=WIDE)
    assert result.exit_code == 0, result.output
    for name in (CLOSE_TAG, LINK, BOLD, EMOJI):
        assert name in result.stdout, name
    assert "\x1b" not in result.stdout and "us-\\x1b[2Jeast-9" in result.stdout
    assert "👍" not in result.stdout


def test_plan_show_json_keeps_the_exact_names(hostile_lake: Path, clean_env: None) -> None:
    result = runner.invoke(app, ["plan", "show", "--json", "--lake", str(hostile_lake)], env=WIDE)
    assert result.exit_code == 0, result.output
    regions = {c["region"] for c in json.loads(result.stdout)["cover"]}
    assert regions == {CLOSE_TAG, LINK, BOLD, EMOJI, ESCAPE}


def test_plan_explain_prints_a_hostile_region_literally(hostile_lake: Path, clean_env: None) -> None:
    result = runner.invoke(app, ["plan", "explain", LINK, "--lake", str(hostile_lake)], env=WIDE)
    assert result.exit_code == 0, result.output
    assert LINK in result.stdout


@pytest.mark.parametrize("region", [CLOSE_TAG + "x", "[red]mars[/red]-1", ESCAPE + "x"])
def test_errors_quote_hostile_arguments_literally(region: str, hostile_lake: Path, clean_env: None) -> None:
    result = runner.invoke(app, ["plan", "explain", region, "--lake", str(hostile_lake)], env=WIDE)
    line = one_line_error(result, 2)
    assert f"has no lines in region {region!r}" in line
    assert "\x1b" not in result.stderr


def test_forecast_summary_prints_model_names_literally(tmp_path: Path, clean_env: None) -> None:
    manifest = {"run_id": "hourly-20250301T0000Z", "kind": "hourly", "horizon": 48, "tau": 0.9,
                "data_interval": {"end": "2025-03-01T00:00:00+00:00"},
                "engine": {"overall_score": {"[/]": 1.0}, "cv_coverage": {"80": 0.8}, "n_windows": 3,
                           "dropped": {"[link=https://evil.example]x[/link]": "[bold]boom[/]"}},
                "selection": {"region:[/]:vcpu": {"model": "[/]", "score": {"[/]": 1.0}}}}
    lake.write_json_atomic(str(tmp_path / "lake" / "forecasts" / "run=hourly-20250301T0000Z" / "manifest.json"), manifest)
    result = runner.invoke(app, ["forecast", "summary", "--series", "--lake", str(tmp_path / "lake")], env=WIDE)
    assert result.exit_code == 0, result.output
    assert "region:[/]:vcpu" in result.stdout and "[link=https://evil.example]x[/link] ([bold]boom[/])" in result.stdout


def test_ingest_with_markup_in_values_and_paths_keeps_every_row_and_prints_literally(tmp_path: Path, clean_env: None) -> None:
    """The issue's crash: `[/]` in data made `peerscale ingest` fail after it had written. Hostile values
    are quarantined whole and the good rows kept; a hostile source path is quoted literally in the error."""
    import pandas as pd

    source = tmp_path / f"src-{CLOSE_TAG}-{LINK}".replace("/", "_")
    for dataset in ("inventory", "calendar"):
        shutil.copytree(SAMPLES / dataset, source / dataset)
    for dataset in ("region_telemetry", "app_telemetry"):
        (source / dataset).mkdir()
        for day_file in (SAMPLES / dataset).glob("2026-01-05.*"):
            shutil.copy(day_file, source / dataset / day_file.name)
    good = (SAMPLES / "peering_requests" / "2026-01-05.csv").read_text().splitlines()[:31]  # header + 30 rows of hour 00
    hostile = [f"req-h{i},2026-01-05T00:2{i}:00Z,us-east-1,eu-west-1,1,2,3,0.1,100,{priority}"
               for i, priority in enumerate([CLOSE_TAG, LINK, "[bold]normal"])]
    (source / "peering_requests").mkdir()
    (source / "peering_requests" / "2026-01-05.csv").write_text("\n".join(good + hostile) + "\n")
    args = ["ingest", "--from", "2026-01-05T00:00", "--to", "2026-01-05T01:00", "--source", str(source), "--lake", str(tmp_path / "lake")]
    result = runner.invoke(app, args, env=WIDE)
    assert result.exit_code == 0, result.output
    report = json.loads(next((tmp_path / "lake" / "_ingest" / "peering_requests").glob("*.json")).read_text())
    assert (report["rows_read"], report["rows_valid"], report["rows_quarantined"]) == (33, 30, 3)
    raw = pd.read_parquet(tmp_path / "lake" / "quarantine" / "peering_requests")["raw"].str.cat()
    assert CLOSE_TAG in raw and LINK in raw and "[bold]normal" in raw

    (source / "region_telemetry" / "2026-01-05.csv").unlink()
    line = one_line_error(runner.invoke(app, args, env=WIDE), 2)
    assert f"{source}/region_telemetry/2026-01-05.csv" in line, line


def test_a_failed_command_on_a_hostile_lake_changes_nothing(hostile_lake: Path, clean_env: None) -> None:
    before = snapshot(hostile_lake)
    for args in (["plan", "show", "--window", "7"], ["plan", "explain", CLOSE_TAG + "?"]):
        one_line_error(runner.invoke(app, [*args, "--lake", str(hostile_lake)], env=WIDE), 2)
    assert snapshot(hostile_lake) == before
