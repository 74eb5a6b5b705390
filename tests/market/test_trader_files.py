"""The files traders have (issue 25, items 2 and 5): single-symbol CSVs in the forms
charting sites, MetaTrader, Dukascopy and spreadsheets write, Parquet in and out, the
timeframe told from the data, bad data refused clearly (exit 2), and `data sample`."""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sovereign.market.data import MAX_LINE, DataError, load_csv
from sovereign.market.datafile import info, load, save
from sovereign.market.sample import sample

CLI = [sys.executable, "-m", "sovereign.cli"]
H0 = 1767312000 * 10**9  # 2026-01-02T00:00:00Z
BAR_ROWS = [(1.1, 1.102, 1.099, 1.101), (1.101, 1.103, 1.1, 1.1005), (1.1005, 1.104, 1.1, 1.102)]


def write(tmp_path: Path, name: str, text: str, encoding: str = "utf-8") -> Path:
    f = tmp_path / name
    f.write_bytes(text.encode(encoding))
    return f


def bars_csv(header: str, times: list[str], sep: str = ",", extra: str = "") -> str:
    rows = [
        sep.join([t, *map(str, px), *([extra] if extra else [])])
        for t, px in zip(times, BAR_ROWS, strict=False)
    ]
    return header + "\n" + "\n".join(rows) + "\n"


# ---- the CSV forms


@pytest.mark.parametrize(
    ("name", "text", "symbol"),
    [
        (
            "EURUSD_H1.csv",
            bars_csv(
                "time,open,high,low,close,volume",
                ["2026-01-02T00:00:00Z", "2026-01-02T01:00:00Z", "2026-01-02T02:00:00Z"],
                extra="5",
            ),
            "EURUSD",
        ),  # a charting site's export
        (
            "eurusd h1.csv",
            bars_csv(
                "Datetime;Open;High;Low;Close",
                ["2026.01.02 00:00", "2026.01.02 01:00", "2026.01.02 02:00"],
                sep=";",
            ),
            "eurusd",
        ),  # MetaTrader dates, semicolons
        (
            "X.csv",
            bars_csv(
                "TIMESTAMP\tOPEN\tHIGH\tLOW\tCLOSE", ["1767312000", "1767315600", "1767319200"], sep="\t"
            ),
            "X",
        ),  # epoch seconds, tabs, upper case
        (
            "X.csv",
            bars_csv("timestamp,open,high,low,close", ["1767312000000", "1767315600000", "1767319200000"]),
            "X",
        ),  # epoch milliseconds
        (
            "X.csv",
            bars_csv(
                "Gmt time,Open,High,Low,Close,Volume",
                ["02.01.2026 00:00:00.000", "02.01.2026 01:00:00.000", "02.01.2026 02:00:00.000"],
                extra="1",
            ),
            "X",
        ),  # Dukascopy: day first
        (
            "X.csv",
            bars_csv(
                "time,open,high,low,close",
                ["2026-01-02T02:00:00+02:00", "2026-01-02 03:00:00+02:00", "2026-01-02T04:00:00+02:00"],
            ),
            "X",
        ),  # an offset
    ],
)
def test_single_symbol_bar_files_in_their_many_forms(
    tmp_path: Path, name: str, text: str, symbol: str
) -> None:
    m = load([str(write(tmp_path, name, text))])
    assert m.kind == "bars" and m.names == [symbol]
    assert m.records["ts_ns"].tolist() == [H0, H0 + 3600 * 10**9, H0 + 7200 * 10**9]
    assert m.records["close"].tolist() == [1.101, 1.1005, 1.102]
    assert m.timeframe_s == 3600 and m.meta["timeframes_s"] == {symbol: 3600}
    assert m.notes == [f"{tmp_path / name}: symbol {symbol} from the file name (--symbol sets it)"]


def test_yahoo_style_daily_bars_with_adj_close_a_bom_and_a_symbol_option(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        "data.csv",
        "\ufeff"
        + bars_csv(
            "Date,Open,High,Low,Close,Adj Close", ["2026-01-02", "2026-01-05", "2026-01-06"], extra="0.5"
        ),
    )
    m = load([str(f)], symbol="SPY")
    assert m.names == ["SPY"] and m.notes == [f"{f}: symbol SPY from --symbol"]
    assert m.records["close"].tolist() == [1.101, 1.1005, 1.102]  # not Adj Close's 0.5
    assert m.timeframe_s == 86400  # the weekend is a gap, not the timeframe
    assert info(m)["symbols"][0]["gaps"] == 1


def test_metatrader_date_and_time_columns_and_a_decimal_comma(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        "GBPUSD_M1.csv",
        "Date;Time;Open;High;Low;Close;TickVol\n"
        "2026.01.02;00:00;1,27;1,2702;1,2699;1,2701;12\n2026.01.02;00:01;1,2701;1,2703;1,27;1,2702;9\n",
    )
    m = load([str(f)])
    assert m.names == ["GBPUSD"] and m.timeframe_s == 60
    assert m.records["open"].tolist() == [1.27, 1.2701] and m.records["volume"].tolist() == [12, 9]


def test_an_mt5_export_is_recognised_without_its_layout(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        "EURUSD_M5_2026.csv",
        "<DATE>\t<TIME>\t<OPEN>\t<HIGH>\t<LOW>\t<CLOSE>\t<TICKVOL>\t<VOL>\t<SPREAD>\n"
        "2026.01.02\t00:00:00\t1.1\t1.102\t1.099\t1.101\t40\t0\t12\n"
        "2026.01.02\t00:05:00\t1.101\t1.103\t1.1\t1.1005\t20\t0\t10\n",
    )
    m = load([str(f)])
    assert m.names == ["EURUSD"] and m.timeframe_s == 300 and m.records["spread"].tolist() == [12, 10]


def test_tick_files_epoch_units_and_fractions(tmp_path: Path) -> None:
    for unit, scale in (("s", 1), ("ms", 10**3), ("us", 10**6), ("ns", 10**9)):
        stamp = [str(1767312000 * scale), str(1767312001 * scale)]
        f = write(
            tmp_path, f"EURUSD_{unit}.csv", f"time,bid,ask\n{stamp[0]},1.1,1.1002\n{stamp[1]},1.1001,1.1003\n"
        )
        assert load([str(f)]).records["ts_ns"].tolist() == [H0, H0 + 10**9], unit
    f = write(tmp_path, "EURUSD.csv", "time,bid,ask\n1767312000.25,1.1,1.1002\n")
    assert load([str(f)]).records["ts_ns"].tolist() == [H0 + 250_000_000]
    f = write(tmp_path, "EURUSD_9.csv", "time,bid,ask\n2026-01-02T00:00:00.123456789Z,1.1,1.1002\n")
    assert load([str(f)]).records["ts_ns"].tolist() == [H0 + 123_456_789]  # to the nanosecond


def test_slash_dates_are_settled_by_the_whole_file(tmp_path: Path) -> None:
    rows = "".join(f"{d},1.1,1.1002\n" for d in ("01/02/2026 00:00", "01/02/2026 00:01", "25/02/2026 00:00"))
    assert (
        load([str(write(tmp_path, "A.csv", "time,bid,ask\n" + rows))]).records["ts_ns"][0]
        == H0 + 30 * 86400 * 10**9
    )  # 1 February
    rows = "".join(f"{d},1.1,1.1002\n" for d in ("01/02/2026 00:00", "02/25/2026 00:00"))
    assert load([str(write(tmp_path, "B.csv", "time,bid,ask\n" + rows))]).records["ts_ns"][0] == H0


def test_identical_ticks_in_one_millisecond_are_kept(tmp_path: Path) -> None:
    row = "2026-01-02T00:00:00.001Z,1.1,1.1002\n"
    m = load([str(write(tmp_path, "EURUSD.csv", "time,bid,ask\n" + row * 3))])
    assert len(m.records) == 3


# ---- bad data: refused, naming the file, the line and what is wrong


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "time,open,high,close\n2026-01-02,1,1,1\n",
            r"X\.csv:1: no low column for bars \(they need time, open, high, low, close\); "
            r"the header has: time, open, high, close",
        ),
        ("date,bid\n2026-01-02,1\n", r"no ask column for ticks .* the header has: date, bid"),
        ("price,qty\n1,2\n", r"header price,qty has neither the tick columns"),
        ("2026.01.02,00:00,1.1,1.2,1.0,1.1,100\n", r"X\.csv:1: no header row \(the first line is data\)"),
        ("1767312000000,1.1,1.2,1.0,1.1,100\n", r"X\.csv:1: no header row"),
        (
            "time;bid,ask\n2026-01-02,1,1.1\n",
            r"X\.csv:1: mixed separators in the header \(comma and semicolon\)",
        ),
        (
            "time;bid;ask\n2026-01-02;1.1;1.2\n2026-01-03,1.1,1.2\n",
            r"X\.csv:3: fields separated by comma where the header uses semicolon",
        ),
        (
            "time,bid,ask\n20260102,1.1,1.2\n",
            r"X\.csv:2: time 20260102 is ambiguous: a date written without separators",
        ),
        ("time,bid,ask\n12,1.1,1.2\n", r"X\.csv:2: time 12 is ambiguous: too small to tell"),
        ("time,bid,ask\n03/04/2026,1.1,1.2\n", r"cannot be told apart: write dates as ISO 8601"),
        (
            "time,bid,ask\n1767312000,1.1,1.2\n1767312001000,1.1,1.2\n",
            r"X\.csv:3: time 1767312001000 looks like milliseconds where the file's first time is in seconds",
        ),
        (
            "time,bid,ask\n2026-01-02T00:00:01Z,1.1,1.2\n2026-01-02T00:00:00Z,1.1,1.2\n",
            r"X\.csv:3: time goes backwards for X \(2026-01-02T00:00:00Z, after 2026-01-02T00:00:01Z\)",
        ),
        (
            "time,bid,ask\n2300-01-01T00:00:00Z,1.1,1.2\n",
            r"X\.csv:2: time 2300-01-01T00:00:00Z is past 2262-04-11",
        ),
        (
            "time,bid,ask\n1969-12-31T23:59:59Z,1.1,1.2\n",
            r"X\.csv:2: time 1969-12-31T23:59:59Z is before 1970-01-01",
        ),
        ("time,bid,ask\n-1000,1.1,1.2\n", r"X\.csv:2: time -1000 is before 1970-01-01"),
        ("time,bid,ask\n99999999999999999999,1.1,1.2\n", r"X\.csv:2: time 99999999999999999999 is past 2262"),
        ("time,bid,ask\n2026-02-30,1.1,1.2\n", r"X\.csv:2: time 2026-02-30: no such date"),
    ],
)
def test_bad_files_are_refused_naming_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        load([str(write(tmp_path, "X.csv", text))])


TOKENS = ["time", "bid", "ask", "open", "high", "low", "close", "Date", "Time", "symbol", "volume", ",", ";",
          "\t", "\n", "\r\n", "2026-01-02", "2026.01.02 00:00", "01/02/2026", "00:00:00", "1767312000",
          "1767312000000", "-5", "1.1", "0", "nan", "inf", "x", "\ufeff", '"', "99999999999999999999",
          "2300-01-01", "<DATE>", "<TIME>", "<BID>", "<ASK>", "1,1", " ", "\x00", "é"]  # fmt: skip
HEADERS = ["", "time,bid,ask\n", "time,open,high,low,close\n"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(TOKENS), max_size=60), st.sampled_from(HEADERS))
def test_any_text_loads_or_is_refused_as_bad_data(tmp_path: Path, tokens: list[str], header: str) -> None:
    f = write(tmp_path, "EURUSD_M1.csv", header + "".join(tokens))
    for policy in ("refuse", "skip"):
        with contextlib.suppress(DataError):  # never a traceback: the CLI says what is wrong, exit 2
            load([str(f)], bad_rows=policy)


def test_a_huge_line_is_refused_before_the_field_limit(tmp_path: Path) -> None:
    f = write(tmp_path, "X.csv", "time,bid,ask\n2026-01-02,1.1,1.2\n2026-01-03," + "1" * (1 << 20) + ",1.2\n")
    with pytest.raises(DataError, match=rf"X\.csv:3: a line longer than {MAX_LINE // 1024} KiB"):
        load_csv(f, bad_rows="skip")  # the file, not a row to skip


def test_ticks_before_1970_and_past_2262_are_skipped_as_bad_rows_when_asked(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        "X.csv",
        "time,bid,ask\n1969-12-31T23:59:59Z,1.1,1.2\n2026-01-02,1.1,1.2\n2300-01-01,1.1,1.2\n",
    )
    s = load_csv(f, bad_rows="skip")
    assert [line for line, _ in s.issues] == [2, 4] and s.records["ts_ns"].tolist() == [H0]


def test_a_sovdata_file_with_ticks_before_1970_is_refused(tmp_path: Path) -> None:
    m = sample(1, 0.01)
    m.records["ts_ns"] -= m.records["ts_ns"][-1] + 1  # as an import before times were checked wrote them
    save(tmp_path / "old.sovdata", m)
    with pytest.raises(DataError, match=r"old\.sovdata record 1: time -\d+ ns is before 1970-01-01"):
        load([str(tmp_path / "old.sovdata")])


def test_bar_timeframes_are_per_symbol_and_one_symbol_keeps_one(tmp_path: Path) -> None:
    rows = ["time,symbol,open,high,low,close"]
    for i in range(30):
        rows.append(f"{(H0 + i * 60 * 10**9)},A,1,1,1,1")
        if i < 10:
            rows.append(f"{(H0 + i * 300 * 10**9)},B,1,1,1,1")
    m = load([str(write(tmp_path, "two.csv", "\n".join(rows) + "\n"))])
    assert m.meta["timeframes_s"] == {"A": 60, "B": 300} and m.timeframe_s == 60
    assert (m.records["timeframe_s"][m.records["symbol"] == 1] == 300).all()  # not taken for M1
    assert (np.diff(m.records["ts_ns"]) >= 0).all()
    # One symbol: M1 bars, then M5 bars (most of them), then M1 again.
    times = [H0 + i * 60 * 10**9 for i in range(5)] + [H0 + (5 + 5 * i) * 60 * 10**9 for i in range(1, 30)]
    text = "time,open,high,low,close\n" + "".join(f"{t},1,1,1,1\n" for t in times)
    with pytest.raises(
        DataError,
        match=r"A\.csv:3: A's bar 60 s after the one before, where most are 300 s apart: "
        r"mixed timeframes in one symbol",
    ):
        load([str(write(tmp_path, "A.csv", text))])
    times = [H0 + i * 60 * 10**9 for i in range(40)] + [H0 + (40 + 5 * i) * 60 * 10**9 for i in range(1, 30)]
    text = "time,open,high,low,close\n" + "".join(f"{t},1,1,1,1\n" for t in times)
    with pytest.raises(
        DataError, match=r"A\.csv:43: 20 of A's bars in a row are 300 s apart, where most are 60 s"
    ):
        load([str(write(tmp_path, "A.csv", text))])
    # Nights and weekends are gaps, not another timeframe.
    times = [H0 + (i + (i // 10) * 50) * 60 * 10**9 for i in range(100)]
    text = "time,open,high,low,close\n" + "".join(f"{t},1,1,1,1\n" for t in times)
    assert load([str(write(tmp_path, "A.csv", text))]).timeframe_s == 60


def test_two_files_of_one_symbol_must_not_overlap_or_disagree(tmp_path: Path) -> None:
    a = write(
        tmp_path,
        "EURUSD_2025.csv",
        bars_csv("time,open,high,low,close", ["2026-01-02T00:00Z", "2026-01-02T01:00Z", "2026-01-02T02:00Z"]),
    )
    b = write(
        tmp_path,
        "EURUSD_2026.csv",
        bars_csv("time,open,high,low,close", ["2026-01-02T03:00Z", "2026-01-02T04:00Z", "2026-01-02T05:00Z"]),
    )
    assert len(load([str(b), str(a)]).records) == 6  # a year after another: sorted into one
    with pytest.raises(DataError, match=r"EURUSD's data in .*EURUSD_2025\.csv .* overlap"):
        load([str(a), str(a)])
    c = write(
        tmp_path,
        "EURUSD_M1.csv",
        bars_csv("time,open,high,low,close", ["2026-01-03T00:00Z", "2026-01-03T00:01Z", "2026-01-03T00:02Z"]),
    )
    with pytest.raises(DataError, match="EURUSD has bars of 60 s and of 3600 s"):
        load([str(a), str(c)])


# ---- Parquet


@pytest.mark.parametrize("kind", ["ticks", "bars"])
def test_parquet_and_csv_round_trips_are_exact(tmp_path: Path, kind: str) -> None:
    m = sample(3, 0.2, 0 if kind == "ticks" else 60, seed=3)
    for suffix in ("parquet", "sovdata"):
        back = load([str(save(tmp_path / f"m.{suffix}", m))])
        assert back.names == m.names and back.kind == kind, suffix
        assert np.array_equal(np.asarray(back.records), m.records), suffix
    back = load([str(save(tmp_path / "m.csv", m))])  # names numbered as they come: the same rows
    assert (
        np.array(back.names)[back.records["symbol"]].tolist()
        == np.array(m.names)[m.records["symbol"]].tolist()
    )
    for field in m.records.dtype.names or ():
        assert field == "symbol" or np.array_equal(back.records[field], m.records[field]), field
    again = load([str(save(tmp_path / "again.parquet", load([str(tmp_path / "m.sovdata")])))])
    assert np.array_equal(np.asarray(again.records), m.records)


def test_parquet_as_pandas_writes_it(tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas")
    index = pd.date_range("2026-01-02", periods=3, freq="h", tz="UTC", name="Datetime")
    frame = pd.DataFrame(
        dict(zip(("Open", "High", "Low", "Close"), zip(*BAR_ROWS, strict=True), strict=True)), index=index
    )
    frame["Adj Close"] = 0.5
    frame.to_parquet(tmp_path / "EURUSD_H1.parquet")
    m = load([str(tmp_path / "EURUSD_H1.parquet")])
    assert (
        m.names == ["EURUSD"]
        and m.timeframe_s == 3600
        and m.records["close"].tolist() == [1.101, 1.1005, 1.102]
    )
    assert m.records["ts_ns"][0] == H0
    frame.index = frame.index.tz_localize(None).astype("datetime64[ms]")  # naive, in ms
    frame.reset_index().assign(symbol="GBPUSD").to_parquet(tmp_path / "multi.parquet")
    assert load([str(tmp_path / "multi.parquet")]).names == ["GBPUSD"]
    frame.drop(columns=["Low"]).to_parquet(tmp_path / "X.parquet")
    with pytest.raises(
        DataError, match=r"X\.parquet: no low column for bars .* the file has: Open, High, Close, Adj Close"
    ):
        load([str(tmp_path / "X.parquet")])
    bad = frame.copy()
    bad.iloc[1, 0] = -1.0
    bad.to_parquet(tmp_path / "Y.parquet")
    with pytest.raises(DataError, match=r"Y\.parquet:2: open is not a positive price"):
        load([str(tmp_path / "Y.parquet")])
    skipped = load([str(tmp_path / "Y.parquet")], bad_rows="skip")
    assert len(skipped.records) == 2 and skipped.issues == [
        (str(tmp_path / "Y.parquet"), 2, "open is not a positive price")
    ]


def test_parquet_rows_are_checked_as_csv_rows_are(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    times = ["2026-01-02T00:00:00Z", None, "2026-01-02 00:00:05", "2026-01-02T00:00:04Z", "2300-01-01"]
    bids = [1.1, 1.1, None, 1.1, 1.1]
    pq.write_table(pa.table({"Time": times, "Bid": bids, "Ask": [1.2] * 5}), tmp_path / "EURUSD.parquet")
    f = str(tmp_path / "EURUSD.parquet")
    with pytest.raises(DataError, match=r"EURUSD\.parquet:2: no time"):
        load([f])
    m = load([f], bad_rows="skip")
    past = "time 2300-01-01 is past 2262-04-11, the last time int64 nanoseconds hold"
    assert m.issues == [(f, 2, "no time"), (f, 3, "bid is not a finite number"), (f, 5, past)]
    assert m.records["ts_ns"].tolist() == [H0, H0 + 4 * 10**9]  # 00:00:04 kept: the 00:00:05 row was bad
    table = pa.table({"time": [H0, H0 - 10**9], "bid": [1.1, 1.1], "ask": [1.2, 1.2]})
    pq.write_table(table, tmp_path / "B.parquet")
    with pytest.raises(DataError, match=r"B\.parquet:2: time goes backwards for B"):
        load([str(tmp_path / "B.parquet")])
    table = pa.table({"time": [None, 20260102, 20260105], "bid": [1.1] * 3, "ask": [1.2] * 3})
    pq.write_table(table, tmp_path / "C.parquet")  # the unit is the first good time's
    with pytest.raises(DataError, match=r"C\.parquet:2: time 20260102 is ambiguous"):
        load([str(tmp_path / "C.parquet")], bad_rows="skip")
    pq.write_table(pa.table({"time": ["2300-01-01"], "bid": [1.1], "ask": [1.2]}), tmp_path / "D.parquet")
    with pytest.raises(DataError, match=r"D\.parquet: no data rows \(all 1 skipped\)"):
        load([str(tmp_path / "D.parquet")], bad_rows="skip")


def test_parquet_as_the_nautilus_catalog_writes_it(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")

    def fixed(
        prices: list[float],
    ) -> object:  # NautilusTrader's high-precision fixed point: raw = price * 1e16
        raw = b"".join(round(p * 10**16).to_bytes(16, "little", signed=True) for p in prices)
        return pa.Array.from_buffers(pa.binary(16), len(prices), [None, pa.py_buffer(raw)])

    ts = pa.array([H0 + i * 10**9 for i in range(3)], pa.uint64())
    table = pa.table(
        {
            "bid_price": fixed([1.10001, 1.10002, 1.1]),
            "ask_price": fixed([1.10003, 1.10004, 1.10002]),
            "bid_size": fixed([1e6] * 3),
            "ask_size": fixed([1e6] * 3),
            "ts_event": ts,
            "ts_init": ts,
        }
    )
    table = table.replace_schema_metadata({b"instrument_id": b"EUR/USD.SIM", b"price_precision": b"5"})
    pq.write_table(table, tmp_path / "part-0.parquet")
    m = load([str(tmp_path / "part-0.parquet")])
    assert m.names == ["EURUSD"] and m.notes == [
        f"{tmp_path / 'part-0.parquet'}: symbol EURUSD from the file's instrument_id (--symbol sets it)"
    ]
    assert m.records["bid"].tolist() == [1.10001, 1.10002, 1.1] and m.records["ask"].tolist() == [
        1.10003,
        1.10004,
        1.10002,
    ]
    assert m.records["ts_ns"].tolist() == [H0, H0 + 10**9, H0 + 2 * 10**9]


def test_a_real_nautilus_trader_catalog(tmp_path: Path) -> None:
    pytest.importorskip("nautilus_trader")
    from nautilus_trader.model.data import Bar, BarType, QuoteTick
    from nautilus_trader.model.identifiers import InstrumentId
    from nautilus_trader.model.objects import Price, Quantity
    from nautilus_trader.persistence.catalog import ParquetDataCatalog

    catalog, iid = ParquetDataCatalog(str(tmp_path / "catalog")), InstrumentId.from_str("EUR/USD.SIM")
    bids = ["1.10001", "1.10002", "1.09998"]
    size = Quantity.from_int(1000)
    asks = [f"{float(b) + 0.00002:.5f}" for b in bids]
    quotes = zip(bids, asks, strict=True)
    catalog.write_data([QuoteTick(iid, Price.from_str(b), Price.from_str(a), size, size, H0 + i * 10**9,
                                  H0 + i * 10**9) for i, (b, a) in enumerate(quotes)])  # fmt: skip
    bar_type = BarType.from_str("EUR/USD.SIM-1-MINUTE-BID-EXTERNAL")
    closes = [H0 + (i + 1) * 60 * 10**9 for i in range(3)]  # ts_init at the close, as NautilusTrader wants
    catalog.write_data([Bar(bar_type, Price.from_str("1.10001"), Price.from_str("1.10011"),
                            Price.from_str("1.09991"), Price.from_str(b), Quantity.from_int(10), t, t)
                        for b, t in zip(bids, closes, strict=True)])  # fmt: skip
    (quote_file,) = (tmp_path / "catalog").rglob("quote_tick/**/*.parquet")
    (bar_file,) = (tmp_path / "catalog").rglob("bar/**/*.parquet")
    q, b = load([str(quote_file)]), load([str(bar_file)])
    assert q.names == b.names == ["EURUSD"] and q.kind == "ticks" and b.kind == "bars"
    assert q.records["bid"].tolist() == [1.10001, 1.10002, 1.09998]
    assert q.records["ask"].tolist() == [1.10003, 1.10004, 1.1]
    assert b.records["close"].tolist() == [1.10001, 1.10002, 1.09998] and b.timeframe_s == 60
    assert b.records["ts_ns"].tolist() == [H0, H0 + 60 * 10**9, H0 + 120 * 10**9]  # each bar's start


# ---- the command line


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def test_data_sample_loads_and_backtests_and_bad_data_exits_2(tmp_path: Path) -> None:
    r = cli(
        "data", "sample", "--symbols", "2", "--days", "1", "--timeframe", "M1", "fx.parquet", cwd=tmp_path
    )
    assert r.returncode == 0, r.stderr
    assert "wrote fx.parquet: 2,880 bars (M1) of EURUSD, GBPUSD" in r.stdout
    r = cli("data", "info", "fx.parquet", "--json", cwd=tmp_path)
    assert r.returncode == 0 and '"timeframes_s": {\n    "EURUSD": 60,\n    "GBPUSD": 60\n  }' in r.stdout
    r = cli("data", "import", "fx.parquet", "-o", "fx.csv", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = cli("backtest", "fx.csv", "--out", "report", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert '"timeframe_s": 60' in r.stdout and (tmp_path / "report" / "report.html").exists()
    r = cli("data", "sample", "--days", "0.05", "ticks.sovdata", cwd=tmp_path)
    assert r.returncode == 0 and cli("data", "info", "ticks.sovdata", cwd=tmp_path).returncode == 0
    (tmp_path / "EURUSD_H1.csv").write_text("time,open,high,low,close\n2300-01-01T00:00:00Z,1,1,1,1\n")
    for command in (["backtest", "EURUSD_H1.csv"], ["data", "info", "EURUSD_H1.csv"]):
        r = cli(*command, "--skip-bad-rows" if command[0] == "backtest" else "--layout=generic", cwd=tmp_path)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    r = cli("backtest", "EURUSD_H1.csv", cwd=tmp_path)
    assert r.returncode == 2 and re.search(
        r"EURUSD_H1\.csv:2: time 2300-01-01T00:00:00Z is past 2262", r.stderr
    )
    (tmp_path / "big.csv").write_text("time,bid,ask\n2026-01-02," + "1" * (1 << 20) + ",1.2\n")
    r = cli("data", "import", "big.csv", "-o", "big.sovdata", cwd=tmp_path)
    assert r.returncode == 2 and "a line longer than 64 KiB" in r.stderr and "Traceback" not in r.stderr
