"""Risk: the guardian, the only component that can approve an order.

It sizes each intent from its stop distance and the symbol's specs, checks every limit
(each refusal carries a Reason), keeps its own book from execution reports (a Ledger,
exact), marks it to market from the quote board, and holds the trading state:
ACTIVE; REDUCING (exits only) after the day's loss limit, until the next trading day
(it starts at risk.day_start in risk.day_timezone: UTC midnight unless configured);
HALTED after the max drawdown from peak or on command, with every position flattened.

Clock: `now_ns` is the market clock (the newest quote time), so a backtest decides
exactly as live does; the wrapper measures durations on the monotonic clock, never the
wall clock (NTP may step it). Transport-free; the process wrapper persists `events` and state.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from decimal import ROUND_FLOOR, Decimal
from typing import Any, NamedTuple

import numpy as np

from sovereign.config import Config, RiskConfig
from sovereign.core import (
    NO_AGENT,
    ORDER_APPROVED,
    ORDER_DTYPE,
    ORDER_FILL,
    OrderRing,
    QuoteBoard,
    wait_for_records,
)
from sovereign.engine.metrics import REASONS, TRADING_STATES, meter
from sovereign.engine.runtime import RUNNING, STOPPED, Child, set_realtime
from sovereign.failpoints import failpoint
from sovereign.latency import LatencyHistogram
from sovereign.ledger import ZERO, Ledger, Position, new_deal, same_book, to_decimal
from sovereign.market.calendar import CLOSED, LIVE, STALLED, Days, FeedWatch, MarketCalendar, feed_rate
from sovereign.model import Reason, TradingState, reduce_only
from sovereign.state.orders import ClientIds, OrderBook, OrderState
from sovereign.state.recorder import event_log
from sovereign.state.schema import BOOK_KEY, PAPER_BROKER_KEY, RISK_STATE_KEY, VENUE_BOOK_KEY, VENUE_SPECS_KEY
from sovereign.state.store import Committer, StateStore, Txn
from sovereign.state.views import keep_day_open
from sovereign.symbols import SymbolSpec, symbol_specs

NS = 1_000_000_000
VENUE_SPEC_FIELDS = ("contract_size", "lot_step", "min_lot", "max_lot", "point", "stops_level")
VENUE_LOOK_S = 0.1  # how often risk looks for a new venue book (broker.kind = "mt5")
DAY_NS = 86_400 * NS

Quotes = Callable[[int], tuple[int, float, float, int]]  # symbol -> (ts_ns, bid, ask, recv_ns)


class Flight(NamedTuple):
    """An order risk approved whose report has not come back: it counts as exposure."""

    symbol: int
    volume: Decimal  # signed lots
    price: Decimal  # what it was approved at, to value its notional
    reduce_only: bool


class Risk:
    def __init__(self, config: Config, specs: dict[int, SymbolSpec], next_id: Callable[[], int]):
        self.limits: RiskConfig = config.risk
        self.specs = specs
        self.next_id = next_id
        self.ledger = Ledger(Decimal(repr(config.broker.initial_balance)), specs)
        self.state = TradingState.ACTIVE
        self.why = ""
        self.peak = self.ledger.balance
        self.days = Days(config.risk.day_timezone, config.risk.day_start)
        self.day = -1  # the trading day (Days.key: its date as days since 1970); never moves backwards
        self.day_start = self.ledger.balance
        self.equity = self.ledger.balance
        self.marked = False  # whether equity is a mark of real quotes (not just the balance)
        self.approved_ts: deque[int] = deque()  # market times of recent approvals (order rate)
        self.events: list[dict[str, Any]] = []  # for the journal; the wrapper drains it
        # An outside venue (broker.kind = "mt5"): the symbols whose trading specs the terminal
        # has sent (set_venue_specs); no other opens a position. None: the config's specs are
        # the broker's own (paper).
        self.venue_known: set[int] | None = set() if config.broker.kind == "mt5" else None
        self.rejected = dict.fromkeys(Reason, 0)
        self.flattening = False  # halted with flatten: keep closing whatever is open
        self.in_flight: dict[int, Flight] = {}  # client id -> approved, not reported yet
        # The whole feed silent (the wrapper says, by the monotonic clock): for stale_after_s of
        # open market (stalled), or since the calendar shut the market (closed). Either way
        # every quote is stale; only a stall is an alarm.
        self.feed_stalled = False
        self.market_closed = False
        self.ticket = 0  # the newest deal in the book: a report of it or an older one is not applied again
        # Each open position's notional at the last mark (as equity is), for the gross limit:
        # symbol -> (the position, its volume then, notional). Refreshed by every mark; an
        # entry whose position has changed since is valued at the intent's quote instead.
        self.notional: dict[int, tuple[Position, Decimal, Decimal]] = {}

    # ---- intents

    def on_intents(self, intents: np.ndarray, quotes: Quotes, now_ns: int) -> tuple[np.ndarray, list]:
        """Approved orders (ORDER_DTYPE) and the refused intents as (record, Reason) pairs."""
        approved, refused = self.check(intents.tolist(), quotes, now_ns)
        return np.array(approved, ORDER_DTYPE), [(intents[i], why) for i, why in refused]

    def check(self, intents: list[tuple], quotes: Quotes, now_ns: int) -> tuple[list[tuple], list]:
        """`on_intents` on records as tuples of ORDER_DTYPE's fields (`tolist()`): the
        approved orders as such tuples, and (index of the intent, Reason) for each refused.
        Each approval is in flight before the next intent is checked, so a batch cannot
        pass a limit that each of its intents alone keeps."""
        approved, refused = [], []
        for i, f in enumerate(intents):
            orders, why = self._check(f, quotes, now_ns)
            for order in orders:  # a reversal's close goes even if its open is refused
                self._fly(order)
                self.approved_ts.append(now_ns)
            approved += orders
            if why is not Reason.OK:
                self.rejected[why] += 1
                refused.append((i, why))
        return approved, refused

    def _check(self, f: tuple, quotes: Quotes, now_ns: int) -> tuple[list[tuple], Reason]:
        symbol, side, price, rec_sl, rec_tp, rec_risk = f[4], f[6], f[11], f[12], f[13], f[15]
        spec = self.specs.get(symbol)
        if spec is None:
            return [], Reason.UNKNOWN_SYMBOL
        if not spec.convertible:
            return [], Reason.NO_RATE
        if self.venue_known is not None and symbol not in self.venue_known:
            return [], Reason.NO_SPEC
        if side not in (1, -1) or not (rec_risk > 0 and math.isfinite(rec_risk)) or not (
            price > 0 and math.isfinite(price)
        ):
            return [], Reason.BAD_INTENT
        if self.state is TradingState.HALTED:
            return [], Reason.HALTED
        qts, bid, ask, _ = quotes(symbol)
        if qts == 0 or not (bid > 0 and ask > 0):
            return [], Reason.NO_QUOTE
        if self.market_closed:
            return [], Reason.MARKET_CLOSED
        if self.feed_stalled or now_ns - qts > self.limits.stale_after_s * NS:
            return [], Reason.STALE_QUOTE
        ref = ask if side > 0 else bid
        if abs(ref / price - 1.0) > self.limits.price_band:
            return [], Reason.PRICE_BAND
        if any(o.symbol == symbol for o in self.in_flight.values()):
            return [], Reason.IN_FLIGHT  # sized on the book once the broker has answered
        current = self.ledger.volume(symbol)
        if current != 0 and (current > 0) == (side > 0):
            return [], Reason.ALREADY_POSITIONED
        if self.state is TradingState.REDUCING and current == 0:
            return [], Reason.REDUCING
        while self.approved_ts and self.approved_ts[0] <= now_ns - 60 * NS:
            self.approved_ts.popleft()
        # A reversal sends two orders (its close and its open): both must fit in the rate.
        if len(self.approved_ts) + (2 if current != 0 and self.state is TradingState.ACTIVE else 1) > (
            self.limits.max_orders_per_minute
        ):
            return [], Reason.ORDER_RATE
        orders = []
        if self.state is TradingState.REDUCING:  # exits only: close, do not reverse
            return [self._order(f, f[2], abs(current), ref, 0.0, 0.0, Reason.REDUCING, now_ns)], Reason.OK
        if current != 0:  # a reversal is a reduce-only close, then an open sized on its own
            orders.append(self._order(f, self.next_id(), abs(current), ref, 0.0, 0.0, Reason.CLOSE, now_ns))
        exact_bid, exact_ask = to_decimal(bid), to_decimal(ask)
        stop = to_decimal(rec_sl) if rec_sl and math.isfinite(rec_sl) else None
        if stop is None or not spec.stops_ok(side, stop, None, exact_bid, exact_ask):
            return orders, Reason.BAD_STOP  # a reversal's close still goes: the signal turned
        open_symbols = set(self.ledger.positions) | {o.symbol for o in self.in_flight.values()}
        if current == 0 and len(open_symbols) >= self.limits.max_open_positions:
            return orders, Reason.MAX_POSITIONS
        exact_ref = to_decimal(ref)
        budget = self.equity * min(Decimal(repr(rec_risk)), Decimal(repr(self.limits.risk_per_trade)))
        # exact: no float subtraction; in the account currency at the entry price
        per_lot = spec.to_account(abs(exact_ref - stop) * spec.contract_size, exact_ref)
        volume = (budget / per_lot / spec.lot_step).to_integral_value(ROUND_FLOOR) * spec.lot_step
        volume = min(volume, spec.max_lot)
        if volume < spec.min_lot:
            return orders, Reason.VOLUME_TOO_SMALL
        # Exposure limits cut the size down to what fits; refuse only if not a minimum lot.
        per_lot_notional = spec.to_account(spec.contract_size * exact_ref, exact_ref)
        symbol_room = self.equity * to_decimal(self.limits.max_symbol_exposure)
        gross_room = self.equity * to_decimal(self.limits.max_gross_exposure)
        gross_room -= self._gross(quotes, skip=symbol)
        for room, why in ((symbol_room, Reason.SYMBOL_EXPOSURE), (gross_room, Reason.GROSS_EXPOSURE)):
            fits = (room / per_lot_notional / spec.lot_step).to_integral_value(ROUND_FLOOR) * spec.lot_step
            if fits < spec.min_lot:
                return orders, why
            volume = min(volume, fits)
        tp = to_decimal(rec_tp) if rec_tp and math.isfinite(rec_tp) else None
        tp_ok = tp is not None and spec.stops_ok(side, None, tp, exact_bid, exact_ask)
        orders.append(self._order(f, f[2], volume, ref, rec_sl, rec_tp if tp_ok else 0.0, Reason.OK, now_ns))
        return orders, Reason.OK

    @staticmethod
    def _order(f: tuple, cid: int, volume: Decimal, price: float, sl: float, tp: float, why: Reason,
               now_ns: int) -> tuple:  # fmt: skip
        """The intent `f` as an order risk approves, stamped with the market time risk decided
        at: the gateway's paper broker fills it at a quote no older than that."""
        return (now_ns, f[1], cid, *f[3:7], ORDER_APPROVED, int(why), f[9], float(volume), price, sl, tp,
                *f[14:])  # fmt: skip

    def _fly(self, order: tuple) -> None:
        volume = to_decimal(order[10]) * order[6]
        self.in_flight[order[2]] = Flight(order[4], volume, to_decimal(order[11]), reduce_only(order[8]))

    def _gross(self, quotes: Quotes, skip: int) -> Decimal:
        """The notional of every open position but `skip`'s, at the last mark's bids (see
        bench/bench_pipeline.py for why not at each quote now), and of every opening order
        in flight, at the price it was approved at."""
        total = ZERO
        for s, pos in self.ledger.positions.items():
            if s != skip:
                known = self.notional.get(s)
                if known is None or known[0] is not pos or known[1] != pos.volume:
                    known = self._value(s, pos, to_decimal(quotes(s)[1]))
                total += known[2]
        for o in self.in_flight.values():
            if not o.reduce_only and o.symbol != skip:
                spec = self.specs[o.symbol]
                total += spec.to_account(abs(o.volume) * spec.contract_size * o.price, o.price)
        return total

    def _value(self, symbol: int, pos: Position, bid: Decimal) -> tuple[Position, Decimal, Decimal]:
        """A position's notional in the account currency; at cost while it has no quote."""
        if bid <= 0:
            bid = sum((abs(v) * p for v, p in pos.lots), ZERO) / abs(pos.volume)
        spec = self.specs[symbol]
        notional = spec.to_account(abs(pos.volume) * spec.contract_size * bid, bid)
        self.notional[symbol] = (pos, pos.volume, notional)
        return self.notional[symbol]

    # ---- executions and marking

    def on_reports(self, reports: np.ndarray) -> None:
        self.on_report_rows(reports.tolist())

    def on_report_rows(self, reports: list[tuple]) -> None:
        """`on_reports` on records as tuples of ORDER_DTYPE's fields."""
        for r in reports:
            cid, ticket, symbol, side, kind, volume, price, sl, tp, commission = (
                r[2], r[3], r[4], r[6], r[7], r[10], r[11], r[12], r[13], r[16])
            self.in_flight.pop(cid, None)
            if kind == ORDER_FILL and new_deal(ticket, self.ticket):
                self.ticket = max(self.ticket, ticket)
                self.ledger.fill(symbol, side, to_decimal(volume), to_decimal(price), to_decimal(commission),
                                 to_decimal(sl) if sl else None, to_decimal(tp) if tp else None)  # fmt: skip

    def forget(self, cids: list[int]) -> None:
        """Orders known lost (taken by a gateway that died before recording them): no report
        will come, so they no longer count as exposure."""
        for cid in cids:
            if self.in_flight.pop(cid, None) is not None:
                self.events.append({"event": "order_lost", "client_order_id": cid})

    def mark(self, quotes: Quotes, now_ns: int) -> np.ndarray:
        """Mark the book to market; enforce the daily loss and drawdown limits. Returns the
        flatten orders of an emergency shutdown (empty otherwise).

        Only real quotes mark: while a position has none (a restart on a fresh quote
        board), equity, the peak, the day and both limits wait for it."""
        equity = self.ledger.balance
        self.notional.clear()
        unquoted = now_ns <= 0
        for s, pos in self.ledger.positions.items():
            qts, bid, ask, _ = quotes(s)
            if qts == 0 or not (bid > 0 and ask > 0):
                unquoted = True
                continue
            exact_bid = to_decimal(bid)
            equity += self.ledger.unrealized(s, exact_bid, to_decimal(ask))
            self._value(s, pos, exact_bid)
        if unquoted:
            return self._flatten_open(quotes, now_ns) if self.state is TradingState.HALTED else _NONE
        self.equity, self.marked = equity, True
        self.peak = max(self.peak, equity)
        day = self.days.key(now_ns)
        if day > self.day:
            self.day, self.day_start = day, equity
            # each day's opening equity, for the P&L of a week or a month (views.pnl)
            self.events.append({"event": "trading_day", "day": day, "equity": str(equity), "ts_ns": now_ns})
            if self.state is TradingState.REDUCING:
                self._set(TradingState.ACTIVE, "a new trading day")
        if self.state is TradingState.HALTED:
            return self._flatten_open(quotes, now_ns)
        if equity <= self.peak * (1 - Decimal(repr(self.limits.max_drawdown))):
            limit = self.limits.max_drawdown
            return self.halt(True, f"max drawdown: equity {equity:.2f} is more than {limit:.1%} "
                                   f"below the peak {self.peak:.2f}", quotes, now_ns)  # fmt: skip
        loss_floor = self.day_start * (1 - Decimal(repr(self.limits.daily_loss_limit)))
        if self.state is TradingState.ACTIVE and equity <= loss_floor:
            self._set(TradingState.REDUCING, f"daily loss limit: equity {equity:.2f} is more than "
                                             f"{self.limits.daily_loss_limit:.1%} below the day's start "
                                             f"{self.day_start:.2f}")  # fmt: skip
        return _NONE

    # ---- commands

    def halt(self, flatten: bool, why: str, quotes: Quotes, now_ns: int) -> np.ndarray:
        """HALTED: no new exposure. With flatten, an order closing every position."""
        self._set(TradingState.HALTED, why)
        self.flattening = self.flattening or flatten
        return self._flatten_open(quotes, now_ns)

    def _flatten_open(self, quotes: Quotes, now_ns: int) -> np.ndarray:
        """While flattening, close every open position without an order in flight: a fill
        of an order that was already on its way when the halt came is closed in turn."""
        if not self.flattening:
            return _NONE
        return self._closes(self.ledger.open_symbols(), quotes, now_ns)

    def flatten(self, symbol: int | None, quotes: Quotes, now_ns: int) -> np.ndarray:
        """Close one symbol's position (None: every open position) without changing the
        trading state. A symbol with an order in flight, or without a quote yet, is left
        alone (flatten again once it has been answered)."""
        symbols = self.ledger.open_symbols() if symbol is None else [symbol]
        out = self._closes([s for s in symbols if self.ledger.volume(s)], quotes, now_ns)
        self.events.extend({"event": "flatten", "symbol": int(o["symbol"]), "volume": str(o["volume"])}
                           for o in out)  # fmt: skip
        return out

    def _closes(self, symbols: list[int], quotes: Quotes, now_ns: int) -> np.ndarray:
        busy = {o.symbol for o in self.in_flight.values()}
        out = []
        for s in symbols:
            qts, bid, ask, _ = quotes(s)
            if s in busy or qts == 0 or not (bid > 0 and ask > 0):
                continue
            vol = self.ledger.volume(s)
            side = -1 if vol > 0 else 1
            order = (now_ns, 0, self.next_id(), 0, s, NO_AGENT, side, ORDER_APPROVED, int(Reason.FLATTEN), 0,
                     float(abs(vol)), ask if side > 0 else bid, 0.0, 0.0, 0.0, 0.0, 0.0)  # fmt: skip
            self._fly(order)
            out.append(order)
        return np.array(out, ORDER_DTYPE) if out else _NONE

    def account(self) -> dict[str, Any]:
        """What an operator asks first: state, money, drawdown, the day's P&L."""
        dd = (self.peak - self.equity) / self.peak if self.peak > 0 else Decimal(0)
        return {"state": self.state.name, "why": self.why, "balance": str(self.ledger.balance),
                "equity": str(self.equity), "peak": str(self.peak),
                "day_pnl": str(self.equity - self.day_start), "drawdown": float(dd),
                "open_positions": len(self.ledger.open_symbols()), "flattening": self.flattening,
                "closing": sum(o.reduce_only for o in self.in_flight.values()),
                "in_flight": len(self.in_flight), "feed": self.feed_state,
                "rejected": {r.name: n for r, n in self.rejected.items() if n}}  # fmt: skip

    def gauges(self) -> dict[str, float]:
        """The account as the metrics show it (floats: the exact figures are `account`'s)."""
        equity, peak, start = float(self.equity), float(self.peak), float(self.day_start)
        gross = float(sum((n for _, _, n in self.notional.values()), ZERO))
        return {"equity": equity, "balance": float(self.ledger.balance),
                "drawdown": max(0.0, (peak - equity) / peak) if peak > 0 else 0.0,
                "drawdown_limit": self.limits.max_drawdown,
                "daily_loss": max(0.0, (start - equity) / start) if start > 0 else 0.0,
                "daily_loss_limit": self.limits.daily_loss_limit,
                "gross_exposure": gross / equity if equity > 0 else 0.0,
                "open_positions": float(len(self.ledger.open_symbols())),
                "trading_state": float(TRADING_STATES.index(self.state.value))}  # fmt: skip

    def resume(self) -> str:
        """Back to ACTIVE; says what it did. Only a resume from HALTED re-bases the peak
        (the drawdown that halted it is acknowledged); a resume from REDUCING keeps the
        peak and re-bases the day's start (the day's loss is acknowledged)."""
        before = self.state
        if before is TradingState.ACTIVE:
            return "already active"
        if before is TradingState.HALTED:
            did = f"resumed from HALTED; drawdown peak re-based from {self.peak:.2f} to {self.equity:.2f}"
            self.peak = self.equity
        else:
            did = (f"resumed from REDUCING; the day's start re-based from {self.day_start:.2f} to "
                   f"{self.equity:.2f}, the drawdown peak stays {self.peak:.2f}")  # fmt: skip
            self.day_start = self.equity
        self.flattening = False
        self._set(TradingState.ACTIVE, did)
        return did

    @property
    def feed_state(self) -> str:
        return STALLED if self.feed_stalled else CLOSED if self.market_closed else LIVE

    def set_feed(self, state: str) -> None:
        """The whole feed is LIVE, STALLED or CLOSED (FeedWatch); journaled when it changes:
        feed_stalled (the alarm), market_closed, and feed_back or market_open after them."""
        was = self.feed_state
        if state == was or state not in (LIVE, STALLED, CLOSED):
            return
        self.feed_stalled, self.market_closed = state == STALLED, state == CLOSED
        event = {STALLED: "feed_stalled", CLOSED: "market_closed"}.get(state)
        self.events.append({"event": event or ("feed_back" if was == STALLED else "market_open")})

    def set_feed_stalled(self, stalled: bool) -> None:
        self.set_feed(STALLED if stalled else LIVE)

    def reload(self, limits: RiskConfig) -> None:
        self.limits = limits
        self.days = Days(limits.day_timezone, limits.day_start)
        self.events.append({"event": "risk_limits_reloaded", "limits": limits.__dict__})

    def _set(self, state: TradingState, why: str) -> None:
        if state is self.state and why == self.why:
            return
        self.events.append({"event": "trading_state", "state": state.value, "previous": self.state.value,
                            "why": why, "equity": str(self.equity)})  # fmt: skip
        self.state, self.why = state, why

    def set_venue_specs(self, by_symbol: dict[int, dict[str, Any]]) -> None:
        """The trading specs an outside venue sent (VENUE_SPECS_KEY): each symbol's contract
        size, lot step and limits, point and stops level replace the config's (its currencies,
        rate and commission stay), for sizing, notional, margin and P&L alike (the ledger
        shares the dict). Symbols it has not sent stay refused (NO_SPEC); what differed from
        before is journaled."""
        changed: dict[str, dict[str, str]] = {}
        for symbol, v in by_symbol.items():
            old = self.specs.get(symbol)
            if old is None:
                continue
            new = replace(old, contract_size=Decimal(v["contract_size"]), lot_step=Decimal(v["lot_step"]),
                          min_lot=Decimal(v["min_lot"]), max_lot=Decimal(v["max_lot"]),
                          point=Decimal(v["point"]), stops_level=int(v["stops_level"]))  # fmt: skip
            if new != old or (self.venue_known is not None and symbol not in self.venue_known):
                changed[str(symbol)] = {k: str(getattr(new, k)) for k in VENUE_SPEC_FIELDS
                                        if getattr(new, k) != getattr(old, k)}  # fmt: skip
            self.specs[symbol] = new
        if self.venue_known is not None:
            self.venue_known = {s for s in by_symbol if s in self.specs}
        if changed:
            self.events.append({"event": "venue_specs", "symbols": changed,
                                "known": sorted(self.venue_known or by_symbol)})  # fmt: skip

    # ---- persistence

    def to_dict(self) -> dict[str, Any]:
        return {"state": self.state.value, "why": self.why, "peak": str(self.peak), "day": self.day,
                "day_start": str(self.day_start), "equity": str(self.equity), "marked": self.marked,
                "flattening": self.flattening, "ticket": self.ticket,
                "approved_ts": list(self.approved_ts),  # the order rate's window survives a restart
                "in_flight": [[cid, o.symbol, str(o.volume), str(o.price), o.reduce_only]
                              for cid, o in self.in_flight.items()]}  # fmt: skip

    def load_dict(self, d: dict[str, Any]) -> None:
        self.state, self.why = TradingState(d["state"]), d["why"]
        self.peak, self.day, self.day_start = Decimal(d["peak"]), int(d["day"]), Decimal(d["day_start"])
        self.equity = Decimal(d["equity"])
        self.marked = bool(d.get("marked", True))
        self.flattening = bool(d.get("flattening", False))
        self.ticket = int(d.get("ticket", 0))
        self.approved_ts = deque(int(t) for t in d.get("approved_ts", []))
        self.in_flight = {int(cid): Flight(int(s), Decimal(v), Decimal(p), bool(r))
                          for cid, s, v, p, r in d.get("in_flight", [])}  # fmt: skip


_NONE = np.zeros(0, ORDER_DTYPE)


RISK_COMMIT_EVERY_S = 0.05  # risk's state and refusals: at most 20 commits a second
REPORT_WAIT_S = 5.0  # stopping: how long risk waits for the report of an order it approved


class RiskProcess:
    """Risk's process wrapper: moves intents and reports between its rings and `Risk`,
    logs each decision for the replay, commits refusals, state and book, and beats.

    The event log says when this process took what (replay): each batch of reports, and
    every decision as (kind, what, clock, quotes read, new client ids): "i" a batch of
    intents, "m" a mark, "c" a command. A mark that changed nothing but equity is logged
    only if an event follows it (the next mark overwrites equity). Each event is written
    before what it made is pushed."""

    def __init__(self, child: Child, config: Config):
        self.child = child
        layout = child.layout
        # Before any thread starts: the committer's inherits it. A woken risk no longer
        # waits for a busy core to take an intent (the figures: see bench/bench_pipeline.py).
        print(f"risk: {set_realtime(config.system.risk_rt_priority)}", flush=True)
        self.store = StateStore(config.system.state_dir)
        ids = ClientIds(self.store)
        self.issued = ids.issued  # cleared as each event is logged
        self.risk = Risk(config, symbol_specs(config, layout.symbol_names or layout.n_symbols), ids.next)
        saved = self.restore()
        self.board = QuoteBoard.attach(layout.quotes)
        self.seen: dict[int, tuple] = {}  # the quotes read since the last event
        self.log = event_log(config, layout.session, "risk")
        self.pending: list[tuple] = []  # a mark held back until an event follows it
        self.intents = OrderRing.attach(layout.intents)
        self.reports = OrderRing.attach(layout.reports_risk)
        self.approved = OrderRing.attach(layout.approved)
        # The intents of this session taken so far, committed with risk's state: every refusal
        # they made is in LMDB. Those taken after it by a process killed before its commit
        # left no record (the replay drops their refusals too).
        self.session, self.taken = layout.session, self.intents.stats()["popped"]
        self.start(saved)
        self.buf = np.zeros(self.intents.capacity, ORDER_DTYPE)
        self.rep = np.zeros(self.reports.capacity, ORDER_DTYPE)
        self.clock_ns = 0
        # The feed's newest quote time and when it last moved (a restarted risk: when the
        # gateway stamped the newest quote on the board, so a silence keeps its length).
        self.watch = FeedWatch(MarketCalendar(config.market), feed_rate(config.feed), start_ns=time.time_ns())
        heard = int(self.board.snapshot()["recv_ns"].max(initial=0))
        self.watch.moved(self.board.newest_ts(), at_ns=heard or None)
        self.orders = OrderBook(self.store)
        # Refusals and risk's state wait for nothing risk does next: those lost with a killed
        # risk are what the replay already handles (the intents its last commit covers). So
        # they are committed on a thread, spaced, and the decisions never wait for them. The
        # book, changed by reports, is committed at once (hurry), not after the spacing: it is
        # what the operator's views show, and it must stay the broker's, not up to a spacing
        # behind. Risk does not wait for that commit: it decides on the intents meanwhile. A
        # risk killed before it lands restarts from the broker's book (`restore`).
        self.committer = Committer(self.store, "risk-commits", every_s=RISK_COMMIT_EVERY_S)
        self.next_mark = self.next_save = self.next_beat = 0.0
        self.meter = meter(child)
        # client id -> (when approved, its place in the approved ring), until its report comes
        # back; those a restarted risk found in flight: placed before everything pushed so far.
        self.pushed = self.approved.stats()["pushed"]
        self.awaiting = dict.fromkeys(self.risk.in_flight, (time.monotonic(), self.pushed - 1))
        self.watched = [self.intents, self.reports]
        self.intent_in, self.approved_out = LatencyHistogram(), LatencyHistogram()
        self.venue, self.venue_seq, self.next_venue = config.broker.kind == "mt5", 0, 0.0
        self.specs_seen: dict[str, Any] | None = None  # the venue's specs risk sizes with

    def restore(self) -> Any:
        """Risk's saved state and book from LMDB; returns the state as saved."""
        risk = self.risk
        saved, book, broker = self.store.read(lambda t: (t.get("risk", RISK_STATE_KEY),
                                                         t.get("positions", BOOK_KEY),
                                                         t.get("bridge", PAPER_BROKER_KEY)))  # fmt: skip
        if saved is not None:
            risk.load_dict(saved)
        if book is not None:
            risk.ledger.load_dict(book)
        if broker is not None and not same_book(broker["ledger"], risk.ledger.to_dict()):  # crashed between
            # The broker's book has every deal before its next ticket, some of them maybe
            # still in the reports ring: those are not applied again.
            risk.ledger.load_dict(broker["ledger"])
            risk.ticket = int(broker["next_ticket"]) - 1

            def reconcile(t: Txn) -> None:
                t.journal("reconciled", source="broker", book=broker["ledger"])
                t.put("positions", BOOK_KEY, broker["ledger"])

            self.store.write(reconcile)
        return saved

    def reconcile_venue(self, now: float) -> None:
        """An outside venue (broker.kind = "mt5"): after each reconnect the gateway commits the
        venue's positions (VENUE_BOOK_KEY, each with a new seq). Where risk's book holds other
        volumes, it becomes the venue's, and the correction is journaled. A book older than a
        deal risk has applied is not taken: risk has moved past it, by that deal's report."""
        if not self.venue or now < self.next_venue:
            return
        self.next_venue = now + VENUE_LOOK_S
        snap, specs = self.store.read(lambda t: (t.get("bridge", VENUE_BOOK_KEY),
                                                 t.get("bridge", VENUE_SPECS_KEY)))  # fmt: skip
        if specs is not None and specs != self.specs_seen:
            self.specs_seen = specs
            self.risk.set_venue_specs({int(s): v for s, v in specs["by_symbol"].items()})
        if snap is None or snap["seq"] == self.venue_seq:
            return
        self.venue_seq = snap["seq"]
        risk = self.risk
        if risk.ticket > int(snap["ticket"]):
            return
        ours = {s: p.volume for s, p in risk.ledger.positions.items() if p.volume}
        theirs = {int(s): Decimal(p["lots"][0][0]) for s, p in snap["positions"].items()}
        risk.ticket = max(risk.ticket, int(snap["ticket"]))
        if ours == theirs:
            return
        before = {str(s): str(v) for s, v in ours.items()}
        risk.ledger.load_dict({"balance": str(risk.ledger.balance), "positions": snap["positions"]})
        risk.events.append({"event": "reconciled", "source": "venue", "seq": snap["seq"], "before": before,
                            "after": {s: p["lots"][0][0] for s, p in snap["positions"].items()}})  # fmt: skip
        print(f"risk: the book became the venue's (seq {snap['seq']}): {before} -> {theirs}", flush=True)
        self.persist(book_changed=True)

    def start(self, saved: Any) -> None:
        """Log where the replay starts: risk's state and book, the rings' positions, and how
        many intents of this session the last commit covered."""
        covered = (saved or {}).get("intents_taken")  # [session, count], from the last commit
        durable = int(covered[1]) if isinstance(covered, list) and covered[0] == self.session else 0
        if self.log is not None:
            rings = {"intents": self.taken, "reports": self.reports.stats()["popped"],
                     "approved": self.approved.stats()["pushed"]}  # fmt: skip
            self.log.add("start", {"state": self.risk.to_dict(), "ledger": self.risk.ledger.to_dict(),
                                   "rings": rings, "intents_taken": durable})  # fmt: skip
            self.log.flush()

    def read(self, symbol: int) -> tuple[int, float, float, int]:
        """One view of the market per decision: a symbol's quote is read from the board once
        per batch of intents, mark or command (the feed moves the board meanwhile)."""
        q = self.seen.get(symbol)
        if q is None:
            self.seen[symbol] = q = self.board.read(symbol)
        return q

    def now(self) -> int:
        """The market clock: the board's newest quote time, never backwards."""
        newest = self.board.newest_ts()
        self.watch.moved(newest)
        self.clock_ns = max(self.clock_ns, newest)
        return self.clock_ns

    def logged(self, *event: Any) -> None:
        """Log `event`, after the mark held back for it; the next decision reads its own
        quotes and issues its own client ids."""
        if self.log is not None:
            for e in self.pending:
                self.log.add(*e)
            self.log.add(*event)
        self.pending.clear()
        self.seen.clear()
        self.issued.clear()

    def flush(self) -> None:
        if self.log is not None:
            self.log.flush()

    def persist(self, refused: list | None = None, book_changed: bool = False) -> None:
        """Queue a commit of the refusals, risk's events and state, and the book if it changed
        (at once: see the committer's comment in __init__)."""
        risk, orders = self.risk, self.orders
        events, risk.events = risk.events, []
        rows = [(int(rec["client_order_id"]), why.name, int(rec["symbol"]), int(rec["side"]),
                 float(rec["conviction"]), int(rec["ts_ns"])) for rec, why in refused or ()]  # fmt: skip
        book = risk.ledger.to_dict() if book_changed else None
        state = {**risk.to_dict(), "intents_taken": [self.session, self.taken]}

        def tx(t: Txn) -> None:
            for cid, why, symbol, side, conviction, ts_ns in rows:
                orders.advance(t, cid, [OrderState.REJECTED], reason=why, symbol=symbol, side=side,
                               conviction=conviction, ts_ns=ts_ns)  # fmt: skip
            for e in events:
                t.journal(**e)
                if e["event"] == "trading_day":
                    keep_day_open(t, e["day"], e["equity"])
            if book is not None:
                t.put("positions", BOOK_KEY, book)
            t.put("risk", RISK_STATE_KEY, state)

        self.committer.submit(tx)
        if book is not None:
            self.committer.hurry()

    def push(self, orders: np.ndarray) -> None:
        self.approved.push(orders, timeout=1.0)
        for cid in orders["client_order_id"].tolist():
            self.awaiting[cid] = (time.monotonic(), self.pushed)
            self.pushed += 1

    def take_intents(self) -> None:
        """Decide on the intents waiting: logged, then the approved pushed, then the
        refusals queued for commit."""
        n = self.intents.pop_into(self.buf)
        if not n:
            return
        popped = time.monotonic_ns()
        self.taken += n
        clock_ns = self.now()
        ok, refused = self.risk.on_intents(self.buf[:n], self.read, clock_ns)
        self.logged("i", n, clock_ns, self.seen, self.issued)
        self.flush()
        if len(ok):
            pushing = time.monotonic_ns()  # before: the push may hand the core to the gateway
            self.push(ok)
            self.approved_out.add_since(ok["origin_ns"], pushing)
        self.intent_in.add_since(self.buf["origin_ns"][:n], popped)  # after the push: off the path
        if refused:
            failpoint("risk.refusing")
            self.persist(refused)

    def take_reports(self) -> None:
        """Apply the execution reports waiting to the book, and commit it."""
        m = self.reports.pop_into(self.rep, timeout=0.0)
        if not m:
            return
        for cid in self.rep["client_order_id"][:m].tolist():
            self.awaiting.pop(cid, None)
        self.risk.on_reports(self.rep[:m])
        self.logged("r", m)
        self.persist(book_changed=True)

    def mark(self) -> np.ndarray:
        """Mark the book to market; returns the orders it makes (an emergency shutdown's)."""
        clock_ns, before = self.now(), _marked(self.risk)
        out = self.risk.mark(self.read, clock_ns)
        if len(out) or _marked(self.risk) != before:
            self.logged("m", None, clock_ns, self.seen, self.issued)
        else:
            self.pending[:] = [("m", None, clock_ns, dict(self.seen), [])]
            self.seen.clear()
        return out

    def commands(self) -> np.ndarray:
        """Apply the supervisor's messages and the wrapper's own (`internal`), each logged if
        it did something, and answer the requests; returns the orders they make. What a
        command changed is durable before its answer goes: an operator told "halted" must
        find it halted after any crash (a kill right after the answer undid 5 of 95 resumes
        in the chaos run)."""
        out = _NONE
        answers = []
        for msg in self.child.messages() + self.internal():
            clock_ns = self.now()
            more, answer = apply_command(self.risk, msg, self.read, clock_ns)
            if answer["did"]:
                self.logged("c", msg[2:] if msg[0] == "request" else msg, clock_ns, self.seen, self.issued)
            out = np.concatenate([out, more])
            if msg[0] == "request":
                answers.append((msg[1], answer))
        if any(a["did"] for _, a in answers):
            self.flush()
            self.persist()
            self.committer.flush()
        for request_id, answer in answers:
            self.child.reply(request_id, answer)
            if answer["did"]:
                failpoint("risk.answered")
        return out

    def send(self, out: np.ndarray) -> None:
        """Push the orders a mark and the commands made, once what made them is logged."""
        self.flush()
        if self.risk.events:  # a trading-state change is durable before the orders it makes go out
            self.persist()
            self.committer.flush()
        if len(out):
            self.push(out)

    def internal(self) -> list[tuple]:
        """What risk is told by its own wrapper, as commands (logged, so the replay sees
        them): the whole feed silent by the monotonic clock, stalled or with the market
        shut (a silence never looks stale against the newest quote; see FeedWatch), and
        orders lost with a gateway: taken from the approved ring REPORT_WAIT_S ago and still
        not in the order book."""
        msgs: list[tuple] = []
        feed = self.watch.state(self.risk.limits.stale_after_s)
        if feed != self.risk.feed_state:
            msgs.append(("feed", feed))
        since = time.monotonic() - REPORT_WAIT_S
        waited = [(cid, place) for cid, (at, place) in self.awaiting.items() if at < since]
        taken_by_gateway = self.approved.stats()["popped"] if waited else 0  # rarely asked
        old = [cid for cid, place in waited if place < taken_by_gateway]
        if old:
            lost = [cid for cid in old if self.orders.get(cid) is None]
            for cid in old:
                self.awaiting.pop(cid)
            if lost:
                msgs.append(("lost", lost))
        return msgs

    def draining(self) -> bool:
        """Stopping, the coordinator has exited: decide on the intents it left, and take the
        reports of the orders approved (the gateway stops after risk), so that the book
        risk saves is the broker's. An order unreported for REPORT_WAIT_S was lost with a
        killed gateway (it popped it, never recorded it): not waited for."""
        if self.intents.stats()["depth"] or self.reports.stats()["depth"]:
            return True
        since = time.monotonic() - REPORT_WAIT_S
        return any(t > since for t, _ in self.awaiting.values())

    def save(self, t: float) -> None:
        if self.risk.events or t >= self.next_save:  # risk's state at least every second, logged or not
            self.next_save = t + 1.0
            self.persist()

    def beat(self, t: float) -> None:
        # A commit stuck: no beat, so the supervisor sees a hang.
        if t >= self.next_beat and not self.committer.stalled(1.0):
            self.next_beat = t + 0.05
            risk = self.risk
            self.child.beat(RUNNING, orders=len(risk.approved_ts), rejects=sum(risk.rejected.values()))
            self.publish()

    def publish(self) -> None:
        """The metrics: the account's gauges, whether the market is open, the refusals by reason."""
        risk, watch = self.risk, self.watch
        rejections = [0] * REASONS
        for why, n in risk.rejected.items():
            rejections[why] = n
        gauges = {**risk.gauges(), "market_open": float(watch.calendar.is_open(watch.market_now()))}
        self.meter.publish(gauges, rejections=rejections)

    def stop(self) -> None:
        self.persist(book_changed=True)
        self.committer.close()
        # Hop by hop, from each tick's arrival at the gateway (bench/bench_pipeline.py reads it).
        hops = {"tick_to_intent": self.intent_in.to_dict(), "tick_to_approved": self.approved_out.to_dict()}
        self.store.write(lambda t: t.journal("risk_stats", intents=self.taken, **hops))
        if self.log is not None:
            self.log.close()
        self.publish()
        self.child.beat(STOPPED)
        self.store.close()


def run(child: Child, config: Config) -> None:
    """The risk process: intents -> checks -> approved ring; reports -> book; marking."""
    p = RiskProcess(child, config)
    while not child.stop_requested or p.draining():
        # Asleep until an intent or a report comes, or the next mark (every 10 ms) is due.
        wait_for_records(p.watched, timeout=max(0.0, min(p.next_mark, p.next_beat) - time.monotonic()))
        p.take_intents()
        p.take_reports()
        t = time.monotonic()
        p.reconcile_venue(t)
        if t >= p.next_mark:
            p.next_mark = t + 0.01
            out = p.mark()
            p.send(np.concatenate([out, p.commands()]))
        p.flush()
        p.save(t)
        p.beat(t)
    p.stop()


def _marked(risk: Risk) -> tuple:
    """What a mark may change besides equity (replay: a mark changing none of it is not logged)."""
    return (risk.state, risk.why, risk.peak, risk.day, risk.day_start, risk.flattening, risk.marked,
            len(risk.events))  # fmt: skip


def apply_command(risk: Risk, msg: tuple, quotes: Quotes, now_ns: int) -> tuple[np.ndarray, dict[str, Any]]:
    """A control message from the supervisor (the ops CLI, SIGHUP): ("request", id, kind,
    *args) expects an answer, (kind, *args) does not. Returns the orders it makes and the
    answer: the account after the command, and what the command did."""
    if msg[0] == "request":
        msg = msg[2:]
    kind, out, did = msg[0], np.zeros(0, ORDER_DTYPE), ""
    if kind == "halt":
        out = risk.halt(bool(msg[1]), str(msg[2]), quotes, now_ns)
        did = f"halted; {len(out)} closing orders sent" if msg[1] else "halted"
    elif kind == "flatten":
        out = risk.flatten(None if msg[1] is None else int(msg[1]), quotes, now_ns)
        did = f"{len(out)} closing orders sent"
    elif kind == "resume":
        did = risk.resume()
    elif kind == "feed":  # a state (FeedWatch), or a flag: stalled (recordings before the calendar)
        was, state = risk.feed_state, msg[1] if isinstance(msg[1], str) else STALLED if msg[1] else LIVE
        risk.set_feed(state)
        did = "" if risk.feed_state == was else {
            STALLED: "feed stalled: every intent refused as stale",
            CLOSED: "market closed by the calendar: intents refused as stale, no alarm",
            LIVE: "feed back" if was == STALLED else "market open: ticks again"}[state]  # fmt: skip
    elif kind == "lost":
        risk.forget([int(c) for c in msg[1]])
        did = f"{len(msg[1])} orders lost with a gateway no longer count as exposure"
    elif kind == "reload":
        risk.reload(msg[1])
        did = "risk limits reloaded"
    return out, {**risk.account(), "did": did}
