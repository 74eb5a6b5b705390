"""A sweep's cells on a Ray cluster (`sovereign sweep --ray ADDRESS|auto`; the optional
extra `sovereign[cluster]`).

The driver joins a running cluster (`ray start --head` on one machine, `ray start
--address=HEAD:PORT` on the others; `auto` finds one started on this machine), puts the
data's records into the object store once, and gives every task the same reference: each
node fetches it once and its tasks read it in place (a read-only numpy array, no copy),
so nothing of the data is pickled per task. Each task asks for one CPU, so the cluster
runs as many cells at once as it has CPUs. Every node needs this same version of
sovereign installed (a worker with other code refuses its cell: sweep.run_cell).

Ctrl-C cancels the tasks not finished and leaves the cluster; finished cells are kept.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from sovereign.market.datafile import Market
from sovereign.research.sweep import Cell, OnDone, SweepError, run_cell
from sovereign.research.sweep_spec import SpecError


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
