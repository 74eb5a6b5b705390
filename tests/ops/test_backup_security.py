"""Backups nobody else can steer or forge (issue 20, item 4): the temporary directory is
a fresh private one (a symlink planted at the old predictable name is never followed), a
symlinked destination is refused, and the manifest is signed with a key kept beside the
state, so a restore refuses state forged into a backup."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import orjson
import pytest

from sovereign.ops.maintenance import KEY_FILE, MANIFEST, OpsError, backup, backup_key_path, restore, sha256
from sovereign.state.store import StateStore


def make_state(where: Path, balance: str = "100000") -> Path:
    state = where / "state"
    with StateStore(state) as st:
        st.write(lambda t: t.journal("started", balance=balance))
    return state


def test_a_symlink_planted_at_the_old_partial_name_is_not_followed(tmp_path: Path) -> None:
    state = make_state(tmp_path)
    victim = tmp_path / "victim"
    victim.mkdir()
    dest = tmp_path / "backups" / "today"
    dest.parent.mkdir()
    (dest.parent / f".today.partial-{os.getpid()}").symlink_to(victim)  # what `nobody` planted
    backup(state, dest)
    assert list(victim.iterdir()) == []
    assert (dest / "data.mdb").is_file() and not (dest / "data.mdb").is_symlink()


def test_a_symlinked_destination_is_refused(tmp_path: Path) -> None:
    state = make_state(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    for rotate in (0, 3):
        with pytest.raises(OpsError, match="is a symlink"):
            backup(state, tmp_path / "link", rotate=rotate)
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_a_forged_backup_is_refused_at_restore(tmp_path: Path) -> None:
    state = make_state(tmp_path)
    dest = tmp_path / "b"
    backup(state, dest)
    key = backup_key_path(state)
    assert key.name == KEY_FILE and stat.S_IMODE(key.stat().st_mode) == 0o600
    # Forge: other state in the backup, its sha256 recomputed, as an unkeyed manifest allowed.
    forged = make_state(tmp_path / "attacker", balance="999999999")
    (dest / "data.mdb").write_bytes((forged / "data.mdb").read_bytes())
    m = orjson.loads((dest / MANIFEST).read_bytes())
    m["sha256"] = sha256(dest / "data.mdb")
    (dest / MANIFEST).write_bytes(orjson.dumps(m))
    with pytest.raises(OpsError, match="not signed with this installation's backup key"):
        restore(dest, state)
    with StateStore(state, readonly=True) as st:  # untouched
        assert st.read(lambda t: [v["balance"] for _, v in t.items("journal")]) == ["100000"]
    restore(dest, state, unsigned=True)  # the operator's explicit choice
    with StateStore(state, readonly=True) as st:
        assert st.read(lambda t: [v["balance"] for _, v in t.items("journal")]) == ["999999999"]


def test_a_good_backup_restores_and_one_without_the_key_needs_unsigned(tmp_path: Path) -> None:
    state = make_state(tmp_path)
    backup(state, tmp_path / "b")
    restore(tmp_path / "b", state)
    other = tmp_path / "other" / "state"
    with pytest.raises(OpsError, match="no backup key"):
        restore(tmp_path / "b", other)
    restore(tmp_path / "b", other, unsigned=True)
    assert (other / "data.mdb").is_file()


def test_a_key_others_can_read_is_refused(tmp_path: Path) -> None:
    state = make_state(tmp_path)
    backup(state, tmp_path / "b")
    backup_key_path(state).chmod(0o644)
    with pytest.raises(OpsError, match="whoever reads it can forge"):
        backup(state, tmp_path / "c")


def test_backups_are_private_under_umask_000(tmp_path: Path) -> None:
    state = make_state(tmp_path)
    old = os.umask(0)
    try:
        backup(state, tmp_path / "deep" / "backups", rotate=2)
    finally:
        os.umask(old)
    made = next((tmp_path / "deep" / "backups").iterdir())
    for d in (tmp_path / "deep", tmp_path / "deep" / "backups", made):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
    for f in made.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) & 0o077 == 0, f


def test_a_killed_backups_copy_is_swept_and_a_live_ones_kept(tmp_path: Path) -> None:
    """A backup killed mid-copy left a full-size copy of the state forever (issue 22)."""
    from sovereign.ops.maintenance import OWNER_FILE, _start_time

    state = make_state(tmp_path)
    (tmp_path / "backups").mkdir()
    dead = tmp_path / "backups" / ".old.partial-abc123"
    dead.mkdir()
    (dead / "data.mdb").write_bytes(b"x" * 100_000)
    (dead / OWNER_FILE).write_text("4194303 1")  # a pid no process has
    legacy = tmp_path / "backups" / ".older.partial-4242"  # from before owners were written
    legacy.mkdir()
    live = tmp_path / "backups" / ".now.partial-def456"
    live.mkdir()
    (live / OWNER_FILE).write_text(f"{os.getpid()} {_start_time(os.getpid())}")
    backup(state, tmp_path / "backups", rotate=3)
    assert not dead.exists() and not legacy.exists() and live.exists()
    made = [p for p in (tmp_path / "backups").iterdir() if p.name.startswith("sovereign-")]
    assert len(made) == 1 and not (made[0] / OWNER_FILE).exists()
