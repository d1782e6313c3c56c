"""A global learned model: one gradient-boosted model across every series (scikit-learn).

Each training row is (series, origin t, step h). Features are computed from the history strictly
before t, normalised per window: c = mean of the last season, s = mean absolute seasonal
difference over the lookback (the MASE scale of the window). The model learns the *correction to
seasonal naive*, target = (y[t+h] - c)/s - (y[t+h-k] - c)/s with k the seasonal lag, which makes
smooth and spiky, large and small series one learning problem. Features:

- the last season of normalised values; the same phase over the previous seasons (profile);
  the weekly anchors y[t+h-168], y[t+h-336] for hourly data; per-season means (trend);
- h and the phase of the target; the window's level-to-scale ratio;
- calendar of the target time (hour of day, day of week) when timestamps are real;
- every exogenous column at the target time (event uplift, lagged telemetry, ...).

All windows are gathered from flat arrays with cumulative sums, never materialised, so training
on 100k+ rows costs seconds. Fitting once before the first cross-validation origin and
forecasting at every origin is the `refit=False` shortcut statsforecast also offers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from pipeline.common.schemas import FORECAST_LEVELS, FORECAST_QUANTILES
from pipeline.forecast.base import (
    MIN_SCALE,
    RELATIVE_SCALE_FLOOR,
    Forecaster,
    NotEnoughData,
    exog_columns,
    future_index,
    worker_count,
)
from pipeline.forecast.quantiles import quantile_column

N_BUCKETS = 4  # horizon buckets of the model's own residual quantiles
PREDICT_CHUNK_ROWS = 60_000  # forecast rows whose features are built and predicted at once
PARALLEL_PREDICT_ROWS = 20_000  # fewer rows predict on the calling thread (a pool costs more than it saves)
PARALLEL_FIT_ROWS = 40_000  # fewer training rows fit their bags one after another
MIN_BAG_ROWS = 5_000  # training rows per bag at least (fewer rows: fewer bags)


def _threads(n: int | None, user_api: str | None = None) -> Any:
    """Cap OpenMP threads: on a shared machine OpenMP's spin-waiting makes 2 threads 10× slower
    than 1 (measured: 20k rows, 150 iterations: 3 s vs 44 s under load). None = no cap.
    `user_api="openmp"` caps only OpenMP, whose setting is per thread (safe from worker threads)."""
    from contextlib import nullcontext

    if n is None:
        return nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(int(n), user_api=user_api)


def _fit_booster(X: np.ndarray, y: np.ndarray, booster: dict, seed: int, n_threads: int | None,
                 user_api: str | None = None) -> Any:
    from sklearn.ensemble import HistGradientBoostingRegressor

    kwargs = {"quantile": 0.5} if booster["loss"] == "quantile" else {}
    model = HistGradientBoostingRegressor(**booster, l2_regularization=1.0, early_stopping=False, random_state=seed, **kwargs)
    with _threads(n_threads, user_api):
        model.fit(X, y)
    return model


class _Bagged:
    """The mean of several boosters."""

    def __init__(self, models: list[Any]) -> None:
        self.models = models

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.mean([m.predict(X) for m in self.models], axis=0)


@dataclass
class _Flat:
    """Series laid end to end (history + horizon slots) with their offsets and cumulative sums."""

    ids: np.ndarray
    offsets: np.ndarray  # start of each series in the flat arrays
    lengths: np.ndarray  # observed points per series (horizon slots excluded)
    y: np.ndarray
    cy: np.ndarray  # cumsum with a leading 0: sum(y[a:b]) = cy[b] - cy[a]
    cd: np.ndarray  # same for |y_i - y_{i-m}| (0 for the first season of each series)
    hour: np.ndarray
    dow: np.ndarray
    exog: np.ndarray  # (n, k)


def _flatten(frames: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]], m: int) -> _Flat:
    ids, offsets, lengths, ys, ds, xs = [], [], [], [], [], []
    pos = 0
    for uid, y, dts, x in frames:
        ids.append(uid)
        offsets.append(pos)
        lengths.append(int(np.sum(~np.isnan(y))))
        ys.append(y)
        ds.append(dts)
        xs.append(x)
        pos += len(y)
    y = np.concatenate(ys)
    diffs = []
    for arr in ys:
        d = np.zeros(len(arr))
        if len(arr) > m:
            d[m:] = np.abs(arr[m:] - arr[:-m])
        diffs.append(np.nan_to_num(d))
    d = np.concatenate(diffs)
    stamp = pd.DatetimeIndex(np.concatenate(ds))
    return _Flat(
        ids=np.array(ids, dtype=object), offsets=np.array(offsets), lengths=np.array(lengths), y=y,
        cy=np.concatenate([[0.0], np.cumsum(np.nan_to_num(y))]), cd=np.concatenate([[0.0], np.cumsum(d)]),
        hour=stamp.hour.to_numpy(), dow=stamp.dayofweek.to_numpy(), exog=np.concatenate(xs) if xs else np.zeros((0, 0)),
    )


class GlobalGBMModel(Forecaster):
    """Global HistGradientBoosting on normalised lag / calendar / event features (direct multi-step).

    params: lookback (default: the longest of 14, 7, 3, 2, 1 seasons the data allows), max_rows
    (120 000 sampled training rows), max_iter (150), learning_rate (0.1), max_leaf_nodes (31),
    min_samples_leaf (100), loss ("quantile" at 0.5: the median, robust to bursts), calendar
    (True: use hour/day-of-week of the target; set False for synthetic timestamps), seed (0),
    bags (2: boosters on disjoint halves of the rows, averaged; trained on parallel threads
    when n_jobs allows), n_threads (1: OpenMP threads per booster; None uses all),
    refit (True; False keeps the model trained by `cross_validate` and only moves the origin).
    """

    name = "global_gbm"
    is_global = True
    uses_exog = True
    min_seasons = 1.0
    robust = True  # median loss on raw inputs: the engine does not clean outliers for it

    def __init__(self, season_length: int, freq: str, n_jobs: int = 1, **params: Any) -> None:
        super().__init__(season_length, freq, n_jobs=n_jobs, **params)
        self._model: Any = None
        self._horizon = 0
        self._lookback = 0
        self._resid_q: dict[float, np.ndarray] = {}

    # -- configuration --------------------------------------------------------------------------
    def _p(self, key: str, default: Any) -> Any:
        return self.params.get(key, default)

    def _choose_lookback(self, n_max: int, h: int) -> int:
        m = self.season_length
        if self._p("lookback", None):
            return int(self._p("lookback", None))
        for seasons in (14, 7, 3, 2, 1):
            lookback = seasons * m
            if lookback + h + min(24, m) <= n_max:
                return lookback
        raise NotEnoughData(f"global_gbm: longest series has {n_max} points; needs at least {m + h + min(24, m)} "
                            f"for a {m}-step lookback and a {h}-step horizon")

    # -- data ----------------------------------------------------------------------------------
    def _frames(self, history: pd.DataFrame, extra: int, future: pd.DataFrame | None) -> list:
        """Per series: (id, y with `extra` NaN horizon slots, timestamps, exog rows).

        The columns are read once and sliced per series, and the known future looked up in one merge:
        a pandas group and a reindex per series cost ~1.5 ms each (15 s at 10k series)."""
        exog = self._exog
        offset = pd.Timedelta(pd.tseries.frequencies.to_offset(self.freq))
        groups = history.groupby("unique_id", sort=True).indices
        uids = sorted(groups)
        y_all, ds_all = history["y"].to_numpy(float), history["ds"].to_numpy()
        x_all = history[exog].to_numpy(float) if exog else np.zeros((len(history), 0))
        known = self._known_future(uids, [ds_all[groups[u][-1]] for u in uids], extra, offset, future) if extra and exog else None
        frames = []
        for i, uid in enumerate(uids):
            rows = groups[uid]
            y, dts, x = y_all[rows], ds_all[rows], x_all[rows]
            if extra:
                steps = dts[-1] + np.arange(1, extra + 1) * offset
                fx = np.zeros((extra, len(exog)))
                if exog:
                    fx[:] = x[-1] if len(x) else 0.0  # carry the last value unless the future says otherwise
                    if known is not None:
                        part = known[i * extra:(i + 1) * extra]
                        fx = np.where(np.isnan(part), fx, part)
                y = np.concatenate([y, np.full(extra, np.nan)])
                dts = np.concatenate([dts, steps])
                x = np.concatenate([x, fx])
            frames.append((uid, y, dts, np.nan_to_num(x)))
        return frames

    def _known_future(self, uids: list, last: list, extra: int, offset: pd.Timedelta,
                      future: pd.DataFrame | None) -> np.ndarray | None:
        """The future's exogenous values at each series' `extra` steps after its `last` stamp
        (rows in `uids` order, NaN where the future says nothing), or None without a future."""
        if future is None or not len(future):
            return None
        validated = self._validated(future.assign(y=np.nan) if "y" not in future.columns else future)
        steps = np.arange(1, extra + 1) * offset
        want = pd.DataFrame({"unique_id": np.repeat(np.array([str(u) for u in uids], dtype=object), extra),
                             "ds": (np.repeat(np.array(last), extra) + np.tile(steps, len(uids))).astype(validated["ds"].dtype)})
        found = want.merge(validated[["unique_id", "ds", *self._exog]], on=["unique_id", "ds"], how="left", validate="many_to_one")
        return found[self._exog].to_numpy(float)

    def _features(self, flat: _Flat, series: np.ndarray, base: np.ndarray,
                  h: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Feature matrix for rows (series index, flat index of origin t, step h); also c, s, anchor."""
        m, lookback = self.season_length, self._lookback
        y = np.nan_to_num(flat.y)
        start = flat.offsets[series]
        c = (flat.cy[base] - flat.cy[base - m]) / m
        first_diff = np.maximum(base - lookback + m, start + m)
        n_diff = np.maximum(base - first_diff, 1)
        s = (flat.cd[base] - flat.cd[first_diff]) / n_diff
        s = np.maximum(s, np.maximum(RELATIVE_SCALE_FLOOR * np.abs(c), MIN_SCALE))
        cols = [(y[base[:, None] - m + np.arange(m)[None, :]] - c[:, None]) / s[:, None]]
        k = (h // m + 1) * m
        n_profile = min(7, max(1, (lookback - self._horizon_seasons * m) // m + 1))
        prof = np.stack([(y[np.maximum(base + h - k - m * j, start)] - c) / s for j in range(n_profile)], axis=1)
        cols.append(prof)
        if m == 24:
            for lag in (168, 336):
                if lookback >= lag and self._horizon <= lag:
                    cols.append(((y[np.maximum(base + h - lag, start)] - c) / s)[:, None])
        n_means = min(7, lookback // m)
        means = [((flat.cy[base - m * j] - flat.cy[base - m * (j + 1)]) / m - c) / s for j in range(n_means)]
        cols.append(np.stack(means, axis=1))
        cols.append(np.stack([h, h % m, c / s, np.log(s / np.maximum(np.abs(c), MIN_SCALE))], axis=1))
        if self._p("calendar", True):
            target = base + h
            cols.append(np.stack([flat.hour[target], flat.dow[target]], axis=1))
        if flat.exog.shape[1]:
            cols.append(flat.exog[base + h])
        return np.concatenate(cols, axis=1), c, s, prof[:, 0]

    # -- training ------------------------------------------------------------------------------
    def _train(self, flat: _Flat, h: int, cutoff_len: np.ndarray | None = None) -> None:
        """Fit on rows whose target lies in the first `cutoff_len` points of each series."""
        lookback = self._lookback
        usable = flat.lengths if cutoff_len is None else np.minimum(cutoff_len, flat.lengths)
        n_origins = np.maximum(usable - lookback - h + 1, 0)  # origins t in [lookback, usable - h]
        total = int(n_origins.sum())
        if total == 0:
            raise NotEnoughData(f"global_gbm: no training window of {lookback}+{h} points in any series")
        rng = np.random.default_rng(int(self._p("seed", 0)))
        max_rows = int(self._p("max_rows", 120_000))
        n_rows = min(max_rows, total * h)
        pick = rng.choice(total * h, size=n_rows, replace=False) if total * h > n_rows else np.arange(total * h)
        window, step = np.divmod(pick, h)
        cum = np.concatenate([[0], np.cumsum(n_origins)])
        series = np.searchsorted(cum, window, side="right") - 1
        origin = window - cum[series] + lookback
        base = flat.offsets[series] + origin
        X, c, s, anchor = self._features(flat, series, base, step)
        target = (np.nan_to_num(flat.y[base + step]) - c) / s - anchor
        booster = {
            "loss": self._p("loss", "quantile"), "max_iter": int(self._p("max_iter", 150)),
            "learning_rate": float(self._p("learning_rate", 0.1)), "max_leaf_nodes": int(self._p("max_leaf_nodes", 31)),
            "min_samples_leaf": int(self._p("min_samples_leaf", 100)),
        }
        # Bagging: `bags` boosters on disjoint shares of the rows, averaged. The split depends only
        # on the seed, so the forecast is the same whether the bags train one after another or side
        # by side. Side by side they run on threads: the histogram and split loops release the GIL,
        # the threads share X (processes copied it and started in ~1 s, importing scikit-learn),
        # and each thread caps only its own OpenMP threads (see _threads).
        bags = max(1, min(int(self._p("bags", 2)), len(X) // MIN_BAG_ROWS or 1))
        parts = np.array_split(rng.permutation(len(X)), bags)
        seed = int(self._p("seed", 0))
        n_threads = self._p("n_threads", 1)
        workers = worker_count(self.n_jobs, bags) if len(X) >= PARALLEL_FIT_ROWS else 1
        if workers > 1:
            from concurrent.futures import ThreadPoolExecutor

            def fit(b: int) -> Any:
                return _fit_booster(X[parts[b]], target[parts[b]], booster, seed + b, n_threads, "openmp")

            with ThreadPoolExecutor(workers, thread_name_prefix="gbm-fit") as pool:
                models = list(pool.map(fit, range(bags)))
        else:
            models = [_fit_booster(X[part], target[part], booster, seed + b, n_threads) for b, part in enumerate(parts)]
        model = _Bagged(models)
        self._model = model
        # The model's own spread: quantiles of its normalised in-sample residuals per horizon bucket.
        sub = rng.choice(len(X), size=min(len(X), 20_000), replace=False)
        with _threads(self._p("n_threads", 1)):
            resid = target[sub] - model.predict(X[sub])  # in-sample: the bands are narrow; the engine recalibrates
        bucket = np.minimum(step[sub] * N_BUCKETS // h, N_BUCKETS - 1)
        probs = sorted({*FORECAST_QUANTILES, *[0.5 - lv / 200 for lv in FORECAST_LEVELS], *[0.5 + lv / 200 for lv in FORECAST_LEVELS]})
        self._resid_q = {p: np.array([np.quantile(resid[bucket == b], p) if np.any(bucket == b) else np.quantile(resid, p)
                                      for b in range(N_BUCKETS)]) for p in probs}

    def _prepare(self, history: pd.DataFrame, h: int) -> None:
        self._exog = exog_columns(history)
        self._horizon = h
        self._horizon_seasons = -(-h // self.season_length)
        if h > 168 and self.season_length == 24:
            raise NotEnoughData("global_gbm: horizons beyond one week are not supported for hourly data")
        n_max = int(history.groupby("unique_id").size().max())
        self._lookback = self._choose_lookback(n_max, h)

    def _pad(self, flat: _Flat) -> _Flat:
        """Series shorter than the lookback get their first season tiled backwards."""
        m, lookback = self.season_length, self._lookback
        need = lookback + m
        if (flat.lengths >= need).all():
            return flat
        frames = []
        ends = np.append(flat.offsets[1:], len(flat.y))
        for i, uid in enumerate(flat.ids):
            a, b = flat.offsets[i], ends[i]
            y, x = flat.y[a:b], flat.exog[a:b]
            hour, dow = flat.hour[a:b], flat.dow[a:b]
            short = need - flat.lengths[i]
            if short > 0:
                obs = y[~np.isnan(y)]
                seed = obs[:m] if len(obs) >= m else np.full(m, obs.mean() if len(obs) else 0.0)
                reps = -(-short // m)
                pad = np.tile(seed, reps)[-short:] if len(obs) >= m else np.full(short, seed.mean())
                y = np.concatenate([pad, y])
                x = np.concatenate([np.repeat(x[:1], short, axis=0), x]) if len(x) else x
                hour = np.concatenate([np.resize(hour[:m] if len(hour) >= m else hour, short), hour])
                dow = np.concatenate([np.resize(dow[:m] if len(dow) >= m else dow, short), dow])
            frames.append((uid, y, hour, dow, x))
        offsets, pos = [], 0
        for f in frames:
            offsets.append(pos)
            pos += len(f[1])
        y = np.concatenate([f[1] for f in frames])
        lengths = np.array([int(np.sum(~np.isnan(f[1]))) for f in frames])
        diffs = []
        for f in frames:
            arr = np.nan_to_num(f[1])
            d = np.zeros(len(arr))
            if len(arr) > m:
                d[m:] = np.abs(arr[m:] - arr[:-m])
            diffs.append(d)
        return _Flat(ids=flat.ids, offsets=np.array(offsets), lengths=lengths, y=y,
                     cy=np.concatenate([[0.0], np.cumsum(np.nan_to_num(y))]), cd=np.concatenate([[0.0], np.cumsum(np.concatenate(diffs))]),
                     hour=np.concatenate([f[2] for f in frames]), dow=np.concatenate([f[3] for f in frames]),
                     exog=np.concatenate([f[4] for f in frames]))

    def _forecast_at(self, flat: _Flat, origins: np.ndarray, h: int, levels: Sequence[int]) -> dict[str | float, np.ndarray]:
        """Forecasts for steps 0..h-1 after `origins` (per series, in-series index of t).

        The rows go through the boosters in chunks of series: the feature matrix of one chunk is
        resident at a time (at 10k series × 48 steps the whole one is ~1 GB), and the chunks run on
        one thread per core — scikit-learn's tree predict releases the GIL, so threads share the
        flat arrays instead of copying them to processes. Each row's forecast depends on its own
        features only, so any chunking gives the same numbers."""
        n = len(flat.ids)
        threads = worker_count(self.n_jobs, n) if n * h >= PARALLEL_PREDICT_ROWS else 1
        n_chunks = min(n, max(threads, -(-n * h // PREDICT_CHUNK_ROWS)))
        chunks = np.array_split(np.arange(n), n_chunks)

        def run(series: np.ndarray) -> dict[str | float, np.ndarray]:
            return self._forecast_series(flat, series, origins[series], h)

        if threads > 1:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(threads, thread_name_prefix="gbm-predict") as pool:
                parts = list(pool.map(run, chunks))
        else:
            parts = [run(chunk) for chunk in chunks]
        return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}

    def _forecast_series(self, flat: _Flat, series_index: np.ndarray, origins: np.ndarray, h: int) -> dict[str | float, np.ndarray]:
        """`_forecast_at` for the series `series_index` (their origins `origins`), rows in series order."""
        series = np.repeat(series_index, h)
        step = np.tile(np.arange(h), len(series_index))
        base = flat.offsets[series] + np.repeat(origins, h)
        X, c, s, anchor = self._features(flat, series, base, step)
        # OpenMP's thread count is per calling thread: cap this one's (see _threads), not BLAS's (global)
        with _threads(self._p("n_threads", 1), user_api="openmp"):
            pred = self._model.predict(X)
        del X
        out: dict[str | float, np.ndarray] = {"mean": c + s * (pred + anchor)}  # "mean" and one entry per quantile
        bucket = np.minimum(step * N_BUCKETS // h, N_BUCKETS - 1)
        for p, qs in self._resid_q.items():
            out[p] = c + s * (pred + anchor + qs[bucket])
        return out

    def _assemble(self, ids: np.ndarray, ds: np.ndarray, values: dict, levels: Sequence[int]) -> pd.DataFrame:
        out = pd.DataFrame({"unique_id": ids, "ds": ds, "mean": values["mean"]})
        for q in FORECAST_QUANTILES:
            out[quantile_column(q)] = values[q]
        for level in sorted({*FORECAST_LEVELS, *levels}):
            lo_p, hi_p = 0.5 - level / 200, 0.5 + level / 200
            if lo_p not in values:
                values[lo_p] = values["mean"] - (values[0.95] - values["mean"]) * (level / 90)
                values[hi_p] = values["mean"] + (values[0.95] - values["mean"]) * (level / 90)
            out[f"lo_{level}"] = values[lo_p]
            out[f"hi_{level}"] = values[hi_p]
        return out

    # -- Forecaster hooks ----------------------------------------------------------------------
    def _predict(self, h: int, future: pd.DataFrame | None, levels: tuple[int, ...]) -> pd.DataFrame:
        hist = self._history
        reuse = self._model is not None and not self._p("refit", True) and self._horizon == h
        if not reuse:
            self._prepare(hist, h)
        flat = self._pad(_flatten(self._frames(hist, h, future), self.season_length))
        if not reuse:
            self._train(flat, h)
        values = self._forecast_at(flat, flat.lengths.copy(), h, levels)
        idx = future_index(hist, h, self.freq)
        return self._assemble(idx["unique_id"].to_numpy(), idx["ds"].to_numpy(), values, levels)

    def _cross_validate(self, history: pd.DataFrame, h: int, n_windows: int, step: int, refit: bool = True) -> pd.DataFrame:
        """Train once before the first origin (whatever `refit`), forecast from every origin."""
        self._history = history
        held_out = (n_windows - 1) * step + h
        lengths = history.groupby("unique_id", sort=True).size().to_numpy()
        first_cut = lengths - held_out
        self._prepare(history.groupby("unique_id").head(int(max(first_cut.max(), 1))), h)
        flat = self._pad(_flatten(self._frames(history, 0, None), self.season_length))
        pad = flat.lengths - lengths  # padding shifts every in-series index
        self._train(flat, h, cutoff_len=first_cut + pad)
        ds_by_series = [g["ds"].to_numpy() for _, g in history.groupby("unique_id", sort=True)]
        frames = []
        for window in range(n_windows):
            origin = lengths - held_out + window * step
            values = self._forecast_at(flat, origin + pad, h, ())
            ok = np.repeat(origin >= 1, h)
            missing = np.full(h, np.datetime64("NaT"), dtype="datetime64[ns]")
            ds = np.concatenate([d[o:o + h] if o >= 1 else missing for d, o in zip(ds_by_series, origin)])
            # the model's own quantiles ride along: the engine scores them as a band candidate
            own = {quantile_column(q): values[q][ok] for q in FORECAST_QUANTILES}
            frames.append(pd.DataFrame({"unique_id": np.repeat(flat.ids, h)[ok], "ds": ds[ok],
                                        "mean": values["mean"][ok], "window": window, **own}))
        out = pd.concat(frames, ignore_index=True)
        cut = out.groupby(["unique_id", "window"])["ds"].transform("min") - pd.Timedelta(pd.tseries.frequencies.to_offset(self.freq))
        return out.assign(cutoff=cut)[["unique_id", "ds", "cutoff", "window", "mean", *[quantile_column(q) for q in FORECAST_QUANTILES]]]
