"""A restarted gateway resumes its feed where the broker's state is (issue 22): after a
SIGKILL mid-run the quotes' market time never goes back and no worker refuses a tick;
a whole system started again on the same files goes on after the last tick it took."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from sovereign.engine.runtime import RUNNING, Heartbeats
from sovereign.market.sim import SimMarket
from sovereign.research.replay import load_session
from sovereign.state.store import StateStore
from tests.helpers import board_path

GATEWAY, WORKERS = 0, 3  # heartbeat slots: gateway, coordinator, risk, worker-0, ...


def start(tmp: Path, toml: str) -> subprocess.Popen:
    cfg = tmp / "sovereign.toml"
    cfg.write_text(f'[system]\nstate_dir = "{tmp / "state"}"\nsnapshot_interval_s = 1.0\nworkers = 2\n{toml}')
    return subprocess.Popen([sys.executable, "-m", "sovereign.cli", "run", "--config", str(cfg)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip


def wait(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def journal(state: Path) -> list[dict]:
    with StateStore(state, readonly=True) as st:
        return st.read(lambda t: [v for _, v in t.items("journal")])


def test_a_killed_gateway_resumes_its_feed_and_no_tick_goes_back(tmp_path: Path) -> None:
    """Before: the new gateway's feed started over from the sim's first tick: quotes went
    back days, and the workers refused every tick older than what they had."""
    proc = start(tmp_path, "[feed]\nsymbols = 8\n")
    try:
        wait(lambda: board_path(proc.pid) is not None, 60, "the heartbeat board")
        hb = Heartbeats(board_path(proc.pid).name)  # type: ignore[union-attr]
        gw = hb.slots[GATEWAY : GATEWAY + 1]
        wait(lambda: all(hb.slots["state"] == RUNNING) and gw["ticks"][0] > 300_000, 120, "trading")
        victim = int(gw["pid"][0])
        os.kill(victim, signal.SIGKILL)  # wherever it is: mid-batch, mid-commit
        wait(lambda: int(gw["pid"][0]) not in (0, victim) and gw["state"][0] == RUNNING
             and gw["ticks"][0] > 300_000, 120, "the restarted gateway feeding")  # fmt: skip
        refused = [int(hb.slots[WORKERS + k]["rejects"]) for k in range(2)]
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0 and "stopped clean=True" in out, out
    assert out.count("sovereign: restart process=gateway") == 1, out
    assert refused == [0, 0], out  # no tick out of order, late or unknown
    events = journal(tmp_path / "state")
    (resumed,) = [e for e in events if e["event"] == "feed_resumed"]
    assert resumed["mode"] == "exact" and resumed["same_run"], resumed
    ticks = load_session(tmp_path / "state" / "recordings").market.records
    assert len(ticks) > 600_000 and np.all(np.diff(ticks["ts_ns"]) >= 0)  # market time never went back
    # every tick once: the same ticks as the sim makes in one go (the recording is what the
    # quote board, the workers and the broker were given, in that order)
    want = SimMarket(8).next(len(ticks))
    assert np.array_equal(ticks["ts_ns"], want["ts_ns"]) and np.array_equal(ticks["bid"], want["bid"])


def write_files(tmp: Path, n: int) -> list[str]:
    ticks = SimMarket(2, seed=4, start_ns=1_767_657_600 * 10**9, mean_interval_s=2.0).next(n)
    paths = []
    for s, name in enumerate(("EURUSD", "GBPUSD")):
        mine = ticks[ticks["symbol"] == s]
        rows = "".join(f"{t},{name},{b:.5f},{a:.5f},1\n"
                       for t, b, a in zip(mine["ts_ns"], mine["bid"], mine["ask"], strict=True))  # fmt: skip
        (path := tmp / f"{name}.csv").write_text("time,symbol,bid,ask,volume\n" + rows)
        paths.append(str(path))
    return paths


def test_a_system_started_again_on_the_same_files_goes_on_after_the_last_tick_it_took(tmp_path: Path) -> None:
    files = ", ".join(f'"{f}"' for f in write_files(tmp_path, 30_000))
    feed = f'record_days = 0\n[feed]\nkind = "replay"\nfiles = [{files}]\n'
    given = []
    for max_ticks in (12_000, 0, 0):  # stopped by max_ticks, then to the end, then nothing is left
        proc = start(tmp_path, feed + f"max_ticks = {max_ticks}\n")
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out
        stats = [e for e in journal(tmp_path / "state") if e["event"] == "gateway_stats"]
        given.append(stats[-1]["ticks"])
    assert given == [12_000, 18_000, 0]
    resumed = [e for e in journal(tmp_path / "state") if e["event"] == "feed_resumed"]
    assert [(e["mode"], e["same_run"]) for e in resumed] == [("exact", False)] * 2
