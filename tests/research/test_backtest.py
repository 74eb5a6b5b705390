"""Backtests: the live components in one process. The accounting is recomputed from the
trade list by hand; runs are byte-identical; a run split at any time and resumed from a
snapshot equals one run; appending data never changes earlier decisions; bars fill at
the next open with stops checked pessimistically; bad rows are refused or skipped with
their line numbers; the CLI writes every report file."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sovereign.config import Config, from_dict
from sovereign.market.data import DataError, load_csv
from sovereign.market.datafile import FILE_BAR_DTYPE, FILE_TICK_DTYPE, Market, load, open_file, write
from sovereign.market.sim import SimMarket
from sovereign.research import backtest as engine
from sovereign.research import report
from tests.helpers import NS, T0, random_bars

CLI = [sys.executable, "-m", "sovereign.cli"]


def sim_market(symbols: int = 1, n: int = 300_000, seed: int = 1) -> Market:
    t = SimMarket(symbols, seed=seed).next(n)
    f = np.zeros(len(t), FILE_TICK_DTYPE)
    for name in FILE_TICK_DTYPE.names or ():
        f[name] = t[name]
    return Market("ticks", f, [f"SYM{s}" for s in range(symbols)])


def bar_market(symbols: int = 3, n: int = 20_000) -> Market:
    parts = []
    for s in range(symbols):
        b = random_bars(n, seed=10 + s, symbol=s)
        f = np.zeros(n, FILE_BAR_DTYPE)
        for name in ("ts_ns", "volume", "symbol", "timeframe_s"):
            f[name] = b[name]
        for name in ("open", "high", "low", "close"):
            f[name] = b[name] * 0.011  # an FX-like price, so that a lot's notional fits the limits
        f["spread"] = 20
        parts.append(f)
    recs = np.concatenate(parts)
    return Market("bars", recs[np.argsort(recs["ts_ns"], kind="stable")], [f"B{s}" for s in range(symbols)])


# Tight enough that stops, targets, reversals and the daily-loss limit all happen.
CONFIG = from_dict({"risk": {"risk_per_trade": 0.01, "daily_loss_limit": 0.02, "max_drawdown": 0.05}})


@pytest.fixture(scope="module")
def tick_run() -> tuple[engine.Backtest, Market]:
    m = sim_market(2, 400_000)
    return engine.run(CONFIG, m), m


def test_accounting_recomputed_from_the_trade_list(tick_run: tuple[engine.Backtest, Market]) -> None:
    bt, _ = tick_run
    trades, still_open = report.trades_from_fills(bt.out.fills)
    assert len(trades) > 20 and {t.exit_reason for t in trades} >= {"sl", "tp"}
    size = Decimal(repr(CONFIG.symbols.contract_size))
    total = Decimal(0)
    for t in trades:  # by hand: price difference x volume x contract size, minus commissions
        pnl = (t.exit_price - t.entry_price) * t.volume * size * t.side
        assert abs(pnl - t.pnl) < Decimal("1e-6"), t
        assert float(t.commission) == pytest.approx(float(2 * t.volume) * CONFIG.broker.commission_per_lot)
        total += pnl - t.commission
    initial = Decimal(repr(CONFIG.broker.initial_balance))
    assert sorted(still_open) == sorted(bt.names[s] for s in bt.broker.ledger.open_symbols())
    # the balance is the start plus every closed trade, less the entry fees of the open ones, exactly
    open_fees = sum((t["commission"] for t in still_open.values()), Decimal(0))
    assert bt.broker.balance == initial + total - open_fees
    assert (
        bt.risk.ledger.balance == bt.broker.balance
    )  # risk's book, fed by reports, agrees to the cent and beyond


def test_report_metrics_match_their_definitions(tick_run: tuple[engine.Backtest, Market]) -> None:
    bt, m = tick_run
    doc, trades, _ = report.build(bt, m)
    met = doc["metrics"]
    nets = [float(t.net) for t in trades]
    assert met["trades"] == len(trades)
    assert met["win_rate"] == pytest.approx(sum(x > 0 for x in nets) / len(nets))
    assert met["expectancy"] == pytest.approx(np.mean(nets))
    wins, losses = [x for x in nets if x > 0], [x for x in nets if x <= 0]
    assert met["profit_factor"] == pytest.approx(sum(wins) / -sum(losses))
    eq = np.array([float(e) for _, e in bt.out.equity])
    assert met["max_drawdown"] == pytest.approx(float(np.max(1 - eq / np.maximum.accumulate(eq))))
    assert float(met["final"]) == pytest.approx(float(bt.risk.equity), abs=0.01)
    assert {r["symbol"] for r in doc["per_symbol"]} == {t.symbol for t in trades}
    assert sum(r["trades"] for r in doc["per_agent"]) == len(trades)


def test_same_data_twice_gives_byte_identical_reports(tmp_path: Path) -> None:
    m = sim_market(2, 150_000, seed=5)
    digests = []
    for k in range(2):
        bt = engine.run(CONFIG, m)
        doc, trades, prices = report.build(bt, m)
        files = report.write(tmp_path / str(k), doc, trades, bt.out.equity, bt.out.orders, prices)
        digests.append({f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files})
    assert digests[0] == digests[1]
    assert {"report.json", "report.html", "trades.csv", "equity.csv", "orders.csv", "equity.png"} <= set(
        digests[0]
    )


def _outcome(bt: engine.Backtest) -> tuple:
    fills = [{k: v for k, v in f.items()} for f in bt.out.fills]
    return fills, bt.out.orders, [(t, str(e)) for t, e in bt.out.equity], bt.out.n_signals


@settings(max_examples=6, deadline=None)
@given(cut=st.floats(0.02, 0.98))
def test_a_run_split_anywhere_and_resumed_from_a_snapshot_equals_one_run(cut: float) -> None:
    m = SPLIT_MARKET
    whole = engine.Backtest(CONFIG, m.names, m.kind)
    whole.feed(m.records)
    at = int(len(m.records) * cut)
    first = engine.Backtest(CONFIG, m.names, m.kind)
    first.feed(m.records[:at])
    second = engine.Backtest.restore(first.snapshot())
    second.feed(m.records[at:])
    assert _outcome(second) == _outcome(whole)
    assert len(whole.out.fills) > 20


SPLIT_MARKET = sim_market(2, 120_000, seed=9)


@pytest.mark.parametrize("kind", ["ticks", "bars"])
def test_appending_data_never_changes_earlier_decisions(kind: str) -> None:
    m = sim_market(2, 200_000, seed=4) if kind == "ticks" else bar_market(3, 8_000)
    full = engine.run(CONFIG, m)
    cut = len(m.records) // 2
    part = engine.run(CONFIG, Market(m.kind, m.records[:cut], m.names))
    last = int(m.records["ts_ns"][cut - 1])
    assert part.out.orders, "nothing decided in the first half"
    assert part.out.orders == [o for o in full.out.orders if o["ts_ns"] <= last][: len(part.out.orders)]
    early = [f for f in full.out.fills if f["ts_ns"] <= last]
    assert part.out.fills[: len(early)] == early[: len(part.out.fills)]


def test_deciding_without_applying_the_market_first_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """The walk lets the coordinator decide before the ticks are applied when no event can
    intervene; applying them first (the plain way) must give the same run."""
    for m in (sim_market(3, 150_000, seed=2), bar_market(3, 6_000)):
        lazy = _outcome(engine.run(CONFIG, m))
        monkeypatch.setattr(engine, "_LAZY", False)
        eager = _outcome(engine.run(CONFIG, m))
        monkeypatch.setattr(engine, "_LAZY", True)
        assert lazy == eager


def test_agents_running_a_chunk_ahead_on_a_thread_change_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """feed() runs the agents over the next chunk while it walks this one: in small chunks
    (many handed over between the threads) a run equals one chunk walked alone."""
    for m in (sim_market(2, 100_000, seed=3), bar_market(3, 6_000)):
        alone = engine.Backtest(CONFIG, m.names, m.kind)
        alone.feed(m.records)
        monkeypatch.setattr(engine, "CHUNK", 3_001)
        done: list[int] = []
        ahead = engine.Backtest(CONFIG, m.names, m.kind)
        ahead.feed(m.records, done.append)
        monkeypatch.setattr(engine, "CHUNK", 1 << 18)
        assert len(alone.out.orders) > 10 and _outcome(ahead) == _outcome(alone)
        # Progress after each chunk: the first 1/16 of CHUNK (the one waited for), then doubling.
        sizes = [187, 374, 748, 1_496, 2_992] + [3_001] * len(m.records)
        assert done == [min(int(x), len(m.records)) for x in np.cumsum(sizes)][: len(done)]
        assert done[-1] == len(m.records) and done[-2] < len(m.records)
        assert ahead.pool.snapshot() == alone.pool.snapshot()


def test_bars_in_another_field_order_run_as_the_file_layout() -> None:
    """The walk reads a bar's fields in FILE_BAR_DTYPE's order: bars laid out otherwise
    (the same names) are taken by name, and run the same."""
    m = bar_market(2, 4_000)
    names = list(reversed(FILE_BAR_DTYPE.names or ()))
    other = np.zeros(len(m.records), np.dtype([(n, FILE_BAR_DTYPE.fields[n][0]) for n in names]))  # type: ignore[index]
    for name in names:
        other[name] = m.records[name]
    want = engine.run(CONFIG, m)
    assert len(want.out.fills) > 5
    assert _outcome(engine.run(CONFIG, Market("bars", other, m.names))) == _outcome(want)


def test_snapshot_refuses_other_files_and_damage() -> None:
    bt = engine.Backtest(CONFIG, ["A"], "ticks")
    blob = bt.snapshot()
    with pytest.raises(ValueError, match="not a backtest snapshot"):
        engine.Backtest.restore(b"garbage" + blob)
    broken = bytearray(blob)
    broken[-5] ^= 0xFF
    with pytest.raises(ValueError, match="damaged"):
        engine.Backtest.restore(bytes(broken))


# ---- bars: next-open fills, stops against high and low


def one_bar_run(bars: list[tuple[float, float, float, float]], sl: float, tp: float) -> engine.Backtest:
    """A long opened by hand at the first bar's open; the rest of the bars run through the walk."""
    n = len(bars)
    recs = np.zeros(n, FILE_BAR_DTYPE)
    recs["ts_ns"] = T0 + np.arange(n) * 60 * NS
    recs["open"], recs["high"], recs["low"], recs["close"] = np.array(bars).T
    recs["timeframe_s"], recs["volume"] = 60, 1
    bt = engine.Backtest(Config(), ["X"], "bars")
    bt.broker.set_quote(0, T0, bars[0][0], bars[0][0])
    bt.q_ts[0], bt.q_bid[0], bt.q_ask[0] = T0, bars[0][0], bars[0][0]
    ex = bt.broker.market_order(1, 0, 1, Decimal("1"), sl=sl, tp=tp)
    bt._exits([ex])
    bt.feed(recs[1:])
    return bt


def test_bar_stops_fill_at_the_stop_the_open_on_a_gap_and_the_stop_when_both_are_touched() -> None:
    bt = one_bar_run(
        [(1.0, 1.0, 1.0, 1.0), (1.0, 1.01, 0.995, 1.0), (1.0, 1.002, 0.98, 0.99)], sl=0.99, tp=1.05
    )
    assert [(f["reason"], f["price"]) for f in bt.out.fills[1:]] == [("sl", Decimal("0.99"))]
    gap = one_bar_run([(1.0, 1.0, 1.0, 1.0), (0.97, 0.98, 0.96, 0.975)], sl=0.99, tp=1.05)
    assert [(f["reason"], f["price"]) for f in gap.out.fills[1:]] == [
        ("sl", Decimal("0.97"))
    ]  # opened beyond it
    both = one_bar_run([(1.0, 1.0, 1.0, 1.0), (1.0, 1.06, 0.98, 1.0)], sl=0.99, tp=1.05)
    assert [f["reason"] for f in both.out.fills[1:]] == ["sl"]  # both touched: the stop (pessimistic)
    target = one_bar_run([(1.0, 1.0, 1.0, 1.0), (1.0, 1.06, 0.995, 1.04)], sl=0.99, tp=1.05)
    assert [(f["reason"], f["price"]) for f in target.out.fills[1:]] == [("tp", Decimal("1.05"))]


def test_bar_orders_fill_at_the_next_bars_open() -> None:
    m = bar_market(2, 6_000)
    bt = engine.run(CONFIG, m)
    opens = {(int(r["symbol"]), int(r["ts_ns"])): float(r["open"]) for r in m.records}
    market_fills = [f for f in bt.out.fills if f["reason"] == "market"]
    assert len(market_fills) > 10
    point = Decimal(repr(CONFIG.symbols.point))
    for f in market_fills:
        sym = m.names.index(f["symbol"])
        bid = Decimal(repr(opens[(sym, f["ts_ns"])]))  # the quote is a bar's open, at its start
        ask = bid + 20 * point  # the ask is the float open + spread: equal to ~1e-15
        assert f["price"] == bid or abs(f["price"] - ask) < Decimal("1e-12"), (f, bid)


# ---- data: bad rows, the binary form


def test_bad_rows_are_refused_or_skipped_with_their_line_numbers(tmp_path: Path) -> None:
    rows = [
        "time,symbol,bid,ask",
        "2026-01-02T00:00:00Z,EURUSD,1.1,1.1002",
        "2026-01-02T00:00:01Z,EURUSD,nan,1.1",
        "2026-01-02T00:00:02Z,EURUSD,0,1.1",
        "2026-01-01T23:59:59Z,EURUSD,1.1,1.1003",
        "2026-01-02T00:00:03Z,EURUSD,1.1,1.1002",
        "2026-01-02T00:00:03Z,EURUSD,1.1,1.1002",
        "2026-01-02T00:00:04Z,EURUSD,1.1001,1.1003",
    ]
    f = tmp_path / "t.csv"
    f.write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"t\.csv:3: bid is nan"):
        load_csv(f)
    s = load_csv(f, bad_rows="skip")
    assert [line for line, _ in s.issues] == [3, 4, 5]  # a repeated tick is kept (issue 25): feeds do that
    assert "zero" in s.issues[1][1] or "positive" in s.issues[1][1]
    assert "backwards" in s.issues[2][1]
    assert len(s.records) == 4
    bars = tmp_path / "b.csv"
    bars.write_text(
        "time,symbol,open,high,low,close\n2026-01-02T00:00:00Z,X,1,1.1,0.9,1\n"
        "2026-01-02T00:01:00Z,X,1,1.1,0.9,1\n2026-01-02T00:01:00Z,X,1,1.1,0.9,1.05\n"
    )
    with pytest.raises(DataError, match=r"b\.csv:4: duplicate bar time"):
        load_csv(bars)


def test_sovdata_round_trip_and_damage(tmp_path: Path) -> None:
    m = bar_market(2, 500)
    path = write(tmp_path / "x.sovdata", m)
    back = open_file(path)
    assert back.names == m.names and back.kind == "bars" and np.array_equal(back.records, m.records)
    merged = load([str(path)])
    assert merged.timeframe_s == 60
    raw = path.read_bytes()
    (tmp_path / "cut.sovdata").write_bytes(raw[:-10])
    with pytest.raises(DataError, match="promises 1000 records"):
        open_file(tmp_path / "cut.sovdata")
    (tmp_path / "junk.sovdata").write_bytes(b"hello world, not data")
    with pytest.raises(DataError, match=r"not a \.sovdata file"):
        open_file(tmp_path / "junk.sovdata")
    (tmp_path / "hdr.sovdata").write_bytes(raw[:16] + b"x" + raw[17:])
    with pytest.raises(DataError, match="corrupt header"):
        open_file(tmp_path / "hdr.sovdata")


# ---- the CLI


def test_cli_backtest_import_info_and_resume(tmp_path: Path) -> None:
    m = sim_market(2, 60_000, seed=7)
    csv = tmp_path / "ticks.csv"
    with csv.open("w") as fh:
        fh.write("time,symbol,bid,ask,volume\n")
        for r in m.records:
            fh.write(
                f"{int(r['ts_ns'])},{m.names[int(r['symbol'])]},{float(r['bid'])!r},{float(r['ask'])!r},"
                f"{float(r['volume'])!r}\n"
            )
        fh.write("garbage,SYM0,1,1\n")
    data = tmp_path / "ticks.sovdata"
    r = subprocess.run([*CLI, "data", "import", str(csv), "-o", str(data)], capture_output=True, text=True)
    assert r.returncode == 2 and f"{csv}:{len(m.records) + 2}:" in r.stderr  # refused, with the line
    r = subprocess.run(
        [*CLI, "data", "import", str(csv), "-o", str(data), "--skip-bad-rows", "--json"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert orjson.loads(r.stdout)["rows"] == len(m.records) and "skipped" in r.stderr
    r = subprocess.run([*CLI, "data", "info", str(data), "--json"], capture_output=True, text=True)
    info = orjson.loads(r.stdout)
    rows = {s["symbol"]: s["rows"] for s in info["symbols"]}
    assert rows == {name: int((m.records["symbol"] == k).sum()) for k, name in enumerate(m.names)}
    out = tmp_path / "out"
    r = subprocess.run(
        [*CLI, "backtest", str(data), "--out", str(out), "--json"], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    whole = orjson.loads(r.stdout)
    assert whole["metrics"]["trades"] > 0 and (out / "report.html").stat().st_size > 10_000
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "Per agent" in html  # self-contained
    # split at a date, resume from the saved state: the same report
    mid = "2026-01-01T12:00:00Z"
    snap = tmp_path / "run.state"
    r = subprocess.run(
        [*CLI, "backtest", str(data), "--to", mid, "--save-state", str(snap), "--out", str(tmp_path / "a")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    r = subprocess.run(
        [*CLI, "backtest", str(data), "--resume", str(snap), "--out", str(tmp_path / "b"), "--json"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert orjson.loads(r.stdout)["metrics"] == whole["metrics"]
    assert (tmp_path / "b" / "trades.csv").read_bytes() == (out / "trades.csv").read_bytes()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.csv"], "cannot read"),
        (["{data}", "--from", "yesterday"], "--from 'yesterday' is not a time"),
        (["{data}", "--from", "2030-01-01"], "no data in the chosen date range"),
        (["{data}", "--mark-interval", "7"], "does not divide a day"),
        (["{data}", "--config", "{bad}"], "config key risk.max_drawdown"),
        (["{data}", "--resume", "{bad}"], "cannot resume"),
    ],
)
def test_cli_backtest_refuses_bad_input_clearly(tmp_path: Path, args: list[str], message: str) -> None:
    data = write(tmp_path / "d.sovdata", sim_market(1, 5_000))
    bad = tmp_path / "bad.toml"
    bad.write_text("[risk]\nmax_drawdown = 7\n")
    argv = [a.format(data=data, bad=bad) for a in args]
    r = subprocess.run(
        [*CLI, "backtest", *argv, "--out", str(tmp_path / "o")], capture_output=True, text=True, cwd=tmp_path
    )
    assert r.returncode == 2 and message in r.stderr, r.stderr


def _screen_by_numpy(rec: dict, book: dict, a: int, k: int, lim: dict) -> tuple[tuple, tuple]:
    """The walk's screen as it was written with numpy before it moved to C++ (Screen)."""
    syms = rec["sym"][a:k]
    long, short, coef = book["long"][syms], book["short"][syms], book["coef"][syms]
    mark_now = np.where(book["long"], book["q_bid"], book["q_ask"])
    delta = np.zeros(k - a)
    for s in np.unique(syms[coef != 0]):  # each symbol's change from its previous mark
        at = np.flatnonzero(syms == s)
        px = np.where(book["long"][s], rec["bid"][a:k][at], rec["ask"][a:k][at])
        delta[at] = (px - np.r_[mark_now[s], px[:-1]]) * book["coef"][s]
    eq = lim["equity0"] + np.cumsum(delta)
    if "high" in rec:
        high, low, spread = rec["high"][a:k], rec["low"][a:k], rec["spread"][a:k]
        worst, best = np.where(long, low, high + spread), np.where(long, high, low + spread)
    else:
        worst = best = np.where(long, rec["bid"][a:k], rec["ask"][a:k])
    sl, tp = book["sl"][syms], book["tp"][syms]
    with np.errstate(invalid="ignore"):
        exit_ = (long & ((worst <= sl) | (best >= tp))) | (short & ((worst >= sl) | (best <= tp)))
    breach = np.zeros(k - a, bool)
    if lim["peak0"] is not None:
        breach |= eq <= np.maximum.accumulate(np.maximum(eq, lim["peak0"])) * lim["keep"]
    if lim["daily_floor"] is not None:
        breach |= eq <= lim["daily_floor"]
    pending = lim["pending"][syms] if lim["pending"] is not None else np.zeros(k - a, bool)
    first = (k, 0)
    for kind, hits in ((1, pending), (2, exit_), (3, breach)):  # a later kind wins at the same record
        idx = np.flatnonzero(hits)
        if len(idx) and a + idx[0] + 1 <= first[0]:
            first = (a + int(idx[0]) + 1, kind)
    best_at = int(np.argmax(eq)) if k > a else -1
    return first, (a + best_at if k > a else -1, float(eq[best_at]) if k > a else -np.inf)


@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), bars=st.booleans(), n=st.integers(0, 400), symbols=st.integers(1, 5))
def test_the_screen_agrees_with_its_numpy_definition(seed: int, bars: bool, n: int, symbols: int) -> None:
    from sovereign.core import Screen

    rng = np.random.default_rng(seed)
    bid = 1.0 + np.cumsum(rng.normal(0, 0.001, n))
    rec = {"sym": rng.integers(0, symbols, n).astype(np.uint32), "bid": bid, "ask": bid + 0.0002}
    if bars:
        rec |= {"high": bid + rng.uniform(0, 0.002, n), "low": bid - rng.uniform(0, 0.002, n),
                "spread": np.full(n, 0.0002)}  # fmt: skip
    direction = rng.integers(-1, 2, symbols)
    away = direction * rng.uniform(0, 0.01, (2, symbols))  # stop below a long's price, target above
    book = {"long": direction > 0, "short": direction < 0,
            "coef": direction * rng.uniform(1e4, 1e5, symbols),
            "sl": np.where(rng.random(symbols) < 0.7, 1.0 - away[0], np.nan),
            "tp": np.where(rng.random(symbols) < 0.7, 1.0 + away[1], np.nan),
            "q_bid": np.full(symbols, 1.0), "q_ask": np.full(symbols, 1.0002)}  # fmt: skip
    a = int(rng.integers(0, n + 1))
    k = int(rng.integers(a, n + 1))
    peak0 = float(rng.uniform(100_000, 101_000)) if rng.random() < 0.7 else None
    lim = {"equity0": 100_000.0, "peak0": peak0,
           "keep": 0.99, "daily_floor": 99_500.0 if rng.random() < 0.5 else None,
           "pending": rng.random(symbols) < 0.2 if rng.random() < 0.3 else None}  # fmt: skip
    screen = Screen(rec["sym"], rec["bid"], rec["ask"], rec.get("high"), rec.get("low"), rec.get("spread"))
    mark = np.where(book["long"], book["q_bid"], book["q_ask"])
    got = screen.next(a, k, book["long"], book["short"], book["coef"], book["sl"], book["tp"], mark,
                      lim["equity0"], True, peak0, 0.99, lim["daily_floor"], lim["pending"])  # fmt: skip
    want_next, want_best = _screen_by_numpy(rec, book, a, k, lim)
    assert got == want_next
    assert screen.best(a, k, book["long"], book["coef"], mark, lim["equity0"]) == want_best
    # The quote board after a..k-1, twice over (its scratch must not leak between calls).
    quote_ts = np.arange(n, dtype=np.int64) * 7
    for lo, hi in ((a, k), (0, a)):
        q_ts, q_bid, q_ask = np.zeros(symbols, np.int64), np.zeros(symbols), np.zeros(symbols)
        idx = screen.board(lo, hi, quote_ts, q_ts, q_bid, q_ask)
        last = {int(s): i for i, s in enumerate(rec["sym"][lo:hi], lo)}  # each symbol's last record
        assert idx.tolist() == sorted(last.values())
        want = np.zeros(symbols, np.int64), np.zeros(symbols), np.zeros(symbols)
        for s, i in last.items():
            want[0][s], want[1][s], want[2][s] = quote_ts[i], rec["bid"][i], rec["ask"][i]
        assert all(np.array_equal(x, y) for x, y in zip((q_ts, q_bid, q_ask), want, strict=True))


def test_the_screen_refuses_bad_arguments() -> None:
    from sovereign.core import Screen

    sym, px = np.zeros(10, np.uint32), np.ones(10)
    with pytest.raises(ValueError, match="one length"):
        Screen(sym, px[:5], px)
    with pytest.raises(ValueError, match="together"):
        Screen(sym, px, px, high=px)
    screen, one = Screen(sym, px, px), np.ones(1)
    with pytest.raises(IndexError, match="outside"):
        screen.best(5, 11, one > 0, one, one, 0.0)
    with pytest.raises(ValueError, match="one entry per symbol"):
        screen.best(0, 10, one > 0, np.ones(2), one, 0.0)
    ts = np.zeros(10, np.int64)
    with pytest.raises(ValueError, match="writeable contiguous float64"):
        screen.board(0, 10, ts, np.zeros(1, np.int64), np.zeros(1, np.float32), one)  # a copy would be lost
    with pytest.raises(ValueError, match="beyond the board"):
        screen.board(0, 10, ts, np.zeros(0, np.int64), np.zeros(0), np.zeros(0))
