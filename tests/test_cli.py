"""The `peerscale` CLI: help reads well, commands work on a published lake, errors say what to do."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from pipeline.cli.app import app

runner = CliRunner()


def test_help_lists_the_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("run", "ingest", "plan", "irc", "report", "samples"):
        assert command in result.output


def test_plan_show_and_explain(published_root: Path) -> None:
    lake = str(published_root / "lake")
    shown = runner.invoke(app, ["plan", "show", "--lake", lake], env={"COLUMNS": "160"})
    assert shown.exit_code == 0, shown.output
    assert "plan-20260129T0000Z" in shown.output and "eu-west-1" in shown.output and "gap" in shown.output
    explained = runner.invoke(app, ["plan", "explain", "eu-west-1", "--lake", lake], env={"COLUMNS": "200"})
    assert explained.exit_code == 0
    assert "q0.90 of vcpu demand" in explained.output
    unknown = runner.invoke(app, ["plan", "explain", "mars-north-1", "--lake", lake])
    assert unknown.exit_code == 2 and "regions in the plan" in unknown.stderr


def test_irc_request_prints_the_decision_as_json(published_root: Path) -> None:
    lake = str(published_root / "lake")
    args = ["irc", "request", "--from", "us-east-1", "--to", "eu-west-1", "--vcpu", "4", "--memory-gib", "16",
            "--bandwidth-gbps", "1", "--at", "2026-01-29T00:30Z", "--lake", lake]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    decision = json.loads(result.output.strip().splitlines()[-1])
    assert (decision["status"], decision["path"], decision["latency_class"]) == ("success", "preallocated", "low")

    failed = runner.invoke(app, [*args[:-4], "--vcpu", "1000000", "--at", "2026-01-29T00:30Z", "--lake", lake])
    assert failed.exit_code == 1
    assert json.loads(failed.output.strip().splitlines()[-1])["message"].startswith("Insufficient resources")


def test_plan_show_without_a_plan_says_how_to_get_one(tmp_path: Path) -> None:
    result = runner.invoke(app, ["plan", "show", "--lake", str(tmp_path / "lake")])
    assert result.exit_code == 2
    assert "no published plan" in result.stderr


def test_run_with_a_bad_interval_is_a_clear_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["run", "--interval-end", "2026-01-29T00:30", "--lake", str(tmp_path / "lake")])
    assert result.exit_code == 2
    assert "whole hour" in result.stderr


def test_samples_generate_writes_the_documented_layout(tmp_path: Path) -> None:
    result = runner.invoke(app, ["samples", "generate", "--out", str(tmp_path / "s"), "--days", "2", "--rate", "10"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "s" / "peering_requests" / "2026-01-01.csv").exists()
    assert (tmp_path / "s" / "inventory" / "pools.csv").exists()


def test_irc_import_is_light() -> None:
    """`peerscale irc request` must not drag the batch stack into the request path."""
    code = ("import sys, pipeline.irc, pipeline.cli.app; heavy = [m for m in ('pandas', 'airflow', 'prophet', 'ortools', "
            "'great_expectations', 'duckdb', 'statsforecast') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_storage_failure_in_run_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    """--lake under a regular file: the write fails deep in ingest; the user sees one line and exit 2."""
    (tmp_path / "a-file").write_text("not a directory\n")
    result = runner.invoke(app, ["run", "--interval-end", "2026-01-05T01:00", "--lake", str(tmp_path / "a-file" / "lake"),
                                 "--build", str(tmp_path / "build")])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: [Errno 20] Cannot create directory"), result.stderr
    assert lines[0].endswith("check the path and its permissions") and "Traceback" not in result.output
    assert (tmp_path / "a-file").read_text() == "not a directory\n" and not (tmp_path / "build").exists()
