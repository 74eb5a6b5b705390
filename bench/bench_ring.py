"""TickRing between two processes: throughput in batches of 4096 and one-way latency,
against a plain numpy ring over multiprocessing.shared_memory and multiprocessing.Queue."""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from multiprocessing import shared_memory

import numpy as np
import pytest

from bench.conftest import median_seconds
from sovereign.core import TICK_DTYPE, TickRing

CTX = mp.get_context("spawn")
BATCH = 4096
RING_TICKS = 1 << 22  # per throughput round
SOURCE_TICKS = 1 << 20  # 48 MiB of distinct ticks, more than the L3 cache: no replaying a hot batch
QUEUE_TICKS = 50_000
LATENCY_TICKS = 20_000
CAPACITY = 1 << 16

pytestmark = pytest.mark.skipif(os.cpu_count() is None or os.cpu_count() < 2,
                                reason="cross-process benchmarks need 2 cores")


def ticks(n: int) -> np.ndarray:
    t = np.zeros(n, TICK_DTYPE)
    t["ts_ns"] = np.arange(n)
    t["bid"], t["ask"] = 1.0, 1.0001
    return t


# ---- the plain numpy ring: what one writes with multiprocessing.shared_memory alone


class NumpyRing:
    """SPSC ring as a numpy array in shared memory, indices in an int64 pair. Relies on
    x86's store ordering rather than atomics, as such hand-rolled rings do."""

    def __init__(self, shm: shared_memory.SharedMemory, capacity: int):
        self.shm = shm
        self.capacity = capacity
        self.idx = np.ndarray(16, np.int64, shm.buf, 0)  # head at 0, tail at 8 (own lines)
        self.data = np.ndarray(capacity, TICK_DTYPE, shm.buf, 128)

    @classmethod
    def create(cls, capacity: int) -> NumpyRing:
        shm = shared_memory.SharedMemory(create=True, size=128 + capacity * TICK_DTYPE.itemsize)
        return cls(shm, capacity)

    @classmethod
    def attach(cls, name: str, capacity: int) -> NumpyRing:
        return cls(shared_memory.SharedMemory(name=name), capacity)

    def push(self, batch: np.ndarray) -> None:
        n, cap = len(batch), self.capacity
        head = int(self.idx[0])
        while head + n - int(self.idx[8]) > cap:
            pass
        at = head % cap
        first = min(n, cap - at)
        self.data[at : at + first] = batch[:first]
        self.data[: n - first] = batch[first:]
        self.idx[0] = head + n

    def pop_into(self, out: np.ndarray) -> int:
        tail = int(self.idx[8])
        n = min(len(out), int(self.idx[0]) - tail)
        if n <= 0:
            return 0
        at = tail % self.capacity
        first = min(n, self.capacity - at)
        out[:first] = self.data[at : at + first]
        out[first:n] = self.data[: n - first]
        self.idx[8] = tail + n
        return n

    def close(self) -> None:
        del self.idx, self.data
        self.shm.close()


# ---- consumer processes: each serves many rounds, driven over a pipe


def _consume(kind: str, name: str, conn) -> None:
    if kind == "tickring":
        ring = TickRing.attach(name)
    elif kind == "numpy":
        ring = NumpyRing.attach(name, CAPACITY)
    buf = np.zeros(BATCH, TICK_DTYPE)
    conn.send("ready")
    while (n := conn.recv()) is not None:
        got = 0
        while got < n:
            got += ring.pop_into(buf)
        conn.send(got)
    if kind == "numpy":
        ring.close()


def _consume_queue(q, conn) -> None:
    conn.send("ready")
    while (n := conn.recv()) is not None:
        for _ in range(n):
            q.get()
        conn.send(n)


def _start(target, *args):
    parent, child = CTX.Pipe()
    p = CTX.Process(target=target, args=(*args, child), daemon=True)
    p.start()
    # A consumer that died starting (a bad argument, say) fails the benchmark, not hangs it.
    started = parent.poll(60) and parent.recv() == "ready"
    assert started, f"{target.__name__} did not start (exit code {p.exitcode})"
    return p, parent


def _stop(p, conn) -> None:
    conn.send(None)
    p.join(10)


def test_ring_throughput(benchmark, report) -> None:
    source = ticks(SOURCE_TICKS)
    batches = [source[at : at + BATCH] for at in range(0, SOURCE_TICKS, BATCH)]
    n_batches = RING_TICKS // BATCH
    rounds = 5
    with TickRing.create(f"sovbench-{os.getpid()}", CAPACITY) as ring:
        proc, conn = _start(_consume, "tickring", ring.name)

        def transfer() -> None:
            conn.send(RING_TICKS)
            for j in range(n_batches):
                ring.push(batches[j % len(batches)])
            assert conn.recv() == RING_TICKS

        sec = median_seconds(benchmark, transfer, rounds)
        _stop(proc, conn)
    report("ring", "TickRing ticks/s", RING_TICKS / sec, "ticks/s", "numpy shm ring ticks/s")
    report("ring", "TickRing vs Queue", RING_TICKS / sec, "ticks/s", "mp.Queue ticks/s")

    nring = NumpyRing.create(CAPACITY)
    proc, conn = _start(_consume, "numpy", nring.shm.name)

    def transfer_numpy() -> None:
        conn.send(RING_TICKS)
        for j in range(n_batches):
            nring.push(batches[j % len(batches)])
        assert conn.recv() == RING_TICKS

    t = time.perf_counter()
    for _ in range(rounds):
        transfer_numpy()
    sec_numpy = (time.perf_counter() - t) / rounds
    _stop(proc, conn)
    nring.close()
    nring.shm.unlink()
    report("ring", "numpy shm ring ticks/s", RING_TICKS / sec_numpy, "ticks/s")

    q = CTX.Queue()
    proc, conn = _start(_consume_queue, q)
    rows = [ticks(1).tobytes()] * QUEUE_TICKS
    t = time.perf_counter()
    conn.send(QUEUE_TICKS)
    for r in rows:
        q.put(r)
    assert conn.recv() == QUEUE_TICKS
    sec_queue = time.perf_counter() - t
    _stop(proc, conn)
    report("ring", "mp.Queue ticks/s", QUEUE_TICKS / sec_queue, "ticks/s")


def _echo_latency(name: str, n: int, wait: float, conn) -> None:
    """Consumer: takes one tick at a time and records now - ts (CLOCK_MONOTONIC). wait 0:
    busy-polls; else blocks in pop_into (spin, then asleep on the ring's futex doorbell).
    pop_into a reused buffer, as a hot loop should: pop() allocates an array per call,
    and that allocation alone puts ~25 us into the p99 here."""
    ring = TickRing.attach(name)
    lat = np.empty(n, np.int64)
    buf = np.zeros(1, TICK_DTYPE)
    ts = buf["ts_ns"]
    conn.send("ready")
    for i in range(n):
        while not ring.pop_into(buf, timeout=wait):
            pass
        lat[i] = time.monotonic_ns() - ts[0]
    conn.send(lat)
    ring.close()


def _queue_latency(q, n: int, conn) -> None:
    lat = np.empty(n, np.int64)
    conn.send("ready")
    for i in range(n):
        sent = q.get()  # before reading the clock: the subtraction would read it first
        lat[i] = time.monotonic_ns() - sent
    conn.send(lat)


def paced_send(send, n: int, gap_ns: int = 20_000, spin: bool = True) -> None:
    """One tick every gap_ns: spinning (precise) or sleeping (lets mp.Queue's feeder
    thread take the GIL; spinning would starve it and measure that instead)."""
    one = ticks(1)
    for _ in range(n):
        if spin:
            until = time.monotonic_ns() + gap_ns
            while time.monotonic_ns() < until:
                pass
        else:
            time.sleep(gap_ns / 1e9)
        send(one)


def test_ring_latency(benchmark, report) -> None:
    with TickRing.create(f"sovlat-{os.getpid()}", 1024) as ring:
        proc, conn = _start(_echo_latency, ring.name, LATENCY_TICKS, 0.0)

        def send(one: np.ndarray) -> None:
            one["ts_ns"] = time.monotonic_ns()
            ring.push(one)

        benchmark.pedantic(paced_send, args=(send, LATENCY_TICKS), rounds=1, iterations=1)
        lat = conn.recv()
        proc.join(10)
    lat_us = lat[1000:] / 1000  # skip the first ticks: page faults, caches
    for q_ in (50, 99, 99.9):
        report("latency", f"TickRing p{q_} us", float(np.percentile(lat_us, q_)), "us",
               f"mp.Queue p{q_} us", higher_is_better=False)

    q = CTX.Queue()
    proc, conn = _start(_queue_latency, q, LATENCY_TICKS // 4)
    paced_send(lambda _one: q.put(time.monotonic_ns()), LATENCY_TICKS // 4, spin=False)
    lat_q = conn.recv()[500:] / 1000
    proc.join(10)
    for q_ in (50, 99, 99.9):
        report("latency", f"mp.Queue p{q_} us", float(np.percentile(lat_q, q_)), "us")


WAKE_TICKS = 1500
WAKE_GAP_NS = 1_000_000  # far past the consumer's spin: every tick finds it asleep


def _pipe_latency(reader, n: int, conn) -> None:
    """Consumer that blocks in read(2) on a pipe: the kernel's plain way to wake a process."""
    lat = np.empty(n, np.int64)
    conn.send("ready")
    for i in range(n):
        sent = int.from_bytes(reader.recv_bytes(), "little")
        lat[i] = time.monotonic_ns() - sent
    conn.send(lat)


def test_ring_wake_latency(benchmark, report) -> None:
    """A consumer asleep on an idle ring (the live system between bursts): one tick every
    millisecond, from push to the consumer holding it, against a pipe's wake-up."""
    with TickRing.create(f"sovwake-{os.getpid()}", 1024) as ring:
        proc, conn = _start(_echo_latency, ring.name, WAKE_TICKS, 1.0)

        def send(one: np.ndarray) -> None:
            one["ts_ns"] = time.monotonic_ns()
            ring.push(one)

        benchmark.pedantic(paced_send, args=(send, WAKE_TICKS, WAKE_GAP_NS, False), rounds=1, iterations=1)
        lat = conn.recv()
        proc.join(10)
    reader, writer = CTX.Pipe(duplex=False)  # an os.pipe under the hood
    proc, conn = _start(_pipe_latency, reader, WAKE_TICKS)
    paced_send(lambda _one: writer.send_bytes(time.monotonic_ns().to_bytes(8, "little")), WAKE_TICKS,
               WAKE_GAP_NS, spin=False)  # fmt: skip
    lat_pipe = conn.recv()
    proc.join(10)
    for q_ in (50, 99):
        report("wake", f"asleep on TickRing p{q_} us", float(np.percentile(lat[100:] / 1000, q_)), "us",
               f"asleep on a pipe p{q_} us", higher_is_better=False)  # fmt: skip
    for q_ in (50, 99):
        report("wake", f"asleep on a pipe p{q_} us", float(np.percentile(lat_pipe[100:] / 1000, q_)), "us",
               higher_is_better=False)  # fmt: skip
