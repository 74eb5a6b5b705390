"""A live session's recording, so `sovereign replay` can run it again to the same
decisions:

- ticks: every tick the gateway receives, in the .sovdata form (48-byte records), one
  file per UTC day of market time and per session, each opening with the config the
  session ran with (ticks-YYYY-MM-DD-<session>.sovdata);
- events: each process's log of *when* it took its inputs (events-<session>-<role>.jsonl,
  one orjson list per line): which signals and reports the coordinator took together and
  the ids it gave its intents; the quotes and clock risk decided with; the tick position
  at which the gateway sent each batch of orders and filled stops and targets; what state
  each process started from. Everything else (signals, intents, sizes, fills) is
  recomputed by the replay from the ticks, so the log fixes the schedule and nothing of
  the decisions themselves;
- snapshot-<session>-worker-<k>.bin: the agents a worker restored at the session's start.

The session is the UTC start time of the supervisor, shared by every process. Files whose
day is more than `retention_days` before the newest are deleted as new days begin, and a
session's events and snapshots go with its last tick file. Writes are appended (no
fsync: a recording is evidence, not state; a crash may cut the last record or line short,
and the readers ignore and report such a tail).
"""

from __future__ import annotations

import itertools
import os
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from sovereign.core import TICK_DTYPE
from sovereign.credentials import json_default
from sovereign.market.data import DataError
from sovereign.market.datafile import FILE_TICK_DTYPE, SUFFIX, header_bytes, read_header
from sovereign.state.store import private_dirs

NS = 1_000_000_000
DAY_NS = 86_400 * NS
NAME = re.compile(r"^ticks-(\d{4}-\d{2}-\d{2})-(\d{8}T\d{6}Z)" + re.escape(SUFFIX) + "$")
SIDECAR = re.compile(r"^(?:events|snapshot)-(\d{8}T\d{6}Z)-")  # a session's events and snapshots


def new_session() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


def record_dir(config: Any) -> Path | None:
    """Where a session is recorded (None: recording is off, system.record_days = 0)."""
    s = config.system
    if not s.record_days:
        return None
    return Path(s.record_dir or Path(s.state_dir) / "recordings")


class EventLog:
    """One process's event log for a session: orjson lists, one per line, appended.
    `add` buffers; `flush` writes what was added, whole or raising (call it once per turn
    of the process's loop). A process restarted in the same session goes on in the same
    file, after cutting off a line its predecessor's crash (or a full disk) left half
    written: that line in the middle of the file made the whole session unreplayable."""

    def __init__(self, directory: str | Path, session: str, role: str):
        path = Path(directory) / f"events-{session}-{role}.jsonl"
        private_dirs(path.parent)
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
        _trim_cut_line(self.fd)
        self.lines: list[bytes] = []

    def add(self, *event: Any) -> None:
        options = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
        self.lines.append(orjson.dumps(event, default=json_default, option=options))

    def flush(self) -> None:
        if self.lines:
            self.lines.append(b"")
            _write_all(self.fd, b"\n".join(self.lines))
            self.lines.clear()

    def close(self) -> None:
        if self.fd >= 0:
            self.flush()
            os.close(self.fd)
            self.fd = -1


def event_log(config: Any, session: str, role: str) -> EventLog | None:
    """The role's event log for this session, or None when recording is off."""
    directory = record_dir(config)
    return None if directory is None or not session else EventLog(directory, session, role)


def read_events(directory: str | Path, session: str) -> tuple[dict[str, list[list[Any]]], list[str]]:
    """Every role's events of a session, and what was wrong with them (a line cut short by
    a crash is the only thing that may be, and only at the end of a file)."""
    out: dict[str, list[list[Any]]] = {}
    issues: list[str] = []
    prefix = f"events-{session}-"
    for path in sorted(Path(directory).glob(prefix + "*.jsonl")):
        role = path.name[len(prefix) : -len(".jsonl")]
        lines = path.read_bytes().split(b"\n")
        events = out.setdefault(role, [])
        for i, line in enumerate(lines, 1):
            if not line:
                continue
            try:
                events.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                if i < len(lines) - 1:
                    raise ValueError(f"{path}:{i}: not an event (a corrupt log)") from None
                issues.append(f"{path}:{i}: the last line was cut short (a crash?); ignored")
    return out, issues


class Recorder:
    def __init__(self, directory: str | Path, meta: dict[str, Any], retention_days: int, session: str = "",
                 max_bytes: int = 0):  # fmt: skip
        self.dir = private_dirs(directory)
        self.meta = {"kind": "ticks", **meta}
        self.retention_days = retention_days
        self.max_bytes = max_bytes  # 0: no byte budget
        self.unchecked = 0  # bytes written since the budget was last checked
        self.current: Path | None = None  # the file being written: never pruned
        self.session = session or new_session()
        self.day = -1
        self.fd = -1
        self.ticks = 0  # ticks in this session's recording: a restarted gateway goes on counting
        for path in self.dir.glob(f"ticks-*-{self.session}{SUFFIX}"):
            self.ticks += _whole_records(path)
            m = NAME.match(path.name)
            if m is not None:  # and goes on in the session's newest file
                self.day = max(self.day, int(np.datetime64(m.group(1), "D").astype(np.int64)))

    def write(self, ticks: np.ndarray) -> None:
        """Append a batch (TICK_DTYPE) in the order received. A tick of a later UTC day than
        the current file's starts the next file; a tick of an earlier day (a feed going back
        in time, a restarted gateway) stays in the current one, so the files, read in day
        order, hold the ticks in the order the gateway received them."""
        if not len(ticks):
            return
        if self.fd >= 0 and int(ticks["ts_ns"].max()) // DAY_NS <= self.day:  # the usual case: all today
            parts = [(self.day, ticks)]
        else:
            days = np.maximum.accumulate(np.maximum(ticks["ts_ns"] // DAY_NS, self.day))
            cuts = [0, *(np.flatnonzero(np.diff(days)) + 1).tolist(), len(ticks)]
            parts = [(int(days[a]), ticks[a:b]) for a, b in itertools.pairwise(cuts)]
        for day, part in parts:
            if day != self.day or self.fd < 0:
                self._open(day)
            data = file_records(part)
            _write_all(self.fd, data)
            self.ticks += len(part)
            self.unchecked += len(data)
        if self.max_bytes and self.unchecked > self.max_bytes // 16:  # a few checks per budget's worth
            self.unchecked = 0
            self.prune()

    def _open(self, day: int) -> None:
        self.close()
        self.day = day
        date = time.strftime("%Y-%m-%d", time.gmtime(day * 86_400))
        path = self.dir / f"ticks-{date}-{self.session}{SUFFIX}"
        if path.exists():  # a restarted gateway: a record cut short by the crash would misalign the rest
            _whole_records(path, trim=True)
        new = not path.exists()
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
        if new:
            _write_all(self.fd, header_bytes({**self.meta, "day": date, "session": self.session}))
        self.current = path
        self.prune()

    def prune(self) -> list[Path]:
        """Delete recordings older than the retention, counted from the newest day, then the
        oldest day files while all of them pass the byte budget (never the file being
        written), and the events and snapshots of sessions with no tick file left."""
        if self.retention_days <= 0:
            return []
        gone, sessions = [], {self.session}
        kept: list[tuple[int, str, Path, int]] = []  # (day, session, path, bytes) of what stays
        for path in sorted(self.dir.iterdir()):
            m = NAME.match(path.name)
            if m is None:
                continue
            day = int(np.datetime64(m.group(1), "D").astype(np.int64))
            if day < self.day - self.retention_days:
                path.unlink(missing_ok=True)
                gone.append(path)
            else:
                kept.append((day, m.group(2), path, path.stat().st_size))
        total = sum(k[3] for k in kept)
        for _day, session, path, size in sorted(kept):
            if not self.max_bytes or total <= self.max_bytes or path == self.current:
                sessions.add(session)
                continue
            path.unlink(missing_ok=True)
            gone.append(path)
            total -= size
        for path in sorted(self.dir.iterdir()):
            m = SIDECAR.match(path.name)
            if m is not None and m.group(1) not in sessions:
                path.unlink(missing_ok=True)
                gone.append(path)
        return gone

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


# A file tick is a live tick without recv_ns, its last field: the first 48 bytes of each.
assert all((TICK_DTYPE.fields or {})[name] == f for name, f in (FILE_TICK_DTYPE.fields or {}).items())


def _write_all(fd: int, data: bytes) -> None:
    """Write all of `data` or raise: a short write (a full disk) must not leave a record cut
    that would shift every later one."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:
            raise OSError(f"wrote nothing of {len(view)} bytes")
        view = view[n:]


def _trim_cut_line(fd: int, chunk: int = 1 << 16) -> None:
    """Cut the file after its last newline (a last line without one was cut short)."""
    size = os.fstat(fd).st_size
    end = size
    while end > 0:
        start = max(0, end - chunk)
        newline = os.pread(fd, end - start, start).rfind(b"\n")
        if newline >= 0:
            end = start + newline + 1
            break
        end = start
    if end < size:
        os.ftruncate(fd, end)


def file_records(ticks: np.ndarray) -> bytes:
    """Ticks (TICK_DTYPE) as the bytes of FILE_TICK_DTYPE records: one strided copy of
    each record's first 48 bytes, not one numpy call per field."""
    if ticks.dtype != TICK_DTYPE:
        raise TypeError(f"recording expects TICK_DTYPE ticks, got {ticks.dtype}")
    raw = np.ascontiguousarray(ticks).view(np.uint8).reshape(len(ticks), TICK_DTYPE.itemsize)
    return raw[:, : FILE_TICK_DTYPE.itemsize].tobytes()


def _whole_records(path: Path, trim: bool = False) -> int:
    """The whole tick records in a recording file; trim: cut a partial last one off."""
    try:
        _, offset = read_header(path)
    except DataError:  # a header cut short: nothing usable in it
        if trim:
            path.unlink()
        return 0
    n, tail = divmod(path.stat().st_size - offset, FILE_TICK_DTYPE.itemsize)
    if trim and tail:
        os.truncate(path, offset + n * FILE_TICK_DTYPE.itemsize)
    return n


def recordings(path: str | Path) -> list[Path]:
    """The recording files at `path` (a file, or a directory of them), oldest first."""
    p = Path(path)
    if p.is_dir():
        found = [(m.group(2), f.name, f) for f in p.iterdir() if (m := NAME.match(f.name))]
        return [f for _, _, f in sorted(found)]  # by session, then day
    return [p]


def session_of(path: str | Path) -> str | None:
    """The session a recording file belongs to (None: not named as a recording)."""
    m = NAME.match(Path(path).name)
    return m.group(2) if m else None
