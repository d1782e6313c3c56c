"""Per-series quantile bands: several ways to put quantiles around a forecast, each scored per
series on the cross-validation windows, the best one kept.

One pooled error shape fits no real telemetry: some series are far calmer than the pool, some far
wilder, some skewed. So every series gets candidates, all honest out of sample:

- `pooled`: the engine's scale-location conformal calibration (pooled shape, per-series scale),
  refitted without the window it is scored on;
- `conformal`: the series' own cross-validation errors of the chosen forecast (scaled by the pooled
  horizon profile), from the other windows;
- `empirical`: the chosen forecast plus the quantiles of the series' own seasonal differences over
  its current regime, from the history before the window;
- `seasonal_naive`: the last season repeated plus those seasonal-difference quantiles (the
  yardstick, and the guardrail: a series where nothing beats it uses it).

Scores are the mean pinball loss at the plan's τ and its neighbouring stored quantiles. Seasonal
differences are taken over the *current regime*: after the last level shift, without long flat
stretches (unless the series is flat now), over at most `LOOKBACK_SEASONS` seasons.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from pipeline.common.schemas import FORECAST_QUANTILES

POOLED, CONFORMAL, EMPIRICAL, SNAIVE = "pooled", "conformal", "empirical", "seasonal_naive"
BLEND = "empirical+pooled"
#: ties go to the earlier. Not a candidate: the global GBM's own quantiles (its in-sample residual
#: quantiles); let compete, 136 of M4's 414 series chose them on CV and covered 71 % at 80 %
#: (M4 coverage 0.806 → 0.777, bench/RESULTS.md)
METHODS: tuple[str, ...] = (BLEND, EMPIRICAL, CONFORMAL, POOLED, SNAIVE)
LOOKBACK_SEASONS = 28  # seasonal differences older than this many seasons are not the current regime
SHIFT_K = 5.0  # a seasonal difference this many robust deviations out is "large"
MAD_TO_SD = 1.4826
#: a series' own error quantile at p is trusted from n errors only when n·(1 − p) reaches this
#: (with fewer, the highest quantile is one or two extreme errors and selection overfits them)
MIN_TAIL_ERRORS = 10
MIN_DIFFS_SEASONS = 2  # keep a regime cut (or flat-stretch removal) only if this many seasons of differences remain


def scoring_probs(tau: float) -> tuple[float, ...]:
    """τ and its neighbouring stored quantiles (the selection scores all three)."""
    qs = sorted({*FORECAST_QUANTILES, tau})
    i = qs.index(tau)
    return tuple(qs[max(i - 1, 0): i + 2])


def pinball(y: np.ndarray, q: np.ndarray, p: float) -> float:
    d = np.asarray(y, float) - np.asarray(q, float)
    return float(np.mean(np.maximum(p * d, (p - 1) * d)))


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of each run of True in `mask`."""
    padded = np.concatenate([[False], mask, [False]]).astype(int)
    edges = np.flatnonzero(np.diff(padded))
    return list(zip(edges[::2], edges[1::2]))


def regime_start(y: np.ndarray, m: int) -> int:
    """Index where the current regime begins: just after the last level shift.

    A level shift of size D makes the seasonal differences y[t] - y[t-m] ≈ D for a whole season
    (a run of large differences of one sign); a spike makes isolated large ones. The regime
    begins where the last such run starts (its first point is the first at the new level).
    """
    if len(y) < 3 * m:
        return 0
    d = y[m:] - y[:-m]
    moving = d[d != 0] if np.mean(d == 0) >= 0.5 else d  # mostly flat: judge by the moving part
    if len(moving) < m:
        return 0
    centre = np.median(moving)
    mad = MAD_TO_SD * np.median(np.abs(moving - centre))
    if not mad > 0:
        return 0
    z = (d - centre) / mad
    start = 0
    for sign in (1, -1):
        for a, b in _runs(sign * z > SHIFT_K):
            if b - a >= max(m // 2, 2):
                start = max(start, int(a) + m)
    return start


def seasonal_diffs(y: np.ndarray, m: int, lag: int, start: int | None = None) -> np.ndarray:
    """Seasonal differences at `lag` over the current regime (see the module docstring). `start`:
    `regime_start` of the finite values of `y` when the caller has it (it is the same for every lag)."""
    y = np.asarray(y, float)
    y = y[np.isfinite(y)]
    start = regime_start(y, m) if start is None else start
    if len(y) - start >= lag + MIN_DIFFS_SEASONS * m:
        y = y[start:]
    y = y[-(LOOKBACK_SEASONS * m + lag):]
    if len(y) <= lag:
        return np.zeros(1)
    d = y[lag:] - y[:-lag]
    # long flat stretches (both ends equal for a whole season) are not the regime's noise, unless
    # the series is flat now
    flat = d == 0
    if flat.any() and not flat[-m:].all():
        stale = np.zeros(len(d), bool)
        for a, b in _runs(flat):
            if b - a >= m:
                stale[a:b] = True
        if (~stale).sum() >= MIN_DIFFS_SEASONS * m:
            d = d[~stale]
    return d


def diff_offsets(y: np.ndarray, m: int, h: int, probs: Sequence[float]) -> dict[float, np.ndarray]:
    """Per step 0..h-1: the p-quantile of the seasonal differences at the lag seasonal naive uses
    for that step (m for the first season of the horizon, 2m for the second, ...)."""
    seasons = -(-h // m)
    y = np.asarray(y, float)
    y = y[np.isfinite(y)]
    start = regime_start(y, m)
    per_lag = {k: seasonal_diffs(y, m, k * m, start) for k in range(1, seasons + 1)}
    step_lag = np.arange(h) // m + 1
    table = np.array([np.quantile(per_lag[k], list(probs)) for k in range(1, seasons + 1)])  # lag × prob
    return {p: table[step_lag - 1, j] for j, p in enumerate(probs)}


def snaive_point(y: np.ndarray, m: int, h: int) -> np.ndarray:
    y = np.asarray(y, float)
    return np.resize(y[-m:], h) if len(y) >= m else np.full(h, y[-1] if len(y) else 0.0)


def horizon_bucket(steps: np.ndarray, horizon: int, n_buckets: int) -> np.ndarray:
    """The horizon bucket of each 0-based step (errors grow with the step; bands are sized per bucket)."""
    return np.minimum(np.asarray(steps) * n_buckets // max(horizon, 1), n_buckets - 1)


def final_band(method: str, y: np.ndarray, mean: np.ndarray, steps: np.ndarray, m: int, probs: Sequence[float],
               pooled: dict[float, np.ndarray], conformal: dict[float, np.ndarray] | None) -> dict[float, np.ndarray] | None:
    """The chosen method's quantiles over the horizon (None: keep the pooled band).

    What a method fixes when it is chosen comes in (`conformal`: the offsets per step, from the CV
    errors; `pooled`: the pooled band's quantiles); the rest is recomputed from `y`, the history at
    forecast time: seasonal naive's point and the seasonal-difference quantiles of the current regime.
    The engine (at forecast time) and the registry's scoring (from the stored choice) both call this."""
    h = int(steps.max()) + 1
    if method in (EMPIRICAL, SNAIVE, BLEND):
        offs = diff_offsets(y, m, h, probs)
        base = snaive_point(y, m, h)[steps] if method == SNAIVE else mean
        values = {q: base + offs[q][steps] for q in probs}
        if method == BLEND:
            values = {q: 0.5 * (v + pooled[q]) for q, v in values.items()}
        return values
    if method == CONFORMAL and conformal is not None:
        return {q: mean + conformal[q] for q in probs}
    return None


def conformal_level(p: float, n: int) -> float:
    """The probability at which to read n errors' empirical quantile for a conformal p-quantile
    (the finite-sample correction: pushed outward by (p − 0.5)·2/(n + 1), clipped to [0, 1])."""
    return min(max(p + (p - 0.5) * 2 / (n + 1), 0.0), 1.0)


def conformal_offsets(errors: np.ndarray, bucket: np.ndarray, g: np.ndarray, steps_bucket: np.ndarray,
                      probs: Sequence[float]) -> dict[float, np.ndarray]:
    """Quantiles of a series' own errors, normalised by the pooled horizon profile `g` (errors
    grow with the step), with the finite-sample conformal correction."""
    u = errors / g[bucket]
    n = len(u)
    out = {}
    for p in probs:
        out[p] = float(np.quantile(u, conformal_level(p, n))) * g[steps_bucket]
    return out


@dataclass
class SeriesCV:
    """One series' cross-validation evidence, window by window (arrays aligned on window, step)."""

    window: np.ndarray
    step: np.ndarray
    y: np.ndarray
    mean: np.ndarray  # the chosen forecast
    snaive: np.ndarray  # seasonal naive's forecast
    cut: dict[int, int]  # window → number of history points before its origin
    pooled: dict[float, np.ndarray] = field(default_factory=dict)  # pooled calibration, refitted without the window


def cv_candidates(cv: SeriesCV, history: np.ndarray, m: int, g: np.ndarray, n_buckets: int, horizon: int,
                  probs: Sequence[float], tail_p: float | None = None) -> dict[str, dict[float, np.ndarray]]:
    """Every candidate's quantiles at `probs` on the cross-validation rows, each fitted without the
    window it predicts. `tail_p`: the highest probability the choice scores (default max(probs));
    the own-error candidate needs enough errors beyond it (probs past it are diagnostics only)."""
    out: dict[str, dict[float, np.ndarray]] = {k: {p: np.full(len(cv.y), np.nan) for p in probs} for k in (EMPIRICAL, SNAIVE, CONFORMAL)}
    bucket = horizon_bucket(cv.step, horizon, n_buckets)
    windows = sorted(cv.cut)
    errors = cv.y - cv.mean
    for w in windows:
        rows = cv.window == w
        steps = cv.step[rows]
        offs = diff_offsets(history[: cv.cut[w]], m, int(steps.max()) + 1, probs)
        others = ~rows
        for p in probs:
            out[EMPIRICAL][p][rows] = cv.mean[rows] + offs[p][steps]
            out[SNAIVE][p][rows] = cv.snaive[rows] + offs[p][steps]
        if others.sum() * (1 - (tail_p or max(probs))) >= MIN_TAIL_ERRORS:
            conf = conformal_offsets(errors[others], bucket[others], g, bucket[rows], probs)
            for p in probs:
                out[CONFORMAL][p][rows] = cv.mean[rows] + conf[p]
    if not np.isfinite(out[CONFORMAL][probs[0]]).all():
        del out[CONFORMAL]  # too few errors in the other windows (or only one window)
    if cv.pooled:
        out[POOLED] = {p: cv.pooled[p] for p in probs if p in cv.pooled}
        out[BLEND] = {p: 0.5 * (out[EMPIRICAL][p] + out[POOLED][p]) for p in probs if p in out[POOLED]}
    return {k: v for k, v in out.items() if len(v) == len(probs) and all(np.isfinite(a).all() for a in v.values())}


def choose_method(candidates: dict[str, dict[float, np.ndarray]], y: np.ndarray, probs: Sequence[float]) -> tuple[str, dict[str, float]]:
    """The candidate with the lowest mean pinball over `probs`; seasonal naive when nothing beats it."""
    scores = {k: float(np.mean([pinball(y, q[p], p) for p in probs])) for k, q in candidates.items()}
    if not scores:
        return SNAIVE, {}
    order = [k for k in METHODS if k in scores]
    best = min(order, key=lambda k: (round(scores[k], 12), order.index(k)))
    if SNAIVE in scores and scores[best] >= scores[SNAIVE]:
        best = SNAIVE  # the guardrail
    return best, scores


def coverage(y: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> float:
    return float(np.mean((y >= lo) & (y <= hi))) if len(y) else float("nan")
