"""A process's event log across crashes and a full disk (issue 22): a line cut short by a
crash or a short write is trimmed when the restarted process opens the log again, so the
session stays replayable; a write is whole or raises."""

from __future__ import annotations

import multiprocessing as mp
import resource
import signal
from pathlib import Path
from typing import Any

from sovereign.state.recorder import EventLog, read_events

CTX = mp.get_context("spawn")


def test_a_line_cut_by_a_crash_is_trimmed_when_the_process_comes_back(tmp_path: Path) -> None:
    log = EventLog(tmp_path, "s1", "risk")
    log.add("intent", 1, 2.5)
    log.add("approve", 1)
    log.close()
    path = tmp_path / "events-s1-risk.jsonl"
    with open(path, "ab") as f:
        f.write(b'["fill", 1, 1.10')  # the crash: a line half written
    again = EventLog(tmp_path, "s1", "risk")  # the restarted risk, same session
    again.add("fill", 2, 1.2)
    again.close()
    events, issues = read_events(tmp_path, "s1")  # a corrupt line in the middle raised here
    assert events["risk"] == [["intent", 1, 2.5], ["approve", 1], ["fill", 2, 1.2]] and issues == []


def test_a_log_with_no_whole_line_is_emptied_and_a_whole_one_kept(tmp_path: Path) -> None:
    path = tmp_path / "events-s1-gateway.jsonl"
    path.write_bytes(b"x" * 100_000)  # longer than one read of the trim
    EventLog(tmp_path, "s1", "gateway").close()
    assert path.read_bytes() == b""
    path.write_bytes(b"[1]\n")
    EventLog(tmp_path, "s1", "gateway").close()
    assert path.read_bytes() == b"[1]\n"


def _full_disk(path: str, conn: Any) -> None:
    log = EventLog(path, "s1", "coordinator")
    log.add("signal", "x" * 10)
    log.flush()
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a short write, then EFBIG: as a disk filling up
    limit = (Path(path) / "events-s1-coordinator.jsonl").stat().st_size + 100
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    log.add("signal", "y" * 1000)
    try:
        log.flush()
        conn.send("no error")
    except OSError as e:
        conn.send(f"OSError: {e}")


def test_a_short_write_raises_and_the_next_open_trims_what_it_left(tmp_path: Path) -> None:
    parent, child = CTX.Pipe()
    p = CTX.Process(target=_full_disk, args=(str(tmp_path), child))
    p.start()
    said = parent.recv()
    p.join(30)
    assert said.startswith("OSError") and "File too large" in said, said  # was ignored: a cut line, no error
    EventLog(tmp_path, "s1", "coordinator").close()
    events, issues = read_events(tmp_path, "s1")
    assert events["coordinator"] == [["signal", "x" * 10]] and issues == []


def test_a_log_is_only_ever_appended(tmp_path: Path) -> None:
    for n in range(3):
        log = EventLog(tmp_path, "s1", "risk")
        log.add("n", n)
        log.close()
    assert read_events(tmp_path, "s1")[0]["risk"] == [["n", 0], ["n", 1], ["n", 2]]
