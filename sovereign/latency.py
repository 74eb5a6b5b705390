"""Latency histograms of fixed size, for a process that runs for years.

Each process on the tick-to-order path keeps one per hop (the time from a tick's arrival
at the gateway to the moment the record it led to passes that hop) and journals them
when it stops. Buckets are logarithmic with 16 per doubling (HdrHistogram's layout at one
significant hex digit), so any percentile read back is within 1/32 (3.1%) of the true
value, and memory stays at 41 x 16 counters however many orders a decade brings.
"""

from __future__ import annotations

import numpy as np

SUB = 16  # buckets per doubling
OCTAVES = 41  # 1 ns .. 2^41 ns (36 min); longer is counted in the last bucket
SMALL = 16  # batches up to this size are bucketed in plain Python


def bucket(ns: int) -> int:
    """The bucket of one latency (ns >= 1), in integers: the octave, then the next 4 bits."""
    exp = ns.bit_length() - 1
    sub = (ns >> (exp - 4)) & (SUB - 1) if exp >= 4 else (ns << (4 - exp)) & (SUB - 1)
    return min(exp * SUB + sub, OCTAVES * SUB - 1)


class LatencyHistogram:
    def __init__(self) -> None:
        self.counts = np.zeros(OCTAVES * SUB, np.int64)
        self.n = 0
        self.max_ns = 0

    def add(self, ns: np.ndarray) -> None:
        """Record latencies in nanoseconds (any integer array; values < 1 count as 1)."""
        v = np.maximum(np.asarray(ns, np.int64), 1)
        if not len(v):
            return
        if len(v) <= SMALL:
            for x in v.tolist():
                self._one(x)
            return
        exp = np.floor(np.log2(v)).astype(np.int64)
        sub = ((v / np.exp2(exp) - 1.0) * SUB).astype(np.int64)
        idx = np.minimum(exp * SUB + np.minimum(sub, SUB - 1), len(self.counts) - 1)
        self.counts += np.bincount(idx, minlength=len(self.counts))
        self.n += len(v)
        self.max_ns = max(self.max_ns, int(v.max()))

    def add_since(self, origins_ns: np.ndarray, now_ns: int) -> None:
        """Record now - origin for each nonzero origin (0: no tick led to the record)."""
        if len(origins_ns) <= SMALL:  # the usual batch on the latency path: no numpy calls
            for o in origins_ns.tolist():
                if o:
                    self._one(max(now_ns - o, 1))
            return
        o = np.asarray(origins_ns, np.int64)
        self.add(now_ns - o[o != 0])

    def _one(self, ns: int) -> None:
        self.counts[bucket(ns)] += 1
        self.n += 1
        self.max_ns = max(self.max_ns, ns)

    def percentile(self, q: float) -> float:
        """The q-th percentile in nanoseconds (the middle of its bucket); 0 when empty."""
        if self.n == 0:
            return 0.0
        rank = max(1, int(np.ceil(q / 100.0 * self.n)))
        i = int(np.searchsorted(np.cumsum(self.counts), rank))
        if i == len(self.counts) - 1:  # the overflow bucket: its values are unknown but the max
            return float(self.max_ns)
        exp, sub = divmod(i, SUB)
        return min(float(self.max_ns), 2.0**exp * (1.0 + (sub + 0.5) / SUB))

    def to_dict(self) -> dict[str, float]:
        """As the journal keeps it: count, p50, p99 and max in microseconds ({} when empty)."""
        if self.n == 0:
            return {}
        return {"n": self.n, "p50_us": self.percentile(50) / 1e3, "p99_us": self.percentile(99) / 1e3,
                "max_us": self.max_ns / 1e3}  # fmt: skip
