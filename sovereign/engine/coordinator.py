"""Coordinator: merges the signals of every agent per symbol and allots capital.

A signal lives for one bar of its agent's timeframe (until ts_ns + timeframe_s, on the
market clock: the newest signal time seen). Per symbol, net = sum of side * conviction
over the live signals, the newest per agent; opposite signals cancel. When |net| reaches
the threshold in a direction the symbol is not already positioned in (and no order for
it is in flight), the coordinator emits an order intent:

    conviction = min(1, |net|)   (a sum over up to ten agents: never more than one full trade)
    risk       = min(risk_per_trade * conviction, max_symbol_share * risk_per_trade * max_open_positions)

`risk` is the fraction of equity to lose if the stop is hit; the cap keeps one symbol
from taking more than its share of the risk the whole book may carry. Entry, stop and
target come from the strongest live signal in that direction. Risk sizes the order.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import numpy as np

from sovereign.config import Config
from sovereign.core import (
    ORDER_DTYPE,
    ORDER_FILL,
    ORDER_INTENT,
    SIGNAL_DTYPE,
    OrderRing,
    SignalBook,
    SignalRing,
    wait_for_records,
)
from sovereign.engine.metrics import meter
from sovereign.engine.runtime import RUNNING, STOPPED, Child
from sovereign.files import want_decimal, want_dict, want_int, want_list
from sovereign.latency import LatencyHistogram
from sovereign.ledger import ZERO, new_deal, to_decimal
from sovereign.state.orders import ClientIds
from sovereign.state.recorder import event_log
from sovereign.state.schema import BOOK_KEY, RISK_STATE_KEY, key_u64
from sovereign.state.store import StateStore, Txn

NS = 1_000_000_000
SIGNAL_BATCH = 4096
RECORD_EVERY_S = 1.0  # the signal history for the ops CLI is committed this often
IN_FLIGHT_S = 60  # market seconds an intent blocks another for its symbol without an answer
# A live signal in the coordinator's book, as a saved backtest keeps it (SignalBook.live's fields).
LIVE_DTYPE = np.dtype([("symbol", "<u4"), ("agent", "<u4"), ("expires_ns", "<i8"), ("side", "i1"),
                       ("conviction", "<f8"), ("entry", "<f8"), ("stop", "<f8"),
                       ("target", "<f8")])  # fmt: skip


class Coordinator:
    def __init__(self, config: Config, next_id: Callable[[], int]):
        self.config = config
        self.next_id = next_id
        # The live signals and their net per symbol, in C++ (csrc/signal_book.hpp): it sees
        # every signal, and only a symbol whose |net| reaches the threshold comes back here.
        self.book = SignalBook(config.coordinator.threshold)
        self.volume: dict[int, Decimal] = {}  # symbol -> net lots
        self.position: dict[int, int] = {}  # symbol -> direction of the open position
        self.in_flight: dict[int, tuple[int, int]] = {}  # symbol -> (client id, expires_ns)
        self.intents = 0
        self.ticket = 0  # the newest deal in `volume`: a report of it or an older one is not applied again

    def cap(self) -> float:
        r = self.config.risk
        return self.config.coordinator.max_symbol_share * r.risk_per_trade * r.max_open_positions

    @property
    def clock_ns(self) -> int:
        """The market clock: the newest signal time seen."""
        return self.book.clock_ns

    def on_signals(self, signals: np.ndarray) -> np.ndarray:
        """Signals in (SIGNAL_DTYPE); order intents out (ORDER_DTYPE)."""
        return np.array(self.intents_for(signals), ORDER_DTYPE)

    def intents_for(self, signals: np.ndarray) -> list[tuple]:
        """`on_signals` with the intents as tuples of ORDER_DTYPE's fields."""
        if not len(signals):
            return []
        out: list[tuple] = []
        candidates = self.book.update(signals)  # the symbols touched whose |net| reaches the threshold
        if not candidates:
            return out
        clock = self.book.clock_ns
        for symbol, origin_ns, net, agent, entry, stop, target in candidates:
            side = 1 if net > 0 else -1
            if self.position.get(symbol, 0) == side:
                continue
            flight = self.in_flight.get(symbol)
            if flight is not None and flight[1] > clock:
                continue
            conviction = min(1.0, abs(net))
            risk = min(self.config.risk.risk_per_trade * conviction, self.cap())
            cid = self.next_id()
            self.in_flight[symbol] = (cid, clock + IN_FLIGHT_S * NS)
            self.intents += 1
            out.append((clock, origin_ns, cid, 0, symbol, agent, side, ORDER_INTENT, 0, 0,
                        0.0, entry, stop, target, conviction, risk, 0.0))  # fmt: skip
        return out

    def on_reports(self, reports: np.ndarray) -> None:
        """Execution reports (ORDER_DTYPE, kind FILL or REJECT): each symbol's net volume,
        exactly (lots as decimals), and the end of an order's flight."""
        self.on_report_rows(reports.tolist())

    def on_report_rows(self, reports: list[tuple]) -> None:
        """`on_reports` on records as tuples of ORDER_DTYPE's fields."""
        for r in reports:
            cid, ticket, symbol, side, kind, volume = r[2], r[3], r[4], r[6], r[7], r[10]
            flight = self.in_flight.get(symbol)
            if flight is not None and flight[0] == cid:
                del self.in_flight[symbol]
            if kind == ORDER_FILL and new_deal(ticket, self.ticket):
                self.ticket = max(self.ticket, ticket)
                self.volume[symbol] = self.volume.get(symbol, ZERO) + side * to_decimal(volume)
                vol = self.volume[symbol]
                self.position[symbol] = 0 if vol == 0 else (1 if vol > 0 else -1)

    # ---- a backtest's saved state (sovereign.research.backtest): data only, every field checked back

    def to_state(self, symbols: int) -> tuple[dict[str, Any], np.ndarray]:
        """Everything but the config and the id source, as JSON-able data, and the book's
        live signals of symbols 0..symbols-1 in netting order (LIVE_DTYPE)."""
        live = [(s, *sig) for s in range(symbols) for sig in self.book.live(s)]
        return {
            "clock_ns": self.book.clock_ns,
            "volume": [[s, str(v)] for s, v in self.volume.items()],
            "position": [[s, p] for s, p in self.position.items()],
            "in_flight": [[s, cid, expires] for s, (cid, expires) in self.in_flight.items()],
            "intents": self.intents,
            "ticket": self.ticket,
        }, np.array(live, LIVE_DTYPE)

    def load_state(self, d: Any, live: np.ndarray, symbols: int) -> None:
        """`to_state`'s data back, each field checked (symbols below `symbols`); a bad one
        raises ValueError naming it, and leaves this coordinator as it was."""
        name = "coordinator"
        d = want_dict(d, name, {"clock_ns", "volume", "position", "in_flight", "intents", "ticket"})
        sym = functools.partial(want_int, lo=0, hi=symbols - 1)
        volume = {sym(s, f"{name}.volume symbol"): want_decimal(v, f"{name}.volume")
                  for s, v in (want_list(x, f"{name}.volume", 2) for x in want_list(d["volume"], name))}
        position = {sym(s, f"{name}.position symbol"): want_int(p, f"{name}.position", -1, 1)
                    for s, p in (want_list(x, f"{name}.position", 2) for x in want_list(d["position"], name))}
        in_flight = {sym(s, f"{name}.in_flight symbol"): (want_int(c, f"{name}.in_flight id", 0),
                                                           want_int(t, f"{name}.in_flight expiry"))
                     for s, c, t in (want_list(x, f"{name}.in_flight", 3)
                                     for x in want_list(d["in_flight"], name))}  # fmt: skip
        if live.dtype != LIVE_DTYPE or live.ndim != 1:
            raise ValueError(f"{name}.live: {live.dtype} x {live.shape} is not a list of LIVE_DTYPE records")
        if len(live) and (live["symbol"].max() >= symbols or not np.isin(live["side"], (-1, 1)).all()
                          or not np.isfinite(live["conviction"]).all()):  # fmt: skip
            raise ValueError(f"{name}.live: a signal with a symbol out of range, a side not -1 or 1 or a "
                             "conviction not finite")  # fmt: skip
        clock = want_int(d["clock_ns"], f"{name}.clock_ns")
        intents = want_int(d["intents"], f"{name}.intents", 0)
        ticket = want_int(d["ticket"], f"{name}.ticket", 0)
        by_symbol: dict[int, list[tuple]] = {}
        for rec in live.tolist():
            by_symbol.setdefault(rec[0], []).append(rec[1:])
        book = SignalBook.__new__(SignalBook)  # as pickle makes one: the C++ restore, from checked data
        book.__setstate__((self.book.threshold, clock, list(by_symbol.items())))  # type: ignore[attr-defined]
        self.book, self.volume, self.position, self.in_flight = book, volume, position, in_flight
        self.intents, self.ticket = intents, ticket

    def load_positions(self, volumes: dict[int, Decimal], ticket: int = 0) -> None:
        """Net volume per symbol at start-up, from the book risk keeps in LMDB, which has
        every deal up to `ticket` (their reports may still be in the ring)."""
        self.volume = dict(volumes)
        self.ticket = ticket
        self.position = {s: (1 if v > 0 else -1) for s, v in volumes.items() if v != 0}


class CoordinatorProcess:
    """The coordinator's process wrapper: signals from the workers' rings and reports from
    the gateway's into `Coordinator`, its intents out to risk; the signal history for the
    ops CLI; beats.

    The event log says when this process took what (replay): which signals and reports
    together, and the ids it gave the intents they made; each written before what it made
    is pushed."""

    def __init__(self, child: Child, config: Config):
        self.child = child
        layout = child.layout
        self.store = StateStore(config.system.state_dir)
        ids = ClientIds(self.store)
        self.issued = ids.issued  # cleared as each event is logged
        self.coord = Coordinator(config, ids.next)
        book, state = self.store.read(lambda t: (t.get("positions", BOOK_KEY), t.get("risk", RISK_STATE_KEY)))
        if book is not None:
            self.coord.load_positions({int(s): sum((Decimal(v) for v, _ in p["lots"]), ZERO)
                                       for s, p in book["positions"].items()},
                                      int((state or {}).get("ticket", 0)))  # fmt: skip
        self.signal_rings = [SignalRing.attach(layout.signal_ring(k)) for k in range(layout.n_workers)]
        self.reports = OrderRing.attach(layout.reports_coordinator)
        self.intents = OrderRing.attach(layout.intents)
        self.log = event_log(config, layout.session, "coordinator")
        self.start()
        self.sig_buf = np.zeros(SIGNAL_BATCH, SIGNAL_DTYPE)
        self.rep_buf = np.zeros(self.reports.capacity, ORDER_DTYPE)
        self.signals, self.next_beat, self.next_record = 0, 0.0, 0.0
        self.meter = meter(child)
        self.signal_in, self.intent_out = LatencyHistogram(), LatencyHistogram()
        self.recent: list[np.ndarray] = []
        self.keep = config.system.signal_history
        self.watched = [*self.signal_rings, self.reports]

    def start(self) -> None:
        """Log where the replay starts: the net volumes, the newest deal, the rings' positions."""
        if self.log is not None:
            # The newest signal kept so far: this session's are kept after it.
            last = self.store.read(lambda t: t.last_key("signals"))
            rings = {"signals": [r.stats()["popped"] for r in self.signal_rings],
                     "reports": self.reports.stats()["popped"],
                     "intents": self.intents.stats()["pushed"]}  # fmt: skip
            coord = self.coord
            self.log.add("start", {"volumes": {s: str(v) for s, v in coord.volume.items()},
                                   "ticket": coord.ticket,
                                   "signals_after": 0 if last is None else key_u64(last),
                                   "rings": rings})  # fmt: skip
            self.log.flush()

    def signals_left(self) -> bool:
        """Stopping: the workers have exited; take the signals they left first."""
        return any(r.stats()["depth"] for r in self.signal_rings)

    def take_signals(self) -> None:
        """Each ring's signals waiting, one batch each: logged, then the intents pushed."""
        coord, log, issued, buf, keep = self.coord, self.log, self.issued, self.sig_buf, self.keep
        got = 0
        for k, ring in enumerate(self.signal_rings):
            n = ring.pop_into(buf)
            if n:
                popped = time.monotonic_ns()
                got += n
                if keep:
                    self.recent.append(buf[:n].copy())
                out = coord.on_signals(buf[:n])
                if log is not None:
                    log.add("s", k, n, issued)
                    log.flush()
                issued.clear()
                if len(out):
                    pushing = time.monotonic_ns()  # before: the push may hand the core to risk
                    self.intents.push(out, timeout=1.0)
                    self.intent_out.add_since(out["origin_ns"], pushing)
                self.signal_in.add_since(buf["origin_ns"][:n], popped)  # after the push: off the path
        self.signals += got

    def take_reports(self) -> None:
        n = self.reports.pop_into(self.rep_buf, timeout=0.0)
        if n:
            if self.log is not None:
                self.log.add("r", n)
            self.coord.on_reports(self.rep_buf[:n])

    def flush(self) -> None:
        if self.log is not None:
            self.log.flush()

    def record(self) -> None:
        """The signals seen since the last call, kept (the newest `keep`) for the ops CLI."""
        if not self.recent:
            return
        keep = self.keep
        batch = np.concatenate(self.recent)[-keep:]
        self.recent.clear()

        def tx(t: Txn) -> None:
            last = t.last_key("signals")
            seq = 0 if last is None else key_u64(last)
            for rec in batch:
                seq += 1
                t.put_bytes("signals", seq, rec.tobytes())
            t.trim("signals", keep)

        self.store.write(tx)

    def beat(self) -> None:
        if time.monotonic() >= self.next_beat:
            self.next_beat = time.monotonic() + 0.1
            self.child.messages()
            if time.monotonic() >= self.next_record:  # a durable commit: not ten a second beside the orders'
                self.next_record = time.monotonic() + RECORD_EVERY_S
                self.record()
            self.child.beat(RUNNING, signals=self.signals, orders=self.coord.intents)
            self.meter.publish(intents=self.coord.intents)

    def stop(self) -> None:
        self.record()
        # Hop by hop, from each tick's arrival at the gateway (bench/bench_pipeline.py reads it).
        hops = {"tick_to_signal": self.signal_in.to_dict(), "tick_to_intent": self.intent_out.to_dict()}
        signals, intents = self.signals, self.coord.intents
        self.store.write(lambda t: t.journal("coordinator_stats", signals=signals, intents=intents, **hops))
        self.meter.publish(intents=intents)
        if self.log is not None:
            self.log.close()
        self.child.beat(STOPPED, signals=signals, orders=intents)
        self.store.close()


def run(child: Child, config: Config) -> None:
    """The coordinator process: signal rings -> Coordinator -> intent ring; reports back."""
    p = CoordinatorProcess(child, config)
    while not child.stop_requested or p.signals_left():
        # Asleep until a signal or a report comes (any ring's push wakes it), or the beat is due.
        wait_for_records(p.watched, timeout=max(0.0, p.next_beat - time.monotonic()))
        p.take_signals()
        p.take_reports()
        p.flush()
        p.beat()
    p.stop()
