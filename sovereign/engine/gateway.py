"""Gateway: the only source of market data and the only place an order leaves the system.

Ticks: stamped with their receive time, published on the quote board, shown to the
broker (stops and targets), and routed to the ring of the worker that owns the symbol.
Orders: each approved order is committed durably in SUBMITTING, with its client id,
*before* the broker is called; the result is committed with the broker's state (with the
next batch's SUBMITTING, if that batch came while this one was at the broker). After a
crash an order found in SUBMITTING is resolved from the broker's record of what it
executed (`recover`), never sent again.

The feed's position is kept with the broker's state (`FEED_KEY`, in every transaction that
commits `PAPER_BROKER_KEY`), as of the ticks the broker has been shown. A restarted gateway
resumes the feed there (Feed.resume): the broker goes on from the state it committed with
the very ticks that came after it, and the workers and the quote board are given only the
ticks the killed gateway had not pushed yet (the tick rings' counts, kept with the
position, say how many it had), so market time never goes back.

Reports: the reports of each commit are kept with it (`LAST_REPORTS_KEY`), and pushed
after it. A gateway killed in between never pushed them, so its successor pushes them
again, with the reports of the orders it recovered (`unsent`): risk and the coordinator
skip a fill whose deal ticket they have applied, so a report that did arrive is not
counted twice.
"""

from __future__ import annotations

import dataclasses
import queue
import sys
import threading
import time
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any, NamedTuple

import numpy as np

from sovereign.broker.paper import Execution, PaperBroker, Retcode
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
from sovereign.engine.metrics import TICK_REFUSALS, Histogram, Meter, meter
from sovereign.engine.runtime import FEED_DONE, LATENCY_WINDOW_S, RUNNING, STOPPED, Child
from sovereign.failpoints import failpoint
from sovereign.latency import LatencyHistogram
from sovereign.ledger import to_decimal
from sovereign.market.feeds import Feed, FeedMark
from sovereign.model import Reason, reduce_only
from sovereign.state.orders import OrderBook, OrderState
from sovereign.state.recorder import EventLog, Recorder, event_log, record_dir
from sovereign.state.schema import FEED_KEY, LAST_REPORTS_KEY, PAPER_BROKER_KEY, deal_key, exec_key
from sovereign.state.store import StateStore, Txn
from sovereign.symbols import symbol_specs

EXIT_REASONS = {"sl": Reason.EXIT_SL, "tp": Reason.EXIT_TP}
FEED_BATCH = 2048  # ticks per loop: larger amortizes per-batch work, smaller checks orders sooner
# The feed's position is committed at least this often while ticks flow (with every fill and
# order besides): a gateway killed meanwhile has its successor show the broker again at most
# this much of the market (the workers are not shown it again).
FEED_COMMIT_S = 0.25


class FeedPosition(NamedTuple):
    """Where the feed stood after a batch: its mark, the tick rings' pushed counts then, the
    broker's tick position after it (the recording's count) and the run (the session)."""

    mark: FeedMark
    pushed: tuple[int, ...]
    recorded: int
    session: str

    def to_dict(self) -> dict[str, Any]:
        return {"feed": self.mark.to_dict(), "pushed": list(self.pushed), "recorded": self.recorded,
                "session": self.session}  # fmt: skip


class Sent(NamedTuple):
    """A batch the broker executed: its reports, and the transaction that commits its
    results (executions, the broker's state, the reports kept until pushed)."""

    reports: np.ndarray
    commit: Callable[[Txn], None]


class Gateway:
    def __init__(self, store: StateStore, broker: PaperBroker):
        self.store = store
        self.book = OrderBook(store)
        self.broker = broker
        self.to_broker = LatencyHistogram()  # tick receive -> broker call, per order
        self.to_gateway = LatencyHistogram()  # tick receive -> approved order at the gateway
        # The same over the current window, and the last full window's (n, p50, p99) in ns,
        # which the heartbeat publishes for `sovereign status`.
        self.window, self.window_from = LatencyHistogram(), time.monotonic()
        self.last_window = (0, 0, 0)
        self.orders = self.fills = self.rejects = 0
        # For the metrics: orders that reached FILLED or REJECTED (sent by this process, or
        # recovered), tick to broker call and each durable commit on the broker side.
        self.filled = self.refused = 0
        self.tick_to_order, self.commits = Histogram(), Histogram()
        # The feed's position as of the ticks the broker has been shown (BrokerLoop sets it):
        # every transaction that commits the broker's state commits it too.
        self.feed_at: FeedPosition | None = None
        self.feed_kept: FeedPosition | None = None  # the newest committed
        self.feed_kept_at = time.monotonic()
        saved = store.read(lambda t: t.get("bridge", PAPER_BROKER_KEY))
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
            if fixes[-1]["state"] == OrderState.FILLED.value:
                self.filled += 1
            else:
                self.refused += 1
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

        reports = [report_of(ex, None) for ex in fills]
        feed = self.feed_at

        def tx(t: Txn) -> None:
            for ex in fills:
                t.put("bridge", deal_key(ex.ticket), ex.to_dict())
                t.journal("fill", **ex.to_dict())
            self.put_broker(t, self.broker.to_dict(), feed)
            t.put("bridge", LAST_REPORTS_KEY, reports)

        self.commit(tx)
        self.fills += len(fills)
        return np.array(reports, ORDER_DTYPE)

    def on_orders(self, approved: np.ndarray, submitted: Callable[[], None] | None = None) -> np.ndarray:
        """Send approved orders (ORDER_DTYPE) to the broker; execution reports out.

        Group commit: every order of the batch is committed in SUBMITTING in one durable
        transaction before the first broker call, and the results in one after the last,
        so a burst of orders costs two fsyncs, not two per order."""
        self.submit(approved)
        if submitted is not None:  # durable in SUBMITTING, not sent yet
            submitted()
        sent = self.send(approved)
        self.commit(sent.commit)
        return sent.reports

    def submit(self, approved: np.ndarray, sent: Sent | None = None) -> None:
        """Commit the batch in SUBMITTING, in one durable transaction with the results of
        the batch sent before it, if they are not committed yet (`sent`): a batch approved
        while the one before it was at the broker costs one fsync, not two. Either both
        are durable or neither is, and a crash before leaves this batch unsent and the
        last one resolved by `recover`, as ever."""
        arrived = time.monotonic_ns()
        fields = order_fields(approved)
        cids = [int(c) for c in approved["client_order_id"]]

        def submitting(t: Txn) -> None:
            if sent is not None:
                sent.commit(t)
            for cid, f in zip(cids, fields, strict=True):
                self.book.advance(t, cid, [OrderState.APPROVED, OrderState.SUBMITTING], **f)

        self.commit(submitting)
        # origin 0: no tick led to it (risk's own exits, a bar closed by the clock)
        self.to_gateway.add_since(approved["origin_ns"], arrived)
        self.window.add_since(approved["origin_ns"], arrived)

    def send(self, approved: np.ndarray) -> Sent:
        """Send a batch committed in SUBMITTING (`submit`) to the broker. Its results are
        not committed yet: commit them (`Sent.commit`) before pushing their reports."""
        sending = time.monotonic_ns()
        self.to_broker.add_since(approved["origin_ns"], sending)
        self.tick_to_order.observe_since(approved["origin_ns"], sending)
        cids = [int(c) for c in approved["client_order_id"]]
        executions = [execute(self.broker, rec) for rec in approved]
        reports = [report_of(ex, rec) for ex, rec in zip(executions, approved, strict=True)]
        broker = self.broker.to_dict()  # as these orders left it: the next batch is not in it
        feed = self.feed_at  # and the ticks it had been shown
        filled = sum(ex.retcode == Retcode.DONE for ex in executions)
        self.orders += len(cids)
        self.fills += filled
        self.rejects += len(cids) - filled
        self.filled += filled
        self.refused += len(cids) - filled

        def results(t: Txn) -> None:
            for cid, ex in zip(cids, executions, strict=True):
                self._record(t, cid, ex)
            self.put_broker(t, broker, feed)
            t.put("bridge", LAST_REPORTS_KEY, reports)

        return Sent(np.array(reports, ORDER_DTYPE), results)

    def put_broker(self, t: Txn, broker: dict[str, Any], feed: FeedPosition | None) -> None:
        """The broker's state and the feed's position it goes with, in one transaction."""
        t.put("bridge", PAPER_BROKER_KEY, broker)
        if feed is not None:
            t.put("bridge", FEED_KEY, feed.to_dict())
            self.feed_kept = feed

    def keep_feed(self, now: float) -> None:
        """Commit the feed's position (with the broker's unchanged state) once FEED_COMMIT_S
        has passed since the last, when the broker has been shown ticks since (the broker
        side calls it between batches, with every result committed)."""
        feed = self.feed_at
        if feed is None or feed is self.feed_kept or now - self.feed_kept_at < FEED_COMMIT_S:
            return
        broker = self.broker.to_dict()
        self.commit(lambda t: self.put_broker(t, broker, feed))
        self.feed_kept_at = now

    def commit(self, fn: Callable[[Txn], None]) -> None:
        """A durable commit of the broker side, timed (sovereign_commit_seconds)."""
        t = time.monotonic_ns()
        self.store.write(fn)
        self.commits.observe_ns(time.monotonic_ns() - t)

    def roll_window(self, now: float) -> None:
        """Close the latency window once it is LATENCY_WINDOW_S old (the broker side calls it)."""
        if now - self.window_from >= LATENCY_WINDOW_S:
            w = self.window
            self.last_window = (w.n, int(w.percentile(50)), int(w.percentile(99)))
            self.window, self.window_from = LatencyHistogram(), now

    def _record(self, t: Txn, cid: int, ex: Execution) -> None:
        t.put("bridge", exec_key(cid), ex.to_dict())
        if ex.retcode == Retcode.DONE:
            self.book.advance(t, cid, [OrderState.FILLED], fill_price=str(ex.price), ticket=ex.ticket,
                              commission=str(ex.commission), realized_pnl=str(ex.realized_pnl))  # fmt: skip
        else:
            self.book.advance(t, cid, [OrderState.REJECTED], retcode=int(ex.retcode), why=ex.reason)


def order_fields(approved: np.ndarray) -> list[dict[str, Any]]:
    """What the order book keeps of each approved order (ORDER_DTYPE) from SUBMITTING on."""
    return [{"symbol": int(rec["symbol"]), "side": int(rec["side"]), "volume": float(rec["volume"]),
             "price": float(rec["price"]), "sl": float(rec["sl"]), "tp": float(rec["tp"]),
             "agent": int(rec["agent"]), "reason": Reason(int(rec["reason"])).name,
             "conviction": float(rec["conviction"]), "ts_ns": int(rec["ts_ns"])}
            for rec in approved]  # fmt: skip


def execute(broker: PaperBroker, rec: np.void) -> Execution:
    """Send one approved order (ORDER_DTYPE) to the broker: live, in backtests, in replays.
    Risk's exits and flatten orders go reduce-only (clipped to the broker's position)."""
    return broker.market_order(int(rec["client_order_id"]), int(rec["symbol"]), int(rec["side"]),
                               to_decimal(rec["volume"]), sl=float(rec["sl"]) or None,
                               tp=float(rec["tp"]) or None,
                               reduce_only=reduce_only(int(rec["reason"])))  # fmt: skip


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
    return report_row(ex, 0, order.get("agent", NO_AGENT), order.get("conviction", 0.0), order.get("sl", 0.0),
                order.get("tp", 0.0))


def report_of(ex: Execution, rec: np.void | None) -> tuple:
    """The execution report (a tuple of ORDER_DTYPE's fields) of `ex`, the broker's answer
    to the approved order `rec` (None: a deal the broker made on its own, a stop or target).
    Live, backtests and replays report with it."""
    if rec is None:
        return report_row(ex, 0, NO_AGENT, 0.0, 0.0, 0.0)
    f = rec.item()
    return report_row(ex, f[1], f[5], f[14], f[12], f[13])


def report_row(ex: Execution, origin: int, agent: int, conviction: float, sl: float, tp: float) -> tuple:
    """The report of `ex` with the order's fields that travel with it (origin of its tick,
    agent, conviction, stop and target): FILL or REJECT, with the exit reason or BROKER."""
    done = ex.retcode == Retcode.DONE
    reason = EXIT_REASONS.get(ex.reason, Reason.OK) if done else Reason.BROKER
    return (ex.ts_ns, origin, ex.client_order_id, ex.ticket, ex.symbol, agent, ex.side,
            ORDER_FILL if done else ORDER_REJECT, int(reason), int(ex.retcode), float(ex.volume),
            float(ex.price), sl, tp, conviction, 0.0, float(ex.commission))  # fmt: skip


def make_broker(config: Config, names: Sequence[str] | int) -> PaperBroker:
    """The paper broker, its symbols' specs from the config by name (a count: unnamed)."""
    b = config.broker
    return PaperBroker(Decimal(repr(b.initial_balance)), symbol_specs(config, names),
                       commission_per_lot=Decimal(repr(b.commission_per_lot)),
                       slippage_points=b.slippage_points)  # fmt: skip


class BrokerLoop(threading.Thread):
    """The gateway's broker side, on a thread of its own, so that the feed never waits for
    a durable commit: an fdatasync releases the GIL, and the feed goes on meanwhile.

    It takes the feed's batches in order and shows them to the broker; what they fill is
    committed, logged and pushed. Between batches it sends the approved orders. Both are
    what one loop did before, in the same order, so every event's tick position is the
    count of ticks the broker had been shown. Batches that queued up during a commit are
    shown to the broker as one (the same fills: tests/test_paper_broker.py), so a burst
    costs one commit, not one per batch."""

    COALESCE = 16  # batches shown to the broker at once, at most
    REACH_WAIT_S = 1.0  # how long an order waits for the ticks its decision saw

    def __init__(self, gw: Gateway, approved: OrderRing, send_reports: Callable[[np.ndarray], None],
                 log: EventLog | None, position: int, inbox: int = 8):  # fmt: skip
        super().__init__(name="broker", daemon=True)
        self.gw, self.approved, self.send_reports, self.event_log = gw, approved, send_reports, log
        self.position = position  # ticks shown to the broker (the recording's count)
        # Batches the broker side may fall behind before the feed waits (system.broker_inbox).
        self.inbox: queue.Queue[tuple[int, np.ndarray, FeedPosition | None]] = queue.Queue(inbox)
        self.log_lock = threading.Lock()
        self.finishing = False
        self.error: BaseException | None = None
        self.turn_at = time.monotonic()  # when the broker side last went round its loop
        self.buf = np.zeros(approved.capacity, ORDER_DTYPE)
        self.clock_ns = 0  # the time of the newest tick shown to the broker

    # ---- the feed's side

    def give(self, at: int, batch: np.ndarray, where: FeedPosition | None = None) -> None:
        """The feed's batch of ticks at..at+len, and the feed's position after it."""
        while True:
            try:
                self.inbox.put((at, batch, where), timeout=0.1)
                # The broker side may be asleep (on the approved ring) only if this batch is
                # the only one waiting: with another ahead of it, it has a take still to do,
                # which finds this one too. So a busy broker side is not woken per batch.
                if self.inbox.qsize() <= 1:
                    self.approved.wake_consumer()
                return
            except queue.Full:
                self.check()

    def log(self, *event: Any) -> None:
        if self.event_log is not None:
            with self.log_lock:
                self.event_log.add(*event)
                self.event_log.flush()

    def caught_up(self) -> bool:
        return self.inbox.unfinished_tasks == 0

    def healthy(self) -> bool:
        """Alive and turning (a broker side stuck in a commit stops the gateway's beat)."""
        return self.is_alive() and time.monotonic() - self.turn_at < 1.0

    def check(self) -> None:
        """Raise what ended the broker side, in the gateway's main thread."""
        if self.error is not None:
            raise RuntimeError("the gateway's broker side failed") from self.error
        if not self.is_alive() and not self.finishing:
            raise RuntimeError("the gateway's broker side ended")

    def finish(self) -> None:
        self.finishing = True
        self.approved.wake_consumer()

    # ---- the broker's side

    def run(self) -> None:
        try:
            self._loop()
        except BaseException as e:  # handed to the main thread, which raises it
            self.error = e

    def _loop(self) -> None:
        while True:
            self.turn_at = time.monotonic()
            self.gw.roll_window(self.turn_at)
            seen = self.approved.doorbell()  # before looking at the inbox: a batch given after rings it
            taken = self._take()
            if taken:
                self._ticks(taken)
            elif not self.finishing:  # asleep until an approved order, a batch (the feed's kick) or 50 ms
                wait_for_records([self.approved], timeout=0.05, since=[seen])
            n = self._orders()
            self.gw.keep_feed(time.monotonic())
            if self.finishing and not n and self.caught_up() and not self.approved.stats()["depth"]:
                return

    def _take(self) -> list[tuple[int, np.ndarray, FeedPosition | None]]:
        taken: list[tuple[int, np.ndarray, FeedPosition | None]] = []
        while len(taken) < self.COALESCE:
            try:
                taken.append(self.inbox.get_nowait())
            except queue.Empty:
                break
        return taken

    def _ticks(self, taken: list[tuple[int, np.ndarray, FeedPosition | None]]) -> None:
        at = taken[0][0]
        batch = taken[0][1] if len(taken) == 1 else np.concatenate([b for _, b, _ in taken])
        assert at == self.position, (at, self.position)  # the feed's batches, in order
        if taken[-1][2] is not None:
            self.gw.feed_at = taken[-1][2]  # what the broker's state is as of, once it has these
        exits = self.gw.on_ticks(batch)
        self.position = at + len(batch)
        self.clock_ns = max(self.clock_ns, int(batch["ts_ns"][-1]))
        if len(exits):
            failpoint("gateway.untold")
            self.log("t", at, self.position)
        self.send_reports(exits)
        for _ in taken:
            self.inbox.task_done()

    def _reach(self, decided_ns: int) -> None:
        """Show the broker every tick up to the market time risk decided at (an order's
        ts_ns: the quote board's newest time then), so that a paper order never fills at
        a quote older than its decision saw, however far the broker side trails the feed.
        The feed publishes a batch on the board just before it gives it here: wait for it,
        bounded by REACH_WAIT_S (a restarted feed may never reach an old order's time)."""
        give_up = time.monotonic() + self.REACH_WAIT_S
        while self.clock_ns < decided_ns and time.monotonic() < give_up:
            taken = self._take()
            if taken:
                self._ticks(taken)
            else:
                time.sleep(0.0002)

    def _orders(self) -> int:
        """Send the approved orders waiting, batch by batch; returns how many. A batch
        approved while the one before it was at the broker is committed SUBMITTING with
        that one's results (Gateway.submit), so it waits for one fsync, not two. The
        broker sees no tick in between, unless risk decided on ticks it has not been shown
        yet (`_reach`): those come first, and the batch goes at the position after them."""
        sent: Sent | None = None
        total = 0
        for _ in range(self.COALESCE):  # then the ticks waiting: stops and targets are not held up
            n = self.approved.pop_into(self.buf)
            if not n:
                break
            orders = self.buf[:n].copy()
            self.gw.submit(orders, sent)
            if sent is not None:  # durable now
                self.send_reports(sent.reports)
            failpoint("gateway.unlogged")
            # Durable in SUBMITTING before the broker is shown more ticks: a crash meanwhile
            # leaves them to `recover`, never lost between the ring and the book.
            self._reach(int(orders["ts_ns"].max()))
            self.log("o", self.position, n)
            failpoint("gateway.submitting")
            sent = self.gw.send(orders)
            total += n
        if sent is not None:
            self.gw.commit(sent.commit)
            self.send_reports(sent.reports)
        return total


class GatewayProcess:
    """The gateway's process wrapper, the feed's side: ticks -> recorder, board, workers,
    and the broker's inbox; the broker side (`BrokerLoop`) runs on its own thread.

    The event log says when this process took what (replay): the tick position of each
    batch of orders it sent and of each batch of ticks that filled a stop or target. Each
    event is written before what it made is pushed."""

    def __init__(self, child: Child, config: Config):
        self.child = child
        layout = self.layout = child.layout
        self.store = StateStore(config.system.state_dir)
        self.gw = Gateway(self.store, make_broker(config, layout.symbol_names or layout.n_symbols))
        self.worker_of = layout.worker_of()
        fixes = self.gw.recover()
        for fix in fixes:
            print(f"gateway: recovered order {fix['client_order_id']} as {fix['state']}", flush=True)
        self.feed = Feed(config, layout.symbol_names)
        saved = self.store.read(lambda t: t.get("bridge", FEED_KEY))
        same_run = saved is not None and saved.get("session") == layout.session
        # after the mark the broker's state is of; nothing older than the last clock published
        self.feed.resume(saved["feed"] if saved else None, same_run, child.market_clock())
        self.meter, self.refused_before = meter(child), dict(self.feed.refused)  # the screen's count is kept
        self.recorder, self.base = None, 0
        directory = record_dir(config)
        if directory is not None:
            meta = {"symbols": list(self.feed.names), "config": dataclasses.asdict(config),
                    "layout_version": LAYOUT_VERSION}  # fmt: skip
            self.recorder = Recorder(directory, meta, config.system.record_days, layout.session,
                                     max_bytes=config.system.record_max_mb << 20)  # fmt: skip
            self.base = self.recorder.ticks
        self.rings = [TickRing.attach(layout.tick_ring(k)) for k in range(layout.n_workers)]
        self.pushed = [int(r.stats()["pushed"]) for r in self.rings]  # ticks each ring has had, ever
        self.redo_record = 0  # ticks the feed gives again that the recording has
        self.unseen: np.ndarray | None = None  # per worker: ticks it gives again that the worker has
        if same_run and self.feed.resumed["mode"] == "exact":
            self.catch_up(saved)  # type: ignore[arg-type]
        if self.feed.resumed["mode"] != "new":
            told = {**self.feed.resumed, "same_run": same_run, "not_pushed_again": self.catching_up()}
            self.store.write(lambda t: t.journal("feed_resumed", **told))
        self.tell_unquoted()
        self.board = QuoteBoard.attach(layout.quotes)
        approved = OrderRing.attach(layout.approved)
        self.reports_out = [OrderRing.attach(layout.reports_risk),
                            OrderRing.attach(layout.reports_coordinator)]  # fmt: skip
        self.log = event_log(config, layout.session, "gateway")
        unsent = self.start(fixes, approved)
        sys.setswitchinterval(0.0005)  # two threads: a commit done gets the GIL back soon (default 5 ms)
        self.send_reports(unsent)  # what the last gateway committed and may never have pushed
        self.broker = BrokerLoop(self.gw, approved, self.send_reports, self.log, self.base,
                                 config.system.broker_inbox)  # fmt: skip
        self.broker.start()
        self.stalled = [False] * layout.n_workers
        self.feeding, self.ticks, self.lost, self.next_beat = True, 0, 0, 0.0
        self.started = time.monotonic()
        self.next_look = 0.0

    def tell_unquoted(self) -> None:
        """Open positions on symbols this feed has no ticks for (a state's name the files no
        longer have) are never quoted: the broker cannot fill their stops or close them,
        and risk values them at cost and waits for a quote before it marks the account (its
        loss limits wait with it). Said at every start, in the log and the journal."""
        names = self.feed.names
        unfed = [names[s] for s in self.gw.broker.ledger.open_symbols() if s not in self.feed.fed]
        if unfed:
            why = ("the feed has no ticks for them: the broker cannot close them and risk does not mark the "
                   "account until they are quoted; add their data to feed.files")  # fmt: skip
            print(f"gateway: open positions on {', '.join(unfed)}: {why}", flush=True)
            self.store.write(lambda t: t.journal("positions_unquoted", symbols=unfed, why=why))

    def catch_up(self, saved: dict[str, Any]) -> None:
        """A gateway of this run was killed after the mark: it had recorded and pushed ticks
        past it (the rings' counts and the recording say how many). The feed, resumed at the
        mark, gives them again: the broker is shown them (its state is the mark's), the
        recording and each worker skip what they had (`take`). The broker's positions are
        the recording's again from the mark's (`base`)."""
        pushed = [int(n) for n in saved["pushed"]]
        if len(pushed) == len(self.pushed) and all(a <= b for a, b in zip(pushed, self.pushed, strict=True)):
            unseen = np.array(self.pushed, np.int64) - pushed
            self.unseen = unseen if unseen.any() else None
        recorded = int(saved["recorded"])
        if self.recorder is not None and recorded <= self.recorder.ticks:
            self.redo_record, self.base = self.recorder.ticks - recorded, recorded

    def catching_up(self) -> dict[str, Any]:
        """What the workers and the recording have of the ticks the feed gives again."""
        workers: list[int] = [] if self.unseen is None else self.unseen.tolist()
        return {"workers": workers, "recording": self.redo_record}

    def start(self, fixes: list[dict], approved: OrderRing) -> np.ndarray:
        """Log where the replay starts (the recording's tick count, the broker, the rings'
        positions, what was recovered); returns the reports to push again (`Gateway.unsent`)."""
        unsent, n_last = self.gw.unsent(fixes)
        if self.log is not None:
            positions = {"approved": approved.stats()["popped"],
                         "ticks": [r.stats()["pushed"] for r in self.rings],
                         "reports": [r.stats()["pushed"] for r in self.reports_out]}  # fmt: skip
            self.log.add("start", {"base": self.base, "n_workers": self.layout.n_workers,
                                   "broker": self.gw.broker.to_dict(), "rings": positions,
                                   "feed": self.feed.resumed, "again": self.catching_up(),
                                   "recovered": {f["client_order_id"]: f["state"] for f in fixes},
                                   "resent": unsent.tolist(), "resent_last": n_last})  # fmt: skip
            self.log.flush()
        return unsent

    def send_reports(self, reports: np.ndarray) -> None:
        """To risk and the coordinator (the broker side calls it, after each commit)."""
        if len(reports):
            failpoint("gateway.unsent")
        for ring in self.reports_out:
            ring.push(reports, timeout=1.0)

    def look(self) -> None:
        """Read the control pipe (a poll(2): not one per batch)."""
        if time.monotonic() >= self.next_look:
            self.next_look = time.monotonic() + 0.005
            for msg in self.child.messages():
                if msg[0] == "stop_feed":
                    self.feeding = False
        self.feeding = self.feeding and not self.child.stop_requested

    def take(self, batch: np.ndarray) -> None:
        """A batch from the feed: stamped, recorded, published, routed to the workers and
        given to the broker side, with the feed's position after it."""
        batch["recv_ns"] = time.monotonic_ns()
        at, n = self.base + self.ticks, len(batch)
        fresh, had = batch, [0] * self.layout.n_workers
        if self.redo_record or self.unseen is not None:  # ticks a killed gateway gave: once to each
            fresh, had = self.again(batch)
        if self.recorder is not None:
            done = min(self.redo_record, n)  # recorded by the killed gateway
            self.redo_record -= done
            if done < n:
                self.recorder.write(batch[done:])
        self.board.publish(fresh)
        for k, part in enumerate(route(fresh, self.worker_of, self.layout.n_workers)):
            self.push(k, part, at, at + n, had[k])
        where = FeedPosition(self.feed.mark(), tuple(self.pushed), at + n, self.layout.session)
        self.broker.give(at, batch, where)  # waits while the broker is a full inbox behind
        self.ticks += n

    def again(self, batch: np.ndarray) -> tuple[np.ndarray, list[int]]:
        """The ticks of a batch the workers have not had (their first `unseen` were pushed by
        the killed gateway), and how many each had."""
        had = [0] * self.layout.n_workers
        if self.unseen is None:
            return batch, had
        owner = self.worker_of[batch["symbol"]]
        keep = np.ones(len(batch), bool)
        for k in np.flatnonzero(self.unseen):
            mine = np.flatnonzero(owner == k)[: self.unseen[k]]
            keep[mine], had[k] = False, len(mine)
            self.unseen[k] -= len(mine)
        if not self.unseen.any():
            self.unseen = None
        return batch[keep], had

    def push(self, k: int, part: np.ndarray, at: int, end: int, had: int = 0) -> None:
        """Worker k's part of the batch of ticks at..end (after the `had` it had already). A
        worker that stops taking ticks (dead, restarting) must not stall the others: after
        one timeout its ticks are counted as lost until it drains."""
        ring = self.rings[k]
        if self.stalled[k] and ring.stats()["depth"] < ring.capacity // 2:
            self.stalled[k] = False
        pushed = ring.push(part, timeout=0.0 if self.stalled[k] else 0.25) if len(part) else 0
        self.pushed[k] += pushed
        if pushed < len(part):
            self.stalled[k] = True
            self.lost += len(part) - pushed
            if self.log is not None:  # the worker never saw the rest of its part of this batch
                self.broker.log("lost", at, end, k, had + pushed)

    def idle(self) -> None:
        """Nothing due yet (realtime), or the feed done or stopped: the broker side runs on."""
        feed = self.feed
        time.sleep(min(feed.due_in(), 0.01) if self.feeding and not feed.done else 0.01)

    def beat(self) -> None:
        if time.monotonic() >= self.next_beat and self.broker.healthy():
            self.next_beat = time.monotonic() + 0.05
            # Feed done only once the broker has seen every tick: what they filled is pushed.
            done = (self.feed.done or not self.feeding) and self.broker.caught_up()
            n, p50, p99 = self.gw.last_window
            self.child.beat(FEED_DONE if done else RUNNING, **self.counts(), latency_n=n,
                            latency_p50_ns=p50, latency_p99_ns=p99)  # fmt: skip
            self.publish()

    def publish(self) -> None:
        """The metrics: counted by this process since it started (Meter adds its slot's)."""
        gw, refused = self.gw, self.feed.refused
        publish_orders(self.meter, [gw.filled, gw.refused], gw.refused, gw.fills, gw.tick_to_order,
                       gw.commits, ticks=self.ticks, ticks_dropped=self.lost,
                       ticks_refused=[0] * (len(TICK_REFUSALS) - 2) + [refused[k] - self.refused_before[k]
                                                                       for k in ("out_of_window", "ahead")])

    def counts(self) -> dict[str, int]:
        """What every beat carries."""
        gw = self.gw
        return {"ticks": self.ticks, "orders": gw.orders, "rejects": gw.rejects, "dropped": self.lost}

    def stop(self) -> None:
        """Stopping: risk has exited; the broker side sends the orders it left, then ends."""
        broker = self.broker
        broker.finish()
        while broker.is_alive():
            broker.join(0.05)
            if broker.healthy():
                self.child.beat(FEED_DONE, **self.counts())
        broker.check()
        if self.recorder is not None:
            self.recorder.close()
        if self.log is not None:
            self.log.close()
        feed_s = (self.feed.finished_at or time.monotonic()) - self.started
        _final_stats(self.store, self.gw, self.ticks, self.lost, feed_s=feed_s, refused=self.feed.refused)
        self.publish()
        self.child.beat(STOPPED, **self.counts())
        self.store.close()


def run(child: Child, config: Config) -> None:
    """The gateway process: feed -> board, broker, worker rings; approved orders -> broker.
    (On an MT5 account the gateway is sovereign.engine.venue's.)"""
    p = GatewayProcess(child, config)
    while not child.stop_requested:
        p.broker.check()
        p.look()
        batch = p.feed.next(FEED_BATCH) if p.feeding else None
        if batch is not None and len(batch):
            p.take(batch)
        else:
            p.idle()
        # The ticks before the market clock are pushed: workers close bars by it.
        child.publish_market_clock(p.feed.clock_ns)
        p.beat()
    p.stop()


def publish_orders(m: Meter, orders: list[int], refused: int, fills: int, tick_to_order: Histogram,
                   commits: Histogram, connected: bool = True, **counters: Any) -> None:  # fmt: skip
    """A gateway's metrics (paper or venue): orders by final state (FINAL_STATES' leading
    part), the broker's refusals, fills, both histograms, whether the broker is connected,
    and `counters`."""
    rejections = [0] * (int(Reason.BROKER) + 1)
    rejections[Reason.BROKER] = refused
    m.publish({"broker_connected": float(connected)}, orders=orders, rejections=rejections,
              fills=fills, tick_to_order=tick_to_order.counts, tick_to_order_sum=tick_to_order.sum_s,
              commit=commits.counts, commit_sum=commits.sum_s, **counters)  # fmt: skip


def _final_stats(store: StateStore, gw: Gateway, ticks: int, lost: int, feed_s: float,
                 refused: dict[str, int] | None = None) -> None:  # fmt: skip
    def tx(t: Txn) -> None:
        t.delete("bridge", LAST_REPORTS_KEY)  # every report was pushed
        if gw.feed_at is not None:  # the broker has been shown every tick the feed gave
            gw.put_broker(t, gw.broker.to_dict(), gw.feed_at)
        t.journal("gateway_stats", ticks=ticks, feed_s=feed_s, lost_ticks=lost, refused_ticks=refused or {},
                  orders=gw.orders,
                  fills=gw.fills, rejects=gw.rejects, tick_to_broker=gw.to_broker.to_dict(),
                  tick_to_gateway=gw.to_gateway.to_dict())  # fmt: skip

    store.write(tx)
