"""The whole system on an MT5 account: `sovereign run` with broker.kind = "mt5" against
`sovereign mt5 simulate` running as its own process (real processes, the real library
across cffi). Orders flow and fill, stops and targets closed on the server are adopted,
risk's book is the venue's; a terminal that is not there at start, one without a symbol,
and a bridge file of another version are each reported, and nothing is opened meanwhile."""

from __future__ import annotations

import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sovereign.broker.bridge import Bridge
from sovereign.broker.mt5 import MT5Broker
from sovereign.broker.mt5sim import Simulator
from sovereign.config import from_dict, load
from sovereign.engine.venue import VenueGateway, mt5_settings
from sovereign.market.data import DataError
from sovereign.ops import maintenance
from sovereign.research.replay import load_session, replay
from sovereign.state.schema import BRIDGE_STATUS_KEY
from sovereign.state.store import StateStore
from tests.helpers import LiveSystem, VenueSim, mt5_tables, mt5_violations

pytestmark = pytest.mark.slow


def journal(state: Path, *events: str) -> list[dict[str, Any]]:
    try:
        with StateStore(state, readonly=True) as st:
            return st.read(lambda t: [v for _, v in t.items("journal") if v.get("event") in events])
    except Exception:  # not created yet
        return []


def bridge_status(state: Path) -> dict[str, Any]:
    try:
        with StateStore(state, readonly=True) as st:
            return st.read(lambda t: t.get("bridge", BRIDGE_STATUS_KEY)) or {}
    except Exception:
        return {}


def wait(what: Callable[[], Any], timeout: float, why: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = what()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout:g} s: {why}")


def system(tmp_path: Path, venue: VenueSim, symbols: list[str], **tables: dict[str, object]) -> LiveSystem:
    cfg = tmp_path / "sovereign.toml"
    cfg.write_text(mt5_tables(tmp_path / "state", venue, symbols, **tables))
    return LiveSystem(cfg, tmp_path / "supervisor.log")


def test_the_system_trades_the_venue_and_its_book_is_the_venues(tmp_path: Path) -> None:
    venue = VenueSim(tmp_path / "venue", faults={"odds": {"requote": 0.05, "timeout_exec": 0.05}})
    live = system(tmp_path, venue, ["EURUSD", "GBPUSD"], system={"record_days": 1})
    state = tmp_path / "state"
    venue.start()
    try:
        live.start()
        live.wait_healthy(60)
        wait(lambda: bridge_status(state).get("connected"), 30, "the bridge connects")
        fills = wait(lambda: len(journal(state, "fill")) >= 4 and journal(state, "fill"), 120, "four fills")
        adopted = wait(lambda: [e for e in journal(state, "adopted") if e["source"] in ("stop_loss",
                                                                                      "take_profit")],
                       120, "a stop or target closed on the server is adopted")  # fmt: skip
        assert bridge_status(state)["account"] == "netting"  # doctor says which
        checks = maintenance.doctor(load(tmp_path / "sovereign.toml"))
        (doctor,) = [c for c in checks if c.name == "mt5 bridge"]
        assert doctor.status == "ok" and doctor.detail.endswith("a netting account"), doctor
        assert live.stop() == 0
        assert "stopped clean=True" in live.tail(2000)
    finally:
        live.close()
        venue.stop()
    dump = venue.dump()
    assert mt5_violations(state, dump) == []
    assert fills and adopted
    assert any(d["reason"] in (4, 5) for d in dump["deals"])
    # risk sized with the terminal's specs of both symbols (issue 23), not the config's
    assert [e["known"] for e in journal(state, "venue_specs")][:1] == [[0, 1]]
    # the terminal's ticks are recorded: a strategy runs on them; the orders are not replayed
    session = load_session(state / "recordings")
    assert len(session.market.records) > 100 and list(session.market.names) == ["EURUSD", "GBPUSD"]
    with pytest.raises(DataError, match="traded an MT5 account: its fills came from the venue"):
        replay(session)
    files = sorted((state / "recordings").glob("ticks-*.sovdata"))
    run = subprocess.run([sys.executable, "-m", "sovereign.cli", "backtest", *map(str, files), "--out",
                          str(tmp_path / "bt")], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr


def test_a_terminal_absent_at_start_is_reported_and_joined_when_it_comes(tmp_path: Path) -> None:
    venue = VenueSim(tmp_path / "venue")
    (tmp_path / "venue").mkdir()
    live = system(tmp_path, venue, ["EURUSD"])
    state = tmp_path / "state"
    try:
        live.start()
        live.wait_healthy(60)  # the engine runs without its terminal
        down = wait(lambda: "bridge.sov" in bridge_status(state).get("why", "") and bridge_status(state), 30,
                    "the bridge's status says why it is down")  # fmt: skip
        assert down["connected"] is False, down
        time.sleep(2.0)
        assert journal(state, "order") == []  # no quote came: nothing opened
        venue.start()
        wait(lambda: bridge_status(state).get("connected"), 30, "the bridge connects once the terminal is up")
        assert live.stop() == 0
    finally:
        live.close()
        venue.stop()
    assert [e["connected"] for e in journal(state, "bridge")][:2] == [False, True]


def broker_on(tmp_path: Path, symbols: list[str]) -> tuple[StateStore, VenueGateway]:
    cfg = from_dict({"broker": {"kind": "mt5"}, "mt5": {"bridge": str(tmp_path / "bridge.sov"), "magic": 77,
                                                        "symbols": symbols}})  # fmt: skip
    store = StateStore(tmp_path / "state")
    return store, VenueGateway(store, MT5Broker(mt5_settings(cfg, symbols)), fresh=True)


def test_a_symbol_the_terminal_lacks_is_a_clear_error(tmp_path: Path) -> None:
    sim = Simulator(tmp_path / "venue", str(tmp_path / "bridge.sov"), {"EURUSD": 1.1})
    sim.open()
    store, gw = broker_on(tmp_path, ["EURUSD", "XAUUSD"])
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            sim.step()
            gw.turn()
            st = store.read(lambda t: t.get("bridge", BRIDGE_STATUS_KEY))
            if st and st["missing"]:
                break
            time.sleep(0.001)
        assert st["missing"] == ["XAUUSD"] and "the terminal has no symbol XAUUSD" in st["why"], st
    finally:
        gw.broker.close()
        sim.close()
        sim.venue.close()
        store.close()


def test_a_bridge_file_of_another_version_is_reported_not_mapped(tmp_path: Path) -> None:
    path = tmp_path / "bridge.sov"
    with Bridge.terminal(str(path)):
        with open(path, "r+b") as f:  # the ABI version, as a terminal with another DLL would write it
            f.seek(8)
            f.write(struct.pack("<I", 99))
        store, gw = broker_on(tmp_path, ["EURUSD"])
        try:
            gw.turn()
            st = store.read(lambda t: t.get("bridge", BRIDGE_STATUS_KEY))
            assert st["connected"] is False and "ABI version 99" in st["why"], st
        finally:
            gw.broker.close()
            store.close()
