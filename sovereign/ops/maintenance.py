"""What the operator's commands do, apart from printing: back up, verify and restore the
state, and check the machine (doctor). Each check is a `Check`; the CLI prints them.

Backups are LMDB's own hot copy (`mdb_env_copy2` with compaction) taken inside one read
transaction, so a backup of a running system is consistent without stopping it. A
backup is written into a fresh private directory (mkdtemp beside the destination, never a
name another user could plant first) and renamed only once it is complete, verified and
described by MANIFEST.json, so a partial backup never looks like a good one. A
destination that is a symlink is refused.

The manifest is signed: an HMAC-SHA256 over it with a key kept beside the state directory
(`.sovereign-backup.key`, 0600, made at the first backup), not inside any backup. A
restore refuses a backup whose signature does not check with that key, so state forged
into a backup directory (its sha256 recomputed) is never taken back; a backup of another
installation needs `--unsigned`, said out loud.

Verification walks every record of every database in a separate process: LMDB trusts its
file, and a corrupt page can crash the reader, so a crash is reported as corruption
instead of taking the CLI down.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import hmac
import itertools
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

from sovereign.config import Config
from sovereign.errors import OperationalError

MANIFEST = "MANIFEST.json"
DATA_FILE = "data.mdb"
KEY_FILE = ".sovereign-backup.key"
OWNER_FILE = ".owner"  # in a backup being written: the pid and start time of its writer
MIN_FREE_DISK = 1 << 30  # below this, doctor warns; below a quarter of it, it fails
ARCHIVE_DIR = "archive"  # in a backup (and by default in the state directory): the history archive


class OpsError(OperationalError):
    """An operation could not be done; nothing was changed."""


@dataclass
class Check:
    name: str
    status: str  # "ok", "warn" or "fail"
    detail: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def failed(checks: list[Check]) -> bool:
    return any(c.status == "fail" for c in checks)


# ---- verify


def verify(path: str | Path, key: bytes | None = None, archive: str | Path | None = None, *,
           deep: bool = True) -> list[Check]:  # fmt: skip
    """Integrity of the state at path, checked in a child process (see the module doc), and
    of its archive (`archive`, else <path>/archive where there is one: every record, or
    with deep=False its files' checksums only, as backup and restore check a backup's);
    with `key`, a backup's manifest must be signed with it."""
    path = Path(path)
    if not (path / DATA_FILE).is_file():
        return [Check("environment", "fail", f"no LMDB environment at {path} ({DATA_FILE} is missing)")]
    checks = []
    manifest = path / MANIFEST
    if manifest.exists():
        checks.append(_check_manifest(path, manifest, key))
    elif key is not None:
        checks.append(Check("manifest", "fail", f"{path} has no {MANIFEST}: not a backup made here"))
    archive = Path(archive) if archive is not None else path / ARCHIVE_DIR
    archived = verify_archive(archive, deep) if archive.exists() else []
    # -I and cwd /: the reader imports nothing from the directory the operator stands in
    # (a `sovereign/__init__.py` there ran as root).
    reader = [sys.executable, "-I", "-m", "sovereign.ops.maintenance", "verify", str(path.absolute())]
    proc = subprocess.run(reader, capture_output=True, timeout=3600, cwd="/")
    if proc.returncode != 0:
        why = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        if proc.returncode < 0:
            why = [f"the reader crashed with signal {-proc.returncode}"]
        return [*checks, Check("environment", "fail", f"cannot walk {path}: {why[0]}; the file is corrupt"),
                *archived]  # fmt: skip
    return checks + [Check(**c) for c in orjson.loads(proc.stdout)] + archived


def verify_archive(path: str | Path, deep: bool = True) -> list[Check]:
    """Every archive part against its manifest: a check per problem, and one summary."""
    from sovereign.state.archive import Archive

    return [Check(name, status, detail) for name, status, detail in Archive(path).verify(deep)]


def backup_key_path(state_dir: str | Path) -> Path:
    """Where the key that signs this state's backups lives: beside the state directory, so
    that a restore, which moves the state directory aside, keeps it."""
    return Path(state_dir).absolute().parent / KEY_FILE


def backup_key(state_dir: str | Path, *, create: bool) -> bytes | None:
    """The signing key (made, 32 random bytes, mode 0600, when `create` and missing)."""
    path = backup_key_path(state_dir)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        if not create:
            return None
        key = secrets.token_bytes(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key)
            os.fsync(f.fileno())
        return key
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if st.st_uid != os.geteuid() or st.st_mode & 0o077:
            raise OpsError(f"{path} must belong to uid {os.geteuid()} with mode 0600 (it is uid "
                           f"{st.st_uid}, mode {st.st_mode & 0o777:o}): whoever reads it can forge "
                           "backups")  # fmt: skip
        key = f.read()
    if len(key) != 32:
        raise OpsError(f"{path} is not a backup key (32 bytes)")
    return key


def _signature(manifest: dict[str, Any], key: bytes) -> str:
    body = orjson.dumps({k: v for k, v in manifest.items() if k != "hmac"}, option=orjson.OPT_SORT_KEYS)
    return hmac.new(key, body, hashlib.sha256).hexdigest()


def _check_manifest(path: Path, manifest: Path, key: bytes | None = None) -> Check:
    try:
        m = orjson.loads(manifest.read_bytes())
        want = m["sha256"]
    except (orjson.JSONDecodeError, KeyError, TypeError, OSError) as e:
        return Check("manifest", "fail", f"{manifest} is unreadable: {e}")
    if key is not None and not hmac.compare_digest(str(m.get("hmac", "")), _signature(m, key)):
        return Check("manifest", "fail", f"{manifest} is not signed with this installation's backup key: "
                                         "it was not made here, or it was changed since")  # fmt: skip
    got = sha256(path / DATA_FILE)
    if got != want:
        return Check("manifest", "fail", f"{DATA_FILE} does not match the backup's checksum: it changed or "
                                         "was damaged after the backup")  # fmt: skip
    archive = path / ARCHIVE_DIR / "MANIFEST.json"
    listed = (m.get("archive") or {}).get("manifest_sha256")
    if listed is None and archive.exists():
        return Check("manifest", "fail", f"{path / ARCHIVE_DIR} is not in the backup's manifest: it was "
                                         "added after the backup")  # fmt: skip
    if listed is not None and (not archive.is_file() or sha256(archive) != listed):
        return Check("manifest", "fail", f"{archive} is missing or does not match the backup's checksum: it "
                                         "changed or was damaged after the backup")  # fmt: skip
    return Check("manifest", "ok", f"checksum matches the backup taken {m.get('created', '?')}")


def _walk(path: str) -> list[Check]:
    """The checks proper (run in the child)."""
    from sovereign.state.schema import DATABASES
    from sovereign.state.store import StateError, StateStore

    try:
        store = StateStore(path, readonly=True)
    except StateError as e:
        return [Check("environment", "fail", str(e))]
    with store:
        counts = store.read(lambda t: {db: t.count(db) for db in DATABASES})
        listed = ", ".join(f"{db} {n}" for db, n in counts.items())
        pages = Check("environment", "ok", f"opens: {listed}")
        return [pages, *store.read(lambda t: [f(t) for f in (_records, _journal, _orders, _books, _layout)])]


def _records(t: Any) -> Check:
    from sovereign.core import SIGNAL_DTYPE
    from sovereign.state.schema import key_u64

    """Reads every page of every database (snapshots included) and decodes each record."""
    from sovereign.state.schema import DATABASES

    bad = []
    for db in DATABASES:
        for k, v in t.items(db, raw=True):
            if db == "snapshots":
                continue  # blobs the workers check themselves (checksum, layout) on restore
            if db == "open_orders":
                if v:
                    bad.append(f"open_orders/{key_u64(k)}")
                continue
            if db == "signals":
                if len(v) != SIGNAL_DTYPE.itemsize:
                    bad.append(f"signals/{key_u64(k)}")
                continue
            try:
                orjson.loads(v)
            except orjson.JSONDecodeError:
                bad.append(f"{db}/{k!r}")
    if bad:
        return Check("records", "fail", f"undecodable: {', '.join(bad[:5])}")
    return Check("records", "ok", "every page read, every record decodes")


def _journal(t: Any) -> Check:
    """Append-only: its keys run with no gap from 1, or from after the newest archived one."""
    from sovereign.state.schema import META_JOURNAL_ARCHIVED, key_u64

    archived = int(t.get("meta", META_JOURNAL_ARCHIVED) or 0)
    keys = [key_u64(k) for k, _ in t.items("journal", raw=True)]
    gaps = [a for a, b in itertools.pairwise(keys) if b != a + 1]
    if keys and (keys[0] != archived + 1 or gaps):
        return Check("journal", "fail", f"records are missing after {gaps[:3] or [archived]}")
    moved = f" (1..{archived} archived)" if archived else ""
    return Check("journal", "ok", f"{len(keys)} events, contiguous{moved}")


def _orders(t: Any) -> Check:
    from sovereign.state.orders import OPEN_STATES, OrderState
    from sovereign.state.schema import key_u64

    states: dict[OrderState, int] = {}
    bad = []
    for k, o in t.items("orders"):
        try:
            s = OrderState(o["state"])
        except (KeyError, ValueError, TypeError):
            bad.append(key_u64(k))
            continue
        states[s] = states.get(s, 0) + 1
    if bad:
        return Check("orders", "fail", f"orders with no valid state: {bad[:5]}")
    open_n = sum(n for s, n in states.items() if s in OPEN_STATES)
    stuck = states.get(OrderState.SUBMITTING, 0)
    note = f"; {stuck} in SUBMITTING, resolved from the broker's record at the next start" if stuck else ""
    return Check("orders", "ok", f"{sum(states.values())} orders, {open_n} open{note}")


def _books(t: Any) -> Check:
    from sovereign.ledger import Ledger, same_book
    from sovereign.model import TradingState
    from sovereign.state.schema import BOOK_KEY, PAPER_BROKER_KEY, RISK_STATE_KEY

    book, broker = t.get("positions", BOOK_KEY), t.get("bridge", PAPER_BROKER_KEY)
    risk = t.get("risk", RISK_STATE_KEY)
    try:
        if book is not None:
            Ledger(Decimal(0), {}).load_dict(book)
        if risk is not None:
            TradingState(risk["state"])
            Decimal(risk["equity"])
        if broker is not None:
            Ledger(Decimal(0), {}).load_dict(broker["ledger"])
    except (KeyError, ValueError, TypeError, ArithmeticError) as e:
        return Check("books", "fail", f"a book does not load: {type(e).__name__}: {e}")
    if book is not None and broker is not None and not same_book(book, broker["ledger"]):
        return Check("books", "warn", "risk's book differs from the broker's: risk takes the broker's "
                                      "at the next start (a crash between the two writes)")  # fmt: skip
    return Check("books", "ok", "positions, risk state and broker account load and agree")


def _layout(t: Any) -> Check:
    from sovereign.core import LAYOUT_VERSION

    version = t.get("meta", "layout_version")
    if version is not None and version != LAYOUT_VERSION:
        return Check("layout", "warn", f"written by record layout {version}, this build has "
                                       f"{LAYOUT_VERSION}: agent snapshots will start cold")  # fmt: skip
    return Check("layout", "ok", f"record layout {version if version is not None else 'unrecorded'}")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


# ---- backup and restore


def backup(state_dir: str | Path, dest: str | Path, *, rotate: int = 0,
           archive_dir: str | Path | None = None) -> dict[str, Any]:  # fmt: skip
    """A consistent hot copy of the state into dest (which must not exist or be empty), with
    its history archive (`archive_dir`, default <state_dir>/archive) under dest/archive.
    With rotate=N, dest is a folder of backups: a new timestamped one goes in and only the
    newest N are kept, and an archive part the newest one already holds is hard-linked
    from it, not copied again. Returns the manifest."""
    from sovereign.core import LAYOUT_VERSION
    from sovereign.state.archive import Archive, ArchiveError
    from sovereign.state.store import StateError, StateStore, private_dirs

    src = Path(state_dir)
    archive = Archive(archive_dir if archive_dir is not None else src / ARCHIVE_DIR)
    if not (src / DATA_FILE).is_file():
        raise OpsError(f"no state at {src} to back up")
    dest = Path(dest).absolute()
    _refuse_symlink(dest)
    if rotate:
        private_dirs(dest)
        final = dest / time.strftime("sovereign-%Y%m%dT%H%M%SZ", time.gmtime())
        _refuse_symlink(final)
        previous = max((p for p in dest.iterdir() if p.is_dir() and p.name.startswith("sovereign-")),
                       default=None)  # fmt: skip
    else:
        final, previous = dest, None
    if final.exists() and any(final.iterdir()):
        raise OpsError(f"{final} exists and is not empty; a backup never overwrites")
    key = backup_key(src, create=True)
    assert key is not None
    try:
        _sweep_partials(private_dirs(final.parent))
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
        (tmp / OWNER_FILE).write_text(f"{os.getpid()} {_start_time(os.getpid())}")
    except OSError as e:
        raise OpsError(f"cannot write the backup to {final.parent}: {e}") from None
    try:
        try:
            before = archive.load()  # parts done before the copy: their records are not in it
            with StateStore(src, readonly=True) as store:
                store.copy_to(tmp)
                counts = store.read(lambda t: {db: t.count(db) for db in ("orders", "journal", "signals")})
            archived = _copy_archive(archive, tmp / ARCHIVE_DIR, before, previous)
        except (StateError, ArchiveError) as e:
            raise OpsError(str(e)) from None
        except OSError as e:
            raise OpsError(f"cannot write the backup to {tmp.parent}: {e}") from None
        manifest = {
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "source": str(src.resolve()),
            "sha256": sha256(tmp / DATA_FILE), "bytes": (tmp / DATA_FILE).stat().st_size,
            "layout_version": LAYOUT_VERSION, "counts": counts,
        }  # fmt: skip
        if archived is not None:
            manifest["archive"] = archived
        manifest["hmac"] = _signature(manifest, key)
        checks = verify(tmp, deep=False)  # archive files never change once written: their checksums
        if failed(checks):
            bad = next(c for c in checks if c.status == "fail")
            raise OpsError(f"the copy does not verify, so it was not kept: {bad.name}: {bad.detail}")
        _write_synced(tmp / MANIFEST, orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
        (tmp / OWNER_FILE).unlink()
        _refuse_symlink(final)
        if final.exists():
            final.rmdir()  # empty, checked above
        tmp.rename(final)
        _fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if rotate:
        olds = sorted(p for p in dest.iterdir() if p.is_dir() and p.name.startswith("sovereign-"))
        for old in olds[:-rotate]:
            shutil.rmtree(old)
    return {"path": str(final), **manifest}


def _copy_archive(archive: Any, dest: Path, before: list[Any],
                  previous: Path | None) -> dict[str, Any] | None:  # fmt: skip
    """The archive's parts listed now (after the LMDB copy) into dest, with a manifest of
    its own: a part that was not done before the copy began is marked not done there, so
    that the restored state's next archiving run deletes its records from LMDB again (they
    may be in the copy). Parts the previous backup holds, the same, are hard-linked."""
    from sovereign.state.archive import Archive, ArchiveError
    from sovereign.state.store import private_dirs

    parts = archive.load()
    if not parts:
        return None
    done = {p.file for p in before if p.done}
    old: dict[str, str] = {}
    prev = previous / ARCHIVE_DIR if previous is not None else dest
    with contextlib.suppress(ArchiveError, OSError):
        old = {p.file: p.sha256 for p in Archive(prev).load()} if previous is not None else {}
    private_dirs(dest)
    linked = 0
    for p in parts:
        if old.get(p.file) == p.sha256 and not (prev / p.file).is_symlink() and _link(prev / p.file, dest):
            linked += 1
        else:
            _copy_synced(archive.path / p.file, dest / p.file)
        p.done = p.file in done
    Archive(dest).save(parts)
    _fsync_dir(dest)
    return {"parts": len(parts), "linked": linked, "bytes": sum(p.bytes for p in parts),
            "manifest_sha256": sha256(dest / "MANIFEST.json")}  # fmt: skip


def _link(src: Path, folder: Path) -> bool:
    try:
        os.link(src, folder / src.name)
    except OSError:  # another filesystem: copied instead
        return False
    return True


def _copy_synced(src: Path, dest: Path) -> None:
    shutil.copyfile(src, dest)
    dest.chmod(0o600)
    with dest.open("rb+") as f:
        os.fsync(f.fileno())


def _copy_archive_back(src: Path, dest: Path) -> None:
    """A backup's archive (manifest and listed parts) into the new directory dest."""
    from sovereign.state.archive import Archive
    from sovereign.state.store import private_dirs

    private_dirs(dest)
    for p in Archive(src).load():
        _copy_synced(src / p.file, dest / p.file)
    _copy_synced(src / "MANIFEST.json", dest / "MANIFEST.json")
    _fsync_dir(dest)


def restore(backup_dir: str | Path, state_dir: str | Path, *, unsigned: bool = False,
            archive_dir: str | Path | None = None) -> dict[str, Any]:  # fmt: skip
    """Replace the state with a verified backup, signed with this installation's backup
    key (unless `unsigned`: a backup from elsewhere, trusted by the operator). The current
    state is moved aside, never deleted. The caller makes sure the system is stopped."""
    from sovereign.state.store import StateError, StateLock

    dst = Path(state_dir).absolute()
    try:
        lock = StateLock(dst, "sovereign state restore")
    except StateError as e:  # a live supervisor holds it, whatever the control socket said
        raise OpsError(f"cannot restore: {e}") from None
    with lock:
        archive = Path(archive_dir).absolute() if archive_dir is not None else dst / ARCHIVE_DIR
        return _restore(Path(backup_dir), dst, unsigned, archive)


def _restore(src: Path, dst: Path, unsigned: bool, archive: Path) -> dict[str, Any]:
    """The backup's LMDB file and archive in place of the state's, both: a state and its
    archive go together (the archive of the state replaced is moved aside with it)."""
    from sovereign.state.archive import ArchiveError
    from sovereign.state.store import private_dirs

    _refuse_symlink(dst)
    key = None if unsigned else backup_key(dst, create=False)
    if key is None and not unsigned:
        raise OpsError(f"no backup key at {backup_key_path(dst)}: this backup's signature cannot be checked; "
                       "restore it with --unsigned only if you trust where it came from")  # fmt: skip
    checks = verify(src, key, deep=False)  # the archive by its checksums, which the signature covers
    if failed(checks):
        bad = next(c for c in checks if c.status == "fail")
        raise OpsError(f"{src} is not a good backup: {bad.name}: {bad.detail}")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = dst.with_name(f"{dst.name}.replaced-{stamp}") if dst.exists() else None
    inside = archive.is_relative_to(dst)  # the default: it moves with the state directory
    backed = src / ARCHIVE_DIR if (src / ARCHIVE_DIR / "MANIFEST.json").exists() else None
    made: list[Path] = []
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.restoring-", dir=private_dirs(dst.parent)))
        made.append(tmp)
        _copy_synced(src / DATA_FILE, tmp / DATA_FILE)
        if backed is not None and inside:
            _copy_archive_back(backed, tmp / archive.relative_to(dst))
        elif backed is not None:
            beside = private_dirs(archive.parent)
            made.append(Path(tempfile.mkdtemp(prefix=f".{archive.name}.restoring-", dir=beside)))
            _copy_archive_back(backed, made[-1])
    except (OSError, ArchiveError) as e:
        for d in made:
            shutil.rmtree(d, ignore_errors=True)
        raise OpsError(f"cannot copy the backup into {dst.parent}: {e}; the state is unchanged") from None
    if aside is not None:
        dst.rename(aside)
    tmp.rename(dst)
    _fsync_dir(dst.parent)
    archive_aside = None
    if not inside:
        if archive.exists():
            archive_aside = archive.with_name(f"{archive.name}.replaced-{stamp}")
            archive.rename(archive_aside)
        if backed is not None:
            made[-1].rename(archive)
        _fsync_dir(archive.parent)
    return {"restored": str(dst), "from": str(src), "previous_state_moved_to": str(aside) if aside else None,
            "archive": str(archive) if backed is not None else None,
            "previous_archive_moved_to": str(archive_aside) if archive_aside else None}  # fmt: skip


def _start_time(pid: int) -> str:
    """A process's start time (clock ticks since boot, /proc), so a reused pid is told apart."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _sweep_partials(folder: Path) -> None:
    """Remove the temporary copies of backups whose process died before finishing (a full
    copy of the state each, left forever otherwise). One still being written is kept."""
    for d in folder.glob(".*.partial-*"):
        if d.is_symlink() or not d.is_dir():
            continue
        try:
            pid, started = (d / OWNER_FILE).read_text().split()
        except (OSError, ValueError):
            pid, started = "0", ""
        if not (int(pid) > 0 and _start_time(int(pid)) == started):
            shutil.rmtree(d, ignore_errors=True)


def _refuse_symlink(path: Path) -> None:
    if path.is_symlink():
        raise OpsError(f"{path} is a symlink: refusing to write through it (give the real path)")


def _write_synced(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---- doctor


UNIT_PATHS = tuple(f"{d}/sovereign.service" for d in (
    "/etc/systemd/system", "/usr/local/lib/systemd/system", "/lib/systemd/system", "/usr/lib/systemd/system",
))  # fmt: skip


def doctor(config: Config) -> list[Check]:
    """Is this machine fit to run Sovereign with this config?"""
    from sovereign.engine.runtime import Layout, shm_bytes

    checks = []
    try:
        from sovereign.core import LAYOUT_VERSION

        checks.append(Check("engine", "ok", f"C++ core loads (record layout {LAYOUT_VERSION}), "
                                            f"Python {sys.version.split()[0]}"))  # fmt: skip
    except ImportError as e:
        checks.append(Check("engine", "fail", f"the C++ core does not load: {e}"))
    cores = sorted(os.sched_getaffinity(0))
    try:
        layout = Layout.plan(config, "doctor", config.feed.symbols)
        pinned = ", ".join(map(str, layout.worker_cores))
        if len(cores) < 2:
            checks.append(Check("cores", "warn", "1 core: the worker shares it with every other process"))
        else:
            checks.append(Check("cores", "ok", f"{len(cores)} cores; {layout.n_workers} workers pinned to "
                                               f"{pinned}, the gateway on the rest, coordinator and risk "
                                               "beside the workers"))  # fmt: skip
    except Exception as e:
        checks.append(Check("cores", "fail", str(e)))
        layout = None
    shm = Path("/dev/shm")
    if not shm.is_dir():
        checks.append(Check("shared memory", "fail", "/dev/shm is missing"))
    else:
        st = os.statvfs(shm)
        free = st.f_bavail * st.f_frsize
        planned = layout or Layout("doctor", config.feed.symbols, 1, (None,))  # the cores aside
        per_worker, shared = shm_bytes(planned)
        need = planned.n_workers * per_worker + shared  # what the supervisor reserves at its start
        verdict = "ok" if free >= 2 * need else "warn" if free >= need else "fail"
        checks.append(Check("shared memory", verdict, f"/dev/shm has {size_text(free)} free; the rings need "
                                                      f"{size_text(need)}"))  # fmt: skip
    checks.append(_check_state_dir(Path(config.system.state_dir)))
    free_disk = _free_disk(Path(config.system.state_dir))
    verdict = "ok" if free_disk >= MIN_FREE_DISK else "warn" if free_disk >= MIN_FREE_DISK // 4 else "fail"
    checks.append(Check("free disk", verdict, f"{size_text(free_disk)} free where the state lives "
                                              f"(LMDB grows its map as needed)"))  # fmt: skip
    checks.append(_check_retention(config, free_disk))
    unit = next((p for p in UNIT_PATHS if Path(p).exists()), None)
    checks.append(Check("unit file", "ok", f"installed at {unit}") if unit else
                  Check("unit file", "warn", "sovereign.service is not installed (see docs/runbook.md, "
                                             "Install); fine for a foreground run"))  # fmt: skip
    checks.append(_check_clock())
    if config.broker.kind == "mt5":
        checks.append(_check_bridge(config))
    return checks


def _check_bridge(config: Config) -> Check:
    """broker.kind = "mt5": the bridge file (there, shared by group, never world-readable) and
    what the gateway last said of the terminal (connected, AutoTrading, the symbols)."""
    from sovereign.state.schema import BRIDGE_STATUS_KEY
    from sovereign.state.store import StateError, StateStore

    path = Path(config.mt5.bridge)
    if not path.exists():
        why = ("the terminal is not running, or its Expert Advisor is not attached, or DLL imports are not "
               "allowed for it (docs/runbook.md, MT5 under Wine)")
        return Check("mt5 bridge", "fail", f"{path} does not exist: {why}")
    mode = path.stat().st_mode & 0o777
    if mode & 0o007:
        why = "others may read or write it (the terminal's unit needs UMask=0007)"
        return Check("mt5 bridge", "fail", f"{path} is mode {mode:o}: {why}")
    said = None
    if (Path(config.system.state_dir) / DATA_FILE).is_file():
        state = config.system.state_dir
        with contextlib.suppress(StateError, OSError), StateStore(state, readonly=True) as db:
            said = db.read(lambda t: t.get("bridge", BRIDGE_STATUS_KEY))
    if said is None:
        return Check("mt5 bridge", "warn", f"{path} is there (mode {mode:o}); the gateway has not run yet")
    if said.get("connected") and not said.get("missing"):
        account = f", a {said['account']} account" if said.get("account") else ""
        return Check("mt5 bridge", "ok", f"{path}: the terminal is connected, AutoTrading on, every symbol "
                                         f"mapped{account}")  # fmt: skip
    return Check("mt5 bridge", "fail", f"{path}: the bridge is down: {said.get('why', '')}")


# Bytes per market day at the default pace, per 100 symbols (bench/bench_archive.py, at the
# rates of a 4 M-tick run of the default sim): LMDB pages in use for orders, executions,
# deals and journal entries; the archive's zstd files for the same.
LMDB_DAY_BYTES = 3_000_000
ARCHIVE_DAY_BYTES = 190_000
RECORDING_DAY_BYTES = 400_000_000  # ticks a simulated day, per 100 symbols (see system.record_max_mb)


def storage(config: Config) -> dict[str, Any]:
    """The state's sizes (the LMDB file; of it, the pages in use and the free pages it
    reuses) and the archive's (files, bytes), for `status`."""
    from sovereign.state.archive import Archive, archive_dir
    from sovereign.state.store import StateError, StateStore

    out: dict[str, Any] = {"lmdb": None, "archive": Archive(archive_dir(config)).size()}
    state = config.system.state_dir
    if (Path(state) / DATA_FILE).is_file():
        with contextlib.suppress(StateError, OSError), StateStore(state, readonly=True) as db:
            out["lmdb"] = db.usage()
    return out


def _day_bytes(config: Config) -> tuple[float, str]:
    """LMDB bytes per market day: measured on the state where it holds a market day or more
    of history, else the default pace's."""
    from sovereign.state.archive import market_first, market_now
    from sovereign.state.store import StateError, StateStore

    scale = config.feed.symbols / 100
    try:
        with StateStore(config.system.state_dir, readonly=True) as st:
            used = st.usage()["used_bytes"]
            now = st.read(market_now)
            first = st.read(market_first)
    except (StateError, OSError):
        now = first = None
    if now is not None and first is not None and now - first >= 86_400 * 10**9:
        return used / ((now - first) / (86_400 * 10**9)), "measured on this state"
    return LMDB_DAY_BYTES * scale, "the default pace's"


def _check_retention(config: Config, free: int) -> Check:
    """Does what the configured retention keeps fit the free disk: the recordings' budget,
    LMDB at its steady state (twice: compacting copies it) and a market year of archive?"""
    r, s = config.retention, config.system
    per_day, source = _day_bytes(config)
    scale = config.feed.symbols / 100
    recordings = 0 if not s.record_days else s.record_max_mb << 20 if s.record_max_mb else \
        s.record_days * RECORDING_DAY_BYTES * scale
    if not r.days:
        return Check("retention", "warn", f"retention.days = 0: orders and the journal are never archived, "
                                          f"and LMDB grows about {size_text(per_day)} a market day "
                                          f"({source}) without bound")  # fmt: skip
    lmdb = 2 * per_day * (r.days + 31)
    archive = ARCHIVE_DAY_BYTES * scale * 365
    need = recordings + lmdb + archive
    detail = (f"recordings {size_text(recordings)}, LMDB {size_text(lmdb / 2)} at {r.days} + 31 market days "
              f"({size_text(per_day)} a day, {source}; twice that to compact), archive about "
              f"{size_text(archive)} a market year: {size_text(need)} of {size_text(free)} free")  # fmt: skip
    return Check("retention", "ok" if need <= free else "warn", detail if need <= free else
                 f"the configured retention may not fit the disk: {detail}")  # fmt: skip


def _check_state_dir(path: Path) -> Check:
    if not path.exists():
        parent = next((p for p in path.parents if p.exists()), Path("/"))
        if not os.access(parent, os.W_OK | os.X_OK):
            return Check("state directory", "fail", f"{path} does not exist and {parent} is not writable")
        return Check("state directory", "ok", f"{path} will be created (mode 0700)")
    st = path.stat()
    if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
        return Check("state directory", "fail", f"{path} is not readable and writable by uid {os.geteuid()}")
    if st.st_uid != os.geteuid():
        return Check("state directory", "warn", f"{path} is owned by uid {st.st_uid}, not by uid "
                                                f"{os.geteuid()} who runs this")  # fmt: skip
    if st.st_mode & 0o077:
        return Check("state directory", "warn", f"{path} is mode {st.st_mode & 0o777:o}: other users can "
                                                "read the trading state; chmod 700 it")  # fmt: skip
    return Check("state directory", "ok", f"{path}: owned by uid {st.st_uid}, mode {st.st_mode & 0o777:o}")


def _free_disk(path: Path) -> int:
    while not path.exists():
        path = path.parent
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


class _Timex(ctypes.Structure):
    _fields_ = [("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
                ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long), ("status", ctypes.c_int),
                ("pad", ctypes.c_byte * 256)]  # fmt: skip


STA_UNSYNC, TIME_ERROR = 0x0040, 5


def _check_clock() -> Check:
    """The kernel's view (adjtimex): synchronized by NTP/chrony/timesyncd, and how well."""
    try:
        tx = _Timex()
        state = ctypes.CDLL(None, use_errno=True).adjtimex(ctypes.byref(tx))
    except (OSError, AttributeError) as e:
        return Check("clock sync", "warn", f"cannot ask the kernel: {e}")
    if state < 0:
        return Check("clock sync", "warn", f"adjtimex failed (errno {ctypes.get_errno()})")
    if state == TIME_ERROR or tx.status & STA_UNSYNC:
        return Check("clock sync", "warn", "the clock is not synchronized (no NTP): tick times, the daily "
                                           "loss reset and stale-quote checks depend on it")  # fmt: skip
    return Check("clock sync", "ok", f"synchronized; estimated error {tx.esterror} µs")


def size_text(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"


if __name__ == "__main__":  # the isolated half of verify()
    if len(sys.argv) == 3 and sys.argv[1] == "verify":
        with contextlib.suppress(BrokenPipeError):
            sys.stdout.buffer.write(orjson.dumps([c.to_dict() for c in _walk(sys.argv[2])]))
        sys.exit(0)
    sys.exit("usage: python -m sovereign.ops.maintenance verify PATH")
