"""A seeded synthetic market: ticks for many symbols with the structure the analyzers
look for.

Each symbol's mid price moves through regimes: trends (a drifting random walk), ranges
(a random walk reflected inside a band, so price keeps returning to the same support and
resistance) and volatility bursts. Arrivals are Poisson, the spread widens with
volatility, and tick volume rises with it. Everything is vectorized numpy; the same seed
gives the same ticks.
"""

from __future__ import annotations

import numpy as np

from sovereign.core import TICK_DTYPE, TICK_FLAG_ASK, TICK_FLAG_BID, TICK_FLAG_VOLUME

NS = 1_000_000_000
DEFAULT_START_NS = 1_767_225_600 * NS  # 2026-01-01T00:00:00Z


TREND, RANGE, BURST = 0, 1, 2


class SimMarket:
    """An endless, seeded stream of ticks for symbols 0..n_symbols-1, in time order.

    Arrivals are one Poisson process over all symbols (each tick picks its symbol at
    random), so the stream is merged by construction. Each symbol walks in log-price
    through regimes of 300-3000 of its ticks; a regime changes only between calls to
    `next`, which keeps everything inside a call vectorized.
    """

    def __init__(
        self,
        n_symbols: int = 100,
        *,
        seed: int = 1,
        start_ns: int = DEFAULT_START_NS,
        mean_interval_s: float = 1.0,
    ):
        if n_symbols < 1:
            raise ValueError(f"n_symbols must be >= 1, got {n_symbols}")
        if not mean_interval_s > 0:
            raise ValueError(f"mean_interval_s must be > 0, got {mean_interval_s}")
        self.n_symbols = n_symbols
        self.rng = np.random.default_rng(seed)
        self.clock_ns = int(start_ns)
        self.gap_ns = mean_interval_s * NS / n_symbols  # mean gap of the merged stream
        base = self.rng.uniform(0.6, 1.8, n_symbols)  # FX-like, so one set of symbol specs fits all
        self.anchor = np.log(base)  # log-mid where the current regime started
        self.raw = np.zeros(n_symbols)  # the walk since then
        self.regime = np.zeros(n_symbols, np.int64)
        self.sigma = np.zeros(n_symbols)
        self.drift = np.zeros(n_symbols)
        self.width = np.ones(n_symbols)
        self.left = np.zeros(n_symbols, np.int64)  # ticks left in the regime
        self._new_regimes(np.arange(n_symbols))

    def _new_regimes(self, syms: np.ndarray) -> None:
        rng, k = self.rng, len(syms)
        self.anchor[syms] = self._log_mid(syms, self.raw[syms])
        self.raw[syms] = 0.0
        regime = rng.choice(3, k, p=[0.35, 0.5, 0.15])
        sigma = rng.uniform(0.5e-4, 1.5e-4, k) * np.where(regime == BURST, 3.0, 1.0)
        self.regime[syms] = regime
        self.sigma[syms] = sigma
        slope = rng.choice([-1.0, 1.0], k) * sigma * rng.uniform(0.05, 0.2, k)
        self.drift[syms] = np.where(regime == TREND, slope, 0.0)
        self.width[syms] = sigma * rng.uniform(15, 40, k)
        self.left[syms] = rng.integers(300, 3000, k)

    def _log_mid(self, syms: np.ndarray, raw: np.ndarray) -> np.ndarray:
        """Trends and bursts follow the walk; ranges reflect it into a band (a triangle
        wave of it), so price keeps returning to the same support and resistance."""
        width = self.width[syms]
        phase = np.mod(raw + width / 2, 2 * width)
        reflected = np.where(phase <= width, phase, 2 * width - phase) - width / 2
        return self.anchor[syms] + np.where(self.regime[syms] == RANGE, reflected, raw)

    def next(self, n: int) -> np.ndarray:
        """The next n ticks (TICK_DTYPE; recv_ns left 0 for the gateway to stamp)."""
        rng = self.rng
        syms = rng.integers(0, self.n_symbols, n).astype(np.uint32)
        ts = self.clock_ns + np.cumsum(rng.exponential(self.gap_ns, n).astype(np.int64) + 1)
        steps = rng.standard_normal(n) * self.sigma[syms] + self.drift[syms]
        # each symbol's walk: a cumulative sum within its group, back in stream order
        order = np.argsort(syms, kind="stable")
        counts = np.bincount(syms, minlength=self.n_symbols)
        sums = np.cumsum(steps[order])
        starts = np.cumsum(counts) - counts
        before = np.concatenate(([0.0], sums))[starts]
        walk = np.empty(n)
        walk[order] = sums - np.repeat(before, counts)
        raw = self.raw[syms] + walk
        mid = np.exp(self._log_mid(syms, raw))
        half_spread = mid * (0.4e-4 + 2.0 * self.sigma[syms]) / 2
        out = np.zeros(n, TICK_DTYPE)
        out["ts_ns"] = ts
        out["bid"] = np.round(mid - half_spread, 5)  # quoted to the point, as FX is
        out["ask"] = np.maximum(np.round(mid + half_spread, 5), out["bid"] + 1e-5)
        out["last"] = mid
        out["volume"] = rng.poisson(1.0 + self.sigma[syms] / 1e-4 * 2.0) + 1.0
        out["symbol"] = syms
        out["flags"] = TICK_FLAG_BID | TICK_FLAG_ASK | TICK_FLAG_VOLUME
        if n:
            self.clock_ns = int(ts[-1])
            last = np.flatnonzero(counts)
            self.raw[last] += np.bincount(syms, weights=steps, minlength=self.n_symbols)[last]
            self.left -= counts
            ended = np.flatnonzero(self.left <= 0)
            if len(ended):
                self._new_regimes(ended)
        return out


def simulate_ticks(
    n_symbols: int = 100,
    ticks_per_symbol: int = 10_000,
    *,
    seed: int = 1,
    start_ns: int = DEFAULT_START_NS,
    mean_interval_s: float = 1.0,
) -> np.ndarray:
    """About ticks_per_symbol ticks for each of symbols 0..n_symbols-1, merged in time
    order (TICK_DTYPE): n_symbols * ticks_per_symbol ticks of a SimMarket."""
    if n_symbols < 1 or ticks_per_symbol < 1:
        raise ValueError("n_symbols and ticks_per_symbol must be >= 1")
    market = SimMarket(n_symbols, seed=seed, start_ns=start_ns, mean_interval_s=mean_interval_s)
    chunk = 256 * n_symbols  # regimes change between chunks
    total = n_symbols * ticks_per_symbol
    return np.concatenate([market.next(min(chunk, total - at)) for at in range(0, total, chunk)])
