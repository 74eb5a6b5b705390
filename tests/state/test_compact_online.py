"""Compacting the LMDB file while other processes write to it (issue 22): real writer
processes commit numbered records before, during and after the swap; every record a
writer saw committed is in the compacted file, the file shrank, and a compactor SIGKILLed
at each step of the swap leaves a state that opens, holds every committed record and
compacts again."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from sovereign.failpoints import POINTS
from sovereign.state.store import OPEN_LOCK, SWAP_MARKER, StateError, StateStore, compact, finish_swap

COMPACT_POINTS = [p for p in POINTS if p.startswith("compact.")]

# A writer: numbered records, one transaction each, until the stop file appears; it prints
# each number once its commit has returned (acknowledged), and checks that its last one reads back.
WRITER = """
import sys, time
from pathlib import Path
from sovereign.state.store import StateStore
state, name, stop = sys.argv[1], sys.argv[2], Path(sys.argv[3])
with StateStore(state) as store:
    i = 0
    while not stop.exists():
        store.write(lambda t: t.put("meta", f"{name}-{i:08d}", {"i": i}))
        assert store.read(lambda t: t.get("meta", f"{name}-{i:08d}")) == {"i": i}, i
        print(i, flush=True)
        i += 1
        time.sleep(0.002)
"""

COMPACTOR = """
import sys
from sovereign.state.store import compact
print(compact(sys.argv[1]), flush=True)
"""


def bloated(path: Path, mib: int = 24) -> None:
    """A state whose file is mostly free pages: records written, then deleted."""
    blob = os.urandom(64 << 10)
    with StateStore(path) as store:
        for n in range(0, mib * 16, 64):
            store.write(lambda t, n=n: [t.put_bytes("meta", f"junk-{k:06d}", blob) for k in range(n, n + 64)])
        store.write(lambda t: t.put("meta", "kept", {"v": 1}))
        store.write(lambda t: [t.delete("meta", f"junk-{k:06d}") for k in range(mib * 16)])
        use = store.usage()
    assert use["free_bytes"] > use["file_bytes"] // 2, use


class Writers:
    def __init__(self, state: Path, tmp: Path, n: int = 2, env: dict[str, str] | None = None):
        self.stop = tmp / "stop"
        self.procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(state), f"w{k}", str(self.stop)],
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
                      for k in range(n)]  # fmt: skip

    def wait_for_some(self, store: StateStore) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            names = [f"w{k}-00000005" for k in range(len(self.procs))]
            if all(store.read(lambda t, name=name: t.get("meta", name)) for name in names):
                return
            time.sleep(0.05)
        raise AssertionError("the writers did not start")

    def finish(self) -> dict[str, int]:
        """Stop them; how many records each saw committed."""
        self.stop.touch()
        acked = {}
        for k, p in enumerate(self.procs):
            out, err = p.communicate(timeout=60)
            assert p.returncode == 0, err
            acked[f"w{k}"] = len(out.split())
        return acked


def check_all_there(state: Path, acked: dict[str, int]) -> None:
    with StateStore(state) as store:
        assert store.read(lambda t: t.get("meta", "kept")) == {"v": 1}
        for name, n in acked.items():
            assert n > 5, acked
            got = store.read(lambda t, name=name: [k for k, _ in t.items("meta", f"{name}-") if
                                                   k.startswith(f"{name}-".encode())])  # fmt: skip
            assert len(got) >= n, (name, len(got), n)  # every acknowledged one (and one more in flight)
            assert got[:n] == [f"{name}-{i:08d}".encode() for i in range(n)]
    assert not (state / SWAP_MARKER).exists() and not list(state.glob(".compact-*"))


def test_a_compaction_under_writing_processes_loses_nothing_and_shrinks_the_file(tmp_path: Path) -> None:
    state = tmp_path / "s"
    bloated(state)
    before = (state / "data.mdb").stat().st_size
    writers = Writers(state, tmp_path)
    with StateStore(state) as store:
        writers.wait_for_some(store)
        # the compactor's own process writes from another thread meanwhile: it reopens too
        stop, wrote = threading.Event(), []

        def own() -> None:
            while not stop.is_set():
                n = len(wrote)
                store.write(lambda t, n=n: t.put("meta", f"own-{n:08d}", n))
                wrote.append(n)

        thread = threading.Thread(target=own)
        thread.start()
        time.sleep(0.2)
        done = store.compact()
        time.sleep(0.3)  # everyone goes on in the new file
        stop.set()
        thread.join()
        assert store.read(lambda t: t.get("meta", f"own-{len(wrote) - 1:08d}")) == len(wrote) - 1
    acked = writers.finish()
    assert done["bytes_before"] == before and done["bytes_after"] < before // 2, done
    check_all_there(state, {**acked, "own": len(wrote)})
    assert (state / "data.mdb").stat().st_size < before // 2
    assert oct((state / "data.mdb").stat().st_mode)[-3:] == "600"


# A read-only reader (as the CLI's): it reads, waits for a line, reads again.
READER = """
import sys
from sovereign.state.store import StateStore
with StateStore(sys.argv[1], readonly=True) as store:
    print(store.read(lambda t: t.get("meta", "kept")), flush=True)
    sys.stdin.readline()
    print(store.read(lambda t: t.get("meta", "after")), flush=True)
"""


def test_compacting_twice_in_a_row_under_a_read_only_reader(tmp_path: Path) -> None:
    state = tmp_path / "s"
    bloated(state, mib=8)
    reader = subprocess.Popen([sys.executable, "-c", READER, str(state)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert reader.stdout is not None and reader.stdout.readline() == "{'v': 1}\n"
    with StateStore(state) as store:
        first = store.compact()
        second = store.compact()
        store.write(lambda t: t.put("meta", "after", 2))
    assert first["bytes_after"] < first["bytes_before"] and second["bytes_after"] <= first["bytes_after"]
    out, _ = reader.communicate("\n", timeout=60)
    assert out == "2\n"  # it opened the new file: the old one has no "after"


@pytest.mark.parametrize("point", COMPACT_POINTS)
def test_a_compactor_killed_at_any_step_leaves_every_write(tmp_path: Path, point: str) -> None:
    state = tmp_path / "s"
    bloated(state, mib=8)
    writers = Writers(state, tmp_path)
    with StateStore(state, readonly=True) as store:
        writers.wait_for_some(store)
    env = {**os.environ, "SOVEREIGN_FAILPOINTS": f"{point}={tmp_path / 'fired'}"}
    r = subprocess.run([sys.executable, "-c", COMPACTOR, str(state)], env=env, capture_output=True, text=True,
                       timeout=120)  # fmt: skip
    assert r.returncode == -signal.SIGKILL, f"not killed at {point}: {r.returncode}\n{r.stderr}"
    time.sleep(0.3)  # the writers go on: past the cut swap, each on a file that is whole
    acked = writers.finish()
    check_all_there(state, acked)  # (a writable open finishes what the kill left)
    done = compact(state)  # and it compacts again
    assert done["bytes_after"] < done["bytes_before"] or point in ("compact.swapped", "compact.unlocked")
    check_all_there(state, acked)


def test_finish_swap_removes_the_old_lock_only_when_the_copy_is_in_place(tmp_path: Path) -> None:
    state = tmp_path / "s"
    with StateStore(state) as store:
        store.write(lambda t: t.put("meta", "kept", {"v": 1}))
    lock = (state / "lock.mdb").stat().st_ino
    data = state / "data.mdb"
    other = tmp_path / "other"
    other.write_bytes(b"x")

    def marker(copy: Path) -> bytes:
        st = copy.stat()
        return orjson.dumps({"copy": [st.st_dev, st.st_ino]})

    # the marker names a copy that is not the data file (not in place yet): the lock file stays
    (state / ".compact-x").mkdir()
    (state / ".compact-x" / "data.mdb").write_bytes(b"copy")
    for text in (marker(other), b"", b"garbage", b'{"copy": 5}'):  # cut, or not ours: the same
        (state / SWAP_MARKER).write_bytes(text)
        finish_swap(state)
        assert (state / "lock.mdb").stat().st_ino == lock and not (state / SWAP_MARKER).exists(), text
    assert not (state / ".compact-x").exists()
    (state / f"{SWAP_MARKER}.part").write_bytes(b"{")  # a marker cut while written: nothing swapped
    finish_swap(state)
    assert (state / "lock.mdb").stat().st_ino == lock and not (state / f"{SWAP_MARKER}.part").exists()
    # the marker names the data file: the copy is in place, the lock file is the old file's
    (state / SWAP_MARKER).write_bytes(marker(data))
    finish_swap(state)
    assert not (state / "lock.mdb").exists() and not (state / SWAP_MARKER).exists()
    with StateStore(state) as store:
        assert store.read(lambda t: t.get("meta", "kept")) == {"v": 1}
    assert (state / OPEN_LOCK).exists()


def test_a_swap_that_fails_before_the_replace_leaves_no_marker(tmp_path: Path, monkeypatch: Any) -> None:
    """An I/O error after the marker, before the copy took the data file's place: the old
    file is the state, and no marker is left to make the next opener drop its lock file
    (a second lock file on the same data file: two writers at once)."""
    state = tmp_path / "s"
    bloated(state, mib=8)
    real = os.replace

    def failing(src: object, dst: object) -> None:
        if str(dst).endswith("data.mdb"):
            raise OSError(5, "Input/output error")
        real(src, dst)  # type: ignore[arg-type]

    with StateStore(state) as store:
        lock = (state / "lock.mdb").stat().st_ino
        monkeypatch.setattr(os, "replace", failing)
        with pytest.raises(StateError, match="Input/output error"):
            store.compact()
        monkeypatch.undo()
        assert not (state / SWAP_MARKER).exists() and not list(state.glob(".compact-*"))
        assert (state / "lock.mdb").stat().st_ino == lock
        store.write(lambda t: t.put("meta", "after", 1))  # on the same file, as before
        r = subprocess.run([sys.executable, "-c", READER, str(state)], input="\n", capture_output=True,
                           text=True, timeout=60)  # fmt: skip
        assert r.stdout == "{'v': 1}\n1\n" and (state / "lock.mdb").stat().st_ino == lock, r.stderr


def test_no_compaction_without_room_for_the_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "s"
    bloated(state, mib=8)
    before = (state / "data.mdb").stat()
    monkeypatch.setattr(shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(1 << 30, 1 << 30, 1 << 20))
    with StateStore(state) as store, pytest.raises(StateError, match=r"needs about \d+ MiB free on its disk"):
        store.compact()
    assert (state / "data.mdb").stat().st_ino == before.st_ino and not list(state.glob(".compact-*"))


def test_compacting_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="no state at"):
        compact(tmp_path / "none")
    state = tmp_path / "s"
    with StateStore(state) as store:
        store.write(lambda t: t.put("meta", "kept", 1))
    with StateStore(state, readonly=True) as ro, pytest.raises(StateError, match="opened read-only"):
        ro.compact()


# ---- the running system compacts its own state


def test_the_running_system_compacts_its_state_and_goes_on_trading(tmp_path: Path) -> None:
    from tests.engine.invariants import system_violations
    from tests.helpers import LiveSystem

    state = tmp_path / "state"
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[system]\nstate_dir = "{state}"\nrecord_days = 0\nworkers = 1\n'
                   '[feed]\nsymbols = 4\n[retention]\ninterval_s = 1.0\n')  # fmt: skip
    system = LiveSystem(cfg, tmp_path / "log")
    try:
        system.start()
        system.wait_healthy(90)
        bloated(state, mib=80)  # 80 MiB written and deleted beside the running system: past 64 MiB free
        big = (state / "data.mdb").stat().st_size
        deadline = time.monotonic() + 60
        while not (done := [e for e in journal(state) if e["event"] == "state_compacted"]):
            assert time.monotonic() < deadline, system.tail()
            time.sleep(0.2)
        assert done[0]["online"] is True and done[0]["bytes_before"] >= big > 4 * done[0]["bytes_after"]
        ticks, orders = gateway_counts(system)
        deadline = time.monotonic() + 90
        while gateway_counts(system)[1] <= orders:  # trading goes on, through the new file
            assert time.monotonic() < deadline, system.tail()
            time.sleep(0.2)
        assert gateway_counts(system)[0] > ticks
        r = subprocess.run([sys.executable, "-m", "sovereign.cli", "state", "compact", "--config", str(cfg)],
                           capture_output=True, text=True, timeout=120)  # fmt: skip
        assert r.returncode == 0 and "while the system ran" in r.stdout, r.stderr
        status = system.wait_healthy(30)
        assert all(p["restarts"] == 0 for p in status["processes"]), status
        assert system.stop() == 0
    finally:
        system.close()
    assert system_violations(state) == []
    events = [e["event"] for e in journal(state)]
    assert events.count("state_compacted") == 2 and "compact_failed" not in events


def gateway_counts(system: object) -> tuple[int, int]:
    """The gateway's ticks fed and orders sent, so far."""
    status = system.wait_healthy(30)  # type: ignore[attr-defined]
    return next((p["ticks"], p["orders"]) for p in status["processes"] if p["role"] == "gateway")


def journal(state: Path) -> list[dict]:
    with StateStore(state, readonly=True) as st:
        return st.read(lambda t: [v for _, v in t.items("journal")])


LIMITED = """
import sys
from sovereign.config import load, with_absolute_paths
from sovereign.engine import supervisor

supervisor.ONLINE_COMPACT_MAX = 0  # every state is too big to copy while it runs
sys.exit(supervisor.Supervisor(with_absolute_paths(load(sys.argv[1]))).run())
"""


def test_a_state_too_big_to_copy_while_running_waits_for_the_next_start(tmp_path: Path) -> None:
    from tests.helpers import LiveSystem

    state = tmp_path / "state"
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[system]\nstate_dir = "{state}"\nrecord_days = 0\nworkers = 1\n'
                   '[feed]\nsymbols = 2\n[retention]\ninterval_s = 1.0\n')  # fmt: skip
    log = tmp_path / "log"
    system = LiveSystem(cfg, log)
    try:
        with open(log, "ab") as out:
            system.proc = subprocess.Popen([sys.executable, "-c", LIMITED, str(cfg)], stdout=out,
                                           stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        system.wait_healthy(90)
        bloated(state, mib=80)
        big = (state / "data.mdb").stat().st_size
        deadline = time.monotonic() + 60
        while not [e for e in journal(state) if e["event"] == "compact_failed"]:
            assert time.monotonic() < deadline, system.tail()
            time.sleep(0.2)
        with StateStore(state) as store:  # more in use: the reason's figure changes, not the reason
            blob = os.urandom(64 << 10)
            store.write(lambda t: [t.put_bytes("meta", f"kept-{k:03d}", blob) for k in range(48)])
        r = subprocess.run([sys.executable, "-m", "sovereign.cli", "state", "compact", "--config", str(cfg)],
                           capture_output=True, text=True, timeout=120)  # fmt: skip
        assert r.returncode == 1 and "compacted at the next start" in r.stderr, (r.stdout, r.stderr)
        assert (state / "data.mdb").stat().st_size >= big  # nothing was copied
        assert system.stop() == 0
        system.start()  # a plain supervisor: it compacts at its start
        system.wait_healthy(90)
        assert system.stop() == 0
    finally:
        system.close()
    events = journal(state)
    failed = [e for e in events if e["event"] == "compact_failed"]
    assert len(failed) == 1 and "MiB in use" in failed[0]["why"]  # reported once, not every second
    done = [e for e in events if e["event"] == "state_compacted"]
    assert len(done) == 1 and "online" not in done[0] and done[0]["bytes_after"] < big // 4
