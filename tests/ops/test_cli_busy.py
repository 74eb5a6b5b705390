"""`sovereign status` and `positions` while the control socket is busy (every slot holds a
request not yet answered): they say so and print the stored state, as when the system is
down."""

from __future__ import annotations

import threading
from pathlib import Path

import orjson

from sovereign.engine.control import MAX_CLIENTS, request
from sovereign.state.schema import BOOK_KEY, RISK_STATE_KEY
from sovereign.state.store import StateStore
from tests.engine.test_control import Served, wait_until
from tests.ops.test_ops import sov


def test_status_and_positions_show_the_stored_state_when_the_socket_stays_busy(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with StateStore(state) as st:
        st.write(lambda t: (
            t.put("risk", RISK_STATE_KEY, {"state": "HALTED", "why": "stored", "equity": "1000",
                                           "peak": "1000", "day_start": "1000"}),
            t.put("meta", "symbols", ["EURUSD"]),
            t.put("positions", BOOK_KEY, {"balance": "1000", "positions": {"0": {
                "lots": [["1", "1.1"]], "sl": None, "tp": None}}}),
        ))  # fmt: skip
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[system]\nstate_dir = "{state}"\n')
    served = Served(state / "control.sock")
    holds = [threading.Thread(target=request, args=(served.path, "hold")) for _ in range(MAX_CLIENTS)]
    try:
        for t in holds:
            t.start()
        wait_until(lambda: len(served.held) == MAX_CLIENTS, "every slot to hold a request")
        r = sov("status", config=cfg, check=1)
        assert "busy" in r.stdout and "stored" in r.stdout and "HALTED" in r.stdout, r.stdout + r.stderr
        data = orjson.loads(sov("status", "--json", config=cfg, check=1).stdout)
        assert data["running"] is True and data["live"] is False and "busy" in data["busy"]
        assert data["account"]["state"] == "HALTED" and data["account"]["stale"] is True
        out = sov("positions", config=cfg).stdout
        assert "EURUSD" in out and "(the control socket is busy: no prices" in out
    finally:
        for cid in served.held:
            served.answer_held(cid, "released")
        for t in holds:
            t.join()
        served.close()
