"""The newcomer path: after a pipeline run, the reading commands work with only the lake (and a
build directory) in the environment, their `--json` parses, errors say what to run, and the
defaults (`irc request` time, `backtest` window) land somewhere useful."""

from __future__ import annotations

import json
import re
import shutil
from datetime import UTC, date, datetime
from importlib.metadata import version
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.cli.app import app
from tests.moto_server import aws_env, moto_server, s3_bucket  # noqa: F401

runner = CliRunner()


@pytest.fixture()
def newcomer_env(published_root: Path, tmp_path: Path, clean_env: None) -> dict[str, str]:
    """A private copy of the published lake (irc request logs its decisions into it) as the only setting."""
    shutil.copytree(published_root / "lake", tmp_path / "lake")
    return {"PEERSCALE_LAKE": str(tmp_path / "lake"), "PEERSCALE_BUILD": str(tmp_path / "build"), "COLUMNS": "200"}


def _json(result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_version_comes_from_the_installed_distribution() -> None:
    import pipeline

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"peerscale {version('peerscale')}" == f"peerscale {pipeline.__version__}"


def test_shell_completion_is_on() -> None:
    result = runner.invoke(app, ["--help"])
    assert "--install-completion" in result.output and "--show-completion" in result.output


def test_plan_show_and_explain_need_only_the_lake(newcomer_env: dict[str, str]) -> None:
    shown = runner.invoke(app, ["plan", "show"], env=newcomer_env)
    assert shown.exit_code == 0, shown.output
    assert "plan-20260129T0000Z" in shown.stdout
    as_json = _json(runner.invoke(app, ["plan", "show", "--json"], env=newcomer_env))
    assert as_json["plan_id"] == "plan-20260129T0000Z" and as_json["window_start"].startswith("2026-01-29 00:00")
    assert {c["region"] for c in as_json["cover"]} >= {"eu-west-1", "us-east-1"} and as_json["instances"]

    explained = runner.invoke(app, ["plan", "explain", "eu-west-1"], env=newcomer_env)
    assert explained.exit_code == 0, explained.output
    bullets = [line for line in explained.stdout.splitlines() if line.lstrip().startswith("• ")]
    texts = [re.sub(r"\s+\[[^\]]*\]$", "", line.strip()) for line in bullets]
    assert bullets and len(texts) == len(set(texts)), "a reason is printed more than once"
    assert "q0.90 of vcpu demand" in explained.stdout and "fails over to eu-central-1" in explained.stdout
    assert "no previous plan  [all lines · all windows]" in explained.stdout

    detail = _json(runner.invoke(app, ["plan", "explain", "eu-west-1", "--json"], env=newcomer_env))
    assert detail["region"] == "eu-west-1" and len(detail["windows"]) == 6
    assert {g["topic"] for g in detail["reasons"]} >= {"demand", "instance type", "purchase option", "churn", "solver"}
    assert "reason" not in {g["topic"] for g in detail["reasons"]}, "a stored reason did not parse"
    assert all(g["windows"] and g["lines"] for g in detail["reasons"])

    unnamed = runner.invoke(app, ["plan", "explain"], env=newcomer_env)
    assert unnamed.exit_code == 2 and "eu-west-1" in unnamed.stderr


def test_report_and_forecast_summary_need_only_the_lake(newcomer_env: dict[str, str]) -> None:
    report = runner.invoke(app, ["report"], env=newcomer_env)
    assert report.exit_code == 0, report.output
    path = Path(report.stdout.strip())
    assert path.is_file() and path.is_relative_to(newcomer_env["PEERSCALE_BUILD"])

    summary = runner.invoke(app, ["forecast", "summary"], env=newcomer_env)
    assert summary.exit_code == 0, summary.output
    assert "hourly-20260129T0000Z" in summary.stdout and "coverage" in summary.stdout
    assert "quantile methods:" in summary.stdout
    data = _json(runner.invoke(app, ["forecast", "summary", "--json"], env=newcomer_env))
    assert data["run_id"] == "hourly-20260129T0000Z"
    assert sum(data["chosen"].values()) == data["series"] == len(data["per_series"]) > 0
    assert set(data["cv_coverage"]) == {"80", "95"}
    methods = data["quantile_methods"]["chosen"]
    assert sum(methods.values()) == data["series"]
    assert all(s["quantile_method"] in methods for s in data["per_series"].values())


def test_irc_request_without_at_is_served_from_the_historical_plan(newcomer_env: dict[str, str]) -> None:
    args = ["irc", "request", "--from", "us-east-1", "--to", "eu-west-1", "--vcpu", "4", "--memory-gib", "16"]
    result = runner.invoke(app, args, env=newcomer_env)
    decision = _json(result)
    assert (decision["status"], decision["path"], decision["plan_id"]) == ("success", "preallocated", "plan-20260129T0000Z")
    assert "outside plan plan-20260129T0000Z's validity" in result.stderr and "2026-01-29T00:00Z" in result.stderr

    now = runner.invoke(app, [*args, "--at", "now"], env=newcomer_env)
    assert now.exit_code == 0, now.output
    assert json.loads(now.stdout)["miss_reason"] in ("plan_expired", "plan_not_yet_valid")


def test_errors_on_an_empty_lake_say_what_to_run(tmp_path: Path, clean_env: None) -> None:
    env = {"PEERSCALE_LAKE": str(tmp_path / "lake")}
    for args in (["plan", "show"], ["plan", "explain", "eu-west-1"], ["report"], ["forecast", "summary"]):
        result = runner.invoke(app, args, env=env)
        assert result.exit_code == 2, (args, result.output)
        assert "make demo" in result.stderr and "peerscale run --interval-end" in result.stderr, args
    missing = runner.invoke(app, ["plan", "show", "--plan-id", "plan-nope"], env=env)
    assert missing.exit_code == 2 and "plans in" in missing.stderr


def test_forecast_levels_take_several_values() -> None:
    from pipeline.cli.forecast_commands import spread_levels

    assert spread_levels(["--levels", "80", "95", "90", "--models", "x"]) == [
        "--levels", "80", "--levels", "95", "--levels", "90", "--models", "x"]
    assert spread_levels(["--horizon", "12", "summary"]) == ["--horizon", "12", "summary"]
    assert spread_levels(["--levels=80", "95"]) == ["--levels=80", "--levels", "95"]
    missing = runner.invoke(app, ["forecast", "--horizon", "6"])
    assert missing.exit_code == 2 and "Missing option '--input'" in missing.output


def _day_files(folder: Path, days: list[str]) -> None:
    (folder / "peering_requests").mkdir(parents=True)
    for day in days:
        (folder / "peering_requests" / f"{day}.csv").write_text("request_id\n")
    (folder / "peering_requests" / "README.md").write_text("not a day\n")


def test_backtest_defaults_to_the_last_seven_days_of_its_source(tmp_path: Path) -> None:
    from pipeline.ingest.loader import last_source_day
    from pipeline.ops.backtest import default_window

    _day_files(tmp_path, ["2026-02-01", "2026-02-10", "2026-02-09"])
    assert last_source_day(str(tmp_path)) == date(2026, 2, 10)
    utc = lambda *a: datetime(*a, tzinfo=UTC)  # noqa: E731
    assert default_window(str(tmp_path), None, None) == (utc(2026, 2, 4), utc(2026, 2, 11))
    assert default_window(str(tmp_path), "2026-02-01T00:00", None) == (utc(2026, 2, 1), utc(2026, 2, 8))
    assert default_window(str(tmp_path), None, "2026-02-05T00:00") == (utc(2026, 1, 29), utc(2026, 2, 5))
    with pytest.raises(FileNotFoundError, match="peering_requests"):
        last_source_day(str(tmp_path / "nowhere"))


def test_backtest_source_and_window_default_to_the_configured_source(
        tmp_path: Path, clean_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """No --requests/--from/--to: the source is PEERSCALE_SOURCE and the window its last 7 days."""
    from pipeline.cli import backtest_commands

    _day_files(tmp_path / "src", ["2026-03-01", "2026-03-09"])
    seen: dict = {}

    def fake_replay(config, settings, *, transient):
        seen.update(start=config.start, end=config.end, source=settings.source_root)
        raise SystemExit(0)

    monkeypatch.setattr(backtest_commands, "_replay", fake_replay)
    result = runner.invoke(app, ["backtest"], env={"PEERSCALE_SOURCE": str(tmp_path / "src")})
    assert result.exit_code == 0, result.output
    assert seen == {"start": datetime(2026, 3, 3, tzinfo=UTC), "end": datetime(2026, 3, 10, tzinfo=UTC), "source": str(tmp_path / "src")}
    assert "replaying [2026-03-03T00:00, 2026-03-10T00:00)" in " ".join(result.stderr.split())


def test_last_source_day_on_s3(s3_bucket: str) -> None:
    from pipeline.common import storage
    from pipeline.ingest.loader import last_source_day

    source = f"s3://{s3_bucket}/source"
    for day in ("2026-01-30", "2026-02-04", "2026-02-02"):
        storage.write_text_atomic(f"{source}/peering_requests/{day}.csv", "request_id\n")
    assert last_source_day(source) == date(2026, 2, 4)
