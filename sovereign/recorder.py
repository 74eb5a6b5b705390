"""The live gateway's tick recording: every tick it receives, in the .sovdata form
(48-byte records), one file per UTC day of market time and per session, each opening
with the config the session ran with, so `sovereign replay` can run it again.

Files are named ticks-YYYY-MM-DD-<session>.sovdata, where the session is the UTC start
time of the gateway; files whose day is more than `retention_days` before the newest
are deleted as new days begin. Writes are appended a batch at a time (no fsync: the
recording is evidence, not state; a crash may cut the last record short, and the reader
ignores and reports such a tail).
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from sovereign.datafile import FILE_TICK_DTYPE, SUFFIX, header_bytes

NS = 1_000_000_000
DAY_NS = 86_400 * NS
NAME = re.compile(r"^ticks-(\d{4}-\d{2}-\d{2})-(\d{8}T\d{6}Z)" + re.escape(SUFFIX) + "$")


class Recorder:
    def __init__(self, directory: str | Path, meta: dict[str, Any], retention_days: int):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.meta = {"kind": "ticks", **meta}
        self.retention_days = retention_days
        self.session = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        self.day = -1
        self.fd = -1
        self.ticks = 0

    def write(self, ticks: np.ndarray) -> None:
        """Append a batch (TICK_DTYPE, time order); a new UTC day starts a new file."""
        if not len(ticks):
            return
        days = ticks["ts_ns"] // DAY_NS
        for day in np.unique(days).tolist():
            part = ticks[days == day] if days[0] != days[-1] else ticks
            if day != self.day:
                self._open(day)
            rec = np.zeros(len(part), FILE_TICK_DTYPE)
            for name in FILE_TICK_DTYPE.names or ():
                rec[name] = part[name]
            os.write(self.fd, rec.tobytes())
            self.ticks += len(part)

    def _open(self, day: int) -> None:
        self.close()
        self.day = day
        date = time.strftime("%Y-%m-%d", time.gmtime(day * 86_400))
        path = self.dir / f"ticks-{date}-{self.session}{SUFFIX}"
        new = not path.exists()
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        if new:
            os.write(self.fd, header_bytes({**self.meta, "day": date, "session": self.session}))
        self.prune()

    def prune(self) -> list[Path]:
        """Delete recordings older than the retention, counted from the newest day."""
        if self.retention_days <= 0:
            return []
        gone = []
        for path in sorted(self.dir.iterdir()):
            m = NAME.match(path.name)
            if m is None:
                continue
            day = int(np.datetime64(m.group(1), "D").astype(np.int64))
            if day < self.day - self.retention_days:
                path.unlink(missing_ok=True)
                gone.append(path)
        return gone

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def recordings(path: str | Path) -> list[Path]:
    """The recording files at `path` (a file, or a directory of them), oldest first."""
    p = Path(path)
    if p.is_dir():
        found = [(m.group(2), f.name, f) for f in p.iterdir() if (m := NAME.match(f.name))]
        return [f for _, _, f in sorted(found)]  # by session, then day
    return [p]
