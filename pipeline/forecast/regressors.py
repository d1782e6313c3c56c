"""Which exogenous columns a model uses: every telemetry column is a candidate, cross-validation decides.

Why: the lake collects region and application telemetry (CPU, memory, bandwidth, active users,
transactions); a column that helps one model can only add noise to another, and which helps
depends on the fleet. So each model that reads exogenous columns (`Forecaster.uses_exog`: the
global GBM, Prophet) is cross-validated twice on the same windows — with the calendar alone, and
with the calendar plus every candidate — and keeps the set with the lower mean scaled pinball at τ
(ties keep the smaller set). The calendar uplift is known in advance and always kept; a column
that never varies carries no information and is no candidate.

The decision is per model and per run (per training shard for per-series models); the forecast
manifest (`info.regressors`) and the registry manifest (`regressors`) record it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.forecast.base import exog_columns
from pipeline.forecast.prep import EVENT_COLUMN

ALWAYS_KEPT = (EVENT_COLUMN,)


def candidates(frame: pd.DataFrame) -> list[str]:
    """The exogenous columns cross-validation may drop: every numeric non-key column but the
    calendar's, that takes more than one value."""
    return [c for c in exog_columns(frame) if c not in ALWAYS_KEPT and frame[c].nunique(dropna=True) > 1]


def even_sample(ids: list[str], size: int) -> list[str]:
    """Up to `size` ids spread evenly over the sorted ids (every kind of series, deterministic): where
    a large fleet decides its regressors."""
    ordered = sorted(ids)
    if len(ordered) <= size:
        return ordered
    return [ordered[round(i * (len(ordered) - 1) / (size - 1))] for i in range(size)]


def restrict(frame: pd.DataFrame, candidate_columns: list[str], used: list[str]) -> pd.DataFrame:
    """`frame` without the candidates not `used`."""
    drop = [c for c in candidate_columns if c not in used and c in frame.columns]
    return frame.drop(columns=drop) if drop else frame


def decide(pinball_without: pd.Series | None, pinball_with: pd.Series | None, scale: pd.Series,
           candidate_columns: list[str]) -> dict:
    """The set a model keeps, from each variant's per-series CV pinball at τ (`None`: the variant
    failed): the mean over the series both scored of pinball / the series' scale."""

    def mean_scaled(pins: pd.Series, ids: pd.Index) -> float:
        s = scale.reindex(ids).to_numpy(float)
        return float(np.mean(pins.reindex(ids).to_numpy(float) / np.where(s > 0, s, 1.0)))

    if pinball_with is None or pinball_with.empty:
        return {"candidates": candidate_columns, "used": [], "cv_scaled_pinball": {}, "reason": "with telemetry: CV failed"}
    if pinball_without is None or pinball_without.empty:
        return {"candidates": candidate_columns, "used": candidate_columns, "cv_scaled_pinball": {},
                "reason": "without telemetry: CV failed"}
    common = pinball_without.index.intersection(pinball_with.index)
    common = common[np.isfinite(pinball_without.reindex(common)) & np.isfinite(pinball_with.reindex(common))]
    if common.empty:
        return {"candidates": candidate_columns, "used": [], "cv_scaled_pinball": {}, "reason": "no series scored both ways"}
    without, with_ = mean_scaled(pinball_without, common), mean_scaled(pinball_with, common)
    used = candidate_columns if with_ < without else []
    return {"candidates": candidate_columns, "used": used, "series": len(common),
            "cv_scaled_pinball": {"without": round(without, 6), "with": round(with_, 6)}}


__all__ = ["ALWAYS_KEPT", "candidates", "decide", "restrict"]
