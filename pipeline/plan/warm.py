"""Warm capacity: the two-tier newsvendor behind a plan's running and warm (stopped, pre-initialised) capacity.

A warm instance is an EC2 Auto Scaling warm-pool instance in the Stopped state: it pays for its
EBS volumes only and starts in tens of seconds instead of the minutes of a cold launch. Per region,
window and resource, with D the demand, r the running capacity and w the warm capacity on top of
it, and per unit-hour:

* c  = `c_over`, an idle running unit (the region's on-demand unit price, `pipeline.plan.costs`);
* h  = `hold_fraction` × c, a warm unit held (stopped: EBS only);
* u_w = c × (1 + `start_penalty_multiple`), a unit served by starting a warm instance;
* u_c = `c_under`, a unit served cold (on demand), as the one-tier τ uses it.

Counting every cost against perfect foresight (exactly D running):

    C(r, w) = c·E(r − D)⁺ + h·w + u_w·E[min((D − r)⁺, w)] + u_c·E(D − r − w)⁺
            = c·E(r − D)⁺ + h·w + u_w·E(D − r)⁺ + (u_c − u_w)·E(D − r − w)⁺

    ∂C/∂w = h − (u_c − u_w)·P(D > r + w) = 0   ⇒  F(r + w) = τ_warm = 1 − h / (u_c − u_w)
    ∂C/∂r = c·F(r) − u_w·(1 − F(r)) − (u_c − u_w)·P(D > r + w) = c·F(r) − u_w·(1 − F(r)) − h = 0
                                              ⇒  F(r) = τ_run = (u_w + h) / (c + u_w)

So running covers up to where an idle running unit's saving over a warm one (c − h) balances a
warm start plus its hold (u_w + h) — τ_run = (u_w + h) / ((u_w + h) + (c − h)) — and warm covers
from there up to where holding a warm unit (h) balances what it saves over a cold start
(u_c − u_w). The interior solution exists only when τ_warm > τ_run; otherwise (h ≥ u_c − u_w,
or a warm start nearly as costly as a cold one) w = 0 and running covers the one-tier
τ = u_c / (c + u_c), exactly the planner's τ without a warm tier (`ResolvedCosts.tau`).

Defaults and their sources:

* `hold_fraction` 0.1: a stopped instance pays only its EBS volumes (AWS, "Warm pools for Amazon
  EC2 Auto Scaling": instances in a Stopped warm pool are charged for storage only). Assumption for
  a typical size: m5.large at $0.096/h (us-east-1, on demand) with a 100 GiB gp3 root volume at
  $0.08 per GiB-month ≈ $0.011/h, ≈ 0.11 of the running price; larger instances with the same
  volume are cheaper still, so 0.1 is a typical-size figure, to be set per fleet.
* `start_penalty_multiple` 1.0 (u_w = 2c): the cold penalty the planner uses by default is
  ≈ 8 × c (`CostModel`, c_under / c_over − 1); a warm start takes tens of seconds where a cold
  launch plus bootstrap takes minutes: `WARM_START_SHARE` = 1/8 of the wait (the IRC's warm latency class
  and the backtest's latency model use the same share), so an eighth of the penalty.
* `enabled` false: plans are running-only (one tier) unless the tier is switched on.

Layers, later wins: built-in defaults, `inventory/planner.json` `costs.warm`
({"enabled": true, "hold_fraction": 0.1, "start_penalty_multiple": 1.0}), PEERSCALE_WARM
("enabled=1,hold_fraction=0.1,start_penalty_multiple=1"), `peerscale run --warm` (same form).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

WARM_START_SHARE = 1.0 / 8.0  # modeled: a stopped warm-pool instance resumes in an eighth of a cold launch's wait
DEFAULT_HOLD_FRACTION = 0.1
DEFAULT_START_PENALTY_MULTIPLE = 1.0
WARM_KEYS = ("enabled", "hold_fraction", "start_penalty_multiple")


@dataclass(frozen=True)
class WarmCosts:
    """The warm tier's settings (see the module docstring) and where they came from."""

    enabled: bool = False
    hold_fraction: float = DEFAULT_HOLD_FRACTION
    start_penalty_multiple: float = DEFAULT_START_PENALTY_MULTIPLE
    sources: tuple[str, ...] = ("built-in defaults",)

    def to_manifest(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "hold_fraction": self.hold_fraction,
                "start_penalty_multiple": self.start_penalty_multiple, "sources": list(self.sources),
                "rule": "tau_run = (u_w + h) / (c + u_w), tau_warm = 1 - h / (u_c - u_w) (pipeline.plan.warm)"}


def _number(where: str, value: object, *, positive: bool) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {value!r} is not a number") from None
    if not math.isfinite(number) or number < 0 or (positive and number == 0):
        raise ValueError(f"{where}: {value!r} must be a {'positive' if positive else 'non-negative'}, finite number")
    return number


def _flag(where: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{where}: {value!r} is not true/false (1/0)")


def apply_layer(base: WarmCosts, payload: object, source: str) -> WarmCosts:
    """`base` with a `costs.warm` object on top; ValueError naming `source` on anything unknown or invalid."""
    if payload is None:
        return base
    if not isinstance(payload, dict):
        raise ValueError(f"{source}: costs.warm must be an object with {', '.join(WARM_KEYS)}")
    unknown = sorted(set(payload) - {*WARM_KEYS, "comment"})
    if unknown:
        raise ValueError(f"{source}: costs.warm has unknown keys {unknown}; known: {', '.join(WARM_KEYS)}")
    if not payload:
        return base
    return WarmCosts(
        enabled=_flag(f"{source}: warm.enabled", payload["enabled"]) if "enabled" in payload else base.enabled,
        hold_fraction=(_number(f"{source}: warm.hold_fraction", payload["hold_fraction"], positive=True)
                       if "hold_fraction" in payload else base.hold_fraction),
        start_penalty_multiple=(_number(f"{source}: warm.start_penalty_multiple", payload["start_penalty_multiple"], positive=False)
                                if "start_penalty_multiple" in payload else base.start_penalty_multiple),
        sources=(*base.sources, source),
    )


def parse_text(text: str, source: str) -> dict[str, str]:
    """`enabled=1,hold_fraction=0.1` (env variable, CLI option) as a `costs.warm` object."""
    payload: dict[str, str] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"{source}: {item.strip()!r} is not KEY=VALUE (keys: {', '.join(WARM_KEYS)})")
        payload[key.strip()] = value.strip()
    return payload


def resolve_warm(config_costs: dict[str, Any] | None, texts: tuple[tuple[str, str], ...] = ()) -> WarmCosts:
    """Defaults, then planner.json `costs.warm`, then each (source, text) of the environment and CLI."""
    warm = apply_layer(WarmCosts(), (config_costs or {}).get("warm"), "planner config")
    for source, text in texts:
        warm = apply_layer(warm, parse_text(text, source), source)
    return warm


def tier_taus(c_over: float, c_under: float, warm: WarmCosts) -> tuple[float, float | None]:
    """(τ_run, τ_warm) for one region and resource; τ_warm is None when warm capacity does not pay
    (then τ_run is the one-tier τ = c_under / (c_over + c_under))."""
    c, u_c = c_over, c_under
    one_tier = u_c / (c + u_c)
    if not warm.enabled:
        return one_tier, None
    h = warm.hold_fraction * c
    u_w = c * (1.0 + warm.start_penalty_multiple)
    if u_c - u_w <= h:
        return one_tier, None
    tau_run = (u_w + h) / (c + u_w)
    tau_warm = 1.0 - h / (u_c - u_w)
    if tau_warm <= tau_run:
        return one_tier, None
    return tau_run, tau_warm


__all__ = ["DEFAULT_HOLD_FRACTION", "DEFAULT_START_PENALTY_MULTIPLE", "WARM_START_SHARE", "WarmCosts", "apply_layer",
           "parse_text", "resolve_warm", "tier_taus"]
