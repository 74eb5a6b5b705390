"""Gateway: the only source of market data and the only place an order leaves the system.

Ticks: stamped with their receive time, published on the quote board, shown to the
broker (stops and targets), and routed to the ring of the worker that owns the symbol.
Orders: each approved order is committed durably in SUBMITTING, with its client id,
*before* the broker is called; the result is committed with the broker's state. After a
crash an order found in SUBMITTING is resolved from the broker's record of what it
executed (`recover`), never sent again.

Reports: the reports of each commit are kept with it (`LAST_REPORTS_KEY`), and pushed
after it. A gateway killed in between never pushed them, so its successor pushes them
again, with the reports of the orders it recovered (`unsent`): risk and the coordinator
skip a fill whose deal ticket they have applied, so a report that did arrive is not
counted twice.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import numpy as np

from sovereign.broker.paper import Execution, PaperBroker, Retcode
from sovereign.config import Config
from sovereign.core import (
    LAYOUT_VERSION,
    NO_AGENT,
    ORDER_DTYPE,
    ORDER_FILL,
    ORDER_REJECT,
    TICK_DTYPE,
    OrderRing,
    QuoteBoard,
    TickRing,
)
from sovereign.failpoints import failpoint
from sovereign.feeds import Feed
from sovereign.ledger import to_decimal
from sovereign.orders import OrderBook, OrderState
from sovereign.recorder import Recorder, event_log, record_dir
from sovereign.risk import Reason
from sovereign.runtime import FEED_DONE, RUNNING, STOPPED, Child, symbol_specs
from sovereign.state import StateStore, Txn, u64_key

EXIT_REASONS = {"sl": Reason.EXIT_SL, "tp": Reason.EXIT_TP}
BROKER_KEY = "paper"
LAST_REPORTS_KEY = "last_reports"  # the reports of the newest commit, until it is pushed
FEED_BATCH = 2048  # ticks per loop: larger amortizes per-batch work, smaller checks orders sooner


def exec_key(cid: int) -> bytes:
    return b"exec:" + u64_key(cid)


class Gateway:
    def __init__(self, store: StateStore, broker: PaperBroker):
        self.store = store
        self.book = OrderBook(store)
        self.broker = broker
        self.to_broker_ns: list[int] = []  # tick receive -> broker call, per order
        self.to_gateway_ns: list[int] = []  # tick receive -> approved order at the gateway
        self.orders = self.fills = self.rejects = 0
        saved = store.read(lambda t: t.get("bridge", BROKER_KEY))
        if saved is not None:
            broker.load_dict(saved)

    def recover(self) -> list[dict]:
        """Resolve orders left in SUBMITTING by a crash: FILLED if the broker executed it,
        else REJECTED. Never re-sends. Returns the orders corrected (also journaled)."""
        fixes = []
        for order in self.book.in_state(OrderState.SUBMITTING):
            cid = order["client_order_id"]

            def tx(t: Txn, cid: int = cid) -> dict:
                done = t.get("bridge", exec_key(cid))
                if done is not None and done["retcode"] == Retcode.DONE:
                    rec = self.book.advance(
                        t, cid, [OrderState.FILLED], price=done["price"], ticket=done["ticket"]
                    )
                else:
                    rec = self.book.advance(t, cid, [OrderState.REJECTED], why="not executed before a crash")
                t.journal("recovered", client_order_id=cid, state=rec["state"])
                return {**rec, "execution": done}

            fixes.append(self.store.write(tx))
        return fixes

    def unsent(self, fixes: list[dict]) -> tuple[np.ndarray, int]:
        """At start: the reports the last gateway may have died before pushing (those of its
        newest commit), then those of the orders it left in SUBMITTING (`fixes`; one without
        its order's fields, never written so, has none). Returns them (ORDER_DTYPE) and how
        many are of the newest commit."""
        last = self.store.read(lambda t: t.get("bridge", LAST_REPORTS_KEY)) or []
        rows = [tuple(r) for r in last] + [recovered_report(f) for f in fixes if "symbol" in f]
        return np.array(rows, ORDER_DTYPE), len(last)

    def on_ticks(self, ticks: np.ndarray) -> np.ndarray:
        """Stops and targets hit by these ticks: executed, persisted, returned as reports."""
        fills = self.broker.on_ticks(ticks)
        if not fills:
            return np.zeros(0, ORDER_DTYPE)

        reports = [_report(ex, None) for ex in fills]

        def tx(t: Txn) -> None:
            for ex in fills:
                t.put("bridge", b"deal:" + u64_key(ex.ticket), ex.to_dict())
                t.journal("fill", **ex.to_dict())
            t.put("bridge", BROKER_KEY, self.broker.to_dict())
            t.put("bridge", LAST_REPORTS_KEY, reports)

        self.store.write(tx)
        self.fills += len(fills)
        return np.array(reports, ORDER_DTYPE)

    def on_orders(self, approved: np.ndarray, submitted: Callable[[], None] | None = None) -> np.ndarray:
        """Send approved orders (ORDER_DTYPE) to the broker; execution reports out.

        Group commit: every order of the batch is committed in SUBMITTING in one durable
        transaction before the first broker call, and the results in one after the last,
        so a burst of orders costs two fsyncs, not two per order."""
        fields: list[dict[str, Any]] = []
        now = time.monotonic_ns()
        for rec in approved:
            if rec["origin_ns"]:  # 0: no tick led to it (risk's own exits, a bar closed by the clock)
                self.to_gateway_ns.append(now - int(rec["origin_ns"]))
            fields.append({"symbol": int(rec["symbol"]), "side": int(rec["side"]),
                           "volume": float(rec["volume"]),
                           "price": float(rec["price"]), "sl": float(rec["sl"]), "tp": float(rec["tp"]),
                           "agent": int(rec["agent"]), "reason": Reason(int(rec["reason"])).name,
                           "conviction": float(rec["conviction"]), "ts_ns": int(rec["ts_ns"])})  # fmt: skip
        cids = [int(c) for c in approved["client_order_id"]]

        def submitting(t: Txn) -> None:
            for cid, f in zip(cids, fields, strict=True):
                self.book.advance(t, cid, [OrderState.APPROVED, OrderState.SUBMITTING], **f)

        self.store.write(submitting)
        if submitted is not None:  # durable in SUBMITTING, not sent yet
            submitted()
        now = time.monotonic_ns()
        self.to_broker_ns.extend(now - int(o) for o in approved["origin_ns"] if o)
        executions = [execute(self.broker, rec) for rec in approved]
        reports = [_report(ex, rec) for ex, rec in zip(executions, approved, strict=True)]

        def results(t: Txn) -> None:
            for cid, ex in zip(cids, executions, strict=True):
                self._record(t, cid, ex)
            t.put("bridge", BROKER_KEY, self.broker.to_dict())
            t.put("bridge", LAST_REPORTS_KEY, reports)

        self.store.write(results)
        self.orders += len(cids)
        return np.array(reports, ORDER_DTYPE)

    def _record(self, t: Txn, cid: int, ex: Execution) -> None:
        t.put("bridge", exec_key(cid), ex.to_dict())
        if ex.retcode == Retcode.DONE:
            self.book.advance(t, cid, [OrderState.FILLED], fill_price=str(ex.price), ticket=ex.ticket,
                              commission=str(ex.commission), realized_pnl=str(ex.realized_pnl))  # fmt: skip
            self.fills += 1
        else:
            self.book.advance(t, cid, [OrderState.REJECTED], retcode=int(ex.retcode), why=ex.reason)
            self.rejects += 1


def execute(broker: PaperBroker, rec: np.void) -> Execution:
    """Send one approved order (ORDER_DTYPE) to the broker: live, in backtests, in replays."""
    return broker.market_order(int(rec["client_order_id"]), int(rec["symbol"]), int(rec["side"]),
                               to_decimal(rec["volume"]), sl=float(rec["sl"]) or None,
                               tp=float(rec["tp"]) or None)  # fmt: skip


def route(ticks: np.ndarray, worker_of: np.ndarray, n_workers: int) -> list[np.ndarray]:
    """The batch split by owning worker (worker_of: symbol -> worker), each part in time order."""
    if n_workers == 1:
        return [ticks]
    w = worker_of[ticks["symbol"]]
    order = np.argsort(w, kind="stable")
    bounds = np.searchsorted(w[order], np.arange(n_workers + 1))
    ordered = ticks[order]
    return [ordered[bounds[k] : bounds[k + 1]] for k in range(n_workers)]


def recovered_report(order: dict[str, Any]) -> tuple:
    """The report of an order a crash left in SUBMITTING, as `recover` resolved it (its
    record, and the broker's execution if it had one); origin_ns is not kept: 0."""
    done = order.get("execution")
    if done is not None and order["state"] == OrderState.FILLED.value:
        ex = Execution.from_dict(done)
    else:
        ex = Execution(order["client_order_id"], order["symbol"], order["side"], to_decimal(order["volume"]),
                       to_decimal(order["price"]), Decimal(0), Decimal(0), order["ts_ns"], Retcode.REJECT,
                       "not executed before a crash")  # fmt: skip
    return _row(ex, 0, order.get("agent", NO_AGENT), order.get("conviction", 0.0), order.get("sl", 0.0),
                order.get("tp", 0.0))


def _report(ex: Execution, rec: np.void | None) -> tuple:
    if rec is None:
        return _row(ex, 0, NO_AGENT, 0.0, 0.0, 0.0)
    f = rec.item()
    return _row(ex, f[1], f[5], f[14], f[12], f[13])


def _row(ex: Execution, origin: int, agent: int, conviction: float, sl: float, tp: float) -> tuple:
    done = ex.retcode == Retcode.DONE
    reason = EXIT_REASONS.get(ex.reason, Reason.OK) if done else Reason.BROKER
    return (ex.ts_ns, origin, ex.client_order_id, ex.ticket, ex.symbol, agent, ex.side,
            ORDER_FILL if done else ORDER_REJECT, int(reason), int(ex.retcode), float(ex.volume),
            float(ex.price), sl, tp, conviction, 0.0, float(ex.commission))  # fmt: skip


def make_broker(config: Config, n_symbols: int) -> PaperBroker:
    b = config.broker
    return PaperBroker(Decimal(repr(b.initial_balance)), symbol_specs(config, n_symbols),
                       commission_per_lot=Decimal(repr(b.commission_per_lot)),
                       slippage_points=b.slippage_points)  # fmt: skip


def run(child: Child, config: Config) -> None:
    """The gateway process: feed -> board, broker, worker rings; approved orders -> broker."""
    layout = child.layout
    store = StateStore(config.system.state_dir)
    gw = Gateway(store, make_broker(config, layout.n_symbols))
    worker_of = layout.worker_of()
    fixes = gw.recover()
    for fix in fixes:
        print(f"gateway: recovered order {fix['client_order_id']} as {fix['state']}", flush=True)
    feed = Feed(config)
    recorder, base = None, 0
    directory = record_dir(config)
    if directory is not None:
        meta = {"symbols": list(feed.names), "config": dataclasses.asdict(config),
                "layout_version": LAYOUT_VERSION}  # fmt: skip
        recorder = Recorder(directory, meta, config.system.record_days, layout.session)
        base = recorder.ticks
    # When this process took what (replay): the tick position of each batch of orders it
    # sent and of each batch of ticks that filled a stop or target.
    rings = [TickRing.attach(layout.tick_ring(k)) for k in range(layout.n_workers)]
    board = QuoteBoard.attach(layout.quotes)
    approved = OrderRing.attach(layout.approved)
    reports_out = [OrderRing.attach(layout.reports_risk), OrderRing.attach(layout.reports_coordinator)]
    # Each event is written before what it made is pushed.
    log = event_log(config, layout.session, "gateway")
    unsent, n_last = gw.unsent(fixes)
    if log is not None:
        positions = {"approved": approved.stats()["popped"], "ticks": [r.stats()["pushed"] for r in rings],
                     "reports": [r.stats()["pushed"] for r in reports_out]}  # fmt: skip
        log.add("start", {"base": base, "n_workers": layout.n_workers, "broker": gw.broker.to_dict(),
                          "rings": positions,
                          "recovered": {f["client_order_id"]: f["state"] for f in fixes},
                          "resent": unsent.tolist(), "resent_last": n_last})  # fmt: skip
        log.flush()
    buf = np.zeros(approved.capacity, ORDER_DTYPE)
    no_ticks = np.zeros(0, TICK_DTYPE)
    stalled = [False] * layout.n_workers
    feeding, ticks, lost, next_beat = True, 0, 0, 0.0
    started = time.monotonic()

    def send_reports(reports: np.ndarray) -> None:
        if len(reports):
            failpoint("gateway.unsent")
        for ring in reports_out:
            ring.push(reports, timeout=1.0)

    send_reports(unsent)  # what the last gateway committed and may never have pushed

    # Stopping: risk has exited; send the orders it left first.
    while not child.stop_requested or approved.stats()["depth"]:
        for msg in child.messages():
            if msg[0] == "stop_feed":
                feeding = False
        feeding = feeding and not child.stop_requested
        batch = feed.next(FEED_BATCH) if feeding else no_ticks
        if len(batch):
            batch["recv_ns"] = time.monotonic_ns()
            if recorder is not None:
                recorder.write(batch)
            board.publish(batch)
            at = base + ticks
            exits = gw.on_ticks(batch)
            if log is not None and len(exits):
                log.add("t", at, at + len(batch))
                log.flush()
            send_reports(exits)
            for k, part in enumerate(route(batch, worker_of, layout.n_workers)):
                # A worker that stops taking ticks (dead, restarting) must not stall the
                # others: after one timeout its ticks are counted as lost until it drains.
                if stalled[k] and rings[k].stats()["depth"] < rings[k].capacity // 2:
                    stalled[k] = False
                pushed = rings[k].push(part, timeout=0.0 if stalled[k] else 0.25)
                if pushed < len(part):
                    stalled[k] = True
                    lost += len(part) - pushed
                    if log is not None:  # the worker never saw the rest of its part of this batch
                        log.add("lost", at, at + len(batch), k, pushed)
            ticks += len(batch)
        n = approved.pop_into(buf, timeout=0.0 if len(batch) else 0.0005)
        if n:

            def submitted(at: int = base + ticks, n: int = n) -> None:
                failpoint("gateway.unlogged")
                if log is not None:
                    log.add("o", at, n)
                    log.flush()
                failpoint("gateway.submitting")

            send_reports(gw.on_orders(buf[:n].copy(), submitted))
        if log is not None:
            log.flush()
        if time.monotonic() >= next_beat:
            next_beat = time.monotonic() + 0.05
            state = FEED_DONE if (feed.done or not feeding) else RUNNING
            child.beat(state, ticks=ticks, orders=gw.orders, rejects=gw.rejects, dropped=lost)
    if recorder is not None:
        recorder.close()
    if log is not None:
        log.close()
    _final_stats(store, gw, ticks, lost, feed_s=(feed.finished_at or time.monotonic()) - started)
    child.beat(STOPPED, ticks=ticks, orders=gw.orders, rejects=gw.rejects, dropped=lost)
    store.close()


def _final_stats(store: StateStore, gw: Gateway, ticks: int, lost: int, feed_s: float) -> None:
    def pct(xs: list[int]) -> dict[str, float]:
        if not xs:
            return {}
        a = np.array(xs) / 1000.0
        return {"n": len(xs), "p50_us": float(np.percentile(a, 50)), "p99_us": float(np.percentile(a, 99)),
                "max_us": float(a.max())}  # fmt: skip

    def tx(t: Txn) -> None:
        t.delete("bridge", LAST_REPORTS_KEY)  # every report was pushed
        t.journal("gateway_stats", ticks=ticks, feed_s=feed_s, lost_ticks=lost, orders=gw.orders,
                  fills=gw.fills, rejects=gw.rejects, tick_to_broker=pct(gw.to_broker_ns),
                  tick_to_gateway=pct(gw.to_gateway_ns))  # fmt: skip

    store.write(tx)
