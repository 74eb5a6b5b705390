"""Durable state: one LMDB environment with the named databases of DESIGN.md section 5.

Every write is a function run inside one write transaction, committed durably (fsync)
before `write` returns. If the map fills, the transaction is aborted, the map doubled
and the function run again, so callers never see MDB_MAP_FULL. A map grown by another
process is adopted when a transaction begins. Each process opens its own StateStore
after it starts (an LMDB environment must never cross a fork).

The data file is compacted while the system runs (`StateStore.compact`): the compactor
holds LMDB's write lock, copies the environment without its free pages, and puts the copy
and a fresh lock file in place. Every transaction, in every process, first checks that the
data file it has open is still the one in the directory, and opens the new one if not, so
no write ever lands in the replaced file (a writer can only look once the compactor has
let go of the write lock, that is, after the swap).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import lmdb
import orjson

from sovereign.credentials import json_default
from sovereign.errors import OperationalError
from sovereign.failpoints import failpoint
from sovereign.state.schema import DATABASES, META_JOURNAL_ARCHIVED, key_u64, u64_key

DEFAULT_MAP_SIZE = 64 << 20
MAX_MAP_SIZE = 1 << 40

T = TypeVar("T")


class StateError(OperationalError):
    """The state directory cannot be used as it is (corrupt, unreadable, no space)."""


class Txn:
    """A transaction's view: records are orjson, keys are bytes, str or u64 ints."""

    def __init__(self, opening: _Opening, txn: lmdb.Transaction):
        self._dbs = opening
        self._txn = txn

    def get(self, db: str, key: bytes | str | int) -> Any:
        if self._dbs.db(db) is None:
            return None
        raw = self._txn.get(_key(key), db=self._dbs.db(db))
        return None if raw is None else orjson.loads(raw)

    def put(self, db: str, key: bytes | str | int, record: Any) -> None:
        self._txn.put(_key(key), orjson.dumps(record, default=json_default), db=self._dbs.db(db))

    def put_bytes(self, db: str, key: bytes | str | int, blob: bytes) -> None:
        self._txn.put(_key(key), blob, db=self._dbs.db(db))

    def get_bytes(self, db: str, key: bytes | str | int) -> bytes | None:
        if self._dbs.db(db) is None:
            return None
        raw = self._txn.get(_key(key), db=self._dbs.db(db))
        return None if raw is None else bytes(raw)

    def delete(self, db: str, key: bytes | str | int) -> bool:
        return bool(self._txn.delete(_key(key), db=self._dbs.db(db)))

    def items(self, db: str, start: bytes | str | int | None = None, *, raw: bool = False,
              reverse: bool = False) -> Iterator[tuple[bytes, Any]]:
        """Records in key order from start (or the first; reverse: from the last down)."""
        if self._dbs.db(db) is None:
            return
        with self._txn.cursor(db=self._dbs.db(db)) as cur:
            if reverse:
                found = cur.last()
            else:
                found = cur.set_range(_key(start)) if start is not None else cur.first()
            while found:
                value = cur.value()
                yield bytes(cur.key()), bytes(value) if raw else orjson.loads(value)
                found = cur.prev() if reverse else cur.next()

    def count(self, db: str) -> int:
        if self._dbs.db(db) is None:
            return 0
        return int(self._txn.stat(self._dbs.db(db))["entries"])

    def trim(self, db: str, keep: int) -> int:
        """Delete the oldest records (lowest keys) until at most keep are left."""
        excess = self.count(db) - keep
        if excess <= 0:
            return 0
        with self._txn.cursor(db=self._dbs.db(db)) as cur:
            cur.first()
            for _ in range(excess):
                cur.delete()
        return excess

    def last_key(self, db: str) -> bytes | None:
        if self._dbs.db(db) is None:
            return None
        with self._txn.cursor(db=self._dbs.db(db)) as cur:
            return bytes(cur.key()) if cur.last() else None

    def journal(self, event: str, **fields: Any) -> int:
        """Append an audit record in this transaction; returns its sequence number (after the
        newest archived one when the archiver took every live entry: numbers are never reused)."""
        last = self.last_key("journal")
        seq = key_u64(last) + 1 if last is not None else int(self.get("meta", META_JOURNAL_ARCHIVED) or 0) + 1
        self.put("journal", seq, {"event": event, **fields})
        return seq


def _key(key: bytes | str | int) -> bytes:
    if isinstance(key, bytes):
        return key
    if isinstance(key, str):
        return key.encode()
    return u64_key(key)


def private_dirs(path: str | Path) -> Path:
    """Create `path` and every missing parent with mode 0700, whatever the umask: a
    directory that others may write lets them swap what lies inside it."""
    path = Path(path)
    missing = []
    p = path
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            continue  # made meanwhile: its own mode is its maker's business
        os.chmod(d, 0o700)  # the umask may have taken bits away, never added: this sets them
    return path


class StateLock:
    """An exclusive lock on a state directory, held by the one process that may run a system
    on it (the supervisor) or replace it (restore): a second supervisor, whatever its
    runtime directory, or a restore under a live system, stops here. The lock files sit
    beside the directory (a restore moves the directory aside, never the locks); the kernel
    releases a lock when its holder dies, however it dies.

    Two files, because a system outlives its supervisor for a moment: `.<state>.lock` is
    the supervisor's (exclusive); `.<state>.users` is held shared by every process of the
    running system (StateUser) and taken exclusive here, so that the children of a
    supervisor that was killed, still draining, keep a new system and a restore out until
    the last of them has exited. `wait_s` is how long to wait for them."""

    def __init__(self, state_dir: str | Path, what: str, *, wait_s: float = 0.0):
        state = Path(state_dir).absolute()
        parent = private_dirs(state.parent)
        self.path = parent / f".{state.name}.lock"
        self.users_path = parent / f".{state.name}.users"
        self.fd = self.users = -1
        self.fd = _open_lock(self.path)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(self.fd)
            raise StateError(f"the state at {state} is in use by {holder}: stop it first") from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{what} (pid {os.getpid()})".encode(), 0)
        try:
            self.users = _open_lock(self.users_path)
            deadline = time.monotonic() + wait_s
            while not _try_flock(self.users, fcntl.LOCK_EX):
                if time.monotonic() >= deadline:
                    pids = ", ".join(map(str, lock_holders(self.users_path))) or "unknown"
                    raise StateError(f"the state at {state} is still open by processes of an earlier run "
                                     f"(pids {pids}), stopping after their supervisor died: wait for them "
                                     "to exit, or stop them")  # fmt: skip
                time.sleep(0.1)
        except BaseException:
            self.release()
            raise

    def share(self) -> None:
        """Let the processes of the system this holder starts take the state (StateUser): the
        holder keeps the state's lock, and keeps its use of the state shared with them."""
        fcntl.flock(self.users, fcntl.LOCK_SH)

    def release(self) -> None:
        if self.users >= 0:
            os.close(self.users)
            self.users = -1
        if self.fd >= 0:
            os.ftruncate(self.fd, 0)
            os.close(self.fd)  # closing the descriptor releases the lock
            self.fd = -1

    def __enter__(self) -> StateLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class StateUser:
    """A process of a running system, for its whole life: a shared hold on the state's
    `.users` lock (see StateLock), released by the kernel when the process exits."""

    def __init__(self, state_dir: str | Path):
        state = Path(state_dir).absolute()
        self.fd = _open_lock(state.parent / f".{state.name}.users")
        if not _try_flock(self.fd, fcntl.LOCK_SH):
            os.close(self.fd)
            raise StateError(f"the state at {state} is being replaced or started by another process")


def _open_lock(path: Path) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise StateError(f"cannot open the lock {path}: {e.strerror}") from None


def _try_flock(fd: int, how: int) -> bool:
    try:
        fcntl.flock(fd, how | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def lock_holders(path: Path) -> list[int]:
    """The pids holding a flock on `path`, from /proc/locks (empty where it cannot tell)."""
    try:
        st = os.stat(path)
        text = Path("/proc/locks").read_text()
    except OSError:
        return []
    ident = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    return sorted({int(f[4]) for f in (line.split() for line in text.splitlines())
                   if len(f) > 5 and f[1] == "FLOCK" and f[5] == ident and f[4].isdigit()})  # fmt: skip


SWAP_MARKER = "compacting"  # in the state directory while a compacted copy replaces the data file
OPEN_LOCK = "open.lock"  # held exclusive by whoever opens the environment or swaps its files


class _Opening:
    """One opening of the environment: LMDB's handles on the data file and lock file that
    were in the directory then (their identity: the data file's device and inode)."""

    def __init__(self, env: lmdb.Environment, dbs: dict[str, Any], ident: tuple[int, int]):
        self.env, self.dbs, self.ident = env, dbs, ident
        self.users = 0  # this process's transactions on it, now
        self.retired = False  # the directory holds a newer file: closed when its last user ends

    def db(self, name: str) -> Any:
        try:
            return self.dbs[name]
        except KeyError:
            raise KeyError(f"no database {name!r}; there are {', '.join(DATABASES)}") from None


class StateStore:
    """The LMDB environment under `path` (a directory, created if missing, mode 0700;
    its files 0600). Safe to share between the threads of one process."""

    def __init__(self, path: str | Path, *, map_size: int = DEFAULT_MAP_SIZE, readonly: bool = False):
        self.path = Path(path)
        self.readonly = readonly
        self._data = str(self.path / "data.mdb")  # (a str: stat'ed by every transaction)
        self._guard = threading.Lock()  # the current opening, and its count of users (held briefly)
        self._reopening = threading.Lock()  # one thread opens a new file: LMDB forbids two openings of one
        if not readonly:
            try:
                private_dirs(self.path)
            except OSError as e:
                raise StateError(f"cannot open state at {self.path}: {e}") from e
        self._now = self._open(map_size)

    def _open(self, map_size: int) -> _Opening:
        with open_lock(self.path):
            try:
                env = lmdb.open(
                    str(self.path), map_size=map_size, max_dbs=len(DATABASES), subdir=True, mode=0o600,
                    readonly=self.readonly, sync=True, metasync=True, lock=True, create=not self.readonly,
                )  # fmt: skip
                try:
                    ident = _ident(self._data)
                    dbs = {name: self._open_db(env, name) for name in DATABASES}
                    if not self.readonly:
                        env.reader_check()  # readers a killed process left: they would pin old pages
                except BaseException:
                    env.close()
                    raise
            except lmdb.InvalidError as e:
                why = f"state at {self.path} is not a valid LMDB environment (corrupt?): {e}"
                raise StateError(why) from e
            except (lmdb.Error, OSError) as e:
                raise StateError(f"cannot open state at {self.path}: {e}") from e
        return _Opening(env, dbs, ident)

    def _open_db(self, env: lmdb.Environment, name: str) -> Any:
        try:
            return env.open_db(name.encode(), create=not self.readonly)
        except lmdb.NotFoundError:  # read-only, and written by a version that lacked it: empty
            return None

    def db(self, name: str) -> Any:
        return self._now.db(name)

    @property
    def map_size(self) -> int:
        with self._using() as now:
            return int(now.env.info()["map_size"])

    @contextlib.contextmanager
    def _using(self) -> Iterator[_Opening]:
        """The current opening, kept open meanwhile (another thread may retire it)."""
        now = self._take()
        try:
            yield now
        finally:
            self._give(now)

    def write(self, fn: Callable[[Txn], T]) -> T:
        """Run fn in a write transaction and commit it durably. fn may run more than once
        (after a map resize), so it must not have effects outside the transaction."""
        while True:
            try:
                now, txn = self._start(write=True)
                try:
                    try:
                        out = fn(Txn(now, txn))
                    except BaseException:
                        txn.abort()
                        raise
                    txn.commit()
                    return out
                finally:
                    self._give(now)
            except lmdb.MapFullError:
                self._grow()
            except lmdb.Error as e:  # disk full, I/O error: the transaction was aborted whole
                why = f"cannot write state at {self.path} (nothing of this write was kept): {e}"
                raise StateError(why) from e

    def read(self, fn: Callable[[Txn], T]) -> T:
        with self._reading() as (now, txn):
            return fn(Txn(now, txn))

    @contextlib.contextmanager
    def _reading(self) -> Iterator[tuple[_Opening, lmdb.Transaction]]:
        """A read-only transaction on the current file, and its opening."""
        now, txn = self._start(write=False)
        try:
            yield now, txn
        finally:
            txn.abort()  # a read-only transaction's end
            self._give(now)

    def _start(self, write: bool) -> tuple[_Opening, lmdb.Transaction]:
        """A transaction on the data file the directory holds now (the caller gives the
        opening back at its end). A writer checks after it has LMDB's write lock, so that a
        compaction (which holds it) is either not begun or complete: it never writes to a
        file that is being, or has been, replaced."""
        while True:
            now = self._take()
            try:
                txn = self._begin(now.env, write)
            except BaseException:
                self._give(now)
                raise
            if not self._moved(now):
                return now, txn
            txn.abort()
            self._give(now)
            self._reopen(now)

    def _begin(self, env: lmdb.Environment, write: bool) -> lmdb.Transaction:
        try:
            return env.begin(write=write)
        except lmdb.MapResizedError:  # another process grew the map: adopt its size
            env.set_mapsize(0)
            return env.begin(write=write)

    def _moved(self, opening: _Opening) -> bool:
        try:
            return _ident(self._data) != opening.ident
        except OSError:  # the directory was moved away (a restore): this process must not go on in it
            return True

    def _take(self) -> _Opening:
        with self._guard:
            now = self._now
            now.users += 1
            return now

    def _give(self, opening: _Opening) -> None:
        with self._guard:
            opening.users -= 1
            if opening.retired and opening.users == 0:
                opening.env.close()

    def _reopen(self, old: _Opening) -> None:
        """Open the data file the directory holds now in place of `old` (whose transactions
        in other threads end on it; it is closed after the last)."""
        with self._reopening:
            if self._now is not old or not self._moved(old):
                return  # another thread did it, or nothing moved
            new = self._open(int(old.env.info()["map_size"]))
            with self._guard:
                self._now = new
                old.retired = True
                if old.users == 0:
                    old.env.close()

    def _grow(self) -> None:
        with self._using() as now:
            new = int(now.env.info()["map_size"]) * 2
            if new > MAX_MAP_SIZE:
                raise StateError(f"state at {self.path} would exceed {MAX_MAP_SIZE >> 30} GiB")
            now.env.set_mapsize(new)

    def copy_to(self, dest: str | Path) -> None:
        """A consistent hot copy (compacted) into the empty directory dest."""
        try:
            private_dirs(dest)
            with self._reading() as (now, txn):
                now.env.copy(str(dest), compact=True, txn=txn)
            for f in Path(dest).iterdir():  # LMDB creates the copy as 0666 less the umask
                f.chmod(0o600)
        except (lmdb.Error, OSError) as e:  # no space, I/O error: the copy is incomplete
            raise StateError(f"cannot copy the state to {dest}: {e}") from e

    def usage(self) -> dict[str, int]:
        """The data file's bytes, and of them the pages in use and the free pages LMDB reuses
        before it grows the file. The file never shrinks by itself (its size is the high-water
        mark of the pages ever in use at once); `compact` gives the free pages back."""

        def pages(st: Any) -> int:
            return int(st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"])

        with self._reading() as (now, txn):
            env = now.env.stat()  # the main database: the named databases' roots
            named = sum(pages(txn.stat(db)) for db in now.dbs.values() if db is not None)
            high = int(now.env.info()["last_pgno"]) + 1
            size = os.stat(self._data).st_size
        used = min(high, pages(env) + named + 2)  # 2: the meta pages
        psize = int(env["psize"])
        return {"file_bytes": size, "used_bytes": used * psize,
                "free_bytes": (high - used) * psize, "map_bytes": self.map_size}  # fmt: skip

    def compact(self) -> dict[str, Any]:
        """Put a copy of the environment without its free pages in place of its data file,
        while other processes use it: they wait for LMDB's write lock meanwhile (the pause,
        returned in ms, with the sizes before and after), and each opens the new file at its
        next transaction. A crash at any point leaves the old file or the new one, whole,
        and no write is lost (a writer that got the lock first wrote to the old file before
        the copy; one that got it after opens the new file first). Refused, before anyone
        waits, when the disk has no room for the copy."""
        if self.readonly:
            raise StateError(f"cannot compact the state at {self.path}: opened read-only")
        use = self.usage()
        room = shutil.disk_usage(self.path).free
        if room < use["used_bytes"] + COPY_MARGIN:
            raise StateError(f"cannot compact the state at {self.path}: the copy needs about "
                             f"{(use['used_bytes'] + COPY_MARGIN) >> 20} MiB free on its disk, and "
                             f"{room >> 20} MiB are (the state is unchanged)")  # fmt: skip
        while True:
            now = self._take()
            try:
                with open_lock(self.path):  # nobody opens the files while they are swapped
                    t0 = time.monotonic()
                    txn = self._begin(now.env, write=True)  # every process's writers wait from here
                    try:
                        if self._moved(now):  # a swap this process has not seen yet: compact that file
                            continue
                        before = os.stat(self._data).st_size
                        _swap_in_copy(self.path, now.env, txn)
                    finally:
                        txn.abort()
                    pause_ms = (time.monotonic() - t0) * 1e3
                    break
            except (lmdb.Error, OSError) as e:
                raise StateError(f"cannot compact the state at {self.path}: {e} (the state is whole: "
                                 "the old file, or the copy if it was already in place)") from e
            finally:
                self._give(now)
                self._reopen(now)  # (after the open lock: opening takes it) a no-op if nothing moved
        return {"bytes_before": before, "bytes_after": os.stat(self._data).st_size,
                "pause_ms": round(pause_ms, 1)}  # fmt: skip

    def clear_stale_readers(self) -> int:
        """Release the read slots of processes that died inside a read transaction (LMDB
        cannot reuse the pages such a reader pins, so the file grows until the disk is
        full). Returns how many were released."""
        with self._using() as now:
            return int(now.env.reader_check())

    def close(self) -> None:
        with self._guard:
            self._now.retired = True
            if self._now.users == 0:
                self._now.env.close()

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def open_lock(path: Path) -> Iterator[None]:
    """The state's open lock, exclusive: no swap of its files is half done while the holder
    opens them (a compactor killed halfway is finished here first). Whatever opens the
    environment without a StateStore (a raw lmdb.open) opens it inside this."""
    fd = -1
    for flags in (os.O_RDWR | os.O_CREAT, os.O_RDONLY):  # read-only: a reader without write access
        try:
            fd = os.open(path / OPEN_LOCK, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            break
        except FileNotFoundError:
            break  # no state directory: the opener says so
        except OSError:
            continue
    try:
        if fd >= 0:
            fcntl.flock(fd, fcntl.LOCK_EX)
            finish_swap(path)
        yield
    finally:
        if fd >= 0:
            os.close(fd)  # releases the lock


def _ident(path: str | Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (a rename, an unlink) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _swap_in_copy(path: Path, env: lmdb.Environment, txn: lmdb.Transaction) -> None:
    """Copy the environment as `txn` sees it, compacted, and put the copy in place of the data
    file with a fresh lock file (the old one's reader table and transaction id are the old
    file's). The marker says a swap is under way and names the copy's file (device, inode):
    `finish_swap` completes one that a crash cut after the copy took the data file's place,
    and otherwise only removes it."""
    tmp = Path(tempfile.mkdtemp(prefix=".compact-", dir=path))
    marker = path / SWAP_MARKER
    replaced = False
    try:
        env.copy(str(tmp), compact=True, txn=txn)
        copy = tmp / "data.mdb"
        copy.chmod(0o600)  # LMDB creates it as 0666 less the umask
        with copy.open("rb+") as f:
            os.fsync(f.fileno())
        failpoint("compact.copied")
        _write_atomically(marker, orjson.dumps({"copy": list(_ident(copy))}))
        fsync_dir(path)
        failpoint("compact.marked")
        os.replace(copy, path / "data.mdb")
        replaced = True
        failpoint("compact.swapped")
        with contextlib.suppress(FileNotFoundError):
            (path / "lock.mdb").unlink()
        fsync_dir(path)
        failpoint("compact.unlocked")
        marker.unlink()
        fsync_dir(path)
    except BaseException:
        if not replaced:  # the old file stays the state: no marker may say otherwise
            with contextlib.suppress(OSError):
                marker.unlink()
                fsync_dir(path)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_atomically(path: Path, data: bytes) -> None:
    """path holds data whole, or is as it was: written beside it, synced, renamed."""
    part = path.with_name(path.name + ".part")
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(part, path)


def finish_swap(path: str | Path) -> None:
    """What a compactor killed halfway left (the caller holds the open lock): when the data
    file is the copy the marker names, the lock file still in the directory is the old
    file's, and goes; otherwise the old file is the state, and only the marker goes. Then no
    temporary copy is left. Raises StateError when the old lock file should go and this
    process cannot remove it (opening then would pair the new file with the old lock)."""
    path = Path(path)
    marker = path / SWAP_MARKER
    with contextlib.suppress(OSError):
        (path / (SWAP_MARKER + ".part")).unlink()  # a marker never finished: nothing was swapped
    try:
        raw = marker.read_bytes()
    except FileNotFoundError:
        raw = None
    except OSError:
        raw = b""  # unreadable: cannot tell, so the lock file stays
    if raw is not None:
        try:
            copy = tuple(orjson.loads(raw)["copy"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            copy = ()  # not ours (written atomically, ours is whole): the lock file stays
        try:
            if copy and _ident(path / "data.mdb") == copy:  # swapped: the lock file is the old file's
                with contextlib.suppress(FileNotFoundError):
                    (path / "lock.mdb").unlink()
            marker.unlink()
            fsync_dir(path)
        except OSError as e:
            if copy:
                raise StateError(f"a compaction of the state at {path} was cut short and this process "
                                 f"cannot finish it ({e}): open it once as its owner") from e
    for old in path.glob(".compact-*"):  # copies a crash left behind
        shutil.rmtree(old, ignore_errors=True)


COMPACT_MIN_FREE = 64 << 20  # free bytes below which compacting is not worth a copy of the file
COPY_MARGIN = 64 << 20  # free disk beyond the copy's size that compacting leaves


def compact_due(use: dict[str, int], free_ratio: float, min_free: int = COMPACT_MIN_FREE) -> bool:
    """At least `free_ratio` of the file and `min_free` bytes are free pages."""
    return use["free_bytes"] >= min_free and use["free_bytes"] >= free_ratio * use["file_bytes"]


def compact(path: str | Path) -> dict[str, Any]:
    """`StateStore.compact` on the environment at `path` (with the system stopped, or from
    its supervisor: see there)."""
    path = Path(path)
    if not (path / "data.mdb").is_file():
        raise StateError(f"no state at {path} to compact")
    with StateStore(path) as store:
        return store.compact()


def compact_if_needed(path: str | Path, free_ratio: float,
                      min_free: int = COMPACT_MIN_FREE) -> dict[str, Any] | None:  # fmt: skip
    """`compact` when `compact_due`; None when it is not needed or there is no state yet."""
    if not (Path(path) / "data.mdb").is_file():
        return None
    with StateStore(path) as store:
        return store.compact() if compact_due(store.usage(), free_ratio, min_free) else None


class Committer:
    """A process's durable commits on a thread of their own, for state whose commit nothing
    the process does next has to wait for (risk's book and refusals): an fdatasync
    releases the GIL, and the process goes on deciding meanwhile.

    `submit(fn)` queues a transaction function; it must capture the values it writes, not
    read live objects, since it runs later. Everything queued while a commit is in flight
    goes into the next one, in order, as one transaction: a burst costs one fsync; with
    `every_s`, commits are at least that far apart, so that other processes' commits (the
    gateway's, which an order waits for) find the disk and the write lock free. A
    failed commit (a full disk) is raised in the caller's thread by its next `submit`,
    `check` or `close`: the process stops, and nothing of that commit was kept."""

    def __init__(self, store: StateStore, name: str = "committer", every_s: float = 0.0):
        self.store = store
        self.every_s = every_s  # at most one commit this often: the disk is shared
        self._queue: list[Callable[[Txn], Any]] = []
        self._cv = threading.Condition()
        self._in_flight_since: float | None = None
        self._closing = False
        self._submitted = self._committed = 0  # transaction functions, counted
        self._flush_upto = 0  # a flush waits until this many are committed: no spacing until then
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[Txn], Any]) -> None:
        self.check()
        with self._cv:
            self._queue.append(fn)
            self._submitted += 1
            self._cv.notify()

    def check(self) -> None:
        if self._error is not None:
            why = f"a commit to the state at {self.store.path} failed: {self._error}"
            raise StateError(why) from self._error

    def stalled(self, limit_s: float) -> bool:
        """A commit has been in flight longer than limit_s (the caller stops its heartbeat)."""
        since = self._in_flight_since
        return since is not None and time.monotonic() - since > limit_s

    def hurry(self) -> None:
        """Commit everything submitted now, not after the spacing, without waiting for it."""
        with self._cv:
            self._flush_upto = max(self._flush_upto, self._submitted)
            self._cv.notify_all()

    def flush(self) -> None:
        """Wait until everything submitted is committed (now: not after the spacing)."""
        self.hurry()
        with self._cv:
            self._cv.wait_for(lambda: self._error is not None or self._committed >= self._flush_upto)
        self.check()

    def _hurried(self) -> bool:
        return self._closing or self._flush_upto > self._committed

    def close(self) -> None:
        self.flush()
        with self._cv:
            self._closing = True
            self._cv.notify()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._queue or self._closing)
                if not self._queue:
                    return
                fns, self._queue = self._queue, []
                self._in_flight_since = time.monotonic()
            try:
                self.store.write(functools.partial(_run_all, fns))
            except BaseException as e:  # handed to the caller's thread
                with self._cv:
                    self._error = e
                    self._in_flight_since = None
                    self._cv.notify_all()
                return
            with self._cv:
                self._in_flight_since = None
                self._committed += len(fns)
                self._cv.notify_all()
                if self.every_s:  # what comes meanwhile goes into the next commit
                    self._cv.wait_for(self._hurried, timeout=self.every_s)


def _run_all(fns: list[Callable[[Txn], Any]], t: Txn) -> None:
    for fn in fns:
        fn(t)
