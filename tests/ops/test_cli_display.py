"""What the read commands print, from a stored state that holds raw free text (written
before text was escaped at input, or by a data file or a broker): one line per record,
control characters shown as escapes, never read as terminal codes or as table markup."""

from __future__ import annotations

from pathlib import Path

from sovereign.state.schema import BOOK_KEY, RISK_STATE_KEY
from sovereign.state.store import StateStore
from tests.ops.test_ops import sov

RAW = "x\nsovereign: stopped clean=True\x1b[2K\x1b[31m [/] [bold]"


def _stored(tmp: Path) -> Path:
    state = tmp / "state"
    with StateStore(state) as st:
        st.write(lambda t: (
            t.put("meta", "symbols", ["EUR\x1b[31mUSD[/]"]),
            t.put("risk", RISK_STATE_KEY, {"state": "HALTED", "why": RAW + "y" * 60_000, "equity": "1000",
                                      "peak": "1000", "day_start": "1000"}),
            t.put("positions", BOOK_KEY, {"balance": "1000", "positions": {"0": {
                "lots": [["1", "1.1"]], "sl": None, "tp": None}}}),
            t.put("orders", 1, {"client_order_id": 1, "state": "REJECTED", "symbol": 0, "side": 1,
                                "reason": RAW}),
            t.journal("operator", command="halt", reason=RAW + "z" * 60_000),
        ))  # fmt: skip
    cfg = tmp / "c.toml"
    cfg.write_text(f'[system]\nstate_dir = "{state}"\n')
    return cfg


def test_raw_stored_text_is_shown_escaped_and_bounded(tmp_path: Path) -> None:
    cfg = _stored(tmp_path)
    shown = {
        "journal": sov("journal", config=cfg).stdout,
        "status": sov("status", config=cfg, check=3).stdout,  # stopped: the stored state
        "positions": sov("positions", config=cfg).stdout,
        "orders": sov("orders", config=cfg).stdout,
    }
    for cmd, out in shown.items():
        assert "\x1b" not in out, cmd
        assert not any(line.startswith("sovereign: stopped") for line in out.splitlines()), cmd
        assert max(len(line) for line in out.splitlines()) < 1200, cmd  # not 60 kB
    flat = {cmd: out.replace("\n", "") for cmd, out in shown.items()}  # rich wraps at 240 columns
    assert "reason=x\\nsovereign: stopped clean=True\\x1b[2K\\x1b[31m [/] [bold]" in flat["journal"]
    assert "(x\\nsovereign: stopped clean=True\\x1b[2K\\x1b[31m [/] [bold]" in flat["status"]
    assert "EUR\\x1b[31mUSD[/]" in flat["positions"] and "EUR\\x1b[31mUSD[/]" in flat["orders"]
