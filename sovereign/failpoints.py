"""Failpoints: kill a process at a named point, to test what a crash exactly there leaves.

    SOVEREIGN_FAILPOINTS="gateway.unsent=/tmp/x.marker[,name=marker...]"

The first process to reach point `name` creates the file `marker` and kills itself with
SIGKILL (nothing is cleaned up, as in an OOM kill or a power loss). While the marker
exists the point passes, so the process its supervisor starts again goes on. Unset, as
in production, a point costs one dict lookup.

The points:
- gateway.unlogged: orders committed in SUBMITTING, not yet in the replay's schedule;
- gateway.submitting: orders committed in SUBMITTING and logged, the broker not called yet;
- gateway.untold: the exits of a batch of ticks committed with the broker's state, not yet
  in the replay's schedule (the replay fills them from the recording, beside those of
  ticks the broker never saw, and keeps those the new gateway's account has);
- gateway.unsent: execution reports committed with the broker's state (and, if the next
  batch of orders came while these were at the broker, that batch in SUBMITTING), not
  pushed yet;
- risk.refusing: a batch of intents decided and logged, the approved ones pushed, the
  refusals not committed yet;
- risk.answered: an operator's command (halt, resume, flatten, reload) applied and answered;
- archive.temp: an archive part half written to its temporary file;
- archive.written: a part complete and synced under its name, not in the manifest yet;
- archive.listed: the part in the manifest, its records still in LMDB;
- archive.deleting: the first batch of its records deleted from LMDB, the rest not;
- archive.deleted: every record of the part deleted, the manifest not told yet;
- compact.copied: the compacted copy of the state written and synced, nothing swapped yet;
- compact.marked: the swap's marker written, the data file not replaced yet;
- compact.swapped: the copy in place of the data file, the old lock file still there;
- compact.unlocked: the old lock file removed, the marker not yet.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

POINTS = ("gateway.unlogged", "gateway.submitting", "gateway.untold", "gateway.unsent", "risk.refusing",
          "risk.answered", "archive.temp", "archive.written", "archive.listed", "archive.deleting",
          "archive.deleted", "compact.copied", "compact.marked", "compact.swapped", "compact.unlocked")
ENV = "SOVEREIGN_FAILPOINTS"


def parse(spec: str) -> dict[str, Path]:
    """name=marker pairs, comma-separated; a clear error naming what is wrong."""
    points: dict[str, Path] = {}
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        name, sep, marker = item.partition("=")
        if not sep or not marker:
            raise ValueError(f"{ENV}: {item!r} is not name=marker-file")
        if name not in POINTS:
            raise ValueError(f"{ENV}: no failpoint {name!r}; there are {', '.join(POINTS)}")
        points[name] = Path(marker)
    return points


_armed = parse(os.environ.get(ENV, ""))


def failpoint(name: str) -> None:
    marker = _armed.get(name)
    if marker is None:
        return
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:  # fired once already: a restarted process goes on
        return
    os.kill(os.getpid(), signal.SIGKILL)
