"""The gateway on an outside venue (broker.kind = "mt5"): the terminal's ticks are the feed,
and orders go out through the broker's non-blocking calls (sovereign.broker.base.Broker).

One loop, turned at least every TURN_S (each turn carries the bridge's heartbeat; the
terminal gives up on a silent engine after 3 s). Approved orders are committed in
SUBMITTING, durably, and only then handed to the broker. What the broker reports final,
and every deal it saw, is committed in one transaction with the broker's own state (the
last deal seen and the specs the terminal sent with its file, MT5_BROKER_KEY), so a deal
is applied once whatever dies when, and a successor trades on the same file; the
reports of that commit are kept (LAST_REPORTS_KEY) and pushed after it, and pushed again
by a successor if the gateway died in between (risk and the coordinator skip a deal they
have applied, by ticket).

Reports: one fill per deal, in the order the deals come (the venue's tickets rise): ours
with the fields of the order it executes, a deal we did not send (a stop-loss, a target, a
stop-out, a manual trade: client id 0) with NO_AGENT, journaled as adopted; a reject per
order that executed nothing. A deal on a symbol we do not trade is journaled only.

Recovery: orders a crash left in SUBMITTING are looked up at the terminal (Broker.resolve),
never sent again. After every (re)connect, once the broker has reconciled (the deals since
the last one seen, then the positions), the venue's positions are committed as a book
(VENUE_BOOK_KEY) that risk makes its own. While the bridge is down no tick comes: risk
sees stale quotes and opens nothing; whether it is up, and why not, is committed
(BRIDGE_STATUS_KEY) for `sovereign status` and `doctor`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

import numpy as np

from sovereign.broker.base import ACCOUNT_MODES, Deal, OrderRequest, Outcome
from sovereign.broker.mt5 import MT5Broker, MT5Settings
from sovereign.config import Config
from sovereign.core import (
    LAYOUT_VERSION,
    NO_AGENT,
    ORDER_DTYPE,
    ORDER_FILL,
    ORDER_REJECT,
    OrderRing,
    QuoteBoard,
    TickRing,
    wait_for_records,
)
from sovereign.engine.gateway import order_fields, publish_orders, route
from sovereign.engine.metrics import Histogram, meter
from sovereign.engine.runtime import RUNNING, STOPPED, Child
from sovereign.ledger import to_decimal
from sovereign.market.data import known_symbols
from sovereign.model import Reason, reduce_only
from sovereign.state.orders import OrderBook, OrderState
from sovereign.state.recorder import Recorder, record_dir
from sovereign.state.schema import (
    BRIDGE_STATUS_KEY,
    LAST_REPORTS_KEY,
    MT5_BROKER_KEY,
    VENUE_BOOK_KEY,
    VENUE_SPECS_KEY,
    deal_key,
    exec_key,
)
from sovereign.state.store import StateStore, Txn

TURN_S = 0.005  # the loop's sleep, at most, when nothing comes: well inside the heartbeat's 100 ms
MAX_SYMBOLS = 4096
EXIT_REASONS = {4: Reason.EXIT_SL, 5: Reason.EXIT_TP}  # DEAL_REASON -> the report's reason
ADOPTED = {0: "manual", 1: "mobile", 2: "web", 3: "expert", 4: "stop_loss", 5: "take_profit", 6: "stop_out"}
STOP_DRAIN_S = 5.0  # at a stop, how long the orders still at the terminal are waited for


def venue_symbols(config: Config, stored: object = None) -> tuple[str, ...]:
    """The system's symbol names by id for an MT5 account: the state's list (its ids stay
    theirs), then the names of mt5.symbols it lacks."""
    known = known_symbols(stored, MAX_SYMBOLS)
    return tuple(known + [n for n in config.mt5.symbols if n not in set(known)])


def mt5_settings(config: Config, names: Sequence[str]) -> MT5Settings:
    m = config.mt5
    return MT5Settings(m.bridge, m.magic, list(names), dict(m.symbol_map), deviation=m.deviation,
                       max_reprice=m.max_reprice, max_backoff=m.max_backoff, max_resend=m.max_resend,
                       result_timeout_s=m.result_timeout_s,
                       heartbeat_timeout_ms=int(m.heartbeat_timeout_s * 1000),
                       owner_uid=m.terminal_uid)  # fmt: skip


def deal_dict(d: Deal) -> dict[str, Any]:
    return {"ticket": d.ticket, "order": d.order, "position": d.position, "symbol": d.symbol, "side": d.side,
            "entry": d.entry, "volume": str(d.volume), "price": str(d.price), "commission": str(d.commission),
            "profit": str(d.profit), "magic": d.magic, "client_order_id": d.client_order_id,
            "reason": d.reason, "time_ms": d.time_ms, "ts_ns": d.time_ms * 1_000_000,
            "realized_pnl": str(d.profit)}  # fmt: skip


def deal_report(d: Deal, order: dict[str, Any] | None) -> tuple:
    """The fill report (ORDER_DTYPE's fields) of a deal; `order`: our order it executes."""
    o = order or {}
    reason = EXIT_REASONS.get(d.reason, Reason.OK)
    return (d.time_ms * 1_000_000, 0, d.client_order_id if order else 0, d.ticket, d.symbol,
            o.get("agent", NO_AGENT), d.side, ORDER_FILL, int(reason), 10009, float(d.volume), float(d.price),
            o.get("sl", 0.0), o.get("tp", 0.0), o.get("conviction", 0.0), 0.0,
            float(abs(d.commission)))  # fmt: skip


def reject_report(o: Outcome, order: dict[str, Any]) -> tuple:
    return (order.get("ts_ns", 0), 0, o.client_order_id, 0, order.get("symbol", max(o.symbol, 0)),
            order.get("agent", NO_AGENT), order.get("side", o.side), ORDER_REJECT, int(Reason.BROKER),
            o.retcode,
            float(order.get("volume", 0.0)), 0.0, order.get("sl", 0.0), order.get("tp", 0.0),
            order.get("conviction", 0.0), 0.0, 0.0)  # fmt: skip



def venue_specs(broker: MT5Broker) -> dict[str, Any]:
    """The terminal's trading specs of our symbols, as risk reads them (VENUE_SPECS_KEY)."""
    return {"epoch": broker.epoch, "by_symbol": {
        str(symbol): {"contract_size": str(sp.contract_size), "lot_step": str(sp.lot_step),
                      "min_lot": str(sp.min_lot), "max_lot": str(sp.max_lot), "point": str(sp.point),
                      "stops_level": sp.stops_level}
        for symbol, sp in broker.symbol_specs().items()}}  # fmt: skip

def as_request(order: dict[str, Any]) -> OrderRequest:
    """An order of the book (order_fields) as the broker was asked it."""
    reason = Reason.__members__.get(str(order.get("reason")))
    closes = reason is not None and reduce_only(reason)
    return OrderRequest(int(order["client_order_id"]), int(order["symbol"]), int(order["side"]),
                        to_decimal(order["volume"]), reduce_only=closes)  # fmt: skip


class VenueGateway:
    """The transport-free part: orders to the broker, its answers into the order book and
    reports, the venue's book after each reconnect, the bridge's status."""

    def __init__(self, store: StateStore, broker: MT5Broker, fresh: bool = False):
        self.store = store
        self.broker = broker
        # A state that never traded this account: the deals of its first reconciliation are
        # the account's history, recorded and journaled but not reported (the venue's book
        # that follows them gives risk the positions they left).
        self.history = fresh
        self.book = OrderBook(store)
        self.orders = self.fills = self.rejects = 0
        # For the metrics: final states (filled includes a partial fill's, whose rest is
        # canceled), submission's time from the tick, and each durable commit.
        self.filled = self.canceled = 0
        self.tick_to_order, self.commits = Histogram(), Histogram()
        self.booked = -1  # the broker's reconciliations whose venue book is committed
        # the broker's spec records read, as of the last commit of its state (-1: the first turn
        # commits them, with VENUE_SPECS_KEY, whatever a state of an older version holds)
        self.specs_saved = -1
        self.status: tuple[bool, str, tuple[str, ...], str] | None = None
        self.status_at = 0.0

    def recover(self) -> list[int]:
        """Orders a crash left in SUBMITTING: looked up at the terminal; their outcomes come
        through `turn`, never from sending them again."""
        left = self.book.in_state(OrderState.SUBMITTING)
        cids = [int(o["client_order_id"]) for o in left]
        if cids:
            self.broker.resolve(cids, {int(o["client_order_id"]): as_request(o) for o in left
                                       if "symbol" in o and "volume" in o})  # fmt: skip
            self.store.write(lambda t: t.journal("resolving", client_order_ids=cids[:100], orders=len(cids)))
        return cids

    def unsent(self) -> np.ndarray:
        """The reports of the last gateway's newest commit, which it may never have pushed."""
        last = self.store.read(lambda t: t.get("bridge", LAST_REPORTS_KEY)) or []
        return np.array([tuple(r) for r in last], ORDER_DTYPE)

    def submit(self, approved: np.ndarray) -> None:
        """Commit the batch in SUBMITTING, durably, then hand it to the broker."""
        fields = order_fields(approved)
        cids = [int(c) for c in approved["client_order_id"]]

        def submitting(t: Txn) -> None:
            for cid, f in zip(cids, fields, strict=True):
                self.book.advance(t, cid, [OrderState.APPROVED, OrderState.SUBMITTING], **f)

        self.commit(submitting)
        self.orders += len(cids)
        self.tick_to_order.observe_since(approved["origin_ns"], time.monotonic_ns())
        self.broker.submit([OrderRequest(cid, f["symbol"], f["side"], to_decimal(f["volume"]),
                                         f["sl"] or None, f["tp"] or None, reduce_only(int(rec["reason"])))
                            for cid, f, rec in zip(cids, fields, approved, strict=True)])  # fmt: skip

    def turn(self) -> np.ndarray:
        """Poll the broker; commit what it answered (and the venue's book after a reconnect);
        returns the reports to push, once committed."""
        history = self.history and not self.broker.connects  # before this poll: its deals are history
        outcomes, deals = self.broker.poll()
        venue = self._venue_book()
        rows: list[tuple] = []
        # New specs are committed in the turn that read them: the terminal sends them once per
        # file, and a successor of this gateway on the same file needs them to trade.
        specs = self.broker.specs_read != self.specs_saved
        if outcomes or deals or venue is not None or specs:
            state = self.broker.to_dict()  # as of the deals just taken: each applied once
            self.specs_saved = self.broker.specs_read

            def tx(t: Txn) -> None:
                rows.extend(self._deals(t, deals, history))
                rows.extend(self._outcomes(t, outcomes))
                t.put("bridge", MT5_BROKER_KEY, state)
                if specs:  # risk sizes with the terminal's specs (contract, lot step, limits, point)
                    t.put("bridge", VENUE_SPECS_KEY, venue_specs(self.broker))
                if venue is not None:
                    seq = int((t.get("bridge", VENUE_BOOK_KEY) or {}).get("seq", 0)) + 1
                    t.put("bridge", VENUE_BOOK_KEY, {**venue, "seq": seq})
                    held = {s: p["lots"][0][0] for s, p in venue["positions"].items()}
                    t.journal("venue_positions", seq=seq, ticket=venue["ticket"], positions=held)
                t.put("bridge", LAST_REPORTS_KEY, rows)

            self.commit(tx)
        self.note_status()
        return np.array(rows, ORDER_DTYPE)

    def _deals(self, t: Txn, deals: list[Deal], history: bool) -> list[tuple]:
        rows = []
        for d in deals:
            if t.get("bridge", deal_key(d.ticket)) is not None:
                continue  # applied before a crash
            t.put("bridge", deal_key(d.ticket), deal_dict(d))
            order = t.get("orders", d.client_order_id) if d.client_order_id else None
            if d.symbol < 0:
                t.journal("deal_ignored", ticket=d.ticket, why="a symbol this system does not trade")
                continue
            if history:
                t.journal("deal_history", ticket=d.ticket, symbol=d.symbol, side=d.side, volume=str(d.volume))
                continue
            if order is None:  # not sent by us: a stop, a target, a stop-out, a manual trade
                t.journal("adopted", ticket=d.ticket, symbol=d.symbol, side=d.side, volume=str(d.volume),
                          price=str(d.price), source=ADOPTED.get(d.reason, f"reason {d.reason}"))  # fmt: skip
            else:
                t.journal("fill", ticket=d.ticket, client_order_id=d.client_order_id, symbol=d.symbol,
                          side=d.side, volume=str(d.volume), price=str(d.price))  # fmt: skip
            rows.append(deal_report(d, order))
            self.fills += 1
        return rows

    def _outcomes(self, t: Txn, outcomes: list[Outcome]) -> list[tuple]:
        rows = []
        for o in outcomes:
            cid = o.client_order_id
            order = t.get("orders", cid)
            if order is None or order["state"] != OrderState.SUBMITTING.value:
                t.journal("outcome_ignored", client_order_id=cid, state=o.state,
                          why="no order of ours in SUBMITTING")  # fmt: skip
                continue
            t.put("bridge", exec_key(cid), {"client_order_id": cid, "state": o.state, "retcode": o.retcode,
                                            "volume": str(o.volume), "price": str(o.price),
                                            "deals": list(o.deals), "why": o.why,
                                            "ticket": o.deals[-1] if o.deals else 0})  # fmt: skip
            done = {"fill_price": str(o.price), "filled_volume": str(o.volume), "retcode": o.retcode,
                    "ticket": o.deals[-1] if o.deals else 0, "why": o.why}  # fmt: skip
            if o.state == "FILLED":
                self.book.advance(t, cid, [OrderState.FILLED], **done)
                self.filled += 1
            elif o.state == "PARTIALLY_FILLED":  # the rest is canceled, never topped up
                self.book.advance(t, cid, [OrderState.PARTIALLY_FILLED, OrderState.CANCELED], **done)
                self.canceled += 1
            else:
                self.book.advance(t, cid, [OrderState.REJECTED], retcode=o.retcode, why=o.why)
                rows.append(reject_report(o, order))
                self.rejects += 1
        return rows

    def commit(self, fn: Callable[[Txn], None]) -> None:
        """A durable commit on the order path, timed (sovereign_commit_seconds)."""
        t = time.monotonic_ns()
        self.store.write(fn)
        self.commits.observe_ns(time.monotonic_ns() - t)

    def _venue_book(self) -> dict[str, Any] | None:
        """The venue's positions as a Ledger book, once per reconciliation."""
        b = self.broker
        if b.connects == self.booked or b.reconciling or b.bridge is None:
            return None
        self.booked = b.connects
        held: dict[int, list[Decimal]] = {}
        for p in b.open_positions():
            if p.symbol >= 0:
                v, cost = held.get(p.symbol, [Decimal(0), Decimal(0)])
                held[p.symbol] = [v + p.side * p.volume, cost + p.side * p.volume * p.price]
        positions = {str(s): {"lots": [[str(v), str(to_decimal(float(cost / v)))]], "sl": None, "tp": None}
                     for s, (v, cost) in held.items() if v}  # fmt: skip
        return {"epoch": b.epoch, "ticket": b.book_ticket, "positions": positions, "at_ns": time.time_ns()}

    def note_status(self, force: bool = False) -> None:
        """Commit whether the bridge is up, and why not, when it changes (a changing reason
        at most once a second)."""
        up, why = self.broker.connected()
        missing = self.missing() if up else []
        if missing:
            why = (f"the terminal has no symbol {', '.join(missing)}: its orders are refused (check "
                   "mt5.symbols and mt5.symbol_map against the terminal's Market Watch)")  # fmt: skip
        info = self.broker.account_info() if up else None
        mode = ACCOUNT_MODES.get(info.margin_mode, f"mode {info.margin_mode}") if info is not None else ""
        now = (up, why, tuple(missing), mode)
        same = self.status is not None and (now == self.status or (
            now[::2] == self.status[::2] and time.monotonic() - self.status_at < 1.0))  # fmt: skip
        if same and not force:
            return
        flipped = self.status is None or (now != self.status and (up != self.status[0] or bool(missing)))
        self.status, self.status_at = now, time.monotonic()
        rec = {"connected": up, "why": why, "missing": missing, "since_ns": time.time_ns(),
               "epoch": self.broker.epoch, "account": mode}  # fmt: skip

        def tx(t: Txn) -> None:
            t.put("bridge", BRIDGE_STATUS_KEY, rec)
            if flipped:
                t.journal("bridge", connected=up, why=why)

        self.store.write(tx)
        if flipped:
            said = "up" if up else "down"
            print(f"gateway: the MT5 bridge is {said}{': ' + why if why else ''}", flush=True)

    def missing(self) -> list[str]:
        """The terminal's names of our symbols it does not have (once it has reconciled)."""
        b = self.broker
        if b.bridge is None or b.reconciling or not b.connects:
            return []
        names = [b.terminal_name(i) for i in range(len(b.s.symbols))]
        return [n for n in names if n not in b.specs or not b.specs[n]["exists"]]


class VenueProcess:
    """The gateway process for an MT5 account: the terminal's ticks -> quote board and
    workers; approved orders -> broker; its answers -> order book, risk and coordinator."""

    def __init__(self, child: Child, config: Config):
        self.child = child
        layout = self.layout = child.layout
        self.store = StateStore(config.system.state_dir)
        saved = self.store.read(lambda t: t.get("bridge", MT5_BROKER_KEY))
        self.broker = MT5Broker(mt5_settings(config, layout.symbol_names), saved)
        self.gw = VenueGateway(self.store, self.broker, fresh=saved is None)
        for cid in self.gw.recover():
            print(f"gateway: order {cid} was SUBMITTING: looking it up at the terminal", flush=True)
        self.worker_of = layout.worker_of()
        self.rings = [TickRing.attach(layout.tick_ring(k)) for k in range(layout.n_workers)]
        self.board = QuoteBoard.attach(layout.quotes)
        self.approved = OrderRing.attach(layout.approved)
        self.reports_out = [OrderRing.attach(layout.reports_risk),
                            OrderRing.attach(layout.reports_coordinator)]  # fmt: skip
        self.buf = np.zeros(self.approved.capacity, ORDER_DTYPE)
        self.send_reports(self.gw.unsent())
        self.gw.note_status(force=True)
        self.ticks = self.lost = 0
        self.clock_ns = child.market_clock()
        # The terminal's ticks are recorded as a paper session's are (system.record_days), for
        # research: `sovereign backtest` runs on them. A replay of the session's orders is not
        # possible: its fills came from the venue (replay says so).
        self.recorder = None
        directory = record_dir(config)
        if directory is not None:
            meta = {"symbols": list(layout.symbol_names), "config": dataclasses.asdict(config),
                    "layout_version": LAYOUT_VERSION, "venue": "mt5"}  # fmt: skip
            self.recorder = Recorder(directory, meta, config.system.record_days, layout.session,
                                     max_bytes=config.system.record_max_mb << 20)  # fmt: skip
        self.meter = meter(child)
        self.next_beat = 0.0
        self.feeding = True

    def send_reports(self, reports: np.ndarray) -> None:
        for ring in self.reports_out:
            ring.push(reports, timeout=1.0)

    def turn(self) -> int:
        """One turn: approved orders out, the broker's answers in, the terminal's ticks on."""
        n = self.approved.pop_into(self.buf)
        if n:
            self.gw.submit(self.buf[:n].copy())
        self.send_reports(self.gw.turn())
        ticks = self.broker.ticks()
        if len(ticks) and self.feeding:
            self.take(ticks)
        return n + len(ticks)

    def take(self, ticks: np.ndarray) -> None:
        ticks = ticks[ticks["symbol"] < self.layout.n_symbols]
        if self.recorder is not None:
            self.recorder.write(ticks)
        self.board.publish(ticks)
        for k, part in enumerate(route(ticks, self.worker_of, self.layout.n_workers)):
            if len(part):
                pushed = self.rings[k].push(part, timeout=0.0)
                self.lost += len(part) - pushed
        self.ticks += len(ticks)
        if len(ticks):
            self.clock_ns = max(self.clock_ns, int(ticks["ts_ns"].max()))
            self.child.publish_market_clock(self.clock_ns)

    def look(self) -> None:
        for msg in self.child.messages():
            if msg[0] == "stop_feed":
                self.feeding = False

    def beat(self) -> None:
        if time.monotonic() >= self.next_beat:
            self.next_beat = time.monotonic() + 0.05
            self.child.beat(RUNNING, **self.counts())
            self.publish()

    def publish(self, connected: bool | None = None) -> None:
        """The metrics, counted since this process started (Meter adds its slot's)."""
        gw = self.gw
        up = self.broker.connected()[0] if connected is None else connected
        orders = [gw.filled, gw.rejects, gw.canceled]  # FINAL_STATES' first three
        publish_orders(self.meter, orders, gw.rejects, gw.fills, gw.tick_to_order, gw.commits, connected=up,
                       ticks=self.ticks, ticks_dropped=self.lost)  # fmt: skip

    def counts(self) -> dict[str, int]:
        gw = self.gw
        return {"ticks": self.ticks, "orders": gw.orders, "rejects": gw.rejects, "dropped": self.lost}

    def stop(self) -> None:
        """Stopping: risk has exited. The orders it left are sent, and those at the terminal
        waited for a while (what is left in SUBMITTING is looked up at the next start)."""
        give_up = time.monotonic() + STOP_DRAIN_S
        while time.monotonic() < give_up:
            busy = self.turn()
            if not busy and not self.broker.orders and not self.approved.stats()["depth"]:
                break
            self.child.beat(RUNNING, **self.counts())
            time.sleep(0.002)
        gw = self.gw
        stopped = {"connected": False, "why": "the engine is stopped", "missing": [],
                   "since_ns": time.time_ns(), "epoch": self.broker.epoch}  # fmt: skip
        def tx(t: Txn) -> None:
            t.delete("bridge", LAST_REPORTS_KEY)  # every report was pushed
            t.put("bridge", BRIDGE_STATUS_KEY, stopped)
            t.journal("gateway_stats", ticks=self.ticks, lost_ticks=self.lost, orders=gw.orders,
                      fills=gw.fills, rejects=gw.rejects, waiting=len(self.broker.orders))

        self.store.write(tx)
        self.broker.close()
        if self.recorder is not None:
            self.recorder.close()
        self.publish(connected=False)
        self.child.beat(STOPPED, **self.counts())
        self.store.close()


def run(child: Child, config: Config) -> None:
    p = VenueProcess(child, config)
    while not child.stop_requested:
        p.look()
        if not p.turn():  # asleep until an approved order, or TURN_S
            wait_for_records([p.approved], timeout=TURN_S)
        p.beat()
    p.stop()
