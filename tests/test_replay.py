"""Recording and replay: the live gateway records every tick (daily files, retention, a
cut-short tail ignored and reported), and `sovereign replay` runs a real live session's
recording through the backtest wiring and compares it with the live state."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson

from sovereign.config import Config
from sovereign.datafile import open_file
from sovereign.recorder import Recorder, recordings
from sovereign.replay import load_recording
from sovereign.sim import SimMarket

CLI = [sys.executable, "-m", "sovereign.cli"]
DAY = 86_400 * 10**9


def test_recorder_rotates_daily_keeps_the_config_and_prunes(tmp_path: Path) -> None:
    ticks = SimMarket(2, seed=1, mean_interval_s=120.0).next(6_000)  # about four days of ticks
    days = np.unique(ticks["ts_ns"] // DAY)
    assert len(days) >= 4
    rec = Recorder(tmp_path, {"symbols": ["A", "B"], "config": {"feed": {"symbols": 2}}}, retention_days=2)
    for a in range(0, len(ticks), 500):
        rec.write(ticks[a : a + 500])
    rec.close()
    files = recordings(tmp_path)
    assert len(files) == 3  # the newest day and the two before it
    kept = np.concatenate([np.asarray(open_file(f).records) for f in files])
    first_kept = (days[-1] - 2) * DAY
    expect = ticks[ticks["ts_ns"] >= first_kept]
    assert np.array_equal(kept["ts_ns"], expect["ts_ns"]) and np.array_equal(kept["bid"], expect["bid"])
    assert all(open_file(f).meta["config"] == {"feed": {"symbols": 2}} for f in files)
    # a crash mid-write cuts the last record short: ignored and reported, never read as a tick
    with files[-1].open("ab") as fh:
        fh.write(b"\x01" * 20)
    market = open_file(files[-1])
    assert "cut short" in market.issues[0][2] and market.records["ts_ns"][-1] == expect["ts_ns"][-1]


def test_replay_of_a_live_session_reproduces_its_signals(tmp_path: Path) -> None:
    cfg = tmp_path / "sovereign.toml"
    cfg.write_text(f'[system]\nstate_dir = "{tmp_path / "state"}"\n[feed]\nsymbols = 4\nmax_ticks = 300000\n')
    run = subprocess.run([*CLI, "run", "--config", str(cfg)], capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stdout + run.stderr
    rec_dir = tmp_path / "state" / "recordings"
    market, config = load_recording(rec_dir)
    assert len(market.records) == 300_000 and market.names == [f"SIM{s:03d}" for s in range(4)]
    assert isinstance(config, Config) and config.feed.symbols == 4
    r = subprocess.run([*CLI, "replay", str(rec_dir), "--config", str(cfg), "--json"], capture_output=True,
                       text=True, timeout=180)  # fmt: skip
    diff = orjson.loads(r.stdout)
    sig = diff["signals"]
    assert sig["identical"] and sig["live"] > 100 and sig["matched"] == sig["live"] == sig["replayed"], sig
    orders = diff["orders"]
    assert orders["live"] > 0 and orders["replayed"] > 0
    # Live ran at full speed: its orders reach risk and the broker thousands of ticks after
    # the tick the replay decides on. The replay says so, order by order; exit 1.
    assert r.returncode == (0 if diff["identical"] else 1)
    for row in orders["differ"]:
        assert set(row) - {"time", "symbol", "side", "fill_price"} <= {"outcome", "volume", "sl", "tp"}


def test_replay_refuses_what_is_not_a_recording(tmp_path: Path) -> None:
    (tmp_path / "x.sovdata").write_bytes(b"nope")
    r = subprocess.run([*CLI, "replay", str(tmp_path / "x.sovdata"), "--state-dir", str(tmp_path)],
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 2 and "not a .sovdata file" in r.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    r = subprocess.run([*CLI, "replay", str(empty)], capture_output=True, text=True)
    assert r.returncode == 2 and "no recordings" in r.stderr
