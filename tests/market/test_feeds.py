"""The gateway's feed: ticks outside the time window or far ahead of the stream never leave
it (the board, the recorder, the workers and the broker see only what it gives), and its
market clock."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sovereign.config import from_dict
from sovereign.core import AgentPool
from sovereign.market.feeds import Feed

NS = 1_000_000_000
DAY = 86_400 * NS


def drain(feed: Feed, n: int = 512) -> np.ndarray:
    parts = []
    while not feed.done:
        parts.append(feed.next(n))
    return np.concatenate(parts)


def replay(tmp: Path, rows: list[tuple[int, str]], **feed: object) -> Feed:
    """A replay feed of generic CSV rows (time in ns, symbol), prices made up."""
    path = tmp / "ticks.csv"
    lines = [f"{ts},{sym},1.1000,1.1002,1" for ts, sym in rows]
    path.write_text("time,symbol,bid,ask,volume\n" + "\n".join(lines) + "\n")
    return Feed(from_dict({"feed": {"kind": "replay", "files": [str(path)], **feed}}))


def test_a_sim_crossing_the_end_of_the_window_stops_giving_ticks_there() -> None:
    """A sim started a minute before 2200-01-01: what it makes from then on is dropped and
    counted, never given to the gateway."""
    feed = Feed(from_dict({"feed": {"start": "2199-12-31T23:59:00", "tick_interval_s": 0.5, "symbols": 2}}))
    got = np.concatenate([feed.next(100) for _ in range(10)])
    assert len(got) > 0 and int(got["ts_ns"].max()) < AgentPool.MAX_TIME_NS
    assert feed.refused["out_of_window"] == 1000 - len(got) > 0


def test_a_lone_far_future_tick_is_dropped_and_a_stream_after_a_long_hole_is_taken(tmp_path: Path) -> None:
    """A replay ending in a tick of 2150 (in the window, but more than 7 days past the
    stream): dropped as ahead. A hole of 30 days in the middle: the first minute after it is
    dropped (as the pool would), then the stream goes on."""
    t0 = 1_767_312_000 * NS  # 2026-01-02
    before = [(t0 + k * NS, "A") for k in range(100)]
    after = [(t0 + 30 * DAY + k * NS, "A") for k in range(200)]
    far = [(5_680_281_600 * NS, "A")]  # 2150-01-01
    feed = replay(tmp_path, before + after + far)
    got = drain(feed)
    want = np.array([ts for ts, _ in before + after[60:]])
    assert np.array_equal(got["ts_ns"], want)
    assert feed.refused == {"out_of_window": 0, "ahead": 60 + 1}


def test_the_same_ticks_in_any_batches_give_the_same_screen(tmp_path: Path) -> None:
    t0 = 1_767_312_000 * NS
    rows = [(t0 + k * NS, "A") for k in range(50)]
    rows += [(t0 + 20 * DAY + k * NS // 4, "A") for k in range(400)]
    rows += [(t0 + 40 * DAY + k * NS, "B") for k in range(30)]
    rows += [(t0 + 41 * DAY + k * NS, "B") for k in range(90)]
    whole = drain(replay(tmp_path, rows), 100_000)
    for n in (1, 7, 64):
        feed = replay(tmp_path, rows)
        assert np.array_equal(drain(feed, n), whole)
    # the first minute after the 20-day hole; all of B's first 30 s (then a day of silence,
    # and B resumes within 7 days of them: the stream has gone on there, taken)
    assert feed.refused["ahead"] == 240 + 30


def test_the_market_clock_is_the_newest_tick_given_at_fast_pace() -> None:
    feed = Feed(from_dict({"feed": {"symbols": 3, "start": "2026-03-01T00:00:00"}}))
    assert feed.clock_ns == 0
    for _ in range(5):
        got = feed.next(300)
        assert feed.clock_ns == int(got["ts_ns"][-1])


@pytest.mark.parametrize("speed", [1.0, 1e5])
def test_a_paced_feed_clock_runs_ahead_of_its_last_tick_but_never_past_the_next(speed: float) -> None:
    """Realtime: the clock is the market time every tick up to which has been given, so a
    quiet market's clock still moves, and no tick given later is older than it."""
    cfg = {"feed": {"symbols": 2, "pace": "realtime", "speed": speed, "start": "2026-03-01T00:00:00",
                    "tick_interval_s": 2.0}}  # fmt: skip
    feed = Feed(from_dict(cfg))
    clocks, given = [], []
    while len(clocks) < 2000:
        given.append(feed.next(64))
        clocks.append((feed.clock_ns, sum(len(g) for g in given)))
    ts = np.concatenate(given)["ts_ns"]
    assert len(ts) > 0 and np.all(np.diff([c for c, _ in clocks]) >= 0)
    for clock, n in clocks:  # every tick given after the clock was read is not older than it
        assert n == len(ts) or ts[n] >= clock
        assert n == 0 or ts[n - 1] <= clock
    if speed == 1.0:  # a tick every second of market time: most calls give none, yet the clock moves
        assert clocks[-1][0] > ts[-1]


def test_a_feed_ended_by_max_ticks_ends_its_clock_at_its_last_tick() -> None:
    """The market ends where the feed stops giving ticks, at any pace: a paced run and a
    full-speed run of the same ticks close the same bars."""
    cfg = {"symbols": 2, "start": "2026-03-01T00:00:00", "tick_interval_s": 0.01, "max_ticks": 3000}
    for pace in ({}, {"pace": "realtime", "speed": 1e4}):
        feed = Feed(from_dict({"feed": {**cfg, **pace}}))
        got = drain(feed, 64)
        assert len(got) == 3000 and feed.clock_ns == int(got["ts_ns"][-1])
