"""Replay a live session to the same decisions: its recorded ticks through the live
components (AgentPool, Coordinator, Risk, PaperBroker) in one process, on the schedule
the live processes kept, compared with what the live system decided (its LMDB state).

What is taken from the recording (sovereign/state/recorder.py):
- the ticks, in the order the gateway received them, and the config the session ran with;
- the schedule, from each process's event log: which signals and reports the coordinator
  took together, and the ids it gave its intents; each batch of intents and reports risk
  took, with the clock and the quotes it read (risk reads the quote board while the feed
  runs on, so the quote it sizes with is an input, and each one is checked against the
  recorded ticks); the tick position at which the gateway sent each batch of orders and
  filled stops and targets; the state each process started from (and restarted from).

Everything else is recomputed: the signals (every field but origin_ns, the receive
clock), the intents, risk's approvals, refusals and sizes, every fill, exit and its P&L.
They are compared with the live state: signals, orders by client id, executions by
client id or deal ticket. Any difference is listed; none is expected, so any is a defect.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np

from sovereign.broker.paper import Execution, PaperBroker
from sovereign.config import Config, RiskConfig, from_dict
from sovereign.core import ORDER_DTYPE, SIGNAL_DTYPE, TICK_DTYPE
from sovereign.engine.coordinator import Coordinator
from sovereign.engine.gateway import execute, make_broker, recovered_report, report_of
from sovereign.engine.risk import Risk, apply_command
from sovereign.engine.worker import build_pool
from sovereign.market.data import DataError
from sovereign.market.datafile import Market, open_file
from sovereign.model import Reason
from sovereign.state.recorder import read_events, recordings, session_of
from sovereign.state.schema import exec_key
from sovereign.symbols import symbol_specs

SIGNAL_FIELDS = [n for n in SIGNAL_DTYPE.names or () if n != "origin_ns"]
ROLES = ("gateway", "risk", "coordinator")
UNLOGGED_ID = 1 << 62  # ids for intents the live session never made (a difference)


@dataclass
class Session:
    """One recorded session: its ticks, config, event logs and where they lie."""

    name: str
    market: Market
    config: Config
    directory: Path
    events: dict[str, list[list[Any]]]
    issues: list[str]


def sessions(path: str | Path) -> list[str]:
    """The sessions recorded at `path` (a recordings directory), oldest first."""
    return sorted({s for f in recordings(path) if (s := session_of(f)) is not None})


def load_session(path: str | Path, session: str | None = None) -> Session:
    """A recorded session: `path` is one of its tick files, or the recordings directory
    (then `session`, or the newest)."""
    p = Path(path)
    if not p.is_dir():
        named = session_of(p)
        if named is None:
            open_file(p)  # says what is wrong with it
            raise DataError(f"{p}: not a recording (named ticks-<day>-<session>.sovdata)")
        session, p = named, p.parent
    found = sessions(p)
    if not found:
        raise DataError(f"{path}: no recordings (ticks-*.sovdata) here")
    if session is None:
        session = found[-1]
    elif session not in found:
        raise DataError(f"{path}: no session {session}; recorded here: {', '.join(found)}")
    files = [f for f in recordings(p) if session_of(f) == session]
    parts = [open_file(f) for f in files]
    first = parts[0]
    if "config" not in first.meta:
        raise DataError(f"{files[0]}: not a recording (its header has no config)")
    records = np.concatenate([np.asarray(m.records) for m in parts])
    issues = [f"{f}:{line}: {what}" for m in parts for f, line, what in m.issues]
    market = Market("ticks", records, first.names, [i for m in parts for i in m.issues], first.meta)
    try:
        events, more = read_events(p, session)
    except ValueError as e:
        raise DataError(str(e)) from None
    return Session(session, market, from_dict(first.meta["config"]), p, events, issues + more)


class _Fifo:
    """A ring between two processes, as a list: what was produced, and how much was taken.

    A process killed between logging an event and pushing what it made never pushed it:
    `caps` are the ring's pushed counts logged by each restart of the producer, so what
    the replay's producer makes beyond the next one is dropped as it is made."""

    def __init__(self) -> None:
        self.items: list[np.void] = []
        self.taken = 0
        self.caps: list[int] = []

    def __len__(self) -> int:
        return len(self.items) - self.taken

    def put(self, records: np.ndarray) -> np.ndarray:
        """Adds what the producer pushed; returns what it never pushed (killed first)."""
        room = max(self.caps[0] - len(self.items) if self.caps else len(records), 0)
        self.items.extend(records[:room])
        return records[room:]

    def restarted(self, pushed: int) -> bool:
        """The producer restarted when the ring had taken `pushed` records; False if the
        replay made fewer than that."""
        if self.caps:
            self.caps.pop(0)
        return len(self.items) == pushed

    def skip_to(self, popped: int) -> None:
        """The consumer restarted: what its last run popped but never logged is gone."""
        self.taken = max(self.taken, min(popped, len(self.items)))

    def take(self, n: int) -> np.ndarray:
        out = self.items[self.taken : self.taken + n]
        self.taken += len(out)
        return np.array(out, ORDER_DTYPE) if out else np.zeros(0, ORDER_DTYPE)


class _Ids:
    """Client ids as the live process gave them, event by event."""

    def __init__(self) -> None:
        self.given: list[int] = []
        self.extra = UNLOGGED_ID

    def __call__(self) -> int:
        if self.given:
            return self.given.pop(0)
        self.extra += 1
        return self.extra


@dataclass
class Replay:
    """What a replay produced and what it could not follow."""

    signals: np.ndarray
    orders: dict[int, dict[str, Any]] = field(default_factory=dict)  # client id -> the order
    executions: dict[str, dict[str, Any]] = field(default_factory=dict)  # order:<cid> / deal:<ticket>
    problems: list[str] = field(default_factory=list)  # where the schedule could not be followed
    first_ticket: int = 1
    # A coordinator killed between taking signals and writing them to its history (once a
    # second) leaves them out of it: how many, and the signals it may have been.
    history_lost: int = 0
    lost_from: np.ndarray | None = None
    # Intents or approved orders a risk or gateway popped as it was killed, before it
    # recorded them: never sent, and the live state has no record of them.
    unrecorded: list[int] = field(default_factory=list)


class Replayer:
    """Drives the components through a session's schedule (see the module docstring)."""

    def __init__(self, s: Session):
        self.s, self.config = s, s.config
        self.n = len(s.market.names)
        records = s.market.records
        self.ticks = np.zeros(len(records), TICK_DTYPE)
        for name in ("ts_ns", "bid", "ask", "last", "volume", "symbol", "flags"):
            self.ticks[name] = records[name]
        self.ticks["recv_ns"] = np.arange(len(records))  # a signal's origin: its trigger's position
        gateway = s.events.get("gateway", [])
        if self.config.broker.kind == "mt5":
            raise DataError(f"session {s.name} traded an MT5 account: its fills came from the venue, "
                            "which a replay cannot ask again, so its orders are not replayed; its ticks "
                            "are recorded: `sovereign backtest` runs a strategy on them")  # fmt: skip
        if not gateway or gateway[0][0] != "start":
            raise DataError(f"session {s.name}: no event logs (recorded by an older version, or "
                            "system.record_days was 0): its orders cannot be replayed")  # fmt: skip
        self.n_workers = int(gateway[0][1]["n_workers"])
        self.notes: list[str] = []
        self.out = Replay(self._signals(), first_ticket=int(gateway[0][1]["broker"]["next_ticket"]))
        self.out.problems += self.notes
        self.sig_taken = [0] * self.n_workers
        self.intents, self.approved = _Fifo(), _Fifo()
        self.reports = {"risk": _Fifo(), "coordinator": _Fifo()}
        self.coord_ids, self.risk_ids = _Ids(), _Ids()
        self.coord = Coordinator(self.config, self.coord_ids)
        self.risk = Risk(self.config, symbol_specs(self.config, list(self.s.market.names)), self.risk_ids)
        self.broker: PaperBroker = make_broker(self.config, list(s.market.names))
        self.pos = 0
        self.by_worker = [self.out.signals[self._owner(self.out.signals) == k] for k in range(self.n_workers)]
        self.starts = dict.fromkeys(ROLES, 0)
        self.refused: set[int] = set()  # the intents risk refused (a broker's reject is not one)
        self.batches: list[list[tuple]] = []  # the reports of each of the gateway's commits
        self.coord_start: dict[str, Any] = {}
        self._caps()
        self.by_symbol = np.lexsort((self.ticks["ts_ns"], self.ticks["symbol"]))  # to find risk's quotes
        self.sorted_symbols = self.ticks["symbol"][self.by_symbol]
        self.sorted_ts = self.ticks["ts_ns"][self.by_symbol]

    # ---- the agents: each worker's ticks through its own pool, as live

    def _signals(self) -> np.ndarray:
        owner = np.arange(self.n) % self.n_workers
        keep = np.ones(len(self.ticks), bool)
        for j, e in enumerate(self.s.events.get("gateway", [])):
            if e[0] == "lost":  # the worker's ticks of that batch beyond what its ring took
                _, a, b, k, pushed = e
                mine = a + np.flatnonzero(owner[self.ticks["symbol"][a:b]] == k)
                keep[mine[pushed:]] = False
            elif e[0] == "start" and j:  # a gateway killed between recording ticks and pushing them
                base = int(e[1]["base"])
                for k, pushed in enumerate(e[1]["rings"]["ticks"]):
                    mine = np.flatnonzero(keep[:base] & (owner[self.ticks["symbol"][:base]] == k))
                    keep[mine[int(pushed) :]] = False
        out = []
        for k in range(self.n_workers):
            pool = build_pool(self.config, self.s.market.names, range(k, self.n, self.n_workers))
            ticks = self.ticks[keep & (owner[self.ticks["symbol"]] == k)]
            events = self.s.events.get(f"worker-{k}", [])
            starts = [e for e in events if e[0] == "start"]
            seen0 = 0
            if starts and starts[0][1]["snapshot"]:
                pool.restore((self.s.directory / starts[0][1]["snapshot"]).read_bytes())
                seen0 = int(starts[0][1]["seen"])
            if len(starts) > 1:
                self.notes.append(f"worker-{k} restarted during the session: its later signals may differ")
            done = 0
            for e in events:
                if e[0] == "flush":  # a bar the clock closed (realtime feed), after this many ticks
                    _, cut, seen, _n = e
                    upto = min(max(int(seen) - seen0, done), len(ticks))
                    out.append(pool.on_ticks(ticks[done:upto]))
                    out.append(pool.flush(int(cut)))
                    done = upto
            out.append(pool.on_ticks(ticks[done:]))
        return np.concatenate(out) if out else np.zeros(0, SIGNAL_DTYPE)

    def _outputs(self, role: str) -> tuple[str, list[_Fifo]]:
        """The ring a role pushes into (its name in the start event) and its replay FIFOs."""
        if role == "coordinator":
            return "intents", [self.intents]
        if role == "risk":
            return "approved", [self.approved]
        return "reports", [self.reports["risk"], self.reports["coordinator"]]

    def _caps(self) -> None:
        """Each ring's pushed count at every restart of its producer (see _Fifo)."""
        for role in ROLES:
            name, fifos = self._outputs(role)
            for d in [e[1] for e in self.s.events.get(role, []) if e[0] == "start"][1:]:
                pushed = d.get("rings", {}).get(name, [])
                for fifo, n in zip(fifos, pushed if isinstance(pushed, list) else [pushed], strict=False):
                    fifo.caps.append(int(n))

    # ---- the schedule

    def run(self) -> Replay:
        events = {r: self.s.events.get(r, []) for r in ROLES}
        at = dict.fromkeys(ROLES, 0)
        while True:
            moved = False
            for role in ROLES:
                while at[role] < len(events[role]) and self._step(role, events[role][at[role]]):
                    at[role] += 1
                    moved = True
            if not moved:
                break
        for role in ROLES:
            if at[role] < len(events[role]):
                self.out.problems.append(f"{role}: stuck at its event {at[role] + 1} of {len(events[role])} "
                                         f"{events[role][at[role]][:3]}: what it took live was never "
                                         "produced here")  # fmt: skip
        self._apply(len(self.ticks))
        return self.out

    def _owner(self, signals: np.ndarray) -> np.ndarray:
        return np.asarray(signals["symbol"]) % self.n_workers

    def _step(self, role: str, e: list[Any]) -> bool:
        kind = e[0]
        if kind == "start":
            if not self._inputs_ready(role, e[1].get("rings", {})):
                return False
            self._start(role, e[1])
        elif role == "gateway":
            return self._gateway(e)
        elif role == "coordinator":
            return self._coordinator(e)
        else:
            return self._risk(e)
        return True

    def _start(self, role: str, d: dict[str, Any]) -> None:
        """A process (re)started from the state it logged, and where it found its rings."""
        self.starts[role] += 1
        if role == "coordinator":
            self.coord_start = d
        if self.starts[role] > 1:
            self._rings(role, d)
        if role == "gateway":
            # A gateway killed after committing exits and before logging them (and so before
            # pushing them): the replay's broker filled them too, and must now hold exactly
            # what the new one loaded; the new one pushes their reports (`_resent`).
            restart = self.starts[role] > 1
            self._apply(int(d["base"]), quiet=restart, push=not restart)
            if restart:
                self._undo_undurable(d)
            self._resent(d, restart)
            self.broker = make_broker(self.config, list(self.s.market.names))
            self.broker.load_dict(d["broker"])
            self.pos = int(d["base"])
        elif role == "coordinator":
            self.coord = Coordinator(self.config, self.coord_ids)
            self.coord.load_positions({int(s): Decimal(v) for s, v in d["volumes"].items()},
                                      int(d.get("ticket", 0)))
        else:
            self.risk = Risk(self.config, symbol_specs(self.config, list(self.s.market.names)), self.risk_ids)
            self.risk.load_dict(d["state"])
            self.risk.ledger.load_dict(d["ledger"])

    def _undo_undurable(self, d: dict[str, Any]) -> None:
        """What the killed gateway did after its last commit died with it: executions it
        never committed (tickets from the new one's counter on; orders it found SUBMITTING
        and resolved), so the replay's are dropped, and the broker restarts from the state
        it committed. With nothing to drop, the replay's broker must hold exactly that."""
        recovered = {int(c): state for c, state in d.get("recovered", {}).items()}
        first = int(d["broker"]["next_ticket"])
        gone = [k for k, x in self.out.executions.items()
                if (k.startswith("deal:") and int(x["ticket"]) >= first)
                or (k.startswith("order:") and int(x["client_order_id"]) in recovered)]  # fmt: skip
        for k in gone:
            del self.out.executions[k]
        for cid, state in recovered.items():
            order = self.out.orders.get(cid)
            if order is not None:
                for f in ("fill_price", "ticket", "commission", "realized_pnl", "retcode"):
                    order.pop(f, None)
                order["state"] = state
        if not gone and self.broker.to_dict() != d["broker"]:
            self.out.problems.append(f"gateway restarted at tick {d['base']} with another account than the "
                                     "replay's broker held there")  # fmt: skip

    def _resent(self, d: dict[str, Any], restart: bool) -> None:
        """The reports a (re)started gateway pushes first: those of the newest commit of the
        one before it, then those of the orders it recovered (gateway.Gateway.unsent). At a
        restart they are made again here and compared with what it pushed live; at the
        session's start they come from before the session, and are taken as logged."""
        if "resent" not in d:  # recorded by a version that did not send them again
            return
        logged = np.array([tuple(r) for r in d["resent"]], ORDER_DTYPE)
        if not restart:
            self.batches = [logged[: int(d["resent_last"])].tolist()]
            self.report_of(logged)
            return
        first = int(d["broker"]["next_ticket"])
        recovered = {int(c): state for c, state in d.get("recovered", {}).items()}
        # What of each commit was durable. The exits the killed gateway filled but never
        # logged are in one batch here (`_start` shows the broker every tick up to the new
        # one's base at once), with those of ticks it never showed its broker: their
        # tickets are the new one's (tickets follow tick order, however the ticks are
        # batched), and the rest is the one commit it made of them.
        durable = [kept for b in self.batches
                   if (kept := [r for r in b if r[3] < first and r[2] not in recovered])]  # fmt: skip
        rows = list(durable[-1]) if durable else []
        for cid, state in recovered.items():
            order = self.out.orders.get(cid)
            if order is None:
                self.out.problems.append(f"gateway recovered order {cid}, which the replay never approved")
                continue
            rows.append(recovered_report({**order, "client_order_id": cid, "state": state}))
        mine = np.array(rows, ORDER_DTYPE)
        names = [n for n in ORDER_DTYPE.names or () if n != "origin_ns"]  # the live clock
        if len(mine) != len(logged) or (len(mine) and not np.array_equal(mine[names], logged[names])):
            self.out.problems.append(f"gateway restarted at tick {d['base']} and sent {len(logged)} reports "
                                     f"again; the replay made {len(mine)}, not the same")  # fmt: skip
        self.report_of(mine)

    def _inputs_ready(self, role: str, rings: dict[str, Any]) -> bool:
        """A restarted consumer skips what its last run popped: wait until it was made."""
        if self.starts[role] == 0:
            return True
        if role == "coordinator":
            return len(self.reports["coordinator"].items) >= int(rings.get("reports", 0))
        if role == "risk":
            return (len(self.intents.items) >= int(rings.get("intents", 0))
                    and len(self.reports["risk"].items) >= int(rings.get("reports", 0)))  # fmt: skip
        return len(self.approved.items) >= int(rings.get("approved", 0))

    def _rings(self, role: str, d: dict[str, Any]) -> None:
        """A restarted process, from its start event `d`: where it found its rings."""
        rings = d.get("rings", {})
        name, fifos = self._outputs(role)
        pushed = rings.get(name, [])
        for fifo, n in zip(fifos, pushed if isinstance(pushed, list) else [pushed], strict=False):
            if not fifo.restarted(int(n)):
                self.out.problems.append(f"{role} restarted with {n} records pushed, the replay had made "
                                         f"{len(fifo.items)}")  # fmt: skip
        if role == "coordinator":
            popped = [int(n) for n in rings.get("signals", [])]
            for k, n in enumerate(popped):
                self.sig_taken[k] = max(self.sig_taken[k], min(n, len(self.by_worker[k])))
            self.reports["coordinator"].skip_to(int(rings.get("reports", 0)))
            first = next(e[1] for e in self.s.events["coordinator"] if e[0] == "start")
            recorded = int(self.coord_start.get("signals_after", 0)) - int(first.get("signals_after", 0))
            self.out.history_lost = sum(popped) - recorded
            self.out.lost_from = np.concatenate([w[:n] for w, n in zip(self.by_worker, popped, strict=False)])
        elif role == "risk":
            if "intents_taken" in d:  # logged by versions that commit it
                self._uncommitted(int(d["intents_taken"]))
            self._lost(self.intents, int(rings.get("intents", 0)))
            self.reports["risk"].skip_to(int(rings.get("reports", 0)))
        else:
            recovered = {int(c) for c in d.get("recovered", {})}  # SUBMITTING when it started
            self._lost(self.approved, int(rings.get("approved", 0)), recovered)

    def _lost(self, fifo: _Fifo, popped: int, committed: Collection[int] = ()) -> None:
        """Orders a killed risk or gateway popped before it logged them: never sent, and
        the live state has no record of them; the replay leaves them out too (and says so).
        A gateway killed after committing them in SUBMITTING and before logging them has
        them, though: the new one recovered them (`committed`), and they stay."""
        before = fifo.taken
        fifo.skip_to(popped)
        for rec in fifo.items[before : fifo.taken]:
            cid = int(rec["client_order_id"])
            if cid not in committed:
                self._unrecord(cid)

    def _unrecord(self, cid: int) -> None:
        """An order the live state has no record of: left out here too, and named."""
        self.out.unrecorded.append(cid)
        self.out.orders.pop(cid, None)

    def _gateway(self, e: list[Any]) -> bool:
        if e[0] == "t":  # a batch of ticks that filled stops or targets
            self._apply(int(e[1]))
            self._exits(self.broker.on_ticks(self.ticks[e[1] : e[2]]))
            self.pos = int(e[2])
        elif e[0] == "o":  # a batch of approved orders sent, after this many ticks
            if len(self.approved) < e[2]:
                return False
            self._apply(int(e[1]))
            batch = self.approved.take(int(e[2]))
            done = []
            for rec in batch:
                ex = execute(self.broker, rec)
                self._executed(ex, rec)
                done.append(report_of(ex, rec))
            self._commit(done)
            self.report_of(np.array(done, ORDER_DTYPE))
        return True

    def _coordinator(self, e: list[Any]) -> bool:
        if e[0] == "s":  # signals from worker k's ring
            _, k, n, ids = e
            have = self.by_worker[k]
            batch = have[self.sig_taken[k] : self.sig_taken[k] + n]
            if len(batch) < n:
                self.out.problems.append(f"coordinator: took {n} signals of worker-{k} live, the replay "
                                         f"had {len(batch)} left")  # fmt: skip
            self.sig_taken[k] += len(batch)
            self.coord_ids.given = list(ids)
            intents = self.coord.on_signals(batch)
            self._unused_ids("coordinator", self.coord_ids)
            for rec in intents:
                self.out.orders[int(rec["client_order_id"])] = {
                    "ts_ns": int(rec["ts_ns"]), "symbol": int(rec["symbol"]), "side": int(rec["side"]),
                    "conviction": float(rec["conviction"]), "state": "INTENT"}  # fmt: skip
            self._unpushed(self.intents.put(intents))
        elif e[0] == "r":
            if len(self.reports["coordinator"]) < e[1]:
                return False
            self.coord.on_reports(self.reports["coordinator"].take(int(e[1])))
        return True

    def _risk(self, e: list[Any]) -> bool:
        kind = e[0]
        if kind == "r":
            if len(self.reports["risk"]) < e[1]:
                return False
            self.risk.on_reports(self.reports["risk"].take(int(e[1])))
            return True
        if kind == "i" and len(self.intents) < e[1]:
            return False
        _, arg, now, logged, ids = e  # every decision: (kind, what, clock, quotes read, ids given)
        quotes = self._quotes(logged)
        self.risk_ids.given = list(ids)
        if kind == "i":
            ok, refused = self.risk.on_intents(self.intents.take(int(arg)), quotes, now)
            for rec, why in refused:
                self.refused.add(int(rec["client_order_id"]))
                self.out.orders.setdefault(int(rec["client_order_id"]), {}).update(
                    state="REJECTED", reason=why.name)
            out = ok
        elif kind == "m":
            out = self.risk.mark(quotes, now)
        else:  # a command
            msg = list(arg)
            if msg[0] == "reload":
                msg[1] = RiskConfig(**msg[1])
            out, _ = apply_command(self.risk, tuple(msg), quotes, now)
        self._unused_ids("risk", self.risk_ids)
        for rec in out:
            order = self.out.orders.setdefault(int(rec["client_order_id"]), {
                "ts_ns": int(rec["ts_ns"]), "symbol": int(rec["symbol"]), "side": int(rec["side"]),
                "conviction": float(rec["conviction"])})  # fmt: skip
            order.update(state="SUBMITTING", ts_ns=int(rec["ts_ns"]), volume=float(rec["volume"]),
                         price=float(rec["price"]), sl=float(rec["sl"]), tp=float(rec["tp"]),
                         agent=int(rec["agent"]), reason=Reason(int(rec["reason"])).name)  # fmt: skip
        self._unpushed(self.approved.put(out))
        return True

    def _unpushed(self, records: np.ndarray) -> None:
        """Orders a killed coordinator or risk made and logged but never pushed: the live
        state has no record of them."""
        for rec in records:
            self._unrecord(int(rec["client_order_id"]))

    def _uncommitted(self, durable: int) -> None:
        """At a restart of risk: the refusals its last run made for the intents from the
        `durable`-th on were never committed (it was killed between logging them and its
        commit), so the live state has no record of them."""
        for rec in self.intents.items[durable : self.intents.taken]:
            cid = int(rec["client_order_id"])
            if cid in self.refused:
                self._unrecord(cid)

    def _quotes(self, logged: dict[str, list[Any]]) -> Callable[[int], tuple[int, float, float, int]]:
        table = {int(s): (int(q[0]), float(q[1]), float(q[2]), int(q[3])) for s, q in logged.items()}
        for s, (ts, bid, ask, _) in table.items():
            if ts and self._tick_at(s, ts, bid, ask) is None:
                self.out.problems.append(f"risk read a quote of {self.s.market.names[s]} at {ts} "
                                         f"({bid}/{ask}) that is not in the recording")  # fmt: skip

        def quotes(symbol: int) -> tuple[int, float, float, int]:
            if symbol not in table:
                self.out.problems.append(f"risk asked for a quote of symbol {symbol} it never read live")
                return 0, 0.0, 0.0, 0
            return table[symbol]

        return quotes

    def _tick_at(self, symbol: int, ts: int, bid: float, ask: float) -> int | None:
        """The position of a recorded tick of `symbol` at `ts` quoting bid/ask, if any."""
        # The keys in the arrays' own types: a Python int would make numpy convert the whole
        # array on every call (24 ms a call on 22 M ticks, against 57 us).
        key = self.sorted_symbols.dtype.type(symbol)
        lo = np.searchsorted(self.sorted_symbols, key, "left")
        hi = np.searchsorted(self.sorted_symbols, key, "right")
        times = self.sorted_ts[lo:hi]
        at = times.dtype.type(ts)
        a, b = np.searchsorted(times, at, "left"), np.searchsorted(times, at, "right")
        for j in self.by_symbol[lo + a : lo + b]:
            if self.ticks["bid"][j] == bid and self.ticks["ask"][j] == ask:
                return int(j)
        return None

    def _unused_ids(self, role: str, ids: _Ids) -> None:
        if ids.given:
            self.out.problems.append(f"{role}: live made orders {ids.given} here, the replay did not")
            ids.given = []

    def _apply(self, upto: int, quiet: bool = False, push: bool = True) -> None:
        """The ticks up to position `upto` through the broker: live, none of them filled a
        stop or target (those batches are logged), so any exit here is a difference."""
        if upto <= self.pos:
            return
        fills = self.broker.on_ticks(self.ticks[self.pos : upto])
        if fills and not quiet:
            self.out.problems.append(f"gateway: {len(fills)} stop/target fills between positions {self.pos} "
                                     f"and {upto}, where live had none")  # fmt: skip
        self._exits(fills, push)
        self.pos = upto

    def _exits(self, fills: list[Execution], push: bool = True) -> None:
        for ex in fills:
            self.out.executions[f"deal:{ex.ticket}"] = ex.to_dict()
        if fills:
            reports = [report_of(ex, None) for ex in fills]
            self._commit(reports)
            if push:
                self.report_of(np.array(reports, ORDER_DTYPE))

    def _executed(self, ex: Execution, rec: np.void) -> None:
        cid = int(rec["client_order_id"])
        self.out.executions[f"order:{cid}"] = ex.to_dict()
        order = self.out.orders[cid]
        if ex.retcode == 10009:
            order.update(state="FILLED", fill_price=str(ex.price), ticket=ex.ticket,
                         commission=str(ex.commission), realized_pnl=str(ex.realized_pnl))  # fmt: skip
        else:
            order.update(state="REJECTED", retcode=int(ex.retcode))

    def _commit(self, reports: list[tuple]) -> None:
        """The reports of one of the gateway's commits (the newest few are kept: a restart
        sends those of the newest one that was durable again)."""
        self.batches = [*self.batches[-3:], reports]

    def report_of(self, reports: np.ndarray) -> None:
        for fifo in self.reports.values():
            fifo.put(reports)


def replay(s: Session) -> Replay:
    return Replayer(s).run()


# ---- what the live system decided


def live_signals(t: Any, s: Session) -> np.ndarray:
    """The signals the session's coordinator took (those the history still keeps)."""
    starts = [e[1] for e in s.events.get("coordinator", []) if e[0] == "start"]
    after = int(starts[0].get("signals_after", 0)) if starts else 0
    raw = [v for k, v in t.items("signals", after + 1, raw=True)]
    return np.frombuffer(b"".join(raw), SIGNAL_DTYPE) if raw else np.zeros(0, SIGNAL_DTYPE)


def session_ids(s: Session) -> list[int]:
    """Every client id the session's coordinator and risk gave an order."""
    ids = [i for e in s.events.get("coordinator", []) if e[0] == "s" for i in e[3]]
    ids += [i for e in s.events.get("risk", []) if e[0] in ("i", "m", "c") for i in e[4]]
    return ids


def live_state(t: Any, s: Session, r: Replay) -> dict[str, Any]:
    """The live orders and executions the replay is compared with."""
    orders = {cid: o for cid in session_ids(s) if (o := t.get("orders", cid)) is not None}
    execs = {f"order:{cid}": x for cid in orders if (x := t.get("bridge", exec_key(cid))) is not None}
    for key, x in t.items("bridge", b"deal:"):
        if not bytes(key).startswith(b"deal:"):
            break
        if int(x["ticket"]) >= r.first_ticket:
            execs[f"deal:{x['ticket']}"] = x
    return {"orders": orders, "executions": execs}


# ---- the comparison


def compare(r: Replay, live_sig: np.ndarray, live: dict[str, Any], names: list[str],
            limit: int = 20) -> dict[str, Any]:  # fmt: skip
    """Differences between the replay and the live session (see the module docstring)."""
    sig = _signal_diff(r.signals, live_sig, names, limit, r)
    orders = _record_diff(r.orders, live["orders"], names, limit)
    execs = _record_diff(r.executions, live["executions"], names, limit)
    orders["unrecorded"] = r.unrecorded
    same = sig["identical"] and orders["identical"] and execs["identical"] and not r.problems
    return {"signals": sig, "orders": orders, "executions": execs, "problems": r.problems[:limit],
            "n_problems": len(r.problems), "identical": same}  # fmt: skip


def _rows(signals: np.ndarray) -> set[tuple]:
    return {tuple(r) for r in np.asarray(signals[SIGNAL_FIELDS]).tolist()}


def _signal_diff(a: np.ndarray, b: np.ndarray, names: list[str], limit: int, r: Replay) -> dict[str, Any]:
    if len(b) and len(a):
        a = a[a["ts_ns"] >= b["ts_ns"].min()]  # the live history may have been trimmed
    set_a, set_b = _rows(a), _rows(b)
    only_replay = sorted(set_a - set_b)
    only_live = sorted(set_b - set_a)
    lost = 0
    # Taken live and never written to the history: each is one the killed coordinator took,
    # and there are no more of them than it lost. (Fewer where the cut above, for a trimmed
    # history, took some: signals are not taken in the order of their times, so a lost one
    # can be older than the oldest the history kept.)
    if (r.history_lost and r.lost_from is not None and len(only_replay) <= r.history_lost
            and set(only_replay) <= _rows(r.lost_from)):  # fmt: skip
        lost, only_replay = len(only_replay), []

    def show(rows: list[tuple]) -> list[dict[str, Any]]:
        out = []
        for r in rows[:limit]:
            d = dict(zip(SIGNAL_FIELDS, r, strict=True))
            d["symbol"] = names[d["symbol"]] if d["symbol"] < len(names) else d["symbol"]
            out.append(d)
        return out

    return {"replayed": len(set_a), "live": len(set_b), "matched": len(set_a & set_b), "n_differ": 0,
            "not_in_live_history": lost,
            "only_in_replay": show(only_replay), "n_only_in_replay": len(only_replay),
            "only_live": show(only_live), "n_only_live": len(only_live),
            "identical": not only_replay and not only_live}  # fmt: skip


def _same(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is b
    if isinstance(a, float) or isinstance(b, float):
        return float(a) == float(b)
    if isinstance(a, str) and isinstance(b, str) and a != b:
        try:
            return Decimal(a) == Decimal(b)  # "1.10" and "1.1" are one price
        except ArithmeticError:
            return False
    return bool(a == b)


def _record_diff(mine: dict[Any, dict[str, Any]], live: dict[Any, dict[str, Any]], names: list[str],
                 limit: int) -> dict[str, Any]:  # fmt: skip
    """Records by key: every field the replay computed, against the live record's."""

    def show(key: Any, rec: dict[str, Any]) -> dict[str, Any]:
        sym = rec.get("symbol")
        return {"key": key, "symbol": names[sym] if isinstance(sym, int) and sym < len(names) else sym,
                "state": rec.get("state", rec.get("reason"))}  # fmt: skip

    differ = []
    for key in sorted(set(mine) & set(live), key=str):
        a, b = mine[key], live[key]
        what = {f: {"replay": a[f], "live": b.get(f)} for f in a if not _same(a[f], b.get(f))}
        if what:
            differ.append({**show(key, a), **what})
    only_r = [show(k, mine[k]) for k in sorted(set(mine) - set(live), key=str)]
    only_l = [show(k, live[k]) for k in sorted(set(live) - set(mine), key=str)]
    both = len(set(mine) & set(live))
    return {"replayed": len(mine), "live": len(live), "matched": both - len(differ),
            "differ": differ[:limit], "n_differ": len(differ), "only_in_replay": only_r[:limit],
            "n_only_in_replay": len(only_r), "only_live": only_l[:limit], "n_only_live": len(only_l),
            "identical": not differ and not only_r and not only_l}  # fmt: skip


__all__ = ["Replay", "Session", "compare", "live_signals", "live_state", "load_session", "replay", "sessions"]
