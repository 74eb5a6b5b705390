"""Recording and replay: the live gateway records every tick (daily files, retention, a
cut-short tail ignored and reported) and each process logs its schedule; `sovereign
replay` runs a real live session again, through kill -9 of the gateway, coordinator and
risk, and finds it identical to the live state; a doctored schedule is caught."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from sovereign.config import Config
from sovereign.core import SIGNAL_DTYPE
from sovereign.engine.runtime import RUNNING, Heartbeats
from sovereign.failpoints import POINTS
from sovereign.ledger import same_book
from sovereign.market.datafile import open_file
from sovereign.market.sim import SimMarket
from sovereign.research.replay import Replay, _signal_diff, load_session
from sovereign.state.recorder import Recorder, recordings
from sovereign.state.store import StateStore
from tests.helpers import board_path

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


def test_a_restarted_gateway_records_on_in_reception_order(tmp_path: Path) -> None:
    ticks = SimMarket(2, seed=3, mean_interval_s=60.0).next(6_000)  # about two days
    first = Recorder(tmp_path, {"symbols": ["A", "B"], "config": {}}, 30, session="20260101T000000Z")
    first.write(ticks[:5_000])
    first.close()
    newest = recordings(tmp_path)[-1]
    with newest.open("ab") as fh:  # killed mid-write
        fh.write(b"\x02" * 30)
    again = Recorder(tmp_path, {"symbols": ["A", "B"], "config": {}}, 30, session="20260101T000000Z")
    assert again.ticks == 5_000  # positions go on where the first stopped
    again.write(ticks[:1_000])  # a restarted feed starts over, days back: kept in the newest file
    again.write(ticks[5_000:])
    again.close()
    files = recordings(tmp_path)
    got = np.concatenate([np.asarray(open_file(f).records) for f in files])
    expect = np.concatenate([ticks[:5_000], ticks[:1_000], ticks[5_000:]])
    assert np.array_equal(got["ts_ns"], expect["ts_ns"]) and np.array_equal(got["ask"], expect["ask"])
    assert not open_file(newest).issues  # the cut-short record was trimmed before appending


def _run(tmp: Path, toml: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    cfg = tmp / "sovereign.toml"
    cfg.write_text(f'[system]\nstate_dir = "{tmp / "state"}"\nworkers = 2\n' + toml)
    return subprocess.Popen([*CLI, "run", "--config", str(cfg), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})})  # fmt: skip


def _replay(tmp: Path, *args: str) -> tuple[int, dict[str, Any], str]:
    cmd = [*CLI, "replay", str(tmp / "state" / "recordings"), "--config", str(tmp / "sovereign.toml")]
    cmd.append("--json")
    r = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=300)
    return r.returncode, (orjson.loads(r.stdout) if r.stdout.startswith("{") else {}), r.stderr


def _identical(diff: dict[str, Any]) -> None:
    for kind in ("signals", "orders", "executions"):
        d = diff[kind]
        assert d["matched"] == d["live"] == d["replayed"] - d.get("not_in_live_history", 0), (kind, d)
    assert diff["identical"] and not diff["problems"], diff["problems"]


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real live session at full speed: 2 workers, 8 symbols, 1.5 M ticks."""
    tmp = tmp_path_factory.mktemp("live")
    proc = _run(tmp, "[feed]\nsymbols = 8\nmax_ticks = 1500000\n")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    return tmp


def test_replay_of_a_live_session_reproduces_its_signals_orders_and_fills(session: Path) -> None:
    s = load_session(session / "state" / "recordings")
    assert len(s.market.records) == 1_500_000 and s.market.names == [f"SIM{k:03d}" for k in range(8)]
    assert isinstance(s.config, Config) and s.config.feed.symbols == 8
    assert {"gateway", "coordinator", "risk", "worker-0", "worker-1"} <= set(s.events)
    code, diff, err = _replay(session)
    assert code == 0, err
    _identical(diff)
    assert diff["signals"]["live"] > 300 and diff["orders"]["live"] > 30 and diff["executions"]["live"] > 30


def test_replay_catches_a_doctored_schedule_and_reports_a_cut_log(session: Path, tmp_path: Path) -> None:
    tmp = tmp_path / "copy"
    shutil.copytree(session, tmp)
    text = (tmp / "sovereign.toml").read_text().replace(str(session), str(tmp))
    (tmp / "sovereign.toml").write_text(text)
    rec = tmp / "state" / "recordings"
    risk_log = next(rec.glob("events-*-risk.jsonl"))
    events = [orjson.loads(line) for line in risk_log.read_bytes().splitlines()]
    for e in events:
        if e[0] == "i":  # risk "saw" other quotes than the market's when it sized
            e[3] = {s: [q[0], q[1] + 0.0005, q[2] + 0.0005, q[3]] for s, q in e[3].items()}
    risk_log.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    code, diff, err = _replay(tmp)
    assert code == 1, err
    assert any("not in the recording" in p for p in diff["problems"]), diff["problems"]
    assert diff["orders"]["n_differ"] >= 1  # the approval's price (and so the order) moved
    # a log whose last line a crash cut short: replayed without it, and said so
    coord_log = next(rec.glob("events-*-coordinator.jsonl"))
    coord_log.write_bytes(coord_log.read_bytes()[:-7])
    code, diff, err = _replay(tmp)
    assert any("cut short" in i for i in diff["recording_issues"]), diff["recording_issues"]
    for f in rec.glob("events-*"):
        f.unlink()
    code, diff, err = _replay(tmp)
    assert code == 2 and "no event logs" in err


def test_replay_is_exact_through_kill_9_of_gateway_coordinator_and_risk(tmp_path: Path) -> None:
    """Risk, the coordinator and the gateway each killed once, mid-session, wherever they
    happen to be: the replay still makes the session's signals, orders and executions.
    (Its rare failures were four windows; each now has its failpoint case in
    test_a_process_killed_between_its_commit_and_its_push_loses_nothing.)"""
    proc = _run(tmp_path, "[feed]\nsymbols = 20\n")
    try:
        _wait(lambda: board_path(proc.pid) is not None, 60, "the heartbeat board")
        hb = Heartbeats(board_path(proc.pid).name)  # type: ignore[union-attr]
        _wait(lambda: all(hb.slots["state"] == RUNNING) and hb.slots[0]["ticks"] > 300_000, 60, "trading")
        for slot, role in ((2, "risk"), (1, "coordinator"), (0, "gateway")):
            victim = int(hb.slots[slot]["pid"])
            os.kill(victim, signal.SIGKILL)
            _wait(lambda s=slot, v=victim: int(hb.slots[s]["pid"]) not in (0, v)
                  and hb.slots[s]["state"] == RUNNING, 60, f"{role} restarted")  # fmt: skip
            seen = int(hb.slots[0]["ticks"])
            _wait(lambda s=seen: int(hb.slots[0]["ticks"]) > s + 300_000, 60, "ticks flowing again")
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0 and "stopped clean=True undrained_records=0" in out, out
    finally:
        if proc.poll() is None:
            proc.kill()
    assert out.count("sovereign: restart process=") == 3, out
    code, diff, err = _replay(tmp_path)
    assert code == 0, (err, orjson.dumps(diff, option=orjson.OPT_INDENT_2).decode()[:6000])
    _identical(diff)
    assert diff["orders"]["live"] > 30


SLOT = {"gateway": 0, "risk": 2}  # heartbeat slots


def test_signals_a_killed_coordinator_never_wrote_are_told_apart_from_differences() -> None:
    """The case CI met: the killed coordinator took three signals, wrote the first and lost
    two, one of them older than the oldest the history kept (signals are not taken in time
    order). The cut for a trimmed history leaves one of the two: it is explained. A signal
    the killed coordinator never took is a difference."""
    sig = np.zeros(5, SIGNAL_DTYPE)
    sig["ts_ns"] = [100, 300, 350, 400, 500]
    sig["agent"] = np.arange(5)
    live = sig[[1, 3]]  # 300 written by the killed coordinator, 400 by the next
    r = Replay(signals=sig[[0, 1, 2, 3]], history_lost=2, lost_from=sig[[1, 0, 2]])
    d = _signal_diff(r.signals, live, [], 20, r)
    assert d["identical"] and d["not_in_live_history"] == 1 and d["replayed"] == 3  # 100 is cut
    r.signals = sig  # and 500, which no coordinator took live
    d = _signal_diff(r.signals, live, [], 20, r)
    assert not d["identical"] and d["n_only_in_replay"] == 2 and d["not_in_live_history"] == 0


# the trading processes' points (the archiver's: tests/state/test_archive_kills.py; risk.answered,
# which an operator's command reaches: tests/engine/test_supervisor_faults.py)
@pytest.mark.parametrize("point", [p for p in POINTS if p.split(".")[0] in SLOT and p != "risk.answered"])
def test_a_process_killed_between_its_commit_and_its_push_loses_nothing(tmp_path: Path, point: str) -> None:
    """SIGKILL exactly where a record can be lost (sovereign/failpoints.py): a gateway after
    the commit of executions and before their reports are pushed, or after orders are
    committed in SUBMITTING and before the replay's schedule or the broker sees them
    (the new one recovers them, and the replay keeps them); risk after it logged a batch
    of intents and pushed the approved ones, before it committed the refusals. The
    restarted gateway sends those reports again: risk's book stays the broker's without
    risk restarting. The refusals risk never committed leave no record, and the replay,
    told by the restarted risk how many intents its state covers, leaves them out too: it
    follows the whole session."""
    role = point.split(".")[0]
    marker = tmp_path / "fired"
    proc = _run(tmp_path, "[feed]\nsymbols = 20\n", env={"SOVEREIGN_FAILPOINTS": f"{point}={marker}"})
    try:
        _wait(lambda: board_path(proc.pid) is not None, 60, "the heartbeat board")
        hb = Heartbeats(board_path(proc.pid).name)  # type: ignore[union-attr]
        k = SLOT[role]
        _wait(marker.exists, 120, f"{role} reaching {point}")
        # The process started after the kill (risk can reach its point in its first batch,
        # before it ever beat RUNNING, so the pid first seen running may be the new one).
        killed_ns = marker.stat().st_mtime_ns
        _wait(lambda: hb.slots[k]["restarts"] == 1 and hb.slots[k]["started_ns"] > killed_ns
              and hb.slots[k]["state"] == RUNNING, 60, f"{role} restarted")  # fmt: skip
        seen = int(hb.slots[0]["orders"])
        _wait(lambda: int(hb.slots[0]["orders"]) >= seen + 10, 60, "orders sent after the restart")
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and "stopped clean=True undrained_records=0" in out, out
    assert out.count("sovereign: restart process=") == out.count(f"restart process={role}") == 1, out
    with StateStore(tmp_path / "state", readonly=True) as st:
        book, broker, events = st.read(lambda t: (t.get("positions", "book"), t.get("bridge", "paper"),
                                                  [v["event"] for _, v in t.items("journal")]))  # fmt: skip
        orders = st.read(lambda t: {int.from_bytes(k, "big"): o for k, o in t.items("orders")})
    assert same_book(book, broker["ledger"])
    assert role == "risk" or "reconciled" not in events  # a restarted gateway's reports reach risk
    assert not [o for o in orders.values() if o["state"] in ("SUBMITTING", "APPROVED")]
    # After gateway.unsent's commit an order is left in SUBMITTING only if that commit held
    # the next batch too (one approved while the last was at the broker: BrokerLoop._orders).
    # After gateway.untold's commit too, when it came while a batch in SUBMITTING waited for
    # the ticks its decision saw (BrokerLoop._reach).
    if point not in ("gateway.unsent", "gateway.untold"):
        assert ("recovered" in events) == (point in ("gateway.unlogged", "gateway.submitting"))
    code, diff, err = _replay(tmp_path)
    assert code == 0, (err, orjson.dumps(diff, option=orjson.OPT_INDENT_2).decode()[:6000])
    _identical(diff)
    lost = diff["orders"]["unrecorded"]
    assert bool(lost) == (role == "risk") and not set(lost) & set(orders)  # the refusals never committed


def _wait(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_replay_refuses_what_is_not_a_recording(tmp_path: Path) -> None:
    (tmp_path / "x.sovdata").write_bytes(b"nope")
    r = subprocess.run([*CLI, "replay", str(tmp_path / "x.sovdata"), "--state-dir", str(tmp_path)],
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 2 and "not a .sovdata file" in r.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    r = subprocess.run([*CLI, "replay", str(empty)], capture_output=True, text=True)
    assert r.returncode == 2 and "no recordings" in r.stderr
