"""Builders for test data: bars and ticks from plain Python rows, and the components'
builders the engine tests share (risk with its limits, an intent, a quoted gateway)."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sovereign.config import Config, from_dict
from sovereign.core import BAR_DTYPE, ORDER_DTYPE, ORDER_INTENT, TICK_DTYPE
from sovereign.engine.gateway import Gateway, make_broker
from sovereign.engine.risk import Risk
from sovereign.market.sim import simulate_ticks
from sovereign.state.store import StateStore
from sovereign.symbols import symbol_specs

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
    """The heartbeat board the supervisor with this pid has mapped (its name comes from the
    state directory, not the pid: found in the process's own mappings)."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return None
    # mapped under the temporary name it was made with (Heartbeats links it into place)
    found = sorted(set(re.findall(r"/dev/shm/(sov-[0-9a-f]+-heartbeats)", maps)))
    return Path("/dev/shm", found[0]) if found else None


# ---- the components' builders (engine tests share them)


def ids() -> object:
    counter = iter(range(1, 10**6))
    return lambda: next(counter)


def quotes_at(bid: float, ask: float, ts: int = 1000 * NS):  # type: ignore[no-untyped-def]
    return lambda s: (ts, bid, ask, 0)


def intent(symbol: int = 0, side: int = 1, price: float = 1.1002, sl: float = 1.0952, tp: float = 1.12,
           risk: float = 0.005, cid: int = 1) -> np.ndarray:  # fmt: skip
    rec = np.zeros(1, ORDER_DTYPE)
    rec[0] = (1000 * NS, 5, cid, 0, symbol, 0, side, ORDER_INTENT, 0, 0, 0.0, price, sl, tp, 1.0, risk, 0.0)
    return rec


def make_risk(**risk: object) -> Risk:
    cfg = from_dict({"risk": risk}) if risk else Config()
    return Risk(cfg, symbol_specs(cfg, 4), ids())


def quoted_gateway(tmp_path: Path, cfg: Config, n_symbols: int) -> tuple[StateStore, Gateway, np.ndarray]:
    """A gateway on fresh state under tmp_path whose broker has seen 10 ticks of each symbol."""
    store = StateStore(tmp_path / "s")
    gw = Gateway(store, make_broker(cfg, n_symbols))
    ticks = simulate_ticks(n_symbols, 10, seed=3)
    gw.on_ticks(ticks)
    return store, gw, ticks
