"""One system per state directory (issue 22): a second supervisor on the same state, even
with another runtime directory, refuses to start; a restore under a live system refuses,
whatever the control socket said; the lock goes with its holder however it dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sovereign.ops.maintenance import OpsError, backup, restore
from sovereign.state.store import StateError, StateLock, StateStore, StateUser

CLI = [sys.executable, "-m", "sovereign.cli"]


def config(tmp: Path, name: str, runtime: str) -> Path:
    cfg = tmp / f"{name}.toml"
    cfg.write_text(f'[system]\nstate_dir = "{tmp / "state"}"\nruntime_dir = "{tmp / runtime}"\n'
                   'record_days = 0\n[feed]\nsymbols = 4\npace = "realtime"\n')  # fmt: skip
    return cfg


def test_a_second_supervisor_on_the_same_state_refuses_to_start(tmp_path: Path) -> None:
    first = subprocess.Popen([*CLI, "run", "--config", str(config(tmp_path, "a", "run-a"))],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        lock = tmp_path / ".state.lock"
        deadline = time.monotonic() + 60
        while not (lock.exists() and lock.read_text()):
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        second = [*CLI, "run", "--config", str(config(tmp_path, "b", "run-b"))]
        r = subprocess.run(second, capture_output=True, text=True, timeout=60)
        assert r.returncode == 1 and "is in use by a running sovereign supervisor" in r.stderr, r.stderr
        assert f"pid {first.pid}" in r.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=60)
    assert first.returncode == 0


def test_restore_refuses_while_the_lock_is_held_and_a_dead_holder_frees_it(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with StateStore(state) as st:
        st.write(lambda t: t.journal("started"))
    backup(state, tmp_path / "b")
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\n"
                               "from sovereign.state.store import StateLock\n"
                               f"lock = StateLock({str(state)!r}, 'a test holder')\n"
                               "print('held', flush=True)\n"
                               "time.sleep(3600)"], stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"  # type: ignore[union-attr]
        with pytest.raises(OpsError, match="in use by a test holder"):
            restore(tmp_path / "b", state)
        with pytest.raises(StateError):
            StateLock(state, "a second")
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    restore(tmp_path / "b", state)  # the kernel released a dead holder's lock
    assert (state / "data.mdb").is_file()


def test_a_process_of_a_system_whose_supervisor_died_keeps_the_state_until_it_exits(tmp_path: Path) -> None:
    """The children of a killed supervisor drain for a moment: a new supervisor or a restore
    must not take the state while one of them still writes to it (two systems, one
    database). Each holds it shared (StateUser) for its life; StateLock waits for them, or
    refuses naming their pids."""
    state = tmp_path / "state"
    lock = StateLock(state, "a supervisor")
    lock.share()
    child = subprocess.Popen([sys.executable, "-c", "import time\n"
                              "from sovereign.state.store import StateUser\n"
                              f"user = StateUser({str(state)!r})\n"
                              "print('joined', flush=True)\n"
                              "time.sleep(3600)"], stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert child.stdout.readline().strip() == "joined"  # type: ignore[union-attr]
        lock.release()  # the supervisor dies; its child lives on
        earlier = rf"still open by processes of an earlier run \(pids {child.pid}\)"
        with pytest.raises(StateError, match=earlier):
            StateLock(state, "a new supervisor")
        with pytest.raises(OpsError, match="still open by processes of an earlier run"):
            restore(tmp_path / "nothing", state)
        killer = subprocess.Popen(["sh", "-c", f"sleep 1; kill -9 {child.pid}"])
        StateLock(state, "a new supervisor", wait_s=60).release()  # waits for the child to go
        killer.wait()
        assert child.wait(5) == -signal.SIGKILL
    finally:
        child.kill()
        child.wait()


def test_a_user_cannot_join_a_state_being_restored(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with StateLock(state, "sovereign state restore"), pytest.raises(StateError, match="being replaced"):
        StateUser(state)  # a restore holds it exclusive: no share()
    StateUser(state)
