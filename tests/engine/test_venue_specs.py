"""On an outside venue (broker.kind = "mt5") risk sizes with the trading specs the terminal
sent, not the config's (issue 23): a symbol whose specs have not come is refused, and a
contract size or lot step of the terminal's is what the volume is computed and rounded by."""

from __future__ import annotations

import time
from decimal import Decimal
from pathlib import Path
from typing import Any

from sovereign.config import from_dict
from sovereign.engine.risk import Risk
from sovereign.model import Reason
from sovereign.state.schema import VENUE_SPECS_KEY
from sovereign.symbols import symbol_specs
from tests.helpers import NS, ids, intent, quotes_at

MT5 = {"broker": {"kind": "mt5"}, "mt5": {"bridge": "/nonexistent/b.sov", "magic": 7, "symbols": ["EURUSD"]},
       "risk": {"max_symbol_exposure": 100.0, "max_gross_exposure": 100.0}}  # fmt: skip


def venue_risk() -> Risk:
    cfg = from_dict(MT5)
    return Risk(cfg, symbol_specs(cfg, 4), ids())


def spec(contract: str = "100000", step: str = "0.01", lo: str = "0.01", hi: str = "100") -> dict[str, Any]:
    return {"contract_size": contract, "lot_step": step, "min_lot": lo, "max_lot": hi, "point": "0.00001",
            "stops_level": 0}  # fmt: skip


def test_a_symbol_without_the_terminals_specs_is_refused() -> None:
    r = venue_risk()
    ok, refused = r.on_intents(intent(), quotes_at(1.1000, 1.1002), 1000 * NS)
    assert len(ok) == 0 and [why for _, why in refused] == [Reason.NO_SPEC]
    r.set_venue_specs({1: spec()})  # another symbol's: still none for symbol 0
    _, refused = r.on_intents(intent(cid=2), quotes_at(1.1000, 1.1002), 1000 * NS)
    assert [why for _, why in refused] == [Reason.NO_SPEC]


def test_risk_sizes_and_rounds_with_the_terminals_contract_and_lot_step() -> None:
    r = venue_risk()
    r.set_venue_specs({0: spec(contract="10000", step="0.1", hi="50")})  # a mini-lot account
    ok, refused = r.on_intents(intent(), quotes_at(1.1000, 1.1002), 1000 * NS)
    # 100000 * 0.005 = 500 at risk; 0.005 price distance * 10000 per lot = 50 per lot -> 10 lots
    assert not refused and ok[0]["volume"] == 10.0
    ok, _ = r.on_intents(intent(risk=0.00333, cid=2, symbol=0), quotes_at(1.1000, 1.1002), 1000 * NS)
    assert len(ok) == 0 or ok[0]["volume"] == 6.6  # 6.66 rounded down to the terminal's step of 0.1
    (event,) = [e for e in r.events if e["event"] == "venue_specs"]
    assert event["symbols"]["0"] == {"contract_size": "10000", "lot_step": "0.1", "max_lot": "50"}
    assert event["known"] == [0]
    assert r.ledger.specs[0].contract_size == 10000  # the ledger values P&L by the same contract


def test_the_paper_broker_keeps_the_configs_specs() -> None:
    cfg = from_dict({"risk": {"max_symbol_exposure": 100.0, "max_gross_exposure": 100.0}})
    r = Risk(cfg, symbol_specs(cfg, 4), ids())
    assert r.venue_known is None
    ok, refused = r.on_intents(intent(), quotes_at(1.1000, 1.1002), 1000 * NS)
    assert not refused and ok[0]["volume"] == 1.0


def test_the_venue_gateway_commits_the_terminals_specs_for_risk(tmp_path: Path) -> None:
    """The gateway's first turn commits the specs it has (a state of an older version had
    them only inside the broker's own state), and risk's record of them is by symbol index."""
    from sovereign.broker.mt5sim import Simulator
    from tests.broker.test_mt5_system import broker_on

    sim = Simulator(tmp_path / "venue", str(tmp_path / "bridge.sov"), {"EURUSD": 1.1, "GBPUSD": 1.3})
    sim.open()
    store, gw = broker_on(tmp_path, ["EURUSD", "GBPUSD"])
    try:
        deadline = time.monotonic() + 30
        saved = None
        while saved is None or len(saved["by_symbol"]) < 2:
            assert time.monotonic() < deadline, saved
            sim.step()
            gw.turn()
            saved = store.read(lambda t: t.get("bridge", VENUE_SPECS_KEY))
            time.sleep(0.001)
    finally:
        gw.broker.close()
        sim.close()
        sim.venue.close()
        store.close()
    assert saved is not None and sorted(saved["by_symbol"]) == ["0", "1"], saved
    eurusd = saved["by_symbol"]["0"]
    assert Decimal(eurusd["contract_size"]) == 100_000 and Decimal(eurusd["lot_step"]) == Decimal("0.01")
