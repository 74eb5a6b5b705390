"""Shared memory nobody else can reach (issue 20, item 2): the heartbeat board and the
rings are created new (never adopted, never through a symlink), mode 0600 whatever the
umask, under a name with a secret part, and refused at attach when another user owns
them or may reach them. Attacks run as `nobody` where the machine has it."""

from __future__ import annotations

import os
import pwd
import re
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from sovereign.core import RingError, TickRing
from sovereign.engine.runtime import FEED_DONE, Heartbeats
from tests.helpers import board_path, ring_name

try:
    NOBODY = pwd.getpwnam("nobody").pw_uid
except KeyError:  # pragma: no cover - every Debian image has it
    NOBODY = None
as_root = pytest.mark.skipif(os.geteuid() != 0 or NOBODY is None, reason="needs root and a `nobody` user")


def shm(name: str) -> Path:
    return Path("/dev/shm") / name


def test_the_board_is_private_under_umask_000_and_never_adopted() -> None:
    name = f"sovtest-{uuid.uuid4().hex}-heartbeats"
    old = os.umask(0)
    try:
        hb = Heartbeats(name, 4)
    finally:
        os.umask(old)
    try:
        assert stat.S_IMODE(shm(name).stat().st_mode) == 0o600
        with pytest.raises(FileExistsError, match="refusing to adopt"):
            Heartbeats(name, 4)
    finally:
        hb.close()
    assert not shm(name).exists()


def test_a_board_planted_as_a_symlink_is_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"x" * 10)
    name = f"sovtest-{uuid.uuid4().hex}-heartbeats"
    shm(name).symlink_to(victim)
    try:
        with pytest.raises(OSError):
            Heartbeats(name, 4)
        with pytest.raises(OSError):
            Heartbeats(name)  # attaching does not follow it either
    finally:
        shm(name).unlink()
    assert victim.read_bytes() == b"x" * 10


@pytest.mark.parametrize("mode", [0o666, 0o640])
def test_a_board_others_may_reach_is_refused_at_attach(mode: int) -> None:
    name = f"sovtest-{uuid.uuid4().hex}-heartbeats"
    hb = Heartbeats(name, 4)
    try:
        shm(name).chmod(mode)
        with pytest.raises(PermissionError, match="mode 600 is trusted"):
            Heartbeats(name)
    finally:
        hb.close()


@as_root
def test_nobody_cannot_write_the_board_and_a_board_nobody_owns_is_refused() -> None:
    name = f"sovtest-{uuid.uuid4().hex}-heartbeats"
    old = os.umask(0)  # as the issue found it: a board made under umask 000 was 0666
    try:
        hb = Heartbeats(name, 4)
    finally:
        os.umask(old)
    try:
        # The attack that stopped the supervisor "clean": FEED_DONE written into a slot
        # (state is the fourth 8-byte word), opened read-write without truncating.
        attack = f"printf '\\00{FEED_DONE}' | dd of=/dev/shm/{name} bs=1 seek=24 conv=notrunc"
        r = subprocess.run(["sh", "-c", attack], user=NOBODY, capture_output=True, text=True)
        assert r.returncode != 0 and "Permission denied" in r.stderr, r.stderr
        assert int(hb.slots[0]["state"]) != FEED_DONE
    finally:
        hb.close()
    planted = f"sovtest-{uuid.uuid4().hex}-heartbeats"
    shm(planted).write_bytes(bytes(128 * 4))  # what nobody could pre-create for a guessed name
    os.chown(shm(planted), NOBODY, NOBODY)
    shm(planted).chmod(0o600)
    try:
        with pytest.raises(PermissionError, match=f"owned by uid {NOBODY}"):
            Heartbeats(planted)
        with pytest.raises(FileExistsError):
            Heartbeats(planted, 4)
    finally:
        shm(planted).unlink()


@as_root
def test_a_ring_another_user_owns_is_refused_at_attach() -> None:
    name = ring_name("foreign")
    with TickRing.create(name, 64) as ring:
        os.chown(shm(name), NOBODY, NOBODY)
        with pytest.raises(RingError, match=f"owned by uid {NOBODY}"):
            TickRing.attach(name)
        os.chown(shm(name), 0, 0)
        shm(name).chmod(0o644)
        with pytest.raises(RingError, match="mode 644"):
            TickRing.attach(name)
        shm(name).chmod(0o600)
        TickRing.attach(name).close()
        assert ring.capacity == 64


def test_the_supervisor_names_its_shared_memory_unguessably(tmp_path: Path) -> None:
    """`sov-<16 hex>`: a hash of a secret kept in the private state (runtime.shm_prefix),
    so another user cannot plant a segment under a name before it is made."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[system]\nstate_dir = "{tmp_path / "state"}"\nrecord_days = 0\n[feed]\nsymbols = 4\n')
    cmd = [sys.executable, "-m", "sovereign.cli", "run", "--config", str(cfg), "--max-ticks", "20000"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    names: set[str] = set()
    while proc.poll() is None:
        if (board := board_path(proc.pid)) is not None:
            names |= {p.name for p in Path("/dev/shm").glob(board.name.removesuffix("heartbeats") + "*")}
        time.sleep(0.01)  # not a spin beside the system it watches
    out = proc.stdout.read()  # type: ignore[union-attr]
    assert proc.returncode == 0, out
    assert names and all(re.fullmatch(r"sov-[0-9a-f]{16}-[a-z0-9-]+", n) for n in names), names
    assert not [n for n in names if (Path("/dev/shm") / n).exists()]
