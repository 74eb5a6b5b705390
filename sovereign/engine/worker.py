"""Worker: one process pinned to one core, owning a disjoint set of symbols and all their
agents. Its hot loop (AgentPool.pump: tick ring -> agents -> signal ring) runs in C++
without the GIL; Python here only starts up, snapshots, heartbeats and takes control.

A snapshot of the pool goes to LMDB every snapshot_interval_s and at shutdown; a
restarted worker restores it and resumes without a warm-up (ticks it never saw between
the snapshot and the crash are missing from its bars).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence

from sovereign.config import Config
from sovereign.core import AgentPool, SignalRing, TickRing
from sovereign.engine.metrics import TICK_REFUSALS, meter
from sovereign.engine.runtime import RUNNING, STOPPED, Child, Layout
from sovereign.market.calendar import FeedWatch, MarketCalendar, feed_rate
from sovereign.presets import add_agents, agents_for
from sovereign.state.recorder import event_log, record_dir
from sovereign.state.schema import snapshot_key
from sovereign.state.store import StateStore

NS = 1_000_000_000
# A bar closes once the market clock is this far past its end, tick or not, so a quiet
# symbol's bar does not wait for its next tick. The clock is the gateway's feed's (market
# time, never the wall clock: a replay of history, or a paced feed started in the past,
# would find every bar long over and refuse its ticks as late).
FLUSH_GRACE_NS = 2 * NS


class BarClock:
    """Up to when the worker's open bars may close with no tick to close them: the market
    clock less FLUSH_GRACE_NS and, the feed silent, the close of a market the calendar has
    shut since. So the week's last bars close at Friday's close, not at Sunday's first tick
    (their signals would meet the weekend's gap), and no bar is made for the closed hours:
    the next opens at the first tick. The silence is measured on the monotonic clock."""

    def __init__(self, config: Config, clock: Callable[[], int] = time.monotonic_ns):
        self.watch = FeedWatch(MarketCalendar(config.market), feed_rate(config.feed), clock=clock)

    def cut(self, market_ns: int) -> int:
        """Bars that end by the returned time may close (`market_ns`: the gateway's clock)."""
        self.watch.moved(market_ns)
        shut = self.watch.calendar.closed_since(self.watch.market_now() - FLUSH_GRACE_NS)
        return max(market_ns - FLUSH_GRACE_NS, shut or 0)


def build_pool(config: Config, names: Sequence[str], symbols: Iterable[int]) -> AgentPool:
    """The agents the config gives `symbols` (ids into `names`, the system's symbols by
    id), as live, backtests and replays all build them (sovereign.presets.agents_for)."""
    pool = AgentPool()
    add_agents(pool, config, names, symbols)
    return pool


def layout_names(layout: Layout) -> Sequence[str]:
    return layout.symbol_names or tuple(map(str, range(layout.n_symbols)))


def restore(store: StateStore, pool: AgentPool, k: int) -> str:
    """Restore worker k's snapshot if it has one for these agents; says what happened."""
    blob = store.read(lambda t: t.get_bytes("snapshots", snapshot_key(k)))
    if blob is None:
        return "no snapshot: starting cold"
    try:
        pool.restore(blob)
    except ValueError as e:
        why = str(e)
        if "differs from this pool's" in why or "agents, this pool has" in why:
            why += " (the config's agents changed since it was taken: [agents])"
        store.write(lambda t: t.journal("snapshot_refused", worker=k, why=why))
        return f"snapshot refused ({why}): starting cold"
    store.write(lambda t: t.journal("snapshot_restored", worker=k, ticks=pool.stats()["ticks"]))
    return f"restored snapshot ({pool.stats()['ticks']} ticks)"


def save(store: StateStore, pool: AgentPool, k: int) -> None:
    blob = pool.snapshot()
    store.write(lambda t: t.put_bytes("snapshots", snapshot_key(k), blob))


def run(child: Child, config: Config, k: int) -> None:
    layout = child.layout
    store = StateStore(config.system.state_dir)
    mine = layout.symbols_of(k)
    pool = build_pool(config, layout_names(layout), mine)
    # A symbol no agent trades (sets that leave it out): the pool refuses its ticks as
    # unknown_symbol, which is no bad data, so not counted as refused.
    idle = set(mine) - {s for s, _, _ in agents_for(config, layout_names(layout), mine)}
    quiet = ("unknown_symbol",) if idle else ()
    without = f" ({len(idle)} of its {len(mine)} symbols without one)" if idle else ""
    print(f"worker-{k}: {len(pool)} agents{without} on core {layout.worker_cores[k]}, "
          f"{restore(store, pool, k)}", flush=True)  # fmt: skip
    log = event_log(config, layout.session, f"worker-{k}")
    if log is not None:  # replay: the agents as this session starts, and bars closed by the clock
        log.add("start", {"snapshot": _keep_start(config, layout.session, pool, k), "seen": seen(pool)})
        log.flush()
    ticks_in = TickRing.attach(layout.tick_ring(k))
    signals_out = SignalRing.attach(layout.signal_ring(k))

    bar_clock = BarClock(config)

    def close_bars(clock: int) -> None:
        """Close the bars the market clock (read before the ring was found empty) has ended."""
        if not clock or ticks_in.stats()["depth"]:  # a tick older than the clock may be waiting
            return
        cut = bar_clock.cut(clock)
        closed = pool.flush(cut)
        if log is not None and len(closed):
            log.add("flush", cut, seen(pool), len(closed))
            log.flush()
        signals_out.push(closed)

    next_snapshot = time.monotonic() + config.system.snapshot_interval_s
    metrics = Metrics(child, pool, quiet)
    # Stopping: the gateway has stopped feeding; take what is left in the ring first.
    while not child.stop_requested or ticks_in.stats()["depth"]:
        clock = child.market_clock()
        pool.pump(ticks_in, signals_out, 0.05)
        close_bars(clock)
        child.messages()
        if time.monotonic() >= next_snapshot:
            save(store, pool, k)
            next_snapshot = time.monotonic() + config.system.snapshot_interval_s
        stats = pool.stats()
        child.beat(
            RUNNING,
            ticks=stats["ticks"],
            signals=stats["signals"],
            rejects=sum(v for r, v in stats["rejected"].items() if r not in quiet),
            dropped=signals_out.stats()["dropped"],
        )
        metrics.publish(stats)
    close_bars(child.market_clock())  # the gateway has stopped feeding: its last clock
    save(store, pool, k)
    metrics.publish(pool.stats(), force=True)
    if log is not None:
        log.close()
    child.beat(STOPPED)
    store.close()


class Metrics:
    """The worker's metrics: its pool's counts since this process started (a restored
    snapshot brings the counts of its time), at most every PUBLISH_S."""

    PUBLISH_S = 0.05

    def __init__(self, child: Child, pool: AgentPool, quiet: tuple[str, ...] = ()):
        self.meter = meter(child)
        self.start = pool.stats()
        self.next = 0.0
        self.quiet = quiet  # refusals not counted (unknown_symbol: ticks of a symbol without agents)

    def publish(self, stats: dict, force: bool = False) -> None:
        now = time.monotonic()
        if now < self.next and not force:
            return
        self.next = now + self.PUBLISH_S
        was, rejected = self.start, stats["rejected"]
        refused = [0 if r in self.quiet else rejected[r] - was["rejected"][r] for r in TICK_REFUSALS]
        self.meter.publish(ticks=stats["ticks"] - was["ticks"], signals=stats["signals"] - was["signals"],
                           ticks_refused=refused)  # fmt: skip


def seen(pool: AgentPool) -> int:
    """Ticks the pool has taken, good or bad (the position in this worker's tick stream)."""
    stats = pool.stats()
    return int(stats["ticks"]) + sum(stats["rejected"].values())


def _keep_start(config: Config, session: str, pool: AgentPool, k: int) -> str | None:
    """A restored pool's state at the session's start, next to the recording (the file name)."""
    directory = record_dir(config)
    if directory is None or seen(pool) == 0:
        return None
    name = f"snapshot-{session}-worker-{k}-{seen(pool)}.bin"
    (directory / name).write_bytes(pool.snapshot())
    return name
