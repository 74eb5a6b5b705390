"""TickRing: shared memory between real processes, its header checks and counters."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import struct
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sovereign.core import (
    LAYOUT_VERSION,
    ORDER_DTYPE,
    TICK_DTYPE,
    OrderRing,
    RingError,
    SignalRing,
    TickRing,
    wait_for_records,
)
from tests.helpers import ring_name

CTX = mp.get_context("spawn")


def seq_ticks(start: int, n: int) -> np.ndarray:
    t = np.zeros(n, TICK_DTYPE)
    t["ts_ns"] = np.arange(start, start + n)
    t["bid"] = 1.0
    t["ask"] = 1.0
    return t


# ---- a long-lived producer process, driven over a pipe (one spawn for many examples)


def _producer(conn) -> None:  # runs in the child
    while True:
        msg = conn.recv()
        if msg is None:
            return
        name, batch_sizes = msg
        try:
            with TickRing.attach(name) as ring:
                seq = 0
                for n in batch_sizes:
                    sent = ring.push(seq_ticks(seq, n), timeout=20.0)
                    seq += sent
                    if sent != n:
                        break
            conn.send(seq)
        except Exception as e:  # report, and stay alive for the next example
            conn.send(repr(e))


@pytest.fixture(scope="module")
def producer():
    parent, child = CTX.Pipe()
    proc = CTX.Process(target=_producer, args=(child,), daemon=True)
    proc.start()
    yield parent
    parent.send(None)
    proc.join(10)


def drain(ring: TickRing, total: int, rng: np.random.Generator) -> np.ndarray:
    got = [np.zeros(0, TICK_DTYPE)]
    count = 0
    deadline = time.monotonic() + 30
    while count < total:
        assert time.monotonic() < deadline, f"consumer got {count} of {total}"
        part = ring.pop(int(rng.integers(1, 700)), timeout=0.01)
        got.append(part)
        count += len(part)
    return np.concatenate(got)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    batch_sizes=st.lists(st.integers(0, 600), min_size=1, max_size=40),
    log2_capacity=st.integers(1, 10),
    seed=st.integers(0, 2**32 - 1),
)
def test_cross_process_nothing_lost_duplicated_or_reordered(producer, batch_sizes, log2_capacity, seed):
    total = sum(batch_sizes)
    with TickRing.create(ring_name("x"), 2**log2_capacity) as ring:
        producer.send((ring.name, batch_sizes))
        got = drain(ring, total, np.random.default_rng(seed))
        assert producer.recv() == total
        assert len(got) == total
        assert np.array_equal(got["ts_ns"], np.arange(total))
        s = ring.stats()
        assert (s["pushed"], s["popped"], s["depth"], s["dropped"]) == (total, total, 0, 0)
        assert s["high_water"] <= s["capacity"]


def test_push_pop_wraps_around_and_preserves_records() -> None:
    with TickRing.create(ring_name(), 8) as ring:
        seq = 0
        out = []
        for n in [5, 3, 7, 1, 8, 6]:
            assert ring.push(seq_ticks(seq, n)) == n
            seq += n
            out.append(ring.pop(100))
        got = np.concatenate(out)
        assert np.array_equal(got["ts_ns"], np.arange(seq))


def test_drop_policy_counts_what_does_not_fit() -> None:
    with TickRing.create(ring_name(), 16, on_full="drop") as ring:
        assert ring.push(seq_ticks(0, 10)) == 10
        assert ring.push(seq_ticks(10, 10)) == 6
        s = ring.stats()
        assert (s["dropped"], s["depth"], s["pushed"], s["on_full"]) == (4, 16, 16, "drop")
        assert np.array_equal(ring.pop(100)["ts_ns"], np.arange(16))


def test_wait_policy_times_out_without_dropping() -> None:
    with TickRing.create(ring_name(), 4) as ring:
        assert ring.push(seq_ticks(0, 6), timeout=0.05) == 4
        s = ring.stats()
        assert (s["dropped"], s["full_waits"], s["depth"]) == (0, 1, 4)


def test_pop_waits_for_the_first_record_up_to_the_timeout() -> None:
    with TickRing.create(ring_name(), 4) as ring:
        assert len(ring.pop(4, timeout=0.02)) == 0
        assert len(ring.pop(4)) == 0


def test_pop_into_reuses_a_buffer() -> None:
    with TickRing.create(ring_name(), 64) as ring:
        ring.push(seq_ticks(0, 10))
        buf = np.zeros(4, TICK_DTYPE)
        assert ring.pop_into(buf) == 4
        assert list(buf["ts_ns"]) == [0, 1, 2, 3]
        with pytest.raises(TypeError):
            ring.pop_into(np.zeros(4, np.float64))


def _report_stats(name, conn) -> None:
    ring = TickRing.attach(name)
    conn.send(ring.stats())
    ring.close()


def test_counters_are_readable_from_another_process() -> None:
    with TickRing.create(ring_name(), 32, on_full="drop") as ring:
        ring.push(seq_ticks(0, 40))
        ring.pop(5)
        parent, child = CTX.Pipe()
        p = CTX.Process(target=_report_stats, args=(ring.name, child))
        p.start()
        stats = parent.recv()
        p.join(10)
    assert (stats["pushed"], stats["popped"], stats["dropped"], stats["depth"]) == (32, 5, 8, 27)
    assert stats["owner_pid"] == os.getpid() and stats["high_water"] == 32


def _echo(name_in, name_out, n, conn) -> None:
    """Pops each record as it comes (sleeping in between) and pushes it back."""
    src, dst = TickRing.attach(name_in), TickRing.attach(name_out)
    buf = np.zeros(1, TICK_DTYPE)
    conn.send("ready")
    for _ in range(n):
        assert src.pop_into(buf, timeout=30.0) == 1
        assert dst.push(buf, timeout=30.0) == 1
    src.close(), dst.close()


def test_a_sleeping_consumer_is_woken_by_the_push() -> None:
    """Both sides wait past their spin (each push comes 0.3 ms after the last answer), so
    each record reaches a consumer asleep on the doorbell. A wake the producer failed to
    ring would show as a late wake: a sleep that ran its full time and found the record."""
    n = 500
    with TickRing.create(ring_name(), 8) as out, TickRing.create(ring_name(), 8) as back:
        parent, child = CTX.Pipe()
        p = CTX.Process(target=_echo, args=(out.name, back.name, n, child), daemon=True)
        p.start()
        assert parent.recv() == "ready"
        buf = np.zeros(1, TICK_DTYPE)
        seen = []
        for i in range(n):
            time.sleep(0.0003)
            out.push(seq_ticks(i, 1))
            assert back.pop_into(buf, timeout=30.0) == 1
            seen.append(int(buf["ts_ns"][0]))
        p.join(10)
        assert p.exitcode == 0
        assert seen == list(range(n))
        assert out.stats()["late_wakes"] == 0 and back.stats()["late_wakes"] == 0


def _push_all(name, n, conn) -> None:
    ring = TickRing.attach(name)
    conn.send("ready")
    conn.send(ring.push(seq_ticks(0, n), timeout=30.0))
    ring.close()


def test_a_producer_waiting_for_room_is_woken_by_the_pop() -> None:
    """A 'wait' producer on a full ring sleeps until the consumer hands slots back."""
    n = 300
    with TickRing.create(ring_name(), 4) as ring:
        parent, child = CTX.Pipe()
        p = CTX.Process(target=_push_all, args=(ring.name, n, child), daemon=True)
        p.start()
        assert parent.recv() == "ready"
        buf = np.zeros(1, TICK_DTYPE)
        seen = []
        while len(seen) < n:
            time.sleep(0.0003)  # the producer, finding no room, goes to sleep meanwhile
            if ring.pop_into(buf, timeout=30.0):
                seen.append(int(buf["ts_ns"][0]))
        assert parent.recv() == n
        p.join(10)
        s = ring.stats()
        assert seen == list(range(n))
        assert s["full_waits"] >= 1 and s["late_wakes"] == 0 and s["dropped"] == 0


def _wait_on_three(names, n, conn) -> None:
    """Consumer of three rings: sleeps until any has records, takes them, says which."""
    rings = [TickRing.attach(names[0]), OrderRing.attach(names[1]), TickRing.attach(names[2])]
    bufs = [np.zeros(4, TICK_DTYPE), np.zeros(4, ORDER_DTYPE), np.zeros(4, TICK_DTYPE)]
    conn.send("ready")
    for _ in range(n):
        assert wait_for_records(rings, timeout=30.0)
        got = [r.pop_into(b) for r, b in zip(rings, bufs, strict=True)]
        conn.send(got)
    conn.send([r.stats()["late_wakes"] for r in rings])


@pytest.mark.parametrize("waitv", [True, False], ids=["futex_waitv", "fallback naps"])
def test_wait_for_records_wakes_on_a_push_to_any_ring(waitv: bool, monkeypatch) -> None:
    """One sleep over several rings (futex_waitv): each push, 0.3 ms after the consumer
    answered (so it is asleep), wakes it, whichever ring it went to. Without futex_waitv
    (an older kernel, forced here) the same records come, by short naps."""
    n = 300
    if not waitv:
        monkeypatch.setenv("SOVEREIGN_NO_FUTEX_WAITV", "1")  # the spawned consumer reads it
    with (TickRing.create(ring_name(), 8) as a, OrderRing.create(ring_name(), 8) as b,
          TickRing.create(ring_name(), 8) as c):  # fmt: skip
        parent, child = CTX.Pipe()
        p = CTX.Process(target=_wait_on_three, args=((a.name, b.name, c.name), n, child), daemon=True)
        p.start()
        assert parent.recv() == "ready"
        for i in range(n):
            time.sleep(0.0003)
            k = i % 3
            (a, b, c)[k].push(np.zeros(1, ORDER_DTYPE if k == 1 else TICK_DTYPE))
            assert parent.recv() == [int(j == k) for j in range(3)]
        assert parent.recv() == [0, 0, 0]  # no late wakes: every push rang
        p.join(10)
        assert p.exitcode == 0


def _wait_kicked(name, kick_first, conn) -> None:
    """Waits with no timeout, so only a kick can end the wait: a lost one leaves this
    process hanging, and the test's join finds it alive."""
    ring = TickRing.attach(name)
    seen = ring.doorbell()
    conn.send("ready")
    if kick_first:
        assert conn.recv() == "kicked"  # the kick came after `seen` was read, before the sleep
    conn.send(wait_for_records([ring], timeout=None, since=[seen]))


@pytest.mark.parametrize("kick_first", [False, True], ids=["kick while asleep", "kick before the wait"])
def test_a_kick_ends_a_wait_with_nothing_to_take(kick_first: bool) -> None:
    """wake_consumer() from a process that is neither producer nor consumer (the gateway's
    feed thread, for its broker side) ends the consumer's wait, with False. A kick between
    reading `since` and sleeping is not lost either: the wait returns at once."""
    with TickRing.create(ring_name(), 8) as ring:
        parent, child = CTX.Pipe()
        p = CTX.Process(target=_wait_kicked, args=(ring.name, kick_first, child), daemon=True)
        p.start()
        assert parent.recv() == "ready"
        if not kick_first:
            time.sleep(0.05)  # asleep by now
        ring.wake_consumer()
        if kick_first:
            parent.send("kicked")
        p.join(60)
        alive = p.is_alive()
        if alive:
            p.kill()
        assert not alive, "the kick was lost: the wait never ended"
        assert p.exitcode == 0 and parent.recv() is False
        assert wait_for_records([ring], timeout=0.01, since=[ring.doorbell()]) is False  # a plain timeout
        with pytest.raises(ValueError, match="one doorbell seq per ring"):
            wait_for_records([ring], since=[0, 0])


def test_wait_for_records_times_out_and_refuses_bad_arguments() -> None:
    with TickRing.create(ring_name(), 8) as a, SignalRing.create(ring_name(), 8) as b:
        assert not wait_for_records([a, b], timeout=0.01)
        assert not wait_for_records([a], timeout=0.0)
        a.push(seq_ticks(0, 1))
        assert wait_for_records([b, a], timeout=0.0)
        with pytest.raises(TypeError, match="TickRing, SignalRing or OrderRing"):
            wait_for_records([a, "x"])  # type: ignore[list-item]
        with pytest.raises(ValueError, match="1 to 128"):
            wait_for_records([])
        with pytest.raises(ValueError, match="timeout"):
            wait_for_records([a], timeout=-1.0)


def test_owner_unlinks_on_close_attacher_does_not() -> None:
    name = ring_name()
    ring = TickRing.create(name, 8)
    other = TickRing.attach(name)
    other.close()
    assert Path(f"/dev/shm/{name}").exists()
    ring.close()
    ring.close()  # idempotent
    assert not Path(f"/dev/shm/{name}").exists()
    with pytest.raises(RingError, match="No such file"):
        TickRing.attach(name)
    with pytest.raises(Exception, match="closed"):
        ring.pop(1)


def test_attach_to_foreign_segment_fails_clearly() -> None:
    name = ring_name("foreign")
    Path(f"/dev/shm/{name}").write_bytes(os.urandom(4096))
    Path(f"/dev/shm/{name}").chmod(0o600)  # ours and private: then the header is what is refused
    try:
        with pytest.raises(RingError, match="not a Sovereign ring"):
            TickRing.attach(name)
    finally:
        os.unlink(f"/dev/shm/{name}")
    Path(f"/dev/shm/{name}").write_bytes(b"x" * 10)
    Path(f"/dev/shm/{name}").chmod(0o600)
    try:
        with pytest.raises(RingError, match="smaller than a ring header"):
            TickRing.attach(name)
    finally:
        os.unlink(f"/dev/shm/{name}")


def test_attach_to_ring_of_other_records_fails_clearly() -> None:
    expected = r"records of type 3 \(72 bytes\), expected type 1 \(56 bytes\)"
    with SignalRing.create(ring_name(), 8) as sig, pytest.raises(RingError, match=expected):
        TickRing.attach(sig.name)


def test_attach_to_other_layout_version_fails_clearly() -> None:
    with TickRing.create(ring_name(), 8) as ring:
        with open(f"/dev/shm/{ring.name}", "r+b") as f:
            f.seek(8)  # layout_version follows the 8-byte magic
            f.write(struct.pack("<I", 999))
        with pytest.raises(RingError, match=f"layout version 999, this build speaks {LAYOUT_VERSION}"):
            TickRing.attach(ring.name)


def _create_and_hang(name, conn) -> None:
    ring = TickRing.create(name, 8)
    ring.push(seq_ticks(0, 3))
    conn.send("ready")
    time.sleep(60)


def test_stale_segment_of_a_dead_owner_is_reclaimed() -> None:
    name = ring_name("stale")
    parent, child = CTX.Pipe()
    p = CTX.Process(target=_create_and_hang, args=(name, child))
    p.start()
    assert parent.recv() == "ready"
    with pytest.raises(RingError, match=rf"owner \(pid {p.pid}\) is alive"):
        TickRing.create(name, 8)
    os.kill(p.pid, signal.SIGKILL)
    p.join(10)
    assert Path(f"/dev/shm/{name}").exists()  # the crash left it behind
    with TickRing.create(name, 16) as ring:
        assert ring.reclaimed and ring.owner
        assert ring.stats()["depth"] == 0 and ring.capacity == 16


@pytest.mark.parametrize("capacity", [0, 1, 3, 1000])
def test_capacity_must_be_a_power_of_two(capacity: int) -> None:
    with pytest.raises(ValueError, match="power of two"):
        TickRing.create(ring_name(), capacity)


@pytest.mark.parametrize("name", ["", "a/b", "has space", "x" * 201])
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="shared-memory name"):
        TickRing.create(name, 8)


def test_bad_arguments_are_refused() -> None:
    with TickRing.create(ring_name(), 8) as ring:
        with pytest.raises(TypeError, match="push expects a 1-D array"):
            ring.push(np.zeros(3, np.float64))
        with pytest.raises(TypeError):
            ring.push(np.zeros((2, 2), TICK_DTYPE))
        with pytest.raises(ValueError, match="timeout"):
            ring.push(seq_ticks(0, 1), timeout=-1.0)
    with pytest.raises(ValueError, match="on_full"):
        TickRing.create(ring_name(), 8, on_full="block")


def test_non_contiguous_input_is_copied_not_misread() -> None:
    with TickRing.create(ring_name(), 16) as ring:
        t = seq_ticks(0, 10)
        assert ring.push(t[::2]) == 5
        assert list(ring.pop(10)["ts_ns"]) == [0, 2, 4, 6, 8]
