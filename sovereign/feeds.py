"""Feeds: where the gateway's ticks come from when the broker is the paper broker.

`sim` is a SimMarket; `replay` is CSV files (sovereign.data). Either can run as fast as
possible or in real time (ticks released when the wall clock reaches their time, the
first tick mapped to now; `speed` > 1 runs the market clock that many times faster),
and stop after max_ticks.
"""

from __future__ import annotations

import time

import numpy as np

from sovereign.config import Config, sim_start_ns
from sovereign.core import TICK_DTYPE
from sovereign.data import load_ticks
from sovereign.sim import SimMarket

NS = 1_000_000_000


class Feed:
    """Batches of ticks in time order; `done` once a finite feed is exhausted."""

    def __init__(self, config: Config):
        f = config.feed
        self.realtime = f.pace == "realtime"
        self.speed = f.speed
        self.max_ticks = f.max_ticks or None
        self.emitted = 0
        self.done = False
        self.finished_at: float | None = None  # time.monotonic() when it ran out
        self._sim: SimMarket | None = None
        self._data: np.ndarray | None = None
        self._at = 0
        self._pending = np.zeros(0, TICK_DTYPE)
        if f.kind == "sim":
            start = sim_start_ns(f.start) if f.start else (time.time_ns() if self.realtime else None)
            kw = {"start_ns": start} if start is not None else {}
            self._sim = SimMarket(f.symbols, seed=f.seed, mean_interval_s=f.tick_interval_s, **kw)
            self.names = tuple(f"SIM{s:03d}" for s in range(f.symbols))
        else:
            self._data, names = load_ticks(f.files, f.layout, config.symbols.point, f.bad_rows)
            self.names = tuple(names)
        self._wall0 = self._market0 = 0

    @property
    def n_symbols(self) -> int:
        return len(self.names)

    def next(self, n: int) -> np.ndarray:
        """Up to n ticks (fewer when pacing holds them back); empty once done."""
        if self.done:
            return self._pending[:0]
        if self.max_ticks is not None:
            n = min(n, self.max_ticks - self.emitted)
        if len(self._pending) == 0 and n > 0:
            self._pending = self._source(n if not self.realtime else max(n, 256))
        if len(self._pending) == 0:
            self._finish()
            return self._pending
        take = min(n, len(self._pending))
        if self.realtime:
            if self._wall0 == 0:
                self._wall0, self._market0 = time.time_ns(), int(self._pending["ts_ns"][0])
            due = self._market0 + int((time.time_ns() - self._wall0) * self.speed)
            take = min(take, int(np.searchsorted(self._pending["ts_ns"], due, side="right")))
        out, self._pending = self._pending[:take], self._pending[take:]
        self.emitted += take
        if self.max_ticks is not None and self.emitted >= self.max_ticks:
            self._finish()
        return out

    def due_in(self) -> float:
        """Seconds until the next tick is due (realtime; 0 when one may be due now or the
        pace is fast): how long the gateway may sleep before asking again."""
        if not self.realtime or self.done or len(self._pending) == 0 or self._wall0 == 0:
            return 0.0
        market_ns = (int(self._pending["ts_ns"][0]) - self._market0) / self.speed
        wait_ns = market_ns - (time.time_ns() - self._wall0)
        return max(0.0, wait_ns / NS)

    def _finish(self) -> None:
        self.done = True
        self.finished_at = time.monotonic()

    def _source(self, n: int) -> np.ndarray:
        if self._sim is not None:
            return self._sim.next(n)
        assert self._data is not None
        out = self._data[self._at : self._at + n]
        self._at += len(out)
        return out
