"""AgentPool with 1000 agents (100 symbols x 10 parameter sets) on one core, against the
pure-Python reference running the same agents on the same ticks; memory per agent."""

from __future__ import annotations

import gc
import os
import time

import psutil
import pytest

from bench.conftest import median_seconds
from sovereign.core import AgentPool
from sovereign.market.sim import simulate_ticks
from sovereign.presets import add_default_agents
from sovereign.research.reference import ReferencePool

# The default ten agents per symbol, over M1, M5 and M15. The simulated ticks are 0.25 s
# apart per symbol, so bars close often enough that the analyzers, not just bar
# building, are measured (a bar close per ~240 ticks per M1 series).
N_SYMBOLS = 100


def build(pool_cls) -> object:
    pool = pool_cls()
    add_default_agents(pool, N_SYMBOLS)
    return pool


@pytest.fixture(scope="module")
def market():
    return simulate_ticks(N_SYMBOLS, 20_000, seed=42, mean_interval_s=0.25)


@pytest.fixture
def one_core():
    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("needs os.sched_setaffinity")
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(before)})
    yield
    os.sched_setaffinity(0, before)


def test_agent_pool_throughput(benchmark, report, market, one_core) -> None:
    def run() -> None:
        pool = build(AgentPool)
        for at in range(0, len(market), 65536):
            pool.on_ticks(market[at : at + 65536])

    sec = median_seconds(benchmark, run, rounds=5)
    report("agent_pool", "AgentPool ticks/s (1000 agents)", len(market) / sec, "ticks/s",
           "pure-Python ticks/s (1000 agents)")

    sample = market[:100_000]
    ref = build(ReferencePool)
    t = time.perf_counter()
    ref.on_ticks(sample)
    rate = len(sample) / (time.perf_counter() - t)
    report("agent_pool", "pure-Python ticks/s (1000 agents)", rate, "ticks/s")


def test_memory_per_agent(benchmark, report) -> None:
    proc = psutil.Process()
    gc.collect()
    before = proc.memory_info().rss
    pools = benchmark.pedantic(lambda: [build(AgentPool) for _ in range(100)], rounds=1, iterations=1)
    n_agents = sum(len(p) for p in pools)
    rss = (proc.memory_info().rss - before) / n_agents
    report("memory", "bytes/agent (pool accounting)", pools[0].memory_bytes() / len(pools[0]), "B")
    report("memory", "bytes/agent (RSS, 100k agents)", rss, "B")
