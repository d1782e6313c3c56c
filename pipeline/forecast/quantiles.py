"""Quantile helpers shared by forecasting and planning (numpy only)."""

from __future__ import annotations

import itertools

import numpy as np

from pipeline.common.schemas import FORECAST_QUANTILES

# Central interval level whose upper bound is the quantile q: level = (2q - 1) * 100.
QUANTILE_LEVELS: dict[float, int] = {q: round((2 * q - 1) * 100) for q in FORECAST_QUANTILES if q > 0.5}
INTERVAL_LEVELS: tuple[int, ...] = tuple(sorted({*QUANTILE_LEVELS.values(), 80, 95}))


def quantile_column(q: float) -> str:
    return f"q{round(q * 100)}"


def interpolate_quantile(columns: dict[float, np.ndarray], tau: float) -> np.ndarray:
    """The τ-quantile by linear interpolation between the stored quantile columns.

    τ outside the stored range is clamped to its nearest end, and the result is made
    monotone in τ by construction (columns are sorted first).
    """
    levels = sorted(columns)
    tau = float(np.clip(tau, levels[0], levels[-1]))
    for low, high in itertools.pairwise(levels):
        if low <= tau <= high:
            weight = 0.0 if high == low else (tau - low) / (high - low)
            return (1 - weight) * columns[low] + weight * columns[high]
    return columns[levels[-1]]


def pinball_loss(actual: np.ndarray, predicted: np.ndarray, tau: float) -> float:
    """Mean quantile (pinball) loss at τ: under-forecasts cost τ, over-forecasts 1 - τ."""
    diff = np.asarray(actual, float) - np.asarray(predicted, float)
    return float(np.mean(np.maximum(tau * diff, (tau - 1) * diff)))
