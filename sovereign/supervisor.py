"""Supervisor: the systemd main process. Creates the shared memory, starts every process,
watches their heartbeats, restarts what dies or hangs (with backoff, journaled), and
shuts down gracefully on SIGTERM: stop the feed, let the rings drain, let each process
flush its state, exit 0 within system.shutdown_timeout_s. SIGHUP reloads risk limits
from the config file. Speaks sd_notify: READY once every process runs, WATCHDOG only
while every process is healthy, STATUS, STOPPING.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing as mp
import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import sdnotify  # type: ignore[import-untyped]

from sovereign import config as configuration
from sovereign.config import Config, ConfigError
from sovereign.core import OrderRing, QuoteBoard, SignalRing, TickRing
from sovereign.data import load_ticks
from sovereign.runtime import (
    FEED_DONE,
    ORDER_RING,
    SIGNAL_RING,
    STARTING,
    STATE_NAMES,
    TICK_RING,
    Child,
    Heartbeats,
    Layout,
)
from sovereign.state import StateStore

POLL_S = 0.05
MAX_BACKOFF_S = 30.0
START_GRACE_S = 60.0  # a process may take this long to reach RUNNING (imports, agents, snapshot)


def child_main(role: str, config: Config, layout: Layout, control: Connection) -> None:
    """Entry point of every child process (spawned: a fresh interpreter, nothing inherited)."""
    core = layout.worker_cores[int(role.split("-")[1])] if role.startswith("worker-") else None
    child = Child(role, layout, control, core)
    try:
        if role == "gateway":
            from sovereign import gateway

            gateway.run(child, config)
        elif role == "coordinator":
            from sovereign import coordinator

            coordinator.run(child, config)
        elif role == "risk":
            from sovereign import risk

            risk.run(child, config)
        else:
            from sovereign import worker

            worker.run(child, config, int(role.split("-")[1]))
    except Exception:
        traceback.print_exc()
        sys.exit(1)


@dataclass
class Proc:
    role: str
    process: Any = None
    control: Connection | None = None
    spawned: float = 0.0
    restarts: int = 0
    restart_at: float | None = None  # scheduled restart (backoff)
    recent: list[float] = dataclasses.field(default_factory=list)


class Supervisor:
    def __init__(self, config: Config, config_path: str | None = None):
        self.config = config
        self.config_path = config_path
        self.stopping = False
        self.reload_requested = False
        self.notifier = sdnotify.SystemdNotifier()
        watchdog_usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
        self.watchdog_s = watchdog_usec / 2e6 if watchdog_usec > 0 else None  # ping at half the interval
        self.ctx = mp.get_context("spawn")

    def notify(self, text: str) -> None:
        self.notifier.notify(text)

    def log(self, event: str, **fields: Any) -> None:
        """One structured line per event (systemd's journal keeps stdout)."""
        print(f"sovereign: {event} " + " ".join(f"{k}={v}" for k, v in fields.items()), flush=True)
        self.store.write(lambda t: t.journal(event, **fields))

    # ---- start

    def setup(self) -> None:
        c = self.config
        if c.feed.kind == "replay":
            names = tuple(load_ticks(c.feed.files, c.feed.layout, c.symbols.point)[1])  # validates every row
        else:
            names = tuple(f"SIM{s:03d}" for s in range(c.feed.symbols))
        self.layout = layout = Layout.plan(c, f"sov{os.getpid()}", len(names), names)
        self.store = StateStore(c.system.state_dir)
        self.rings: list[Any] = []
        for k in range(layout.n_workers):
            self.rings.append(TickRing.create(layout.tick_ring(k), TICK_RING, "wait"))
            # a stale signal is worthless: never block a worker on it, count drops instead
            self.rings.append(SignalRing.create(layout.signal_ring(k), SIGNAL_RING, "drop"))
        for name in (layout.intents, layout.approved, layout.reports_risk, layout.reports_coordinator):
            self.rings.append(OrderRing.create(name, ORDER_RING, "wait"))
        self.board = QuoteBoard.create(layout.quotes, layout.n_symbols)
        self.hb = Heartbeats(layout.heartbeats, len(layout.roles()))
        # consumers first, so nothing is produced into a ring nobody reads yet
        order = ["risk", "coordinator", *(r for r in layout.roles() if r.startswith("worker-")), "gateway"]
        self.procs = {role: Proc(role) for role in order}
        for p in self.procs.values():
            self.spawn(p)
        self.log("started", workers=layout.n_workers, symbols=layout.n_symbols,
                 cores=",".join(map(str, layout.worker_cores)), agents=layout.n_symbols * 10)  # fmt: skip

    def spawn(self, p: Proc) -> None:
        mine, theirs = self.ctx.Pipe()
        p.process = self.ctx.Process(target=child_main, args=(p.role, self.config, self.layout, theirs),
                                     name=f"sovereign-{p.role}", daemon=False)  # fmt: skip
        p.process.start()
        theirs.close()
        p.control, p.spawned, p.restart_at = mine, time.monotonic(), None

    # ---- watch

    def health(self, p: Proc) -> str:
        """'ok', 'starting', 'dead' or 'hung'."""
        if p.process is None or p.restart_at is not None or not p.process.is_alive():
            return "dead"
        slot = self.hb.slots[self.layout.slot(p.role)]
        if slot["pid"] != p.process.pid or slot["state"] == STARTING:
            return "hung" if time.monotonic() - p.spawned > START_GRACE_S else "starting"
        age = (time.monotonic_ns() - int(slot["beat_ns"])) / 1e9
        return "hung" if age > self.config.system.heartbeat_timeout_s else "ok"

    def check(self, p: Proc) -> bool:
        """Restart p if it died or hung; True if it is healthy."""
        now = time.monotonic()
        if p.restart_at is not None:
            if now >= p.restart_at:
                self.spawn(p)
            return False
        state = self.health(p)
        if state in ("ok", "starting"):
            return state == "ok"
        if state == "hung":
            os.kill(p.process.pid, signal.SIGKILL)
            p.process.join(5)
        p.recent = [t for t in p.recent if now - t < 300] + [now]
        delay = min(MAX_BACKOFF_S, 0.5 * 2 ** (len(p.recent) - 1))
        p.restarts += 1
        self.hb.slots[self.layout.slot(p.role)]["restarts"] = p.restarts
        self.log("restart", process=p.role, why=state, exitcode=p.process.exitcode, delay_s=delay,
                 restarts=p.restarts)  # fmt: skip
        p.restart_at = now + delay
        return False

    def status_line(self) -> str:
        s = self.hb.slots
        gw = s[self.layout.slot("gateway")]
        parts = [f"{r}:{STATE_NAMES[int(s[i]['state'])]}" for i, r in enumerate(self.layout.roles())]
        return f"ticks={int(gw['ticks'])} orders={int(gw['orders'])} " + " ".join(parts)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)
        try:
            self.setup()
            return self.loop()
        finally:
            self.cleanup()

    def loop(self) -> int:
        ready = False
        last_ping = last_status = 0.0
        while not self.stopping:
            healthy = all([self.check(p) for p in self.procs.values()])
            now = time.monotonic()
            if healthy and not ready:
                ready = True
                self.notify("READY=1")
                self.log("ready", status=self.status_line())
            if healthy and self.watchdog_s is not None and now - last_ping >= self.watchdog_s:
                self.notify("WATCHDOG=1")
                last_ping = now
            if now - last_status >= 1.0:
                self.notify(f"STATUS={self.status_line()}")
                last_status = now
            if self.reload_requested:
                self.reload_requested = False
                self.reload()
            if self.hb.slots[self.layout.slot("gateway")]["state"] == FEED_DONE:
                self.log("feed_done", status=self.status_line())
                break
            time.sleep(POLL_S)
        return self.shutdown()

    # ---- signals and commands

    def _on_stop(self, *_: Any) -> None:
        self.stopping = True

    def _on_hup(self, *_: Any) -> None:
        self.reload_requested = True

    def send(self, role: str, message: tuple) -> None:
        p = self.procs[role]
        if p.control is not None:
            with contextlib.suppress(BrokenPipeError, OSError):  # restarting: messages are not queued
                p.control.send(message)

    def reload(self) -> None:
        if self.config_path is None:
            self.log("reload_skipped", why="running on the embedded defaults: no file to reload")
            return
        try:
            new = configuration.load(self.config_path)
        except ConfigError as e:
            self.log("reload_refused", why=str(e))
            return
        self.config = dataclasses.replace(self.config, risk=new.risk)
        self.send("risk", ("reload", new.risk))
        self.log("reloaded", file=self.config_path)

    # ---- stop

    def shutdown(self) -> int:
        """Stop the feed, drain, stop everyone (each flushes its state), within the bound."""
        self.notify("STOPPING=1")
        deadline = time.monotonic() + self.config.system.shutdown_timeout_s
        self.log("stopping", status=self.status_line())
        self.send("gateway", ("stop_feed",))
        quiet = 0
        while quiet < 3 and time.monotonic() < deadline - self.config.system.shutdown_timeout_s / 2:
            depth = sum(r.stats()["depth"] for r in self.rings)
            quiet = quiet + 1 if depth == 0 else 0
            time.sleep(POLL_S)
        for role in ["gateway", *(r for r in self.procs if r.startswith("worker-")), "coordinator", "risk"]:
            self.send(role, ("stop",))
        clean = True
        for p in self.procs.values():
            if p.process is None or p.restart_at is not None:
                continue
            p.process.join(max(0.0, deadline - time.monotonic()))
            if p.process.is_alive():
                clean = False
                p.process.kill()
                p.process.join(1)
            elif p.process.exitcode != 0:
                clean = False
        left = sum(r.stats()["depth"] for r in self.rings)
        self.log("stopped", clean=clean, undrained_records=left)
        return 0 if clean else 1

    def cleanup(self) -> None:
        for p in getattr(self, "procs", {}).values():
            if p.process is not None and p.process.is_alive():
                p.process.kill()
                p.process.join(1)
        for r in getattr(self, "rings", []):
            r.close()
        if hasattr(self, "board"):
            self.board.close()
        if hasattr(self, "hb"):
            self.hb.close()
        if hasattr(self, "store"):
            self.store.close()
