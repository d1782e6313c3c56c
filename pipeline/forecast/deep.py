"""An LSTM across all series (optional: `pip install peerscale[deep]`, PyTorch CPU).

Windows are normalised like the global GBM (c = mean of the last season, s = mean absolute
seasonal difference); the network reads the last `lookback` normalised values and emits all h
steps at once (MIMO) as a correction to seasonal naive. Its spread comes from the normalised
in-sample residuals. Off by default in the hourly engine (`--models lstm` asks for it); the daily
training fits it where PyTorch is installed and the registry stores it like the GBM.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from pipeline.forecast.base import MIN_SCALE, RELATIVE_SCALE_FLOOR, Forecaster, NotEnoughData, future_index, gaussian_bands


def torch_available() -> bool:
    try:
        import torch  # noqa: F401  (availability check)
    except ImportError:
        return False
    return True


def _windows(series: list[np.ndarray], lookback: int, h: int, m: int,
             stride: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    X, Y, C, S = [], [], [], []
    for y in series:
        for t in range(lookback, len(y) - h + 1, stride):
            w = y[t - lookback:t]
            c = w[-m:].mean()
            s = max(np.mean(np.abs(w[m:] - w[:-m])) if lookback > m else np.std(w), RELATIVE_SCALE_FLOOR * abs(c), MIN_SCALE)
            X.append((w - c) / s)
            Y.append((y[t:t + h] - c) / s - np.resize((w[-m:] - c) / s, h))
            C.append(c)
            S.append(s)
    return np.array(X), np.array(Y), np.array(C), np.array(S)


class LSTMModel(Forecaster):
    """params: lookback (default 7 seasons or what the data allows), hidden (32), epochs (20),
    max_windows (20 000), lr (0.005), seed (0), n_threads (1), refit (True; False keeps the
    network trained before and only moves the origin: how the model registry stores and scores it).

    The trained network is kept as numpy arrays (`_weights`), so a fitted model pickles without
    PyTorch objects and the registry can store it like the GBM."""

    name = "lstm"
    is_global = True

    def __init__(self, season_length: int, freq: str, n_jobs: int = 1, **params: Any) -> None:
        super().__init__(season_length, freq, n_jobs=n_jobs, **params)
        self._weights: dict[str, np.ndarray] | None = None
        self._horizon = 0
        self._lookback = 0
        self._hidden = 0
        self._sigma_u = np.zeros(0)

    @staticmethod
    def _torch() -> Any:
        try:
            import torch
        except ImportError as exc:  # pragma: no cover - exercised only without the extra
            raise NotEnoughData("lstm needs PyTorch: pip install 'peerscale[deep]'") from exc
        return torch

    def _net(self, torch: Any, hidden: int, h: int) -> Any:
        class Net(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.lstm = torch.nn.LSTM(1, hidden, batch_first=True)
                self.head = torch.nn.Linear(hidden, h)

            def forward(self, x: Any) -> Any:
                out, _ = self.lstm(x.unsqueeze(-1))
                return self.head(out[:, -1])

        return Net()

    def _train(self, series: list[np.ndarray], h: int) -> None:
        """Train the network on windows of `series` (each the history before its first forecast origin)."""
        torch = self._torch()
        m = self.season_length
        n_max = max(len(y) for y in series)
        lookback = int(self.params.get("lookback", 0)) or next((k * m for k in (7, 3, 2, 1) if k * m + h + 1 <= n_max), 0)
        if not lookback:
            raise NotEnoughData(f"lstm: longest series has {n_max} points; needs {m + h + 1}")
        seed = int(self.params.get("seed", 0))
        torch.set_num_threads(int(self.params.get("n_threads", 1)))  # OpenMP spin-waits on a shared machine
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        X, Y, _, _ = _windows(series, lookback, h, m)
        if len(X) == 0:
            raise NotEnoughData("lstm: no training window")
        keep = rng.choice(len(X), size=min(len(X), int(self.params.get("max_windows", 20_000))), replace=False)
        X, Y = X[np.sort(keep)], Y[np.sort(keep)]
        hidden = int(self.params.get("hidden", 32))
        net = self._net(torch, hidden, h)
        opt = torch.optim.Adam(net.parameters(), lr=float(self.params.get("lr", 0.005)))
        xt = torch.tensor(np.clip(X, -50, 50), dtype=torch.float32)
        yt = torch.tensor(np.clip(Y, -50, 50), dtype=torch.float32)
        gen = torch.Generator().manual_seed(seed)
        batch = 256
        for _ in range(int(self.params.get("epochs", 20))):
            order = torch.randperm(len(xt), generator=gen)
            for i in range(0, len(xt), batch):
                b = order[i:i + batch]
                opt.zero_grad()
                loss = torch.nn.functional.l1_loss(net(xt[b]), yt[b])
                loss.backward()
                opt.step()
        net.eval()
        with torch.no_grad():
            self._sigma_u = np.std((yt - net(xt)).numpy(), axis=0)
        self._weights = {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}
        self._horizon, self._lookback, self._hidden = h, lookback, hidden

    def _forecast(self, series: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Means and standard deviations of the next `_horizon` steps after the end of each series."""
        torch = self._torch()
        m, h, lookback = self.season_length, self._horizon, self._lookback
        net = self._net(torch, self._hidden, h)
        net.load_state_dict({k: torch.from_numpy(v) for k, v in (self._weights or {}).items()})
        net.eval()
        means, sigmas = [], []
        with torch.no_grad():
            for y in series:
                w = y[-lookback:] if len(y) >= lookback else np.concatenate([np.resize(y[:m] if len(y) >= m else y, lookback - len(y)), y])
                c = w[-m:].mean()
                s = max(np.mean(np.abs(w[m:] - w[:-m])) if lookback > m else np.std(w), RELATIVE_SCALE_FLOOR * abs(c), MIN_SCALE)
                z = torch.tensor(np.clip((w - c) / s, -50, 50)[None, :], dtype=torch.float32)
                pred = net(z).numpy()[0] + np.resize((w[-m:] - c) / s, h)
                means.append(c + s * pred)
                sigmas.append(s * self._sigma_u)
        return np.concatenate(means), np.concatenate(sigmas)

    def _predict(self, h: int, future: pd.DataFrame | None, levels: tuple[int, ...]) -> pd.DataFrame:
        history = self.fitted_history
        series = [g["y"].to_numpy(float) for _, g in history.groupby("unique_id", sort=True)]
        if self._weights is None or self.params.get("refit", True) or self._horizon != h:
            self._train(series, h)
        means, sigmas = self._forecast(series)
        out = future_index(history, h, self.freq).assign(mean=means)
        return gaussian_bands(out, sigmas, levels)

    def _cross_validate(self, history: pd.DataFrame, h: int, n_windows: int, step: int, refit: bool = True) -> pd.DataFrame:
        """Train once on the history before the first origin (whatever `refit`, as the GBM), then
        forecast from every origin with that network."""
        held_out = (n_windows - 1) * step + h
        groups = [(uid, g) for uid, g in history.groupby("unique_id", sort=True)]
        self._train([g["y"].to_numpy(float)[:len(g) - held_out] for _, g in groups if len(g) - held_out >= 1], h)
        frames = []
        for window in range(n_windows):
            cut = held_out - window * step  # points after this origin
            kept = [(uid, g) for uid, g in groups if len(g) - cut >= 1]
            if not kept:
                continue
            means, _ = self._forecast([g["y"].to_numpy(float)[:len(g) - cut] for _, g in kept])
            ds = np.concatenate([g["ds"].to_numpy()[len(g) - cut:len(g) - cut + h] for _, g in kept])
            cutoff = np.repeat([g["ds"].to_numpy()[len(g) - cut - 1] for _, g in kept], h)
            frames.append(pd.DataFrame({"unique_id": np.repeat([u for u, _ in kept], h), "ds": ds, "cutoff": cutoff,
                                        "window": window, "mean": means}))
        if not frames:
            return pd.DataFrame(columns=["unique_id", "ds", "cutoff", "window", "mean"])
        return pd.concat(frames, ignore_index=True)
