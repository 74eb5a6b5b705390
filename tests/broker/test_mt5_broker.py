"""MT5Broker against the terminal simulator across the real cffi boundary (both faces of
the Linux library over one file): every fault of the venue, and after each the venue's
own books show every client id executed at most its ordered volume, once."""

from __future__ import annotations

import time
from decimal import Decimal
from pathlib import Path

import pytest

from sovereign.broker.base import Act, OrderRequest, Outcome, classify
from sovereign.broker.mt5 import MT5Broker, MT5Settings
from sovereign.broker.mt5sim import FAULTS, Faults, Simulator

MAGIC = 77
SYMBOLS = ["EURUSD", "GBPUSD", "XAUUSD"]  # the terminal has no XAUUSD


def settings(tmp_path: Path, **kw) -> MT5Settings:
    return MT5Settings(
        str(tmp_path / "bridge.sov"),
        MAGIC,
        SYMBOLS,
        settle_s=0.01,
        result_timeout_s=0.3,
        backoff_s=0.001,
        **kw,
    )


def make(tmp_path: Path, script: list[str] | None = None, hedging: bool = False,
         **faults) -> tuple[Simulator, MT5Broker]:  # fmt: skip
    sim = Simulator(
        tmp_path / "venue",
        str(tmp_path / "bridge.sov"),
        {"EURUSD": 1.1, "GBPUSD": 1.27},
        Faults(script=script or [], **faults),
        hedging,
    )
    sim.open()
    return sim, MT5Broker(settings(tmp_path))


def run(sim: Simulator, broker: MT5Broker, want: int, steps: int = 0) -> tuple[list[Outcome], list]:
    """Step both sides until `want` outcomes came (or `steps` steps, when given)."""
    outcomes: list[Outcome] = []
    deals: list = []
    deadline = time.monotonic() + 60
    i = 0
    while time.monotonic() < deadline and (not steps or i < steps):
        i += 1
        sim.step()
        time.sleep(0.0002)
        o, d = broker.poll()
        outcomes += o
        deals += d
        if len(outcomes) >= want and (want or steps):
            return outcomes, deals
    if steps:
        return outcomes, deals
    raise AssertionError(f"{len(outcomes)} outcomes of {want}: {broker.orders}, down: {broker.why_down}")


def executed(sim: Simulator) -> dict[int, float]:
    """Volume the venue executed per client id (its own books)."""
    out: dict[int, float] = {}
    for d in sim.venue.dump()["deals"]:
        if d["magic"] == MAGIC and d["comment"].isdigit():
            out[int(d["comment"])] = round(out.get(int(d["comment"]), 0) + d["volume"], 8)
    return out


def order(cid: int, symbol: int = 0, side: int = 1, volume: str = "0.10", **kw) -> OrderRequest:
    return OrderRequest(cid, symbol, side, Decimal(volume), **kw)


@pytest.mark.parametrize(
    ("fault", "state", "volume"),
    [
        ("ok", "FILLED", 0.1),
        ("requote", "FILLED", 0.1),  # re-priced and resent
        ("price_changed", "FILLED", 0.1),
        ("timeout_exec", "FILLED", 0.1),  # looked up: found, not resent
        ("timeout_noexec", "FILLED", 0.1),  # looked up twice: nothing, resent once
        ("connection_exec", "FILLED", 0.1),
        ("connection_noexec", "FILLED", 0.1),
        ("drop_exec", "FILLED", 0.1),  # no answer at all: timed out, looked up
        (
            "restart_exec",
            "FILLED",
            0.1,
        ),  # the terminal restarted after executing: reconnect, reconcile, look up
        ("restart_noexec", "FILLED", 0.1),  # ... before executing: the request died with the file
        ("unknown_noexec", "FILLED", 0.1),  # a code nobody documents is ambiguous: looked up first
        ("partial", "PARTIALLY_FILLED", 0.05),  # the rest canceled: never topped up under the same id
        ("reject", "REJECTED", 0.0),
    ],
)
def test_each_fault_executes_an_order_at_most_once(
    tmp_path: Path, fault: str, state: str, volume: float
) -> None:
    sim, broker = make(tmp_path, [fault])
    run(sim, broker, 0, 5)
    broker.submit([order(1)])
    outcomes, _ = run(sim, broker, 1)
    (o,) = outcomes
    assert (o.client_order_id, o.state) == (1, state), o
    assert executed(sim).get(1, 0.0) == volume
    assert o.volume == Decimal(str(volume)) or state == "REJECTED"
    broker.close()
    sim.close()


@pytest.mark.parametrize("fault", ["drop_exec", "connection_exec"])
def test_a_deal_whose_notice_was_lost_is_reported_once_found(tmp_path: Path, fault: str) -> None:
    """The venue executed the order but its deal notice was lost with the connection: the
    look-up finds it, and the deal itself must reach the engine too (chaos found risk's
    book short 0.18 EURUSD: the position's stop-loss close was applied, its opening deal
    never was)."""
    sim, broker = make(tmp_path, [fault])
    broker.submit([order(1)])
    outcomes, deals = run(sim, broker, 1)
    more: list = []
    for _ in range(20):
        sim.step()
        more += broker.poll()[1]
    assert outcomes[0].state == "FILLED" and executed(sim) == {1: 0.1}
    ours = [d for d in deals + more if d.client_order_id == 1]
    assert len(ours) == 1 and ours[0].ticket in outcomes[0].deals and not broker.fetching
    assert sum(broker.held["EURUSD"].values()) == Decimal("0.10")  # counted once: a close by its ticket works
    broker.submit([order(2, side=-1, reduce_only=True)])
    (closed,), _ = run(sim, broker, 1)
    assert closed.state == "FILLED" and sim.venue.positions() == []


def close(sim: Simulator, broker: MT5Broker, cid: int, side: int, volume: str) -> Outcome:
    """A reduce-only order's one outcome."""
    broker.submit([order(cid, side=side, volume=volume, reduce_only=True)])
    (o,), _ = run(sim, broker, 1)
    return o


def hedged_book(tmp_path: Path, script: list[str]) -> tuple[Simulator, MT5Broker, list[int]]:
    """A hedging account holding three EURUSD positions: ours (buy 0.10), then two opened
    while the engine was away (a manual buy 0.05, a manual sell 0.02): the engine learns
    them at the reconnect. The venue's tickets of the buys, oldest first."""
    sim, broker = make(tmp_path, ["ok", *script], hedging=True)
    broker.submit([order(1)])
    run(sim, broker, 1)
    sim.venue.trade("EURUSD", 1, 0.05, 1.1, 0, "", 0)
    sim.venue.trade("EURUSD", -1, 0.02, 1.1, 0, "", 0)
    sim.restart()
    for _ in range(50):
        sim.step()
        broker.poll()
    buys = [p["ticket"] for p in sim.venue.positions() if p["side"] > 0]
    assert len(buys) == 2 and len(broker.held["EURUSD"]) == 3 and broker.connected()[0]
    return sim, broker, buys


@pytest.mark.parametrize(
    ("fault", "state", "closed"),
    [
        ("ok", "FILLED", 0.15),
        ("timeout_exec", "FILLED", 0.15),  # the look-up finds both legs' deals: the second executed
        ("timeout_noexec", "FILLED", 0.15),  # ... only the first's: the second is resent
        ("connection_exec", "FILLED", 0.15),
        ("drop_exec", "FILLED", 0.15),
        ("restart_exec", "FILLED", 0.15),
        ("restart_noexec", "FILLED", 0.15),
        ("requote", "FILLED", 0.15),
        ("partial", "PARTIALLY_FILLED", 0.12),  # the venue canceled the rest: no third request
        ("reject", "PARTIALLY_FILLED", 0.10),  # what the first leg closed is reported
    ],
)
def test_a_close_on_a_hedging_account_closes_each_position_by_ticket_oldest_first(
    tmp_path: Path, fault: str, state: str, closed: float
) -> None:
    """A hedging account holds several positions per symbol; a reduce-only order closes them
    one request per position (a close by ticket never takes more than the position holds),
    oldest first, only those against its side, and under every fault of the second request
    none is closed twice and nothing new is opened. The old broker sent the net volume
    (0.13) against the last ticket it had seen (the manual sell): the venue opened a new
    short 0.13 instead of closing anything."""
    sim, broker, buys = hedged_book(tmp_path, ["ok", fault])
    o = close(sim, broker, 2, -1, "0.15")
    for _ in range(50):
        sim.step()
        broker.poll()
    assert (o.state, float(o.volume)) == (state, closed), o
    assert executed(sim)[2] == closed  # the venue's own books: each leg once
    ours = [d for d in sim.venue.dump()["deals"] if d["comment"] == "2"]
    assert all(d["entry"] == 1 for d in ours)  # every deal closes (DEAL_ENTRY_OUT): none opens
    left = {(p["side"], p["volume"]) for p in sim.venue.positions()}
    want = {"FILLED": {(-1, 0.02)}, "PARTIALLY_FILLED": {(-1, 0.02), (1, round(0.15 - closed, 2))}}[state]
    assert left == want, (left, ours)
    assert buys[0] not in {p["ticket"] for p in sim.venue.positions()}  # the oldest went first
    net = sum(p["side"] * p["volume"] for p in sim.venue.positions())
    assert abs(sum(broker.held["EURUSD"].values()) - Decimal(str(round(net, 8)))) < Decimal("1e-9")
    broker.close()
    sim.close()


def test_a_hedging_close_with_no_position_against_its_side_is_refused(tmp_path: Path) -> None:
    """A reduce-only sell closes buys only: with both closed, another has nothing to close
    and is refused (10036) though a sell position is open; a reduce-only buy closes that
    sell, never more than it holds."""
    sim, broker, _ = hedged_book(tmp_path, [])
    close(sim, broker, 2, -1, "0.15")
    o = close(sim, broker, 3, -1, "0.10")
    assert (o.state, o.retcode) == ("REJECTED", 10036) and 3 not in executed(sim)
    o = close(sim, broker, 4, 1, "0.10")
    assert (o.state, float(o.volume)) == ("PARTIALLY_FILLED", 0.02) and sim.venue.positions() == []
    broker.close()
    sim.close()


def test_a_netting_reversal_and_a_close_by_ticket_follow_mt5(tmp_path: Path) -> None:
    """The venue's rules the broker relies on: after a netting reversal the position's
    ticket (what a close names) is the reversing order's, while its identifier (what its
    deals name) stays (MQL5's Position Properties); a close by ticket for more than the
    position holds, or on its own side, is refused (10038, 10013) instead of opening a new
    position."""
    from sovereign.broker.mt5sim import Venue

    v = Venue(tmp_path / "netting")
    (opened,) = v.trade("EURUSD", 1, 0.10, 1.1, 77, "1", 3)
    (rev,) = v.trade("EURUSD", -1, 0.30, 1.1, 77, "2", 3)
    (pos,) = v.positions()
    assert rev["entry"] == 2 and rev["position"] == opened["position"] == pos["identifier"]
    assert pos["ticket"] == rev["order"] != opened["position"]
    assert (pos["side"], pos["volume"]) == (-1, 0.2)
    v.close()
    sim, broker = make(tmp_path, hedging=True)
    broker.submit([order(1)])
    run(sim, broker, 1)
    (p,) = sim.venue.positions()
    for side, volume, code in ((-1, 0.2, 10038), (1, 0.05, 10013)):
        broker._request(broker.L.SB_ACTION_DEAL, cid=9, symbol="EURUSD", side=side, volume=volume,
                        filling=0, position=p["ticket"])  # fmt: skip
        results = []
        for _ in range(20):
            sim.step()
            assert broker.bridge is not None
            results += [int(r["retcode"]) for r in broker.bridge.poll(broker.L.SB_RING_RESULTS)]
        assert results == [code]
    assert [(q["side"], q["volume"]) for q in sim.venue.positions()] == [(1, 0.1)]
    broker.close()
    sim.close()


def test_after_a_netting_reversal_a_close_names_the_new_ticket(tmp_path: Path) -> None:
    """A trade by hand reverses our netting position: the deal names the old identifier, the
    position now has the reversing order's ticket. A close by the identifier would be
    refused (10036) for as long as the engine runs: it closes by the new ticket."""
    sim, broker = make(tmp_path)
    broker.submit([order(1)])
    run(sim, broker, 1)
    for d in sim.venue.trade("EURUSD", -1, 0.30, 1.1, 0, "", 0):  # by hand, seen on the deal stream
        sim._deal_out(d)
    for _ in range(20):
        sim.step()
        broker.poll()
    (pos,) = sim.venue.positions()
    assert broker.held["EURUSD"] == {pos["ticket"]: Decimal("-0.2")}
    o = close(sim, broker, 2, 1, "0.20")
    assert (o.state, float(o.volume)) == ("FILLED", 0.2) and sim.venue.positions() == []
    broker.close()
    sim.close()


def test_a_close_the_terminal_takes_without_a_volume_is_looked_up_never_doubled(tmp_path: Path) -> None:
    """The terminal answers a leg PLACED (10008: taken, its deal follows) or DONE without a
    volume: nothing is known filled, so a next leg for the whole volume would close a second
    position (the review found 0.20 closed on an order of 0.10). It is looked up instead."""
    sim, broker, buys = hedged_book(tmp_path, [])
    real = sim.bridge.result

    def placed(rid, cid, action, code, deal=0, order_=0, volume=0.0, price=0.0, *a, **k):
        if code == 10009 and action == broker.L.SB_ACTION_DEAL:
            code, deal, volume = 10008, 0, 0.0
        return real(rid, cid, action, code, deal, order_, volume, price, *a, **k)

    sim.bridge.result = placed
    o = close(sim, broker, 2, -1, "0.10")
    assert (o.state, float(o.volume)) == ("FILLED", 0.1) and executed(sim)[2] == 0.1, o
    assert buys[0] not in {p["ticket"] for p in sim.venue.positions()}
    broker.close()
    sim.close()


def test_a_position_list_older_than_a_deal_does_not_bring_the_position_back(tmp_path: Path) -> None:
    """The first leg's notice is lost and found by look-up, which fetches the history and the
    positions; the list the terminal makes may predate the second leg's deal. The old broker
    took it over its book (the closed position came back, and every later close of the
    symbol was refused 10036); now it asks again, and its closes wait for the list."""
    sim, broker, _ = hedged_book(tmp_path, ["connection_exec", "ok"])
    o = close(sim, broker, 2, -1, "0.15")
    for _ in range(50):
        sim.step()
        broker.poll()
    assert (o.state, float(o.volume)) == ("FILLED", 0.15) and not broker.fetching
    venue = {p["ticket"]: p["side"] * p["volume"] for p in sim.venue.positions()}
    assert {t: float(v) for t, v in broker.held["EURUSD"].items()} == venue
    for d in sim.venue.trade("EURUSD", 1, 0.03, 1.1, 0, "", 0):
        sim._deal_out(d)
    o3 = close(sim, broker, 3, -1, "0.01")
    assert (o3.state, float(o3.volume)) == ("FILLED", 0.01), o3
    broker.close()
    sim.close()


def test_a_close_whose_position_is_gone_goes_on_to_the_next(tmp_path: Path) -> None:
    """A stop closed the oldest position while the engine was away (its book is behind): the
    leg for it is refused 10036, the broker drops it, asks for the list, and closes the next."""
    sim, broker, buys = hedged_book(tmp_path, [])
    (oldest,) = [p for p in sim.venue.positions() if p["ticket"] == buys[0]]
    sim.venue.close_position(oldest, 1.1, 4)  # its deal notice never reaches the engine
    o = close(sim, broker, 2, -1, "0.05")
    assert (o.state, float(o.volume)) == ("FILLED", 0.05) and executed(sim)[2] == 0.05, o
    assert [p["side"] for p in sim.venue.positions()] == [-1]
    broker.close()
    sim.close()


def test_a_resent_close_refused_10036_ends_the_order(tmp_path: Path) -> None:
    """After a resend, 10036 may mean the leg's own first request closed the position (its
    answer lost, the look-ups behind): the order ends there, and no other position is closed."""
    sim, broker, buys = hedged_book(tmp_path, ["timeout_noexec"])
    broker.submit([order(2, side=-1, volume="0.05", reduce_only=True)])
    for _ in range(2000):
        sim.step()
        broker.poll()
        if broker.orders[2].last_retcode == 10012:
            break
    (oldest,) = [p for p in sim.venue.positions() if p["ticket"] == buys[0]]
    sim.venue.close_position(oldest, 1.1, 4)  # gone meanwhile; its notice never comes
    (o,), _ = run(sim, broker, 1)
    assert (o.state, o.retcode) == ("REJECTED", 10036) and 2 not in executed(sim), o
    assert buys[1] in {p["ticket"] for p in sim.venue.positions()}
    broker.close()
    sim.close()


@pytest.mark.parametrize(("leg2", "state", "volume"), [("ok", "FILLED", "0.15"),
                                                      ("reject", "PARTIALLY_FILLED", "0.1")])  # fmt: skip
def test_a_close_cut_by_a_crash_is_resolved_in_whole_lots_as_the_book_has_it(
    tmp_path: Path, leg2: str, state: str, volume: str
) -> None:
    """The gateway dies with the second leg in flight; its successor looks the id up with the
    order as the book holds it: what the venue executed, in lots, FILLED or PARTIALLY_FILLED
    (the old one said FILLED 0.15000000000000002, or FILLED 0.1 of 0.15)."""
    sim, broker, _ = hedged_book(tmp_path, ["ok", leg2])
    request = order(2, side=-1, volume="0.15", reduce_only=True)
    broker.submit([request])
    for _ in range(400):
        sim.step()
        broker.poll()
        o = broker.orders.get(2)
        if o is not None and o.filled and o.state == "wait":
            break
    assert o is not None and o.filled and o.state == "wait"
    state_kept = broker.to_dict()
    broker.bridge = None  # the gateway died; the file stays the terminal's
    again = MT5Broker(settings(tmp_path), state_kept)
    again.resolve([2], {2: request})
    (out,), _ = run(sim, again, 1)
    assert (out.state, str(out.volume)) == (state, volume) and executed(sim)[2] == float(volume), out
    again.close()
    sim.close()


def test_retries_are_bounded(tmp_path: Path) -> None:
    sim, broker = make(tmp_path, ["requote"] * 10)
    broker.submit([order(1)])
    (o,), _ = run(sim, broker, 1)
    assert (o.state, o.retcode) == ("REJECTED", 10004) and executed(sim) == {}
    assert sim.requests == 1 + broker.s.max_reprice


def test_server_side_closes_and_manual_trades_are_reported_as_not_ours(tmp_path: Path) -> None:
    sim, broker = make(tmp_path, stopout_every=40, manual_every=25)
    mid = sim.mid["EURUSD"]
    broker.submit([order(1, sl=round(mid * 0.9999, 5)), order(2, symbol=1, side=-1)])
    deals: list = []
    for _ in range(200):
        sim.step()
        deals += broker.poll()[1]
    reasons = {d.reason for d in deals if d.client_order_id == 0}
    assert {0, 6} <= reasons  # manual trades and the stop-out, if not the stop first
    assert all(d.magic != MAGIC or d.client_order_id in (1, 2) or d.reason != 3 for d in deals)
    tickets = [d.ticket for d in deals]
    assert len(tickets) == len(set(tickets))  # each deal once
    assert sorted(tickets) == [d["ticket"] for d in sim.venue.dump()["deals"]]


def test_reconnect_replays_missed_deals_once_and_lists_positions(tmp_path: Path) -> None:
    sim, broker = make(tmp_path)
    broker.submit([order(1), order(2, symbol=1, side=-1, volume="0.20")])
    run(sim, broker, 2)
    sim.venue.trade("EURUSD", 1, 0.05, 1.1, 0, "", 0)  # a manual trade while the engine was away
    sim.restart()  # its notice was lost with the terminal's restart
    deals: list = []
    for _ in range(50):
        sim.step()
        deals += broker.poll()[1]
    assert [d.client_order_id for d in deals] == [0]  # only the one missed, once
    venue = {(p["symbol"], p["side"], p["volume"]) for p in sim.venue.positions()}
    assert {(SYMBOLS[p.symbol], p.side, float(p.volume)) for p in broker.open_positions()} == venue


def test_a_deal_after_the_position_list_is_not_counted_in_the_venue_book(tmp_path: Path) -> None:
    """A reconnect lists the terminal's positions; a deal on the server right after that list
    (a stop, a manual trade) may be read in the same turn as the list. The venue's book is as
    of the list, so its ticket must stay below that deal, whose report risk applies on top;
    stamped with the last deal read, risk skipped the deal and kept a closed position."""
    sim, broker = make(tmp_path)
    broker.submit([order(1)])
    run(sim, broker, 1)
    sim.restart()
    for _ in range(50):
        broker.poll()
        if broker.reconciling:
            break
    sim.step()  # answers the history and the position list
    for d in sim.venue.trade("EURUSD", -1, 0.1, 1.1, 0, "", 0):  # a manual close, just after the list
        sim._deal_out(d)
    while broker.reconciling:
        broker.poll()
    closing = sim.venue.dump()["deals"][-1]["ticket"]
    assert broker.last_deal == closing and broker.book_ticket < closing
    assert [(p.symbol, p.volume) for p in broker.open_positions()] == [(0, Decimal("0.10"))]  # as listed
    assert sim.venue.positions() == []


def test_a_crash_in_submitting_is_resolved_at_the_terminal_never_resent(tmp_path: Path) -> None:
    sim, broker = make(tmp_path, ["drop_exec"])
    broker.submit([order(1)])
    for _ in range(5):
        sim.step()
        broker.poll()
    broker.close()  # the engine dies: 1 executed without an answer; 2 never left
    state = broker.to_dict()
    again = MT5Broker(settings(tmp_path), state)
    again.resolve([1, 2])
    outcomes, _ = run(sim, again, 2)
    by = {o.client_order_id: o for o in outcomes}
    assert by[1].state == "FILLED" and by[2].state == "REJECTED"
    assert executed(sim) == {1: 0.1}


def test_a_restarted_engine_keeps_the_specs_the_terminal_sent_once(tmp_path: Path) -> None:
    """The terminal sends the symbols' specs when it creates the file, not again: an engine
    that died and came back on the same file trades on what its predecessor read (the chaos
    test's gateway kills found every order after one refused 10013, "no symbol EURUSD"),
    and a terminal restart (a new file, a new epoch) sends fresh ones."""
    sim, broker = make(tmp_path)
    run(sim, broker, 0, 5)
    assert set(broker.specs) == {"EURUSD", "GBPUSD"}
    state = broker.to_dict()
    broker.close()  # the gateway dies; its successor starts from the committed state
    again = MT5Broker(settings(tmp_path), state)
    again.submit([order(1)])
    (o,), _ = run(sim, again, 1)
    assert o.state == "FILLED" and executed(sim) == {1: 0.1}
    sim.restart()
    fresh = MT5Broker(settings(tmp_path), {**again.to_dict()})
    fresh.submit([order(2, symbol=1)])
    (o,), _ = run(sim, fresh, 1)
    assert o.state == "FILLED" and fresh.epoch != again.epoch and set(fresh.specs) == {"EURUSD", "GBPUSD"}


def test_bad_input_symbols_and_a_missing_terminal(tmp_path: Path) -> None:
    broker = MT5Broker(settings(tmp_path))
    broker.submit([order(1)])
    (o,), _ = broker.poll()
    assert o.state == "REJECTED" and "the bridge is down" in o.why and "is the terminal running" in o.why
    assert broker.connected() == (False, broker.why_down)
    sim = Simulator(tmp_path / "venue", str(tmp_path / "bridge.sov"), {"EURUSD": 1.1, "GBPUSD": 1.27})
    sim.open()
    broker.submit([order(2, symbol=2), order(3, symbol=7)])
    outcomes, _ = run(sim, broker, 2)
    assert {o.client_order_id: (o.state, o.retcode) for o in outcomes} == {
        2: ("REJECTED", 10013),
        3: ("REJECTED", 10013),
    }
    assert "the terminal has no symbol XAUUSD" in {o.client_order_id: o for o in outcomes}[2].why
    assert broker.connected()[0]


def test_the_bridge_file_must_belong_to_the_configured_terminal_user(tmp_path: Path) -> None:
    """The terminal runs as its own user and creates the file: mt5.terminal_uid names the
    owner the engine trusts (the default, its own uid, refuses the terminal's file)."""
    import os

    from sovereign.config import Config, Mt5Config
    from sovereign.engine.venue import mt5_settings

    other = os.geteuid() + 1
    cfg = Config(mt5=Mt5Config(bridge=str(tmp_path / "bridge.sov"), magic=MAGIC, symbols=tuple(SYMBOLS),
                               terminal_uid=other))  # fmt: skip
    s = mt5_settings(cfg, SYMBOLS)
    assert s.owner_uid == other
    sim = Simulator(tmp_path / "venue", s.bridge_path, {"EURUSD": 1.1})
    sim.open()  # a file of ours, not of the configured terminal user
    broker = MT5Broker(s)
    broker.poll()
    assert not broker.connected()[0] and f"only a regular file of uid {other}" in broker.why_down
    trusted = MT5Broker(mt5_settings(Config(mt5=Mt5Config(bridge=s.bridge_path, magic=MAGIC,
                                                          symbols=tuple(SYMBOLS))), SYMBOLS))  # fmt: skip
    run(sim, trusted, 0, 3)
    assert trusted.connected()[0]
    sim.close()


def test_a_garbage_record_is_skipped_and_reconciled(tmp_path: Path) -> None:
    from tests.broker.test_bridge import poke, slot_offset

    sim, broker = make(tmp_path)
    run(sim, broker, 0, 3)
    L = broker.L
    broker.submit([order(1)])
    sim.step()
    broker.poll()  # sent
    sim.step()  # executed: its deal and result are in the rings
    path = Path(broker.s.bridge_path)
    poke(path, slot_offset(path, L.SB_RING_DEALS, 0) + 30, b"\xde\xad")
    outcomes, _ = run(sim, broker, 1)
    assert outcomes[0].state == "FILLED" and broker.bridge is not None
    assert broker.bridge.stats(L.SB_RING_DEALS)["corrupt_skipped"] == 1
    assert executed(sim) == {1: 0.1}


def test_the_broker_holds_a_bounded_number_of_deals_and_a_full_replay_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 12-year run: the broker forgets a deal once it is reported, keeping the newest
    SEEN_DEALS tickets and the newest one dropped; a replay of the whole history (a state
    that lost its last deal) reports nothing twice."""
    import sovereign.broker.mt5 as mt5

    monkeypatch.setattr(mt5, "SEEN_DEALS", 8)
    sim, broker = make(tmp_path, manual_every=1)
    deals: list = []
    for step in range(120):
        if step == 60:
            broker.submit([order(1, volume="0.30")])
        sim.step()
        deals += broker.poll()[1]
    tickets = [d.ticket for d in deals]
    assert len(tickets) > 100 and len(tickets) == len(set(tickets))
    assert len(broker.seen) == 8 and broker.seen_floor == sorted(tickets)[-9]
    assert broker.deals_since(0) == [] and not broker.orders
    broker.last_deal = 0  # the next reconnect asks for the venue's whole history
    sim.restart()
    again: list = []
    for _ in range(30):
        sim.step()
        again += broker.poll()[1]
    assert [d for d in again if d.ticket in set(tickets)] == []
    assert len(broker.seen) == 8 and broker.last_deal == sim.venue.dump()["deals"][-1]["ticket"]


def test_unknown_retcodes_are_ambiguous() -> None:
    assert classify(10099) == Act.AMBIGUOUS and classify(10012) == Act.AMBIGUOUS
    assert classify(10004) == Act.REPRICE and classify(10027) == Act.OPERATOR and classify(10019) == Act.FINAL


def test_seeded_chaos_never_executes_an_order_twice(tmp_path: Path) -> None:
    odds = {f: 0.04 for f in FAULTS}  # every fault the simulator has
    sim, broker = make(tmp_path, odds=odds, seed=7, stopout_every=97, manual_every=53)
    n = 120
    outcomes: list[Outcome] = []
    for cid in range(1, n + 1):
        broker.submit([order(cid, symbol=cid % 2, side=1 if cid % 3 else -1)])
        outcomes += run(sim, broker, 1)[0]
    by = {o.client_order_id: o for o in outcomes}
    assert sorted(by) == list(range(1, n + 1))  # every order has one final answer
    done = executed(sim)
    for cid, o in by.items():
        assert done.get(cid, 0.0) <= 0.1  # at most its ordered volume, once
        assert float(o.volume) == done.get(cid, 0.0), (o, done.get(cid))
    assert sim.restarts > 0


def test_the_paper_broker_fits_the_same_interface() -> None:
    from sovereign.broker.paper import PaperBroker
    from sovereign.symbols import SymbolSpec

    paper = PaperBroker(Decimal(10_000), {0: SymbolSpec()})
    paper.on_tick(0, 1, 1.1, 1.1002)
    paper.submit([order(1), order(2, volume="0.001")])
    outcomes, deals = paper.poll()
    assert [(o.client_order_id, o.state) for o in outcomes] == [(1, "FILLED"), (2, "REJECTED")]
    assert [d.client_order_id for d in deals] == [1] and paper.deals_since(0) == deals
    assert paper.connected() == (True, "") and paper.open_positions()[0].volume == Decimal("0.10")
    paper.resolve([1, 3])
    assert [o.state for o in paper.poll()[0]] == ["FILLED", "REJECTED"]


@pytest.mark.parametrize("offset_min", [120, 180, -300, 0])
def test_the_bridge_carries_utc_whatever_zone_the_server_keeps(tmp_path: Path, offset_min: int) -> None:
    """A trade server stamps its ticks and deals in its own zone (brokers: commonly GMT+2, +3
    in summer); the bridge carries UTC, which the engine's calendar, trading day and request
    expiries are. Found by the MT5 soak: the EA took a request as expired by
    TimeTradeServer(), the server's zone, against an expiry set by the engine's UTC clock: on
    a GMT+2 server every order would have been canceled as expired, on a GMT-5 one a request
    stuck in the ring would have stayed executable for five hours."""
    sim = Simulator(tmp_path / "venue", str(tmp_path / "bridge.sov"), {"EURUSD": 1.1},
                    server_offset_min=offset_min)  # fmt: skip
    sim.open()
    broker = MT5Broker(settings(tmp_path))
    broker.submit([order(1)])
    outcomes, deals = run(sim, broker, 1)
    now_ms = time.time_ns() // 1_000_000
    assert [o.state for o in outcomes] == ["FILLED"], outcomes
    assert deals and all(abs(d.time_ms - now_ms) < 60_000 for d in deals), (deals, now_ms)
    ticks = broker.ticks()
    assert len(ticks) and abs(int(ticks["ts_ns"].max()) // 1_000_000 - now_ms) < 60_000
    assert sim.venue.deals_since(0)[0]["time_msc"] - deals[0].time_ms == offset_min * 60_000  # its zone
    # An expired request is canceled by the computer's clock, whatever the server's zone
    broker.s.request_ttl_ms = -1
    broker.submit([order(2)])
    outcomes, _ = run(sim, broker, 1)
    assert [(o.state, o.retcode) for o in outcomes] == [("REJECTED", 10007)], outcomes


def test_deals_and_ticks_run_on_one_clock_at_any_speed(tmp_path: Path) -> None:
    """The server stamps deals with the clock its ticks carry, also when the simulator runs
    market time faster than the wall: a soak's decade archived its deals in their own months
    only then (stamped by the wall clock, twelve years of deals all fell in its first month)."""
    sim = Simulator(tmp_path / "venue", str(tmp_path / "bridge.sov"), {"EURUSD": 1.1}, speed=100_000.0)
    sim.open()
    broker = MT5Broker(settings(tmp_path))
    time.sleep(0.05)  # market time runs ahead of the wall by an hour and more
    before = sim.market_ms()
    broker.submit([order(1)])
    _, deals = run(sim, broker, 1)
    after = sim.market_ms()
    ticks_ms = broker.ticks()["ts_ns"] // 1_000_000
    assert before - time.time_ns() // 1_000_000 > 3_600_000 and int(ticks_ms.max()) >= before
    assert deals and all(before <= d.time_ms <= after for d in deals), (deals, before, after)
