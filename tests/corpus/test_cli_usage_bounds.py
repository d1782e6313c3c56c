"""Corpus: numeric and typed options of every command group, outside their documented bounds or
unparseable. Each is refused before any work with one `error:` line (exit 2); the exit codes are
documented in `--help`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.cli.app import app
from tests.corpus.test_cli_lake_faults import one_line_error, publish_plan, snapshot

runner = CliRunner()

# case id → (arguments, text the one-line error holds)
CASES: dict[str, tuple[list[str], str]] = {
    "run-interval-not-whole-hour": (["run", "--interval-end", "2026-01-29T00:30"], "whole hour"),
    "run-interval-not-a-time": (["run", "--interval-end", "tomorrow"], "tomorrow"),
    "ingest-range-reversed": (["ingest", "--from", "2026-01-05T00:00", "--to", "2026-01-04T00:00"], "2026-01-04"),
    "backfill-range-not-a-time": (["backfill", "--from", "x", "--to", "2026-01-05T00:00"], "'x'"),
    "serve-port-too-large": (["irc", "serve", "--port", "70000"], "Invalid value for '--port'"),
    "serve-reload-interval-zero": (["irc", "serve", "--reload-interval", "0"], "Invalid value for '--reload-interval'"),
    "request-at-not-a-time": (["irc", "request", "--from", "us-east-1", "--to", "eu-west-1", "--at", "noon"],
                              "--at 'noon' is not an ISO-8601 time; use e.g. 2026-01-29T00:30Z, or now"),
    "request-vcpu-not-a-number": (["irc", "request", "--from", "us-east-1", "--to", "eu-west-1", "--vcpu", "lots"],
                                  "Invalid value for '--vcpu'"),
    "samples-start-not-a-date": (["samples", "generate", "--start", "2026-13-01", "--out", "{tmp}/samples"],
                                 "--start '2026-13-01' is not a date: use YYYY-MM-DD, e.g. 2026-01-01"),
    "samples-days-zero": (["samples", "generate", "--days", "0", "--out", "{tmp}/samples"], "Invalid value for '--days'"),
    "samples-days-huge": (["samples", "generate", "--days", "100000", "--out", "{tmp}/samples"], "Invalid value for '--days'"),
    "samples-rate-negative": (["samples", "generate", "--rate", "-5", "--out", "{tmp}/samples"], "Invalid value for '--rate'"),
    "backtest-refit-huge": (["backtest", "--refit-every", "100000"], "Invalid value for '--refit-every'"),
    "backtest-headroom-negative": (["backtest", "--headroom", "-1"], "Invalid value for '--headroom'"),
    "forecast-summary-kind": (["forecast", "summary", "--kind", "weekly"], "--kind 'weekly': use hourly or daily"),
    "unknown-command": (["plan", "shwo"], "No such command 'shwo'"),
    "iac-apply-engine": (["iac", "apply", "plan-a", "--engine", "pulumi"], "Invalid value for '--engine'"),
}
# Cases today's main already got right (kept as regressions): run-interval-not-whole-hour,
# run-interval-not-a-time, ingest-range-reversed, backfill-range-not-a-time, request-at-not-a-time. The rest
# were tracebacks (samples --start, --rate -5), accepted (--days 100000, --headroom -1, --refit-every 100000,
# --reload-interval 0; --kind weekly looked for "weekly" runs) or multi-line panels (the typed options).


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_option_is_refused_in_one_line(case: str, tmp_path: Path, clean_env: None) -> None:
    args, expected = CASES[case]
    root = tmp_path / "lake"
    publish_plan(str(root), "plan-a")
    before = snapshot(tmp_path)
    args = [arg.replace("{tmp}", str(tmp_path)) for arg in args]  # nothing may ever land in the working directory
    result = runner.invoke(app, args, env={"COLUMNS": "200", "PEERSCALE_LAKE": str(root), "PEERSCALE_BUILD": str(tmp_path / "build"),
                                           "PEERSCALE_SOURCE": str(tmp_path / "no-source")})
    line = one_line_error(result, 2)
    assert expected in line, line
    assert snapshot(tmp_path) == before


def test_an_invalid_irc_request_exits_2(tmp_path: Path, clean_env: None) -> None:
    """The decision is still printed as JSON; exit 1 stays for a request the capacity cannot serve
    (tests/test_cli.py::test_irc_request_prints_the_decision_as_json)."""
    root = tmp_path / "lake"
    publish_plan(str(root), "plan-a")
    base = ["irc", "request", "--from", "us-east-1", "--to", "eu-west-1", "--at", "2025-03-01T00:30Z", "--lake", str(root)]
    for bad in (["--vcpu", "-4"], ["--duration-s", "-1"], ["--priority", "[bold]urgent"], ["--to", "mars-north-1"]):
        invalid = runner.invoke(app, [*base, "--vcpu", "1", *bad])
        assert invalid.exit_code == 2, (bad, invalid.output)
        assert json.loads(invalid.stdout)["message"].startswith("Invalid request:"), bad


def test_help_documents_the_exit_codes_and_debug() -> None:
    for args in ([], ["plan", "show"], ["forecast"], ["iac", "render"]):
        result = runner.invoke(app, [*args, "--help"], env={"COLUMNS": "300"})
        assert result.exit_code == 0
        text = " ".join(result.stdout.split())
        assert "Exit codes: 0 done; 1 the operation failed (storage outage, planner or solver failure, a bug); " \
               "2 the input or usage is wrong (fix it and re-run)." in text, args
        assert "--debug (or PEERSCALE_DEBUG=1) adds the traceback" in text
    assert "--debug" in runner.invoke(app, ["--help"]).stdout
