"""Files and directories the system makes are its own, whatever the umask (issue 20,
item 7): LMDB 0600, directories made on the way 0700, recordings 0600."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from sovereign.core import TICK_DTYPE
from sovereign.state.recorder import EventLog, Recorder
from sovereign.state.store import StateStore


@pytest.fixture
def umask_000() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def mode(p: Path) -> int:
    return stat.S_IMODE(p.lstat().st_mode)


def test_state_its_parents_and_its_copy_are_private_under_umask_000(tmp_path: Path, umask_000: None) -> None:
    state = tmp_path / "a" / "b" / "state"
    with StateStore(state) as st:
        st.write(lambda t: t.put("risk", "state", {"x": 1}))
        st.copy_to(tmp_path / "c" / "copy")
    for d in (tmp_path / "a", tmp_path / "a" / "b", state, tmp_path / "c", tmp_path / "c" / "copy"):
        assert mode(d) == 0o700, d
    for f in [*state.iterdir(), *(tmp_path / "c" / "copy").iterdir()]:
        assert mode(f) == 0o600, f


def test_recordings_and_event_logs_are_private_under_umask_000(tmp_path: Path, umask_000: None) -> None:
    rec = tmp_path / "r" / "recordings"
    r = Recorder(rec, {"symbols": ["EURUSD"]}, 30, "sess")
    ticks = np.zeros(2, TICK_DTYPE)
    ticks["ts_ns"], ticks["bid"], ticks["ask"] = [1_767_225_600_000_000_000] * 2, 1.1, 1.1002
    r.write(ticks)
    r.close()
    log = EventLog(tmp_path / "e" / "logs", "sess", "risk")
    log.add("start", {})
    log.flush()
    for d in (tmp_path / "r", rec, tmp_path / "e", tmp_path / "e" / "logs"):
        assert mode(d) == 0o700, d
    files = [*rec.iterdir(), *(tmp_path / "e" / "logs").iterdir()]
    assert files and all(mode(f) == 0o600 for f in files), [(f, oct(mode(f))) for f in files]


def test_an_event_log_does_not_follow_a_planted_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("untouched")
    (tmp_path / "logs").mkdir(mode=0o700)
    (tmp_path / "logs" / "events-sess-risk.jsonl").symlink_to(victim)
    with pytest.raises(OSError):
        EventLog(tmp_path / "logs", "sess", "risk")
    assert victim.read_text() == "untouched"


def test_a_backtest_report_folder_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    import subprocess
    import sys

    data = tmp_path / "eur.csv"
    data.write_text("time,symbol,bid,ask\n2026-01-01T00:00:00Z,EURUSD,1.0,1.0002\n"
                    "2026-01-01T00:00:01Z,EURUSD,1.0,1.0002\n")  # fmt: skip
    victim = tmp_path / "victim"
    victim.mkdir()
    (tmp_path / "out").symlink_to(victim)
    cmd = [sys.executable, "-m", "sovereign.cli", "backtest", str(data), "--out", str(tmp_path / "out")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "is a symlink" in r.stderr, r.stderr
    assert list(victim.iterdir()) == []


def test_recordings_keep_to_their_byte_budget_oldest_days_first(tmp_path: Path) -> None:
    """A first run must never fill the disk (issue 22): past the budget the oldest day files
    go, never the one being written."""
    day = 86_400 * 1_000_000_000
    start = 1_767_225_600_000_000_000
    r = Recorder(tmp_path / "rec", {"symbols": ["EURUSD"]}, 30, "20260101T000000Z", max_bytes=200_000)
    for d in range(6):  # six days of 2,000 ticks: about 96 kB a day
        ticks = np.zeros(2_000, TICK_DTYPE)
        ticks["ts_ns"] = start + d * day + np.arange(2_000) * 1_000_000
        ticks["bid"], ticks["ask"] = 1.1, 1.1002
        r.write(ticks)
    r.close()
    files = sorted((tmp_path / "rec").glob("ticks-*"))
    total = sum(f.stat().st_size for f in files)
    assert total <= 200_000 + files[-1].stat().st_size and len(files) < 6
    assert files[-1].name.startswith("ticks-2026-01-06")  # the newest day stays
