"""Backtest speed against the best-known peers, on the same data in the same run.

- ticks: Sovereign, one symbol, its ten default agents, fills and exact accounting,
  against NautilusTrader (BacktestEngine, the same quote ticks, a strategy that does
  nothing: its floor);
- bars: Sovereign on M1 bars for 100 symbols with ten agents each, against
  backtesting.py (an SMA cross, one symbol at a time: its own model) and vectorbt (an SMA
  cross, vectorized over every symbol at once).

The peers are test dependencies (pyproject.toml); a peer that fails to import is left out
of the table, never faked. CI runs a month of bars;
SOVEREIGN_BENCH_FULL=1 runs the whole year the README quotes.
"""

from __future__ import annotations

import os
import time
import warnings
from decimal import Decimal

import numpy as np
import pytest

from bench.conftest import median_seconds
from sovereign.config import Config, from_dict
from sovereign.market.datafile import FILE_TICK_DTYPE, Market
from sovereign.market.sim import SimMarket
from sovereign.research import backtest as engine
from tests.helpers import m1_walk

N_TICKS = 2_000_000
BAR_SYMBOLS = 100
BAR_DAYS = 365 if os.environ.get("SOVEREIGN_BENCH_FULL") else 30
NS = 1_000_000_000
T0 = 1_767_225_600 * NS


@pytest.fixture(scope="module")
def ticks() -> Market:
    t = SimMarket(1, seed=11).next(N_TICKS)
    f = np.zeros(len(t), FILE_TICK_DTYPE)
    for name in FILE_TICK_DTYPE.names or ():
        f[name] = t[name]
    return Market("ticks", f, ["EURUSD"])


@pytest.fixture(scope="module")
def bars() -> Market:
    return m1_walk([f"S{s:03d}" for s in range(BAR_SYMBOLS)], BAR_DAYS, seed=3)


def test_tick_backtest_against_nautilus(benchmark, report, ticks: Market) -> None:
    runs: list[engine.Backtest] = []
    secs = median_seconds(benchmark, lambda: runs.append(engine.run(Config(), ticks)), rounds=3)
    bt = runs[-1]
    assert bt.out.fills, "the benchmark must trade"
    report("backtest", "Sovereign ticks/s (1 sym, 10 agents)", N_TICKS / secs, "ticks/s",
           "NautilusTrader ticks/s (no-op strategy)")  # fmt: skip
    report("backtest", "Sovereign fills", len(bt.out.fills), "fills")
    nautilus = _nautilus_seconds(ticks)
    if nautilus is not None:
        report("backtest", "NautilusTrader ticks/s (no-op strategy)", N_TICKS / nautilus, "ticks/s")


def test_bar_backtest_against_backtesting_py_and_vectorbt(benchmark, report, bars: Market) -> None:
    runs: list[engine.Backtest] = []
    secs = median_seconds(benchmark, lambda: runs.append(engine.run(Config(), bars)), rounds=1)
    n = len(bars.records)
    report("backtest", f"Sovereign M1 bars/s (100 sym x 10 agents, {BAR_DAYS} d)", n / secs, "bars/s",
           "vectorbt bars/s (SMA cross, 100 sym)")  # fmt: skip
    report("backtest", "Sovereign seconds per year of M1 (100 sym)", secs * 365 / BAR_DAYS, "s")
    report("backtest", "Sovereign orders (bars)", len(runs[-1].out.orders), "orders")
    report("backtest", "Sovereign fills (bars)", len(runs[-1].out.fills), "fills")
    # On these random walks the default limits halt trading (max drawdown) within weeks;
    # the rest of the run is signals and refused intents. Lifted, it trades all the way.
    lifted = from_dict({"risk": {"max_drawdown": 1.0, "daily_loss_limit": 1.0}})
    t = time.perf_counter()
    trading = engine.run(lifted, bars)
    secs_trading = time.perf_counter() - t
    report("backtest", "Sovereign seconds per year of M1, limits lifted", secs_trading * 365 / BAR_DAYS, "s")
    report("backtest", "Sovereign fills (bars, limits lifted)", len(trading.out.fills), "fills")
    closes = bars.records["close"].reshape(-1, BAR_SYMBOLS)  # time-major: one row per minute
    vbt = _vectorbt_seconds(closes)
    if vbt is not None:
        report("backtest", "vectorbt bars/s (SMA cross, 100 sym)", closes.size / vbt, "bars/s")
    bpy = _backtesting_py_seconds(bars, min(n // BAR_SYMBOLS, 100_000))
    if bpy is not None:
        report("backtest", "backtesting.py bars/s (SMA cross, 1 sym)", bpy, "bars/s")


def _nautilus_seconds(ticks: Market) -> float | None:
    try:
        from nautilus_trader.backtest.engine import BacktestEngine, BacktestEngineConfig
        from nautilus_trader.model.currencies import USD
        from nautilus_trader.model.data import QuoteTick
        from nautilus_trader.model.enums import AccountType, OmsType
        from nautilus_trader.model.identifiers import TraderId, Venue
        from nautilus_trader.model.objects import Money, Price, Quantity
        from nautilus_trader.test_kit.providers import TestInstrumentProvider
        from nautilus_trader.trading.strategy import Strategy
    except ImportError:
        return None
    instrument = TestInstrumentProvider.default_fx_ccy("EUR/USD", Venue("SIM"))
    r = ticks.records
    data = [
        QuoteTick(instrument.id, Price(round(b, 5), 5), Price(round(a, 5), 5), Quantity.from_int(1_000_000),
                  Quantity.from_int(1_000_000), int(ts), int(ts))
        for ts, b, a in zip(r["ts_ns"].tolist(), r["bid"].tolist(), r["ask"].tolist(), strict=True)
    ]  # fmt: skip

    class Idle(Strategy):
        pass

    engine_ = BacktestEngine(BacktestEngineConfig(trader_id=TraderId("BENCH-001")))
    engine_.add_venue(Venue("SIM"), oms_type=OmsType.NETTING, account_type=AccountType.MARGIN,
                      base_currency=USD, starting_balances=[Money(Decimal(100_000), USD)])  # fmt: skip
    engine_.add_instrument(instrument)
    engine_.add_data(data)
    engine_.add_strategy(Idle())
    t = time.perf_counter()
    engine_.run()
    secs = time.perf_counter() - t
    engine_.dispose()
    return secs


def _vectorbt_seconds(closes: np.ndarray) -> float | None:
    try:
        import pandas as pd
        import vectorbt as vbt
    except ImportError:
        return None
    frame = pd.DataFrame(closes)
    head = frame.iloc[:1000]
    vbt.Portfolio.from_signals(head, head > 0, head < 0)  # compile its numba code outside the timing
    t = time.perf_counter()
    fast, slow = vbt.MA.run(frame, 10), vbt.MA.run(frame, 30)
    vbt.Portfolio.from_signals(frame, fast.ma_crossed_above(slow), fast.ma_crossed_below(slow), fees=0.0001)
    return time.perf_counter() - t


def _backtesting_py_seconds(bars: Market, n: int) -> float | None:
    try:
        import pandas as pd
        from backtesting import Backtest, Strategy
        from backtesting.lib import crossover
        from backtesting.test import SMA
    except ImportError:
        return None
    r = bars.records[bars.records["symbol"] == 0][:n]
    frame = pd.DataFrame({"Open": r["open"], "High": r["high"], "Low": r["low"], "Close": r["close"],
                          "Volume": r["volume"]}, index=pd.to_datetime(r["ts_ns"]))  # fmt: skip

    class SmaCross(Strategy):
        def init(self) -> None:
            self.fast = self.I(SMA, self.data.Close, 10)
            self.slow = self.I(SMA, self.data.Close, 30)

        def next(self) -> None:
            if crossover(self.fast, self.slow):
                self.buy()
            elif crossover(self.slow, self.fast):
                self.sell()

    t = time.perf_counter()
    with warnings.catch_warnings():  # it warns on every order it cannot margin
        warnings.simplefilter("ignore")
        Backtest(frame, SmaCross, cash=1_000_000, commission=0.0001, finalize_trades=True).run()
    return n / (time.perf_counter() - t)
