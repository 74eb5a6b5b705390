"""The exporter: one prometheus_client custom collector in a registry of its own (no
process or platform collectors), served over HTTP by the supervisor on [metrics] listen,
and read by the control socket's `metrics` (`sovereign metrics`).

Each scrape reads the metrics board (sovereign.engine.metrics), the heartbeat board, the
quote board and the rings: all of them shared memory, so a scrape never waits on a
trading process nor takes a lock one takes. The names are docs/metrics.md's.
"""

from __future__ import annotations

import errno
import math
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import numpy as np
from prometheus_client import CollectorRegistry, generate_latest, make_wsgi_app
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)

from sovereign.config import Config, listen_address
from sovereign.engine.metrics import (
    BUCKETS_S,
    FINAL_STATES,
    REFUSING,
    TICK_REFUSALS,
    TRADING_STATES,
    MetricsBoard,
)
from sovereign.engine.runtime import Heartbeats, Layout
from sovereign.errors import OperationalError
from sovereign.text import clean

LISTEN_ENV = "SOVEREIGN_METRICS_LISTEN"  # takes the place of [metrics] listen where set (tests)


class ListenError(OperationalError):
    """The exporter cannot listen where it is told to."""


class Collector:
    """The exporter's collector: each scrape reads the boards and rings (shared memory)."""

    def __init__(self, layout: Layout, config: Config, hb: Heartbeats, board: MetricsBoard, quotes: Any,
                 rings: Sequence[tuple[str, Any]], started_s: float, version: str):  # fmt: skip
        self.layout, self.hb, self.board, self.quotes, self.rings = layout, hb, board, quotes, rings
        self.currency = config.broker.account_currency
        self.state_dir = config.system.state_dir
        self.started_s, self.started_mono_ns = started_s, time.monotonic_ns()
        self.version = version
        self.roles = layout.roles()
        names = layout.symbol_names or tuple(map(str, range(layout.n_symbols)))
        self.symbols = [clean(n, 64) for n in names]
        self.lock = threading.Lock()  # the supervisor unmaps the boards only holding it
        self.closed = False

    def close(self) -> None:
        with self.lock:
            self.closed = True

    def collect(self) -> Iterator[Metric]:
        with self.lock:
            if self.closed:
                return
            yield from self._system()
            yield from self._processes()
            yield from self._flow()
            yield from self._account()
            yield from self._market()

    def _system(self) -> Iterator[Metric]:
        yield InfoMetricFamily("sovereign_build", "The running build.",
                               value={"version": self.version, "python": sys.version.split()[0]})  # fmt: skip
        yield GaugeMetricFamily("sovereign_start_time_seconds", "When the supervisor started (Unix time).",
                                value=self.started_s)  # fmt: skip
        try:
            v = os.statvfs(self.state_dir)
        except OSError:
            return
        yield GaugeMetricFamily("sovereign_state_disk_free_bytes", "Free bytes on the state directory's "
                                "filesystem (for this user).", value=v.f_bavail * v.f_frsize)  # fmt: skip
        yield GaugeMetricFamily("sovereign_state_disk_size_bytes", "The size of the state directory's "
                                "filesystem.", value=v.f_blocks * v.f_frsize)  # fmt: skip

    def _processes(self) -> Iterator[Metric]:
        hb, slots, now = self.hb.slots, self.board.slots, time.monotonic_ns()
        up = GaugeMetricFamily("sovereign_process_up", "1 while the process runs and beats.",
                               labels=["process"])  # fmt: skip
        age = GaugeMetricFamily("sovereign_process_heartbeat_age_seconds", "Time since the process's last "
                                "heartbeat.", labels=["process"])  # fmt: skip
        restarts = CounterMetricFamily("sovereign_process_restarts", "Restarts by the supervisor.",
                                       labels=["process"])  # fmt: skip
        for k, role in enumerate(self.roles):
            up.add_metric([role], float(slots["up"][k]))
            beat = int(hb["beat_ns"][k])
            if beat:
                age.add_metric([role], max(0, now - beat) / 1e9)
            restarts.add_metric([role], float(hb["restarts"][k]))
        yield from (up, age, restarts)
        depth = GaugeMetricFamily("sovereign_ring_depth", "Records waiting in a ring.", labels=["ring"])
        capacity = GaugeMetricFamily("sovereign_ring_capacity", "A ring's size in records.", labels=["ring"])
        dropped = CounterMetricFamily("sovereign_ring_dropped", "Records a full ring refused (signal rings "
                                      "drop; tick and order rings wait).", labels=["ring"])  # fmt: skip
        for name, ring in self.rings:
            s = ring.stats()
            depth.add_metric([name], s["depth"])
            capacity.add_metric([name], s["capacity"])
            dropped.add_metric([name], s["dropped"])
        yield from (depth, capacity, dropped)

    def _per_process(self, field: str, name: str, doc: str, roles: Sequence[str]) -> Metric:
        m = CounterMetricFamily(name, doc, labels=["process"])
        for role in roles:
            m.add_metric([role], float(self.board.slots[field][self.layout.slot(role)]))
        return m

    def _flow(self) -> Iterator[Metric]:
        slots, roles = self.board.slots, self.roles
        workers = [r for r in roles if r.startswith("worker-")]
        yield self._per_process("ticks", "sovereign_ticks", "Ticks taken in (the gateway: from the feed; a "
                                "worker: from its ring).", ["gateway", *workers])  # fmt: skip
        yield self._per_process("ticks_dropped", "sovereign_ticks_dropped", "Ticks the gateway could not "
                                "push to a worker's ring (the worker stalled, its ring full).",
                                ["gateway"])  # fmt: skip
        refused = CounterMetricFamily("sovereign_ticks_refused", "Ticks refused as bad (a time out of the "
                                      "window or far ahead, a bad price, late, backwards).",
                                      labels=["process", "reason"])  # fmt: skip
        for role in ["gateway", *workers]:
            counts = slots["ticks_refused"][self.layout.slot(role)]
            for i, why in enumerate(TICK_REFUSALS):
                if role != "gateway" or why in ("out_of_window", "ahead"):
                    refused.add_metric([role, why], float(counts[i]))
        yield refused
        yield self._per_process("signals", "sovereign_signals", "Signals a worker's agents emitted.", workers)
        g, risk, coord = (self.layout.slot(r) for r in ("gateway", "risk", "coordinator"))
        yield CounterMetricFamily("sovereign_intents", "Order intents the coordinator emitted.",
                                  value=float(slots["intents"][coord]))  # fmt: skip
        orders = CounterMetricFamily("sovereign_orders", "Orders sent to the broker, by the final state "
                                     "they reached.", labels=["state"])  # fmt: skip
        for i, state in enumerate(FINAL_STATES):
            orders.add_metric([state], float(slots["orders"][g][i]))
        yield orders
        rejections = CounterMetricFamily("sovereign_rejections", "Intents risk refused and orders the broker "
                                         "refused, by reason.", labels=["reason"])  # fmt: skip
        both = slots["rejections"][risk] + slots["rejections"][g]
        for r in REFUSING:
            rejections.add_metric([r.name.lower()], float(both[int(r)]))
        yield rejections
        yield CounterMetricFamily("sovereign_fills", "Executions (fills), the broker's own stops and targets "
                                  "included.", value=float(slots["fills"][g]))  # fmt: skip
        yield _histogram("sovereign_tick_to_order_seconds", "From the arrival of the tick an order was "
                         "decided on to the order's submission to the broker.", slots[g], "tick_to_order")
        yield _histogram("sovereign_commit_seconds", "The gateway's durable LMDB commits.", slots[g],
                         "commit")  # fmt: skip

    def _account(self) -> Iterator[Metric]:
        s = self.board.slots[self.layout.slot("risk")]
        c = [self.currency]
        for field, name, doc, labels in (
            ("equity", "sovereign_equity", "Account equity, in the account currency.", c),
            ("balance", "sovereign_balance", "Account balance, in the account currency.", c),
            ("drawdown", "sovereign_drawdown_ratio", "(peak - equity) / peak.", None),
            ("drawdown_limit", "sovereign_drawdown_limit_ratio", "risk.max_drawdown.", None),
            ("daily_loss", "sovereign_daily_loss_ratio", "(day start - equity) / day start; 0 when up.",
             None),
            ("daily_loss_limit", "sovereign_daily_loss_limit_ratio", "risk.daily_loss_limit.", None),
            ("gross_exposure", "sovereign_gross_exposure_ratio", "Gross notional / equity, at the last mark.",
             None),
            ("open_positions", "sovereign_open_positions", "Open positions.", None),
            ("market_open", "sovereign_market_open", "1 while the market calendar has the market open.",
             None),
        ):  # fmt: skip
            v = float(s[field])
            if math.isnan(v):
                continue
            m = GaugeMetricFamily(name, doc, labels=["currency"] if labels else None)
            m.add_metric(labels or [], v)
            yield m
        state = float(s["trading_state"])
        if not math.isnan(state):
            m = GaugeMetricFamily("sovereign_trading_state", "1 for the trading state risk holds.",
                                  labels=["state"])  # fmt: skip
            for i, name in enumerate(TRADING_STATES):
                m.add_metric([name.lower()], float(i == int(state)))
            yield m
        connected = float(self.board.slots["broker_connected"][self.layout.slot("gateway")])
        if not math.isnan(connected):
            yield GaugeMetricFamily("sovereign_broker_connected", "1 while the broker is connected (paper: "
                                    "always; MT5: the terminal beats).", value=connected)  # fmt: skip

    def _market(self) -> Iterator[Metric]:
        recv = self.quotes.snapshot()["recv_ns"]
        now = time.monotonic_ns()
        # a symbol not quoted since the start counts from the start
        ages = (now - np.where(recv > 0, recv, self.started_mono_ns)).clip(0) / 1e9
        m = GaugeMetricFamily("sovereign_quote_age_seconds", "Time since the symbol's newest quote arrived "
                              "(since the start, if none has).", labels=["symbol"])  # fmt: skip
        for name, a in zip(self.symbols, ages.tolist(), strict=False):
            m.add_metric([name], a)
        yield m
        if len(ages):
            yield GaugeMetricFamily("sovereign_quote_age_max_seconds", "The largest quote age.",
                                    value=float(ages.max()))  # fmt: skip


def _histogram(name: str, doc: str, slot: np.void, field: str) -> Metric:
    cumulative = np.cumsum(slot[field]).tolist()
    buckets = [(repr(b), float(n)) for b, n in zip(BUCKETS_S, cumulative, strict=False)]
    buckets.append(("+Inf", float(cumulative[-1])))
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=float(slot[f"{field}_sum"]))


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    block_on_close = False  # a client that never finishes its request must not hold up the stop


class _Quiet(WSGIRequestHandler):
    timeout = 10.0  # a request that does not arrive in time is dropped

    def log_message(self, format: str, *args: Any) -> None:
        """Not a line per scrape."""


class Exporter:
    """The collector in a registry of its own (no process or platform collectors), served
    over HTTP on a daemon thread where [metrics] listen says, and read by the control
    socket's `metrics`."""

    def __init__(self, collector: Collector):
        self.collector = collector
        self.registry = CollectorRegistry()
        self.registry.register(collector)
        self.server: _Server | None = None
        self.url = ""

    def listen(self, listen: str, key: str) -> str:
        """Serve on `listen` ("": not at all); returns the URL served ("" when off). An
        address that cannot be bound is a ListenError naming `key`."""
        address = listen_address(listen, key)
        if address is None:
            return ""
        host, port = address
        try:
            family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
        except socket.gaierror as e:
            raise ListenError(f"{key}: cannot resolve the host ({e.strerror})") from None
        server_class = type("Server", (_Server,), {"address_family": family})
        try:
            self.server = make_server(host, port, make_wsgi_app(self.registry), server_class, _Quiet)
        except OSError as e:
            why = "the address is in use (another program, or another sovereign, listens there)" \
                if e.errno == errno.EADDRINUSE else e.strerror  # fmt: skip
            raise ListenError(f"{key}: cannot listen on {host}:{port}: {why}; choose another port, 0 for "
                              "any free one, or \"\" to turn the exporter off") from None  # fmt: skip
        bound_host, bound_port = str(self.server.server_address[0]), int(self.server.server_address[1])
        shown = f"[{bound_host}]" if family == socket.AF_INET6 else bound_host
        self.url = f"http://{shown}:{bound_port}/metrics"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.5}, name="metrics",
                         daemon=True).start()  # fmt: skip
        return self.url

    def text(self) -> str:
        """One scrape, in the text exposition format."""
        return generate_latest(self.registry).decode()

    def close(self) -> None:
        """Stop serving and stop reading the boards (before they are unmapped)."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
        self.collector.close()
