"""Archiving never loses a record: an archiver SIGKILLed at every step of a run (each
failpoint, on the first piece it moves and on a later one) leaves each record in LMDB or in
a listed part that verifies, unchanged, and readers show each once; the next run finishes
the job: each record exactly once, nothing left behind, and the state verifies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from sovereign.failpoints import POINTS
from sovereign.ops.maintenance import failed, verify
from sovereign.state.archive import MANIFEST, Archiver
from sovereign.state.store import StateStore
from tests.state.test_archive import build, lmdb_records, placement, shown_once

ARCHIVE_POINTS = [p for p in POINTS if p.startswith("archive.")]
# small batches and parts, so that a run makes many parts and deletes each in several transactions
RUN = """
import sys
from sovereign.state.archive import Archiver
from sovereign.state.store import StateStore
with StateStore(sys.argv[1]) as store:
    for _ in range(int(sys.argv[3])):
        Archiver(store, sys.argv[2], 90, batch=40, part_records=150).step()
    Archiver(store, sys.argv[2], 90, batch=40, part_records=150).run()
"""


def test_every_archive_step_has_a_failpoint() -> None:
    assert ARCHIVE_POINTS == ["archive.temp", "archive.written", "archive.listed", "archive.deleting",
                              "archive.deleted"]  # fmt: skip


@pytest.mark.parametrize("after", [0, 3], ids=["first piece", "a later piece"])
@pytest.mark.parametrize("point", ARCHIVE_POINTS)
def test_a_kill_at_any_step_loses_nothing_and_the_next_run_finishes(tmp_path: Path, point: str,
                                                                   after: int) -> None:  # fmt: skip
    state, arc = tmp_path / "s", tmp_path / "archive"
    store = build(state, days=200)
    original = lmdb_records(store)
    store.close()
    env = {**os.environ, "SOVEREIGN_FAILPOINTS": f"{point}={tmp_path / 'fired'}"}
    r = subprocess.run([sys.executable, "-c", RUN, str(state), str(arc), str(after)], env=env,
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == -signal.SIGKILL, f"not killed at {point}: {r.returncode}\n{r.stderr}"
    with StateStore(state) as store:
        in_both = placement(original, store, arc)  # never neither, never half, never changed
        if point in ("archive.listed", "archive.deleting", "archive.deleted"):
            assert in_both > 0 or point == "archive.deleted"
        shown_once(original, store, arc)  # never twice in what the readers show
        Archiver(store, arc, 90).run()
        assert placement(original, store, arc) == 0  # now exactly once
        shown_once(original, store, arc)
    left = sorted(f.name for f in arc.iterdir() if not f.name.endswith(".jsonl.zst"))
    assert left == [".lock", MANIFEST]
    checks = verify(state, archive=arc)
    assert not failed(checks), checks


def test_kills_in_a_row_at_every_step_then_a_clean_run(tmp_path: Path) -> None:
    """One archive, killed at each point in turn (each run finishing what the last left)."""
    state, arc = tmp_path / "s", tmp_path / "archive"
    store = build(state, days=200)
    original = lmdb_records(store)
    store.close()
    for n, point in enumerate(ARCHIVE_POINTS):
        env = {**os.environ, "SOVEREIGN_FAILPOINTS": f"{point}={tmp_path / f'fired-{n}'}"}
        r = subprocess.run([sys.executable, "-c", RUN, str(state), str(arc), "0"], env=env,
                           capture_output=True, text=True, timeout=300)  # fmt: skip
        assert r.returncode == -signal.SIGKILL, f"not killed at {point}: {r.returncode}\n{r.stderr}"
        with StateStore(state) as store:
            placement(original, store, arc)
            shown_once(original, store, arc)
    with StateStore(state) as store:
        Archiver(store, arc, 90).run()
        assert placement(original, store, arc) == 0
    assert not failed(verify(state, archive=arc))
