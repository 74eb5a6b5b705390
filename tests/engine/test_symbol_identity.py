"""Symbol ids are the state's (issue 22): positions, books, orders and agent snapshots are
keyed by a symbol's id, so a state's names keep their ids at every start whatever order the
feed's files come in; new names follow them; a stored list that cannot be one stops the start."""

from __future__ import annotations

import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest

from sovereign.config import Config, from_dict
from sovereign.core import ORDER_APPROVED, ORDER_FILL, TICK_DTYPE
from sovereign.engine.gateway import Gateway, make_broker
from sovereign.market.data import MAX_SYMBOLS, DataError, SymbolListError, load_ticks
from sovereign.market.feeds import Feed, feed_symbols
from sovereign.market.sim import SimMarket
from sovereign.state.store import StateStore
from tests.helpers import intent

NS = 1_000_000_000
T0 = 1_767_657_600 * NS  # 2026-01-06, a Tuesday
SCALE = {"EURUSD": (1.4353, 5), "USDJPY": (93.441, 3)}  # the prices, and their decimals


def write_csv(path: Path, rows: list[tuple[int, str, float]]) -> str:
    body = "".join(f"{ts},{s},{p},{p + 0.001},1\n" for ts, s, p in rows)
    path.write_text("time,symbol,bid,ask,volume\n" + body)
    return str(path)


def replay(*files: str) -> Config:
    return from_dict({"feed": {"kind": "replay", "files": list(files)}})


# ---- the mapping


def test_reordered_files_keep_the_stored_ids_and_new_names_follow(tmp_path: Path) -> None:
    eur = write_csv(tmp_path / "e.csv", [(T0 + k * NS, "EURUSD", 1.43) for k in range(5)])
    jpy = write_csv(tmp_path / "j.csv", [(T0 + k * NS + 1, "USDJPY", 93.4) for k in range(5)])
    gbp = write_csv(tmp_path / "g.csv", [(T0 + k * NS + 2, "GBPUSD", 1.61) for k in range(5)])
    stored = ["EURUSD", "USDJPY"]
    ticks, names = load_ticks([jpy, gbp, eur], known=stored)
    assert names == ["EURUSD", "USDJPY", "GBPUSD"]
    by_price = {round(float(t["bid"]), 2): int(t["symbol"]) for t in ticks}
    assert by_price == {1.43: 0, 93.4: 1, 1.61: 2}  # each tick carries its name's id
    assert feed_symbols(replay(jpy, gbp, eur), stored) == ("EURUSD", "USDJPY", "GBPUSD")
    assert feed_symbols(replay(jpy, eur)) == ("USDJPY", "EURUSD")  # a new state: order of appearance
    # a stored name the files no longer have keeps its id: no tick comes for it
    assert feed_symbols(replay(gbp), stored) == ("EURUSD", "USDJPY", "GBPUSD")
    feed = Feed(replay(gbp), ("EURUSD", "USDJPY", "GBPUSD"))
    assert set(feed.next(100)["symbol"].tolist()) == {2}
    with pytest.raises(DataError, match="symbols the system did not start with"):
        Feed(replay(gbp, eur), ("EURUSD",))


def test_the_sim_keeps_its_names_ids_beside_a_states_other_symbols() -> None:
    cfg = from_dict({"feed": {"symbols": 3}})
    wider = ("SIM000", "SIM001", "SIM002", "SIM003")  # a sim of 4 before: SIM003 stays
    assert feed_symbols(cfg, list(wider)) == wider
    names = feed_symbols(cfg, ["EURUSD", "SIM001"])
    assert names == ("EURUSD", "SIM001", "SIM000", "SIM002")
    got = Feed(cfg, names).next(3000)
    want = SimMarket(3).next(3000)  # the sim's own numbering: SIM000 is 0
    assert np.array_equal(got["symbol"], np.array([2, 1, 3], np.uint32)[want["symbol"]])
    assert np.array_equal(got["bid"], want["bid"])


@pytest.mark.parametrize(("stored", "why"), [
    ({"EURUSD": 0}, "not a list of symbol names"),
    (["EURUSD", 7], "not a list of symbol names"),
    (["EURUSD", "USDJPY", "EURUSD"], "names EURUSD twice"),
    (["EURUSD", "rm -rf /"], "is not 1-32 of"),
    ([f"S{k}" for k in range(MAX_SYMBOLS + 1)], f"holds {MAX_SYMBOLS + 1} symbols, more than"),
])  # fmt: skip
def test_a_stored_list_that_cannot_be_the_states_stops_the_start(tmp_path: Path, stored: object,
                                                                  why: str) -> None:  # fmt: skip
    eur = write_csv(tmp_path / "e.csv", [(T0, "EURUSD", 1.43)])
    with pytest.raises(SymbolListError, match=why) as e:
        feed_symbols(replay(eur), stored)
    assert "restore the state from a backup" in str(e.value)


def test_new_names_past_the_limit_stop_the_start(tmp_path: Path) -> None:
    eur = write_csv(tmp_path / "e.csv", [(T0, "EURUSD", 1.43)])
    with pytest.raises(DataError, match=f"the state's symbols and the data files: more than {MAX_SYMBOLS}"):
        feed_symbols(replay(eur), [f"S{k}" for k in range(MAX_SYMBOLS)])


# ---- a whole system restarted with its files swapped


def market_files(tmp: Path) -> dict[str, Path]:
    """Two days of EURUSD and USDJPY at the issue's prices (a seeded sim, scaled), a file
    per symbol and day."""
    ticks = SimMarket(2, seed=1, start_ns=T0, mean_interval_s=2.0).next(60_000)
    out = {}
    for s, (name, (px, dec)) in enumerate(SCALE.items()):
        mine = ticks[ticks["symbol"] == s]
        k = px / mine["bid"][0]
        for day, part in (("a", mine[: len(mine) * 2 // 3]), ("b", mine[len(mine) * 2 // 3 :])):
            bid = np.round(part["bid"] * k, dec)
            ask = np.maximum(np.round(part["ask"] * k, dec), bid + 10.0**-dec)
            rows = "".join(f"{t},{name},{b:.{dec}f},{a:.{dec}f},1\n"
                           for t, b, a in zip(part["ts_ns"], bid, ask, strict=True))  # fmt: skip
            (path := tmp / f"{name}_{day}.csv").write_text("time,symbol,bid,ask,volume\n" + rows)
            out[f"{name}_{day}"] = path
    return out


def run(tmp: Path, files: list[Path]) -> str:
    cfg = tmp / "sovereign.toml"
    cfg.write_text(config_text(tmp, files))
    r = subprocess.run([sys.executable, "-m", "sovereign.cli", "run", "--config", str(cfg)],
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0 and "stopped clean=True" in r.stdout, r.stdout + r.stderr
    return r.stdout


def config_text(tmp: Path, files: list[Path]) -> str:
    shown = ", ".join(f'"{f}"' for f in files)
    return (f'[system]\nstate_dir = "{tmp / "state"}"\nrecord_days = 0\nworkers = 2\n'
            f'[feed]\nkind = "replay"\nfiles = [{shown}]\n[symbols.USDJPY]\npoint = 0.001\n')  # fmt: skip


def in_scale(name: str, price: float) -> bool:
    return 0.5 < price / SCALE[name][0] < 2


def buy_eurusd(state: Path, cid: int) -> Decimal:
    """A EURUSD buy of 0.1 lot at 1.4353, sent to a stopped system's broker as its gateway
    sends an approved order; the broker's balance then. (Risk takes the broker's book at
    its next start.)"""
    cfg = from_dict({"symbols": {"USDJPY": {"point": 0.001}}})
    with StateStore(state) as store:
        names = store.read(lambda t: t.get("meta", "symbols"))
        assert names == ["EURUSD", "USDJPY"]
        gw = Gateway(store, make_broker(cfg, names))
        quote = np.zeros(1, TICK_DTYPE)
        quote[0] = (T0 + 86_400 * NS, 1.4351, 1.4353, 1.4352, 1.0, 0, 7, 0)
        gw.on_ticks(quote)
        buy = intent(symbol=0, side=1, price=1.4353, sl=0.0, tp=0.0, cid=cid)
        buy["kind"], buy["volume"] = ORDER_APPROVED, 0.1
        (filled,) = gw.on_orders(buy)
        assert filled["kind"] == ORDER_FILL and filled["price"] == 1.4353
        return Decimal(store.read(lambda t: t.get("bridge", "paper"))["ledger"]["balance"])


def test_a_position_keeps_its_instrument_when_the_feed_files_are_swapped(tmp_path: Path) -> None:
    """The issue's case: a EURUSD buy at 1.4353 is open; the system starts again with
    USDJPY's file first. The buy stays EURUSD's, marked and closed at EURUSD's prices: no
    absurd profit, no halt. (Before: the ids followed the files' order, so the buy became
    USDJPY's at 93.441.) Then a start without EURUSD's file: its id stays, and its open
    position is said to be unquoted."""
    files = market_files(tmp_path)
    state = tmp_path / "state"
    run(tmp_path, [files["EURUSD_a"], files["USDJPY_a"]])
    balance = buy_eurusd(state, 1 << 40)

    out = run(tmp_path, [files["USDJPY_b"], files["EURUSD_b"]])  # swapped, and the next day

    with StateStore(state, readonly=True) as st:
        names, broker, risk, orders, events = st.read(lambda t: (
            t.get("meta", "symbols"), t.get("bridge", "paper"), t.get("risk", "state"),
            [v for _, v in t.items("orders")], [v for _, v in t.items("journal")]))  # fmt: skip
    assert names == ["EURUSD", "USDJPY"], out  # the stored ids, whatever the files' order
    assert risk["state"] != "HALTED" and not [e for e in events if "halt" in e["event"]], out
    for s, pos in broker["ledger"]["positions"].items():  # every open lot at its instrument's scale
        assert all(in_scale(names[int(s)], float(price)) for _, price in pos["lots"]), (names[int(s)], pos)
    bought = broker["ledger"]["positions"].get("0", {"lots": []})["lots"]
    filled = [o for o in orders if o["client_order_id"] != 1 << 40 and o["state"] == "FILLED"]
    assert ["0.1", "1.4353"] in bought or any(o["symbol"] == 0 for o in filled)  # still open, or closed
    for o in filled:  # at its instrument's prices, with a P&L a 0.1-lot FX trade can make
        assert in_scale(names[o["symbol"]], float(o["fill_price"])), o
        assert abs(Decimal(o["realized_pnl"])) < 5_000, o
    assert abs(Decimal(broker["ledger"]["balance"]) - balance) < 10_000

    buy_eurusd(state, 1 << 41)
    out = run(tmp_path, [files["USDJPY_b"]])  # EURUSD's file left out: nothing is left to feed
    with StateStore(state, readonly=True) as st:
        names, events = st.read(lambda t: (t.get("meta", "symbols"), [v for _, v in t.items("journal")]))
    assert names == ["EURUSD", "USDJPY"]
    (told,) = [e for e in events if e["event"] == "positions_unquoted"]
    assert told["symbols"] == ["EURUSD"] and "gateway: open positions on EURUSD" in out
