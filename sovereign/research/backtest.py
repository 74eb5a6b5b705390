"""Backtests: the live components (AgentPool, Coordinator, Risk, PaperBroker) wired in one
process, in simulated time. There is no strategy code here: the engine only decides
*when* each component sees what, so that it sees exactly what it would have seen live.

Ticks. Each tick is stamped with its position in the stream (`recv_ns`), so a signal
says which tick closed its bar (`origin_ns`). The agents run ahead over a whole chunk
(they never see orders, so this cannot leak the future into them); the broker, risk and
the coordinator are then walked through the chunk event by event:

    apply ticks a..k-1 to the broker   (quotes; stops and targets filled tick by tick)
    at k: marks, then decisions        (coordinator -> risk -> broker, at the quote of tick k-1)

Events, all fixed by the data alone, so where a run is split never changes them:
- decision: the tick after the one that closed a bar with signals;
- mark: the first tick of each `mark_interval_s` period (risk marks its book, checks the
  daily loss and drawdown limits; one point of the equity curve);
- exit: the tick where an open position's stop or target is crossed;
- breach: the tick where equity, marked at every tick, first falls below the drawdown
  or daily-loss floor. Live risk marks every 10 ms; here every tick is screened in
  vectorized float and the event is confirmed exactly (Decimal) by Risk.mark, and the
  highest equity between marks is carried into risk's peak exactly.

Bars (bars-only data). Agents run on the bars (M1 bars also build their M5 and M15 bars).
A decision made at a bar's close fills at the open of that symbol's next bar. A stop or
target is checked against each bar's high and low (bid; ask = bid + the bar's spread):
a bar that opens beyond it fills at the open, otherwise at the stop or target; when one
bar touches both, the stop is taken (pessimistic: the order of the two is unknown).
Equity is marked at bar closes.

Money is exact throughout (the Ledger's Decimals); the report's statistics are floats.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import zipfile
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, NamedTuple

import numpy as np
import orjson

from sovereign.broker.paper import Retcode, checked_ledger
from sovereign.config import Config, ConfigError, from_dict
from sovereign.core import NO_AGENT, ORDER_DTYPE, SIGNAL_DTYPE, TICK_DTYPE, Screen
from sovereign.engine.coordinator import LIVE_DTYPE, Coordinator
from sovereign.engine.gateway import make_broker, report_row
from sovereign.engine.risk import Risk
from sovereign.engine.worker import build_pool
from sovereign.files import (
    encode_float,
    want_bool,
    want_decimal,
    want_dict,
    want_float,
    want_int,
    want_list,
    want_str,
)
from sovereign.ledger import ZERO, Position, to_decimal
from sovereign.market.datafile import FILE_BAR_DTYPE, FILE_TICK_DTYPE, Market
from sovereign.model import Reason, TradingState, reduce_only
from sovereign.research.explain import SignalOutcomes
from sovereign.symbols import symbol_specs

NS = 1_000_000_000
DAY_NS = 86_400 * NS
CHUNK = 1 << 18  # records per pass of the agents
_LAZY = True


class Ids:
    """Client order ids for one backtest: 1, 2, 3, ... (deterministic)."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self) -> int:
        self.n += 1
        return self.n


@dataclass
class Recorded:
    """What a run produced, in order."""

    fills: list[dict[str, Any]] = field(default_factory=list)
    orders: list[dict[str, Any]] = field(default_factory=list)  # every intent and risk order
    equity: list[tuple[int, Decimal]] = field(default_factory=list)  # (ts_ns, equity) at marks
    signals: list[np.ndarray] = field(default_factory=list)  # kept only with keep_signals
    n_signals: int = 0
    outcomes: SignalOutcomes = field(default_factory=SignalOutcomes)  # what became of the signals
    records: int = 0
    first_ns: int = 0
    last_ns: int = 0


class _Agents(NamedTuple):
    records: np.ndarray  # as the walk takes them (ticks: TICK_DTYPE, stamped with their place)
    signals: np.ndarray
    at: np.ndarray  # per signal: the record before which it is decided


class Backtest:
    """One run over a Market, fed in consecutive pieces (`feed`); saved as data between them
    (`snapshot`/`restore`), so a run can stop at any time and resume."""

    def __init__(
        self,
        config: Config,
        names: list[str],
        kind: str,
        *,
        keep_signals: bool = False,
        mark_interval_s: int = 3600,
    ):
        if kind not in ("ticks", "bars"):
            raise ValueError(f"kind {kind!r}: ticks or bars")
        if mark_interval_s <= 0 or DAY_NS % (mark_interval_s * NS):
            raise ValueError(f"mark_interval_s {mark_interval_s} must divide a day")
        self.config, self.names, self.kind = config, list(names), kind
        n = len(names)
        self.pool = build_pool(config, self.names, range(n))  # the config's agents (sovereign.presets)
        self.pool.threads = _cores()  # bars: symbols split over the cores (the same results)
        self.ids = Ids()
        self.coord = Coordinator(config, self.ids)
        self.risk = Risk(config, symbol_specs(config, self.names), self.ids)
        self.broker = make_broker(config, self.names)
        self.point = config.symbols.point
        # Screening values positions in float, linearly: contract size times the fixed rate
        # to the account currency. A rate of 1/price is not linear: such a symbol needs a
        # fixed rate for a backtest (the live system converts it exactly).
        inverse = [names[s] for s, spec in self.risk.specs.items() if spec.inverse]
        if inverse:
            account = config.broker.account_currency
            raise ConfigError(f"backtest: {inverse[0]} converts to {account} at 1/price, "
                              f"which the backtest's screening cannot value; set [symbols.{inverse[0]}] "
                              "rate = <account currency per unit of quote currency>")  # fmt: skip
        self.contract = {s: spec.contract_size * (spec.rate or 1) for s, spec in self.risk.specs.items()}
        self.q_ts = np.zeros(n, np.int64)
        self.q_bid = np.zeros(n)
        self.q_ask = np.zeros(n)
        self.mark_ns = mark_interval_s * NS
        self.period = -1  # the mark period of the last record seen
        self.seq = 0  # records consumed so far
        self.now_ns = 0
        self.best: Decimal | None = None  # highest exact equity since the last mark
        self.book: _Book | None = None  # open positions as arrays, for screening
        self.moved: set[int] = set()  # symbols filled since the book was last brought up to date
        self.changes = 0  # bumped by every fill, order and mark: screening answers go stale
        self.pending: dict[int, list[tuple]] = {}  # bars: symbol -> approved orders for its next open
        self.keep_signals = keep_signals
        self.out = Recorded()

    # ---- feeding

    def feed(self, records: np.ndarray, progress: Callable[[int], None] | None = None) -> None:
        """The next records of the stream (FILE_TICK_DTYPE/TICK_DTYPE or FILE_BAR_DTYPE),
        in time order, continuing where the last call stopped; progress(records done)
        after each chunk.

        The agents never see orders, so while one chunk is walked they already run over
        the next, on another thread (the pool works without the GIL); they never run past
        the records given, so the state between two calls is what one pass leaves."""
        bounds, a, size = [], 0, CHUNK >> 4  # the first chunk, waited for, small; then doubling
        while a < len(records):
            bounds.append((a, min(a + size, len(records))))
            a, size = bounds[-1][1], min(2 * size, CHUNK)
        with ThreadPoolExecutor(1, thread_name_prefix="agents") as ahead:
            nxt: Future[_Agents] | None = None
            seq = self.seq
            for i, (a, b) in enumerate(bounds):
                agents = self._agents(np.asarray(records[a:b]), seq) if nxt is None else nxt.result()
                seq += b - a
                if i + 1 < len(bounds):
                    c, d = bounds[i + 1]
                    nxt = ahead.submit(self._agents, np.asarray(records[c:d]), seq)
                self._walk(agents)
                if progress is not None:
                    progress(b)

    def _agents(self, chunk: np.ndarray, seq: int) -> _Agents:
        """The agents over one chunk whose first record is the stream's seq-th: the records
        as the walk takes them, the signals, and the record before which each is decided."""
        n = len(chunk)
        if self.kind == "ticks":
            ticks = np.empty(n, TICK_DTYPE)
            if chunk.dtype == FILE_TICK_DTYPE:  # the same first 48 bytes: one copy of them
                ticks.view(np.int64).reshape(n, 7)[:, :6] = chunk.view(np.int64).reshape(n, 6)
            else:
                for name in ("ts_ns", "bid", "ask", "last", "volume", "symbol", "flags"):
                    ticks[name] = chunk[name]
            ticks["recv_ns"] = np.arange(seq, seq + n)
            signals = self.pool.on_ticks(ticks)
            at = signals["origin_ns"] - seq + 1  # decided before the tick after the trigger
            return _Agents(ticks, signals, at)
        if chunk.dtype != FILE_BAR_DTYPE:  # the walk reads a bar's fields in FILE_BAR_DTYPE's order
            file_bars = np.zeros(n, FILE_BAR_DTYPE)
            for name in FILE_BAR_DTYPE.names or ():
                file_bars[name] = chunk[name]
            chunk = file_bars
        # BAR_DTYPE is FILE_BAR_DTYPE without the spread: its first six words, then the last.
        bars = np.empty(n, _BAR_DTYPE)
        chunk = np.ascontiguousarray(chunk)
        words, file_words = bars.view(np.int64).reshape(n, 7), chunk.view(np.int64).reshape(n, 8)
        words[:, :6] = file_words[:, :6]
        words[:, 6] = file_words[:, 7]
        signals = self.pool.on_bars(bars)
        at = np.searchsorted(chunk["ts_ns"], signals["ts_ns"], "left")  # before the bar opening at T
        return _Agents(chunk, signals, at)

    def _walk(self, agents: _Agents) -> None:
        chunk, signals, at = agents
        n = len(chunk)
        out = self.out
        if not out.records:
            out.first_ns = int(chunk["ts_ns"][0])
        out.records += n
        out.last_ns = int(chunk["ts_ns"][-1])
        if self.kind == "ticks":
            bid, ask, mark_px = chunk["bid"], chunk["ask"], None
        else:
            spread = chunk["spread"] * self.point
            bid, ask = chunk["close"], chunk["close"] + spread
            mark_px = (chunk["open"], chunk["high"], chunk["low"], spread)
        out.n_signals += len(signals)
        if self.keep_signals and len(signals):
            out.signals.append(signals)
        ts, sym = chunk["ts_ns"], chunk["symbol"]
        periods = ts // self.mark_ns
        marks = np.flatnonzero(np.diff(periods, prepend=self.period))
        self.period = int(periods[-1])
        walk = _Walk(self, chunk, ts, sym, bid, ask, mark_px, signals, at, marks)
        walk.run()
        self.seq += n

    def finish(self) -> None:
        """End of data: a last mark (the final point of the equity curve)."""
        if self.out.records:
            self._mark(self.out.last_ns)

    # ---- what the walk calls

    def quote(self, symbol: int) -> tuple[int, float, float, int]:
        return int(self.q_ts[symbol]), float(self.q_bid[symbol]), float(self.q_ask[symbol]), 0

    def _mark(self, now_ns: int) -> None:
        self.now_ns = max(self.now_ns, now_ns)
        if self.best is not None and self.best > self.risk.peak:
            self.risk.peak = self.best
        self.best = None
        flatten = self.risk.mark(self.quote, self.now_ns)
        self.out.equity.append((self.now_ns, self.risk.equity))
        self._execute(flatten.tolist())

    def _coordinate(self, signals: np.ndarray, now_ns: int) -> list[tuple]:
        self.now_ns = max(self.now_ns, now_ns)
        intents = self.coord.intents_for(signals)
        self.out.outcomes.decided(signals, intents, self.coord)
        return intents

    def _approve(self, intents: list[tuple]) -> None:
        self._mark_equity_only()
        approved, refused = self.risk.check(intents, self.quote, self.now_ns)
        for i, why in refused:  # as live: the coordinator waits out the in-flight time
            self.out.orders.append(_order_row(intents[i], "REJECTED", why.name))
            self.out.outcomes.refused(intents[i][2], why.name)
        self._execute(approved)

    def _mark_equity_only(self) -> None:
        """Risk sizes from equity marked now, as live risk (marking every 10 ms) would."""
        equity = self.risk.ledger.balance
        for s in self.risk.ledger.open_symbols():
            equity += self.risk.ledger.unrealized(s, to_decimal(self.q_bid[s]), to_decimal(self.q_ask[s]))
        self.risk.equity = equity

    def _execute(self, approved: list[tuple]) -> None:
        """Orders risk approved (tuples of ORDER_DTYPE's fields) to the broker."""
        self.changes += 1
        for f in approved:
            if self.kind == "bars":  # at the symbol's next open
                self.pending.setdefault(f[4], []).append(f)
            else:
                self._send(f)

    def _send(self, f: tuple) -> None:
        ex = self.broker.market_order(f[2], f[4], f[6], to_decimal(f[10]), sl=f[12] or None, tp=f[13] or None,
                                      reduce_only=reduce_only(f[8]))  # fmt: skip
        row = _order_row(
            f,
            "FILLED" if ex.retcode == Retcode.DONE else "REJECTED",
            Reason(f[8]).name if ex.retcode == Retcode.DONE else ex.reason,
        )
        row["fill_price"], row["retcode"] = str(ex.price), int(ex.retcode)
        self.out.orders.append(row)
        self.out.outcomes.sent(f[2], ex.retcode == Retcode.DONE, Retcode(ex.retcode).name)
        self._reports([report_row(ex, f[1], f[5], f[14], f[12], f[13])], [ex], agent=f[5])

    def _exits(self, executions: list) -> None:
        """The broker's own fills (stops, targets) reported."""
        self._reports([report_row(ex, 0, NO_AGENT, 0.0, 0.0, 0.0) for ex in executions], executions)

    def _reports(self, reports: list[tuple], executions: list, agent: int = NO_AGENT) -> None:
        self.changes += 1
        self.risk.on_report_rows(reports)
        self.coord.on_report_rows(reports)
        for ex in executions:
            if ex.retcode == Retcode.DONE:
                self.moved.add(ex.symbol)
                self.out.fills.append(
                    {
                        "ts_ns": ex.ts_ns,
                        "symbol": self.names[ex.symbol],
                        "side": ex.side,
                        "volume": ex.volume,
                        "price": ex.price,
                        "commission": ex.commission,
                        "realized": ex.realized_pnl,
                        "reason": ex.reason or "market",
                        "agent": agent,
                        "client_order_id": ex.client_order_id,
                    }
                )

    # ---- saved state (--save-state, --resume): data, never code

    def snapshot(self) -> bytes:
        """Everything needed to resume, as data (format 2; see _save_state)."""
        return _save_state(self)

    @classmethod
    def restore(cls, blob: bytes) -> Backtest:
        """A Backtest from `snapshot()` bytes. Every field is checked; anything else (another
        format, a damaged or forged file) raises ValueError saying what is wrong."""
        return _load_state(cls, blob)


def _cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0))


_BAR_DTYPE = np.dtype(
    {
        "names": ["ts_ns", "open", "high", "low", "close", "volume", "symbol", "timeframe_s"],
        "formats": ["<i8", "<f8", "<f8", "<f8", "<f8", "<f8", "<u4", "<u4"],
        "offsets": [0, 8, 16, 24, 32, 40, 48, 52],
        "itemsize": 56,
    }
)


class _Walk:
    """One chunk, walked event by event (see the module docstring)."""

    def __init__(
        self,
        bt: Backtest,
        chunk: np.ndarray,
        ts: np.ndarray,
        sym: np.ndarray,
        bid: np.ndarray,
        ask: np.ndarray,
        bar_px: tuple | None,
        signals: np.ndarray,
        at: np.ndarray,
        marks: np.ndarray,
    ):
        self.bt, self.chunk, self.ts, self.sym, self.bid, self.ask = bt, chunk, ts, sym, bid, ask
        self.bar_px = bar_px
        self.n = len(chunk)
        order = np.argsort(at, kind="stable")
        self.signals = signals[order]
        self.at = at[order]
        decisions, first = np.unique(self.at, return_index=True)
        self.decisions: list[int] = decisions.tolist()
        self.bounds: list[int] = [*first.tolist(), len(self.at)]  # decision i: bounds[i]:bounds[i + 1]
        self.marks = marks
        self.a = 0  # next record to apply
        # When each record's quote holds from: a tick's time, a bar's close.
        close = ts if bar_px is None else ts + chunk["timeframe_s"].astype(np.int64) * NS
        self.quote_ts = np.ascontiguousarray(close)
        if bar_px is None:
            self.screen = Screen(sym, bid, ask)
        else:
            _, high, low, spread = bar_px
            self.screen = Screen(sym, bid, ask, high, low, spread)
        self._event: tuple[tuple, int, str, int] | None = None  # _next_event's last answer
        self.next_d = 0

    def run(self) -> None:
        bt, n = self.bt, self.n
        decisions, marks = self.decisions, self.marks.tolist()
        di = mi = 0
        while True:
            next_d = decisions[di] if di < len(decisions) else n + 1
            next_m = marks[mi] if mi < len(marks) else n + 1
            if self.a >= n and next_d > n:
                return
            k = min(next_d, next_m, n)
            self.next_d = next_d
            j, kind = self._next_event(min(next_m, n))
            if kind and j <= k:  # an exit, a pending fill or a breach comes first
                self._apply_to(j)
                if kind == "breach":
                    bt._mark(self._time(j))  # confirmed (or not) exactly by Risk.mark
                if j < k:
                    continue
            # Nothing changes the positions before k: a decision alone needs the market
            # applied only if the coordinator comes out with an intent.
            if not (_LAZY and k == next_d and k != next_m):
                self._apply_to(k)
            if k == next_m:
                bt._mark(int(self.ts[k]))
                mi += 1
            if k == next_d:
                di += 1
                intents = bt._coordinate(self.signals[self.bounds[di - 1] : self.bounds[di]], self._time(k))
                if len(intents):
                    self._apply_to(k)
                    bt._approve(intents)

    def _time(self, k: int) -> int:
        """The market time of a decision before record k: the last applied tick's time, or
        for bars the close of the bars before k."""
        return int(self.quote_ts[k - 1]) if k else self.bt.now_ns

    # ---- applying records to the broker

    def _apply_ticks(self, k: int) -> None:
        """Ticks a..k-1 to the broker. The walk never applies past an exit, so only tick
        k-1 can touch a stop or target: the broker takes every symbol's last quote and
        checks that one tick (exactly, in Decimal)."""
        a = self.a
        if k <= a:
            return
        self._track_best(a, k)
        bt = self.bt
        # Each symbol's last tick (TICK_DTYPE's fields), in order: tick k-1 is the last one.
        ticks = self.chunk[self._quotes(a, k)].tolist()
        bt.broker.set_quotes({t[5]: (t[0], t[1], t[2]) for t in ticks})
        ts, bid, ask, _, _, s, _, _ = ticks[-1]
        pos = bt.broker.positions.get(s)
        if pos is not None and (pos.sl is not None or pos.tp is not None):
            fills = bt.broker.on_tick(s, ts, bid, ask)
            if fills:
                bt._exits(fills)
        self.a = k

    def _apply_bars(self, k: int) -> int:
        """Bars a..k-1; a bar with work to do (a pending order, a stop or target) is
        handled alone and the walk resumes after it."""
        while self.a < k:
            special = self._next_special_bar(self.a, k)
            if special > self.a:
                self._track_best(self.a, special)
                self._quotes(self.a, special)
                self.a = special
            if special < k:
                self._bar(special)
                self._track_best(special, special + 1)
                self.a = special + 1
        return k

    def _next_special_bar(self, a: int, k: int) -> int:
        """The first bar in a..k-1 with work to do: an order waiting for its symbol's next
        open, or an open position's stop or target inside the bar's range."""
        book, pending = self._book(), self._pending()
        if not book.watched and pending is None:
            return k
        mark = book.mark_now(self.bt)
        j, kind = self.screen.next(a, k, book.long, book.short, book.coef, book.sl, book.tp, mark, 0.0,
                                   book.watched, None, 1.0, None, pending)  # fmt: skip
        return j - 1 if kind else k

    def _pending(self) -> np.ndarray | None:
        """Bars: the symbols with an order waiting for their next open, as a mask."""
        if not self.bt.pending:
            return None
        mask = np.zeros(len(self.bt.names), bool)
        mask[list(self.bt.pending)] = True
        return mask

    def _bar(self, j: int) -> None:
        """One bar: pending orders fill at its open; then its high and low against the stop
        and target; then its close is the quote."""
        bt = self.bt
        ts, o, h, lo, c, _, spread_points, s, timeframe_s = self.chunk[j].item()  # FILE_BAR_DTYPE
        spread = spread_points * bt.point
        held = bt.broker.ledger.open_symbols()
        if held:  # the broker marks margin with these
            bt.broker.set_quotes(dict(zip(held, zip(bt.q_ts[held].tolist(), bt.q_bid[held].tolist(),
                                                    bt.q_ask[held].tolist(), strict=True), strict=True)))
        opened = bt.broker.on_tick(s, ts, o, o + spread)  # a gap through a stop fills at the open
        if opened:
            bt._exits(opened)
        bt.q_ts[s], bt.q_bid[s], bt.q_ask[s] = ts, o, o + spread
        for rec in bt.pending.pop(s, []):
            bt._send(rec)
        pos = bt.broker.positions.get(s)
        if pos is not None:
            long = pos.volume > 0
            worst, best = (
                (to_decimal(lo), to_decimal(h)) if long else (to_decimal(h + spread), to_decimal(lo + spread))
            )
            hit = ""
            if pos.sl is not None and (worst <= pos.sl if long else worst >= pos.sl):
                hit = "sl"  # both touched: the stop (pessimistic)
            elif pos.tp is not None and (best >= pos.tp if long else best <= pos.tp):
                hit = "tp"
            if hit:
                price = pos.sl if hit == "sl" else pos.tp
                ex = bt.broker.close_at(s, price, hit)  # type: ignore[arg-type]
                bt._exits([ex])
        close_ts = ts + timeframe_s * NS
        bt.broker.set_quote(s, close_ts, c, c + spread)
        bt.q_ts[s], bt.q_bid[s], bt.q_ask[s] = close_ts, c, c + spread

    def _quotes(self, a: int, k: int) -> np.ndarray:
        """The quote board: each symbol's last quote among records a..k-1; returns the
        indices of those records."""
        bt = self.bt
        return self.screen.board(a, k, self.quote_ts, bt.q_ts, bt.q_bid, bt.q_ask)

    # ---- screening: exits, drawdown and daily-loss breaches, the peak between marks

    def _book(self) -> _Book:
        """The open positions as per-symbol arrays, brought up to date for the symbols
        filled since the last call."""
        bt = self.bt
        if bt.book is None:
            bt.book = _Book(len(bt.names))
            bt.moved.update(bt.broker.positions)
        if bt.moved:
            bt.book.update(bt, bt.moved)
            bt.moved.clear()
        return bt.book

    def _next_event(self, horizon: int) -> tuple[int, str]:
        """The first point in a..horizon-1 where the positions or risk's state change:
        (the record to apply up to, exclusive; "exit" | "fill" | "breach"), or
        (horizon, "") if none. Computed again only when its inputs change."""
        bt, risk, a = self.bt, self.bt.risk, self.a
        key = (bt.changes, risk.state, risk.peak, risk.day_start)
        if self._event is not None and self._event[0] == key and self._event[1] > a:
            _, j, kind, h = self._event
            if (kind and j <= horizon) or h >= horizon:
                return (j, kind) if j <= horizon else (horizon, "")
        # Look a bounded way ahead: far enough to pass several decisions, not the whole hour.
        horizon = min(horizon, max(a + 8192, self.next_d + 1))
        j, kind = horizon, ""
        pending, opened = self._pending(), bool(self.bt.broker.positions)
        if (opened or pending is not None) and horizon > a:
            book = self._book()
            peak0 = floor = None
            if opened and risk.state.value != "HALTED":  # halted: risk is already flattening
                peak0 = float(max(risk.peak, bt.best or risk.peak))
            if opened and risk.state.value == "ACTIVE":
                floor = float(risk.day_start) * (1 - risk.limits.daily_loss_limit)
            mark = book.mark_now(bt)
            j, code = self.screen.next(a, horizon, book.long, book.short, book.coef, book.sl, book.tp,
                                       mark, book.equity_at(mark), opened and book.watched, peak0,
                                       1 - risk.limits.max_drawdown, floor, pending)  # fmt: skip
            kind = _SCREENED[code]
        self._event = (key, j, kind, horizon)
        return j, kind

    def _apply_to(self, k: int) -> None:
        if self.bt.kind == "bars":
            self._apply_bars(k)
        else:
            self._apply_ticks(k)

    def _track_best(self, a: int, k: int) -> None:
        """Carry the highest equity of records a..k-1 (positions constant) into bt.best, exactly."""
        if k <= a or not self.bt.broker.positions:
            return
        bt, book = self.bt, self._book()
        mark = book.mark_now(bt)
        at, eq = self.screen.best(a, k, book.long, book.coef, mark, book.equity_at(mark))
        if bt.best is not None and eq < float(bt.best):
            return
        ledger = bt.broker.ledger
        exact = ledger.balance
        # The quotes at the best record: the board of a..at over a copy of today's.
        q_ts, q_bid, q_ask = bt.q_ts.copy(), bt.q_bid.copy(), bt.q_ask.copy()
        self.screen.board(a, at + 1, self.quote_ts, q_ts, q_bid, q_ask)
        for s in ledger.open_symbols():
            exact += ledger.unrealized(s, to_decimal(q_bid[s]), to_decimal(q_ask[s]))
        if bt.best is None or exact > bt.best:
            bt.best = exact


_SCREENED = ("", "fill", "exit", "breach")  # Screen.next's kinds


class _Book:
    """Open positions as arrays over symbols: direction, float volume x contract size,
    stop and target (NaN: none), for vectorized screening; updated symbol by symbol."""

    def __init__(self, n: int):
        self.long, self.short = np.zeros(n, bool), np.zeros(n, bool)
        self.coef = np.zeros(n)
        self.sl, self.tp = np.full(n, np.nan), np.full(n, np.nan)
        self.costs: dict[int, float] = {}  # symbol -> its lots' float cost (sum of volume x price x size)
        self.watching: set[int] = set()  # symbols with a stop or a target
        self.cost = 0.0
        self.balance = 0.0

    @property
    def watched(self) -> bool:
        """Whether any open position has a stop or a target."""
        return bool(self.watching)

    def update(self, bt: Backtest, symbols: set[int]) -> None:
        """Take the broker's positions of `symbols` (the ones that changed) again."""
        positions = bt.broker.positions
        for s in symbols:
            pos = positions.get(s)
            vol = pos.volume if pos is not None else ZERO
            self.long[s], self.short[s] = vol > 0, vol < 0
            self.coef[s] = float(vol * bt.contract[s])
            self.sl[s] = np.nan if pos is None or pos.sl is None else float(pos.sl)
            self.tp[s] = np.nan if pos is None or pos.tp is None else float(pos.tp)
            if pos is None:
                self.costs.pop(s, None)
            else:
                self.costs[s] = float(sum((v * p for v, p in pos.lots), ZERO) * bt.contract[s])
            if pos is not None and (pos.sl is not None or pos.tp is not None):
                self.watching.add(s)
            else:
                self.watching.discard(s)
        cost = 0.0
        for s in positions:  # summed in the book's order, as a rebuild would
            cost += self.costs[s]
        self.cost = cost
        self.balance = float(bt.broker.ledger.balance)

    def mark_now(self, bt: Backtest) -> np.ndarray:
        """Each symbol's price to mark at now: the bid of a long, the ask of a short."""
        return np.where(self.long, bt.q_bid, bt.q_ask)

    def equity_at(self, mark: np.ndarray) -> float:
        """Float equity with each symbol marked at `mark` (from mark_now)."""
        return self.balance + float(np.dot(mark, self.coef)) - self.cost


def _order_row(f: tuple, state: str, reason: str) -> dict[str, Any]:
    """An order (a tuple of ORDER_DTYPE's fields) as the report lists it."""
    return {
        "ts_ns": f[0],
        "client_order_id": f[2],
        "symbol": f[4],
        "side": f[6],
        "agent": f[5],
        "conviction": round(f[14], 12),
        "volume": f[10],
        "price": f[11],
        "sl": f[12],
        "tp": f[13],
        "state": state,
        "reason": reason,
    }


# ---- saved state
#
# A state file is SNAPSHOT_MAGIC (the format version is its 7th byte), the sha256 of the
# rest, and the rest: an .npz (np.load reads it) of members stored uncompressed:
#   state           the JSON document (orjson, UTF-8) as bytes: config, names, kind, the
#                   walk's counters, the coordinator, risk, the broker and the output so far;
#                   money as decimal strings, floats as numbers ('nan', 'inf', '-inf' as strings)
#   pool            the AgentPool's own snapshot bytes (versioned and checked by its restore)
#   q_ts q_bid q_ask  the walk's quote board (int64, float64, float64 per symbol)
#   pending         bars: approved orders waiting for their symbol's next open (ORDER_DTYPE)
#   live            the coordinator's live signals (coordinator.LIVE_DTYPE)
#   signals signal_batches  the signals kept (keep_signals), concatenated, and each batch's length
# Reading it runs no code: np.load(allow_pickle=False) refuses object arrays, JSON is
# data, and each field is checked for its type and range before it is used. The checksum
# catches damage only; anyone can recompute it, so it guards nothing else.

SNAPSHOT_MAGIC = b"SOVBT\x00\x02\x00"
_MEMBERS = ("state", "pool", "q_ts", "q_bid", "q_ask", "pending", "live", "signals", "signal_batches")
_STATE_KEYS = {"config", "names", "kind", "keep_signals", "mark_interval_s", "ids", "period", "seq", "now_ns",
               "best", "changes", "coordinator", "risk", "broker", "out"}  # fmt: skip
MAX_SYMBOLS = 10_000  # as a data load (sovereign.market.data)


def _save_state(bt: Backtest) -> bytes:
    """The state file of `bt` (see above); the same state gives the same bytes."""
    n = len(bt.names)
    coord, live = bt.coord.to_state(n)
    risk = bt.risk
    doc = {
        "config": dataclasses.asdict(bt.config),
        "names": bt.names,
        "kind": bt.kind,
        "keep_signals": bt.keep_signals,
        "mark_interval_s": bt.mark_ns // NS,
        "ids": bt.ids.n,
        "period": bt.period,
        "seq": bt.seq,
        "now_ns": bt.now_ns,
        "best": None if bt.best is None else str(bt.best),
        "changes": bt.changes,
        "coordinator": coord,
        "risk": {
            "state": risk.to_dict(),
            "ledger": risk.ledger.to_dict(),
            "approved_ts": list(risk.approved_ts),
            "rejected": {r.name: k for r, k in risk.rejected.items()},
            "feed_stalled": risk.feed_stalled,
            "notional": [[s, pos is risk.ledger.positions.get(s), str(vol), str(value)]
                         for s, (pos, vol, value) in risk.notional.items()],
            "events": risk.events,
        },
        "broker": bt.broker.to_state(),
        "out": {
            "fills": [{**f, **{k: str(f[k]) for k in _FILL_MONEY}} for f in bt.out.fills],
            "orders": [{**o, **{k: encode_float(o[k]) for k in _ORDER_FLOATS}} for o in bt.out.orders],
            "equity": [[ts, str(e)] for ts, e in bt.out.equity],
            "n_signals": bt.out.n_signals,
            "outcomes": bt.out.outcomes.to_dict(),
            "records": bt.out.records,
            "first_ns": bt.out.first_ns,
            "last_ns": bt.out.last_ns,
        },
    }
    signals = bt.out.signals
    arrays = {
        "state": np.frombuffer(orjson.dumps(doc), np.uint8),
        "pool": np.frombuffer(bt.pool.snapshot(), np.uint8),
        "q_ts": bt.q_ts, "q_bid": bt.q_bid, "q_ask": bt.q_ask,
        "pending": np.array([f for orders in bt.pending.values() for f in orders], ORDER_DTYPE),
        "live": live,
        "signals": np.concatenate(signals) if signals else np.zeros(0, SIGNAL_DTYPE),
        "signal_batches": np.array([len(x) for x in signals], np.int64),
    }  # fmt: skip
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for name in _MEMBERS:  # dated 1980 (ZipInfo's default): the same state, the same bytes
            with z.open(zipfile.ZipInfo(f"{name}.npy"), "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.ascontiguousarray(arrays[name]), allow_pickle=False)
    body = buf.getvalue()
    return SNAPSHOT_MAGIC + hashlib.sha256(body).digest() + body


def _load_state(cls: type[Backtest], blob: bytes) -> Backtest:
    """A Backtest made as new from the saved config, names and kind, then given the saved
    state, each part checked on the way in."""
    arrays = _read_members(blob)
    try:
        doc = orjson.loads(arrays["state"].tobytes())
    except orjson.JSONDecodeError as e:
        raise ValueError(f"state: not JSON ({e})") from None
    d = want_dict(doc, "state", _STATE_KEYS)
    names = want_list(d["names"], "names")
    if not len(names) <= MAX_SYMBOLS or len(set(map(str, names))) != len(names):
        raise ValueError(f"names: {len(names)} names, not up to {MAX_SYMBOLS} different ones")
    names = [want_str(x, "names", 64) for x in names]
    try:  # the config's own checks (ConfigError is a ValueError)
        config = from_dict(want_dict(d["config"], "config", {f.name for f in dataclasses.fields(Config)}))
    except (TypeError, AttributeError) as e:  # config.from_dict takes {"a": 1} as a table of overrides
        raise ValueError(f"config: not a saved config ({e})") from None
    bt = cls(config, names, want_str(d["kind"], "kind", 8),
             keep_signals=want_bool(d["keep_signals"], "keep_signals"),
             mark_interval_s=want_int(d["mark_interval_s"], "mark_interval_s", 1, DAY_NS // NS))  # fmt: skip
    n = len(names)
    pool = arrays["pool"]
    if pool.dtype != np.uint8 or pool.ndim != 1:
        raise ValueError(f"pool: {pool.dtype} x {pool.shape} is not bytes")
    bt.pool.restore(pool.tobytes())  # the pool's own checks: ValueError on anything but its snapshot
    for name, dtype in (("q_ts", np.int64), ("q_bid", np.float64), ("q_ask", np.float64)):
        setattr(bt, name, _array(arrays, name, dtype, n).copy())
    bt.ids.n = want_int(d["ids"], "ids", 0)
    bt.period = want_int(d["period"], "period", -1)
    bt.seq = want_int(d["seq"], "seq", 0)
    bt.now_ns = want_int(d["now_ns"], "now_ns")
    bt.best = None if d["best"] is None else want_decimal(d["best"], "best")
    bt.changes = want_int(d["changes"], "changes", 0)
    pending = _array(arrays, "pending", ORDER_DTYPE)
    if len(pending) and (bt.kind == "ticks" or pending["symbol"].max() >= n):
        raise ValueError("pending: orders of a ticks run, or for a symbol out of range")
    for f in pending.tolist():
        bt.pending.setdefault(f[4], []).append(f)
    bt.coord.load_state(d["coordinator"], _array(arrays, "live", LIVE_DTYPE), n)
    _load_risk(bt.risk, d["risk"], n)
    bt.broker.load_state(d["broker"])
    bt.out = _load_out(d["out"], arrays, bt)
    bt.pool.threads = _cores()
    return bt


def _read_members(blob: bytes) -> dict[str, np.ndarray]:
    """The arrays of a state file, after its magic and checksum; ValueError for anything else."""
    magic = SNAPSHOT_MAGIC
    if blob[:6] != magic[:6] or len(blob) < 8:
        raise ValueError("not a backtest snapshot (a file saved by backtest --save-state)")
    if blob[6:8] != magic[6:8]:
        old = " (pickled by an older version, never read: it could run code)" if blob[6] == 1 else ""
        raise ValueError(f"a backtest snapshot of format {blob[6]}{old}; this version reads format "
                         f"{magic[6]}: run the backtest again to save one")  # fmt: skip
    digest, body = blob[8:40], blob[40:]
    if hashlib.sha256(body).digest() != digest:
        raise ValueError("backtest snapshot is damaged (checksum mismatch)")
    try:
        npz = np.load(io.BytesIO(body), allow_pickle=False)
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise ValueError("not an npz archive")
        with npz:
            members = set(npz.files)
            extra, missing = sorted(members - set(_MEMBERS)), [m for m in _MEMBERS if m not in members]
            if extra or missing:
                what = f"an extra member {extra[0][:40]!r}" if extra else f"no member {missing[0]!r}"
                raise ValueError(what)
            for info in npz.zip.infolist() if npz.zip else ():  # no member can grow past the file's size
                if info.compress_type != zipfile.ZIP_STORED or info.file_size > len(body):
                    raise ValueError(f"member {info.filename[:40]!r} is compressed or larger than the file")
            return {name: npz[name] for name in _MEMBERS}  # an object array raises: it would unpickle
    except Exception as e:  # zipfile's and numpy's parsers raise many kinds on a bad archive
        raise ValueError(f"backtest snapshot: {type(e).__name__}: {e}") from None


def _array(arrays: dict[str, np.ndarray], name: str, dtype: Any, n: int | None = None) -> np.ndarray:
    """A member, a 1-d array of `dtype` (of n items when n is given)."""
    a = arrays[name]
    if a.dtype != np.dtype(dtype) or a.ndim != 1 or (n is not None and len(a) != n):
        count = "" if n is None else f"{n} "
        raise ValueError(f"{name}: {a.dtype} x {a.shape} is not a list of {count}{np.dtype(dtype)}")
    return a


def _load_risk(risk: Risk, d: Any, n: int) -> None:
    """Risk's state back; its to_dict/load_dict have the book and the limits' state, the
    rest (the order rate's times, the refusal counts, the marked notionals) is here."""
    d = want_dict(d, "risk", {"state", "ledger", "approved_ts", "rejected", "feed_stalled", "notional",
                              "events"})  # fmt: skip
    st = want_dict(d["state"], "risk.state", {"state", "why", "peak", "day", "day_start", "equity",
                                              "marked", "flattening", "ticket", "in_flight",
                                              "approved_ts"})  # fmt: skip
    if want_str(st["state"], "risk.state", 16) not in {t.value for t in TradingState}:
        raise ValueError(f"risk.state: {str(st['state'])[:20]!r} is not a TradingState")
    want_str(st["why"], "risk.why")
    for k in ("peak", "day_start", "equity"):
        want_decimal(st[k], f"risk.{k}")
    want_int(st["day"], "risk.day", -1)
    want_bool(st["marked"], "risk.marked")
    for t in want_list(st["approved_ts"], "risk.state.approved_ts"):
        want_int(t, "risk.state.approved_ts")
    want_bool(st["flattening"], "risk.flattening")
    want_int(st["ticket"], "risk.ticket", 0)
    for x in want_list(st["in_flight"], "risk.in_flight"):
        cid, s, vol, price, reduce = want_list(x, "risk.in_flight", 5)
        want_int(cid, "risk.in_flight id", 0), want_int(s, "risk.in_flight symbol", 0, n - 1)
        want_decimal(vol, "risk.in_flight volume"), want_decimal(price, "risk.in_flight price")
        want_bool(reduce, "risk.in_flight reduce_only")
    ledger = checked_ledger(d["ledger"], "risk.ledger", risk.specs)
    approved = deque(want_int(t, "risk.approved_ts") for t in want_list(d["approved_ts"], "risk.approved_ts"))
    counts = want_dict(d["rejected"], "risk.rejected", set(), frozenset(Reason.__members__))
    rejected = dict.fromkeys(Reason, 0)
    rejected.update({Reason[k]: want_int(v, f"risk.rejected.{k}", 0) for k, v in counts.items()})
    events = want_list(d["events"], "risk.events")
    for e in events:
        if type(e) is not dict:
            raise ValueError("risk.events: an event that is not an object")
    stalled = want_bool(d["feed_stalled"], "risk.feed_stalled")
    notional = []
    for x in want_list(d["notional"], "risk.notional"):
        s, same, vol, value = want_list(x, "risk.notional", 4)
        notional.append((want_int(s, "risk.notional symbol", 0, n - 1), want_bool(same, "risk.notional same"),
                         want_decimal(vol, "risk.notional volume"),
                         want_decimal(value, "risk.notional value")))  # fmt: skip
    risk.load_dict(st)
    risk.ledger.load_dict(ledger)
    risk.approved_ts, risk.rejected, risk.events, risk.feed_stalled = approved, rejected, events, stalled
    # A notional is reused while its entry holds the very position the ledger has (Risk._gross):
    # one of a position since closed holds a stale one, which never is.
    positions = risk.ledger.positions
    if any(same and s not in positions for s, same, _, _ in notional):
        raise ValueError("risk.notional: the notional of a position the ledger does not have")
    risk.notional = {s: (positions[s] if same else Position(), vol, value)
                     for s, same, vol, value in notional}  # fmt: skip


_FILL_MONEY = ("volume", "price", "commission", "realized")
_FILL_KEYS = {"ts_ns", "symbol", "side", "agent", "client_order_id", "reason", *_FILL_MONEY}
_ORDER_FLOATS = ("conviction", "volume", "price", "sl", "tp")
_ORDER_INTS = ("ts_ns", "client_order_id", "symbol", "side", "agent")


def _load_out(d: Any, arrays: dict[str, np.ndarray], bt: Backtest) -> Recorded:
    """The output so far (Recorded), checked."""
    d = want_dict(d, "out", {"fills", "orders", "equity", "n_signals", "records", "first_ns", "last_ns"},
                  frozenset({"outcomes"}))  # fmt: skip
    out = Recorded(n_signals=want_int(d["n_signals"], "out.n_signals", 0),
                   records=want_int(d["records"], "out.records", 0),
                   first_ns=want_int(d["first_ns"], "out.first_ns"),
                   last_ns=want_int(d["last_ns"], "out.last_ns"))  # fmt: skip
    if "outcomes" in d:  # a state saved before outcomes were counted has none
        out.outcomes.load_dict(d["outcomes"])
    names = set(bt.names)
    for f in want_list(d["fills"], "out.fills"):
        f = want_dict(f, "out.fills", _FILL_KEYS)
        if want_str(f["symbol"], "out.fills symbol", 64) not in names:
            raise ValueError(f"out.fills: symbol {f['symbol']!r} is not one of the run's")
        for k in ("ts_ns", "side", "agent", "client_order_id"):
            want_int(f[k], f"out.fills {k}")
        want_str(f["reason"], "out.fills reason")
        out.fills.append({**f, **{k: want_decimal(f[k], f"out.fills {k}") for k in _FILL_MONEY}})
    for o in want_list(d["orders"], "out.orders"):
        o = want_dict(o, "out.orders", {*_ORDER_INTS, *_ORDER_FLOATS, "state", "reason"},
                      frozenset({"fill_price", "retcode"}))  # fmt: skip
        for k in _ORDER_INTS:
            want_int(o[k], f"out.orders {k}")
        for k in ("state", "reason", "fill_price"):
            if k in o:
                want_str(o[k], f"out.orders {k}")
        if "retcode" in o:
            want_int(o["retcode"], "out.orders retcode")
        out.orders.append({**o, **{k: want_float(o[k], f"out.orders {k}") for k in _ORDER_FLOATS}})
    for x in want_list(d["equity"], "out.equity"):
        ts, e = want_list(x, "out.equity", 2)
        out.equity.append((want_int(ts, "out.equity time"), want_decimal(e, "out.equity")))
    signals, batches = _array(arrays, "signals", SIGNAL_DTYPE), _array(arrays, "signal_batches", np.int64)
    if (batches <= 0).any() or batches.sum() != len(signals) or (len(batches) and not bt.keep_signals):
        raise ValueError("signal_batches: not the lengths of the kept signals' batches")
    out.signals = np.split(signals.copy(), np.cumsum(batches)[:-1]) if len(batches) else []
    return out


def run(
    config: Config,
    market: Market,
    *,
    keep_signals: bool = False,
    progress: Callable[[int], None] | None = None,
    mark_interval_s: int = 3600,
) -> Backtest:
    """A whole backtest over `market`; progress(records done) after each chunk."""
    bt = Backtest(
        config, market.names, market.kind, keep_signals=keep_signals, mark_interval_s=mark_interval_s
    )
    bt.feed(market.records, progress)
    bt.finish()
    return bt


__all__ = ["Backtest", "Ids", "Recorded", "run"]
