"""The whole system at full speed: `sovereign run` on the sim feed, 1000 agents, real
processes. Throughput is gateway -> workers -> signals (ticks the feed emitted over the
time it took, every tick reaching a worker); latency is from a tick's receipt at the
gateway to its approved order at the gateway (the engine) and at the broker call (after
the durable SUBMITTING commit). Baselines in the same run: the sim feed and the
AgentPool in one process (what the processes add), and one durable LMDB commit (what
durability costs each order)."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lmdb
import numpy as np

from bench.conftest import median_seconds
from sovereign.core import AgentPool
from sovereign.presets import add_default_agents
from sovereign.sim import SimMarket
from sovereign.state import StateStore

TICKS = 8_000_000


def run_system(tmp: Path) -> dict:
    cfg = tmp / "bench.toml"
    cfg.write_text(f'[system]\nstate_dir = "{tmp / "state"}"\n')
    r = subprocess.run([sys.executable, "-m", "sovereign.cli", "run", "--config", str(cfg),
                        "--max-ticks", str(TICKS)], capture_output=True, text=True, timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    with StateStore(tmp / "state", readonly=True) as st:
        events = st.read(lambda t: [v for _, v in t.items("journal")])
    return next(e for e in events if e["event"] == "gateway_stats")


def test_pipeline_throughput_and_latency(benchmark, report) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        stats = {}

        def run() -> None:
            stats.update(run_system(Path(tmp)))

        median_seconds(benchmark, run, rounds=1)
    assert stats["ticks"] == TICKS and stats["lost_ticks"] == 0
    report(
        "pipeline",
        "system ticks/s (1000 agents)",
        stats["ticks"] / stats["feed_s"],
        "ticks/s",
        "one process: sim + pool ticks/s",
    )
    market, pool = SimMarket(100, seed=1), AgentPool()
    add_default_agents(pool, 100)
    t = time.perf_counter()
    for _ in range(1000):
        pool.on_ticks(market.next(2048))
    report("pipeline", "one process: sim + pool ticks/s", 2048_000 / (time.perf_counter() - t), "ticks/s")
    gw, br = stats["tick_to_gateway"], stats["tick_to_broker"]
    report("pipeline", "orders", gw["n"], "orders")
    report("latency", "tick-to-order p50 (engine) us", gw["p50_us"], "us", higher_is_better=False)
    report("latency", "tick-to-order p99 (engine) us", gw["p99_us"], "us", higher_is_better=False)
    report("latency", "tick-to-broker p50 us", br["p50_us"], "us", higher_is_better=False)
    report("latency", "tick-to-broker p99 us", br["p99_us"], "us", higher_is_better=False)
    with tempfile.TemporaryDirectory() as d:
        env = lmdb.open(d, map_size=1 << 26, sync=True)
        lat = []
        for i in range(300):
            t = time.perf_counter()
            with env.begin(write=True) as tx:
                tx.put(str(i).encode(), b"x" * 300)
            lat.append((time.perf_counter() - t) * 1e6)
        env.close()
    report("latency", "durable commit p50 us", float(np.percentile(lat, 50)), "us", higher_is_better=False)
    report("latency", "durable commit p99 us", float(np.percentile(lat, 99)), "us", higher_is_better=False)
