"""Parameter sweeps (`sovereign sweep SPEC.toml`): one backtest per cell, a cell being a
point of the search (config values) × a symbol group × a walk-forward window, run on its
in-sample and its out-of-sample part (sovereign.research.sweep_spec says what a spec holds).

Each cell is deterministic, and cached under OUT/cells/<key>.json, where the key hashes
everything its result depends on: the config it runs with, its symbols and window, the
data (its records, however they were read) and the code (every source file of the
package and the compiled core). A file is written whole or not at all, when its cell
ends, so a sweep that was stopped (Ctrl-C, SIGKILL, a lost machine) and started again
runs only the cells it had not finished.

Cells run on a local process pool (the data is one memory-mapped .sovdata file every
worker opens once) or on a Ray cluster (run_on_ray: the data goes into the object store
once and every task reads it from there). Either way the driver writes the cells, so a
cluster's nodes need no shared disk; and a worker whose code is not the driver's refuses
its cell rather than mix results of two versions.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from sovereign.config import from_dict
from sovereign.errors import OperationalError
from sovereign.files import write_atomic
from sovereign.market import datafile
from sovereign.market.datafile import Market
from sovereign.research.backtest import Backtest
from sovereign.research.report import metrics, trades_from_fills
from sovereign.research.sweep_spec import (
    MAX_CELLS,
    Spec,
    SpecError,
    Window,
    group_symbols,
    points,
    raw_config,
)
from sovereign.research.sweep_spec import windows as walk_windows

CELL_FORMAT = 1
NS = 1_000_000_000
MARK_INTERVAL_S = 3600  # the equity curve's points: hourly, as `sovereign backtest` by default


@dataclass(frozen=True)
class Cell:
    """One cell of the sweep (its in-sample and out-of-sample backtests), as data: it
    travels to the workers."""

    key: str
    point: dict[str, Any]  # the swept keys' values
    config: dict[str, Any]  # the config's tables, the point's values set
    group: str
    symbols: tuple[str, ...]
    window: Window
    code: str  # the driver's code version: a worker running other code refuses the cell


@dataclass
class Plan:
    """A sweep ready to run: its cells, in order, and the data they share."""

    spec: Spec
    market: Market
    cells: list[Cell]
    points: list[dict[str, Any]]
    groups: dict[str, list[str]]
    windows: list[Window]
    data: str  # the data's digest

    def shape(self) -> str:
        """'16 points × 1 group × 4 windows'"""

        def n(k: int, word: str) -> str:
            return f"{k} {word}{'' if k == 1 else 's'}"

        parts = n(len(self.points), "point"), n(len(self.groups), "group"), n(len(self.windows), "window")
        return " × ".join(parts)


class SweepError(OperationalError):
    """A sweep could not run as things stand (a worker, the cluster)."""


# ---- the plan


def plan(spec: Spec) -> Plan:
    """Every cell of the sweep, checked, in a fixed order (point, group, window)."""
    pts = points(spec)
    first = from_dict(raw_config(spec, pts[0]))  # how to read the data: its feed.layout and feed.bad_rows
    if len(spec.data) == 1 and spec.data[0].endswith(datafile.SUFFIX):  # mapped, never copied
        market = datafile.open_file(spec.data[0])
    else:
        market = datafile.load(spec.data, spec.layout or first.feed.layout, first.feed.bad_rows)
    if not len(market.records):
        raise SpecError("sweep spec key data: the files hold no records")
    groups = group_symbols(spec, market.names)
    ts = market.records["ts_ns"]
    end = int(ts[-1]) + (int(market.records["timeframe_s"].max()) * NS if market.kind == "bars" else 1)
    wins = walk_windows(spec.walk, int(ts[0]), end)  # a bar covers its timeframe
    if len(pts) * len(groups) * len(wins) > MAX_CELLS:
        raise SpecError(
            f"sweep spec: {len(pts):,} points × {len(groups)} groups × {len(wins)} windows is more "
            f"than {MAX_CELLS:,} cells"
        )
    data, code = data_digest(market), code_version()
    cells = []
    for pt in pts:
        raw = raw_config(spec, pt)
        for g, names in groups.items():
            for w in wins:
                key = _digest(
                    {
                        "format": CELL_FORMAT,
                        "config": raw,
                        "symbols": names,
                        "train": w.train,
                        "test": w.test,
                        "data": data,
                        "code": code,
                        "mark_interval_s": MARK_INTERVAL_S,
                    }
                )
                cells.append(Cell(key, pt, raw, g, tuple(names), w, code))
    return Plan(spec, market, cells, pts, groups, wins, data)


def data_digest(market: Market) -> str:
    h = hashlib.sha256(orjson.dumps({"kind": market.kind, "symbols": market.names}))
    h.update(np.ascontiguousarray(market.records).view(np.uint8).data)
    return h.hexdigest()


@functools.cache
def code_version() -> str:
    """The package's source files and compiled core, hashed: a cell computed by other code
    is another cell."""
    import sovereign
    from sovereign import _core

    root = Path(sovereign.__file__).parent
    h = hashlib.sha256()
    for path in [*sorted(root.rglob("*.py")), Path(_core.__file__ or "")]:
        h.update(str(path.relative_to(root) if path.is_relative_to(root) else path.name).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def _digest(doc: dict[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)).hexdigest()


# ---- one cell (in a worker)


def run_cell(cell: Cell, market: Market) -> dict[str, Any]:
    """The cell's backtests: in-sample, then out-of-sample (each from a fresh account)."""
    if cell.code != code_version():
        raise SweepError(
            f"this worker ({os.uname().nodename}, pid {os.getpid()}) runs other code than the "
            "sweep's driver: install the same sovereign on every node"
        )
    t0 = time.perf_counter()
    config = from_dict(cell.config)
    mine = select(market, cell.symbols)
    in_sample, _ = _backtest(config, mine.between(*cell.window.train))
    out_of_sample, equity = _backtest(config, mine.between(*cell.window.test))
    return {
        "format": CELL_FORMAT,
        "key": cell.key,
        "point": cell.point,
        "group": cell.group,
        "symbols": list(cell.symbols),
        "window": cell.window.index,
        "train": list(cell.window.train),
        "test": list(cell.window.test),
        "in_sample": in_sample,
        "out_of_sample": out_of_sample,
        "oos_equity": equity,
        "seconds": round(time.perf_counter() - t0, 3),
    }


def select(market: Market, symbols: Iterable[str]) -> Market:
    """The records of `symbols` alone, their ids renumbered in that order."""
    names = list(symbols)
    if names == market.names:
        return market
    ids = np.array([market.names.index(n) for n in names], np.int64)
    lut = np.full(len(market.names), -1, np.int64)
    lut[ids] = np.arange(len(ids))
    records = market.records[np.isin(market.records["symbol"], ids)]  # a copy
    records["symbol"] = lut[records["symbol"]]
    return Market(market.kind, records, names, market.issues, market.meta)


def _backtest(config: Any, market: Market) -> tuple[dict[str, Any], list[list[float]]]:
    bt = Backtest(config, market.names, market.kind, mark_interval_s=MARK_INTERVAL_S)
    bt.pool.threads = 1  # cells run side by side, one a core
    bt.feed(market.records)
    bt.finish()
    out = bt.out
    trades, _ = trades_from_fills(out.fills)
    m = metrics(out.equity, trades, Decimal(repr(config.broker.initial_balance)), out.first_ns, out.last_ns)
    m.update(
        records=out.records,
        signals=out.n_signals,
        orders=len(out.orders),
        fills=len(out.fills),
        state=bt.risk.state.value,
    )
    return m, [[ts, float(e)] for ts, e in out.equity]


# ---- the cache


def cell_path(out: Path, key: str) -> Path:
    return out / "cells" / f"{key}.json"


def cached(out: Path, cell: Cell) -> dict[str, Any] | None:
    """The cell's result from an earlier run, when there is a whole one for this key."""
    try:
        doc = orjson.loads(cell_path(out, cell.key).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    if not isinstance(doc, dict) or doc.get("format") != CELL_FORMAT or doc.get("key") != cell.key:
        return None
    return doc


def save(out: Path, result: dict[str, Any]) -> None:
    write_atomic(cell_path(out, result["key"]), orjson.dumps(result))


# ---- running the cells


OnDone = Callable[[dict[str, Any]], None]


def run(
    sweep: Plan, out: Path, *, workers: int, ray: str | None, on_cell: OnDone
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Runs the cells not cached yet, saving each as it ends (on_cell after each); returns
    every cell's result in the plan's order, and how it ran."""
    (out / "cells").mkdir(parents=True, exist_ok=True)
    done: dict[str, dict[str, Any]] = {}
    for cell in sweep.cells:
        hit = cached(out, cell)
        if hit is not None:
            done[cell.key] = hit
    todo = list({c.key: c for c in sweep.cells if c.key not in done}.values())  # a repeated cell runs once

    def finished(result: dict[str, Any]) -> None:
        save(out, result)
        done[result["key"]] = result
        on_cell(result)

    t0 = time.perf_counter()
    if ray is not None:
        where = run_on_ray(todo, sweep.market, ray, finished)
    else:
        where = f"a local pool of {workers} processes"
        if todo:
            run_local(todo, shared_data(sweep, out), workers, finished)
    elapsed = time.perf_counter() - t0
    how = {
        "cells": len(sweep.cells),
        "cached": len(sweep.cells) - len(todo),
        "ran": len(todo),
        "seconds": round(elapsed, 3),
        "cells_per_minute": round(len(todo) / elapsed * 60, 2) if todo and elapsed > 0 else None,
        "on": where,
    }
    return [done[c.key] for c in sweep.cells], how


def shared_data(sweep: Plan, out: Path) -> Path:
    """A .sovdata file with the sweep's data, for the pool's workers to map: the spec's own
    file when it is one, else one written once under OUT/data/."""
    files = sweep.spec.data
    if len(files) == 1 and files[0].endswith(datafile.SUFFIX) and isinstance(sweep.market.records, np.memmap):
        return Path(files[0])
    path = out / "data" / f"{sweep.data[:32]}{datafile.SUFFIX}"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        datafile.write(path, sweep.market)
    return path


def run_local(cells: list[Cell], data: Path, workers: int, on_done: OnDone) -> None:
    """The cells on `workers` processes, each of which maps the data file once. Ctrl-C
    (here alone: the workers ignore it) ends the workers at once; what ended is kept."""
    ctx = multiprocessing.get_context("forkserver")  # no fork of a driver that may hold threads
    pool = ctx.Pool(min(workers, len(cells)), _open_data, (str(data),))
    try:
        for result in pool.imap_unordered(_pool_cell, cells, chunksize=1):
            on_done(result)
        pool.close()
    finally:
        pool.terminate()
        pool.join()


# Each pool worker's data: set once by its initializer, read by every cell it runs. A
# process-wide slot is how a multiprocessing.Pool worker keeps what its initializer made.
_WORKER_DATA: dict[str, Market] = {}


def _open_data(path: str) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver handles Ctrl-C and ends the pool
    _WORKER_DATA["market"] = datafile.open_file(path)


def _pool_cell(cell: Cell) -> dict[str, Any]:
    return run_cell(cell, _WORKER_DATA["market"])


__all__ = ["Cell", "Plan", "SweepError", "code_version", "plan", "run", "run_cell", "select"]

# ---- on a Ray cluster (`--ray ADDRESS|auto`; the optional extra `sovereign[cluster]`)
#
# The driver joins a running cluster (`ray start --head` on one machine, `ray start
# --address=HEAD:PORT` on the others; `auto` finds one started on this machine), puts the
# data's records into the object store once, and gives every task the same reference: each
# node fetches it once and its tasks read it in place (a read-only numpy array, no copy),
# so nothing of the data is pickled per task. Each task asks for one CPU, so the cluster
# runs as many cells at once as it has CPUs. Every node needs this same version of
# sovereign installed (a worker with other code refuses its cell: run_cell). Ctrl-C
# cancels the tasks not finished and leaves the cluster; finished cells are kept.


def run_on_ray(cells: list[Cell], market: Market, address: str, on_done: OnDone) -> str:
    """Runs `cells` on the cluster at `address`; returns where they ran, in words."""
    try:
        import ray
    except ImportError:
        raise SpecError(
            "--ray needs Ray on this machine and the cluster's: pip install 'sovereign[cluster]'"
        ) from None
    try:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    except (ConnectionError, ValueError, RuntimeError) as e:
        raise SweepError(f"--ray {address}: cannot join the cluster: {e}") from None
    pending: dict[Any, Cell] = {}
    try:
        cpus = int(ray.cluster_resources().get("CPU", 0))
        where = f"the Ray cluster at {address} ({cpus} CPUs)"
        if not cells:
            return where
        records = ray.put(np.asarray(market.records).view(np.ndarray))  # once, whatever the number of tasks
        task = ray.remote(num_cpus=1, max_retries=1)(_ray_cell)
        pending = {task.remote(c, records, market.names, market.kind): c for c in cells}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                pending.pop(ref)
                try:
                    on_done(ray.get(ref))
                except ray.exceptions.RayTaskError as e:
                    cause = e.cause if isinstance(e.cause, Exception) else None
                    raise (cause or SweepError(f"a cell failed on the cluster: {e}")) from None
        return where
    finally:
        for ref in pending:  # stopped (Ctrl-C) or failed: no task of ours goes on without us
            ray.cancel(ref, force=True)
        ray.shutdown()


def _ray_cell(cell: Cell, records: np.ndarray, names: list[str], kind: str) -> dict[str, Any]:
    # `records` arrives resolved from the object store: the node's shared copy, read-only
    return run_cell(cell, Market(kind, records, list(names)))
