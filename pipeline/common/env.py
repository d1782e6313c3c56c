"""Numeric settings from environment variables, read one way everywhere: unset or blank means the
default; anything else must parse and lie in range, or a ValueError names the variable, what it
holds and what it accepts (a typo in a deployment's env must not silently become the default)."""

from __future__ import annotations

import math
import os


def env_text(name: str, default: str) -> str:
    """The variable's value without surrounding blanks; `default` when unset or blank."""
    value = os.environ.get(name, "").strip()
    return value or default


def env_int(name: str, default: int, low: int = 1, high: int | None = None) -> int:
    """A whole number in [low, high] (no upper limit when high is None)."""
    text = env_text(name, str(default))
    accepted = f"use {low} to {high}" if high is not None else f"use a whole number ≥ {low}"
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{name}={text[:100]!r} is not a whole number; {accepted} (default {default})") from None
    if value < low or (high is not None and value > high):
        raise ValueError(f"{name}={value} is out of range; {accepted} (default {default})")
    return value


def env_float(name: str, default: float, low: float = 0.0) -> float:
    """A finite number ≥ low."""
    text = env_text(name, str(default))
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{name}={text[:100]!r} is not a number; use a number ≥ {low} (default {default})") from None
    if not math.isfinite(value) or value < low:
        raise ValueError(f"{name}={text[:100]!r} is out of range; use a finite number ≥ {low} (default {default})")
    return value


__all__ = ["env_float", "env_int", "env_text"]
