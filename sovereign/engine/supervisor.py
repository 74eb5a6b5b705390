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
import re
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import sdnotify  # type: ignore[import-untyped]

from sovereign import __version__
from sovereign import config as configuration
from sovereign.config import Config, ConfigError
from sovereign.core import LAYOUT_VERSION, OrderRing, QuoteBoard, RingError, SignalRing, TickRing
from sovereign.engine.control import COMMANDS, ControlServer, Request, socket_path
from sovereign.engine.metrics import MetricsBoard
from sovereign.engine.runtime import (
    FEED_DONE,
    LATENCY_WINDOW_S,
    ORDER_RING,
    SIGNAL_RING,
    STARTING,
    STATE_NAMES,
    TICK_RING,
    Child,
    Heartbeats,
    Layout,
    check_shm_room,
    out_of_shm,
    reclaim_segments,
    shm_prefix,
    shm_ran_out,
    tolerant_output,
)
from sovereign.engine.sidecar import Sidecar
from sovereign.engine.venue import venue_symbols
from sovereign.market.feeds import feed_symbols
from sovereign.presets import check_sets, count_agents
from sovereign.state import views
from sovereign.state.archive import Archiver
from sovereign.state.orders import claim_open_index
from sovereign.state.recorder import new_session
from sovereign.state.schema import BRIDGE_STATUS_KEY, META_SYMBOLS
from sovereign.state.store import StateError, StateLock, StateStore, Txn, compact_due, compact_if_needed
from sovereign.text import MAX_FIELD, clean

POLL_S = 0.05
MAX_BACKOFF_S = 30.0
START_GRACE_S = 60.0  # a process may take this long to reach RUNNING (imports, agents, snapshot)
# The most LMDB pages in use the supervisor copies while the system runs (every process's writes
# wait for the copy: about 1 s here at this size, against a 10 s heartbeat and systemd's 30 s
# watchdog); a larger state is compacted at the next start.
ONLINE_COMPACT_MAX = 1 << 30


def child_main(role: str, config: Config, layout: Layout, control: Connection) -> None:
    """Entry point of every child process (spawned: a fresh interpreter, nothing inherited)."""
    tolerant_output()
    child = Child(role, layout, control)
    try:
        if role == "gateway" and config.broker.kind == "mt5":  # the terminal is feed and broker
            from sovereign.engine import venue

            venue.run(child, config)
        elif role == "gateway":
            from sovereign.engine import gateway

            gateway.run(child, config)
        elif role == "coordinator":
            from sovereign.engine import coordinator

            coordinator.run(child, config)
        elif role == "risk":
            from sovereign.engine import risk

            risk.run(child, config)
        else:
            from sovereign.engine import worker

            worker.run(child, config, int(role.split("-")[1]))
    except Exception:
        traceback.print_exc()
        # Out now, without the interpreter's finalization: a daemon thread still inside a
        # C++ call (the gateway's broker side waiting on the approved ring) is ended by it
        # with a forced unwind, which aborts the process (SIGABRT, "terminate called without
        # an active exception") instead of exiting 1. What is durable is in LMDB already.
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(1)


READER_CHECK_S = 60.0  # how often LMDB readers of dead processes are cleared


@dataclass
class Proc:
    role: str
    process: Any = None
    control: Connection | None = None
    spawned: float = 0.0
    restarts: int = 0
    restart_at: float | None = None  # scheduled restart (backoff)
    recent: list[float] = dataclasses.field(default_factory=list)
    queued: list[tuple] = dataclasses.field(default_factory=list)  # for the next spawn (backoff)
    why: str = ""  # why it was last restarted


@dataclass
class Pending:
    """A CLI request waiting for risk's answer."""

    conn_id: int
    cmd: str


class Supervisor:
    def __init__(self, config: Config, config_path: str | None = None, telegram: bool = True):
        self.config = config
        self.config_path = config_path
        self.writes_resumed_ns = 0  # monotonic: when the last online compaction let writers go on
        self.compact_failing = ""  # the last compaction failure reported (each reason once, figures aside)
        self.telegram = telegram  # start the Telegram bot when [telegram] enables it
        self.sidecars: list[Sidecar] = []
        self.stopping = False
        self.reload_requested = False
        self.notifier = sdnotify.SystemdNotifier()
        watchdog_usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
        # ping at a quarter of WatchdogSec: well inside half of it, even with a slow loop turn
        self.ping_every_s = watchdog_usec / 4e6 if watchdog_usec > 0 else None
        self.ctx = mp.get_context("spawn")
        self.phase = "starting"
        self.pending: dict[int, Pending] = {}
        self.next_request = 1
        self.rates: dict[str, float] = {}
        self._sample: tuple[float, dict[str, int]] | None = None

    def notify(self, text: str) -> None:
        self.notifier.notify(text)

    def log(self, event: str, **fields: Any) -> None:
        """One structured line per event (systemd's journal keeps stdout), and the same in
        the journal. Text is escaped and bounded (sovereign.text): a value never starts a
        line of its own."""
        fields = {k: clean(v, MAX_FIELD) if isinstance(v, str) else v for k, v in fields.items()}
        print(f"sovereign: {event} " + " ".join(f"{k}={clean(v, MAX_FIELD)}" for k, v in fields.items()),
              flush=True)  # fmt: skip
        try:
            self.store.write(lambda t: t.journal(event, **fields))
        except StateError as e:  # a full state disk: supervising goes on, its entry is lost
            print(f"sovereign: journal_write_failed event={event} why={clean(str(e), MAX_FIELD)}", flush=True)

    # ---- start

    def setup(self) -> None:
        c = self.config
        # One system per state directory, whatever its runtime directory: held until the end.
        # Processes of an earlier system whose supervisor died drain for up to its shutdown
        # timeout (they are told by PR_SET_PDEATHSIG): wait for them, then the state is ours.
        self.lock = StateLock(c.system.state_dir, "a running sovereign supervisor",
                              wait_s=c.system.shutdown_timeout_s + 5)  # fmt: skip
        # nothing has the state open yet: the one moment LMDB's file can be compacted
        compacted = compact_if_needed(c.system.state_dir, c.retention.compact_free_ratio)
        self.store = StateStore(c.system.state_dir)
        # the control socket first: a second supervisor on the same state stops here
        self.server = ControlServer(socket_path(c.system.state_dir, c.system.runtime_dir), COMMANDS)
        prefix = shm_prefix(self.store, c.system.state_dir)
        reclaimed = reclaim_segments(prefix)  # every one is a dead system's: the state is locked
        # The state's symbol ids stay theirs (positions, books, orders and snapshots are keyed by
        # them), new names follow; a replay's files are read here, every row validated.
        stored = self.store.read(lambda t: t.get("meta", META_SYMBOLS))
        names = venue_symbols(c, stored) if c.broker.kind == "mt5" else feed_symbols(c, stored)
        unmatched = check_sets(c, names)  # ConfigError (exit 2) for a set naming no symbol
        n_agents = count_agents(c, names)
        self.layout = layout = Layout.plan(c, prefix, len(names), names, new_session(),
                                           str(Path(c.system.state_dir).absolute()))  # fmt: skip
        check_shm_room(layout)

        def meta(t: Txn) -> int:  # what the CLI and a later replay need to know about this run
            rebuilt = claim_open_index(t, (t.get("meta", "supervisor") or {}).get("session"), layout.session)
            t.put("meta", META_SYMBOLS, list(names))  # the stored list, with new names after it
            t.put("meta", "layout_version", LAYOUT_VERSION)
            t.put("meta", "config", dataclasses.asdict(c))
            t.put("meta", "config_path", self.config_path)
            t.put("meta", "supervisor", {"pid": os.getpid(), "started_ns": time.time_ns(),
                                         "session": layout.session, "shm_prefix": prefix})  # fmt: skip
            return rebuilt

        rebuilt = self.store.write(meta)
        if rebuilt >= 0:
            self.log("open_orders_indexed", open_orders=rebuilt,
                     why="the index is built anew: its state was last run without it (a first run of this "
                         "version, or a release rolled back to)")  # fmt: skip
        if compacted:
            self.log("state_compacted", **compacted)
        for warning in unmatched:
            self.log("agent_set_unmatched", why=warning)
        self.archiver = Archiver.for_config(self.store, c)
        if reclaimed:
            self.log("shm_reclaimed", segments=len(reclaimed), bytes=sum(reclaimed.values()),
                     why="left by an earlier run of this state that died")  # fmt: skip
        self.rings: list[Any] = []
        self.ring_names: list[str] = []
        try:
            self.create_shm()
        except (OSError, RingError) as e:
            if out_of_shm(e):
                raise shm_ran_out(layout, e) from None
            raise
        # Here, not at the top: every child imports this module (child_main), and none needs
        # prometheus_client (a tenth of a second of each one's start).
        from sovereign.engine.exporter import LISTEN_ENV, Collector, Exporter

        self.exporter = Exporter(Collector(layout, c, self.hb, self.metrics, self.board,
                                           list(zip(self.ring_names, self.rings, strict=True)), time.time(),
                                           __version__))  # fmt: skip
        listen = os.environ.get(LISTEN_ENV)  # where set, in place of the config's (the tests)
        key = "config key metrics.listen" if listen is None else f"environment variable {LISTEN_ENV}"
        metrics_url = self.exporter.listen(c.metrics.listen if listen is None else listen, key)
        self.lock.share()  # the children join the state (StateUser) and hold it while they live
        # consumers first, so nothing is produced into a ring nobody reads yet
        order = ["risk", "coordinator", *(r for r in layout.roles() if r.startswith("worker-")), "gateway"]
        self.procs = {role: Proc(role) for role in order}
        for p in self.procs.values():
            self.spawn(p)
        self.start_sidecars()
        self.log("started", workers=layout.n_workers, symbols=layout.n_symbols,
                 cores=",".join(map(str, layout.worker_cores)), agents=n_agents,
                 metrics=metrics_url or "off")  # fmt: skip

    def create_shm(self) -> None:
        """Every ring, the quote board and the heartbeat board, each one's pages reserved."""
        layout = self.layout
        for k in range(layout.n_workers):
            self.rings.append(TickRing.create(layout.tick_ring(k), TICK_RING, "wait"))
            # a stale signal is worthless: never block a worker on it, count drops instead
            self.rings.append(SignalRing.create(layout.signal_ring(k), SIGNAL_RING, "drop"))
            self.ring_names += [f"ticks-{k}", f"signals-{k}"]
        for name in (layout.intents, layout.approved, layout.reports_risk, layout.reports_coordinator):
            self.rings.append(OrderRing.create(name, ORDER_RING, "wait"))
            self.ring_names.append(name.removeprefix(layout.prefix + "-"))
        self.board = QuoteBoard.create(layout.quotes, layout.n_symbols)
        self.hb = Heartbeats(layout.heartbeats, len(layout.roles()))
        self.metrics = MetricsBoard(layout.metrics, len(layout.roles()))

    def spawn(self, p: Proc) -> None:
        mine, theirs = self.ctx.Pipe()
        p.process = self.ctx.Process(target=child_main, args=(p.role, self.config, self.layout, theirs),
                                     name=f"sovereign-{p.role}", daemon=False)  # fmt: skip
        p.process.start()
        theirs.close()
        p.control, p.spawned, p.restart_at = mine, time.monotonic(), None
        for message in p.queued:  # read by the new process once its loop runs
            mine.send(message)
        p.queued.clear()

    # ---- watch

    def health(self, p: Proc) -> str:
        """'ok', 'starting', 'dead' or 'hung'."""
        if p.process is None or p.restart_at is not None or not p.process.is_alive():
            return "dead"
        slot = self.hb.slots[self.layout.slot(p.role)]
        if slot["pid"] != p.process.pid or slot["state"] == STARTING:
            return "hung" if time.monotonic() - p.spawned > START_GRACE_S else "starting"
        # a process whose writes waited for a compaction beats again from its end
        age = (time.monotonic_ns() - max(int(slot["beat_ns"]), self.writes_resumed_ns)) / 1e9
        return "hung" if age > self.config.system.heartbeat_timeout_s else "ok"

    def check(self, p: Proc) -> bool:
        """Restart p if it died or hung; True if it is healthy."""
        now = time.monotonic()
        if p.restart_at is not None:
            if now >= p.restart_at:
                self.spawn(p)
            return False
        state = self.health(p)
        self.metrics.slots["up"][self.layout.slot(p.role)] = state == "ok"
        if state in ("ok", "starting"):
            return state == "ok"
        if state == "hung":
            os.kill(p.process.pid, signal.SIGKILL)
            p.process.join(5)
        p.recent = [t for t in p.recent if now - t < 300] + [now]
        delay = min(MAX_BACKOFF_S, 0.5 * 2 ** (len(p.recent) - 1))
        p.restarts += 1
        p.why = state
        self.hb.slots[self.layout.slot(p.role)]["restarts"] = p.restarts
        self.log("restart", process=p.role, why=state, exitcode=p.process.exitcode, delay_s=delay,
                 restarts=p.restarts)  # fmt: skip
        p.restart_at = now + delay
        return False

    def status_line(self) -> str:
        """What the system is doing, in one line (systemd's STATUS=, `systemctl status`)."""
        s = self.hb.slots
        down = [p.role for p in self.procs.values() if self.health(p) != "ok"]
        r = self.rates
        flow = (f"{r.get('ticks', 0):,.0f} ticks/s, {r.get('signals', 0):,.0f} signals/s, "
                f"{r.get('orders', 0):,.1f} orders/s")  # fmt: skip
        gw = s[self.layout.slot("gateway")]
        total = f"{int(gw['ticks']):,} ticks, {int(gw['orders']):,} orders so far"
        if self.phase == "running" and down:
            waiting = ", ".join(f"{role} ({self.procs[role].why or self.health(self.procs[role])})"
                                for role in down)  # fmt: skip
            return f"degraded: restarting {waiting}; {flow}; {total}"
        if self.phase == "starting":
            return f"starting: waiting for {', '.join(down) or 'nothing'}"
        if self.phase == "running" and int(gw["state"]) == FEED_DONE:
            return f"feed finished: draining; {total}"
        if self.phase == "running":
            return f"trading: {flow}; {total}; all {len(self.procs)} processes healthy"
        return f"{self.phase}: {total}"

    def sample(self) -> None:
        """Counters per second since the last sample."""
        slots, now = self.hb.slots, time.monotonic()
        counters = {
            "ticks": int(slots[self.layout.slot("gateway")]["ticks"]),
            "signals": int(slots[self.layout.slot("coordinator")]["signals"]),
            "orders": int(slots[self.layout.slot("gateway")]["orders"]),
        }
        if self._sample is not None:
            t0, c0 = self._sample
            dt = max(now - t0, 1e-6)
            self.rates = {k: max(0, v - c0[k]) / dt for k, v in counters.items()}
        self._sample = (now, counters)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)
        tolerant_output()
        try:
            self.setup()
            try:
                return self.loop()
            except Exception:  # a defect or the disk: the children still drain, as at a stop
                traceback.print_exc()
                self.notify("STATUS=failed: draining the processes before exiting")
                self.shutdown()
                return 1
        finally:
            self.cleanup()

    def loop(self) -> int:
        last_ping = last_status = next_reader_check = 0.0
        next_compact_check = time.monotonic() + self.config.retention.interval_s  # (at start: setup did)
        was_healthy = False
        while not self.stopping:
            healthy = all([self.check(p) for p in self.procs.values()])
            now = time.monotonic()
            if healthy != was_healthy:  # say so at once, not at the next second: a restart can be quick
                was_healthy, last_status = healthy, 0.0
            if healthy and self.phase == "starting":
                self.phase = "running"
                self.notify("READY=1")
                self.log("ready", status=self.status_line())
            if healthy and self.ping_every_s is not None and now - last_ping >= self.ping_every_s:
                self.notify("WATCHDOG=1")
                last_ping = now
            if now - last_status >= 1.0:
                self.sample()
                self.notify(f"STATUS={self.status_line()}")
                last_status = now
            if now >= next_reader_check:  # a process killed inside a read would pin old pages forever
                next_reader_check = now + READER_CHECK_S
                cleared = self.store.clear_stale_readers()
                if cleared:
                    self.log("stale_readers_cleared", count=cleared)
            for side in self.sidecars:
                if (exited := side.check()) is not None:
                    self.log("sidecar_exited", **exited)
            for event, fields in self.archiver.tick(now):  # history past the retention, a piece at a time
                self.log(event, **fields)
            if now >= next_compact_check:  # the pages archiving freed, given back while trading goes on
                next_compact_check = now + self.config.retention.interval_s
                self.compact_state(forced=False)
            if self.reload_requested:
                self.reload_requested = False
                self.reload()
            if self.hb.slots[self.layout.slot("gateway")]["state"] == FEED_DONE:
                self.log("feed_done", status=self.status_line())
                break
            self.serve(POLL_S if not self.pending else 0.005)
        return self.shutdown()

    # ---- signals and commands

    def _on_stop(self, *_: Any) -> None:
        self.stopping = True

    def _on_hup(self, *_: Any) -> None:
        self.reload_requested = True

    def send(self, role: str, message: tuple) -> None:
        """Deliver a control message; one for a process waiting to be restarted is kept
        for its next start, so a halt is never lost to a restart."""
        p = self.procs[role]
        if p.restart_at is not None or p.control is None:
            p.queued.append(message)
            return
        try:
            p.control.send(message)
        except (BrokenPipeError, OSError):  # it just died: the restart delivers it
            p.queued.append(message)

    def reload(self, conn_id: int | None = None) -> None:
        if self.config_path is None:
            why = "running on the embedded defaults: there is no config file to reload"
            self.log("reload_skipped", why=why)
            if conn_id is not None:
                self.server.answer(conn_id, error=why)
            return
        try:
            new = configuration.load(self.config_path)
        except ConfigError as e:
            self.log("reload_refused", why=str(e))
            if conn_id is not None:
                self.server.answer(conn_id, error=f"reload refused, the old limits stay: {e}")
            return
        self.config = dataclasses.replace(self.config, risk=new.risk)
        self.log("reloaded", file=self.config_path)
        if conn_id is None:
            self.send("risk", ("reload", new.risk))
        else:
            self.ask_risk(conn_id, "reload", ("reload", new.risk))

    # ---- the control socket

    def serve(self, timeout: float) -> None:
        """Answer the CLI: wait up to timeout for requests, and collect risk's answers."""
        for req in self.server.poll(timeout):
            try:
                self.handle(req)
            except Exception as e:  # a bad request must never take the supervisor down
                self.server.answer(req.conn_id, error=f"{req.cmd}: {type(e).__name__}: {e}")
        for rid in [rid for rid, p in self.pending.items() if p.conn_id not in self.server.clients]:
            del self.pending[rid]  # its client timed out and left: risk's answer has nobody to go to
        risk = self.procs["risk"]
        if risk.control is None:
            return
        try:
            while risk.control.poll():
                msg = risk.control.recv()
                if msg[0] == "reply" and msg[1] in self.pending:
                    self.answered(self.pending.pop(msg[1]), msg[2])
        except (EOFError, OSError):  # risk died; its restart gets a new pipe
            pass

    def ask_risk(self, conn_id: int, cmd: str, message: tuple) -> None:
        rid = self.next_request
        self.next_request += 1
        self.pending[rid] = Pending(conn_id, cmd)
        self.send("risk", ("request", rid, *message))

    def handle(self, req: Request) -> None:
        """A request that fits COMMANDS (the server checked every argument's type)."""
        a, cid = req.args, req.conn_id
        if self.phase == "stopping":
            self.server.answer(cid, error="the system is stopping")
        elif req.cmd == "ping":
            self.server.answer(cid, {"pid": os.getpid(), "phase": self.phase})
        elif req.cmd == "status":
            if self.health(self.procs["risk"]) == "ok":
                self.ask_risk(cid, "status", ("account",))
            else:
                self.answered(Pending(cid, "status"), self.store.read(views.account))
        elif req.cmd == "halt":
            flatten, reason = a.get("flatten", False), clean(a.get("reason") or "operator halt")
            self.log("operator", command="halt", flatten=flatten, reason=reason)
            self.ask_risk(cid, "halt", ("halt", flatten, reason))
        elif req.cmd == "resume":
            self.log("operator", command="resume")
            self.ask_risk(cid, "resume", ("resume",))
        elif req.cmd == "flatten":
            self.flatten(cid, a.get("symbol"), a.get("all", False))
        elif req.cmd == "quotes":
            wanted = [x for x in a.get("symbols", []) if 0 <= x < self.layout.n_symbols]
            quotes = {str(x): dict(zip(("ts_ns", "bid", "ask", "recv_ns"), self.board.read(x), strict=True))
                      for x in wanted}  # fmt: skip
            self.server.answer(cid, {k: v for k, v in quotes.items() if v["ts_ns"]})
        elif req.cmd == "reload":
            self.log("operator", command="reload")
            self.reload(cid)
        elif req.cmd == "metrics":
            self.server.answer(cid, self.exporter.text())
        elif req.cmd == "positions":
            self.server.answer(cid, self.positions())
        elif req.cmd == "orders":
            open_only = a.get("open", False)
            self.server.answer(cid, self.store.read(lambda t: views.orders(t, open_only=open_only, limit=30)))
        elif req.cmd == "compact":
            self.log("operator", command="compact")
            try:
                self.server.answer(cid, self.compact_state(forced=True))
            except StateError as e:
                self.server.answer(cid, error=str(e))
        elif req.cmd == "pnl":
            r, now_ns = self.config.risk, self.board.newest_ts()  # market time, as risk's days
            pnl = self.store.read(lambda t: views.pnl(t, now_ns, r.day_timezone, r.day_start))
            self.server.answer(cid, pnl)
        else:
            self.server.answer(cid, error=f"{req.cmd}: in the command table but not handled here")

    def compact_state(self, forced: bool) -> dict[str, Any] | None:
        """Compact the LMDB file while the system runs (StateStore.compact: the processes'
        writes wait for the copy, then each opens the new file): when its free pages pass
        retention.compact_free_ratio, or at once when forced (an operator's command). What
        it did, or None; a failure (a full disk) is logged once per reason, and it is tried
        again at the next check."""
        try:
            use = self.store.usage()
            if not forced and not compact_due(use, self.config.retention.compact_free_ratio):
                return None
            if use["used_bytes"] > ONLINE_COMPACT_MAX:
                raise StateError(f"the state has {use['used_bytes'] >> 20} MiB in use: copying it while the "
                                 f"system runs would stall every process's writes for seconds; it is "
                                 f"compacted at the next start (or stop it and run `sovereign state "
                                 f"compact`)")  # fmt: skip
            if self.ping_every_s is not None:
                self.notify("WATCHDOG=1")  # the copy's time is not the watchdog's
            try:
                done = self.store.compact()
            finally:
                self.writes_resumed_ns = time.monotonic_ns()
        except StateError as e:
            reason = re.sub(r"\d[\d.,]*", "#", str(e))  # "0 MiB in use", then "1 MiB": one reason
            if reason != self.compact_failing:
                self.compact_failing = reason
                self.log("compact_failed", why=str(e))
            if forced:
                raise
            return None
        self.compact_failing = ""
        done = {**done, "online": True}
        self.log("state_compacted", **done)
        return done

    def flatten(self, cid: int, symbol: str | None, everything: bool) -> None:
        """Close one symbol's position, or every position: "all" must be asked for by name,
        never by leaving the symbol out (risk takes None as all)."""
        if symbol is None and not everything:
            self.server.answer(cid, error="flatten: say which: a symbol, or all (\"all\": true)")
            return
        if symbol is not None and everything:
            self.server.answer(cid, error="flatten: a symbol or all, not both")
            return
        index = None
        if symbol is not None:
            if symbol not in self.layout.symbol_names:
                names = self.layout.symbol_names
                self.server.answer(cid, error=f"unknown symbol '{clean(symbol, 40)}'; known: "
                                              f"{clean(', '.join(names[:20]), MAX_FIELD)}"
                                              f"{' ...' if len(names) > 20 else ''}")  # fmt: skip
                return
            index = self.layout.symbol_names.index(symbol)
        self.log("operator", command="flatten", symbol="all" if index is None else symbol)
        self.ask_risk(cid, "flatten", ("flatten", index))

    def answered(self, p: Pending, account: dict[str, Any]) -> None:
        if p.cmd != "status":
            self.server.answer(p.conn_id, account)
            return
        now_ns = time.monotonic_ns()
        procs = []
        for role, proc in self.procs.items():
            s = self.hb.slots[self.layout.slot(role)]
            procs.append({
                "role": role, "pid": int(s["pid"]), "core": None if s["core"] < 0 else int(s["core"]),
                "state": STATE_NAMES[int(s["state"])], "health": self.health(proc),
                "uptime_s": time.monotonic() - proc.spawned,  # monotonic: an NTP step does not show
                "heartbeat_age_s": (now_ns - int(s["beat_ns"])) / 1e9,
                "restarts": proc.restarts, "why": proc.why, "ticks": int(s["ticks"]),
                "signals": int(s["signals"]),
                "orders": int(s["orders"]), "rejects": int(s["rejects"]), "dropped": int(s["dropped"]),
            })  # fmt: skip
        g = self.hb.slots[self.layout.slot("gateway")]
        latency = {"window_s": LATENCY_WINDOW_S, "n": int(g["latency_n"]),
                   **{f"p{q}_us": int(g[f"latency_p{q}_ns"]) / 1e3 for q in (50, 99)}}  # fmt: skip
        rings = [{"name": n, **{k: r.stats()[k] for k in ("depth", "capacity", "dropped", "high_water")}}
                 for n, r in zip(self.ring_names, self.rings, strict=True)]  # fmt: skip
        self.server.answer(p.conn_id, {
            "phase": self.phase, "status": self.status_line(), "supervisor_pid": os.getpid(),
            "processes": procs, "rings": rings, "rates": self.rates, "account": account,
            "tick_to_order": latency, "newest_quote_age_s": self.quote_age(),
            "metrics": self.exporter.url or None,
            "bridge": self.bridge(),
            "symbols": self.layout.n_symbols, "workers": self.layout.n_workers,
        })  # fmt: skip

    def bridge(self) -> dict[str, Any] | None:
        """broker.kind = "mt5": whether the terminal is connected, and why not, as the gateway
        last said (None for the paper broker)."""
        if self.config.broker.kind != "mt5":
            return None
        said = self.store.read(lambda t: t.get("bridge", BRIDGE_STATUS_KEY))
        return said or {"connected": False, "why": "the gateway has not said yet"}

    def quote_age(self) -> float | None:
        """Seconds since the gateway put the newest quote on the board (None: no quote yet),
        by the monotonic clock the gateway stamps them with (recv_ns)."""
        heard = int(self.board.snapshot()["recv_ns"].max(initial=0))
        return (time.monotonic_ns() - heard) / 1e9 if heard else None

    # ---- stop

    def shutdown(self) -> int:
        """Stop the feed, drain, stop everyone (each flushes its state), within the bound."""
        self.phase = "stopping"
        for side in self.sidecars:  # told first (it would only report the system going away); it
            side.terminate()  # sends what it has left while the processes drain
        self.notify("STOPPING=1")
        self.notify(f"STATUS={self.status_line()}")
        for waiting in self.pending.values():
            self.server.answer(waiting.conn_id, error="the system is stopping")
        self.pending.clear()
        deadline = time.monotonic() + self.config.system.shutdown_timeout_s
        self.log("stopping", status=self.status_line())
        for p in self.procs.values():  # each must drain what it was sent, and risk needs the gateway
            self._revive(p)
        self.send("gateway", ("stop_feed",))
        quiet = 0
        while quiet < 3 and time.monotonic() < deadline - self.config.system.shutdown_timeout_s / 2:
            depth = sum(r.stats()["depth"] for r in self.rings)
            quiet = quiet + 1 if depth == 0 else 0
            self.serve(POLL_S)  # answers "stopping"
        # Then stop in the direction records flow: a process is told to stop only after
        # everything upstream of it has exited, and drains its inputs before it exits, so
        # nothing can arrive after its consumer has gone. The gateway goes last: it sends
        # the orders risk approved while draining. Its last reports may find risk and the
        # coordinator gone: risk waits for the reports of what it approved; the
        # coordinator's are left unread (it rebuilds its positions from risk's book at
        # start). A process found dead or waiting out a restart backoff was started again
        # above, at once, to drain what it was sent.
        workers = [r for r in self.procs if r.startswith("worker-")]
        clean = True
        for stage in (workers, ["coordinator"], ["risk"], ["gateway"]):
            for role in stage:
                self.send(role, ("stop",))
            for role in stage:
                clean = self._join(self.procs[role], deadline) and clean
        stats = dict(zip(self.ring_names, (r.stats()["depth"] for r in self.rings), strict=True))
        unread = stats.pop("reports-coord", 0)
        self.log("stopped", clean=clean, undrained_records=sum(stats.values()), unread_reports=unread)
        return 0 if clean else 1

    def _revive(self, p: Proc) -> None:
        """Stopping: start a dead process again (at once, no backoff) so that it drains."""
        if p.process is not None and p.restart_at is None and p.process.is_alive():
            return
        if p.process is not None and p.restart_at is None:  # died since the last check
            p.restarts += 1
            self.hb.slots[self.layout.slot(p.role)]["restarts"] = p.restarts
        code = None if p.process is None else p.process.exitcode
        self.log("restart", process=p.role, why="stopping: to drain its inputs", exitcode=code, delay_s=0,
                 restarts=p.restarts)  # fmt: skip
        self.spawn(p)

    def _join(self, p: Proc, deadline: float) -> bool:
        """Wait for a stopping process until the deadline (then kill it); True if it exited
        by itself with status 0."""
        if p.process is None:
            return True
        while p.process.is_alive() and time.monotonic() < deadline:
            p.process.join(POLL_S)
            self.serve(0)  # answers "stopping"
        if p.process.is_alive():
            p.process.kill()
            p.process.join(1)
            return False
        return p.process.exitcode == 0

    def start_sidecars(self) -> None:
        """The Telegram bot, when [telegram] enables it and `run --no-telegram` did not turn
        it off (systemd runs it in a unit of its own): told this system's socket and token
        file by absolute path (the supervisor works in /)."""
        tg = self.config.telegram
        if not (tg.enabled and self.telegram and self.config_path):
            return
        c = self.config.system
        argv = [sys.executable, "-m", "sovereign.cli", "telegram", "--config", self.config_path,
                "--socket", str(socket_path(c.state_dir, c.runtime_dir)),
                "--outbox", str(Path(c.state_dir).absolute() / "telegram-outbox.json")]  # fmt: skip
        if tg.token_file:
            argv += ["--token-file", tg.token_file]
        pinned = [core for core in self.layout.worker_cores if core is not None]
        self.sidecars.append(Sidecar("telegram", argv, avoid_cores=pinned))
        for side in self.sidecars:
            side.start()

    def positions(self) -> list[dict[str, Any]]:
        """Open positions, each with the quote it would close at now (bid for a long)."""
        rows = self.store.read(views.positions)
        for r in rows:
            if 0 <= r["symbol"] < self.layout.n_symbols:
                ts, bid, ask, _ = self.board.read(r["symbol"])
                r["price"] = (bid if r["side"] == "BUY" else ask) if ts else None
        return rows

    def cleanup(self) -> None:
        for side in getattr(self, "sidecars", []):
            side.stop(timeout=2.0)
        for p in getattr(self, "procs", {}).values():
            if p.process is not None and p.process.is_alive():
                p.process.kill()
                p.process.join(1)
        if hasattr(self, "exporter"):  # first: it reads the boards and rings
            self.exporter.close()
        for r in getattr(self, "rings", []):
            r.close()
        if hasattr(self, "board"):
            self.board.close()
        if hasattr(self, "hb"):
            self.hb.close()
        if hasattr(self, "metrics"):
            self.metrics.close()
        if hasattr(self, "server"):
            self.server.close()
        if hasattr(self, "store"):
            self.store.close()
        if hasattr(self, "lock"):
            self.lock.release()
