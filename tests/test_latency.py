"""LatencyHistogram: percentiles within its stated 1/32 of numpy's, fixed size."""

from __future__ import annotations

import numpy as np
import pytest

from sovereign.latency import LatencyHistogram


@pytest.mark.parametrize("q", [1, 50, 90, 99, 99.9])
def test_percentiles_are_within_a_32nd_of_the_exact_ones(q: float) -> None:
    rng = np.random.default_rng(7)
    ns = rng.lognormal(mean=13.0, sigma=1.5, size=200_000).astype(np.int64)  # ~0.4 ms, long tail
    h = LatencyHistogram()
    for part in np.array_split(ns, 37):
        h.add(part)
    exact = float(np.percentile(ns, q, method="inverted_cdf"))
    assert abs(h.percentile(q) - exact) <= exact / 32
    assert h.n == len(ns) and h.max_ns == int(ns.max())
    assert h.counts.nbytes == 41 * 16 * 8  # the same however much it saw


def test_origins_of_zero_are_not_counted_and_empty_says_nothing() -> None:
    h = LatencyHistogram()
    assert h.to_dict() == {} and h.percentile(99) == 0.0
    h.add_since(np.array([0, 1_000, 0, 3_000]), now_ns=11_000)  # 10 us and 8 us
    d = h.to_dict()
    assert d["n"] == 2 and d["max_us"] == 10.0
    assert abs(d["p50_us"] - 8.0) <= 8.0 / 32


def test_values_past_the_range_land_in_the_last_bucket() -> None:
    h = LatencyHistogram()
    h.add(np.array([0, -5, 1, 2**50]))
    assert h.n == 4 and h.counts[-1] == 1 and h.counts[0] == 3
    assert h.percentile(100) == float(2**50)  # the max, not past it


def test_small_batches_land_in_the_same_buckets_as_large_ones() -> None:
    """Batches up to SMALL are bucketed in Python integers, larger ones in numpy floats."""
    rng = np.random.default_rng(3)
    ns = np.concatenate([rng.integers(1, 2**41, 5000), 2 ** np.arange(42), 2 ** np.arange(1, 42) - 1])
    one_by_one, at_once = LatencyHistogram(), LatencyHistogram()
    for x in ns:
        one_by_one.add(np.array([x]))
    at_once.add(ns)
    assert np.array_equal(one_by_one.counts, at_once.counts)
    since_once, since_small = LatencyHistogram(), LatencyHistogram()
    origins = np.where(rng.random(400) < 0.2, 0, rng.integers(1, 10**9, 400))  # zeros: no tick behind it
    since_once.add_since(origins, now_ns=2 * 10**9)
    for part in np.array_split(origins, 100):
        since_small.add_since(part, now_ns=2 * 10**9)
    assert np.array_equal(since_once.counts, since_small.counts) and since_once.n == since_small.n
    assert since_once.max_ns == since_small.max_ns
