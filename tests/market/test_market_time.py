"""Bars close by market time, not the wall clock: a session paced in real time from a past
start (as any replay of history is) makes exactly the signals a full-speed session makes
on the same ticks, and no tick is refused as late."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from sovereign.core import SIGNAL_DTYPE, AgentPool
from sovereign.state.store import StateStore

# 20 symbols, a tick each 5 s of market time: 24,000 ticks are 100 minutes of market, a
# few hundred bars per symbol. At 600 times real time that is 10 s of wall clock, during
# which most of the workers' bars close by the clock (a symbol is quiet for seconds of
# market time between its ticks), not by a tick.
FEED = '[feed]\nsymbols = 20\ntick_interval_s = 5.0\nstart = "2026-03-01T00:00:00"\nmax_ticks = 24000\n'


def session(tmp: Path, feed: str) -> dict[str, Any]:
    """Run the whole system once; its signals, its workers' pool counters, its journal."""
    tmp.mkdir()
    cfg = tmp / "sovereign.toml"
    cfg.write_text(f'[system]\nstate_dir = "{tmp / "state"}"\nworkers = 2\nrecord_days = 0\n' + feed)
    r = subprocess.run([sys.executable, "-m", "sovereign.cli", "run", "--config", str(cfg)],
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    with StateStore(tmp / "state", readonly=True) as st:
        signals = st.read(lambda t: [v for _, v in t.items("signals", raw=True)])
        snapshots = st.read(lambda t: [v for _, v in t.items("snapshots", raw=True)])
        journal = st.read(lambda t: [v for _, v in t.items("journal")])
    stats = []
    for blob in snapshots:  # each worker's pool as it stopped
        pool = AgentPool()
        pool.restore(blob)
        stats.append(pool.stats())
    sig = np.frombuffer(b"".join(signals), SIGNAL_DTYPE)
    key = [n for n in SIGNAL_DTYPE.names or () if n != "origin_ns"]  # origin: the wall clock's
    return {"signals": np.sort(sig[key], order=key), "pools": stats, "journal": journal}


def rejected(run: dict[str, Any], reason: str) -> int:
    return sum(int(s["rejected"][reason]) for s in run["pools"])


def test_a_session_paced_from_a_past_start_makes_the_signals_a_full_speed_one_makes(tmp_path: Path) -> None:
    fast = session(tmp_path / "fast", FEED)
    paced = session(tmp_path / "paced", FEED + 'pace = "realtime"\nspeed = 600\n')
    for run in (fast, paced):
        gateway = next(e for e in run["journal"] if e["event"] == "gateway_stats")
        assert gateway["ticks"] == 24_000 and gateway["lost_ticks"] == 0
        assert sum(int(s["ticks"]) for s in run["pools"]) == 24_000
        assert rejected(run, "late") == 0 and rejected(run, "backwards") == 0
    assert len(fast["signals"]) > 50
    assert len(paced["signals"]) == len(fast["signals"])
    assert np.array_equal(paced["signals"], fast["signals"])
