"""A seeded synthetic market: ticks for many symbols with the structure the analyzers
look for.

Each symbol's mid price moves through regimes: trends (a drifting random walk), ranges
(a random walk reflected inside a band, so price keeps returning to the same support and
resistance) and volatility bursts. Arrivals are Poisson, the spread widens with
volatility, and tick volume rises with it. The market is made in C++ (csrc/sim.hpp):
the sim feed is the gateway's source at full speed, and in numpy it cost the gateway
more than everything else it does per tick. The same seed gives the same ticks, however
the stream is cut into batches.
"""

from __future__ import annotations

import numpy as np

from sovereign import _core

NS = 1_000_000_000
DEFAULT_START_NS = 1_767_225_600 * NS  # 2026-01-01T00:00:00Z
MAX_SEED = 2**64 - 1


class SimMarket:
    """An endless, seeded stream of ticks for symbols 0..n_symbols-1, in time order.

    Arrivals are one Poisson process over all symbols (each tick picks its symbol at
    random), so the stream is merged by construction. Each symbol walks in log-price
    through regimes of 300-3000 of its ticks, each ending at its last tick.
    """

    def __init__(
        self,
        n_symbols: int = 100,
        *,
        seed: int = 1,
        start_ns: int = DEFAULT_START_NS,
        mean_interval_s: float = 1.0,
    ):
        if not 1 <= n_symbols <= _core.MAX_SYMBOL + 1:
            raise ValueError(f"n_symbols must be in [1, {_core.MAX_SYMBOL + 1}], got {n_symbols}")
        if not 0 <= seed <= MAX_SEED:
            raise ValueError(f"seed must be in [0, 2^64 - 1], got {seed}")
        if not (mean_interval_s > 0 and np.isfinite(mean_interval_s)):
            raise ValueError(f"mean_interval_s must be a finite number > 0, got {mean_interval_s}")
        self.n_symbols = n_symbols
        self._market = _core.SimMarket(n_symbols, seed, int(start_ns), float(mean_interval_s))

    @classmethod
    def from_state(cls, blob: bytes) -> SimMarket:
        """The market `state()` took, going on with the ticks it would have made; ValueError
        for bytes that are not such a state (csrc/sim.hpp)."""
        market = _core.SimMarket.from_state(blob)
        self = cls.__new__(cls)
        self.n_symbols, self._market = market.n_symbols, market
        return self

    @property
    def clock_ns(self) -> int:
        """ts_ns of the last tick made (start_ns before the first)."""
        return self._market.clock_ns

    def state(self) -> bytes:
        """The whole market as bytes (its generator, clock and every symbol's walk)."""
        return self._market.state()

    def mids(self) -> np.ndarray:
        """Each symbol's mid price now (float64): its last tick's `last`, or where it starts."""
        return self._market.mids()

    def set_mids(self, mids: np.ndarray) -> None:
        """Each symbol's walk goes on from mids[s], a price > 0 (0: unchanged): a market
        started where another left off."""
        self._market.set_mids(np.asarray(mids, np.float64))

    def next(self, n: int) -> np.ndarray:
        """The next n ticks (TICK_DTYPE; recv_ns left 0 for the gateway to stamp)."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        return self._market.next(n)


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
    return market.next(n_symbols * ticks_per_symbol)
