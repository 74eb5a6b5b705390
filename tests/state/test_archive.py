"""The history archive, the open-order index and compaction, on real LMDB files: months
move whole and stay readable, open orders stay, every bad archive file is a clear error,
backups carry the archive, and an old state gets its index."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
import zstandard

from sovereign.config import ConfigError, from_dict
from sovereign.ops.maintenance import _check_retention, backup, failed, restore, verify
from sovereign.state.archive import MANIFEST, Archive, ArchiveError, Archiver, history, month_of, parse_month
from sovereign.state.orders import OrderBook, OrderState, build_open_index, claim_open_index, reserve_ids
from sovereign.state.schema import META_JOURNAL_ARCHIVED, META_OPEN_INDEX, deal_key, exec_key, key_u64
from sovereign.state.store import StateStore, Txn, compact, compact_if_needed

S = OrderState
T0 = parse_month("2027-01")
DAY = 86_400 * 10**9
SERIES = ("journal", "orders", "execs", "deals")


def build(path: Path, days: int = 400, per_day: int = 4) -> StateStore:
    """A state with `days` market days of orders (every 7th left open, the rest filled with
    an execution), deals and journal entries, some without a market time of their own."""
    store = StateStore(path)
    book = OrderBook(store)
    store.write(lambda t: t.journal("started"))  # no market time before it: takes the next one's

    def day(t: Txn, d: int) -> None:
        for n in range(per_day):
            i = d * per_day + n
            ts = T0 + i * DAY // per_day
            book.advance(t, i + 1, [S.APPROVED, S.SUBMITTING], ts_ns=ts, symbol=0, side=1)
            if i % 7:
                book.advance(t, i + 1, [S.FILLED], ticket=i)
                t.put("bridge", exec_key(i + 1), {"client_order_id": i + 1, "ts_ns": ts, "ticket": i})
            if i % 5 == 0:
                t.put("bridge", deal_key(10**6 + i), {"ticket": 10**6 + i, "ts_ns": ts, "reason": "sl"})
                t.journal("fill", ticket=10**6 + i, ts_ns=ts)
            t.journal("stats", n=i)

    for d in range(days):
        store.write(lambda t, d=d: day(t, d))
    return store


def lmdb_records(store: StateStore) -> dict[str, dict[int, Any]]:
    def read(t: Txn) -> dict[str, dict[int, Any]]:
        bridge = list(t.items("bridge"))
        return {"journal": {key_u64(k): v for k, v in t.items("journal")},
                "orders": {key_u64(k): v for k, v in t.items("orders")},
                "execs": {key_u64(k[5:]): v for k, v in bridge if k.startswith(b"exec:")},
                "deals": {key_u64(k[5:]): v for k, v in bridge if k.startswith(b"deal:")}}  # fmt: skip

    return store.read(read)


def archived_records(directory: Path) -> dict[str, dict[int, Any]]:
    """Every record of every listed part (each part checked), failing on a key twice."""
    archive = Archive(directory)
    out: dict[str, dict[int, Any]] = {s: {} for s in SERIES}
    for p in archive.load():
        assert archive.check(p) is None
        for key, _, rec in archive.read(p):
            assert key not in out[p.series], f"{p.series} {key} archived twice"
            out[p.series][key] = rec
    return out


def placement(original: dict[str, dict[int, Any]], store: StateStore, directory: Path) -> int:
    """Every original record is in LMDB or in a verified part, unchanged, and nothing else
    is anywhere; returns how many are in both (a run cut short between the two)."""
    live, archived = lmdb_records(store), archived_records(directory)
    both = 0
    for series, records in original.items():
        for key, rec in records.items():
            where = [w for w in (live, archived) if key in w[series]]
            assert where, f"{series} {key} is lost"
            assert all(w[series][key] == rec for w in where), f"{series} {key} changed"
            both += len(where) - 1
        extra = (set(live[series]) | set(archived[series])) - set(records)
        assert not extra, f"{series}: {sorted(extra)[:5]} came from nowhere"
    return both


def shown_once(original: dict[str, dict[int, Any]], store: StateStore, directory: Path) -> None:
    for series in ("journal", "orders"):
        keys = store.read(lambda t, s=series: [k for k, _ in history(t, directory, s)])
        assert keys == sorted(original[series]), f"{series} is not shown exactly once, in order"


# ---- archiving


def test_whole_months_past_the_retention_move_and_open_orders_stay(tmp_path: Path) -> None:
    store = build(tmp_path / "s")
    original = lmdb_records(store)
    arc = tmp_path / "a"
    done = Archiver(store, arc, 90, batch=100).run()
    assert done["records"] > 0 and done["mismatched"] == 0
    now = T0 + (400 * DAY - DAY // 4)
    cutoff = parse_month(month_of(now - 90 * DAY))
    parts = Archive(arc).load()
    assert {p.month for p in parts} == {month_of(T0 + d * DAY) for d in range(0, (cutoff - T0) // DAY)}
    assert all(p.done for p in parts) and all(parse_month(p.month) < cutoff for p in parts)
    live = lmdb_records(store)
    # what stays: every open order, however old, and everything of the retention's months
    assert all(o["state"] == "SUBMITTING" or o["ts_ns"] >= cutoff for o in live["orders"].values())
    assert {c for c, o in original["orders"].items() if o["state"] == "SUBMITTING"} <= set(live["orders"])
    assert all(d["ts_ns"] >= cutoff for d in live["deals"].values())
    assert all(live["orders"].get(c, {}).get("state") == "SUBMITTING" or x["ts_ns"] >= cutoff
               for c, x in live["execs"].items())  # fmt: skip
    # the journal: a prefix moved, the rest contiguous after it, the mark in the same place
    first_live = min(live["journal"])
    assert store.read(lambda t: t.get("meta", META_JOURNAL_ARCHIVED)) == first_live - 1
    assert sorted(live["journal"]) == list(range(first_live, max(original["journal"]) + 1))
    assert placement(original, store, arc) == 0
    shown_once(original, store, arc)
    assert Archive(arc).verify()[-1][1] == "ok"
    checks = verify(tmp_path / "s", archive=arc)
    assert not failed(checks), checks
    # nothing more to move until time goes on; numbering goes on after the archived
    assert Archiver(store, arc, 90).run()["records"] == 0
    seq = store.write(lambda t: t.journal("next"))
    assert seq == max(original["journal"]) + 1


def test_the_journal_numbers_on_after_everything_was_archived(tmp_path: Path) -> None:
    store = build(tmp_path / "s", days=40)
    last = max(lmdb_records(store)["journal"])
    Archiver(store, tmp_path / "a", 1).run(now_ns=T0 + 3650 * DAY)
    assert store.read(lambda t: t.count("journal")) == 0
    assert store.write(lambda t: t.journal("after")) == last + 1
    assert not failed(verify(tmp_path / "s", archive=tmp_path / "a"))


def test_history_reads_months_across_archive_and_lmdb(tmp_path: Path) -> None:
    store = build(tmp_path / "s")
    original = lmdb_records(store)
    arc = tmp_path / "a"
    Archiver(store, arc, 90).run()
    lo, hi = parse_month("2027-02"), parse_month("2027-03")
    got = store.read(lambda t: [k for k, _ in history(t, arc, "orders", lo, hi)])
    assert got == sorted(k for k, o in original["orders"].items() if lo <= o["ts_ns"] < hi)
    spring = parse_month("2027-12")  # archived months and live ones in one read
    got = store.read(lambda t: [k for k, _ in history(t, arc, "orders", spring, None)])
    assert got == sorted(k for k, o in original["orders"].items() if o["ts_ns"] >= spring)
    journal = store.read(lambda t: list(history(t, arc, "journal", lo, hi)))
    assert journal and all(lo <= e.get("ts_ns", lo) < hi for _, e in journal)
    keys = [k for k, _ in journal]
    assert keys == list(range(keys[0], keys[-1] + 1))


def test_an_interrupted_run_is_finished_and_shown_once_meanwhile(tmp_path: Path) -> None:
    """A part listed but not done, its records still in LMDB (a crash between the two):
    readers show each record once, and the next run deletes them after checking the part."""
    store = build(tmp_path / "s")
    original = lmdb_records(store)
    arc = tmp_path / "a"
    Archiver(store, arc, 90).run()
    archive = Archive(arc)
    parts = archive.load()
    undone = [p for p in parts if p.month == "2027-03"]
    for p in undone:
        p.done = False
        db = {"journal": "journal", "orders": "orders"}.get(p.series, "bridge")
        key = {"execs": exec_key, "deals": deal_key}.get(p.series, lambda k: k)
        store.write(lambda t, p=p, db=db, key=key: [t.put(db, key(k), r) for k, _, r in archive.read(p)])
    archive.save(parts)
    (arc / ".journal-2027-04.p0009.jsonl.zst.x.tmp").write_bytes(b"half")  # a cut temporary file
    (arc / "orders-2027-04.p0009.jsonl.zst").write_bytes(b"renamed, never listed")
    assert placement(original, store, arc) > 0
    shown_once(original, store, arc)
    Archiver(store, arc, 90).run()
    assert placement(original, store, arc) == 0
    assert sorted(f.name for f in arc.iterdir() if not f.name.endswith(".zst")) == [".lock", MANIFEST]
    assert not failed(verify(tmp_path / "s", archive=arc))


def test_a_record_that_differs_from_its_archived_line_stays_in_lmdb(tmp_path: Path) -> None:
    store = build(tmp_path / "s", days=60)
    arc = tmp_path / "a"
    archiver = Archiver(store, arc, 1)
    archiver.run(now_ns=T0 + 365 * DAY)
    archive = Archive(arc)
    parts = archive.load()
    p = next(p for p in parts if p.series == "orders")
    p.done = False
    archive.save(parts)
    key, _, rec = next(archive.read(p))
    store.write(lambda t: t.put("orders", key, {**rec, "note": "changed after it was archived"}))
    done = archiver.step(now_ns=T0 + 365 * DAY)  # kept, then archived again in the same step
    assert done["mismatched"] == 1 and done["parts"][0] == p.file.replace(".p0001.", ".p0002.")
    shown = store.read(lambda t: [o for k, o in history(t, arc, "orders") if k == key])
    assert [o.get("note") for o in shown] == ["changed after it was archived"]
    archiver.run(now_ns=T0 + 365 * DAY)  # archived again: the newer copy is the one shown
    assert store.read(lambda t: t.get("orders", key)) is None
    assert store.read(lambda t: [o.get("note") for k, o in history(t, arc, "orders") if k == key]) == [
        "changed after it was archived"]


def test_archiving_off_moves_nothing(tmp_path: Path) -> None:
    store = build(tmp_path / "s", days=100)
    assert Archiver(store, tmp_path / "a", 0).run(now_ns=T0 + 3650 * DAY)["records"] == 0
    assert not (tmp_path / "a").exists()


def test_the_archive_is_private(tmp_path: Path) -> None:
    store = build(tmp_path / "s", days=100)
    Archiver(store, tmp_path / "s" / "archive", 31).run()
    arc = tmp_path / "s" / "archive"
    assert os.stat(arc).st_mode & 0o777 == 0o700
    modes = {f.name: f.stat().st_mode & 0o777 for f in arc.iterdir()}
    assert set(modes.values()) == {0o600}, modes


def test_one_archiver_at_a_time(tmp_path: Path) -> None:
    store = build(tmp_path / "s", days=40)
    archiver = Archiver(store, tmp_path / "a", 1)
    with archiver.archive.locked(), pytest.raises(ArchiveError, match="another archiver"):
        archiver.step()
    events = []
    with archiver.archive.locked():
        events = archiver.tick(0.0)  # the supervisor's loop: reported, never raised
    assert events[0][0] == "archive_failed" and archiver.tick(1e9)[0][0] == "archived"


# ---- bad archives: clear errors


def _one_part(tmp_path: Path) -> tuple[StateStore, Path, Any]:
    store = build(tmp_path / "s", days=100)
    arc = tmp_path / "a"
    Archiver(store, arc, 31).run()
    return store, arc, Archive(arc).load()[0]


def _rewrite(arc: Path, part: Any, data: bytes) -> None:
    """Replace a part's bytes and make the manifest agree (a bug, not damage, wrote it)."""
    import hashlib

    (arc / part.file).write_bytes(data)
    archive = Archive(arc)
    parts = archive.load()
    for p in parts:
        if p.file == part.file:
            p.sha256, p.bytes = hashlib.sha256(data).hexdigest(), len(data)
    archive.save(parts)


@pytest.mark.parametrize("damage, message", [
    ("flip", "does not match its sha256"),
    ("cut", "the manifest says"),
    ("gone", "missing (listed in the manifest)"),
    ("garbage", "does not decompress"),
    ("bad line", "line 1 is not a [key, time, record] line"),
    ("manifest gone", "MANIFEST.json is missing, and"),
    ("manifest garbage", "is not a valid archive manifest"),
])  # fmt: skip
def test_a_damaged_archive_is_a_clear_error(tmp_path: Path, damage: str, message: str) -> None:
    store, arc, part = _one_part(tmp_path)
    path = arc / part.file
    if damage == "flip":
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x40
        path.write_bytes(bytes(data))
    elif damage == "cut":
        path.write_bytes(path.read_bytes()[:-10])
    elif damage == "gone":
        path.unlink()
    elif damage == "garbage":
        _rewrite(arc, part, os.urandom(500))
    elif damage == "bad line":
        _rewrite(arc, part, zstandard.ZstdCompressor().compress(b'{"not": "a line"}\n'))
    elif damage == "manifest gone":
        (arc / MANIFEST).unlink()
    else:
        (arc / MANIFEST).write_bytes(b"{")
    rows = Archive(arc).verify()
    assert any(status == "fail" and message in detail for _, status, detail in rows), rows
    assert failed(verify(tmp_path / "s", archive=arc))
    with pytest.raises(ArchiveError, match=re.escape(message)):
        store.read(lambda t: list(history(t, arc, "orders")))


def test_an_unfinished_archive_run_recovers_after_a_damaged_part_is_noticed(tmp_path: Path) -> None:
    store, arc, part = _one_part(tmp_path)
    archive = Archive(arc)
    parts = archive.load()
    parts[0].done = False
    archive.save(parts)
    (arc / part.file).write_bytes(b"x")
    before = lmdb_records(store)
    with pytest.raises(ArchiveError, match="manifest says"):
        Archiver(store, arc, 31).step()
    assert lmdb_records(store) == before  # nothing deleted on its strength


@pytest.mark.parametrize("text", ["2027-13", "2027-1", "27-01", "2027-02-30", "yesterday", "2027-01-01T00"])
def test_a_bad_month_is_a_clear_error(text: str) -> None:
    with pytest.raises(ValueError, match=r"--from .* is not a month like 2027-01"):
        parse_month(text)
    assert parse_month("2027-02-28") == parse_month("2027-02") + 27 * DAY


# ---- the open-order index


def test_open_orders_come_from_the_index_kept_with_every_change(tmp_path: Path) -> None:
    with StateStore(tmp_path / "s") as st:
        book = OrderBook(st)
        a, b, c = (book.create(symbol="X") for _ in range(3))
        book.transition(a, S.APPROVED)
        book.transition(b, S.REJECTED)
        st.write(lambda t: book.advance(t, 99, [S.APPROVED, S.SUBMITTING]))
        st.write(lambda t: book.advance(t, 99, [S.FILLED]))
        assert st.read(lambda t: sorted(key_u64(k) for k, _ in t.items("open_orders", raw=True))) == [a, c]
        # found through the index: an order missing from it is not found, however it is stored
        st.write(lambda t: t.delete("open_orders", c))
        assert [o["client_order_id"] for o in book.in_state(S.INTENT, S.APPROVED)] == [a]
        assert [o["client_order_id"] for o in book.in_state(S.REJECTED)] == [b]


def test_an_old_state_gets_its_index_once(tmp_path: Path) -> None:
    with StateStore(tmp_path / "s") as st:
        book = OrderBook(st)
        ids = [book.create(symbol=0) for _ in range(5)]
        book.transition(ids[1], S.REJECTED)

        def forget(t: Txn) -> None:  # as a version without the index left it
            t.delete("meta", META_OPEN_INDEX)
            for i in ids:
                t.delete("open_orders", i)

        st.write(forget)
    with StateStore(tmp_path / "s", readonly=True) as ro:  # read-only: a scan, the same answer
        from sovereign.state.views import orders

        shown = ro.read(lambda t: orders(t, open_only=True))
        assert [o["client_order_id"] for o in shown] == [*ids[:1:-1], ids[0]]
    with StateStore(tmp_path / "s") as st:
        OrderBook(st)  # the first writer builds it
        assert st.read(lambda t: t.get("meta", META_OPEN_INDEX)) == {"built_with": 4}
        assert st.read(lambda t: t.count("open_orders")) == 4
        assert st.write(build_open_index) == -1  # once


def test_a_run_of_an_older_release_between_two_of_this_one_rebuilds_the_index(tmp_path: Path) -> None:
    """A rollback (install.sh keeps three releases) to a version without the index, then
    forward again: the older run's orders never reached the index, so the start after it
    builds it anew (its supervisor left a session the index's marker does not name)."""
    with StateStore(tmp_path / "s") as st:
        book = OrderBook(st)
        kept = book.create(symbol=0)

        def start(session: str) -> int:  # what the supervisor does in its start's transaction
            def tx(t: Txn) -> int:
                n = claim_open_index(t, (t.get("meta", "supervisor") or {}).get("session"), session)
                t.put("meta", "supervisor", {"session": session})
                return n

            return st.write(tx)

        assert start("run-1") == 1  # a marker from before sessions were named: built once more
        assert start("run-2") == -1  # this release again: kept
        # an older release's run: its order written without the index; its supervisor's session
        older = st.write(lambda t: reserve_ids(t, 1))
        st.write(lambda t: t.put("orders", older, {"client_order_id": older, "state": S.APPROVED.value}))
        st.write(lambda t: t.put("meta", "supervisor", {"session": "old-release"}))
        assert [o["client_order_id"] for o in book.in_state(S.INTENT, S.APPROVED)] == [kept]  # lost
        assert start("run-3") == 2
        assert [o["client_order_id"] for o in book.in_state(S.INTENT, S.APPROVED)] == [kept, older]
        assert st.read(lambda t: t.get("meta", META_OPEN_INDEX))["session"] == "run-3"


# ---- size and compaction


def test_usage_counts_free_pages_and_compaction_gives_them_back(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with StateStore(path) as st:
        st.write(lambda t: [t.put_bytes("snapshots", i, os.urandom(20_000)) for i in range(300)])
        st.write(lambda t: t.journal("kept", n=1))
        st.write(lambda t: [t.delete("snapshots", i) for i in range(290)])
        use = st.usage()
    assert use["free_bytes"] > 5_000_000 and use["used_bytes"] < 1_000_000
    assert use["file_bytes"] >= use["used_bytes"] + use["free_bytes"]
    assert compact_if_needed(path, 0.5, min_free=1 << 30) is None  # under the floor
    assert compact_if_needed(path, 1.0, min_free=0) is None  # the ratio never passed
    done = compact_if_needed(path, 0.5, min_free=1 << 20)
    assert done is not None and done["bytes_after"] < use["file_bytes"] // 4
    assert not list(path.glob(".compact-*")) and oct(os.stat(path / "data.mdb").st_mode)[-3:] == "600"
    with StateStore(path) as st:
        assert st.read(lambda t: (t.count("snapshots"), t.get("journal", 1))) == (10, {"event": "kept",
                                                                                    "n": 1})  # fmt: skip
        st.write(lambda t: t.journal("after"))
    assert not failed(verify(path))


def test_compacting_nothing_is_a_clear_error(tmp_path: Path) -> None:
    from sovereign.state.store import StateError

    with pytest.raises(StateError, match="no state at"):
        compact(tmp_path / "none")


# ---- backups carry the archive


def test_a_backup_carries_the_archive_and_a_restore_brings_it_back(tmp_path: Path) -> None:
    state, arc = tmp_path / "state", tmp_path / "state" / "archive"
    store = build(state)
    original = lmdb_records(store)
    Archiver(store, arc, 90).run()
    # a crash left the newest part listed, not done, its records in LMDB: the backup says so
    archive = Archive(arc)
    parts = archive.load()
    parts[-1].done = False
    db = {"journal": "journal", "orders": "orders"}.get(parts[-1].series, "bridge")
    key = {"execs": exec_key, "deals": deal_key}.get(parts[-1].series, lambda k: k)
    store.write(lambda t: [t.put(db, key(k), r) for k, _, r in archive.read(parts[-1])])
    if parts[-1].series == "journal":  # as the deletes left it: the mark goes with them
        store.write(lambda t: t.put("meta", META_JOURNAL_ARCHIVED, parts[-1].first - 1))
    archive.save(parts)
    store.close()
    first = backup(state, tmp_path / "b", rotate=3)
    assert first["archive"]["parts"] == len(parts) and first["archive"]["linked"] == 0
    copy = Path(first["path"])
    assert [p.done for p in Archive(copy / "archive").load()] == [p.done for p in parts]
    assert not failed(verify(copy, key=None))
    restore(copy, state)
    with StateStore(state) as st:
        Archiver(st, arc, 90).run()
        assert placement(original, st, arc) == 0
        shown_once(original, st, arc)
    assert list(tmp_path.glob("state.replaced-*/archive/MANIFEST.json"))  # the old one went aside with it


def test_a_rotated_backup_links_the_parts_it_already_has(tmp_path: Path) -> None:
    state = tmp_path / "state"
    build(state, days=200).close()
    with StateStore(state) as st:
        Archiver(st, state / "archive", 90).run()
    first = Path(backup(state, tmp_path / "b", rotate=3)["path"])
    first.rename(first.with_name("sovereign-20000101T000000Z"))  # as if taken earlier
    second = backup(state, tmp_path / "b", rotate=3)
    assert second["archive"]["linked"] == second["archive"]["parts"] > 0
    name = Archive(state / "archive").load()[0].file
    assert os.stat(Path(second["path"]) / "archive" / name).st_nlink == 2
    assert not failed(verify(second["path"]))


def test_a_backup_archive_changed_after_it_was_signed_is_refused(tmp_path: Path) -> None:
    from sovereign.ops.maintenance import OpsError, backup_key

    state = tmp_path / "state"
    build(state, days=200).close()
    with StateStore(state) as st:
        Archiver(st, state / "archive", 90).run()
    copy = Path(backup(state, tmp_path / "b")["path"])
    key = backup_key(state, create=False)
    manifest = copy / "archive" / MANIFEST
    doc = orjson.loads(manifest.read_bytes())
    doc["parts"].pop()
    manifest.write_bytes(orjson.dumps(doc))
    checks = verify(copy, key)
    assert any(c.status == "fail" and "archive" in c.detail and c.name == "manifest" for c in checks), checks
    with pytest.raises(OpsError, match="not a good backup"):
        restore(copy, state)


# ---- configuration and doctor


def test_retention_is_validated() -> None:
    assert from_dict({}).retention.days == 90
    with pytest.raises(ConfigError, match=r"retention.days: 20 is not above system.record_days \(30\)"):
        from_dict({"retention": {"days": 20}})
    with pytest.raises(ConfigError, match=r"retention.compact_free_ratio: 0.0 is not in \(0, 1\]"):
        from_dict({"retention": {"compact_free_ratio": 0}})
    with pytest.raises(ConfigError, match=r"retention\.keep is unknown"):
        from_dict({"retention": {"keep": 3}})
    assert from_dict({"retention": {"days": 0}}).retention.days == 0


def test_doctor_warns_when_the_retention_cannot_fit_the_disk(tmp_path: Path) -> None:
    config = from_dict({"system": {"state_dir": str(tmp_path / "s")}})
    assert _check_retention(config, 1 << 50).status == "ok"
    tight = _check_retention(config, 100 << 20)
    assert tight.status == "warn" and "may not fit the disk" in tight.detail
    never = dataclasses.replace(config, retention=dataclasses.replace(config.retention, days=0))
    assert "never archived" in _check_retention(never, 1 << 50).detail


# ---- the CLI


def sov(*args: str, check: int = 0) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SOVEREIGN_CONFIG"}
    r = subprocess.run([sys.executable, "-m", "sovereign.cli", *args], capture_output=True, text=True,
                       timeout=120, env=env)  # fmt: skip
    assert r.returncode == check, f"sovereign {' '.join(args)} -> {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r


def test_the_cli_archives_reads_verifies_and_compacts(tmp_path: Path) -> None:
    state = tmp_path / "state"
    store = build(state)
    original = lmdb_records(store)
    store.close()
    s = ("--state-dir", str(state))
    assert "archived" in sov("archive", "run", *s).stdout
    feb = orjson.loads(sov("journal", "--from", "2027-02", "--to", "2027-03", "--json", *s).stdout)
    lo, hi = parse_month("2027-02"), parse_month("2027-03")
    assert feb and all(lo <= e.get("ts_ns", lo) < hi for e in feb)
    orders = orjson.loads(sov("orders", "--from", "2027-01", "--json", *s).stdout)
    assert [o["client_order_id"] for o in orders] == sorted(original["orders"])
    opened = orjson.loads(sov("orders", "--open", "--limit", "0", "--json", *s).stdout)
    assert sorted(o["client_order_id"] for o in opened) == sorted(
        c for c, o in original["orders"].items() if o["state"] == "SUBMITTING")
    assert "every checksum matches" in sov("archive", "verify", *s).stdout
    status = orjson.loads(sov("status", "--json", *s, check=3).stdout)
    assert status["storage"]["lmdb"]["used_bytes"] > 0 and status["storage"]["archive"]["files"] > 0
    assert "compacted" in sov("state", "compact", *s).stdout
    # bad input, each a clear error
    assert "is not a month like 2027-01" in sov("journal", "--from", "2027-13", *s, check=2).stderr
    assert "is not after --from" in sov("orders", "--from", "2027-03", "--to", "2027-02", *s, check=2).stderr
    assert "--open shows every open order" in sov("orders", "--open", "--from", "2027-01", *s, check=2).stderr
    part = next((state / "archive").glob("journal-*.zst"))
    part.write_bytes(part.read_bytes()[:-1])
    assert "the manifest says" in sov("archive", "verify", *s, check=1).stdout
    assert "the manifest says" in sov("journal", "--from", "2027-01", *s, check=1).stderr
    (state / "archive" / MANIFEST).unlink()
    assert "MANIFEST.json is missing" in sov("archive", "verify", *s, check=1).stdout


def test_archive_run_and_compact_refuse_while_the_system_holds_the_state(tmp_path: Path) -> None:
    from sovereign.state.store import StateLock

    state = tmp_path / "state"
    build(state, days=10).close()
    with StateLock(state, "a running sovereign supervisor"):
        assert "in use by a running sovereign supervisor" in sov("archive", "run", "--state-dir", str(state),
                                                                 check=1).stderr  # fmt: skip
        assert "in use by" in sov("state", "compact", "--state-dir", str(state), check=1).stderr
