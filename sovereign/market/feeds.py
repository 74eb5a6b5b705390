"""Feeds: where the gateway's ticks come from when the broker is the paper broker.

`sim` is a SimMarket; `replay` is CSV files (sovereign.market.data). Either can run as fast as
possible or in real time (ticks released when the wall clock reaches their time, the
first tick mapped to now; `speed` > 1 runs the market clock that many times faster),
and stop after max_ticks.

The feed is the gateway's only source of ticks, so it screens their times as AgentPool
does (csrc/agent_pool.hpp): a tick outside [2000-01-01, 2200-01-01) or far ahead of the
stream is dropped and counted here, before the quote board, the recorder, the workers or
the broker see it. Its market clock (`clock_ns`) is what the workers close bars by.
"""

from __future__ import annotations

import time

import numpy as np

from sovereign.config import Config, sim_start_ns
from sovereign.core import TICK_DTYPE, AgentPool
from sovereign.market.data import load_ticks
from sovereign.market.sim import SimMarket

NS = 1_000_000_000


class TimeScreen:
    """AgentPool's screen of tick times for a stream in time order (the sim makes it so,
    replay files are sorted at load), vectorised: a tick outside the window is refused as
    `out_of_window`; one more than MAX_AHEAD_NS past the newest tick taken as `ahead`,
    until the refused have gone on for JUMP_CONFIRM_NS at the new time (a stream resuming
    after a long hole: taken there). Python walks the jumps, never the ticks."""

    def __init__(self) -> None:
        self.newest = 0  # the newest tick time taken; 0 before the first
        self.jump = 0  # the first tick refused as ahead since the last one taken; 0 if none
        self.refused = {"out_of_window": 0, "ahead": 0}

    def __call__(self, ticks: np.ndarray) -> np.ndarray:
        """The ticks to keep, in order."""
        ts = ticks["ts_ns"]
        inside = (ts >= AgentPool.MIN_TIME_NS) & (ts < AgentPool.MAX_TIME_NS)
        if not inside.all():
            self.refused["out_of_window"] += int(len(ts) - inside.sum())
            ticks, ts = ticks[inside], ts[inside]
        ahead = self._ahead(ts)
        if ahead.any():
            self.refused["ahead"] += int(ahead.sum())
            ticks = ticks[~ahead]
        return ticks

    def _ahead(self, ts: np.ndarray) -> np.ndarray:
        out = np.zeros(len(ts), bool)
        limit, confirm = AgentPool.MAX_AHEAD_NS, AgentPool.JUMP_CONFIRM_NS
        i, n = 0, len(ts)
        while i < n:
            if self.jump == 0:  # taken up to the first tick more than `limit` past the one before
                prev = np.r_[self.newest or ts[i], ts[i : n - 1]]
                gaps = np.flatnonzero(ts[i:] - prev > limit)
                j = i + int(gaps[0]) if len(gaps) else n
                if j > i:
                    self.newest = max(self.newest, int(ts[j - 1]))
                if j == n:
                    break
                self.jump, out[j], i = int(ts[j]), True, j + 1
            else:  # refused until the stream has gone on `confirm` there, or jumps again
                since = ts[i:] - self.jump
                stop = np.flatnonzero((since > limit) | (since >= confirm))
                k = i + int(stop[0]) if len(stop) else n
                out[i:k] = True
                if k == n:
                    break
                if since[k - i] > limit:
                    self.jump, out[k], i = int(ts[k]), True, k + 1
                else:
                    self.jump, self.newest, i = 0, int(ts[k]), k
        return out


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
        self.screen = TimeScreen()
        self._told = 0  # refusals reported so far
        # The market time every tick up to which has been given: no later tick is older.
        # At fast pace the newest tick given; paced, the market time that maps to now.
        self.clock_ns = 0
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

    @property
    def refused(self) -> dict[str, int]:
        """Ticks dropped, by reason (as AgentPool.stats()["rejected"] names them)."""
        return self.screen.refused

    def next(self, n: int) -> np.ndarray:
        """Up to n ticks (fewer when pacing holds them back or the screen drops them); empty
        once done."""
        if self.done:
            return self._pending[:0]
        if self.max_ticks is not None:
            n = min(n, self.max_ticks - self.emitted)
        if len(self._pending) == 0 and n > 0:
            raw = self._source(n if not self.realtime else max(n, 256))
            if len(raw) == 0:
                self._finish()
                return self._pending
            self._pending = self.screen(raw)
            self._tell()
        take, clock = min(n, len(self._pending)), 0
        if self.realtime and len(self._pending):
            if self._wall0 == 0:
                self._wall0, self._market0 = time.time_ns(), int(self._pending["ts_ns"][0])
            due = self._market0 + int((time.time_ns() - self._wall0) * self.speed)
            upto = int(np.searchsorted(self._pending["ts_ns"], due, side="right"))
            if upto <= take:  # every tick due goes now
                take = upto
                if upto < len(self._pending):  # and the next one is later: the market is at `due`
                    clock = due
        out, self._pending = self._pending[:take], self._pending[take:]
        self.emitted += take
        if self.max_ticks is not None and self.emitted >= self.max_ticks:
            self._finish()
            clock = 0  # the market ends with the last tick given, at any pace
        self.clock_ns = max(self.clock_ns, clock, int(out["ts_ns"][-1]) if take else 0)
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

    def _tell(self) -> None:
        """A line for the log at the first refusal and each time their count doubles."""
        total = sum(self.refused.values())
        if total > self._told and total >= 2 * self._told:
            self._told = total
            print(f"feed: {total} ticks dropped so far ({self.refused}): their times are outside "
                  "[2000-01-01, 2200-01-01) or more than 7 days ahead of the stream", flush=True)  # fmt: skip

    def _source(self, n: int) -> np.ndarray:
        if self._sim is not None:
            return self._sim.next(n)
        assert self._data is not None
        out = self._data[self._at : self._at + n]
        self._at += len(out)
        return out
