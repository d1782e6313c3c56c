"""An LSTM across all series (optional: `pip install peerscale[deep]`, PyTorch CPU).

Windows are normalised like the global GBM (c = mean of the last season, s = mean absolute
seasonal difference); the network reads the last `lookback` normalised values and emits all h
steps at once (MIMO) as a correction to seasonal naive. Its spread comes from the normalised
in-sample residuals. Off by default: the engine uses it only when asked (`--models lstm`).
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
    max_windows (20 000), lr (0.005), seed (0)."""

    name = "lstm"
    is_global = True

    def _predict(self, h: int, future: pd.DataFrame | None, levels: tuple[int, ...]) -> pd.DataFrame:
        try:
            import torch
        except ImportError as exc:  # pragma: no cover - exercised only without the extra
            raise NotEnoughData("lstm needs PyTorch: pip install 'peerscale[deep]'") from exc
        m = self.season_length
        history = self.fitted_history
        groups = [(uid, g["y"].to_numpy(float)) for uid, g in history.groupby("unique_id", sort=True)]
        n_max = max(len(y) for _, y in groups)
        lookback = int(self.params.get("lookback", 0)) or next((k * m for k in (7, 3, 2, 1) if k * m + h + 1 <= n_max), 0)
        if not lookback:
            raise NotEnoughData(f"lstm: longest series has {n_max} points; needs {m + h + 1}")
        seed = int(self.params.get("seed", 0))
        torch.set_num_threads(int(self.params.get("n_threads", 1)))  # OpenMP spin-waits on a shared machine
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        X, Y, _, _ = _windows([y for _, y in groups], lookback, h, m)
        if len(X) == 0:
            raise NotEnoughData("lstm: no training window")
        keep = rng.choice(len(X), size=min(len(X), int(self.params.get("max_windows", 20_000))), replace=False)
        X, Y = X[np.sort(keep)], Y[np.sort(keep)]
        hidden = int(self.params.get("hidden", 32))

        class Net(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.lstm = torch.nn.LSTM(1, hidden, batch_first=True)
                self.head = torch.nn.Linear(hidden, h)

            def forward(self, x: Any) -> Any:
                out, _ = self.lstm(x.unsqueeze(-1))
                return self.head(out[:, -1])

        net = Net()
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
            resid = (yt - net(xt)).numpy()
            sigma_u = np.std(resid, axis=0)
            means, sigmas = [], []
            for _, y in groups:
                w = y[-lookback:] if len(y) >= lookback else np.concatenate([np.resize(y[:m] if len(y) >= m else y, lookback - len(y)), y])
                c = w[-m:].mean()
                s = max(np.mean(np.abs(w[m:] - w[:-m])) if lookback > m else np.std(w), RELATIVE_SCALE_FLOOR * abs(c), MIN_SCALE)
                z = torch.tensor(np.clip((w - c) / s, -50, 50)[None, :], dtype=torch.float32)
                pred = net(z).numpy()[0] + np.resize((w[-m:] - c) / s, h)
                means.append(c + s * pred)
                sigmas.append(s * sigma_u)
        out = future_index(history, h, self.freq).assign(mean=np.concatenate(means))
        return gaussian_bands(out, np.concatenate(sigmas), levels)
