"""A new user's first hour, mended, tried as they try it (the CLI in a subprocess): a
backtest's trades.csv has times, its prices keep the symbol's digits, orders.csv names
symbols and sides without float noise, the HTML shows percent where the console does, a
CAGR from a few days says so; after a run, the journal speaks in names and words and
`positions` rounds stops and targets to the symbol's digits; `status` never puts an
order rate beside "no orders"; a state_dir that is a file or read-only fails `config
check` and `run` alike, with exit 2."""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest

from tests.research.test_backtest_explains import bars_csv

CLI = [sys.executable, "-m", "sovereign.cli"]


def sov(*args: str, cwd: Path, check: int | None = 0, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SOVEREIGN_CONFIG"}
    r = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)
    if check is not None:
        assert r.returncode == check, f"sovereign {' '.join(args)} -> {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def m1_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """Two weeks of EURUSD M1 bars through the default config."""
    tmp = tmp_path_factory.mktemp("first_hour")
    data = bars_csv(tmp / "EURUSD_M1.csv", 20_000, 60)
    return tmp / "out", sov("backtest", str(data), "--out", str(tmp / "out"), cwd=tmp)


# ---- the backtest's files


Run = tuple[Path, subprocess.CompletedProcess]


def test_trades_csv_has_times_and_prices_at_the_symbols_digits(m1_run: Run) -> None:
    out, _ = m1_run
    trades = rows(out / "trades.csv")
    assert len(trades) > 20
    for t in trades:
        for end in ("entry", "exit"):
            ns = int(t[f"{end}_ns"])
            assert ns > 0 and t[f"{end}_time"] == str(np.datetime64(ns, "ns").astype("datetime64[ms]")) + "Z"
        assert re.fullmatch(r"1\.\d{5}", t["entry_price"]) and re.fullmatch(r"1\.\d{5}", t["exit_price"]), t
        assert int(t["exit_ns"]) >= int(t["entry_ns"])
    html = (out / "report.html").read_text()
    first = trades[0]
    assert f"<td>{first['entry_price']}</td><td>{first['exit_price']}</td>" in html


def test_a_symbol_with_three_digits_keeps_three(tmp_path: Path) -> None:
    data = bars_csv(tmp_path / "EURUSD_M1.csv", 8_000, 60)
    (tmp_path / "c.toml").write_text("[symbols]\npoint = 0.001\n")
    sov("backtest", str(data), "--out", "out", "--config", "c.toml", cwd=tmp_path)
    trades = rows(tmp_path / "out" / "trades.csv")
    orders = rows(tmp_path / "out" / "orders.csv")
    assert trades and all(re.fullmatch(r"1\.\d{3}", t["entry_price"]) for t in trades)
    assert all(re.fullmatch(r"1\.\d{3}", o["price"]) for o in orders if o["price"])


def test_orders_csv_names_symbols_and_sides_without_float_noise(m1_run: Run) -> None:
    out, _ = m1_run
    orders = rows(out / "orders.csv")
    assert len(orders) > 20
    assert {o["symbol"] for o in orders} == {"EURUSD"} and {o["side"] for o in orders} == {"BUY", "SELL"}
    for o in orders:
        for k in ("price", "sl", "tp"):
            assert o[k] == "" or re.fullmatch(r"1\.\d{5}", o[k]), (k, o)
        assert re.fullmatch(r"\d+(\.\d{1,8})?", o["volume"]), o
        assert re.fullmatch(r"\d(\.\d{1,6})?", o["conviction"]), o
    trades = rows(out / "trades.csv")
    assert {t["side"] for t in trades} <= {"long", "short"}


def test_the_html_shows_percent_where_the_console_does(m1_run: Run) -> None:
    out, r = m1_run
    m = orjson.loads((out / "report.json").read_bytes())["metrics"]
    html = (out / "report.html").read_text()
    console = r.stdout
    assert f"win rate {m['win_rate']:.1%}" in console
    for key in ("total_return", "cagr", "max_drawdown", "win_rate", "exposure"):
        assert f"<td>{key}</td><td>{m[key]:.2%}</td>" in html, key
    assert f"<td>win_rate</td><td>{m['win_rate']}</td>" not in html  # never the raw fraction


def test_a_cagr_from_a_short_window_carries_a_caveat(m1_run: Run, tmp_path: Path) -> None:
    _, r = m1_run  # 13.9 days
    assert "note: CAGR and Calmar are annualized from 13.9 days of data (under 90)" in r.stdout
    data = bars_csv(tmp_path / "EURUSD_M15.csv", 100 * 96, 900)  # 100 days
    long = sov("backtest", str(data), "--out", "out", cwd=tmp_path)
    assert "CAGR" in long.stdout and "annualized from" not in long.stdout
    assert "annualized from" not in (tmp_path / "out" / "report.html").read_text()


# ---- after a run: the journal and positions


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The system as `sovereign run` leaves it after the simulator's first 200,000 ticks."""
    tmp = tmp_path_factory.mktemp("ran")
    sov("run", "--state-dir", str(tmp / "state"), "--max-ticks", "200000", "--no-telegram", cwd=tmp)
    yield tmp / "state"
    shutil.rmtree(tmp, ignore_errors=True)


def test_the_journal_speaks_in_names_and_words(ran: Path) -> None:
    text = sov("journal", "--state-dir", str(ran), "--limit", "400", cwd=ran.parent).stdout
    assert "symbol=" not in text and "side=" not in text and "client_order_id=0" not in text
    sent = re.findall(r"order (\d+) (SIM\d{3}) (buy|sell) ([\d.]+) at (\d\.\d{5}) \(stop (\d\.\d{5}), "
                      r"target (\d\.\d{5})\): SUBMITTING", text)  # fmt: skip
    assert sent, text[-3000:]
    convictions = [float(x) for x in re.findall(r"net_conviction=([\d.]+)", text)]
    assert convictions and all(0 < c <= 1 for c in convictions)  # the net of the live signals, at most 1
    assert re.search(r"order \d+: FILLED \(was SUBMITTING\) at \d\.\d{5}", text)
    # --json keeps the entries as stored, for scripts
    raw = sov("journal", "--state-dir", str(ran), "--limit", "400", "--json", cwd=ran.parent).stdout
    entries = orjson.loads(raw)
    assert any(e.get("event") == "order" and isinstance(e.get("symbol"), int) for e in entries)


def test_a_fill_the_broker_made_alone_reads_as_a_stop_or_a_target() -> None:
    """A stop or a target filled by the broker has no order of ours (client id 0)."""
    from sovereign.state.views import journal_text

    fill = {"seq": 5, "event": "fill", "client_order_id": 0, "symbol": 1, "side": -1, "volume": "0.10",
            "price": "1.1000012", "commission": "0.7", "realized_pnl": "-12.5",
            "ts_ns": 1_767_225_600 * 10**9, "retcode": 10009, "reason": "sl", "ticket": 9}  # fmt: skip
    assert journal_text(fill, ["GBPUSD", "EURUSD"], lambda name: 5) == (
        "EURUSD sell 0.10 at 1.10000 (stop loss) · commission=0.7 realized_pnl=-12.5 ticket=9 "
        "time=2026-01-01T00:00:00.000Z")
    ours = {**fill, "client_order_id": 7, "reason": "tp", "symbol": 0}
    text = journal_text(ours, ["GBPUSD"], lambda name: 3)
    assert text.startswith("GBPUSD sell 0.10 at 1.100 (target), order 7 ·"), text


def test_positions_show_stops_and_targets_at_the_symbols_digits(ran: Path) -> None:
    text = sov("positions", "--state-dir", str(ran), cwd=ran.parent).stdout
    lines = [line for line in text.splitlines() if re.search(r"SIM\d{3}", line)]
    assert lines, text
    for line in lines:
        cells = [c.strip() for c in re.split(r"[│|]", line) if c.strip()]
        stop, target = cells[-2], cells[-1]
        assert re.fullmatch(r"\d\.\d{5}", stop) and re.fullmatch(r"\d\.\d{5}", target), line


# ---- status


def test_status_never_puts_an_order_rate_beside_no_orders(capsys: pytest.CaptureFixture[str]) -> None:
    """Orders in the last seconds, none in the last full latency window (the start of a run)."""
    from sovereign import cli

    data = {"running": True, "live": True, "supervisor_pid": 1, "status": "trading", "processes": [],
            "rings": [], "rates": {"ticks": 1000.0, "signals": 10.0, "orders": 263.9},
            "tick_to_order": {"window_s": 10.0, "n": 0, "p50_us": 0.0, "p99_us": 0.0}, "metrics": None,
            "storage": {}, "bridge": None, "account": None}  # fmt: skip
    target = types.SimpleNamespace(socket="/run/x.sock", state_dir="/var/lib/x")
    cli._print_status(data, target)  # type: ignore[arg-type]
    busy = capsys.readouterr().out
    assert "263.90 orders/s" in busy and "no orders" not in busy and "none measured yet" in busy
    cli._print_status({**data, "rates": {"ticks": 1000.0, "signals": 0.0, "orders": 0.0}}, target)  # type: ignore[arg-type]
    quiet = capsys.readouterr().out
    assert "0.00 orders/s" in quiet and "tick-to-order over the last full 10 s: no orders" in quiet


# ---- state_dir


def test_a_state_dir_that_is_a_file_fails_config_check_and_run_with_exit_2(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    (tmp_path / "c.toml").write_text(f'[system]\nstate_dir = "{tmp_path / "afile" / "state"}"\n')
    check = sov("config", "check", "c.toml", cwd=tmp_path, check=2)
    run = sov("run", "--config", "c.toml", "--max-ticks", "10", cwd=tmp_path, check=2)
    expect = (f"sovereign: config key system.state_dir: {tmp_path / 'afile' / 'state'} is not a directory: "
              f"a file is in the way ({tmp_path / 'afile'}, where its directory would be made)")  # fmt: skip
    assert check.stderr.strip() == expect and run.stderr.strip() == expect
    as_json = sov("config", "check", "c.toml", "--json", cwd=tmp_path, check=2).stdout
    assert "is not a directory" in orjson.loads(as_json)["error"]
    # a good one is still good
    (tmp_path / "c.toml").write_text(f'[system]\nstate_dir = "{tmp_path / "state"}"\n')
    sov("config", "check", "c.toml", cwd=tmp_path)


def test_a_read_only_state_dir_fails_config_check_and_run_with_exit_2(tmp_path: Path) -> None:
    """Read-only as the system meets it: a read-only file system (root writes anywhere else;
    a mount namespace of the command's own), or a directory without write permission."""
    ro = tmp_path / "ro"
    ro.mkdir()
    (tmp_path / "c.toml").write_text(f'[system]\nstate_dir = "{ro / "state"}"\n')
    if os.geteuid() == 0:
        if shutil.which("unshare") is None:
            pytest.skip("root without unshare: no read-only place to try")
        probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
        if probe.returncode:
            pytest.skip(f"no mount namespace here: {probe.stderr.decode()[:200]}")

        def cli(*args: str) -> subprocess.CompletedProcess:
            mount = f"mount -t tmpfs -o ro,size=64k tmpfs {ro} && exec \"$@\""
            return subprocess.run(["unshare", "-m", "sh", "-c", mount, "sh", *CLI, *args],
                                  capture_output=True, text=True, timeout=120, cwd=tmp_path)  # fmt: skip
        why = "it is on a read-only file system"
    else:
        ro.chmod(0o555)

        def cli(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120, cwd=tmp_path)

        why = "Permission denied"
    check, run = cli("config", "check", "c.toml"), cli("run", "--config", "c.toml", "--max-ticks", "10")
    expect = (f"sovereign: config key system.state_dir: {ro / 'state'} cannot be written by this user "
              f"(uid {os.geteuid()}) (in {ro}, where its directory would be made): {why}")  # fmt: skip
    assert (check.returncode, check.stderr.strip()) == (2, expect), check.stderr
    assert (run.returncode, run.stderr.strip()) == (2, expect), run.stderr
    assert not (ro / "state").exists()
