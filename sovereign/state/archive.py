"""Bounded history: orders, executions and journal entries older than the retention move
from LMDB to monthly archive files, where they stay readable (`sovereign journal --from`).

Files. Under the archive directory (mode 0700, files 0600), `<series>-<YYYY-MM>.pNNNN.jsonl.zst`:
zstd-compressed lines `[key, time_ns, record]` in key order. The series are `journal` (key:
the sequence number), `orders` (the client id; final orders only), `execs` (the broker's
execution of an order, by client id, archived with its order) and `deals` (a deal the
broker made on its own, a stop or a target, by ticket). A month comes in one part per
archiving run; more when it holds more than PART_RECORDS, or when an order still open as
its month moved is final later. MANIFEST.json lists every part with its key range, count,
sha256, and whether its records are gone from LMDB yet (`done`); a part file it does not
list is not part of the archive.

Time is market time, the clock decisions are made by (a soak's simulated decade archives
as a real one would). An order's, an execution's and a deal's time is its own ts_ns; a
journal entry's is the newest market time the journal had reached when it was written (its
own ts_ns, else the one before it), so a month of the journal is a run of sequence
numbers. A record with no time before it takes the first one after it. Now is the newest
market time in the state, and a month moves once all of it is older than the retention's
`days`: LMDB keeps `days` to `days` + 31 of history, and whatever is still open.

No record is ever lost. A part is written to a temporary file, synced and renamed, and the
directory synced; then the manifest lists it (written atomically); then its records are
deleted from LMDB, `batch` to a transaction so that the live processes commit between
them, each only if it equals its archived line; then the manifest marks the part done.
Every run first finishes the last one: temporary files and parts the manifest does not
list are deleted (their records are still in LMDB), and a part not done is verified again
(checksum, every line) before the rest of its records are deleted. A crash anywhere leaves
each record in LMDB or in a listed, verified part, or in both until the next run; readers
show such a record once. Only one archiver runs on a directory at a time (a lock file in
it); the supervisor runs it, and `sovereign archive run` only while the system is stopped.
"""

from __future__ import annotations

import calendar
import contextlib
import fcntl
import hashlib
import heapq
import io
import os
import re
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import orjson
import zstandard

from sovereign.errors import OperationalError
from sovereign.failpoints import failpoint
from sovereign.files import atomic_writer
from sovereign.state.orders import OPEN_VALUES
from sovereign.state.schema import META_JOURNAL_ARCHIVED, exec_key, key_u64, u64_key
from sovereign.state.store import StateError, StateStore, Txn, fsync_dir, private_dirs

NS = 1_000_000_000
DAY_NS = 86_400 * NS
MANIFEST = "MANIFEST.json"
LOCK = ".lock"
SERIES = ("journal", "orders", "execs", "deals")
PART = re.compile(r"^(journal|orders|execs|deals)-(\d{4}-\d{2})\.p(\d{4,})\.jsonl\.zst$")
# Records in one part at most: a step's work, about a second on 2 busy cores, which the
# supervisor's loop waits for (bench/bench_archive.py prints the longest step)
PART_RECORDS = 25_000
BATCH = 1000  # LMDB deletes per transaction
LEVEL = 6  # zstd: about 10x on these records, at well over 50 MB/s
DEAL = b"deal:"


class ArchiveError(OperationalError):
    """The archive cannot be used as it is (a missing manifest, a damaged part)."""


@dataclass
class Part:
    """One archive file, as the manifest lists it."""

    file: str
    series: str
    month: str  # YYYY-MM
    records: int
    first: int  # the first and the last key
    last: int
    max_time: int  # the newest record's time (ns): where the next run's times go on from
    bytes: int
    sha256: str
    done: bool  # its records are gone from LMDB


# ---- months


def month_of(ns: int) -> str:
    return time.strftime("%Y-%m", time.gmtime(ns // NS))


def month_start(ns: int) -> int:
    """The first nanosecond of the calendar month (UTC) that `ns` is in."""
    t = time.gmtime(ns // NS)
    return calendar.timegm((t.tm_year, t.tm_mon, 1, 0, 0, 0)) * NS


def _month_bounds(month: str) -> tuple[int, int]:
    y, m = int(month[:4]), int(month[5:7])
    start = calendar.timegm((y, m, 1, 0, 0, 0)) * NS
    end = calendar.timegm((y + m // 12, m % 12 + 1, 1, 0, 0, 0)) * NS
    return start, end


def parse_month(text: str, what: str = "--from") -> int:
    """A month (2027-01) or a day (2027-01-15), UTC, as its first nanosecond; ValueError
    naming `what` otherwise."""
    m = re.fullmatch(r"(\d{4})-(\d{2})(?:-(\d{2}))?", text.strip())
    try:
        if m is None:
            raise ValueError
        y, mo, d = int(m[1]), int(m[2]), int(m[3] or 1)
        if not (1970 <= y <= 2199 and 1 <= mo <= 12 and 1 <= d <= calendar.monthrange(y, mo)[1]):
            raise ValueError
    except ValueError:
        raise ValueError(f"{what} {text[:40]!r} is not a month like 2027-01 or a day like 2027-01-15 "
                         "(UTC, 1970..2199)") from None  # fmt: skip
    return calendar.timegm((y, mo, d, 0, 0, 0)) * NS


def archive_dir(config: Any) -> Path:
    """Where a config's archive lives: retention.archive_dir, else <state_dir>/archive."""
    return Path(config.retention.archive_dir or Path(config.system.state_dir) / "archive")


# ---- the files


class Archive:
    """The archive directory: its manifest and part files. Knows nothing of LMDB."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    def part_files(self) -> list[Path]:
        if not self.path.is_dir():
            return []
        return sorted(p for p in self.path.iterdir() if PART.match(p.name))

    def load(self) -> list[Part]:
        """The manifest's parts; none where there is no archive yet. ArchiveError when the
        manifest is missing beside part files, or unreadable."""
        try:
            raw = self.manifest_path.read_bytes()
        except FileNotFoundError:
            listed = self.part_files()
            if listed:
                raise ArchiveError(f"{self.manifest_path} is missing, and {len(listed)} part files "
                                   f"({listed[0].name}, ...) are there: which of them are complete "
                                   "cannot be told; restore the archive from a backup") from None  # fmt: skip
            return []
        except OSError as e:
            raise ArchiveError(f"cannot read {self.manifest_path}: {e.strerror}") from None
        try:
            doc = orjson.loads(raw)
            names = {f.name for f in fields(Part)}
            parts = [Part(**{k: p[k] for k in names}) for p in doc["parts"]]
            if doc.get("version") != 1 or any(not PART.match(p.file) for p in parts):
                raise ValueError("not an archive manifest of version 1")
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise ArchiveError(f"{self.manifest_path} is not a valid archive manifest: {e}") from None
        return parts

    def save(self, parts: list[Part]) -> None:
        """Replace the manifest, atomically and durably."""
        doc = {"version": 1, "parts": [asdict(p) for p in parts]}
        with atomic_writer(self.manifest_path) as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2))

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the archive's lock: one archiver at a time (ArchiveError when it is taken)."""
        private_dirs(self.path)
        fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ArchiveError(f"the archive at {self.path} is being written by another "
                                   "archiver (the running system's supervisor?)") from None  # fmt: skip
            yield
        finally:
            os.close(fd)

    def write_part(self, series: str, month: str, number: int, rows: list[tuple[int, int, bytes]]) -> Part:
        """Write rows (key, time, the record's JSON) as a new part, synced and in place under
        its name; not listed in the manifest yet (the caller lists it)."""
        name = f"{series}-{month}.p{number:04d}.jsonl.zst"
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=self.path)  # 0600
        digest, size = hashlib.sha256(), 0
        try:
            with os.fdopen(fd, "wb") as f:
                cobj = zstandard.ZstdCompressor(level=LEVEL).compressobj()
                for at in range(0, len(rows), BATCH):
                    lines = b"".join(b"[%d,%d,%s]\n" % row for row in rows[at : at + BATCH])
                    chunk = cobj.compress(lines)
                    f.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                    if at == 0:
                        f.flush()
                        failpoint("archive.temp")
                chunk = cobj.flush()
                f.write(chunk)
                digest.update(chunk)
                size += len(chunk)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path / name)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        fsync_dir(self.path)
        return Part(name, series, month, len(rows), rows[0][0], rows[-1][0], max(r[1] for r in rows), size,
                    digest.hexdigest(), False)  # fmt: skip

    def read(self, part: Part, check: bool = True) -> Iterator[tuple[int, int, dict[str, Any]]]:
        """The part's records as (key, time, record), its checksum checked first (check)."""
        path = self.path / part.file
        try:
            if check:
                problem = self._checksum(part)
                if problem:
                    raise ArchiveError(f"{path}: {problem}")
            with path.open("rb") as raw:
                reader = io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw))  # type: ignore[arg-type]
                for n, line in enumerate(reader, 1):
                    yield _parse(line, path, n)
        except zstandard.ZstdError as e:
            raise ArchiveError(f"{path}: does not decompress (damaged): {e}") from None
        except OSError as e:
            raise ArchiveError(f"cannot read {path}: {e.strerror or e}") from None

    def _checksum(self, part: Part) -> str | None:
        path = self.path / part.file
        if path.is_symlink() or not path.is_file():
            return "missing (listed in the manifest)"
        if path.stat().st_size != part.bytes:
            return f"is {path.stat().st_size} bytes, the manifest says {part.bytes}: damaged or cut"
        h = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        return None if h.hexdigest() == part.sha256 else "does not match its sha256 in the manifest: damaged"

    def check(self, part: Part) -> str | None:
        """Why the part is not what the manifest says (checksum, every line, the count and
        the key range), or None."""
        try:
            keys = [k for k, _, _ in self.read(part)]
        except ArchiveError as e:
            return str(e)
        if len(keys) != part.records:
            return f"{self.path / part.file}: holds {len(keys)} records, the manifest says {part.records}"
        if keys and (keys[0] != part.first or keys[-1] != part.last or keys != sorted(set(keys))):
            return f"{self.path / part.file}: its keys are not {part.first}..{part.last} in order"
        return None

    def verify(self, deep: bool = True) -> list[tuple[str, str, str]]:
        """Every part against the manifest: (name, "ok" | "warn" | "fail", detail) rows, a
        row for each problem and one summary. deep: every record read too (`archive
        verify`); else the checksums only (a backup's: its parts were read when written)."""
        if not self.path.exists():
            return [("archive", "ok", f"no archive yet at {self.path}")]
        try:
            parts = self.load()
        except ArchiveError as e:
            return [("archive manifest", "fail", str(e))]
        check = self.check if deep else self._checksum
        rows = [(p.file, "fail", f"{self.path / p.file}: {problem}" if not deep else problem)
                for p in parts if (problem := check(p))]  # fmt: skip
        listed = {p.file for p in parts}
        unlisted = "a part no run finished listing (its records are still in LMDB); the next run deletes it"
        rows += [(f.name, "warn", unlisted) for f in self.part_files() if f.name not in listed]
        if not rows:
            n = sum(p.records for p in parts)
            months = len({p.month for p in parts})
            read = " and every record reads" if deep else ""
            rows.append(("archive", "ok", f"{len(parts)} parts, {n:,} records over {months} months: every "
                                          f"checksum matches{read}"))  # fmt: skip
        return rows

    def size(self) -> dict[str, int]:
        parts = self.part_files()
        return {"files": len(parts), "bytes": sum(p.stat().st_size for p in parts)}


def _parse(line: bytes, path: Path, n: int) -> tuple[int, int, dict[str, Any]]:
    try:
        key, ts, record = orjson.loads(line)
        if type(key) is not int or type(ts) is not int or type(record) is not dict:
            raise ValueError
    except (orjson.JSONDecodeError, ValueError, TypeError):
        raise ArchiveError(f"{path}: line {n} is not a [key, time, record] line (damaged)") from None
    return key, ts, record


# ---- where each series lives in LMDB


def _db(series: str) -> str:
    return {"journal": "journal", "orders": "orders", "execs": "bridge", "deals": "bridge"}[series]


def _lmdb_key(series: str, key: int) -> bytes:
    return exec_key(key) if series == "execs" else DEAL + u64_key(key) if series == "deals" else u64_key(key)


def record_time(record: dict[str, Any]) -> int | None:
    ts = record.get("ts_ns")
    return ts if type(ts) is int and ts > 0 else None


def market_now(t: Txn, look: int = 1000) -> int | None:
    """The newest market time in the state: of the newest orders and journal entries that
    carry one (None where none does)."""
    newest = None
    for db in ("orders", "journal"):
        for n, (_, rec) in enumerate(t.items(db, reverse=True)):
            ts = record_time(rec) if isinstance(rec, dict) else None
            if ts is not None:
                newest = max(newest or 0, ts)
                break
            if n >= look:
                break
    return newest


def market_first(t: Txn) -> int | None:
    """The oldest market time in the live journal (None where no entry carries one)."""
    return next(filter(None, (record_time(e) for _, e in t.items("journal"))), None)


@dataclass
class _Row:
    key: int
    time: int
    raw: bytes
    record: dict[str, Any]


UNTIMED = 1 << 62  # the time of records with no market time before or after them: newer than any


def _timed(items: Iterator[tuple[bytes, bytes]], carry: int, monotone: bool) -> Iterator[_Row]:
    """Each record with its time (see the module doc): its own ts_ns, or (monotone, the
    journal) the newest so far; one with none before it takes the next one's, and UNTIMED
    when there is none after it either."""
    mark, waiting = carry, []
    for k, raw in items:
        rec = orjson.loads(raw)
        own = record_time(rec) if isinstance(rec, dict) else None
        if own is None and not mark:
            waiting.append((k, raw, rec))
            continue
        mark = max(mark, own or 0)
        at = mark if monotone or own is None else own
        for wk, wraw, wrec in waiting:
            yield _Row(_key_int(wk), at, wraw, wrec)
        waiting = []
        yield _Row(_key_int(k), at, raw, rec)
    for wk, wraw, wrec in waiting:
        yield _Row(_key_int(wk), UNTIMED, wraw, wrec)


def _key_int(key: bytes) -> int:
    return key_u64(key[-8:])


# ---- the archiver


class Archiver:
    """Moves what is past the retention from the LMDB state to the archive, a bounded piece
    per `step` (at most PART_RECORDS records of one series and month). The supervisor calls
    `tick` from its loop; `sovereign archive run` calls `run`. See the module doc for the
    order of the writes and what a crash between them leaves."""

    def __init__(self, store: StateStore, directory: str | Path, days: int, *, interval_s: float = 600.0,
                 batch: int = BATCH, part_records: int = PART_RECORDS):  # fmt: skip
        self.store = store
        self.archive = Archive(directory)
        self.days = days
        self.interval_s = interval_s
        self.batch = batch
        self.part_records = part_records
        self.next_at = 0.0  # monotonic: when tick steps next
        self.failing = ""  # the last step's error, said once

    @classmethod
    def for_config(cls, store: StateStore, config: Any) -> Archiver:
        r = config.retention
        return cls(store, archive_dir(config), r.days, interval_s=r.interval_s)

    def tick(self, now: float) -> list[tuple[str, dict[str, Any]]]:
        """A step when one is due (at once again while there is more to move, else after the
        interval); the journal events that say what it did. An error never escapes: it is
        reported once, and the step is tried again after the interval."""
        if now < self.next_at:
            return []
        try:
            done = self.step()
        except (ArchiveError, StateError, OSError) as e:
            self.next_at = now + self.interval_s
            why = str(e)
            if why == self.failing:
                return []
            self.failing = why
            return [("archive_failed", {"why": why})]
        self.failing = ""
        self.next_at = now if done["more"] else now + self.interval_s
        if not done["parts"]:
            return []
        return [("archived", {"records": done["records"], "parts": ", ".join(done["parts"]),
                              "mismatched": done["mismatched"]})]  # fmt: skip

    def run(self, now_ns: int | None = None) -> dict[str, Any]:
        """Steps until nothing is left to move; what they moved."""
        total: dict[str, Any] = {"parts": [], "records": 0, "mismatched": 0}
        while True:
            done = self.step(now_ns)
            total["parts"] += done["parts"]
            total["records"] += done["records"]
            total["mismatched"] += done["mismatched"]
            if not done["more"]:
                return total

    def step(self, now_ns: int | None = None) -> dict[str, Any]:
        """Finish what a crash left, then move one piece: the oldest month of the first
        series that has records older than the retention's whole months."""
        out: dict[str, Any] = {"parts": [], "records": 0, "mismatched": 0, "more": False}
        if self.days <= 0 and not self.archive.path.exists():
            return out  # archiving off, and never on here: nothing to finish either
        with self.archive.locked():
            parts = self.archive.load()
            if not self.archive.manifest_path.exists():  # first: a part is never there without it
                self.archive.save(parts)
            parts = self._recover(parts, out)
            if self.days <= 0:
                return out
            now = now_ns if now_ns is not None else self.store.read(market_now)
            if now is None:
                return out
            cutoff = month_start(now - self.days * DAY_NS)  # whole months only
            for series in ("orders", "deals", "journal"):
                carry = max((p.max_time for p in parts if p.series == series), default=0)
                month, rows, execs = self._collect(series, cutoff, carry)
                if rows:
                    new = [(series, rows)] + ([("execs", execs)] if execs else [])
                    self._move(parts, month, new, out)
                    out["more"] = True
                    return out
        return out

    # -- the steps

    def _recover(self, parts: list[Part], out: dict[str, Any]) -> list[Part]:
        """What a crashed run left: temporary files and unlisted parts go (their records are
        in LMDB); a listed part not done is verified and its records deleted."""
        listed = {p.file for p in parts}
        for f in self.archive.path.iterdir():
            temporary = f.name.startswith(".") and f.name.endswith(".tmp")
            if temporary or (PART.match(f.name) and f.name not in listed):
                f.unlink()
        for p in parts:
            if not p.done:
                rows = [_Row(k, ts, b"", rec) for k, ts, rec in self.archive.read(p)]
                if len(rows) != p.records:
                    raise ArchiveError(f"{self.archive.path / p.file}: holds {len(rows)} records, the "
                                       f"manifest says {p.records}; nothing more was deleted from LMDB")
                out["mismatched"] += self._delete([(p.series, rows)])
                p.done = True
                self.archive.save(parts)
        return parts

    def _scan(self, db: str, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        """(key, raw record) in key order, `batch` per read transaction: a long read would pin
        pages the writers need (the records read are immutable, so the chunks agree)."""
        start, after = prefix or None, b""
        while True:

            def chunk(t: Txn, start: bytes | None = start, after: bytes = after) -> list[tuple[bytes, bytes]]:
                got = []
                for k, v in t.items(db, start, raw=True):
                    if not k.startswith(prefix):
                        break
                    if k != after:  # the last key of the chunk before
                        got.append((k, v))
                    if len(got) >= self.batch:
                        break
                return got

            got = self.store.read(chunk)
            if not got:
                return
            yield from got
            start = after = got[-1][0]
            if len(got) < self.batch:
                return

    def _collect(self, series: str, cutoff: int, carry: int) -> tuple[str, list[_Row], list[_Row]]:
        """The next piece of a series to move: records of one month before `cutoff`, in key
        order, at most part_records (orders: final ones, with their executions)."""
        db, prefix = _db(series), DEAL if series == "deals" else b""
        month, rows, execs = "", [], []
        for row in _timed(self._scan(db, prefix), carry, monotone=series == "journal"):
            if row.time >= cutoff:
                break
            if series == "orders" and row.record.get("state") in OPEN_VALUES:
                continue  # open orders stay, however old: trading and reconciliation need them
            m = month_of(row.time)
            if month and m != month:
                break
            month = m
            rows.append(row)
            if len(rows) >= self.part_records:
                break
        if series == "orders" and rows:
            keys = [exec_key(r.key) for r in rows]
            found = self.store.read(lambda t: [(k, t.get_bytes("bridge", k)) for k in keys])
            execs = [_Row(r.key, r.time, raw, orjson.loads(raw))
                     for r, (_, raw) in zip(rows, found, strict=True) if raw is not None]  # fmt: skip
        return month, rows, execs

    def _move(self, parts: list[Part], month: str, new: list[tuple[str, list[_Row]]],
              out: dict[str, Any]) -> None:  # fmt: skip
        """Write, list, delete, mark done: in that order (see the module doc)."""
        written = []
        for series, rows in new:
            number = 1 + max((int(PART.match(p.file)[3]) for p in parts  # type: ignore[index]
                              if p.series == series and p.month == month), default=0)  # fmt: skip
            lines = [(r.key, r.time, r.raw) for r in rows]
            written.append(self.archive.write_part(series, month, number, lines))
        failpoint("archive.written")
        parts += written
        self.archive.save(parts)
        failpoint("archive.listed")
        out["mismatched"] += self._delete(new)
        failpoint("archive.deleted")
        for p in written:
            p.done = True
        self.archive.save(parts)
        out["parts"] += [p.file for p in written]
        out["records"] += sum(p.records for p in written)

    def _delete(self, new: list[tuple[str, list[_Row]]]) -> int:
        """Delete archived records from LMDB, `batch` to a transaction (an order and its
        execution in the same one), each only if it equals its archived line: one that
        does not (it changed after it was read: never, for final records) stays in LMDB,
        counted and returned, and a later run archives it again, the newer copy."""
        rows = [(series, r) for series, rs in new for r in rs]
        rows.sort(key=lambda sr: (sr[1].key, sr[0]))
        mismatched = 0
        for at in range(0, len(rows), self.batch):
            chunk = rows[at : at + self.batch]

            def tx(t: Txn, chunk: list[tuple[str, _Row]] = chunk) -> int:
                bad, through = 0, 0
                for series, r in chunk:
                    db, key = _db(series), _lmdb_key(series, r.key)
                    now = t.get_bytes(db, key)
                    if now is None:
                        continue  # deleted by the run a crash cut short
                    if now != r.raw and orjson.loads(now) != r.record:  # raw: b"" when read back from a part
                        bad += 1
                        continue
                    t.delete(db, key)
                    if series == "journal":
                        through = max(through, r.key)
                if through:
                    before = int(t.get("meta", META_JOURNAL_ARCHIVED) or 0)
                    t.put("meta", META_JOURNAL_ARCHIVED, max(through, before))
                return bad

            mismatched += self.store.write(tx)
            if at == 0:
                failpoint("archive.deleting")
        return mismatched


# ---- reading history


def history(t: Txn, directory: str | Path, series: str, start: int | None = None,
            end: int | None = None) -> Iterator[tuple[int, dict[str, Any]]]:  # fmt: skip
    """The records of `series` ("journal" or "orders") whose time is in [start, end), from
    the archive and LMDB merged in key order, each once. Call it inside the read
    transaction `t`, begun before: a record the archiver moves meanwhile is then in the
    snapshot, or in the manifest read after it."""
    archive = Archive(directory)
    parts = [p for p in archive.load() if p.series == series]  # in the order they were written
    lo, hi = start if start is not None else 0, end if end is not None else 1 << 63

    def wanted(p: Part) -> bool:
        m0, m1 = _month_bounds(p.month)
        return m0 < hi and m1 > lo

    def live() -> Iterator[tuple[int, int, dict[str, Any]]]:
        after = max((p.last for p in parts), default=0) if series == "journal" else 0
        carry = max((p.max_time for p in parts), default=0)
        records = t.items(series, after + 1 if after else None, raw=True)
        for row in _timed(records, carry, monotone=series == "journal"):
            if row.time >= hi and series == "journal":
                return  # its times only grow
            if lo <= row.time < hi:
                yield row.key, len(parts), row.record

    streams = [((k, rank, rec) for k, at, rec in archive.read(p) if lo <= at < hi)
               for rank, p in enumerate(parts) if wanted(p)]  # fmt: skip
    held: tuple[int, int, dict[str, Any]] | None = None
    # A key twice: in a part and still in LMDB (a run cut short between the two), or archived
    # again after it changed in LMDB (see Archiver._delete): the newest copy is shown.
    for row in heapq.merge(*streams, live(), key=lambda r: (r[0], r[1])):
        if held is not None and row[0] != held[0]:
            yield held[0], held[2]
        held = row
    if held is not None:
        yield held[0], held[2]
