"""The installed package works outside a checkout: the wheel carries the feature SQL, the IaC and
report templates, and `python -m pipeline.cli ingest` then `run` work from a temporary directory
with only the installed copy importable (not this checkout)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from pipeline.common.config import REPO_ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

SAMPLES = REPO_ROOT / "data_samples"
DAYS = ("2026-01-24", "2026-01-25", "2026-01-26", "2026-01-27", "2026-01-28")
PACKAGE_DATA = (
    "pipeline/py.typed",
    "pipeline/features/sql/pair_volume_hourly.sql",
    "pipeline/features/sql/region_demand_hourly.sql",
    "pipeline/features/sql/committed_demand.sql",
    "pipeline/features/sql/added_by_lead.sql",
    "pipeline/features/sql/sessions.sql",
    "pipeline/iac/terraform_templates/README.md",
    "pipeline/iac/terraform_templates/aws/region/main.tf",
    "pipeline/iac/terraform_templates/aws/peering/versions.tf",
    "pipeline/report/templates/plan_report.html.j2",
    "pipeline/report/templates/backtest_report.html.j2",
)


def _data_files(root: Path) -> set[str]:
    """Every non-Python file of the `pipeline` package in a tree (what must ship as package data)."""
    return {p.relative_to(root).as_posix() for p in (root / "pipeline").rglob("*")
            if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts}


def _build_wheel(tmp: Path) -> Path:
    """`pip wheel --no-deps` on a copy of the sources (an in-tree build would write build/ into the checkout)."""
    src = tmp / "src"
    shutil.copytree(REPO_ROOT / "pipeline", src / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp / "dist"), str(src)],
                   check=True, capture_output=True, text=True)
    (wheel,) = (tmp / "dist").glob("peerscale-*.whl")
    return wheel


def _sample_copy(dest: Path) -> Path:
    """A few days of the samples in the documented layout."""
    for dataset, ext in (("peering_requests", "csv"), ("region_telemetry", "csv"), ("app_telemetry", "jsonl")):
        (dest / dataset).mkdir(parents=True)
        for day in DAYS:
            shutil.copy(SAMPLES / dataset / f"{day}.{ext}", dest / dataset / f"{day}.{ext}")
    for folder in ("inventory", "calendar"):
        shutil.copytree(SAMPLES / folder, dest / folder)
    return dest


def _installed(target: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """Run `python -m pipeline.cli ARGS` (or `python -c`) with only the installed copy on the path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PEERSCALE_") and k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(target)
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=1200)


def test_wheel_ships_package_data_and_runs_outside_the_checkout(tmp_path: Path) -> None:
    wheel = _build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    assert set(PACKAGE_DATA) <= names
    assert _data_files(REPO_ROOT) <= names, f"not shipped: {sorted(_data_files(REPO_ROOT) - names)}"
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "peerscale = pipeline.cli.app:app" in zipfile.ZipFile(wheel).read(entry_points).decode()

    target, work = tmp_path / "site", tmp_path / "elsewhere"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, text=True)
    work.mkdir()
    where = _installed(target, work, "-c", "import pipeline, pipeline.common.config as c; print(pipeline.__file__); print(c.REPO_ROOT)")
    assert where.returncode == 0, where.stderr
    module_file, repo_root = where.stdout.split()
    assert Path(module_file).is_relative_to(target), "the checkout was imported, not the installed copy"
    assert Path(repo_root) == work  # installed: default locations are relative to the working directory

    source = _sample_copy(tmp_path / "source")
    where_args = ["--source", str(source), "--lake", str(tmp_path / "lake")]
    ingest = _installed(target, work, "-m", "pipeline.cli", "ingest", "--from", f"{DAYS[0]}T00:00", "--to", "2026-01-28T23:00",
                        *where_args)
    assert ingest.returncode == 0, ingest.stdout + ingest.stderr
    run = _installed(target, work, "-m", "pipeline.cli", "run", "--interval-end", "2026-01-29T00:00", *where_args,
                     "--build", str(tmp_path / "build"))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "published" in run.stdout and "plan-20260129T0000Z" in run.stdout
    assert (tmp_path / "lake" / "plans" / "LATEST").read_text().strip() == "plan_id=plan-20260129T0000Z/attempt=1"
    assert (tmp_path / "build" / "iac" / "plan-20260129T0000Z" / "terraform" / "plan.json").is_file()
    assert (tmp_path / "build" / "reports" / "plan-20260129T0000Z.html").is_file()
    assert not (work / "lake").exists() and not (work / "build").exists()

    version = _installed(target, work, "-m", "pipeline.cli", "--version")
    assert version.returncode == 0 and version.stdout.startswith("peerscale 0")
