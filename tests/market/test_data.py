"""The sim market, the feed's limits and CSV data (generic and MT5 layouts)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from sovereign.config import from_dict
from sovereign.market.data import DataError, load_csv, load_ticks
from sovereign.market.feeds import Feed
from sovereign.market.sim import SimMarket

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
