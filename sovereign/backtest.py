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

import hashlib
import os
import pickle
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, NamedTuple

import numpy as np

from sovereign.broker.paper import Retcode
from sovereign.config import Config, ConfigError
from sovereign.coordinator import Coordinator
from sovereign.core import NO_AGENT, TICK_DTYPE, Screen
from sovereign.datafile import FILE_BAR_DTYPE, FILE_TICK_DTYPE, Market
from sovereign.gateway import _row, make_broker
from sovereign.ledger import ZERO, to_decimal
from sovereign.risk import Reason, Risk, reduce_only
from sovereign.symbols import symbol_specs
from sovereign.worker import build_pool

NS = 1_000_000_000
DAY_NS = 86_400 * NS
CHUNK = 1 << 18  # records per pass of the agents
_LAZY = True
SNAPSHOT_MAGIC = b"SOVBT\x00\x01\x00"


class Ids:
    """Client order ids for one backtest: 1, 2, 3, ... (deterministic, picklable)."""

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
    records: int = 0
    first_ns: int = 0
    last_ns: int = 0


class _Agents(NamedTuple):
    records: np.ndarray  # as the walk takes them (ticks: TICK_DTYPE, stamped with their place)
    signals: np.ndarray
    at: np.ndarray  # per signal: the record before which it is decided


class Backtest:
    """One run over a Market, fed in consecutive pieces (`feed`); picklable between them
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
        self.pool = build_pool(list(range(n)))
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
        return self.coord.intents_for(signals)

    def _approve(self, intents: list[tuple]) -> None:
        self._mark_equity_only()
        approved, refused = self.risk.check(intents, self.quote, self.now_ns)
        for i, why in refused:  # as live: the coordinator waits out the in-flight time
            self.out.orders.append(_order_row(intents[i], "REJECTED", why.name))
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
        self._reports([_row(ex, f[1], f[5], f[14], f[12], f[13])], [ex], agent=f[5])

    def _exits(self, executions: list) -> None:
        """The broker's own fills (stops, targets) reported."""
        self._reports([_row(ex, 0, NO_AGENT, 0.0, 0.0, 0.0) for ex in executions], executions)

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

    # ---- snapshots

    def snapshot(self) -> bytes:
        """Everything needed to resume: the agents' snapshot and the components' state."""
        state = dict(self.__dict__)
        state["pool"] = self.pool.snapshot()
        body = pickle.dumps(state, protocol=5)
        return SNAPSHOT_MAGIC + hashlib.sha256(body).digest() + body

    @classmethod
    def restore(cls, blob: bytes) -> Backtest:
        """A Backtest from `snapshot()` bytes; refuses anything else or a damaged copy."""
        if blob[:8] != SNAPSHOT_MAGIC:
            raise ValueError("not a backtest snapshot (or one from another version)")
        digest, body = blob[8:40], blob[40:]
        if hashlib.sha256(body).digest() != digest:
            raise ValueError("backtest snapshot is damaged (checksum mismatch)")
        state = pickle.loads(body)  # our own file, checksummed above
        bt = cls.__new__(cls)
        blob_pool = state.pop("pool")
        bt.__dict__.update(state)
        bt.pool = build_pool(list(range(len(bt.names))))
        bt.pool.restore(blob_pool)
        bt.pool.threads = _cores()
        return bt


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
