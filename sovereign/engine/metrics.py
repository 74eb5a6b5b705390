"""Metrics: every process's counters, gauges and histograms in one fixed shared-memory
layout (the metrics board), written by each process; the exporter that reads it on each
scrape is sovereign.engine.exporter (the supervisor's alone: no other process imports
prometheus_client).

The board is made by the supervisor beside the heartbeat board and lives as long as it:
one slot per process (Layout.roles()), each field one aligned 8-byte word (or a fixed
array of them) with a single writer, so a reader never sees a torn value. A process
publishes into its slot where it already beats (`Meter.publish`: plain stores, tens of
times a second at most); the supervisor writes `up` alone. Counters are kept across a
process's restarts: a new process adds to what its slot holds (`Meter` reads it at start),
so a counter goes back only when the whole system starts again (sovereign_start_time_seconds
says when). Gauges start as NaN (not yet published: no series).

The names the exporter gives these fields are docs/metrics.md's.
"""

from __future__ import annotations

import bisect
import mmap
import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from sovereign.engine.runtime import METRICS_SLOT_BYTES, Child, _open_private
from sovereign.model import Reason

# Histogram buckets (upper bounds, seconds) of tick-to-order and the durable commit: from
# a fast commit on an idle disk (tens of microseconds) to a stuck one (seconds).
BUCKETS_S = (0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
             0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)  # fmt: skip
N_BUCKETS = len(BUCKETS_S) + 1  # the last: +Inf
# Why a tick was refused: the AgentPool's reasons (csrc/agent_pool.hpp, kRejectNames), of
# which the gateway's screen uses out_of_window and ahead.
TICK_REFUSALS = ("bad_price", "crossed", "bad_volume", "bad_timestamp", "backwards", "unknown_symbol",
                 "late", "bad_bar", "misaligned", "out_of_window", "ahead")  # fmt: skip
FINAL_STATES = ("filled", "rejected", "canceled", "expired")  # an order's final state (OrderState)
REASONS = 32  # rejections by Reason value
# The reasons of a refusal (the others are of orders sent: exits, closes, a flatten's).
REFUSING: tuple[Reason, ...] = tuple(
    r for r in Reason if r not in (Reason.OK, Reason.FLATTEN, Reason.EXIT_SL, Reason.EXIT_TP, Reason.CLOSE))
TRADING_STATES = ("ACTIVE", "REDUCING", "HALTED")  # TradingState, by its index in the gauge

SLOT_DTYPE = np.dtype([
    ("up", "<u8"),  # the supervisor's: 1 while the process runs and beats
    # counters, each process's own; kept across its restarts
    ("ticks", "<u8"), ("ticks_dropped", "<u8"), ("ticks_refused", "<u8", (16,)),
    ("signals", "<u8"), ("intents", "<u8"), ("fills", "<u8"),
    ("orders", "<u8", (len(FINAL_STATES),)), ("rejections", "<u8", (REASONS,)),
    ("tick_to_order", "<u8", (N_BUCKETS,)), ("tick_to_order_sum", "<f8"),
    ("commit", "<u8", (N_BUCKETS,)), ("commit_sum", "<f8"),
    # gauges (NaN: not published yet)
    ("equity", "<f8"), ("balance", "<f8"), ("drawdown", "<f8"), ("drawdown_limit", "<f8"),
    ("daily_loss", "<f8"), ("daily_loss_limit", "<f8"), ("gross_exposure", "<f8"),
    ("open_positions", "<f8"), ("trading_state", "<f8"), ("market_open", "<f8"),
    ("broker_connected", "<f8"),
    ("pad", "<u8", (19,)),
])  # fmt: skip
assert SLOT_DTYPE.itemsize == METRICS_SLOT_BYTES
GAUGES = ("equity", "balance", "drawdown", "drawdown_limit", "daily_loss", "daily_loss_limit",
          "gross_exposure", "open_positions", "trading_state", "market_open", "broker_connected")  # fmt: skip
COUNTERS = tuple(n for n in SLOT_DTYPE.names or () if n not in GAUGES and n not in ("up", "pad"))


class MetricsBoard:
    """The slots in /dev/shm: made by the supervisor (`n` slots), attached by the others."""

    def __init__(self, name: str, n: int | None = None):
        self.path = Path("/dev/shm") / name
        self.owner = n is not None
        fd = _open_private(self.path, None if n is None else n * SLOT_DTYPE.itemsize)
        try:
            self._map = mmap.mmap(fd, 0)
        finally:
            os.close(fd)
        self.slots = np.frombuffer(self._map, SLOT_DTYPE)
        if self.owner:
            for g in GAUGES:
                self.slots[g] = np.nan

    def close(self) -> None:
        del self.slots
        self._map.close()
        if self.owner:
            self.path.unlink(missing_ok=True)


def meter(child: Child) -> Meter:
    """The child's slot on the system's metrics board."""
    return Meter(MetricsBoard(child.layout.metrics), child.slot)


class Histogram:
    """A latency histogram over BUCKETS_S, counted in the process and published with its
    slot (one writer: the thread that observes)."""

    BOUNDS_NS: ClassVar[list[int]] = [int(b * 1e9) for b in BUCKETS_S]

    def __init__(self) -> None:
        self.counts = [0] * N_BUCKETS
        self.sum_s = 0.0

    def observe_ns(self, ns: int) -> None:
        self.counts[bisect.bisect_left(self.BOUNDS_NS, ns)] += 1
        self.sum_s += ns / 1e9

    def observe_since(self, origins_ns: np.ndarray, now_ns: int) -> None:
        """now - origin for each nonzero origin (0: no tick led to the record)."""
        for o in origins_ns.tolist():
            if o:
                self.observe_ns(max(now_ns - o, 0))


class Meter:
    """A process's side of its slot. Counters are given as counted since this process
    started and published on top of what the slot held then (its earlier runs' counts);
    gauges as they are."""

    def __init__(self, board: MetricsBoard, slot: int):
        # each field's view into the slot: an array field's whole, a number's one-element array
        self.fields = {k: board.slots[k][slot] if SLOT_DTYPE[k].shape else board.slots[k][slot : slot + 1]
                       for k in (*COUNTERS, *GAUGES)}  # fmt: skip
        self.base = {k: self.fields[k].copy() for k in COUNTERS}

    def publish(self, gauges: dict[str, float] | None = None, **counters: Any) -> None:
        """Plain stores: `counters` by field (a number, or a sequence for an array field,
        its leading part), `gauges` by field."""
        fields, bases = self.fields, self.base
        for k, v in counters.items():
            if isinstance(v, list | tuple | np.ndarray):
                n = len(v)
                fields[k][:n] = bases[k][:n] + np.asarray(v, fields[k].dtype)
            else:
                fields[k][0] = bases[k][0] + v
        for k, g in (gauges or {}).items():
            fields[k][0] = g
