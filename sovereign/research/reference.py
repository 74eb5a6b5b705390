"""Pure-Python reference of DESIGN.md section 3: the oracle the C++ analyzers are checked
against, and the baseline their speed is measured against.

Written for obviousness, not speed: every series is kept whole and every quantity is
computed from its definition (max over a slice, a sum over a window), in the same
arithmetic order as the definitions, so results agree with the C++ core bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from sovereign.core import SIGNAL_DTYPE


def in_order(xs: Iterable[float]) -> float:
    """The sum the C++ core makes: first to last, rounding after each addition. (sum() of
    floats compensates the rounding from Python 3.12 on, so it is not that sum.)"""
    total = 0.0
    for x in xs:
        total += x
    return total


@dataclass(frozen=True)
class Params:
    atr_n: int = 14
    tol_mult: float = 0.25
    k: int = 3
    m: int = 20
    surge_rv: float = 1.5
    max_levels: int = 16
    wick: float = 0.4
    weights: tuple[float, float, float, float] = (0.30, 0.25, 0.20, 0.25)
    min_conviction: float = 0.55


class Signal(NamedTuple):
    ts_ns: int
    agent: int
    symbol: int
    side: int
    flags: int
    touches: int
    timeframe_s: int
    conviction: float
    entry: float
    stop: float
    target: float
    level: float


@dataclass
class RefLevel:
    price: float
    touches: int
    kind: str  # "support" | "resistance"
    last_ts: int


@dataclass
class ReferenceAgent:
    agent: int
    symbol: int
    timeframe_s: int
    p: Params = field(default_factory=Params)
    ts: list[int] = field(default_factory=list)
    O: list[float] = field(default_factory=list)  # noqa: E741
    H: list[float] = field(default_factory=list)
    L: list[float] = field(default_factory=list)
    C: list[float] = field(default_factory=list)
    V: list[float] = field(default_factory=list)
    TR: list[float | None] = field(default_factory=list)
    ATR: list[float | None] = field(default_factory=list)
    direction: list[int] = field(default_factory=list)
    OBV: list[float] = field(default_factory=list)
    rv: float | None = None
    vb: float | None = None
    levels: list[RefLevel] = field(default_factory=list)
    swing_highs: list[float] = field(default_factory=list)
    swing_lows: list[float] = field(default_factory=list)
    trend: int = 0
    trend_strength: float = 0.0

    def on_bar(self, ts: int, o: float, h: float, lo: float, c: float, v: float) -> Signal | None:
        p = self.p
        i = len(self.C)
        self.ts.append(ts)
        self.O.append(o)
        self.H.append(h)
        self.L.append(lo)
        self.C.append(c)
        self.V.append(v)
        # ATR (Wilder, as TA-Lib)
        if i == 0:
            self.TR.append(None)
        else:
            prev = self.C[i - 1]
            self.TR.append(max(h - lo, abs(h - prev), abs(lo - prev)))
        n = p.atr_n
        if i < n:
            self.ATR.append(None)
        elif i == n:
            self.ATR.append(in_order(self.TR[1 : n + 1]) / n)  # type: ignore[arg-type]
        else:
            self.ATR.append((self.ATR[i - 1] * (n - 1) + self.TR[i]) / n)  # type: ignore[operator]
        atr = self.ATR[i]
        tol = p.tol_mult * atr if atr is not None else None
        # Momentum
        m = p.m
        self.rv = None
        if i >= m:
            mean = in_order(self.V[i - m : i]) / m
            self.rv = v / mean if mean > 0 else None
        d = 0 if i == 0 else (1 if c > self.C[i - 1] else (-1 if c < self.C[i - 1] else 0))
        self.direction.append(d)
        self.OBV.append(v if i == 0 else self.OBV[i - 1] + d * v)
        self.vb = None
        if i >= m:
            window = range(i - m + 1, i + 1)
            up = in_order(self.V[j] for j in window if self.direction[j] > 0)
            down = in_order(self.V[j] for j in window if self.direction[j] < 0)
            total = in_order(self.V[j] for j in window)
            self.vb = (up - down) / total if total > 0 else 0.0
        # Breaks
        if tol is not None:
            self.levels = [
                lv for lv in self.levels
                if not (lv.kind == "support" and c < lv.price - tol)
                and not (lv.kind == "resistance" and c > lv.price + tol)
            ]  # fmt: skip
        # Bounce and signal, against the levels before this bar's pivots
        signal = self._signal(i, ts, o, h, lo, c, tol) if tol is not None else None
        # Pivots of bar i - k, levels, trend
        k = p.k
        cb = i - k
        if cb >= k:
            hi_piv = self.H[cb] > max(self.H[cb - k : cb]) and self.H[cb] >= max(self.H[cb + 1 : cb + k + 1])
            lo_piv = self.L[cb] < min(self.L[cb - k : cb]) and self.L[cb] <= min(self.L[cb + 1 : cb + k + 1])
            if hi_piv:
                self.swing_highs.append(self.H[cb])
                if tol is not None:
                    self._absorb(self.H[cb], "resistance", self.ts[cb], tol)
            if lo_piv:
                self.swing_lows.append(self.L[cb])
                if tol is not None:
                    self._absorb(self.L[cb], "support", self.ts[cb], tol)
        self._update_trend(atr)
        return signal

    def _signal(self, i: int, ts: int, o: float, h: float, lo: float, c: float, tol: float) -> Signal | None:
        p = self.p
        if h == lo:
            return None
        supports = [lv for lv in self.levels if lv.kind == "support" and lv.price <= c]
        resistances = [lv for lv in self.levels if lv.kind == "resistance" and lv.price >= c]
        # max/min return the first of equals: the older level.
        s = max(supports, key=lambda lv: lv.price) if supports else None
        r = min(resistances, key=lambda lv: lv.price) if resistances else None
        lower = (min(o, c) - lo) / (h - lo)
        upper = (h - max(o, c)) / (h - lo)
        bull = s is not None and s.price - tol <= lo <= s.price + tol and c > s.price and lower >= p.wick
        bear = r is not None and r.price - tol <= h <= r.price + tol and c < r.price and upper >= p.wick
        if bull == bear:
            return None
        d, lvl, w = (1, s, lower) if bull else (-1, r, upper)
        assert lvl is not None
        level_score = min(lvl.touches, 5) / 5
        trend_align = 1.0 if self.trend == d else (0.5 if self.trend == 0 else 0.0)
        mom_align = (1 + d * (self.vb if self.vb is not None else 0.0)) / 2
        bounce_score = (w - p.wick) / (1 - p.wick)
        w0, w1, w2, w3 = p.weights
        conviction = w0 * level_score + w1 * trend_align + w2 * mom_align + w3 * bounce_score
        if not conviction >= p.min_conviction:
            return None
        entry = c
        stop = lvl.price - d * tol
        beyond = [lv.price for lv in self.levels if (lv.price > entry if d > 0 else lv.price < entry)]
        fallback = entry + d * 2 * abs(entry - stop)
        target = (min(beyond) if d > 0 else max(beyond)) if beyond else fallback
        close_ns = ts + self.timeframe_s * 1_000_000_000
        surge = self.rv is not None and self.rv >= p.surge_rv
        return Signal(
            close_ns, self.agent, self.symbol, d, int(surge), min(lvl.touches, 65535), self.timeframe_s,
            conviction, entry, stop, target, lvl.price,
        )  # fmt: skip

    def _absorb(self, price: float, kind: str, ts: int, tol: float) -> None:
        if self.levels:
            nearest = min(self.levels, key=lambda lv: abs(lv.price - price))  # first of equals: older
            if abs(nearest.price - price) <= tol:
                nearest.price = (nearest.price * nearest.touches + price) / (nearest.touches + 1)
                nearest.touches += 1
                nearest.last_ts = ts
                return
        self.levels.append(RefLevel(price, 1, kind, ts))
        if len(self.levels) > self.p.max_levels:
            weakest = min(self.levels, key=lambda lv: (lv.touches, lv.last_ts))
            self.levels.remove(weakest)

    def _update_trend(self, atr: float | None) -> None:
        if len(self.swing_highs) < 2 or len(self.swing_lows) < 2:
            self.trend, self.trend_strength = 0, 0.0
            return
        h1, h2 = self.swing_highs[-2:]
        l1, l2 = self.swing_lows[-2:]
        self.trend = 1 if h2 > h1 and l2 > l1 else (-1 if h2 < h1 and l2 < l1 else 0)
        if atr is None:
            self.trend_strength = 0.0
        else:
            self.trend_strength = max(-1.0, min(1.0, ((h2 - h1) + (l2 - l1)) / (2.0 * atr)))


@dataclass
class _Series:
    tf_ns: int
    agents: list[ReferenceAgent]
    start: int | None = None
    closed_end: int | None = None
    o: float = 0.0
    h: float = 0.0
    lo: float = 0.0
    c: float = 0.0
    vol: float = 0.0
    count: int = 0


class ReferencePool:
    """Agents fed ticks: validation and bar building as AgentPool does them, in Python."""

    def __init__(self) -> None:
        self.agents: list[ReferenceAgent] = []
        self._series: dict[tuple[int, int], _Series] = {}
        self._by_symbol: dict[int, list[_Series]] = {}
        self._last_ts: dict[int, int] = {}
        self.rejected = 0

    def add_agent(self, symbol: int, timeframe_s: int = 3600, **params: object) -> int:
        if "weights" in params:
            params["weights"] = tuple(params["weights"])  # type: ignore[arg-type]
        agent = ReferenceAgent(len(self.agents), symbol, timeframe_s, Params(**params))  # type: ignore[arg-type]
        self.agents.append(agent)
        key = (symbol, timeframe_s)
        if key not in self._series:
            self._series[key] = _Series(timeframe_s * 1_000_000_000, [])
            self._by_symbol.setdefault(symbol, []).append(self._series[key])
        self._series[key].agents.append(agent)
        return agent.agent

    def on_ticks(self, ticks: np.ndarray) -> np.ndarray:
        out: list[Signal] = []
        for ts, bid, ask, _last, vol, sym, _flags, _recv in ticks.tolist():
            ok = (
                math.isfinite(bid) and math.isfinite(ask) and bid > 0 and ask > 0 and ask >= bid
                and math.isfinite(vol) and vol >= 0 and ts > 0 and sym in self._by_symbol
                and ts >= self._last_ts.get(sym, 0)
            )  # fmt: skip
            series = self._by_symbol.get(sym, [])
            if not ok or any(s.closed_end is not None and ts < s.closed_end for s in series):
                self.rejected += 1
                continue
            self._last_ts[sym] = ts
            for s in series:
                if s.start is not None and ts < s.start + s.tf_ns:
                    s.h, s.lo, s.c = max(s.h, bid), min(s.lo, bid), bid
                    s.vol += vol
                    s.count += 1
                    continue
                if s.start is not None:
                    out.extend(self._close(s))
                s.start = ts - ts % s.tf_ns
                s.o = s.h = s.lo = s.c = bid
                s.vol, s.count = vol, 1
        return signals_array(out)

    def flush(self) -> np.ndarray:
        out: list[Signal] = []
        for s in self._series.values():
            if s.start is not None:
                out.extend(self._close(s))
        return signals_array(out)

    def _close(self, s: _Series) -> list[Signal]:
        assert s.start is not None
        volume = s.vol if s.vol > 0 else float(s.count)
        ts, s.closed_end, s.start = s.start, s.start + s.tf_ns, None
        out = [a.on_bar(ts, s.o, s.h, s.lo, s.c, volume) for a in s.agents]
        return [x for x in out if x is not None]


def signals_array(signals: Iterable[Signal]) -> np.ndarray:
    rows = list(signals)
    arr = np.zeros(len(rows), SIGNAL_DTYPE)
    for j, name in enumerate(Signal._fields):
        arr[name] = [r[j] for r in rows]
    return arr
