"""Input preparation for the engine: validation, regular grids, outliers, events, short series.

Everything here is numpy/pandas and deterministic; the engine calls it before any model sees data.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

EVENT_COLUMN = "event_uplift"  # multiplicative: 0.3 means +30 % over the normal level
FLAT_SERIES_SCALE = 1e-8  # the MASE scale of a series that never moves (its errors are then huge, not infinite)


class InputError(ValueError):
    """Bad forecast input; the message says what is wrong and how to fix it."""


def parse_freq(freq: str) -> str:
    """Normalise a frequency alias ('h', 'H', '1h', 'D', 'd') to pandas' spelling."""
    text = str(freq).strip()
    aliases = {"h": "h", "H": "h", "1h": "h", "1H": "h", "hour": "h", "hourly": "h",
               "d": "D", "D": "D", "1d": "D", "1D": "D", "day": "D", "daily": "D"}
    if text in aliases:
        return aliases[text]
    try:
        pd.tseries.frequencies.to_offset(text)
    except ValueError as exc:
        raise InputError(f"unknown frequency {freq!r}; use h (hourly) or D (daily)") from exc
    return text


def season_for(freq: str) -> int:
    step = pd.Timedelta(pd.tseries.frequencies.to_offset(freq))
    if step == pd.Timedelta(hours=1):
        return 24
    if step == pd.Timedelta(days=1):
        return 7
    return max(1, round(pd.Timedelta(days=1) / step)) if step < pd.Timedelta(days=1) else 1


def validate_long_format(frame: pd.DataFrame, freq: str) -> pd.DataFrame:
    """Check a user's long-format frame; returns it with typed columns (ds tz-naive UTC).

    Raises InputError for missing columns, rows without a series id, non-numeric or infinite y,
    series with no finite y, unparseable timestamps, duplicate (unique_id, ds) rows and timestamps
    off the frequency's grid.
    """
    missing = [c for c in ("unique_id", "ds", "y") if c not in frame.columns]
    if missing:
        raise InputError(f"input lacks column(s) {missing}; expected long format with columns unique_id, ds, y "
                         f"(got {list(frame.columns)})")
    if frame.empty:
        raise InputError("input has no rows: nothing to forecast")
    missing_ids = frame["unique_id"].isna().to_numpy()
    if missing_ids.any():
        raise InputError(f"column unique_id is empty in {int(missing_ids.sum())} row(s), e.g. row {int(missing_ids.argmax()) + 1}; "
                         "every row needs a series id")
    out = frame.copy()
    out["unique_id"] = out["unique_id"].astype(str)
    y = pd.to_numeric(out["y"], errors="coerce")
    bad = y.isna() & out["y"].notna()
    if bad.any():
        first = out.loc[bad].iloc[0]
        raise InputError(f"column y must be numeric: {int(bad.sum())} value(s) are not, e.g. {first['y']!r} "
                         f"for {first['unique_id']} at {first['ds']}")
    out["y"] = y.astype(float)
    try:
        ds = pd.to_datetime(out["ds"], utc=True, format="mixed")
    except (ValueError, TypeError) as exc:
        raise InputError(f"column ds has values that are not timestamps: {exc}") from exc
    out["ds"] = ds.dt.tz_localize(None)
    _check_finite_y(out)
    dup = out.duplicated(["unique_id", "ds"], keep=False)
    if dup.any():
        first = out.loc[dup].iloc[0]
        raise InputError(f"duplicate timestamps: {int(dup.sum())} rows share (unique_id, ds), e.g. "
                         f"{first['unique_id']} at {first['ds']}; aggregate them first")
    step = pd.Timedelta(pd.tseries.frequencies.to_offset(freq))
    origin = out.groupby("unique_id")["ds"].transform("min")
    off_grid = ((out["ds"] - origin) % step) != pd.Timedelta(0)
    if off_grid.any():
        first = out.loc[off_grid].iloc[0]
        raise InputError(f"irregular frequency: {int(off_grid.sum())} timestamp(s) are not on the {freq!r} grid of their series, "
                         f"e.g. {first['unique_id']} at {first['ds']}; resample to {freq!r} first")
    for col in out.columns:
        if col in ("unique_id", "ds", "y"):
            continue
        if not pd.api.types.is_numeric_dtype(out[col]):
            converted = pd.to_numeric(out[col], errors="coerce")
            if converted.isna().sum() > out[col].isna().sum():
                raise InputError(f"exogenous column {col!r} must be numeric")
            out[col] = converted
    return out.sort_values(["unique_id", "ds"], kind="stable").reset_index(drop=True)


def _check_finite_y(frame: pd.DataFrame) -> None:
    """No infinite y, and every series with at least one finite y: an all-NaN series would
    otherwise be "forecast" as zeros."""
    y = frame["y"].to_numpy(dtype=float)
    infinite = np.isinf(y)
    if infinite.any():
        first = frame.loc[infinite].iloc[0]
        raise InputError(f"column y has {int(infinite.sum())} infinite value(s), e.g. {first['unique_id']!r} at {first['ds']}; "
                         "remove them or leave them empty (missing values are interpolated)")
    has_finite = frame.assign(finite=np.isfinite(y)).groupby("unique_id", sort=True)["finite"].any()
    empty = has_finite.index[~has_finite.to_numpy()]
    if len(empty):
        raise InputError(f"{len(empty)} series {'has' if len(empty) == 1 else 'have'} no finite y value, e.g. {empty[0]!r}: "
                         "there is nothing to forecast from; fill in y or drop such series")


def regularize(frame: pd.DataFrame, freq: str) -> tuple[pd.DataFrame, dict[str, int]]:
    """Put every series on a complete grid between its first and last timestamp.

    Missing points (gaps) and missing y are filled by linear interpolation in time (exogenous
    columns carry forward). Returns the frame and the number of filled points per series.
    """
    step = pd.tseries.frequencies.to_offset(freq)
    filled: dict[str, int] = {}
    span = frame.groupby("unique_id", sort=True)["ds"].agg(["min", "max", "size"])
    expected = (span["max"] - span["min"]) // pd.Timedelta(step) + 1
    if (expected == span["size"]).all() and not frame["y"].isna().any():
        return frame.sort_values(["unique_id", "ds"], kind="stable").reset_index(drop=True), filled  # already complete
    parts = []
    for uid, group in frame.groupby("unique_id", sort=True):
        grid = pd.date_range(group["ds"].iloc[0], group["ds"].iloc[-1], freq=step)
        g = group.set_index("ds").reindex(grid)
        n_missing = int(g["y"].isna().sum())
        if n_missing:
            g["y"] = g["y"].interpolate(method="linear", limit_direction="both")
            if g["y"].isna().all():
                g["y"] = 0.0
            filled[uid] = n_missing
        other = [c for c in g.columns if c not in ("unique_id", "y")]
        if other:
            g[other] = g[other].ffill().bfill()
        g["unique_id"] = uid
        parts.append(g.rename_axis("ds").reset_index())
    out = pd.concat(parts, ignore_index=True)
    return out[["unique_id", "ds", "y", *[c for c in frame.columns if c not in ("unique_id", "ds", "y")]]], filled


def clean_outliers(frame: pd.DataFrame, season_length: int, k: float = 6.0, neighbours: int = 3) -> tuple[pd.DataFrame, dict[str, int]]:
    """Replace one-off bursts by the same-phase median of the previous seasons (a causal seasonal
    Hampel filter).

    baseline_t = median(y[t-m], …, y[t-neighbours·m]); the deviations y - baseline are centred
    on their median (a trend shifts them all alike) and a point more than k robust standard
    deviations (1.4826 × MAD) out is replaced by baseline + centre. Only past values are used,
    so the last days are treated exactly like the rest. Only model inputs are cleaned; scores
    always use the raw actuals.
    """
    out = frame.copy()
    y, counts = cleaned_values(frame, season_length, k, neighbours)
    out["y"] = y
    return out, counts


def cleaned_values(frame: pd.DataFrame, season_length: int, k: float = 6.0, neighbours: int = 3) -> tuple[np.ndarray, dict[str, int]]:
    """`clean_outliers`' new `y` column (frame sorted by unique_id, ds) and the points replaced per series, without copying the frame."""
    m = season_length
    counts: dict[str, int] = {}
    ys = []
    for uid, group in frame["y"].groupby(frame["unique_id"], sort=True):
        y = group.to_numpy(float)
        if len(y) < (neighbours + 2) * m:
            ys.append(y)
            continue
        shifted = np.full((neighbours, len(y)), np.nan)
        for j in range(1, neighbours + 1):
            shifted[j - 1, j * m:] = y[:-j * m]
        baseline = np.median(shifted[:, neighbours * m:], axis=0)
        dev = y[neighbours * m:] - baseline
        centre = float(np.median(dev))
        # floor: 1 % of the level, so float noise on a perfectly periodic series flags nothing
        scale = max(1.4826 * float(np.median(np.abs(dev - centre))), 0.01 * float(np.mean(np.abs(y))))
        if not np.isfinite(scale) or scale <= 0:
            ys.append(y)
            continue
        mask = np.abs(dev - centre) > k * scale
        if mask.any():
            y = y.copy()
            y[neighbours * m:] = np.where(mask, baseline + centre, y[neighbours * m:])
            counts[uid] = int(mask.sum())
        ys.append(y)
    return (np.concatenate(ys) if ys else frame["y"].to_numpy(float)), counts


def event_factor(frame: pd.DataFrame) -> np.ndarray:
    """1 + expected uplift per row (floored at 0.05), or ones without an event column."""
    if EVENT_COLUMN not in frame.columns:
        return np.ones(len(frame))
    return np.maximum(1.0 + frame[EVENT_COLUMN].fillna(0.0).to_numpy(float), 0.05)


def mase_scale(frame: pd.DataFrame, season_length: int) -> pd.Series:
    """Per-series in-sample seasonal-naive MAE (MASE denominator); falls back to lag-1, then level."""
    out = {}
    for uid, group in frame["y"].groupby(frame["unique_id"], sort=True):
        y = group.to_numpy(float)
        scale = np.nan
        if len(y) > season_length:
            scale = np.mean(np.abs(y[season_length:] - y[:-season_length]))
        if not np.isfinite(scale) or scale <= 0:
            scale = np.mean(np.abs(np.diff(y))) if len(y) > 1 else np.nan
        if not np.isfinite(scale) or scale <= 0:
            scale = np.mean(np.abs(y)) if len(y) else 0.0
        out[uid] = float(scale) if np.isfinite(scale) and scale > 0 else FLAT_SERIES_SCALE
    return pd.Series(out)


def series_group(uid: str) -> str:
    """Series that share a pooled profile: `pair:…:requests` → `pair:requests`; else one group."""
    parts = str(uid).split(":")
    return f"{parts[0]}:{parts[-1]}" if len(parts) >= 3 else "all"


@dataclass
class PooledProfile:
    """The median normalised seasonal profile of each group of long series (for new series)."""

    season_length: int
    freq: str
    profiles: dict[str, np.ndarray] = field(default_factory=dict)

    def _phase(self, ds: pd.Series | pd.DatetimeIndex) -> np.ndarray:
        idx = pd.DatetimeIndex(ds)
        if self.season_length == 24:
            return idx.hour.to_numpy()
        if self.season_length == 7:
            return idx.dayofweek.to_numpy()
        return (idx.asi8 // pd.Timedelta(pd.tseries.frequencies.to_offset(self.freq)).value % self.season_length).astype(int)

    def fit(self, frame: pd.DataFrame) -> PooledProfile:
        by_group: dict[str, list[np.ndarray]] = {}
        for uid, group in frame.groupby("unique_id", sort=True):
            tail = group.tail(7 * self.season_length)
            level = tail["y"].mean()
            if len(tail) < self.season_length or level <= 0:
                continue
            phase = self._phase(tail["ds"])
            prof = pd.Series(tail["y"].to_numpy() / level).groupby(phase).mean().reindex(range(self.season_length))
            by_group.setdefault(series_group(uid), []).append(prof.to_numpy())
        for g, profs in by_group.items():
            stacked = np.nanmedian(np.vstack(profs), axis=0)
            self.profiles[g] = np.nan_to_num(stacked, nan=1.0)
        all_profiles = [p for profs in by_group.values() for p in profs]
        if all_profiles:
            self.profiles["*"] = np.nan_to_num(np.nanmedian(np.vstack(all_profiles), axis=0), nan=1.0)
        else:
            self.profiles["*"] = np.ones(self.season_length)
        return self

    def predict(self, uid: str, recent_y: np.ndarray, recent_ds: pd.Series, ds: pd.DatetimeIndex) -> np.ndarray:
        """The group profile scaled to the series' deseasonalised level over its few points."""
        profile = self.profiles.get(series_group(uid), self.profiles.get("*", np.ones(self.season_length)))
        weight = float(np.sum(profile[self._phase(recent_ds)])) if len(recent_y) else 0.0
        level = float(np.sum(recent_y)) / weight if weight > 0 else float(np.mean(recent_y)) if len(recent_y) else 0.0
        return max(level, 0.0) * profile[self._phase(ds)]
