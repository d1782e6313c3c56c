"""Run configuration: where sources and the lake live, and the cost parameters behind τ.

Everything comes from arguments or environment variables (never Airflow Variables), so the
same settings work for the CLI, `airflow dags test` and Celery workers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pipeline.common.env import env_int, env_text

PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # the installed `pipeline` package
# A source checkout (editable install) keeps its data next to the code; an installed package
# keeps it in the directory it is run from.
_CHECKOUT = PACKAGE_ROOT.parent
REPO_ROOT = _CHECKOUT if (_CHECKOUT / "pyproject.toml").is_file() and (_CHECKOUT / "dags").is_dir() else Path.cwd()


# Bounds of the numeric settings: a typo (PEERSCALE_HORIZON_HOURS=4800000) fails at start-up with
# the variable's name, instead of as a MemoryError deep inside the forecast.
HISTORY_DAYS_RANGE = (1, 366)
HORIZON_HOURS_RANGE = (1, 24 * 366)
PLAN_WINDOWS_RANGE = (1, 24 * 14)
# A plan's window length: whole hours, or windows that divide the hour (issue #16: a noisy hourly
# peak needs a smaller buffer over shorter windows, where committed demand is known more precisely).
PLAN_WINDOW_MINUTES = (60, 30, 15)


def _int_env(name: str, default: int, bounds: tuple[int, int]) -> int:
    """A whole-number environment variable within `bounds`; ValueError naming the variable otherwise."""
    return env_int(name, default, *bounds)


def _cost_env() -> tuple[tuple[str, str | None, str | None], ...]:
    """PEERSCALE_C_UNDER / PEERSCALE_C_OVER as one cost layer (parsed and checked by pipeline.plan.costs)."""
    under, over = os.environ.get("PEERSCALE_C_UNDER", "").strip(), os.environ.get("PEERSCALE_C_OVER", "").strip()
    return (("PEERSCALE_C_UNDER/PEERSCALE_C_OVER", under or None, over or None),) if under or over else ()


def _warm_env() -> tuple[tuple[str, str], ...]:
    """PEERSCALE_WARM ("enabled=1,hold_fraction=0.1,start_penalty_multiple=1") as one warm-tier layer (pipeline.plan.warm)."""
    text = os.environ.get("PEERSCALE_WARM", "").strip()
    return (("PEERSCALE_WARM", text),) if text else ()


@dataclass(frozen=True)
class CostModel:
    """Reference hourly costs behind the newsvendor quantile τ = c_under / (c_under + c_over).

    c_over is what an idle pre-allocated unit costs per hour; c_under what a unit of demand
    that misses the pre-allocation costs (an on-demand cold start: latency penalty plus the
    on-demand premium). Units are USD per resource unit-hour. The planner resolves the costs it
    uses per region from the catalog's prices, planner.json and PEERSCALE_C_UNDER/C_OVER
    (`pipeline.plan.costs`); these values are the reference proportions and the fallback where a
    region has no catalog prices.
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
    plan_windows: int = 6  # hours one plan covers (one window each at 60 minutes, 60 / plan_window_minutes below)
    plan_window_minutes: int = 60  # a plan window's length, one of PLAN_WINDOW_MINUTES
    daily_horizon_days: int = 14
    cost: CostModel = field(default_factory=CostModel)
    seed: int = 7
    # Cost settings as (source, c_under text, c_over text), applied by the planner over the catalog's
    # defaults and planner.json, in order: e.g. ("PEERSCALE_C_UNDER/C_OVER", "vcpu=0.5", None).
    cost_texts: tuple[tuple[str, str | None, str | None], ...] = ()
    # Warm-tier settings as (source, "key=value,..." text), over planner.json's costs.warm (pipeline.plan.warm).
    warm_texts: tuple[tuple[str, str], ...] = ()
    # Zone settings as (source, text), applied by the planner over the zone catalog and planner.json,
    # in order: e.g. ("PEERSCALE_ZONES", "3,eu-west-1=2") (pipeline.plan.zones).
    zone_texts: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.plan_window_minutes not in PLAN_WINDOW_MINUTES:
            raise ValueError(f"plan_window_minutes (PEERSCALE_PLAN_WINDOW_MINUTES) must be one of {list(PLAN_WINDOW_MINUTES)}, "
                             f"got {self.plan_window_minutes}")

    @property
    def windows_per_hour(self) -> int:
        """How many plan windows one hour holds (1 for hourly windows)."""
        return 60 // self.plan_window_minutes

    @property
    def plan_window_count(self) -> int:
        """How many windows one plan has: `plan_windows` hours of `plan_window_minutes` windows."""
        return self.plan_windows * self.windows_per_hour

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        """Settings from PEERSCALE_* environment variables, then explicit overrides."""
        base = cls(
            source_root=env_text("PEERSCALE_SOURCE", cls.source_root),
            lake_root=env_text("PEERSCALE_LAKE", cls.lake_root),
            build_root=env_text("PEERSCALE_BUILD", cls.build_root),
            history_days=_int_env("PEERSCALE_HISTORY_DAYS", cls.history_days, HISTORY_DAYS_RANGE),
            horizon_hours=_int_env("PEERSCALE_HORIZON_HOURS", cls.horizon_hours, HORIZON_HOURS_RANGE),
            plan_windows=_int_env("PEERSCALE_PLAN_WINDOWS", cls.plan_windows, PLAN_WINDOWS_RANGE),
            plan_window_minutes=_int_env("PEERSCALE_PLAN_WINDOW_MINUTES", cls.plan_window_minutes, (1, 60)),
            cost_texts=_cost_env(),
            warm_texts=_warm_env(),
            zone_texts=(("PEERSCALE_ZONES", env_text("PEERSCALE_ZONES", "")),) if env_text("PEERSCALE_ZONES", "") else (),
        )
        if base.plan_windows > base.horizon_hours:
            raise ValueError(f"PEERSCALE_PLAN_WINDOWS={base.plan_windows} is more than PEERSCALE_HORIZON_HOURS={base.horizon_hours}: "
                             "every window of a plan needs a forecast; lower the windows or raise the horizon")
        # Any: `replace` checks the field names; each override already has its field's type.
        clean: dict[str, Any] = {k: v for k, v in overrides.items() if v is not None}
        return replace(base, **clean) if clean else base
