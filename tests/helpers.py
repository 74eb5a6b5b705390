"""Builders for test data: bars and ticks from plain Python rows."""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sovereign.core import BAR_DTYPE, TICK_DTYPE

NS = 1_000_000_000
T0 = 1_767_225_600 * NS  # 2026-01-01T00:00:00Z, a multiple of every timeframe used here


def bars(rows: Sequence[Sequence[float]], *, symbol: int = 0, tf: int = 60, start: int = T0) -> np.ndarray:
    """Bars from (open, high, low, close[, volume]) rows, one period apart."""
    out = np.zeros(len(rows), BAR_DTYPE)
    for i, row in enumerate(rows):
        o, h, lo, c = row[:4]
        v = row[4] if len(row) > 4 else 1.0
        out[i] = (start + i * tf * NS, o, h, lo, c, v, symbol, tf)
    return out


def ticks(rows: Sequence[Sequence[float]], *, symbol: int = 0) -> np.ndarray:
    """Ticks from (ts_ns, bid, ask[, volume]) rows."""
    out = np.zeros(len(rows), TICK_DTYPE)
    for i, row in enumerate(rows):
        ts, bid, ask = row[:3]
        v = row[3] if len(row) > 3 else 1.0
        out[i] = (ts, bid, ask, bid, v, symbol, 0, 0)
    return out


def random_bars(n: int, *, seed: int = 0, symbol: int = 0, tf: int = 60) -> np.ndarray:
    """A realistic random-walk OHLCV series: gaps, wicks, volume that varies."""
    rng = np.random.default_rng(seed)
    close = 100.0 * np.exp(np.cumsum(rng.standard_normal(n) * 0.002))
    open_ = np.r_[100.0, close[:-1]] * np.exp(rng.standard_normal(n) * 0.0005)
    high = np.maximum(open_, close) * (1 + np.abs(rng.standard_normal(n)) * 0.001)
    low = np.minimum(open_, close) * (1 - np.abs(rng.standard_normal(n)) * 0.001)
    out = np.zeros(n, BAR_DTYPE)
    out["ts_ns"] = T0 + np.arange(n) * tf * NS
    out["open"], out["high"], out["low"], out["close"] = open_, high, low, close
    out["volume"] = rng.integers(1, 500, n).astype(float)
    out["symbol"], out["timeframe_s"] = symbol, tf
    return out


def ring_name(tag: str = "t") -> str:
    return f"sovtest-{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def board_path(pid: int) -> Path | None:
    """The heartbeat board of the supervisor with this pid (its name has a random part)."""
    found = sorted(Path("/dev/shm").glob(f"sov{pid}-*-heartbeats"))
    return found[0] if found else None
