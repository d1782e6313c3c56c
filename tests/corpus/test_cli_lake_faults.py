"""Corpus: the reading commands on a broken lake — missing or corrupt LATEST, unknown or hostile plan
ids, corrupt plan files, bad settings. Each case asserts the exit code, the one-line error on stderr
(no traceback unless --debug) and that the lake is byte-for-byte unchanged.

Also the helpers the other CLI corpus modules share: `publish_plan` writes a small plan in the
PLAN contract (local or s3:// lake), `one_line_error` checks the failure shape.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from pipeline.cli.app import app
from pipeline.common.schemas import PLAN
from tests import plan_store
from tests.test_iac import W0, W1, W2, _line_rows

runner = CliRunner()

GOOD_LINES = [("eu-west-1", "m5.large", "on_demand", 2), ("us-east-1", "c5.xlarge", "spot", 3)]


def plan_manifest(plan_id: str) -> dict[str, Any]:
    """The manifest keys the CLI reads (`plan show`, `iac render`)."""
    return {"plan_id": plan_id, "status": "published", "valid_from": W0.isoformat(), "valid_to": W2.isoformat(),
            "tau": {"vcpu": 0.9}, "objective": 1.0, "lower_bound": 1.0, "gap": 0.0, "forecast_run_id": None,
            "data_interval": {"start": (W0 - pd.Timedelta(hours=1)).isoformat(), "end": W0.isoformat()}}


def publish_plan(lake_root: str, plan_id: str, lines: list[tuple[str, str, str, int]] = GOOD_LINES, *,
                 latest: bool = True, rows: list[dict[str, Any]] | None = None, manifest: dict[str, Any] | None = None) -> None:
    """A two-window plan of `lines` (or raw `rows`) in the PLAN contract, its manifest and (`latest`) LATEST."""
    if rows is None:
        rows = []
        for region, instance_type, option, count in lines:
            rows += _line_rows(W0, W1, region, instance_type, option, count, plan_id=plan_id)
            rows += _line_rows(W1, W2, region, instance_type, option, count + 1, plan_id=plan_id)
    table = pa.Table.from_pandas(pd.DataFrame(rows), schema=PLAN, preserve_index=False)
    plan_store.write_plan(lake_root, plan_id, table, manifest if manifest is not None else plan_manifest(plan_id), latest=latest)


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under `root` and its bytes: a failed command must leave them all as they were."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def one_line_error(result: Any, code: int) -> str:
    """The failure shape every command shares: exit `code`, exactly one `error: …` line on stderr, no traceback."""
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output and "╭" not in result.stderr
    return lines[0]


@pytest.fixture()
def lake_root(tmp_path: Path) -> Path:
    root = tmp_path / "lake"
    publish_plan(str(root), "plan-a")
    return root


def _write(relative: str, data: bytes) -> Callable[[Path], None]:
    def setup(root: Path) -> None:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return setup


def _edit_manifest(change: Callable[[dict], Any]) -> Callable[[Path], None]:
    def setup(root: Path) -> None:
        path = root / "plans" / "plan_id=plan-a" / "attempt=1" / "manifest.json"
        path.write_text(json.dumps(change(json.loads(path.read_text()))))
    return setup


def _remove(relative: str) -> Callable[[Path], None]:
    return lambda root: (root / relative).unlink()


def _nothing(root: Path) -> None:
    return None


# case id → (lake setup, command, environment, exit code, text the one-line error holds)
LAKE_CASES: dict[str, tuple[Callable[[Path], None], list[str], dict[str, str], int, str]] = {
    "latest-missing": (_remove("plans/LATEST"), ["plan", "show"], {}, 2, "no published plan in"),
    "latest-binary": (_write("plans/LATEST", b"\xff\xfe\x00garbage"), ["plan", "show"], {}, 1,
                      "plans/LATEST is corrupt (not text): re-publish a plan (peerscale run) or pass --plan-id; plans in"),
    "latest-markup": (_write("plans/LATEST", b"plan-[bold]a[/]\n"), ["plan", "show"], {}, 1,
                      "plans/LATEST is corrupt: it holds 'plan-[bold]a[/]', not plan_id=<id>/attempt=<n>"),
    "latest-traversal": (_write("plans/LATEST", b"../../etc/passwd\n"), ["plan", "show"], {}, 1,
                         "it holds '../../etc/passwd', not plan_id=<id>/attempt=<n>"),
    "latest-empty": (_write("plans/LATEST", b""), ["report"], {}, 1, "it holds '', not plan_id=<id>/attempt=<n>"),
    "plan-id-unknown": (_nothing, ["plan", "show", "--plan-id", "plan-nope"], {}, 2,
                        "plan 'plan-nope' not found at"),
    "plan-id-traversal": (_nothing, ["plan", "show", "--plan-id", "../plan_id=plan-a"], {}, 2,
                          "--plan-id '../plan_id=plan-a' is not a plan id"),
    "plan-parquet-corrupt": (_write("plans/plan_id=plan-a/attempt=1/plan.parquet", b"PAR1 not parquet"), ["plan", "show"], {}, 1,
                             "plan plan-a in"),
    "manifest-not-json": (_write("plans/plan_id=plan-a/attempt=1/manifest.json", b"{\"plan_id\": "), ["plan", "explain", "eu-west-1"],
                          {}, 1, "manifest.json is not valid JSON (Expecting value"),
    "manifest-a-list": (_write("plans/plan_id=plan-a/attempt=1/manifest.json", b"[1, 2]"), ["plan", "show"], {}, 1,
                        "manifest.json is not a JSON object"),
    "manifest-missing-key": (_edit_manifest(lambda m: {k: v for k, v in m.items() if k != "objective"}), ["plan", "show"],
                             {}, 1, "unexpected KeyError: 'objective' (re-run with --debug (or PEERSCALE_DEBUG=1) for the traceback"),
    "forecast-summary-run-id-traversal": (_nothing, ["forecast", "summary", "--run-id", "../plans"], {}, 2,
                                          "--run-id '../plans' is not a forecast run id"),
    "forecast-manifest-corrupt": (_write("forecasts/run=hourly-20250301T0000Z/manifest.json", b"\x00\x01"),
                                  ["forecast", "summary"], {}, 1, "manifest.json is corrupt ("),
    "env-horizon-not-a-number": (_nothing, ["plan", "show"], {"PEERSCALE_HORIZON_HOURS": "abc"}, 2,
                                 "PEERSCALE_HORIZON_HOURS='abc' is not a whole number; use 1 to 8784 (default 48)"),
    "env-history-zero": (_nothing, ["plan", "show"], {"PEERSCALE_HISTORY_DAYS": "0"}, 2,
                         "PEERSCALE_HISTORY_DAYS=0 is out of range; use 1 to 366 (default 14)"),
    "env-windows-beyond-horizon": (_nothing, ["plan", "show"], {"PEERSCALE_PLAN_WINDOWS": "60"}, 2,
                                   "PEERSCALE_PLAN_WINDOWS=60 is more than PEERSCALE_HORIZON_HOURS=48"),
    "window-negative": (_nothing, ["plan", "show", "--window", "-1"], {}, 2, "Invalid value for '--window'"),
    "window-beyond-plan": (_nothing, ["plan", "show", "--window", "99"], {}, 2,
                           "window 99 out of range: the plan has 2 windows (0..1)"),
    "explain-unknown-region": (_nothing, ["plan", "explain", "mars-north-1"], {}, 2,
                               "plan plan-a has no lines in region 'mars-north-1'; regions in the plan: eu-west-1, us-east-1"),
}
# Cases today's main already got right (kept as regressions): latest-missing, plan-id-unknown,
# window-beyond-plan, explain-unknown-region.


@pytest.mark.parametrize("case", sorted(LAKE_CASES))
def test_broken_lake_fails_in_one_line_and_changes_nothing(case: str, lake_root: Path, clean_env: None) -> None:
    setup, args, env, code, expected = LAKE_CASES[case]
    setup(lake_root)
    before = snapshot(lake_root)
    result = runner.invoke(app, [*args, "--lake", str(lake_root)], env={"COLUMNS": "200", **env})
    line = one_line_error(result, code)
    assert expected in line, line
    assert snapshot(lake_root) == before


def test_debug_adds_the_traceback_and_keeps_the_exit_code(lake_root: Path, clean_env: None) -> None:
    LAKE_CASES["manifest-missing-key"][0](lake_root)
    for args, env in ((["--debug"], {}), ([], {"PEERSCALE_DEBUG": "1"})):
        result = runner.invoke(app, [*args, "plan", "show", "--lake", str(lake_root)], env={"COLUMNS": "200", **env})
        assert result.exit_code == 1, result.output
        assert "Traceback" in result.stderr and "KeyError" in result.stderr
        assert result.stderr.strip().splitlines()[-1].startswith("error: unexpected KeyError: 'objective'")
