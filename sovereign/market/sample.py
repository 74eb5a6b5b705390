"""Sample market data: the simulator's market (sim.SimMarket) as the files traders have,
ticks or bars, under FX names, so a backtest can be tried before any data is at hand.

The sim quotes to 1e-5, so the names are five-digit pairs against USD (which any account
in USD values), started near their real prices; past those, SIM006, SIM007, ...
"""

from __future__ import annotations

import numpy as np

from sovereign.market.datafile import FILE_BAR_DTYPE, FILE_TICK_DTYPE, Market
from sovereign.market.sim import DEFAULT_START_NS, SimMarket

NS = 1_000_000_000
POINT = 1e-5
FX = (
    ("EURUSD", 1.0850),
    ("GBPUSD", 1.2700),
    ("AUDUSD", 0.6600),
    ("NZDUSD", 0.6000),
    ("USDCHF", 0.8800),
    ("USDCAD", 1.3600),
)
MAX_SYMBOLS = 1000
MAX_DAYS = 366
TIMEFRAMES = {
    "ticks": 0,
    "M1": 60,
    "M5": 300,
    "M15": 900,
    "M30": 1800,
    "H1": 3600,
    "H4": 14_400,
    "D1": 86_400,
}


def names(n: int) -> list[str]:
    return [FX[i][0] if i < len(FX) else f"SIM{i:03d}" for i in range(n)]


def sample(
    symbols: int = 2, days: float = 3.0, timeframe_s: int = 0, seed: int = 7, start_ns: int = DEFAULT_START_NS
) -> Market:
    """`days` of the sim's ticks for `symbols` symbols (a tick a second each), as ticks or
    as bars of `timeframe_s` seconds (bid OHLC, tick volume, the mean spread in points)."""
    if not 1 <= symbols <= MAX_SYMBOLS:
        raise ValueError(f"symbols {symbols} is not in [1, {MAX_SYMBOLS}]")
    if not 0 < days <= MAX_DAYS:
        raise ValueError(f"days {days} is not in (0, {MAX_DAYS}]")
    sim = SimMarket(symbols, seed=seed, start_ns=start_ns)
    sim.set_mids(np.array([FX[i][1] if i < len(FX) else 1.0 for i in range(symbols)]))
    end_ns = start_ns + int(days * 86_400 * NS)
    parts = []
    while True:
        ticks = sim.next(1 << 20)
        parts.append(ticks[ticks["ts_ns"] < end_ns])
        if ticks["ts_ns"][-1] >= end_ns:
            break
    ticks = np.concatenate(parts)
    if timeframe_s:
        return Market(
            "bars", to_bars(ticks, timeframe_s), names(symbols), meta={"source": "sovereign data sample"}
        )
    out = np.zeros(len(ticks), FILE_TICK_DTYPE)
    for field in ("ts_ns", "bid", "ask", "last", "volume", "symbol", "flags"):
        out[field] = ticks[field]
    return Market("ticks", out, names(symbols), meta={"source": "sovereign data sample"})


def to_bars(ticks: np.ndarray, timeframe_s: int) -> np.ndarray:
    """Ticks in time order as bars of timeframe_s, in time order (then symbol)."""
    period = ticks["ts_ns"] // (timeframe_s * NS)
    order = np.lexsort((ticks["ts_ns"], ticks["symbol"], period))  # stable within a bar: time order
    t, p = ticks[order], period[order]
    key = p * (1 << 20) + t["symbol"].astype(np.int64)
    starts = np.flatnonzero(np.concatenate(([True], key[1:] != key[:-1])))
    bars = np.zeros(len(starts), FILE_BAR_DTYPE)
    bars["ts_ns"] = p[starts] * timeframe_s * NS
    bars["open"] = t["bid"][starts]
    bars["high"] = np.maximum.reduceat(t["bid"], starts)
    bars["low"] = np.minimum.reduceat(t["bid"], starts)
    bars["close"] = t["bid"][np.concatenate((starts[1:], [len(t)])) - 1]
    counts = np.diff(np.concatenate((starts, [len(t)])))
    bars["volume"] = counts
    spread = np.add.reduceat(t["ask"] - t["bid"], starts) / counts
    bars["spread"] = np.round(spread / POINT)
    bars["symbol"] = t["symbol"][starts]
    bars["timeframe_s"] = timeframe_s
    return bars
