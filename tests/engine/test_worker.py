"""The worker's pieces outside its process: restoring a snapshot, and its bar-closing cut."""

from __future__ import annotations

from pathlib import Path

from sovereign.config import Config
from sovereign.engine.worker import build_pool, restore, save
from sovereign.state.store import StateStore
from tests.helpers import NS, T0, ticks
from tests.test_agent_pool import poisoned


def test_a_snapshot_holding_a_far_future_time_is_refused_and_the_worker_starts_cold(tmp_path: Path) -> None:
    """The snapshot a far-future tick left (before the pool refused such ticks) must not
    bring the poisoned symbol back: the worker says why and starts cold."""
    pool = build_pool(Config(), ["SIM000"], [0])
    last = T0 + 61 * NS + 500_000_000
    pool.on_ticks(ticks([(T0 + 5 * NS, 1.0, 1.1), (last, 1.0, 1.1)]))
    with StateStore(tmp_path / "state") as store:
        save(store, pool, 0)
        blob = store.read(lambda t: t.get_bytes("snapshots", "worker-0"))
        assert blob is not None
        store.write(lambda t: t.put_bytes("snapshots", "worker-0", poisoned(blob, last, 2**63 - 2**20)))
        fresh = build_pool(Config(), ["SIM000"], [0])
        said = restore(store, fresh, 0)
        events = store.read(lambda t: [v for _, v in t.items("journal")])
    assert said.startswith("snapshot refused (") and "outside the window" in said, said
    assert said.endswith("starting cold") and fresh.stats()["ticks"] == 0
    assert events[-1]["event"] == "snapshot_refused" and "outside the window" in events[-1]["why"]
