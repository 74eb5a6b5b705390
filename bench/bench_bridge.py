"""The MT5 bridge, each figure against a baseline in the same run:
- request -> simulated terminal -> result round trip (two processes, both spinning), p50
  and p99, against a plain socketpair round trip between the same two processes;
- ticks per second through the bridge (terminal face push, engine face poll, one process,
  batches of 4096), against the TickRing with the same batches;
- reconciliation after a restart with 10k deals in the venue's history (HISTORY replay
  + positions), against reading those deals straight from the venue's LMDB.

Run: python3 bench/bench_bridge.py   (pytest runs a small version as a smoke test)."""

from __future__ import annotations

import multiprocessing as mp
import os
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from sovereign.broker.bridge import Bridge, lib
from sovereign.broker.mt5 import MT5Broker, MT5Settings
from sovereign.broker.mt5sim import Simulator
from sovereign.core import TICK_DTYPE, TickRing

CTX = mp.get_context("fork")
BATCH = 4096


def _terminal(path: str, sock: socket.socket, n: int, ready: mp.synchronize.Event) -> None:
    """The child: answers n bridge requests (DONE), then echoes n socket messages."""
    L = lib()
    t = Bridge.terminal(path)
    ready.set()
    answered = 0
    while answered < n:
        q = t.take_request()
        if q is None:
            continue
        t.result(int(q["request_id"]), int(q["client_order_id"]), 1, 10009, 1, 1, 0.1, 1.1, comment="done")
        answered += 1
    for _ in range(n):
        msg = sock.recv(160, socket.MSG_WAITALL)
        sock.sendall(msg[:144])
    t.close()
    del L


def round_trips(n: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as d:
        path = str(Path(d) / "b.sov")
        a, b = socket.socketpair()
        ready = CTX.Event()
        child = CTX.Process(target=_terminal, args=(path, b, n, ready))
        child.start()
        ready.wait()
        e = Bridge.engine(path)
        L = lib()
        q = np.zeros(1, e.dtypes[L.SB_RING_REQUESTS])[0]
        q["action"], q["symbol"], q["volume"] = 1, b"EURUSD", 0.1
        bridge_ns = np.empty(n, np.int64)
        for i in range(n):
            q["request_id"] = q["client_order_id"] = i + 1
            t0 = time.perf_counter_ns()
            e.request(q)
            while not len(e.poll(L.SB_RING_RESULTS, 1)):
                pass
            bridge_ns[i] = time.perf_counter_ns() - t0
        msg = bytes(160)
        sock_ns = np.empty(n, np.int64)
        for i in range(n):
            t0 = time.perf_counter_ns()
            a.sendall(msg)
            a.recv(144, socket.MSG_WAITALL)
            sock_ns[i] = time.perf_counter_ns() - t0
        child.join()
        e.close()
    out = {}
    for name, ns in (("bridge", bridge_ns), ("socketpair", sock_ns)):
        out[f"{name}_p50_us"] = float(np.percentile(ns, 50)) / 1e3
        out[f"{name}_p99_us"] = float(np.percentile(ns, 99)) / 1e3
    return out


def tick_rates(n: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as d:
        t = Bridge.terminal(str(Path(d) / "b.sov"))
        e = Bridge.engine(Path(d) / "b.sov")
        L = lib()
        recs = np.zeros(BATCH, t.dtypes[L.SB_RING_TICKS])
        recs["symbol"], recs["bid"], recs["ask"] = b"EURUSD", 1.1, 1.1002
        t0 = time.perf_counter()
        for _ in range(n // BATCH):
            t.push(L.SB_RING_TICKS, recs)
            e.poll(L.SB_RING_TICKS, BATCH)
        bridge = n // BATCH * BATCH / (time.perf_counter() - t0)
        e.close()
        t.close()
    with TickRing.create(f"sovbench-{uuid.uuid4().hex[:8]}", 1 << 16) as ring:  # the owner unlinks it
        ticks = np.zeros(BATCH, TICK_DTYPE)
        out = np.zeros(BATCH, TICK_DTYPE)
        t0 = time.perf_counter()
        for _ in range(n // BATCH):
            ring.push(ticks)
            ring.pop_into(out)
        tickring = n // BATCH * BATCH / (time.perf_counter() - t0)
    return {"bridge_ticks_per_s": bridge, "tickring_ticks_per_s": tickring}


def reconciliation(n_deals: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as d:
        sim = Simulator(Path(d) / "venue", str(Path(d) / "b.sov"), {"EURUSD": 1.1})
        for i in range(n_deals):  # the venue's history: trades in and out
            sim.venue.trade("EURUSD", 1 if i % 2 == 0 else -1, 0.01, 1.1, 77, str(i + 1), 3)
        sim.open()
        t0 = time.perf_counter()
        direct = len(sim.venue.deals_since(0))
        read_lmdb = time.perf_counter() - t0
        broker = MT5Broker(MT5Settings(str(Path(d) / "b.sov"), 77, ["EURUSD"]))
        t0 = time.perf_counter()
        reported = len(broker.poll()[1])
        while broker.bridge is None or broker.reconciling:
            sim.step(max_requests=8)
            reported += len(broker.poll()[1])
        reconcile = time.perf_counter() - t0
        reported += len(broker.poll()[1])  # the deals read in the turn reconciliation ended
        assert reported == direct == n_deals, (reported, direct)
        broker.close()
        sim.close()
        sim.venue.close()
    return {"reconcile_s": reconcile, "venue_lmdb_read_s": read_lmdb}


def measure(n_rt: int, n_ticks: int, n_deals: int) -> dict[str, float]:
    r = {**round_trips(n_rt), **tick_rates(n_ticks), **reconciliation(n_deals)}
    r["rt_p50_ratio"] = r["bridge_p50_us"] / r["socketpair_p50_us"]
    r["rt_p99_ratio"] = r["bridge_p99_us"] / r["socketpair_p99_us"]
    r["ticks_ratio"] = r["bridge_ticks_per_s"] / r["tickring_ticks_per_s"]
    return r


def test_bench_bridge_smoke() -> None:
    r = measure(200, BATCH * 8, 300)
    assert r["bridge_p50_us"] > 0 and r["bridge_ticks_per_s"] > 0 and r["reconcile_s"] > 0


if __name__ == "__main__":
    res = measure(20_000, 1 << 22, 10_000)
    print(f"cpus={os.cpu_count()} python={sys.version.split()[0]}")
    for k, v in res.items():
        print(f"{k:24s} {v:,.3f}")
