"""Coherent forecasts across a two-level hierarchy (aggregates = sums of bottom series).

`reconcile_wls` is the weighted least-squares (MinT with a diagonal covariance) projection:
ỹ = S (Sᵀ W⁻¹ S)⁻¹ Sᵀ W⁻¹ ŷ with W = each series' out-of-sample error variance, so the
series we forecast worse move more. Bottom values are then clipped at 0 and aggregates are set
to the sum of their bottoms: the result is exactly coherent (bottom-up on the reconciled bottoms).
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def summing_matrix(hierarchy: dict[str, list[str]], bottoms: list[str]) -> tuple[list[str], np.ndarray]:
    """Rows: aggregates (in hierarchy order) then bottoms; columns: bottoms."""
    pos = {b: i for i, b in enumerate(bottoms)}
    aggregates = list(hierarchy)
    S = np.zeros((len(aggregates) + len(bottoms), len(bottoms)))
    for r, agg in enumerate(aggregates):
        for child in hierarchy[agg]:
            S[r, pos[child]] = 1.0
    S[len(aggregates):, :] = np.eye(len(bottoms))
    return aggregates + bottoms, S


def reconcile_wls(forecast: pd.DataFrame, hierarchy: dict[str, list[str]], variance: dict[str, float] | None = None,
                  method: str = "wls") -> pd.DataFrame:
    """Reconcile `mean` (and shift every quantile column by the same amount) per timestamp.

    forecast: columns series_id, ds, mean, q*/lo_*/hi_*. method: "wls" (variance weights,
    falling back to structural weights where a variance is unknown) or "bottom_up".
    """
    present = set(forecast["series_id"])  # once: thousands of children each look it up
    hierarchy = {a: [c for c in kids if c in present] for a, kids in hierarchy.items()}
    hierarchy = {a: kids for a, kids in hierarchy.items() if kids and a in present}
    if not hierarchy:
        return forecast
    bottoms = sorted({c for kids in hierarchy.values() for c in kids})
    order, S = summing_matrix(hierarchy, bottoms)
    sub = forecast[forecast["series_id"].isin(order)]
    wide = sub.pivot(index="ds", columns="series_id", values="mean").reindex(columns=order)
    if wide.isna().any().any():
        return forecast  # series with different horizons: leave as is
    Y = wide.to_numpy().T  # (series, time)
    if method == "bottom_up":
        B = Y[len(hierarchy):]
    else:
        structural = S.sum(axis=1)
        w = np.array([float(variance.get(s, np.nan)) if variance else np.nan for s in order])
        # series without an error variance: their structural weight, scaled like the others
        fallback = structural * np.nanmedian(np.where(w > 0, w / structural, np.nan)) if np.isfinite(w).any() else structural
        w = np.where(np.isfinite(w) & (w > 0), w, fallback)
        w = np.where(np.isfinite(w) & (w > 0), w, structural)
        StWinv = S.T * (1.0 / w)  # S.T @ diag(1/w) without the dense (series × series) diagonal
        G = np.linalg.solve(StWinv @ S, StWinv)
        B = G @ Y
    B = np.maximum(B, 0.0)
    reconciled = S @ B
    delta = pd.DataFrame(reconciled.T - Y.T, index=pd.Index(wide.index, name="ds"), columns=pd.Index(order, name="series_id"))
    delta = delta.stack().rename("delta").reset_index()
    out = forecast.merge(delta, on=["series_id", "ds"], how="left")
    d = out.pop("delta").fillna(0.0).to_numpy()
    shift = [c for c in out.columns if c == "mean" or c.startswith(("q", "lo_", "hi_"))]
    out[shift] = np.maximum(out[shift].to_numpy() + d[:, None], 0.0)
    qcols = sorted([c for c in out.columns if c.startswith("q") and c[1:].isdigit()], key=lambda c: int(c[1:]))
    out[qcols] = np.maximum.accumulate(out[qcols].to_numpy(), axis=1)
    return out


__all__ = ["reconcile_wls", "summing_matrix"]
