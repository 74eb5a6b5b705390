"""The gateway: SUBMITTING before the broker, recovery without resending, the broker
side's batches, reports sent again after a crash, routing."""

from __future__ import annotations

import itertools
import time
from decimal import Decimal as D
from pathlib import Path

import numpy as np
import pytest

from sovereign.broker.paper import Retcode
from sovereign.config import Config
from sovereign.core import (
    ORDER_APPROVED,
    ORDER_DTYPE,
    ORDER_FILL,
    ORDER_REJECT,
    OrderRing,
)
from sovereign.engine.coordinator import Coordinator
from sovereign.engine.gateway import BrokerLoop, Gateway, _final_stats, make_broker, route
from sovereign.engine.risk import Flight
from sovereign.market.sim import SimMarket, simulate_ticks
from sovereign.model import Reason
from sovereign.state.orders import OrderBook, OrderState
from sovereign.state.recorder import EventLog, read_events
from sovereign.state.schema import exec_key
from sovereign.state.store import StateStore
from tests.helpers import ids, intent, make_risk, quoted_gateway, ring_name


def test_gateway_commits_submitting_first_and_recovers_without_resending(tmp_path: Path) -> None:
    cfg = Config()
    store, gw, ticks = quoted_gateway(tmp_path, cfg, 2)
    order = intent(price=float(ticks["ask"][-1]), sl=0.0, tp=0.0, cid=41, symbol=int(ticks["symbol"][-1]))
    order["kind"], order["volume"] = ORDER_APPROVED, 0.1
    (rep,) = gw.on_orders(order)
    assert rep["kind"] == ORDER_FILL and rep["retcode"] == Retcode.DONE and rep["ticket"] > 0
    book = OrderBook(store)
    assert book.get(41)["state"] == "FILLED"
    # A crash after SUBMITTING was committed: one order the broker took, one it never saw.
    book.store.write(lambda t: book.advance(t, 42, [OrderState.APPROVED, OrderState.SUBMITTING]))
    book.store.write(lambda t: book.advance(t, 43, [OrderState.APPROVED, OrderState.SUBMITTING]))
    taken = store.read(lambda t: t.get("bridge", exec_key(41)))
    store.write(lambda t: t.put("bridge", exec_key(42), {**taken, "client_order_id": 42}))
    store.close()
    store = StateStore(tmp_path / "s")
    gw2 = Gateway(store, make_broker(cfg, 2))
    assert gw2.broker.ledger.volume(int(ticks["symbol"][-1])) == D("0.1")  # the broker state came back
    fixed = {f["client_order_id"]: f["state"] for f in gw2.recover()}
    assert fixed == {42: "FILLED", 43: "REJECTED"}
    assert gw2.orders == 0  # nothing was sent again


def test_the_broker_side_takes_batches_in_order_and_sends_orders_between_them(tmp_path: Path) -> None:
    """The gateway's broker thread: the feed's batches reach the broker in order, their
    exits are committed and pushed, an approved order is committed SUBMITTING, logged at
    the broker's tick position and filled; finishing drains the approved ring."""
    cfg = Config()
    store = StateStore(tmp_path / "s")
    gw = Gateway(store, make_broker(cfg, 4))
    pushed: list[np.ndarray] = []
    log = EventLog(tmp_path, "sess", "gateway")
    with OrderRing.create(ring_name("ap"), 64) as approved:
        loop = BrokerLoop(gw, approved, pushed.append, log, position=100)
        loop.start()
        sim = SimMarket(4, seed=5)
        at = 100
        for _ in range(20):
            batch = sim.next(512)
            loop.give(at, batch)
            at += len(batch)
        last = sim.next(512)
        loop.give(at, last)
        at += len(last)
        deadline = time.monotonic() + 30
        while not loop.caught_up():  # the broker has the last batch's quotes: the order's stop is valid
            assert time.monotonic() < deadline
            time.sleep(0.001)
        order = intent(price=float(last["ask"][-1]), sl=float(last["bid"][-1]) - 0.0005, tp=0.0, cid=77,
                       symbol=int(last["symbol"][-1]))  # fmt: skip
        order["kind"], order["volume"] = ORDER_APPROVED, 0.1
        approved.push(order)
        loop.finish()
        loop.join(30)
        loop.check()
    log.close()
    assert not loop.is_alive() and loop.position == at and loop.caught_up()
    events = read_events(tmp_path, "sess")[0]["gateway"]
    (o,) = [e for e in events if e[0] == "o"]
    assert o[1] == at and o[2] == 1  # sent after the broker had seen every tick
    ts = [e for e in events if e[0] == "t"]
    assert all(100 <= a < b <= at for _, a, b in ts) and all(x[2] <= y[1] for x, y in itertools.pairwise(ts))
    reports = np.concatenate(pushed) if pushed else np.zeros(0, ORDER_DTYPE)
    assert 77 in reports["client_order_id"].tolist()
    assert OrderBook(store).get(77)["state"] == "FILLED"
    assert len(reports) == gw.fills + gw.rejects  # every fill and reject reported once


@pytest.mark.parametrize("killed", [False, True])
def test_an_order_approved_while_the_last_is_at_the_broker_goes_in_one_commit_with_its_results(
        tmp_path: Path, killed: bool) -> None:  # fmt: skip
    """Batch 2 comes while batch 1 is at the broker: its SUBMITTING and batch 1's results
    are one durable transaction (three commits for two batches, not four). Batch 1's
    reports are pushed once that lands, before batch 2 is sent; both go at the same tick
    position. Killed right after that commit: the next gateway pushes batch 1's reports
    again and resolves batch 2, never sent, as rejected."""
    cfg = Config()
    store, gw, ticks = quoted_gateway(tmp_path, cfg, 4)
    s = int(ticks["symbol"][-1])
    first, second = (intent(price=float(ticks["ask"][-1]), sl=0.0, tp=0.0, cid=c, symbol=s) for c in (61, 62))
    for o in (first, second):
        o["kind"], o["volume"] = ORDER_APPROVED, 0.1
    commits: list[list[str]] = []  # the two orders' states after each commit

    def write(fn, real=store.write):  # type: ignore[no-untyped-def]
        out = real(fn)
        ours = [o for o in OrderBook(store).in_state(*OrderState) if o["client_order_id"] > 60]
        commits.append([o["state"] for o in ours])
        return out

    store.write = write  # type: ignore[method-assign]
    pushed: list[list[int]] = []

    def push(reports: np.ndarray) -> None:
        if killed:
            raise SystemExit  # the gateway dies before it pushes anything
        pushed.append(reports["client_order_id"].tolist())

    log = EventLog(tmp_path, "sess", "gateway")
    with OrderRing.create(ring_name("ap"), 64) as approved:
        at_broker = gw.broker.market_order

        def market_order(*args, **kw):  # type: ignore[no-untyped-def]
            if approved.stats()["pushed"] == 1:  # batch 1 at the broker: batch 2 comes
                approved.push(second)
            return at_broker(*args, **kw)

        gw.broker.market_order = market_order  # type: ignore[method-assign]
        loop = BrokerLoop(gw, approved, push, log, position=7)
        loop.clock_ns = int(ticks["ts_ns"][-1])  # the broker has been shown the ticks risk decided on
        approved.push(first)
        loop.start()
        deadline = time.monotonic() + 30
        while len(pushed) < 2 and loop.is_alive():
            assert time.monotonic() < deadline
            time.sleep(0.001)
        loop.finish()
        loop.join(30)
    log.close()
    sent = [e for e in read_events(tmp_path, "sess")[0]["gateway"] if e[0] == "o"]
    assert sent == [["o", 7, 1]] * (2 - killed)
    if not killed:
        loop.check()
        assert commits == [["SUBMITTING"], ["FILLED", "SUBMITTING"], ["FILLED", "FILLED"]]
        assert pushed == [[61], [62]]
        assert gw.orders == gw.fills == 2 and gw.broker.ledger.volume(s) == D("0.2")
        return
    assert commits == [["SUBMITTING"], ["FILLED", "SUBMITTING"]] and not pushed
    store.close()
    store = StateStore(tmp_path / "s")
    gw2 = Gateway(store, make_broker(cfg, 4))
    assert gw2.broker.ledger.volume(s) == D("0.1")  # batch 1's fill is durable, batch 2 never went
    fixes = gw2.recover()
    assert {f["client_order_id"]: f["state"] for f in fixes} == {62: "REJECTED"}
    again, n_last = gw2.unsent(fixes)
    assert n_last == 1 and again["client_order_id"].tolist() == [61, 62]
    assert again["kind"].tolist() == [ORDER_FILL, ORDER_REJECT]


def test_a_failing_broker_side_stops_the_gateway(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "s")
    gw = Gateway(store, make_broker(Config(), 4))

    def broken(reports: np.ndarray) -> None:
        raise OSError("reports ring gone")

    with OrderRing.create(ring_name("ap"), 64) as approved:
        loop = BrokerLoop(gw, approved, broken, None, position=0)
        loop.start()
        order = intent(price=1.1002, sl=0.0, tp=0.0, cid=5)
        order["kind"], order["volume"] = ORDER_APPROVED, 0.1
        loop.give(0, SimMarket(4, seed=1).next(256))
        approved.push(order)
        loop.join(30)
        with pytest.raises(RuntimeError, match="broker side failed"):
            loop.check()


def test_a_restarted_gateway_sends_again_the_reports_its_predecessor_may_not_have(tmp_path: Path) -> None:
    """Killed between a commit and pushing its reports: the next gateway pushes them, with
    those of the orders it recovered; risk and the coordinator apply each deal once."""
    cfg = Config()
    store, gw, ticks = quoted_gateway(tmp_path, cfg, 2)
    symbol = int(ticks["symbol"][-1])
    order = intent(price=float(ticks["ask"][-1]), sl=0.0, tp=0.0, cid=41, symbol=symbol)
    order["kind"], order["volume"], order["agent"] = ORDER_APPROVED, 0.1, 7
    reports = gw.on_orders(order)  # ... and killed before pushing them
    store.close()
    store = StateStore(tmp_path / "s")
    gw2 = Gateway(store, make_broker(cfg, 2))
    again, n_last = gw2.unsent(gw2.recover())
    assert n_last == 1 and again.tobytes() == reports.tobytes()
    risk, coord = make_risk(), Coordinator(cfg, ids())
    for _ in range(2):  # the first report may have arrived after all: applied once
        risk.on_reports(again)
        coord.on_reports(again)
        assert risk.ledger.volume(symbol) == coord.volume[symbol] == D("0.1")
    # Killed after committing SUBMITTING, before calling the broker: recovered as REJECTED
    # and reported, so risk's close in flight for that symbol is over.
    close = order.copy()
    close["client_order_id"], close["side"], close["agent"] = 42, -1, 0
    risk.in_flight[42] = Flight(symbol, D("-0.1"), D(str(close["price"][0])), True)

    def killed() -> None:
        raise SystemExit

    with pytest.raises(SystemExit):
        gw2.on_orders(close, killed)
    store.close()
    store = StateStore(tmp_path / "s")
    gw3 = Gateway(store, make_broker(cfg, 2))
    again, n_last = gw3.unsent(gw3.recover())
    assert n_last == 1 and again[:1].tobytes() == reports.tobytes()  # the newest durable commit
    rejected = again[1]
    assert (rejected["client_order_id"], rejected["kind"], rejected["symbol"], rejected["side"]) == (
        42, ORDER_REJECT, symbol, -1)
    assert rejected["volume"] == 0.1 and rejected["reason"] == Reason.BROKER
    risk.on_reports(again)
    assert risk.in_flight == {} and risk.ledger.volume(symbol) == D("0.1")
    _final_stats(store, gw3, 0, 0, 0.0)  # a clean stop: every report was pushed
    assert len(gw3.unsent([])[0]) == 0


def test_gateway_routes_each_symbol_to_its_worker() -> None:
    ticks = simulate_ticks(10, 50, seed=1)
    worker_of = np.arange(10) % 3
    parts = route(ticks, worker_of, 3)
    assert sum(len(p) for p in parts) == len(ticks)
    for k, part in enumerate(parts):
        assert (worker_of[part["symbol"]] == k).all() and (np.diff(part["ts_ns"]) >= 0).all()


