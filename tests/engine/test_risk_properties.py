"""Risk's invariants (docs: DESIGN.md §4) held by a state machine against the real Risk,
PaperBroker and gateway.execute: a market, a broker, risk, approved orders not executed
yet and reports not delivered yet, so orders and reports are in flight when the market
moves, risk marks, halts, flattens or restarts, and the broker restarts.

SOVEREIGN_PROPERTY_EXAMPLES=10000 runs it long; CI=true derandomizes it."""

from __future__ import annotations

import json
import math
import os
from collections import deque
from decimal import Decimal
from fractions import Fraction
from typing import Any, NamedTuple

import numpy as np
import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from sovereign.config import from_dict
from sovereign.core import ORDER_APPROVED, ORDER_DTYPE, ORDER_FILL, ORDER_INTENT
from sovereign.engine.gateway import execute, make_broker, report_of
from sovereign.engine.risk import DAY_NS, NS, Risk
from sovereign.ledger import Position, same_book
from sovereign.market.data import bars_to_ticks
from sovereign.model import REDUCE_ONLY, Reason, TradingState
from sovereign.symbols import symbol_specs
from tests.engine.risk_model import (
    NAMES,
    NO_RATE,
    POINTS,
    Market,
    ReferenceBook,
    config,
    frac,
    notional,
    to_account,
)
from tests.helpers import bars

EXAMPLES = int(os.environ.get("SOVEREIGN_PROPERTY_EXAMPLES", "200"))
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
NO_QUOTE = (0, 0.0, 0.0, 0)  # a fresh quote board's answer for a symbol that has not ticked
LOT = Fraction("0.01")  # the specs' lot step and minimum lot
EXACT = Fraction(1, 10**12)  # USD: the Ledger's Decimal divides (JPY) at 28 digits, the reference exactly

# An intent: symbol (len(NAMES): one risk does not know), side (0: not a side), the points
# its price is off the quote (2500: past the 1% band; or a price of NaN or infinity),
# where its stop and target lie and how many points away (or NaN, infinite), and the risk
# fraction asked for (above the limit, 0, NaN, ...). Half are sane (a known symbol, the
# quote's price, a stop 2 to 40 pips away), so that positions open, get stopped out and
# take risk to its daily loss and drawdown limits.
STOPS = ("far",) * 5 + ("inside", "level", "under_level", "wrong", "none", "infinite", "nan")
TARGETS = ("none", "far", "inside", "infinite", "nan")
OFFSETS = (0, 0, 0, 3, -3, 2500, math.nan, math.inf)
RISKS = (0.002, 0.005, 0.005, 0.01, 0.025, 0.025, 0.0, -0.005, math.nan, math.inf)
INTENT = st.one_of(
    st.tuples(st.sampled_from((0, 1, 2)), st.sampled_from((1, -1)), st.just(0), st.just("far"),
              st.integers(20, 400), st.sampled_from(("none", "far")), st.integers(20, 1500),
              st.sampled_from((0.005, 0.01, 0.025))),
    st.tuples(st.sampled_from((0, 0, 1, 1, 2, 2, NO_RATE, len(NAMES))),
              st.sampled_from((1, -1, 1, -1, 1, -1, 0)), st.sampled_from(OFFSETS), st.sampled_from(STOPS),
              st.integers(5, 1500), st.sampled_from(TARGETS), st.integers(5, 1500), st.sampled_from(RISKS)),
)  # fmt: skip


class Approval(NamedTuple):
    """An order risk approved (ORDER_DTYPE's fields) and the trading state it was approved in."""

    order: tuple
    state: TradingState


class RiskMachine(RuleBasedStateMachine):
    """Held at each approval: an opening order is sized at the quote risk read, its stop
    beyond the exit side by the stops level, its risk (volume x stop distance, in USD at
    the entry) within equity x min(asked, risk_per_trade), its notional within the symbol
    limit; positions and opening orders in flight within the gross limit and the count of
    positions; nothing but exits approved out of ACTIVE; the order rate. At each
    execution: no exit, and nothing approved in REDUCING or HALTED, grows the broker's
    position. At each restart of risk: state, peak, day, day start, equity, in flight and
    the order rate's window are the same. At each mark: one without quotes moves nothing;
    past the limits risk is REDUCING or HALTED. After every step: the broker's positions
    within the count, risk's in flight the orders approved and not reported, risk's book
    the broker's once every report is delivered, the broker's balance the reference
    book's, the peak and the day never back."""

    @initialize(
        limits=st.fixed_dictionaries({
            "risk_per_trade": st.sampled_from((0.005, 0.01)),
            "max_open_positions": st.integers(1, 3),
            "max_symbol_exposure": st.sampled_from((0.5, 2.0, 10.0)),
            "max_gross_exposure": st.sampled_from((1.0, 3.0, 10.0)),
            "max_orders_per_minute": st.sampled_from((3, 60)),
            "daily_loss_limit": st.sampled_from((0.001, 0.003, 0.02)),
            "max_drawdown": st.sampled_from((0.02, 0.04, 0.1)),
        }),
        costs=st.fixed_dictionaries({"commission_per_lot": st.sampled_from((0.0, 7.0)),
                                     "slippage_points": st.sampled_from((0, 2))}),
        float_asks=st.booleans(),
        stops_level=st.sampled_from((0, 10)),
        start=st.sampled_from(("flat", "flat", "positioned", "reducing")),
        held=st.lists(st.tuples(st.sampled_from((1, -1)), st.integers(10, 150)), min_size=1, max_size=3),
    )  # fmt: skip
    def open_market(self, limits: dict[str, Any], costs: dict[str, Any], float_asks: bool, stops_level: int,
                    start: str, held: list[tuple[int, int]]) -> None:  # fmt: skip
        """A fresh account; or one a previous session left with positions (EURUSD, USDJPY,
        EURGBP: side and hundredths of a lot each), and REDUCING after a day's loss."""
        self.cfg = from_dict(config(limits, costs, stops_level))
        self.stops_level = (stops_level, 0, 0, 0)
        self.ids = iter(range(1, 10**9))  # client ids: the coordinator's and risk's, one counter as live
        self.specs = symbol_specs(self.cfg, NAMES)
        self.risk = Risk(self.cfg, self.specs, self.next_id)
        self.broker = make_broker(self.cfg, NAMES)
        self.ref = ReferenceBook.opened(self.cfg.broker.initial_balance)
        self.market = Market(float_asks)
        self.clock = 20_000 * DAY_NS + 10 * 3600 * NS  # market time: 10:00 UTC
        self.board: dict[int, tuple[int, float, float, int]] = {}  # risk's quote board
        self.approved: deque[tuple] = deque()  # approved, not executed yet
        self.reports: deque[tuple] = deque()  # executed, not delivered to risk yet
        self.flights: dict[int, Approval] = {}  # approved, report not delivered: risk's in_flight
        self.sent: deque[int] = deque()  # market times of the orders approved on intents (order rate)
        # Risk's valuation of each position for the gross limit, kept as DESIGN says it is:
        # at the last mark's bid, or at the quote of the first decision after it changed.
        self.valued: dict[int, tuple[Position, Decimal, Fraction]] = {}
        self.peak_floor, self.day_floor = self.risk.peak, self.risk.day
        for s in range(len(NAMES)):
            self._tick(s, 0, 20, 0)
        if start != "flat":
            self._resume_session(held[: self.cfg.risk.max_open_positions], reducing=start == "reducing")

    def _resume_session(self, held: list[tuple[int, int]], reducing: bool) -> None:
        for symbol, (side, lots) in enumerate(held):
            _, bid, ask, _ = self.quotes(symbol)
            order = (self.clock, 0, self.next_id(), 0, symbol, 0, side, ORDER_APPROVED, 0, 0, lots / 100,
                     ask if side > 0 else bid, 0.0, 0.0, 0.0, 0.0, 0.0)  # fmt: skip
            rec = np.array([order], ORDER_DTYPE)[0]
            ex = execute(self.broker, rec)
            self._booked(ex)
            self.risk.on_report_rows([report_of(ex, rec)])
        if reducing:  # the day started higher, by half the drawdown limit; REDUCING until the next
            was = Decimal(repr(1 + self.cfg.risk.max_drawdown / 2)) * self.risk.ledger.balance
            saved = self.risk.to_dict() | {"state": "REDUCING", "why": "daily loss limit", "peak": str(was),
                                           "day": self.clock // DAY_NS, "day_start": str(was)}  # fmt: skip
            self.risk.load_dict(saved)
            self.peak_floor, self.day_floor = self.risk.peak, self.risk.day

    def next_id(self) -> int:
        return next(self.ids)

    def quotes(self, symbol: int) -> tuple[int, float, float, int]:
        return self.board.get(symbol, NO_QUOTE)

    # ---- the market and the broker

    @rule(
        moves=st.lists(
            st.tuples(
                st.integers(0, len(NAMES) - 1),
                st.one_of(st.integers(-400, 400), st.sampled_from((-3000, 3000))),
                st.integers(0, 40),
                st.integers(0, 1500),
            ),
            min_size=1,
            max_size=4,
        )
    )
    def tick(self, moves: list[tuple[int, int, int, int]]) -> None:
        """Ticks, each (symbol, points the mid moves, spread in points, ms since the last)."""
        for move in moves:
            self._tick(*move)

    def _tick(self, symbol: int, points: int, spread: int, ms: int) -> None:
        self.clock += ms * 1_000_000
        bid, ask = self.market.move(symbol, points, spread)
        self.board[symbol] = (self.clock, bid, ask, self.clock)
        for ex in self.broker.on_tick(symbol, self.clock, bid, ask):  # a stop or target hit
            event(f"broker exit {ex.reason}")
            self._booked(ex)
            self.reports.append(report_of(ex, None))

    @precondition(lambda self: self.approved)
    @rule()
    def execute_next(self) -> None:
        self._execute()

    @precondition(lambda self: self.reports)
    @rule(n=st.integers(1, 4))
    def deliver_reports(self, n: int) -> None:
        self._deliver(n)

    @precondition(lambda self: self.approved or self.reports)
    @rule()
    def drain(self) -> None:
        while self.approved:
            self._execute()
        self._deliver(len(self.reports))

    def _execute(self) -> None:
        order = self.approved.popleft()
        approval = self.flights[order[2]]
        symbol, reason = order[4], Reason(order[8])
        before = self.broker.ledger.volume(symbol)
        rec = np.array([order], ORDER_DTYPE)[0]
        ex = execute(self.broker, rec)
        after = self.broker.ledger.volume(symbol)
        grew = abs(after) > abs(before) or (after != 0 and before != 0 and (after > 0) != (before > 0))
        assert not (reason in REDUCE_ONLY and grew), (
            f"an exit ({reason.name}) took the broker's position in {NAMES[symbol]} from {before} to {after}"
        )
        assert not (approval.state is not TradingState.ACTIVE and grew), (
            f"an order approved while {approval.state.value} took the broker's position in {NAMES[symbol]} "
            f"from {before} to {after}")  # fmt: skip
        self._booked(ex)
        self.reports.append(report_of(ex, rec))
        event(f"executed {reason.name}: {ex.retcode.name}")

    def _booked(self, ex: Any) -> None:
        realized = self.ref.apply(ex)
        assert abs(frac(ex.realized_pnl) - realized) <= EXACT, (
            f"{NAMES[ex.symbol]}: the broker realized {ex.realized_pnl} USD, the reference {float(realized)}"
        )

    def _deliver(self, n: int) -> None:
        batch = [self.reports.popleft() for _ in range(min(n, len(self.reports)))]
        self.risk.on_report_rows(batch)
        for r in batch:
            self.flights.pop(r[2], None)

    # ---- risk

    @rule(batch=st.lists(INTENT, min_size=1, max_size=4))
    def intents(self, batch: list[tuple]) -> None:
        intents = [self._intent(*d) for d in batch]
        approved, refused = self.risk.check(intents, self.quotes, self.clock)
        self._approve(approved, {f[2]: f for f in intents})
        why = dict(refused)
        for w in why.values():
            event(f"refused {w.name}")
        for i, f in enumerate(intents):
            assert f[4] != NO_RATE or why.get(i) is Reason.NO_RATE, f"EURCHF: {why.get(i)}, not NO_RATE"
        # The decisions that valued the book for the gross limit (risk._gross): each priced
        # every position but its own symbol's, and cached a changed one's value.
        opened = {o[2] for o in approved if o[8] == Reason.OK}
        for i, f in enumerate(intents):
            if f[2] in opened or why.get(i) in (Reason.SYMBOL_EXPOSURE, Reason.GROSS_EXPOSURE):
                for s, pos in self.risk.ledger.positions.items():
                    if s != f[4]:
                        self._value(s, pos, self.quotes(s)[1])
        if opened:
            self._check_gross()
        # The order rate: every order approved on an intent (a reversal's close and open are
        # two), in the last minute of market time, across restarts too.
        self.sent.extend([self.clock] * len(approved))
        while self.sent and self.sent[0] <= self.clock - 60 * NS:
            self.sent.popleft()
        limit = self.cfg.risk.max_orders_per_minute
        assert len(self.sent) <= limit, f"{len(self.sent)} orders approved in a minute, above {limit}"

    def _intent(self, symbol: int, side: int, off: float, stop: str, dist: int, target: str, tp_dist: int,
                risk: float) -> tuple:  # fmt: skip
        m = min(symbol, len(NAMES) - 1)  # a symbol risk does not know: refused before its price matters
        way = side or 1
        spread, price = self.market.spread[m], self.market.price
        entry = spread if way > 0 else 0  # points above the bid: where it buys or sells
        exit_ = 0 if way > 0 else spread  # ... and where the position it opens closes
        level = self.stops_level[m]
        sl = {"far": price(m, exit_ - way * dist), "inside": price(m, spread // 2),
              "level": price(m, exit_ - way * level), "under_level": price(m, exit_ - way * (level - 1)),
              "wrong": price(m, entry + way * dist), "none": 0.0,
              "infinite": -way * math.inf, "nan": math.nan}[stop]  # fmt: skip
        tp = {"far": price(m, exit_ + way * tp_dist), "inside": price(m, spread // 2), "none": 0.0,
              "infinite": way * math.inf, "nan": math.nan}[target]  # fmt: skip
        at = price(m, entry + int(off)) if math.isfinite(off) else off
        return (self.clock, self.clock, self.next_id(), 0, symbol, 0, side, ORDER_INTENT, 0, 0, 0.0,
                at, sl, tp, 1.0, risk, 0.0)  # fmt: skip

    @rule(new_day=st.sampled_from((False, False, False, True)))
    def mark(self, new_day: bool) -> None:
        r = self.risk
        if new_day:
            self.clock = (self.clock // DAY_NS + 1) * DAY_NS + NS
        before = (r.state, r.peak, r.day, r.day_start, r.equity)
        unquoted = any(self.quotes(s)[0] == 0 for s in r.ledger.positions)
        out = r.mark(self.quotes, self.clock)
        self.valued = {}
        for s, pos in r.ledger.positions.items():
            if self.quotes(s)[0]:
                self._value(s, pos, self.quotes(s)[1])
        self._approve(out.tolist(), {})
        event(f"mark: {before[0].value} -> {r.state.value}{', unquoted' if unquoted else ''}")
        if unquoted:  # marks use only real quotes: until each position has one, nothing moves
            assert (r.state, r.peak, r.day, r.day_start, r.equity) == before, (
                "a mark without quotes moved risk"
            )
            return
        equity, limits = frac(r.equity), self.cfg.risk
        if equity <= frac(r.peak) * (1 - frac(limits.max_drawdown)):
            assert r.state is TradingState.HALTED, f"equity {r.equity} past the max drawdown, {r.state.value}"
        if r.state is TradingState.ACTIVE:
            assert equity > frac(r.day_start) * (1 - frac(limits.daily_loss_limit)), (
                f"equity {r.equity} past the daily loss limit from {r.day_start}, still ACTIVE"
            )
        if r.day > before[2]:
            assert r.state is not TradingState.REDUCING, "REDUCING through a new trading day"

    @rule(command=st.sampled_from(("flatten",) * 6 + ("resume",) * 4 + ("halt", "halt and flatten")),
          symbol=st.none() | st.integers(0, len(NAMES) - 1))  # fmt: skip
    def operator(self, command: str, symbol: int | None) -> None:
        """What the ops CLI sends: flatten one symbol or all, halt (and flatten), resume."""
        r = self.risk
        if command == "resume":
            r.resume()
            self.peak_floor = r.peak  # a resume from HALTED re-bases the peak: the only way down
        elif command == "flatten":
            self._approve(r.flatten(symbol, self.quotes, self.clock).tolist(), {})
        else:
            self._approve(r.halt(command != "halt", "operator", self.quotes, self.clock).tolist(), {})

    @rule(what=st.sampled_from(("risk", "risk, reconciled", "broker")))
    def restart(self, what: str) -> None:
        if what == "broker":
            self._restart_broker()
        else:
            self._restart_risk(reconcile=what != "risk")

    def _restart_broker(self) -> None:
        """The gateway restarts: the broker's persisted account in a fresh PaperBroker,
        which has no quote until each symbol ticks again."""
        saved = json.loads(json.dumps(self.broker.to_dict()))
        self.broker = make_broker(self.cfg, NAMES)
        self.broker.load_dict(saved)

    def _restart_risk(self, reconcile: bool) -> None:
        """Risk restarts from what it persisted, on a fresh quote board; reconciled, as
        sovereign.engine.risk.run does when the broker's book is not the one risk saved."""
        old = self.risk

        def kept(r: Risk) -> tuple:
            return (r.state, r.why, r.peak, r.day, r.day_start, r.equity, r.flattening, r.marked, r.in_flight,
                    r.approved_ts)  # fmt: skip

        self.risk = Risk(self.cfg, self.specs, self.next_id)
        self.risk.load_dict(json.loads(json.dumps(old.to_dict())))
        self.risk.ledger.load_dict(json.loads(json.dumps(old.ledger.to_dict())))
        broker = json.loads(json.dumps(self.broker.to_dict()))
        if reconcile and not same_book(broker["ledger"], self.risk.ledger.to_dict()):
            self.risk.ledger.load_dict(broker["ledger"])
            self.risk.ticket = int(broker["next_ticket"]) - 1
        else:
            assert (
                same_book(self.risk.ledger.to_dict(), old.ledger.to_dict()) and self.risk.ticket == old.ticket
            )
        assert kept(self.risk) == kept(old), f"a restart changed risk: {kept(old)} -> {kept(self.risk)}"
        self.board, self.valued = {}, {}

    # ---- what risk approves

    def _approve(self, orders: list[tuple], intents: dict[int, tuple]) -> None:
        """Hold each order risk just approved (or sent of its own) to the limits it was
        decided under, and put it in flight."""
        r = self.risk
        for o in orders:
            cid, symbol, reason = o[2], o[4], Reason(o[8])
            assert symbol != NO_RATE, f"an order in {NAMES[symbol]}, which has no rate to USD"
            assert r.state is TradingState.ACTIVE or reason in REDUCE_ONLY, (
                f"{reason.name} order approved while {r.state.value}"
            )
            if reason is Reason.OK:
                self._check_open(o, intents[cid])
            self.flights[cid] = Approval(o, r.state)
            event(f"approved {reason.name} while {r.state.value}")
            self.approved.append(o)
        symbols = set(r.ledger.positions) | {
            a.order[4] for a in self.flights.values() if a.order[8] == Reason.OK
        }
        assert len(symbols) <= self.cfg.risk.max_open_positions, (
            f"positions and opening orders in {sorted(NAMES[s] for s in symbols)}: more than "
            f"{self.cfg.risk.max_open_positions}")  # fmt: skip

    def _check_open(self, o: tuple, intent: tuple) -> None:
        r, limits = self.risk, self.cfg.risk
        symbol, side, volume, entry, stop = o[4], o[6], frac(o[10]), frac(o[11]), frac(o[12])
        _, bid, ask, _ = self.quotes(symbol)
        name = NAMES[symbol]
        assert entry == frac(ask if side > 0 else bid), f"{name}: approved at {o[11]}, quote {bid}/{ask}"
        assert (volume / LOT).denominator == 1 and LOT <= volume <= 100, f"{name}: volume {o[10]}"
        gap = self.stops_level[symbol] * POINTS[symbol]
        exit_ = frac(bid if side > 0 else ask)
        assert (
            (stop < exit_ and stop <= exit_ - gap) if side > 0 else (stop > exit_ and stop >= exit_ + gap)
        ), f"{name}: stop {o[12]} within {self.stops_level[symbol]} points of {exit_} (side {side})"
        equity = frac(r.equity)
        at_risk = to_account(symbol, volume * abs(entry - stop) * 100_000, entry)
        allowed = equity * min(frac(intent[15]), frac(limits.risk_per_trade))
        assert at_risk <= allowed, (
            f"{name}: {o[10]} lots risk {float(at_risk):.2f} USD, above {float(allowed):.2f}"
        )
        exposure = notional(symbol, volume, entry)
        assert exposure <= equity * frac(limits.max_symbol_exposure), (
            f"{name}: {o[10]} lots are {float(exposure):.2f} USD, above the symbol limit on equity {r.equity}"
        )

    def _value(self, symbol: int, pos: Position, bid: float) -> Fraction:
        """A position's notional as risk values it: at the bid given, at cost without one;
        cached until the position changes (risk.notional)."""
        known = self.valued.get(symbol)
        if known is None or known[0] is not pos or known[1] != pos.volume:
            price = frac(bid) if bid > 0 else sum((abs(frac(v)) * frac(p) for v, p in pos.lots), Fraction(0))
            if not bid > 0:
                price /= abs(frac(pos.volume))
            known = self.valued[symbol] = (pos, pos.volume, notional(symbol, frac(pos.volume), price))
        return known[2]

    def _check_gross(self) -> None:
        """Positions not being closed, at risk's values, and the opening orders in flight at
        the price each was approved at, against the limit on the equity risk decided with."""
        closing = {a.order[4] for a in self.flights.values() if Reason(a.order[8]) in REDUCE_ONLY}
        positions = self.risk.ledger.positions.items()
        held = sum((self._value(s, pos, self.quotes(s)[1]) for s, pos in positions if s not in closing),
                   Fraction(0))  # fmt: skip
        opening = [a.order for a in self.flights.values() if a.order[8] == Reason.OK]
        flying = sum((notional(o[4], frac(o[10]), frac(o[11])) for o in opening), Fraction(0))
        room = frac(self.risk.equity) * frac(self.cfg.risk.max_gross_exposure)
        assert held + flying <= room, (
            f"gross {float(held):.2f} held + {float(flying):.2f} in flight, above {float(room):.2f} USD"
        )

    # ---- after every step

    @invariant()
    def positions_stay_within_the_limit(self) -> None:
        n = len(self.broker.ledger.positions)
        assert n <= self.cfg.risk.max_open_positions, f"the broker holds {n} positions"

    @invariant()
    def in_flight_is_every_order_approved_and_not_reported(self) -> None:
        flying, approved = sorted(self.risk.in_flight), sorted(self.flights)
        assert flying == approved, f"risk's in flight {flying}, approved and not reported {approved}"

    @invariant()
    def books_agree_once_every_report_is_delivered(self) -> None:
        if not self.reports:
            assert same_book(self.risk.ledger.to_dict(), self.broker.ledger.to_dict()), (
                f"risk's book {self.risk.ledger.to_dict()} is not the broker's {self.broker.ledger.to_dict()}"
            )

    @invariant()
    def the_broker_books_what_the_reference_does(self) -> None:
        assert abs(frac(self.broker.balance) - self.ref.balance) <= EXACT, (
            f"broker balance {self.broker.balance}, reference {float(self.ref.balance)}"
        )
        for s in range(len(NAMES)):
            assert frac(self.broker.ledger.volume(s)) == self.ref.volume(s), NAMES[s]

    @invariant()
    def peak_and_day_never_go_back(self) -> None:
        r = self.risk
        assert r.peak >= self.peak_floor, f"peak {self.peak_floor} -> {r.peak} without a resume from HALTED"
        assert r.day >= self.day_floor, f"trading day {self.day_floor} -> {r.day}"
        self.peak_floor, self.day_floor = r.peak, r.day


# CI: the same examples every run, and no database of past failures to replay.
_CI: dict[str, Any] = {"derandomize": True, "database": None} if IN_CI else {}
RiskMachine.TestCase.settings = settings(max_examples=EXAMPLES, stateful_step_count=40, deadline=None,
                                         suppress_health_check=[HealthCheck.too_slow], **_CI)  # fmt: skip
TestRiskMachine = RiskMachine.TestCase


# ---- cases worth keeping apart from the machine

T = 20_000 * DAY_NS  # a market time: midnight UTC, day 20,000


def fresh_risk(**limits: Any) -> Risk:
    """Risk on the machine's market with these risk limits, no commission."""
    cfg = from_dict(config(limits, {"commission_per_lot": 0.0}, 0))
    ids = iter(range(1000, 10**6))
    return Risk(cfg, symbol_specs(cfg, NAMES), lambda: next(ids))


def eurusd_intent(cid: int, side: int = 1, sl: float = 1.0952, tp: float = 0.0) -> tuple:
    """An intent on EURUSD at a 1.1000/1.1002 quote, 50 pips of stop (ORDER_DTYPE's fields)."""
    price, stop = (1.1002, sl) if side > 0 else (1.1, 1.1052)
    return (T, T, cid, 0, 0, 0, side, ORDER_INTENT, 0, 0, 0.0, price, stop, tp, 1.0, 0.005, 0.0)


def eurusd(symbol: int) -> tuple[int, float, float, int]:
    return (T, 1.1, 1.1002, T)


def filled(order: tuple) -> tuple:
    """The report of an approved order filled as approved."""
    return (*order[:7], ORDER_FILL, *order[8:])


def test_a_usdjpy_round_trip_books_its_pnl_in_usd_at_the_exit_price() -> None:
    """+50 pips on 1 lot of USDJPY from 150.00 is 50,000 JPY: 332.23 USD at 150.50, not 50,000."""
    risk = fresh_risk(max_symbol_exposure=5.0)
    broker = make_broker(from_dict(config({}, {"commission_per_lot": 0.0}, 0)), NAMES)
    board = {1: (T, 149.98, 150.0, T)}
    broker.on_tick(1, T, 149.98, 150.0)
    # 0.00334 * 100,000 USD at risk over 0.5 JPY a unit (333.33 USD a lot at 150.00): 1.00 lot
    intent = (T, T, 50, 0, 1, 0, 1, ORDER_INTENT, 0, 0, 0.0, 150.0, 149.5, 0.0, 1.0, 0.00334, 0.0)
    (buy,), refused = risk.check([intent], board.__getitem__, T)
    assert not refused and buy[10] == 1.0
    rec = np.array([buy], ORDER_DTYPE)[0]
    risk.on_report_rows([report_of(execute(broker, rec), rec)])
    board[1] = (T + NS, 150.5, 150.52, T + NS)
    broker.on_tick(1, T + NS, 150.5, 150.52)
    (close,) = risk.flatten(1, board.__getitem__, T + NS)
    ex = execute(broker, close)
    risk.on_report_rows([report_of(ex, close)])
    pnl = Decimal(50_000) / Decimal("150.5")
    assert ex.realized_pnl == pnl and f"{pnl:.2f}" == "332.23"
    assert broker.balance == Decimal(100_000) + pnl and risk.ledger.balance == broker.balance


@pytest.mark.parametrize("sl, tp", [(math.nan, 0.0), (math.inf, 0.0), (1.0952, math.nan), (1.0952, math.inf)],
                         ids=["nan stop", "infinite stop", "nan target", "infinite target"])  # fmt: skip
def test_a_stop_that_is_not_a_number_is_refused_and_such_a_target_dropped(sl: float, tp: float) -> None:
    """An agent's NaN passes the coordinator unchanged; it once raised decimal.InvalidOperation
    in risk (stops_ok compared a Decimal NaN)."""
    approved, refused = fresh_risk().check([eurusd_intent(1, sl=sl, tp=tp)], eurusd, T)
    if math.isfinite(sl):
        assert not refused and approved[0][13] == 0.0
    else:
        assert not approved and [w for _, w in refused] == [Reason.BAD_STOP]


def test_a_reversal_does_not_pass_the_order_rate() -> None:
    """Its close and its open are two orders: once both went on one free place."""
    risk = fresh_risk(max_orders_per_minute=2, max_symbol_exposure=2.0)
    (buy,), _ = risk.check([eurusd_intent(1)], eurusd, T)
    risk.on_report_rows([filled(buy)])
    reversal, refused = risk.check([eurusd_intent(2, side=-1)], eurusd, T + NS)
    assert not reversal and [w for _, w in refused] == [Reason.ORDER_RATE]


def test_a_restart_does_not_reset_the_order_rate() -> None:
    """Risk.to_dict once left out the window: a restarted risk started from none sent."""
    risk = fresh_risk(max_orders_per_minute=1)
    assert len(risk.check([eurusd_intent(1)], eurusd, T)[0]) == 1
    again = fresh_risk(max_orders_per_minute=1)
    again.load_dict(json.loads(json.dumps(risk.to_dict())))
    again.ledger.load_dict(risk.ledger.to_dict())
    on_gbp = (T, T, 2, 0, 2, 0, 1, ORDER_INTENT, 0, 0, 0.0, 0.8502, 0.8452, 0.0, 1.0, 0.005, 0.0)
    approved, refused = again.check([on_gbp], lambda s: (T, 0.85, 0.8502, T), T + NS)
    assert [w for _, w in refused] == [Reason.ORDER_RATE], f"a second order in a second: {approved}"


def test_risk_books_a_slipped_fill_of_a_replayed_bar_at_the_brokers_price() -> None:
    """The report carries the price as a float: the broker once filled at the exact Decimal
    (1.2070000000000002), which the report rounded to another float (1.2070000000000003)."""
    cfg = from_dict(config({}, {"slippage_points": 2}, 0))
    ids = iter(range(1, 100))
    risk, broker = Risk(cfg, symbol_specs(cfg, NAMES), lambda: next(ids)), make_broker(cfg, NAMES)
    (tick, *_) = bars_to_ticks(bars([(1.2068, 1.2068, 1.2068, 1.2068)]), np.array([18]), 1e-5).tolist()
    broker.on_tick(0, tick[0], tick[1], tick[2])  # ask 1.2069800000000002
    rec = np.array([(T, 0, 7, 0, 0, 0, 1, ORDER_APPROVED, 0, 0, 0.1, tick[2], 0.0, 0.0, 1.0, 0.005, 0.0)],
                   ORDER_DTYPE)[0]  # fmt: skip
    ex = execute(broker, rec)
    risk.on_report_rows([report_of(ex, rec)])
    assert same_book(risk.ledger.to_dict(), broker.ledger.to_dict()), (ex.price, report_of(ex, rec)[11])
