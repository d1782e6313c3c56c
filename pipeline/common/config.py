"""Run configuration: where sources and the lake live, and the cost parameters behind τ.

Everything comes from arguments or environment variables (never Airflow Variables), so the
same settings work for the CLI, `airflow dags test` and Celery workers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # the installed `pipeline` package
# A source checkout (editable install) keeps its data next to the code; an installed package
# keeps it in the directory it is run from.
_CHECKOUT = PACKAGE_ROOT.parent
REPO_ROOT = _CHECKOUT if (_CHECKOUT / "pyproject.toml").is_file() and (_CHECKOUT / "dags").is_dir() else Path.cwd()


def _env(name: str, default: str) -> str:
    value = os.environ.get(name, "").strip()
    return value or default


@dataclass(frozen=True)
class CostModel:
    """Hourly costs behind the newsvendor quantile τ = c_under / (c_under + c_over).

    c_over is what an idle pre-allocated unit costs per hour; c_under what a unit of demand
    that misses the pre-allocation costs (an on-demand cold start: latency penalty plus the
    on-demand premium). Units are USD per resource unit-hour.
    """

    c_over: dict[str, float] = field(
        default_factory=lambda: {"vcpu": 0.048, "memory_gib": 0.006, "storage_gib": 0.0001, "bandwidth_gbps": 0.02}
    )
    c_under: dict[str, float] = field(
        default_factory=lambda: {"vcpu": 0.43, "memory_gib": 0.054, "storage_gib": 0.0009, "bandwidth_gbps": 0.18}
    )

    def tau(self, resource_type: str) -> float:
        """The cost-optimal service level for one resource type."""
        under, over = self.c_under[resource_type], self.c_over[resource_type]
        return under / (under + over)


@dataclass(frozen=True)
class Settings:
    """Locations and knobs of one peerscale deployment."""

    source_root: str = str(REPO_ROOT / "data_samples")
    lake_root: str = str(REPO_ROOT / "lake")
    build_root: str = str(REPO_ROOT / "build")
    history_days: int = 14  # history the hourly forecast fits on
    horizon_hours: int = 48  # hourly forecast horizon
    plan_windows: int = 6  # hourly windows one plan covers
    daily_horizon_days: int = 14
    cost: CostModel = field(default_factory=CostModel)
    seed: int = 7

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        """Settings from PEERSCALE_* environment variables, then explicit overrides."""
        base = cls(
            source_root=_env("PEERSCALE_SOURCE", cls.source_root),
            lake_root=_env("PEERSCALE_LAKE", cls.lake_root),
            build_root=_env("PEERSCALE_BUILD", cls.build_root),
            history_days=int(_env("PEERSCALE_HISTORY_DAYS", str(cls.history_days))),
            horizon_hours=int(_env("PEERSCALE_HORIZON_HOURS", str(cls.horizon_hours))),
            plan_windows=int(_env("PEERSCALE_PLAN_WINDOWS", str(cls.plan_windows))),
        )
        # Any: `replace` checks the field names; each override already has its field's type.
        clean: dict[str, Any] = {k: v for k, v in overrides.items() if v is not None}
        return replace(base, **clean) if clean else base
