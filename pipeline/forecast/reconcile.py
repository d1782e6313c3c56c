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


def hierarchy_blocks(hierarchy: dict[str, list[str]]) -> list[dict[str, list[str]]]:
    """Split the hierarchy into independent blocks: aggregates that share no bottom series never
    interact in the projection, so each block is solved on its own (linear in the number of blocks,
    where one dense system over every pair would be cubic in it)."""
    parent: dict[str, str] = {}

    def root(a: str) -> str:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    owner: dict[str, str] = {}
    for agg, kids in hierarchy.items():
        parent.setdefault(agg, agg)
        for child in kids:
            if child in owner:
                parent[root(agg)] = root(owner[child])
            else:
                owner[child] = agg
    blocks: dict[str, dict[str, list[str]]] = {}
    for agg, kids in hierarchy.items():
        blocks.setdefault(root(agg), {})[agg] = kids
    return list(blocks.values())


def _weights(order: list[str], structural: np.ndarray, variance: dict[str, float] | None) -> np.ndarray:
    """Each series' error variance; where unknown, its structural weight scaled like the others."""
    w = np.array([float(variance.get(s, np.nan)) if variance else np.nan for s in order])
    fallback = structural * np.nanmedian(np.where(w > 0, w / structural, np.nan)) if np.isfinite(w).any() else structural
    w = np.where(np.isfinite(w) & (w > 0), w, fallback)
    return np.where(np.isfinite(w) & (w > 0), w, structural)


def _reconcile_block(block: dict[str, list[str]], wide: pd.DataFrame, weight: dict[str, float], method: str) -> pd.DataFrame:
    """Reconciled minus original `mean` for the series of one block: (ds × series) deltas."""
    bottoms = sorted({c for kids in block.values() for c in kids})
    order, S = summing_matrix(block, bottoms)
    Y = wide[order].to_numpy().T  # (series, time)
    if method == "bottom_up":
        B = Y[len(block):]
    else:
        w = np.array([weight[s] for s in order])
        StWinv = S.T * (1.0 / w)  # S.T @ diag(1/w) without the dense (series × series) diagonal
        B = np.linalg.solve(StWinv @ S, StWinv @ Y)
    reconciled = S @ np.maximum(B, 0.0)
    return pd.DataFrame(reconciled.T - Y.T, index=wide.index, columns=pd.Index(order, name="series_id"))


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
    order = list(hierarchy) + bottoms
    structural = np.array([len(hierarchy[s]) if s in hierarchy else 1 for s in order], dtype=float)
    sub = forecast[forecast["series_id"].isin(order)]
    wide = sub.pivot(index="ds", columns="series_id", values="mean").reindex(columns=order)
    if wide.isna().any().any():
        return forecast  # series with different horizons: leave as is
    weight = dict(zip(order, _weights(order, structural, variance)))
    deltas = [_reconcile_block(block, wide, weight, method) for block in hierarchy_blocks(hierarchy)]
    delta = pd.concat(deltas, axis=1)
    delta.index.name = "ds"
    delta = delta.stack().rename("delta").reset_index()
    out = forecast.merge(delta, on=["series_id", "ds"], how="left")
    d = out.pop("delta").fillna(0.0).to_numpy()
    shift = [c for c in out.columns if c == "mean" or c.startswith(("q", "lo_", "hi_"))]
    out[shift] = np.maximum(out[shift].to_numpy() + d[:, None], 0.0)
    qcols = sorted([c for c in out.columns if c.startswith("q") and c[1:].isdigit()], key=lambda c: int(c[1:]))
    out[qcols] = np.maximum.accumulate(out[qcols].to_numpy(), axis=1)
    return out


__all__ = ["hierarchy_blocks", "reconcile_wls", "summing_matrix"]
