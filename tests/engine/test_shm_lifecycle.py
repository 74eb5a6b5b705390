"""Shared memory over a long life (issue 22): names that belong to the state directory,
the segments of a system that died reclaimed at the next start, and a /dev/shm too small
refused at start with how much is needed, never a SIGBUS later."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from sovereign.core import RingError, TickRing
from sovereign.engine.runtime import shm_prefix
from sovereign.state.store import StateStore
from tests.helpers import LiveSystem, ring_name

CLI = [sys.executable, "-m", "sovereign.cli"]


def config(tmp: Path, state: str = "state", extra: str = "") -> Path:
    cfg = tmp / f"{state}.toml"
    cfg.write_text(f'[system]\nstate_dir = "{tmp / state}"\nrecord_days = 0\nworkers = 1\n'
                   f'[feed]\nsymbols = 4\npace = "realtime"\nspeed = 60.0\n{extra}')  # fmt: skip
    return cfg


def test_names_belong_to_the_state_directory_and_stay_across_starts(tmp_path: Path) -> None:
    """The same state gets the same prefix at every start (so a dead run's segments are
    found); another state, even a copy of this one with its secret, another prefix."""
    with StateStore(tmp_path / "a") as st:
        first = shm_prefix(st, tmp_path / "a")
        assert shm_prefix(st, tmp_path / "a") == first
    with StateStore(tmp_path / "a") as st:
        assert shm_prefix(st, tmp_path / "a") == first
    shutil.copytree(tmp_path / "a", tmp_path / "copy")
    with StateStore(tmp_path / "copy") as st:
        assert shm_prefix(st, tmp_path / "copy") != first
    with StateStore(tmp_path / "b") as st:
        other = shm_prefix(st, tmp_path / "b")
    assert other != first and first.startswith("sov-") and len(first) == len("sov-") + 16


def test_a_segment_is_reserved_whole_when_it_is_made() -> None:
    """A ring larger than /dev/shm's free space is refused at creation (ENOSPC), and its
    name is not left behind; a sparse segment would have been made and died of SIGBUS at
    the first page tmpfs could not give."""
    name = ring_name("huge")
    with pytest.raises(RingError, match=r"cannot reserve the pages of shared-memory segment .*No space left"):
        TickRing.create(name, 1 << 32)
    assert not (Path("/dev/shm") / name).exists()


def test_a_killed_systems_segments_are_reclaimed_by_the_next_start(tmp_path: Path) -> None:
    system = LiveSystem(config(tmp_path), tmp_path / "log")
    try:
        system.start()
        status = system.wait_healthy(90)
        children = list(system.pids(status).values())
        left = [p.name for p in system.segments()]
        system.kill_all(children)  # SIGKILL: nothing removes them
        assert sorted(p.name for p in system.segments()) == sorted(left) and left
        system.start()
        system.wait_healthy(90)
        assert f"shm_reclaimed segments={len(left)}" in system.tail()
        assert system.stop() == 0
        assert system.segments() == []  # the first run's too: they had the same names
    finally:
        system.close()


def _unshare(*args: str) -> bool:
    return shutil.which("unshare") is not None and subprocess.run(
        ["unshare", *args, "true"], capture_output=True).returncode == 0  # fmt: skip


@pytest.mark.skipif(not _unshare("-m"), reason="needs mount namespaces (root)")
def test_a_small_dev_shm_is_a_start_error_that_says_how_much_is_needed(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    script = f"mount -t tmpfs -o size=4m tmpfs /dev/shm && exec {sys.executable} -m sovereign.cli run " \
             f"--config {cfg}"
    r = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stderr
    assert "shared memory: this system needs 6.3 MiB in /dev/shm (1 worker at 4.6 MiB each" in r.stderr
    assert "only 4.0 MiB is free" in r.stderr and "system.workers" in r.stderr


@pytest.mark.skipif(not _unshare("-pf", "--mount-proc"), reason="needs PID namespaces (root)")
def test_two_systems_in_separate_pid_namespaces_sharing_dev_shm_never_meet(tmp_path: Path) -> None:
    """Both supervisors are pid 1 in their namespace: names made from the pid (`sov1-*`) made
    the second take over the first's live rings. Named by their state, both run. (The pids
    their status shows are their namespace's: only their process groups are signalled.)"""
    systems = [LiveSystem(config(tmp_path, name), tmp_path / f"{name}.log") for name in ("a", "b")]
    procs: list[subprocess.Popen] = []
    try:
        for s in systems:
            with open(s.log, "ab") as out:
                s.proc = subprocess.Popen(["unshare", "-pf", "--mount-proc", *CLI, "run", "--config",
                                           str(s.config)], stdout=out, stderr=subprocess.STDOUT,
                                          start_new_session=True)  # fmt: skip
                procs.append(s.proc)
        for s in systems:
            s.wait_healthy(90)
        for s in systems:
            status = s.status()
            assert status is not None and s.healthy(status), s.tail()
            assert status["supervisor_pid"] == 1
            assert all(p["restarts"] == 0 for p in status["processes"]), status["processes"]
        prefixes = {s.segments()[0].name.split("-")[1] for s in systems}
        assert len(prefixes) == 2
        for proc in procs:  # the supervisor is unshare's child
            supervisor = psutil.Process(proc.pid).children()[0]
            supervisor.send_signal(signal.SIGTERM)
        for s, proc in zip(systems, procs, strict=True):
            assert proc.wait(120) == 0, s.tail()
            assert s.segments() == []
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for s in systems:
            s.remove_segments()
