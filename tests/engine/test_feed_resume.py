"""A restarted gateway resumes its feed where the broker's state is (issue 22): after a
SIGKILL mid-run the quotes' market time never goes back and no worker refuses a tick;
a whole system started again on the same files goes on after the last tick it took."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from sovereign.core import QuoteBoard
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


class BoardWatch(threading.Thread):
    """Reads every symbol's quote on the quote board as fast as it can, and keeps each time a
    symbol's quote time went back."""

    def __init__(self, name: str, n: int):
        super().__init__(daemon=True)
        self.board, self.n = QuoteBoard.attach(name), n
        self.back: list[tuple[int, int, int]] = []  # (symbol, from, to)
        self.reads = 0
        self.done = threading.Event()

    def run(self) -> None:
        seen = [0] * self.n
        while not self.done.is_set():
            for s in range(self.n):
                ts = self.board.read(s)[0]
                if ts < seen[s]:
                    self.back.append((s, seen[s], ts))
                seen[s] = max(seen[s], ts)
            self.reads += 1
            time.sleep(0.0005)


def trading_and_watched(proc: subprocess.Popen, ticks: int) -> tuple[Heartbeats, np.ndarray, BoardWatch]:
    """Once every process runs and the gateway has fed `ticks`: the heartbeat board, the
    gateway's slot, and a BoardWatch reading the quote board (started)."""
    wait(lambda: board_path(proc.pid) is not None, 60, "the heartbeat board")
    hb = Heartbeats(board_path(proc.pid).name)  # type: ignore[union-attr]
    gw = hb.slots[GATEWAY : GATEWAY + 1]
    wait(lambda: all(hb.slots["state"] == RUNNING) and gw["ticks"][0] > ticks, 120, "trading")
    watch = BoardWatch(board_path(proc.pid).name.replace("-heartbeats", "-quotes"), 8)  # type: ignore[union-attr]
    watch.start()
    return hb, gw, watch


def restarted(gw: np.ndarray, victim: int) -> None:
    """Wait for the gateway that took the killed one's place to be feeding."""
    wait(lambda: int(gw["pid"][0]) not in (0, victim) and gw["state"][0] == RUNNING
         and gw["ticks"][0] > 100_000, 120, "the restarted gateway feeding")  # fmt: skip


def stop(proc: subprocess.Popen, watch: BoardWatch) -> str:
    """Stop watching the board, then the system; its output."""
    watch.done.set()
    watch.join()
    proc.send_signal(signal.SIGTERM)
    return proc.communicate(timeout=120)[0]


def clean_up(proc: subprocess.Popen, watch: BoardWatch | None) -> None:
    if watch is not None:
        watch.done.set()
        watch.join()
        watch.board.close()
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


def test_a_killed_gateway_resumes_its_feed_and_no_tick_goes_back(tmp_path: Path) -> None:
    """Before: the new gateway's feed started over from the sim's first tick: quotes went
    back days, and the workers refused every tick older than what they had. Then (found by
    the soak): it resumed at the broker's durable mark, which trails what the killed gateway
    had already put on the quote board, and republished those older quotes: the board's
    market time went back (hours, at the soak's pace) and risk marked at older prices."""
    proc = start(tmp_path, "[feed]\nsymbols = 8\n")
    watch = None
    try:
        hb, gw, watch = trading_and_watched(proc, 300_000)
        for _ in range(3):
            victim = int(gw["pid"][0])
            os.kill(victim, signal.SIGKILL)  # wherever it is: mid-batch, mid-commit
            restarted(gw, victim)
        refused = [int(hb.slots[WORKERS + k]["rejects"]) for k in range(2)]
        out = stop(proc, watch)
    finally:
        clean_up(proc, watch)
    assert proc.returncode == 0 and "stopped clean=True" in out, out
    assert out.count("sovereign: restart process=gateway") == 3, out
    assert refused == [0, 0], out  # no tick out of order, late or unknown
    assert watch.reads > 100 and not watch.back, watch.back[:10]  # no quote went back in time
    events = journal(tmp_path / "state")
    resumed = [e for e in events if e["event"] == "feed_resumed"]
    assert [(e["mode"], e["same_run"]) for e in resumed] == [("exact", True)] * 3, resumed
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


def test_a_gateway_killed_while_a_worker_lost_ticks_republishes_no_older_quote(tmp_path: Path) -> None:
    """Found by the soak: a worker that fell behind lost ticks (its ring full), so the ticks a
    killed gateway had given after the broker's mark were more than any worker had. The new
    gateway gave them again from the mark, and the quote board, which had shown every one of
    them, went back hours. A symbol's quote now never goes back in time."""
    proc = start(tmp_path, "[feed]\nsymbols = 8\n")
    watch = None
    try:
        hb, gw, watch = trading_and_watched(proc, 100_000)
        worker = int(hb.slots[WORKERS]["pid"])
        os.kill(worker, signal.SIGSTOP)  # its ring fills: the gateway counts its ticks lost
        try:
            wait(lambda: gw["dropped"][0] > 50_000, 120, "ticks lost to the stopped worker")
            victim = int(gw["pid"][0])
            os.kill(victim, signal.SIGKILL)
        finally:
            os.kill(worker, signal.SIGCONT)
        restarted(gw, victim)
        out = stop(proc, watch)
    finally:
        clean_up(proc, watch)
    assert proc.returncode == 0 and "stopped clean=True" in out, out
    (resumed,) = [e for e in journal(tmp_path / "state") if e["event"] == "feed_resumed"]
    assert resumed["given"] > sum(resumed["not_pushed_again"]["workers"]), resumed  # the soak's case
    assert watch.reads > 100 and not watch.back, watch.back[:10]
