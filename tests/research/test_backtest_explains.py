"""Backtests that explain themselves, run as a user runs them (the CLI in a subprocess):
data no agent reads is named before the run, with the config lines that add agents for
it; signals that made no trade are counted with the reasons they were refused (on the
console and in the HTML); a progress display shows on a terminal only; the time printed
names loading, the walk and the report. In-process: every signal is accounted for once,
and a run resumed from a saved state counts as one run does."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest

from sovereign.core import AgentPool
from sovereign.research import backtest as engine
from tests.research.test_backtest import CONFIG, bar_market, sim_market

CLI = [sys.executable, "-m", "sovereign.cli"]
T0 = 1_735_689_600  # 2025-01-01, seconds


def bars_csv(path: Path, n: int, timeframe_s: int, symbol: str = "EURUSD", seed: int = 1) -> Path:
    """n bars of a random walk near 1.10 (an FX price), in the generic CSV layout."""
    rng = np.random.default_rng(seed)
    scale = np.sqrt(timeframe_s / 3600)
    close = 1.1 * np.exp(np.cumsum(rng.normal(0, 0.0015 * scale, n)))
    open_ = np.r_[close[0], close[:-1]]
    high = np.maximum(open_, close) * (1 + np.abs(rng.normal(0, 0.0007 * scale, n)))
    low = np.minimum(open_, close) * (1 - np.abs(rng.normal(0, 0.0007 * scale, n)))
    volume = rng.integers(100, 1000, n)
    rows = [f"{T0 + i * timeframe_s},{symbol},{open_[i]:.5f},{high[i]:.5f},{low[i]:.5f},{close[i]:.5f},"
            f"{volume[i]}" for i in range(n)]  # fmt: skip
    path.write_text("time,symbol,open,high,low,close,volume\n" + "\n".join(rows) + "\n")
    return path


def backtest(tmp: Path, data: Path, config: str | None = None, *args: str) -> subprocess.CompletedProcess:
    cmd = [*CLI, "backtest", str(data), "--out", str(tmp / "out"), *args]
    if config is not None:
        (tmp / "c.toml").write_text(config)
        cmd += ["--config", str(tmp / "c.toml")]
    env = {k: v for k, v in os.environ.items() if k not in ("SOVEREIGN_CONFIG", "SOVEREIGN_PROGRESS_AFTER_S")}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def report_of(tmp: Path) -> dict:
    return orjson.loads((tmp / "out" / "report.json").read_bytes())


# ---- data no agent reads


def test_bars_no_agent_reads_are_named_before_the_run_with_the_lines_that_add_agents(tmp_path: Path) -> None:
    """The preset's agents run on M1, M5 and M15: H1 bars reach none of them."""
    r = backtest(tmp_path, bars_csv(tmp_path / "EURUSD_H1.csv", 2000, 3600))
    assert "no agent reads the data of these symbols" in r.stderr
    assert "EURUSD: H1 bars, agents on M1, M5, M15 only" in r.stderr
    assert '[[agents.sets]]\nsymbols = ["EURUSD"]\ntimeframe = "H1"\n' in r.stderr
    doc = report_of(tmp_path)
    unread = [{"symbol": "EURUSD", "timeframe_s": 3600, "agent_timeframes_s": [60, 300, 900]}]
    assert doc["data"]["unread"] == unread
    assert doc["run"]["signals"] == 0 and doc["metrics"]["trades"] == 0
    html = (tmp_path / "out" / "report.html").read_text()
    assert "no agent reads the data of these symbols" in html and "timeframe = &quot;H1&quot;" in html
    # The lines shown, pasted into a config, add an agent that reads the data.
    hint = r.stderr[r.stderr.index("[[agents.sets]]"):]
    r = backtest(tmp_path, tmp_path / "EURUSD_H1.csv", hint)
    doc = report_of(tmp_path)
    assert "no agent reads" not in r.stderr + r.stdout and doc["data"]["unread"] == []
    assert doc["run"]["agents"] == 11 and doc["run"]["signals"] > 0  # the preset's ten and the H1 one
    # M15 bars reach the M15 agents: nothing to say.
    r = backtest(tmp_path, bars_csv(tmp_path / "EURUSD_M15.csv", 2000, 900))
    assert "no agent reads" not in r.stderr + r.stdout and report_of(tmp_path)["data"]["unread"] == []


def test_a_symbol_without_agents_is_named_for_ticks_too(tmp_path: Path) -> None:
    """Ticks feed every agent of their symbol; a symbol with none is named (in-process: the
    report's list, from the pool the run used)."""
    from sovereign.research import explain

    m = sim_market(2, 20_000)
    bt = engine.Backtest(CONFIG, m.names, m.kind)
    assert explain.unread(m, bt.pool) == []
    bare = AgentPool()  # an agent for the first symbol only
    bare.add_agent(0, 300)
    assert explain.unread(m, bare) == [("SYM1", 0, [])]
    note = explain.unread_note(explain.unread(m, bare), m.names)
    assert "SYM1: ticks, no agents" in note and '[[agents.sets]]\nsymbols = ["SYM1"]\n' in note
    assert "timeframe" not in note.split("[[agents.sets]]")[1]  # ticks: any timeframe reads them


# ---- signals that made no trade


def test_signals_without_trades_say_how_many_and_the_coordinators_threshold(tmp_path: Path) -> None:
    data = bars_csv(tmp_path / "EURUSD_M1.csv", 20_000, 60)
    r = backtest(tmp_path, data, "[coordinator]\nthreshold = 50\n")
    doc = report_of(tmp_path)
    n = doc["run"]["signals"]
    assert n > 100 and doc["metrics"]["trades"] == 0
    so = doc["run"]["signal_outcomes"]
    assert so["signals"] == n and so["filled"] == 0 and so["threshold"] == 50
    assert so["refused"] == [{"reason": "below_threshold", "signals": n, "why": so["refused"][0]["why"]}]
    assert f"note: {n:,} signals and no trades; refused: {n:,}: the coordinator's net conviction for the " \
           "symbol was below coordinator.threshold (50)" in r.stdout
    html = (tmp_path / "out" / "report.html").read_text()
    assert "What became of the signals" in html and f"{n:,} signals and no trades" in html
    assert "below coordinator.threshold" in html


def test_signals_risk_refused_name_risks_reason(tmp_path: Path) -> None:
    """A minimum lot far above what risk_per_trade sizes: risk refuses every order."""
    r = backtest(tmp_path, bars_csv(tmp_path / "EURUSD_M1.csv", 20_000, 60), "[symbols]\nmin_lot = 50.0\n")
    doc = report_of(tmp_path)
    so = doc["run"]["signal_outcomes"]
    assert doc["metrics"]["trades"] == 0 and so["filled"] == 0 and so["signals"] == doc["run"]["signals"] > 0
    reasons = {x["reason"]: x["signals"] for x in so["refused"]}
    assert reasons.get("risk:VOLUME_TOO_SMALL", 0) > 0 and sum(reasons.values()) == so["signals"]
    assert "risk refused the order: VOLUME_TOO_SMALL" in r.stdout
    assert "risk refused the order: VOLUME_TOO_SMALL" in (tmp_path / "out" / "report.html").read_text()


@pytest.mark.parametrize("kind", ["ticks", "bars"])
def test_every_signal_is_accounted_for_once_and_a_resumed_run_counts_as_one(kind: str) -> None:
    m = sim_market(2, 300_000) if kind == "ticks" else bar_market(3, 8_000)
    whole = engine.run(CONFIG, m)
    so = whole.out.outcomes.summary(whole.out.n_signals)
    assert so["filled"] > 0 and so["refused"]
    assert so["filled"] + sum(x["signals"] for x in so["refused"]) == whole.out.n_signals
    half = len(m.records) // 2
    first = engine.Backtest(CONFIG, m.names, m.kind)
    first.feed(m.records[:half])
    second = engine.Backtest.restore(first.snapshot())
    second.feed(m.records[half:])
    second.finish()
    assert second.out.outcomes.to_dict() == whole.out.outcomes.to_dict()


# ---- progress and time


def test_the_time_printed_names_loading_the_walk_and_the_report(tmp_path: Path) -> None:
    r = backtest(tmp_path, bars_csv(tmp_path / "EURUSD_M1.csv", 5_000, 60))
    line = r.stdout.splitlines()[0]
    assert "5,000 bars of 1 symbol," in line
    parts = line.split("; ")[1]
    assert [p.split()[0] for p in parts.split(": ")[0].split(", ")] == ["loading", "walk", "report"]
    times = [float(p.split()[1]) for p in parts.split(": ")[0].split(", ")]
    total = float(parts.split(": ")[1].split()[0])
    assert total == pytest.approx(sum(times), abs=0.011)


def _run_on_a_terminal(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[int, str, bytes]:
    """cmd with stderr on a pseudo-terminal: (exit code, stdout, what the terminal got)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=slave, env=env, cwd=cwd)
    os.close(slave)
    screen = b""
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 300)
            if not ready:
                break
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the terminal's last writer exited
                break
            if not chunk:
                break
            screen += chunk
        out = proc.communicate(timeout=300)[0].decode()
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, out, screen


def test_a_progress_display_shows_on_a_terminal_only(tmp_path: Path) -> None:
    data = bars_csv(tmp_path / "EURUSD_M1.csv", 20_000, 60)
    cmd = [*CLI, "backtest", str(data), "--out", str(tmp_path / "out")]
    env = {k: v for k, v in os.environ.items() if k != "SOVEREIGN_CONFIG"}
    env.update(TERM="xterm-256color", COLUMNS="120", SOVEREIGN_PROGRESS_AFTER_S="0")  # shown from the start
    code, out, screen = _run_on_a_terminal(cmd, env, tmp_path)
    assert code == 0 and "report: " in out
    assert b"walk" in screen and b"report" in screen and b"\x1b[" in screen, screen[-2000:]
    assert "\x1b[" not in out  # stdout (a pipe here) never gets it
    # Not a terminal: no progress, however long the run.
    r = subprocess.run(cmd, capture_output=True, env=env, cwd=tmp_path, timeout=300)
    assert r.returncode == 0 and b"walk" not in r.stderr and b"\x1b[" not in r.stderr + r.stdout
