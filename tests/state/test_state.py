"""StateStore and OrderBook on real LMDB files, with real processes for crashes."""

from __future__ import annotations

import multiprocessing as mp
import os
import resource
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from sovereign.state.orders import LifecycleError, OrderBook, OrderState
from sovereign.state.schema import key_u64
from sovereign.state.store import Committer, StateError, StateStore, Txn

CTX = mp.get_context("spawn")
S = OrderState


def test_records_round_trip_and_keys_sort_numerically(tmp_path: Path) -> None:
    with StateStore(tmp_path / "s") as st:
        st.write(lambda t: [t.put("positions", f"EURUSD{i}", {"volume": i / 10}) for i in range(3)])
        assert st.read(lambda t: t.get("positions", "EURUSD2")) == {"volume": 0.2}
        for i in range(300):
            st.write(lambda t, i=i: t.journal("tick", n=i))
        seqs = st.read(lambda t: [key_u64(k) for k, _ in t.items("journal")])
        assert seqs == list(range(1, 301))
        with pytest.raises(KeyError, match="no database 'nope'"):
            st.read(lambda t: t.get("nope", "x"))


def test_a_failing_write_keeps_nothing(tmp_path: Path) -> None:
    with StateStore(tmp_path / "s") as st:
        def half_done(t) -> None:
            t.put("risk", "state", {"mode": "HALTED"})
            raise RuntimeError("boom")

        with pytest.raises(RuntimeError):
            st.write(half_done)
        assert st.read(lambda t: t.get("risk", "state")) is None


def test_the_map_grows_instead_of_failing(tmp_path: Path) -> None:
    with StateStore(tmp_path / "s", map_size=256 * 1024) as st:
        blob = os.urandom(3000)
        for i in range(2000):  # ~6 MB into a 256 KiB map
            st.write(lambda t, i=i: t.put_bytes("snapshots", i, blob))
        assert st.map_size > 6_000_000
        assert st.read(lambda t: t.count("snapshots")) == 2000


def _grow_elsewhere(path: str) -> None:
    with StateStore(path, map_size=256 * 1024) as st:
        for i in range(1000):
            st.write(lambda t, i=i: t.put_bytes("snapshots", i, os.urandom(3000)))


def test_a_map_grown_by_another_process_is_adopted(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with StateStore(path, map_size=256 * 1024) as st:
        st.write(lambda t: t.put("risk", "x", 1))
        p = CTX.Process(target=_grow_elsewhere, args=(str(path),))
        p.start()
        p.join(60)
        assert p.exitcode == 0
        st.write(lambda t: t.put("risk", "y", 2))
        seen = st.read(lambda t: (t.get("risk", "x"), t.get("risk", "y"), t.count("snapshots")))
        assert seen == (1, 2, 1000)


def _write_orders_forever(path: str, conn) -> None:
    book = OrderBook(StateStore(path))
    while True:
        cid = book.create(symbol="EURUSD", side=1, volume=0.1)
        conn.send(cid)  # only after the commit returned: acknowledged as durable


def test_acknowledged_writes_survive_kill_9(tmp_path: Path) -> None:
    path = str(tmp_path / "s")
    parent, child = CTX.Pipe()
    p = CTX.Process(target=_write_orders_forever, args=(path, child))
    p.start()
    acked = [parent.recv() for _ in range(50)]
    os.kill(p.pid, signal.SIGKILL)
    p.join(10)
    while parent.poll():
        acked.append(parent.recv())
    book = OrderBook(StateStore(path))
    ids = [o["client_order_id"] for o in book.in_state(S.INTENT)]
    assert set(acked) <= set(ids) and ids == list(range(1, len(ids) + 1))
    assert book.create(symbol="X") == len(ids) + 1  # ids are never reused


def _fill_disk(path: str, conn) -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    st = StateStore(path)
    st.write(lambda t: t.put("positions", "kept", {"volume": 1.0}))
    limit = os.path.getsize(os.path.join(path, "data.mdb")) + 64 * 1024
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))  # the disk is now "full"
    try:
        for i in range(10_000):
            st.write(lambda t, i=i: t.put_bytes("snapshots", i, os.urandom(4000)))
        conn.send("no error")
    except StateError as e:
        conn.send(str(e))


def test_a_corrupt_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "s"
    StateStore(path).close()
    (path / "data.mdb").write_bytes(os.urandom(64 * 1024))
    with pytest.raises(StateError, match="not a valid LMDB environment"):
        StateStore(path)


def test_readonly_open_of_missing_state_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="cannot open state at"):
        StateStore(tmp_path / "missing", readonly=True)


def test_hot_copy_is_consistent(tmp_path: Path) -> None:
    with StateStore(tmp_path / "s") as st:
        book = OrderBook(st)
        cid = book.create(symbol="EURUSD")
        st.copy_to(tmp_path / "backup")
    with StateStore(tmp_path / "backup", readonly=True) as copy:
        assert OrderBook(copy).get(cid)["symbol"] == "EURUSD"


# ---- the order lifecycle


def test_full_lifecycle_is_journaled_with_each_state(tmp_path: Path) -> None:
    with StateStore(tmp_path / "s") as st:
        book = OrderBook(st)
        cid = book.create(symbol="EURUSD", side=1, volume=0.3)
        book.transition(cid, S.APPROVED, volume=0.2)
        book.transition(cid, S.SUBMITTING)
        book.transition(cid, S.ACCEPTED, ticket=991)
        book.transition(cid, S.PARTIALLY_FILLED, filled=0.1)
        final = book.transition(cid, S.FILLED, filled=0.2)
        assert final["state"] == "FILLED" and final["ticket"] == 991 and final["volume"] == 0.2
        journal = st.read(lambda t: [r for _, r in t.items("journal")])
        assert [r["state"] for r in journal] == [
            "INTENT", "APPROVED", "SUBMITTING", "ACCEPTED", "PARTIALLY_FILLED", "FILLED"]
        assert journal[2]["previous"] == "APPROVED"


@pytest.mark.parametrize(
    ("path", "bad"),
    [
        ([], S.SUBMITTING),  # INTENT -> SUBMITTING skips risk
        ([S.REJECTED], S.APPROVED),  # final
        ([S.APPROVED, S.SUBMITTING, S.FILLED], S.CANCELED),
        ([S.APPROVED], S.FILLED),  # never sent
    ],
)
def test_illegal_transitions_are_refused_and_change_nothing(tmp_path: Path, path, bad) -> None:
    with StateStore(tmp_path / "s") as st:
        book = OrderBook(st)
        cid = book.create(symbol="EURUSD")
        for s in path:
            book.transition(cid, s)
        before = st.read(lambda t: list(t.items("journal")))
        with pytest.raises(LifecycleError, match=f"-> {bad.value} is not allowed"):
            book.transition(cid, bad)
        assert st.read(lambda t: list(t.items("journal"))) == before
    with pytest.raises(LifecycleError, match="no order with client_order_id 99"):
        OrderBook(StateStore(tmp_path / "s")).transition(99, S.APPROVED)


def test_orders_left_submitting_are_found_after_a_restart(tmp_path: Path) -> None:
    with StateStore(tmp_path / "s") as st:
        book = OrderBook(st)
        a, b = book.create(symbol="A"), book.create(symbol="B")
        for cid in (a, b):
            book.transition(cid, S.APPROVED)
            book.transition(cid, S.SUBMITTING)
        book.transition(b, S.ACCEPTED)
    with StateStore(tmp_path / "s") as st:
        assert [o["client_order_id"] for o in OrderBook(st).in_state(S.SUBMITTING)] == [a]


def test_the_committer_commits_in_order_and_groups_what_queued(tmp_path: Path) -> None:
    """What is submitted while a commit is in flight goes into the next one, in order, as
    one transaction; flush waits for all of it."""
    with StateStore(tmp_path / "s") as st:
        gate = threading.Event()
        txns: list[int] = []

        def slow(t: Txn) -> None:  # holds the first commit open while more queue up
            gate.wait(10)
            t.put("meta", "n", 0)

        def step(t: Txn, i: int) -> None:
            txns.append(id(t._txn))
            t.put("meta", "n", i)
            t.journal("step", i=i)

        c = Committer(st)
        c.submit(slow)
        deadline = time.monotonic() + 10
        while not c.stalled(0.0):  # the first commit is in flight
            assert time.monotonic() < deadline
            time.sleep(0.001)
        for i in range(1, 6):
            c.submit(lambda t, i=i: step(t, i))
        gate.set()
        c.flush()
        assert not c.stalled(0.0)
        steps = st.read(lambda t: [v["i"] for _, v in t.items("journal")])
        assert st.read(lambda t: t.get("meta", "n")) == 5 and steps == [1, 2, 3, 4, 5]
        assert len(set(txns)) == 1  # one transaction for the five
        c.close()


def test_the_committer_spaces_its_commits(tmp_path: Path) -> None:
    """Commits at least every_s apart, but a flush or a close does not wait out the spacing.
    The spacing is an hour, so no timing of this machine decides the outcome: a flush that
    waited for it would hang, and the join below would find it still waiting."""
    with StateStore(tmp_path / "s") as st:
        c = Committer(st, every_s=3600.0)
        c.submit(lambda t: t.put("meta", "a", 1))
        c.flush()  # the first commit: now an hour's spacing begins
        c.submit(lambda t: t.put("meta", "b", 2))
        time.sleep(0.05)
        assert st.read(lambda t: t.get("meta", "b")) is None  # spaced: not committed yet

        def finish(step: Any) -> None:
            worker = threading.Thread(target=step, daemon=True)
            worker.start()
            worker.join(30)
            assert not worker.is_alive(), "it waited out the spacing"

        finish(c.flush)
        assert st.read(lambda t: t.get("meta", "b")) == 2
        c.submit(lambda t: t.put("meta", "h", 4))
        c.hurry()  # returns at once; the commit comes without the hour's spacing
        deadline = time.monotonic() + 30
        while st.read(lambda t: t.get("meta", "h")) is None:
            assert time.monotonic() < deadline, "hurry waited out the spacing"
            time.sleep(0.005)
        c.submit(lambda t: t.put("meta", "c", 3))
        finish(c.close)  # close commits what is left
        assert st.read(lambda t: t.get("meta", "c")) == 3


def _fill_disk_behind_a_committer(path: str, conn) -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    st = StateStore(path)
    c = Committer(st)
    c.submit(lambda t: t.put("positions", "kept", {"volume": 1.0}))
    c.flush()
    limit = os.path.getsize(os.path.join(path, "data.mdb")) + 64 * 1024
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))  # the disk is now "full"
    try:
        for i in range(10_000):
            c.submit(lambda t, i=i: t.put_bytes("snapshots", i, os.urandom(4000)))
            time.sleep(0.0005)
        c.close()
        conn.send("no error")
    except StateError as e:
        conn.send(str(e))


FILLERS = [(_fill_disk, "cannot write state at"), (_fill_disk_behind_a_committer, "a commit to the state at")]


@pytest.mark.parametrize(("fill", "says"), FILLERS)
def test_a_full_disk_is_a_clear_error_and_loses_nothing(tmp_path: Path, fill: Any, says: str) -> None:
    """Written directly or through a Committer (raised in the caller's thread)."""
    path = str(tmp_path / "s")
    parent, child = CTX.Pipe()
    p = CTX.Process(target=fill, args=(path, child))
    p.start()
    msg = parent.recv()
    p.join(30)
    # EFBIG when a write starts past the limit; LMDB reports a write cut short by it as EIO
    assert says in msg and ("File too large" in msg or "Input/output error" in msg), msg
    with StateStore(path) as st:
        assert st.read(lambda t: t.get("positions", "kept")) == {"volume": 1.0}


def _read_forever(path: str, ready: Any) -> None:
    store = StateStore(path, readonly=True)
    txn = store._now.env.begin()  # a read transaction that never ends: its process is killed in it
    txn.get(b"x")
    ready.set()
    time.sleep(3600)


def test_a_reader_killed_in_its_transaction_is_cleared(tmp_path: Path) -> None:
    """LMDB cannot reuse pages a dead reader pins, so rewrites grow the file without bound
    (issue 22): a store opened for writing, and the supervisor every minute, clear them."""
    import multiprocessing as mp
    import signal as sig

    with StateStore(tmp_path / "s") as st:  # open all along, as the live processes keep it
        st.write(lambda t: t.put("meta", "x", 1))
        ctx = mp.get_context("spawn")
        ready = ctx.Event()
        p = ctx.Process(target=_read_forever, args=(str(tmp_path / "s"), ready))
        p.start()
        assert ready.wait(60)
        os.kill(p.pid, sig.SIGKILL)
        p.join()
        assert st.clear_stale_readers() == 1  # the dead one's slot, released once
        assert st.clear_stale_readers() == 0
