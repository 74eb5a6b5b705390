"""The transport-free components and their shared-memory pieces, one process at a time:
coordinator, risk, gateway recovery, the quote board, the worker's pump, feeds, CSV data."""

from __future__ import annotations

import itertools
import multiprocessing as mp
import re
import time
from decimal import Decimal as D
from pathlib import Path

import numpy as np
import pytest

from sovereign.broker.paper import Retcode
from sovereign.config import Config, from_dict
from sovereign.core import (
    ORDER_APPROVED,
    ORDER_DTYPE,
    ORDER_FILL,
    ORDER_INTENT,
    ORDER_REJECT,
    SIGNAL_DTYPE,
    TICK_DTYPE,
    AgentPool,
    OrderRing,
    QuoteBoard,
    SignalRing,
    TickRing,
)
from sovereign.engine.coordinator import Coordinator
from sovereign.engine.gateway import BrokerLoop, Gateway, _final_stats, make_broker, route
from sovereign.engine.risk import Flight, Risk
from sovereign.market.data import DataError, load_csv, load_ticks
from sovereign.market.feeds import Feed
from sovereign.market.sim import SimMarket, simulate_ticks
from sovereign.model import Reason, TradingState
from sovereign.presets import add_default_agents
from sovereign.state.orders import OrderBook, OrderState
from sovereign.state.recorder import EventLog, read_events
from sovereign.state.schema import exec_key
from sovereign.state.store import StateStore
from sovereign.symbols import symbol_specs
from tests.helpers import ring_name

NS = 1_000_000_000


def signal(symbol: int, side: int, conviction: float, *, agent: int = 0, ts: int = 1000 * NS, tf: int = 60,
           entry: float = 1.1, stop: float = 1.09, target: float = 1.12) -> tuple:  # fmt: skip
    return (ts, agent, symbol, side, 0, 2, tf, conviction, entry, stop, target, stop, 7)


def ids() -> object:
    counter = iter(range(1, 10**6))
    return lambda: next(counter)


# ---- coordinator


def test_coordinator_acts_on_net_conviction_and_cancels_opposites() -> None:
    c = Coordinator(Config(), ids())
    assert len(c.on_signals(np.array([signal(0, 1, 0.5)], SIGNAL_DTYPE))) == 0  # 0.5 < 0.55
    out = c.on_signals(np.array([signal(0, 1, 0.3, agent=1)], SIGNAL_DTYPE))  # net 0.8
    assert len(out) == 1
    o = out[0]
    assert (o["kind"], o["side"], o["symbol"], o["origin_ns"]) == (ORDER_INTENT, 1, 0, 7)
    assert o["conviction"] == pytest.approx(0.8) and o["risk"] == pytest.approx(0.005 * 0.8)
    assert o["agent"] == 0 and (o["price"], o["sl"], o["tp"]) == (1.1, 1.09, 1.12)  # the strongest
    c2 = Coordinator(Config(), ids())
    both = np.array([signal(1, 1, 0.7), signal(1, -1, 0.6, agent=1)], SIGNAL_DTYPE)
    assert len(c2.on_signals(both)) == 0  # 0.7 - 0.6 cancels below the threshold


def test_coordinator_signals_expire_after_one_bar_and_in_flight_blocks_repeats() -> None:
    c = Coordinator(Config(), ids())
    c.on_signals(np.array([signal(0, 1, 0.4, ts=1000 * NS)], SIGNAL_DTYPE))
    later = np.array([signal(0, 1, 0.4, agent=1, ts=1061 * NS)], SIGNAL_DTYPE)  # the first expired at 1060 s
    assert len(c.on_signals(later)) == 0
    first = c.on_signals(np.array([signal(0, 1, 0.4, agent=2, ts=1062 * NS)], SIGNAL_DTYPE))
    assert len(first) == 1
    again = c.on_signals(np.array([signal(0, 1, 0.9, agent=3, ts=1063 * NS)], SIGNAL_DTYPE))
    assert len(again) == 0  # an intent for symbol 0 is in flight
    fill = np.zeros(1, ORDER_DTYPE)
    fill[0]["client_order_id"], fill[0]["kind"], fill[0]["side"], fill[0]["volume"] = (
        first[0]["client_order_id"],
        ORDER_FILL,
        1,
        0.3,
    )
    c.on_reports(fill)
    assert c.position[0] == 1
    assert (
        len(c.on_signals(np.array([signal(0, 1, 0.9, agent=4, ts=1064 * NS)], SIGNAL_DTYPE))) == 0
    )  # long already
    flip = c.on_signals(np.array([signal(0, -1, 5.0, agent=5, ts=1065 * NS)], SIGNAL_DTYPE))
    assert len(flip) == 1 and flip[0]["side"] == -1


def test_coordinator_caps_a_symbols_risk() -> None:
    cfg = from_dict({"coordinator": {"max_symbol_share": 0.05}})
    c = Coordinator(cfg, ids())
    out = c.on_signals(np.array([signal(0, 1, 1.0, agent=a) for a in range(5)], SIGNAL_DTYPE))
    assert out[0]["risk"] == pytest.approx(0.05 * 0.005 * 20)  # not 0.005 * 5


def test_coordinator_nets_in_the_order_agents_came_and_an_expired_agent_comes_again_last() -> None:
    """The net is a float sum in order; the order is the agents' first arrival, an agent
    whose signal expired rejoining at the end (as a dict would keep them)."""
    c = Coordinator(Config(), ids())
    c.on_signals(np.array([signal(0, 1, 0.1, agent=a, ts=1000 * NS) for a in (7, 3, 5)], SIGNAL_DTYPE))
    c.on_signals(np.array([signal(0, 1, 0.1, agent=3, ts=1030 * NS, tf=300)], SIGNAL_DTYPE))  # in place
    assert [x[0] for x in c.book.live(0)] == [7, 3, 5]
    c.on_signals(np.array([signal(0, 1, 0.1, agent=9, ts=1061 * NS)], SIGNAL_DTYPE))  # 7's and 5's expired
    assert [x[0] for x in c.book.live(0)] == [3, 9]
    c.on_signals(np.array([signal(0, 1, 0.1, agent=7, ts=1062 * NS)], SIGNAL_DTYPE))
    assert [x[0] for x in c.book.live(0)] == [3, 9, 7]
    assert c.book.live(0)[0][1] == 1330 * NS and c.clock_ns == 1062 * NS


def test_coordinator_pickled_mid_run_decides_as_the_original() -> None:
    import pickle

    from sovereign.research.backtest import Ids

    a = Coordinator(Config(), Ids())
    a.on_signals(np.array([signal(s, 1, 0.3, agent=s) for s in range(3)], SIGNAL_DTYPE))
    b = pickle.loads(pickle.dumps(a))
    assert b.clock_ns == a.clock_ns and all(b.book.live(s) == a.book.live(s) for s in range(3))
    more = np.array([signal(s, 1, 0.3, agent=9, ts=1010 * NS) for s in range(3)], SIGNAL_DTYPE)
    assert np.array_equal(a.on_signals(more), b.on_signals(more))


def test_coordinator_refuses_records_that_are_not_signals() -> None:
    c = Coordinator(Config(), ids())
    with pytest.raises(TypeError, match=r"SignalBook\.update expects a 1-D array of"):
        c.on_signals(np.zeros(2, ORDER_DTYPE))
    bad = np.array([signal(0, 1, 0.9)], SIGNAL_DTYPE)
    bad["symbol"] = 1 << 20
    with pytest.raises(ValueError, match="signal symbol 1048576 is out of range"):
        c.on_signals(bad)
    assert len(c.on_signals(np.array([signal(0, 1, 0.9)], SIGNAL_DTYPE))) == 1  # nothing was half taken


# ---- risk


def quotes_at(bid: float, ask: float, ts: int = 1000 * NS):  # type: ignore[no-untyped-def]
    return lambda s: (ts, bid, ask, 0)


def intent(symbol: int = 0, side: int = 1, price: float = 1.1002, sl: float = 1.0952, tp: float = 1.12,
           risk: float = 0.005, cid: int = 1) -> np.ndarray:  # fmt: skip
    rec = np.zeros(1, ORDER_DTYPE)
    rec[0] = (1000 * NS, 5, cid, 0, symbol, 0, side, ORDER_INTENT, 0, 0, 0.0, price, sl, tp, 1.0, risk, 0.0)
    return rec


def make_risk(**risk: object) -> Risk:
    cfg = from_dict({"risk": risk}) if risk else Config()
    return Risk(cfg, symbol_specs(cfg, 4), ids())


def test_risk_sizes_from_the_stop_distance_and_rounds_down_to_the_lot_step() -> None:
    r = make_risk(max_symbol_exposure=100.0, max_gross_exposure=100.0)
    ok, refused = r.on_intents(intent(), quotes_at(1.1000, 1.1002), 1000 * NS)
    assert not refused
    # 100000 * 0.005 = 500 at risk; 0.005 price distance * 100000 per lot = 500 per lot -> 1.00 lot
    assert (ok[0]["kind"], ok[0]["volume"], ok[0]["price"], ok[0]["sl"]) == (
        ORDER_APPROVED,
        1.0,
        1.1002,
        1.0952,
    )
    ok, _ = r.on_intents(intent(risk=0.00333, cid=2, symbol=1), quotes_at(1.1000, 1.1002), 1000 * NS)
    assert ok[0]["volume"] == 0.66  # 0.666 rounded down


def test_risk_caps_size_by_exposure_and_refuses_with_reasons() -> None:
    r = make_risk()
    ok, _ = r.on_intents(intent(), quotes_at(1.1000, 1.1002), 1000 * NS)
    assert ok[0]["volume"] == 0.18  # 20% of 100000 equity / 110020 per lot
    cases = [
        (intent(sl=1.2), quotes_at(1.1, 1.1002), Reason.BAD_STOP),
        (intent(price=1.2), quotes_at(1.1, 1.1002), Reason.PRICE_BAND),
        (intent(), quotes_at(1.1, 1.1002, ts=990 * NS), Reason.STALE_QUOTE),
        (intent(), quotes_at(1.1, 1.1002, ts=0), Reason.NO_QUOTE),
        (intent(symbol=9), quotes_at(1.1, 1.1002), Reason.UNKNOWN_SYMBOL),
        (intent(sl=0.5, risk=1e-6), quotes_at(1.1, 1.1002), Reason.VOLUME_TOO_SMALL),
    ]
    for rec, q, why in cases:
        fresh = make_risk()
        _, refused = fresh.on_intents(rec, q, 1000 * NS)
        assert [w for _, w in refused] == [why], why


def test_gross_exposure_values_other_positions_at_the_last_mark_as_equity_is() -> None:
    r = make_risk(max_symbol_exposure=100.0, max_gross_exposure=1.5)
    held = intent(symbol=0, cid=1)
    held["kind"], held["volume"], held["price"] = ORDER_FILL, 1.0, 1.1002
    r.on_reports(held)
    r.mark(quotes_at(1.1, 1.1002), 1000 * NS)  # equity 99980; symbol 0 worth 1.0 * 100000 * 1.1

    def moved(s: int) -> tuple[int, float, float, int]:  # symbol 0's quote doubled since the mark
        return (1000 * NS, 2.2, 2.2002, 0) if s == 0 else (1000 * NS, 1.1, 1.1002, 0)

    ok, refused = r.on_intents(intent(symbol=1, cid=2), moved, 1000 * NS)
    # Room 1.5 * 99980 - 110000 = 39970 at the mark's bid (not at 2.2, where there is none).
    assert not refused and ok[0]["volume"] == 0.36
    _, refused = r.on_intents(intent(symbol=3, cid=6), moved, 1000 * NS)
    assert [w for _, w in refused] == [Reason.GROSS_EXPOSURE]  # the approved order counts while in flight
    gone = ok.copy()
    gone["kind"] = ORDER_REJECT
    r.on_reports(gone)  # the broker refused it: no longer exposure
    more = held.copy()
    more["client_order_id"], more["volume"] = 3, 0.1
    r.on_reports(more)  # the position changed after the mark: valued at the quote now
    _, refused = r.on_intents(intent(symbol=2, cid=4), moved, 1000 * NS)
    assert [w for _, w in refused] == [Reason.GROSS_EXPOSURE]
    r.mark(quotes_at(1.1, 1.1002), 1000 * NS)
    ok, refused = r.on_intents(intent(symbol=2, cid=5), moved, 1000 * NS)
    assert not refused and ok[0]["volume"] == 0.26  # room 1.5 * 99978 - 1.1 * 110000 = 28967


def test_risk_limits_positions_and_order_rate() -> None:
    r = make_risk(max_open_positions=1, max_orders_per_minute=2)
    ok, _ = r.on_intents(intent(symbol=0), quotes_at(1.1, 1.1002), 1000 * NS)
    fill = ok.copy()
    fill["kind"] = ORDER_FILL
    r.on_reports(fill)
    _, refused = r.on_intents(intent(symbol=1, cid=2), quotes_at(1.1, 1.1002), 1000 * NS)
    assert refused[0][1] == Reason.MAX_POSITIONS
    _, refused = r.on_intents(intent(symbol=0, cid=3), quotes_at(1.1, 1.1002), 1000 * NS)
    assert refused[0][1] == Reason.ALREADY_POSITIONED
    r2 = make_risk(max_orders_per_minute=2)
    for cid in range(3):
        r2.on_intents(intent(symbol=cid, cid=cid), quotes_at(1.1, 1.1002), 1000 * NS)
    assert r2.rejected[Reason.ORDER_RATE] == 1


def test_daily_loss_reduces_until_the_next_day_and_drawdown_halts_and_flattens() -> None:
    r = make_risk(daily_loss_limit=0.01, max_drawdown=0.05)
    day0 = 20000 * 86400 * NS
    r.mark(quotes_at(1.1, 1.1002, day0), day0)
    ok, _ = r.on_intents(intent(), quotes_at(1.1, 1.1002, day0), day0)
    fill = ok.copy()
    fill["kind"] = ORDER_FILL
    r.on_reports(fill)  # long 0.18 at 1.1002
    r.mark(quotes_at(1.04, 1.0402, day0), day0)  # -0.0602 * 18000 = -1083.6: more than 1% lost
    assert r.state is TradingState.REDUCING
    _, refused = r.on_intents(intent(symbol=1, cid=2, price=1.0402), quotes_at(1.04, 1.0402, day0), day0)
    assert refused[0][1] == Reason.REDUCING
    ok, _ = r.on_intents(intent(side=-1, price=1.04, sl=1.05, cid=3), quotes_at(1.04, 1.0402, day0), day0)
    assert ok[0]["volume"] == 0.18 and ok[0]["reason"] == Reason.REDUCING  # a close, not a reversal
    refused = ok.copy()
    refused["kind"] = ORDER_REJECT
    r.on_reports(refused)  # the broker refused the close: the position stays open
    r.mark(quotes_at(1.04, 1.0402, day0 + 86400 * NS), day0 + 86400 * NS)
    assert r.state is TradingState.ACTIVE
    out = r.mark(quotes_at(0.8, 0.8002, day0 + 86400 * NS), day0 + 86400 * NS)
    assert r.state is TradingState.HALTED and "max drawdown" in r.why
    assert len(out) == 1 and (out[0]["side"], out[0]["volume"], out[0]["reason"]) == (
        -1,
        0.18,
        Reason.FLATTEN,
    )
    _, refused = r.on_intents(
        intent(symbol=2, cid=9, price=0.8002), quotes_at(0.8, 0.8002), day0 + 86400 * NS
    )
    assert refused[0][1] == Reason.HALTED
    assert [e["state"] for e in r.events if e["event"] == "trading_state"] == ["REDUCING", "ACTIVE", "HALTED"]


# ---- gateway


def quoted_gateway(tmp_path: Path, cfg: Config, n_symbols: int) -> tuple[StateStore, Gateway, np.ndarray]:
    """A gateway on fresh state under tmp_path whose broker has seen 10 ticks of each symbol."""
    store = StateStore(tmp_path / "s")
    gw = Gateway(store, make_broker(cfg, n_symbols))
    ticks = simulate_ticks(n_symbols, 10, seed=3)
    gw.on_ticks(ticks)
    return store, gw, ticks


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


# ---- shared memory: quote board and the worker's pump


def _hammer(name: str, n: int) -> None:
    with QuoteBoard.attach(name) as board:
        t = np.zeros(1, TICK_DTYPE)
        for i in range(1, n + 1):
            t["ts_ns"], t["bid"], t["ask"], t["symbol"], t["recv_ns"] = i, i, i + 0.5, 0, i
            board.publish(t)


def test_quote_board_reads_are_never_torn_across_processes() -> None:
    name = ring_name("qb")
    with QuoteBoard.create(name, 4) as board:
        writer = mp.get_context("spawn").Process(target=_hammer, args=(name, 300_000))
        writer.start()
        seen = 0
        while writer.is_alive() or seen == 0:
            ts, bid, ask, recv = board.read(0)
            if ts:  # 0: the writer has not published yet
                assert bid == ts and ask == ts + 0.5 and recv == ts  # one tick's fields, never a mix
                seen += 1
        writer.join()
        assert board.read(0)[0] == 300_000 and board.updates == 300_000
        assert board.read(3) == (0, 0.0, 0.0, 0)
        with pytest.raises(IndexError):
            board.read(4)
        snap = board.snapshot()
        assert snap["ts_ns"][0] == 300_000 and len(snap) == 4
        assert board.newest_ts() == 300_000
        t = np.zeros(1, TICK_DTYPE)
        t["ts_ns"], t["symbol"] = 400_000, 2
        board.publish(t)
        assert board.newest_ts() == int(board.snapshot()["ts_ns"].max()) == 400_000
    with QuoteBoard.create(ring_name("qb"), 3) as empty:
        assert empty.newest_ts() == 0


def test_pump_runs_the_pool_between_rings_like_on_ticks() -> None:
    ticks = simulate_ticks(5, 4000, seed=2)
    ticks["recv_ns"] = np.arange(len(ticks))
    expected = AgentPool()
    add_default_agents(expected, 5)
    want = expected.on_ticks(ticks)
    pool = AgentPool()
    add_default_agents(pool, 5)
    with TickRing.create(ring_name("pt"), 1 << 15) as tr, SignalRing.create(ring_name("ps"), 1 << 12) as sr:
        tr.push(ticks)
        n, emitted, pushed = pool.pump(tr, sr, 0.2)
        got = sr.pop(1 << 12)
    assert n == len(ticks) and emitted == pushed == len(want) > 0
    assert got.tobytes() == want.tobytes()  # origin_ns is the recv_ns of the closing tick
    assert (got["origin_ns"] > 0).all()


# ---- feeds and data


def test_sim_market_is_seeded_merged_and_structured() -> None:
    a, b = SimMarket(20, seed=4).next(50_000), SimMarket(20, seed=4).next(50_000)
    assert a.tobytes() == b.tobytes()
    assert (np.diff(a["ts_ns"]) > 0).all() and (a["ask"] > a["bid"]).all() and (a["bid"] > 0).all()
    assert set(np.unique(a["symbol"])) == set(range(20))


def test_feed_stops_after_max_ticks() -> None:
    feed = Feed(from_dict({"feed": {"max_ticks": 5000, "symbols": 3}}))
    got = sum(len(feed.next(2048)) for _ in range(5))
    assert got == 5000 and feed.done and len(feed.next(10)) == 0


GENERIC_TICKS = """time,symbol,bid,ask,volume
2026-01-02T00:00:00.100Z,EURUSD,1.1000,1.1002,1
2026-01-02T00:00:00.250Z,GBPUSD,1.2700,1.2703,2
1767312001000,EURUSD,1.1001,1.1003,1
"""
MT5_TICKS = (
    "<DATE>\t<TIME>\t<BID>\t<ASK>\t<LAST>\t<VOLUME>\t<FLAGS>\n"
    "2026.01.02\t00:00:00.100\t1.1000\t1.1002\t\t\t6\n2026.01.02\t00:00:00.300\t\t1.1004\t\t\t4\n"
)
MT5_BARS = (
    "<DATE>\t<TIME>\t<OPEN>\t<HIGH>\t<LOW>\t<CLOSE>\t<TICKVOL>\t<VOL>\t<SPREAD>\n"
    "2026.01.02\t00:00:00\t1.1\t1.102\t1.099\t1.101\t40\t0\t12\n"
    "2026.01.02\t00:01:00\t1.101\t1.103\t1.1\t1.1005\t20\t0\t10\n"
)


def test_csv_generic_and_mt5_layouts(tmp_path: Path) -> None:
    (tmp_path / "g.csv").write_text(GENERIC_TICKS)
    (tmp_path / "EURUSD_ticks.csv").write_text(MT5_TICKS)
    (tmp_path / "GBPUSD_M1_2026.csv").write_text(MT5_BARS)
    g = load_csv(tmp_path / "g.csv")
    assert g.kind == "ticks" and g.names == ["EURUSD", "GBPUSD"]
    assert g.records["ts_ns"].tolist() == [1767312000100000000, 1767312000250000000, 1767312001000000000]
    m = load_csv(tmp_path / "EURUSD_ticks.csv", "mt5")
    assert m.names == ["EURUSD"] and m.records["ask"].tolist() == [1.1002, 1.1004]  # empty bid: unchanged
    assert m.records["bid"].tolist() == [1.1, 1.1]
    bars = load_csv(tmp_path / "GBPUSD_M1_2026.csv", "mt5")
    assert bars.kind == "bars" and bars.records["timeframe_s"].tolist() == [60, 60]
    ticks, names = load_ticks([str(tmp_path / "GBPUSD_M1_2026.csv")], "mt5")
    assert len(ticks) == 8 and names == ["GBPUSD"]
    assert ticks["bid"][:4].tolist() == [1.1, 1.099, 1.102, 1.101]  # up bar: open, low, high, close
    assert ticks["ask"][0] == pytest.approx(1.1 + 12e-5)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("2026-01-02T00:00:01Z,EURUSD,abc,1.1", "3: bid 'abc' is not a number"),
        ("2026-01-02T00:00:01Z,EURUSD,nan,1.1", "3: bid is nan"),
        ("2026-01-02T00:00:01Z,EURUSD,0,1.1", "3: bid 0 is not a positive price"),
        ("2026-01-02T00:00:01Z,EURUSD,1.2,1.1", "3: ask 1.1 is below bid 1.2"),
        ("2026-01-01T00:00:01Z,EURUSD,1.1,1.2", "3: time goes backwards for EURUSD"),
        ("yesterday,EURUSD,1.1,1.2", "3:"),
        ("2026-01-02T00:00:01Z,EURUSD,1.1", "3: 3 fields, the header has 4"),
    ],
)
def test_bad_rows_are_refused_with_file_and_line(tmp_path: Path, row: str, message: str) -> None:
    f = tmp_path / "t.csv"
    f.write_text(f"time,symbol,bid,ask\n2026-01-02T00:00:00Z,EURUSD,1.1,1.1002\n{row}\n")
    with pytest.raises(DataError, match=re.escape(f"{f}:{message}")):
        load_csv(f)


def test_bad_files_are_refused_clearly(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot read"):
        load_csv(tmp_path / "missing.csv")
    (tmp_path / "h.csv").write_text("a,b,c\n1,2,3\n")
    with pytest.raises(DataError, match=r"h\.csv:1: header a,b,c has neither the tick columns"):
        load_csv(tmp_path / "h.csv")
    (tmp_path / "X_M1.csv").write_text(
        "<DATE>\t<TIME>\t<OPEN>\t<HIGH>\t<LOW>\t<CLOSE>\n2026.01.02\t00:00:00\t1\t0.9\t0.8\t1\n"
    )
    with pytest.raises(DataError, match=r"X_M1\.csv:2: high 0\.9 / low 0\.8 do not enclose"):
        load_csv(tmp_path / "X_M1.csv", "mt5")
