"""The policy gate in front of an automated apply: small changes go through, large ones ask a person.

The gate looks at :func:`pipeline.publish.diff.diff_plans` from the applied plan to the new one
(their first windows; an apply provisions the windows up to the next hourly run, see
:mod:`pipeline.iac.model`) and passes when every limit holds:

========================================  ===================================  =========
limit                                     environment variable                 default
========================================  ===================================  =========
hourly spend change, either direction     ``PEERSCALE_GATE_MAX_SPEND_CHANGE``  10 USD/h
instances added + removed (churn)         ``PEERSCALE_GATE_MAX_CHURN``         20
regions removed                           ``PEERSCALE_GATE_MAX_REGIONS_REMOVED``  0
new hourly spend (budget)                 ``PEERSCALE_GATE_BUDGET``            none
========================================  ===================================  =========

Nothing applied yet counts as a change from zero, so a first apply with a large plan asks.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["GateDecision", "GatePolicy", "evaluate_gate"]


@dataclass(frozen=True)
class GatePolicy:
    max_spend_change_per_hour: float = 10.0
    max_instance_churn: int = 20
    max_regions_removed: int = 0
    budget_per_hour: float | None = None

    def __post_init__(self) -> None:
        for name in ("max_spend_change_per_hour", "max_instance_churn", "max_regions_removed"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"gate limit {name} must be a finite number >= 0, not {value!r}")
        if self.budget_per_hour is not None and (not math.isfinite(self.budget_per_hour) or self.budget_per_hour < 0):
            raise ValueError(f"gate budget must be a finite number >= 0, not {self.budget_per_hour!r}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> GatePolicy:
        env = os.environ if env is None else env

        def number(name: str, default: float | None, kind: type = float) -> Any:
            text = env.get(name, "").strip()
            if not text:
                return default
            try:
                return kind(text)
            except ValueError as exc:
                raise ValueError(f"{name} must be a {'whole ' if kind is int else ''}number, not {text!r}") from exc

        return cls(
            max_spend_change_per_hour=number("PEERSCALE_GATE_MAX_SPEND_CHANGE", 10.0),
            max_instance_churn=number("PEERSCALE_GATE_MAX_CHURN", 20, int),
            max_regions_removed=number("PEERSCALE_GATE_MAX_REGIONS_REMOVED", 0, int),
            budget_per_hour=number("PEERSCALE_GATE_BUDGET", None),
        )


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    reasons: tuple[str, ...]  # the limits broken (empty when passed)
    policy: GatePolicy

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "reasons": list(self.reasons), "policy": asdict(self.policy)}


def evaluate_gate(diff: Mapping[str, Any], policy: GatePolicy) -> GateDecision:
    """Which limits the change in ``diff`` (see :mod:`pipeline.publish.diff`) breaks."""
    totals = diff["totals"]
    broken = []
    if abs(totals["cost_delta"]) > policy.max_spend_change_per_hour:
        broken.append(f"spend changes by {totals['cost_delta']:+.2f} $/h (limit ±{policy.max_spend_change_per_hour:g})")
    if totals["churn"] > policy.max_instance_churn:
        broken.append(f"{totals['churn']} instances added or removed (limit {policy.max_instance_churn})")
    if len(totals["regions_removed"]) > policy.max_regions_removed:
        broken.append(f"regions removed: {', '.join(totals['regions_removed'])} (limit {policy.max_regions_removed})")
    if policy.budget_per_hour is not None and totals["cost_new"] > policy.budget_per_hour:
        broken.append(f"new spend {totals['cost_new']:.2f} $/h is over the budget {policy.budget_per_hour:g} $/h")
    return GateDecision(passed=not broken, reasons=tuple(broken), policy=policy)
