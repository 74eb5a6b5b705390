"""Sweep throughput: 64 cells (4 risk settings × 4 agent sets × 4 walk-forward windows) over
M1 bars of 10 symbols made by the simulator, on the local process pool and on a Ray head
on this machine (in a loopback-only network namespace, as the tests run it), against one
cell run alone in this process: cells per minute, and each runner's speed-up over it.

CI runs four weeks of bars; SOVEREIGN_BENCH_FULL=1 runs the whole year (docs/performance.md,
"Sweeps"). Nothing here asserts on time.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import orjson
import pytest

from bench.conftest import median_seconds
from sovereign.market.datafile import FILE_BAR_DTYPE, Market, write
from sovereign.market.sim import DEFAULT_START_NS, SimMarket
from sovereign.research import sweep, sweep_spec
from tests.research.test_sweep import loopback_ray_or_skip, sovereign, sweep_on_loopback_ray

NS = 1_000_000_000
SYMBOLS = 10
DAYS = 365 if os.environ.get("SOVEREIGN_BENCH_FULL") else 28
TICKS_PER_SYMBOL_MINUTE = 3  # the sim's ticks folded into M1 bars
POINT = 0.00001

SPEC = """
data = "bars.sovdata"
[config.agents]
preset = "none"
[config.market]
hours = "always"
[config.risk]
max_drawdown = 0.5
daily_loss_limit = 0.1
max_symbol_exposure = 20.0  # wide enough that risk_per_trade, not the caps, sizes the orders
max_gross_exposure = 100.0
[params]
risk.risk_per_trade = [0.001, 0.0025, 0.005, 0.01]
"agents.sets" = [[{symbols = ["*"], timeframe = "M1"}],
                 [{symbols = ["*"], timeframe = "M5", k = 3}],
                 [{symbols = ["*"], timeframe = "M15", min_conviction = 0.5}],
                 [{symbols = ["*"], timeframe = "M1", k = 2, atr_n = 7}, {symbols = ["*"], timeframe = "H1"}]]
[walk_forward]
count = 4
"""


def sim_m1_bars(n_symbols: int, days: int, seed: int = 5) -> Market:
    """`days` of M1 bars for `n_symbols` symbols, folded from the simulator's ticks a chunk at
    a time (a minute still open at a chunk's end goes on into the next)."""
    sim = SimMarket(n_symbols, seed=seed, mean_interval_s=60 / TICKS_PER_SYMBOL_MINUTE)  # each symbol's
    end = DEFAULT_START_NS + days * 86_400 * NS
    parts, carry = [], None
    while True:
        ticks = sim.next(1 << 21)
        if carry is not None:
            ticks = np.concatenate([carry, ticks])
        minute = ticks["ts_ns"] // (60 * NS)
        done = ticks["ts_ns"] >= end
        last = minute[-1] if not done.any() else end // (60 * NS)
        whole = (minute < last) & ~done
        parts.append(_fold(ticks[whole], minute[whole], n_symbols))
        if done.any():
            break
        carry = ticks[~whole]
    bars = np.concatenate(parts)
    return Market("bars", bars, [f"S{s:02d}" for s in range(n_symbols)])


def _fold(ticks: np.ndarray, minute: np.ndarray, n_symbols: int) -> np.ndarray:
    key = minute * n_symbols + ticks["symbol"]
    order = np.argsort(key, kind="stable")  # minute by minute, symbol by symbol; ticks in time order
    key, t = key[order], ticks[order]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    ends = np.r_[starts[1:], len(key)] - 1
    bid = t["bid"]
    out = np.zeros(len(starts), FILE_BAR_DTYPE)
    out["ts_ns"] = key[starts] // n_symbols * 60 * NS
    out["open"], out["close"] = bid[starts], bid[ends]
    out["high"], out["low"] = np.maximum.reduceat(bid, starts), np.minimum.reduceat(bid, starts)
    out["volume"] = np.add.reduceat(t["volume"], starts)
    ticks_in = np.diff(np.r_[starts, len(key)])
    out["spread"] = np.round(np.add.reduceat(t["ask"] - bid, starts) / ticks_in / POINT)  # mean, in points
    out["symbol"], out["timeframe_s"] = key[starts] % n_symbols, 60
    return out


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sweep")
    t0 = time.perf_counter()
    market = sim_m1_bars(SYMBOLS, DAYS)
    write(path / "bars.sovdata", market)
    print(f"\n{len(market.records):,} M1 bars of {SYMBOLS} symbols over {DAYS} days made in "
          f"{time.perf_counter() - t0:.1f} s")  # fmt: skip
    (path / "spec.toml").write_text(SPEC)
    return path


def test_sweep_local_pool_and_ray_against_one_cell_alone(benchmark, report, folder: Path) -> None:
    cores = len(os.sched_getaffinity(0))
    spec = folder / "spec.toml"
    plan = sweep.plan(sweep_spec.load(spec))
    assert len(plan.cells) == 64
    # One cell alone, in this process: the mean of one cell per agent set (they differ most),
    # at the second risk setting and the second window.
    alone = [c for c in plan.cells if c.point["risk.risk_per_trade"] == 0.0025 and c.window.index == 1]
    assert len(alone) == 4
    seconds = median_seconds(benchmark, lambda: [sweep.run_cell(c, plan.market) for c in alone], rounds=1) / 4
    report("sweep", "one cell alone (cells/min)", 60 / seconds, "cells/min")
    local = sovereign("sweep", str(spec), "--out", str(folder / "local"), "--workers", str(cores))
    assert local.returncode == 0, local.stderr
    run = _run(folder / "local")
    report("sweep", f"local pool, {cores} workers (cells/min)", run["cells_per_minute"], "cells/min",
           "one cell alone (cells/min)")  # fmt: skip
    loopback_ray_or_skip()
    code, stdout, stderr = sweep_on_loopback_ray(spec, folder / "ray", cpus=cores, timeout=3600)
    assert code == 0, stdout + stderr
    ray = _run(folder / "ray")
    report("sweep", f"Ray, {cores} CPUs (cells/min)", ray["cells_per_minute"], "cells/min",
           f"local pool, {cores} workers (cells/min)")  # fmt: skip
    print(f"\none cell alone: {seconds:.2f} s (mean of 4); local pool: 64 cells in {run['seconds']:.1f} s "
          f"(cells' own time {run['cell_seconds']:.1f} s); Ray: 64 cells in {ray['seconds']:.1f} s "
          f"(cells' own time {ray['cell_seconds']:.1f} s)")  # fmt: skip


def _run(out: Path) -> dict[str, float]:
    """How the sweep in `out` ran (results.json), and the time its cells took inside the workers."""
    doc = orjson.loads((out / "results.json").read_bytes())
    cells = [orjson.loads(p.read_bytes()) for p in (out / "cells").glob("*.json")]
    return {**doc["run"], "cell_seconds": sum(c["seconds"] for c in cells)}
