"""A seeded synthetic market: ticks for many symbols with the structure the analyzers
look for.

Each symbol's mid price moves through regimes: trends (a drifting random walk), ranges
(a random walk reflected inside a band, so price keeps returning to the same support and
resistance) and volatility bursts. Arrivals are Poisson per symbol, the spread widens
with volatility, and tick volume rises with it. Everything is vectorized numpy; the same
seed gives the same ticks.
"""

from __future__ import annotations

import numpy as np

from sovereign.core import TICK_DTYPE, TICK_FLAG_ASK, TICK_FLAG_BID, TICK_FLAG_VOLUME

NS = 1_000_000_000
DEFAULT_START_NS = 1_767_225_600 * NS  # 2026-01-01T00:00:00Z


def _mid_path(rng: np.random.Generator, n: int, base: float) -> tuple[np.ndarray, np.ndarray]:
    """Log-mid path of n steps and the per-step volatility, regime by regime."""
    log_mid = np.empty(n)
    vol = np.empty(n)
    level = np.log(base)
    at = 0
    while at < n:
        length = min(n - at, int(rng.integers(300, 3000)))
        regime = rng.choice(3, p=[0.35, 0.5, 0.15])  # trend, range, burst
        sigma = rng.uniform(0.5e-4, 1.5e-4) * (3.0 if regime == 2 else 1.0)
        steps = rng.standard_normal(length) * sigma
        if regime == 0:
            walk = np.cumsum(steps + rng.choice([-1, 1]) * sigma * rng.uniform(0.05, 0.2))
        elif regime == 1:  # reflect the walk into [0, width]: a triangle wave of it
            width = sigma * rng.uniform(15, 40)
            raw = np.cumsum(steps) + width / 2
            phase = np.mod(raw, 2 * width)
            walk = np.where(phase <= width, phase, 2 * width - phase) - width / 2
        else:
            walk = np.cumsum(steps)
        log_mid[at : at + length] = level + walk - walk[0]
        vol[at : at + length] = sigma
        level = log_mid[at + length - 1]
        at += length
    return log_mid, vol


def simulate_ticks(
    n_symbols: int = 100,
    ticks_per_symbol: int = 10_000,
    *,
    seed: int = 1,
    start_ns: int = DEFAULT_START_NS,
    mean_interval_s: float = 1.0,
) -> np.ndarray:
    """Ticks for symbols 0..n_symbols-1, merged in time order (TICK_DTYPE)."""
    if n_symbols < 1 or ticks_per_symbol < 1:
        raise ValueError("n_symbols and ticks_per_symbol must be >= 1")
    if not mean_interval_s > 0:
        raise ValueError(f"mean_interval_s must be > 0, got {mean_interval_s}")
    rng = np.random.default_rng(seed)
    n = ticks_per_symbol
    out = np.zeros(n_symbols * n, TICK_DTYPE)
    for sym in range(n_symbols):
        base = float(rng.choice([1.0, 1.3, 20.0, 150.0, 2000.0])) * rng.uniform(0.8, 1.2)
        log_mid, sigma = _mid_path(rng, n, base)
        mid = np.exp(log_mid)
        half_spread = mid * (0.4e-4 + 2.0 * sigma) / 2
        gaps = rng.exponential(mean_interval_s * NS, n).astype(np.int64) + 1
        rows = out[sym * n : (sym + 1) * n]
        rows["ts_ns"] = start_ns + np.cumsum(gaps)
        rows["bid"] = mid - half_spread
        rows["ask"] = mid + half_spread
        rows["last"] = mid
        rows["volume"] = rng.poisson(1.0 + sigma / 1e-4 * 2.0, n) + 1.0
        rows["symbol"] = sym
        rows["flags"] = TICK_FLAG_BID | TICK_FLAG_ASK | TICK_FLAG_VOLUME
    order = np.argsort(out["ts_ns"], kind="stable")
    return out[order]
