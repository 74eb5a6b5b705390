"""AgentPool: parameters, bad input, no look-ahead, snapshot/restore, memory, GIL."""

from __future__ import annotations

import struct
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sovereign.core import LAYOUT_VERSION, SIGNAL_DTYPE, TICK_DTYPE, AgentPool
from sovereign.market.sim import simulate_ticks
from tests.helpers import NS, T0, random_bars, ticks
from tests.helpers import bars as bars_of

PARAM_SETS = [{}, {"k": 2, "atr_n": 5, "m": 5, "wick": 0.3, "min_conviction": 0.4}]


def make_pool(n_symbols: int = 3, tfs: tuple[int, ...] = (60, 300)) -> AgentPool:
    pool = AgentPool()
    for sym in range(n_symbols):
        for tf in tfs:
            for p in PARAM_SETS:
                pool.add_agent(sym, tf, **p)
    return pool


@pytest.fixture(scope="module")
def market() -> np.ndarray:
    return simulate_ticks(3, 20_000, seed=5, mean_interval_s=0.5)


def run_all(pool: AgentPool, data: np.ndarray) -> np.ndarray:
    return np.concatenate([pool.on_ticks(data), pool.flush()])


# ---- parameters


def test_add_agent_returns_dense_ids_and_keeps_its_config() -> None:
    pool = AgentPool()
    assert pool.add_agent(symbol=0, timeframe_s=3600) == 0
    assert pool.add_agent(symbol=7, timeframe_s=60, k=5, weights=[0.25, 0.25, 0.25, 0.25]) == 1
    assert len(pool) == 2
    cfg = pool.agent_config(1)
    assert (cfg["symbol"], cfg["timeframe_s"], cfg["k"], cfg["atr_n"]) == (7, 60, 5, 14)
    assert cfg["weights"] == (0.25, 0.25, 0.25, 0.25)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"atr_n": 0}, "atr_n: 0 is not in"),
        ({"k": 17}, r"k: 17 is not in \[1, 16\]"),
        ({"m": 0}, "m: 0 is not in"),
        ({"max_levels": 65}, "max_levels: 65"),
        ({"tol_mult": -1.0}, "tol_mult"),
        ({"tol_mult": float("nan")}, "tol_mult"),
        ({"wick": 1.0}, r"wick: 1 is not in \[0, 1\)"),
        ({"min_conviction": 1.5}, "min_conviction"),
        ({"weights": (0.5, 0.5, 0.5, 0.5)}, "a sum of 1"),
        ({"weights": (1.0, 0.0, 0.0)}, "must have 4 numbers"),
        ({"weights": 3}, "sequence of 4 numbers"),
        ({"atr_n": 14.5}, "atr_n must be an integer"),
        ({"atr_n": True}, "atr_n must be an integer"),
        ({"wick": "0.4"}, "wick must be a number"),
        ({"atrn": 14}, "unknown agent parameter 'atrn'"),
        ({"symbol": -1}, r"symbol -1 is not in \[0, "),
        ({"timeframe_s": 0}, "timeframe_s 0 is not in"),
    ],
)
def test_bad_parameters_raise_value_error_naming_them(kwargs: dict, message: str) -> None:
    pool = AgentPool()
    args = {"symbol": 0, "timeframe_s": 60, **kwargs}
    with pytest.raises(ValueError, match=message):
        pool.add_agent(**args)
    assert len(pool) == 0


def test_wrong_array_types_raise_type_error() -> None:
    pool = make_pool()
    with pytest.raises(TypeError, match="on_ticks expects a 1-D array"):
        pool.on_ticks(np.zeros(3))
    with pytest.raises(TypeError, match="on_bars expects"):
        pool.on_bars(np.zeros(3, TICK_DTYPE))


# ---- bad input: rejected, counted, never a signal, and the rest is unchanged


BAD_TICKS = {
    "bad_price": [(1, float("nan"), 1.0), (1, float("inf"), float("inf")), (1, 0.0, 1.0), (1, -2.0, 1.0),
                  (1, 1.0, float("nan"))],
    "crossed": [(1, 1.2, 1.1)],
    "bad_volume": [(1, 1.0, 1.1, -1.0), (1, 1.0, 1.1, float("nan")), (1, 1.0, 1.1, float("inf"))],
    "bad_timestamp": [(0, 1.0, 1.1), (-5, 1.0, 1.1)],
}  # fmt: skip


def interleave_bad(good: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, int]]:
    """The good stream with bad ticks of every kind inserted at random places."""
    rows = list(good)
    counts: dict[str, int] = {}
    for reason, specs in BAD_TICKS.items():
        for spec in specs:
            for _ in range(5):
                at = int(rng.integers(1, len(rows)))
                prev = rows[at - 1]
                t = ticks([spec])[0]
                t["symbol"] = prev["symbol"]
                if t["ts_ns"] == 1:
                    t["ts_ns"] = prev["ts_ns"]
                rows.insert(at, t)
                counts[reason] = counts.get(reason, 0) + 1
    for _ in range(5):  # going backwards in time for its symbol
        at = int(rng.integers(100, len(rows)))
        t = rows[at - 1].copy()
        t["ts_ns"] -= 10 * NS
        rows.insert(at, t)
    counts["backwards"] = 5
    for _ in range(5):  # a symbol no agent trades
        at = int(rng.integers(1, len(rows)))
        t = rows[at - 1].copy()
        t["symbol"] = 99
        rows.insert(at, t)
    counts["unknown_symbol"] = 5
    return np.array(rows, TICK_DTYPE), counts


def test_bad_ticks_are_rejected_counted_and_change_nothing(market: np.ndarray) -> None:
    clean = run_all(make_pool(), market)
    dirty_ticks, counts = interleave_bad(market, np.random.default_rng(0))
    pool = make_pool()
    dirty = run_all(pool, dirty_ticks)
    assert len(clean) > 0
    assert np.array_equal(dirty, clean)
    stats = pool.stats()
    for reason, n in counts.items():
        assert stats["rejected"][reason] == n, reason
    assert stats["ticks"] == len(market)


def test_a_batch_of_only_garbage_yields_no_signal() -> None:
    rng = np.random.default_rng(1)
    garbage = np.frombuffer(rng.bytes(TICK_DTYPE.itemsize * 5000), TICK_DTYPE).copy()
    pool = make_pool()
    out = run_all(pool, garbage)
    assert len(out) == 0  # (a random tick passes every check with probability ~1e-9)
    assert sum(pool.stats()["rejected"].values()) + pool.stats()["ticks"] == len(garbage)


def test_bad_bars_are_rejected_and_counted() -> None:
    pool = AgentPool()
    pool.add_agent(0, 60)
    good = random_bars(5)
    bad = good.copy()
    bad[0]["high"] = bad[0]["low"] - 1  # high below low
    bad[1]["close"] = float("nan")
    bad[2]["ts_ns"] += 1  # not on a minute boundary
    bad[3]["timeframe_s"] = 300  # no agent on M5
    bad[3]["ts_ns"] = T0 + 300 * NS
    bad[4]["volume"] = -1
    pool.on_bars(bad)
    pool.on_bars(good[3:4])
    pool.on_bars(good[2:3])  # older than the bar before it
    r = pool.stats()["rejected"]
    counted = (r["bad_bar"], r["misaligned"], r["unknown_symbol"], r["bad_volume"], r["backwards"])
    assert counted == (2, 1, 1, 1, 1)
    assert pool.stats()["bars"] == 1


@pytest.mark.parametrize("threads", [2, 3, 8])
def test_bars_in_threads_give_what_one_pass_in_time_order_gives(threads: int) -> None:
    """on_bars takes the bars symbol by symbol, in threads of disjoint symbols: the signals
    (and their order), counters and state are those of one thread, bad bars included."""
    parts = [random_bars(6_000, seed=s, symbol=s) for s in range(5)]
    parts.append(random_bars(50, seed=9, symbol=7))  # a symbol no agent trades
    bars = np.concatenate(parts)
    bars = bars[np.argsort(bars["ts_ns"], kind="stable")]
    bad = np.random.default_rng(1).choice(len(bars), 40, replace=False)
    bars["high"][bad[:20]] = bars["low"][bad[:20]] - 1
    bars["volume"][bad[20:]] = -1
    one, many = make_pool(5, (60, 300, 900)), make_pool(5, (60, 300, 900))
    many.threads = threads
    assert many.threads == threads
    for piece in np.array_split(bars, 3):
        a, b = one.on_bars(piece), many.on_bars(piece)
        assert len(a) > 0 and a.tobytes() == b.tobytes()
    assert one.stats() == many.stats() and one.snapshot() == many.snapshot()
    assert one.stats()["rejected"]["unknown_symbol"] == 50


def aggregate(bars: np.ndarray, tf: int) -> np.ndarray:
    """Bars of timeframe tf built from smaller ones, the plain way: group by period."""
    period = bars["ts_ns"] - bars["ts_ns"] % (tf * NS)
    starts = np.flatnonzero(np.r_[True, period[1:] != period[:-1]])
    ends = np.r_[starts[1:], len(bars)]
    out = np.zeros(len(starts), bars.dtype)
    out["ts_ns"], out["open"], out["close"] = period[starts], bars["open"][starts], bars["close"][ends - 1]
    out["high"] = np.maximum.reduceat(bars["high"], starts)
    out["low"] = np.minimum.reduceat(bars["low"], starts)
    out["volume"] = np.add.reduceat(bars["volume"], starts)
    out["symbol"], out["timeframe_s"] = bars["symbol"][0], tf
    return out


def test_small_bars_build_the_bars_of_larger_timeframes() -> None:
    m1 = random_bars(3000, seed=3)
    m1 = np.delete(m1, [7, 8, 9, 500, 1204])  # gaps, one at the end of a period
    params = {"k": 2, "atr_n": 5, "m": 5, "min_conviction": 0.3}
    built = AgentPool()
    for tf in (60, 300, 900):
        built.add_agent(0, tf, **params)
    from_m1 = built.on_bars(m1)
    parts = []
    for agent, bars in enumerate((m1, aggregate(m1, 300), aggregate(m1, 900))):
        direct = AgentPool()  # one timeframe: fed exactly the bars it should see
        direct.add_agent(0, int(bars["timeframe_s"][0]), **params)
        sig = direct.on_bars(bars)
        sig["agent"] = agent
        parts.append(sig)
        assert built.agent_state(agent) == {**direct.agent_state(0), "agent": agent}
    signals = np.concatenate(parts)
    key = ["ts_ns", "agent"]
    assert np.array_equal(np.sort(from_m1, order=key), np.sort(signals, order=key))
    assert len(from_m1) > 0
    assert built.stats()["bars"] == len(m1) + len(aggregate(m1, 300)) + len(aggregate(m1, 900))
    assert built.stats()["rejected"]["unknown_symbol"] == 0


# ---- bars from ticks, flush


def test_bars_are_built_from_bid_and_aligned_to_the_timeframe() -> None:
    pool = AgentPool()
    pool.add_agent(0, 60, atr_n=1)
    t = ticks([(T0 + 5 * NS, 1.0, 1.1, 2), (T0 + 20 * NS, 1.3, 1.4, 3), (T0 + 59 * NS, 0.9, 1.0, 4),
               (T0 + 61 * NS, 1.0, 1.1)])  # fmt: skip
    pool.on_ticks(t)
    s = pool.agent_state(0)
    assert s["bars"] == 1 and s["momentum"]["obv"] == 9  # volume 2 + 3 + 4
    pool.flush()
    assert pool.agent_state(0)["atr"] == max(1.0 - 1.0, abs(1.0 - 0.9), abs(1.0 - 0.9))


def test_volume_falls_back_to_tick_count() -> None:
    pool = AgentPool()
    pool.add_agent(0, 60)
    pool.on_ticks(ticks([(T0 + i * NS, 1.0, 1.1, 0.0) for i in range(7)]))
    pool.flush()
    assert pool.agent_state(0)["momentum"]["obv"] == 7


def test_flush_closes_only_ended_periods_and_late_ticks_are_rejected() -> None:
    pool = AgentPool()
    pool.add_agent(0, 60)
    pool.add_agent(0, 300)
    pool.on_ticks(ticks([(T0 + 10 * NS, 1.0, 1.1)]))
    pool.flush(T0 + 59 * NS)
    assert pool.stats()["bars"] == 0
    pool.flush(T0 + 60 * NS)  # the M1 bar has ended, the M5 bar has not
    assert pool.stats()["bars"] == 1
    pool.on_ticks(ticks([(T0 + 30 * NS, 1.0, 1.1)]))  # belongs to the closed M1 bar
    assert pool.stats()["rejected"]["late"] == 1
    pool.on_ticks(ticks([(T0 + 70 * NS, 1.0, 1.1)]))
    assert pool.stats()["ticks"] == 2


# ---- time: a window of sane times, and no tick far ahead of the stream

DAY = 86_400 * NS
FAR_FUTURE = [2**63 - 1, 2**63 - 2**20, 7_258_118_400 * NS]  # the last: 2200-01-01, the first time refused
LONG_AGO = [1, 1_767_225_600, 946_684_799 * NS]  # 1970; 2026 in seconds read as ns; 1999-12-31T23:59:59Z


def inserted(data: np.ndarray, at: int, rows: list[tuple[int, int]]) -> np.ndarray:
    """data with ticks (symbol, ts_ns) inserted before position `at`, prices of the tick before."""
    extra = np.repeat(data[at - 1 : at], len(rows))
    extra["symbol"], extra["ts_ns"] = zip(*rows, strict=True)
    return np.concatenate([data[:at], extra, data[at:]])


def test_ticks_outside_the_time_window_are_rejected_and_poison_nothing(market: np.ndarray) -> None:
    """A tick stamped near 2^63 was accepted: its bar end overflowed, and every later tick
    of its symbol was rejected as going backwards, for good."""
    clean = run_all(make_pool(), market)
    half = len(market) // 2
    bad = [(s, ts) for ts in FAR_FUTURE + LONG_AGO for s in range(3)]
    pool = make_pool()
    before = pool.snapshot()
    pool.on_ticks(inserted(market, 1, bad)[1 : 1 + len(bad)])  # before any good tick: nothing changes
    changed = pool.snapshot()
    got = run_all(pool, inserted(market, half, bad))
    assert np.array_equal(got, clean)
    stats = pool.stats()
    assert stats["rejected"]["out_of_window"] == 2 * len(bad)
    assert stats["ticks"] == len(market) and stats["rejected"]["backwards"] == 0
    counters = 8 * (3 + len(stats["rejected"])) + 16  # the snapshot's PoolCounters and StreamClock
    assert changed[64:-counters] == before[64:-counters] and changed[-16:] == before[-16:]  # after the header


def test_ticks_far_ahead_of_the_stream_are_rejected(market: np.ndarray) -> None:
    """Within the window but more than 7 days ahead of the newest tick the pool took: a
    clock gone wrong, not the market (no market closes for longer). A burst of them at one
    bogus time is refused too."""
    clean = run_all(make_pool(), market)
    half = len(market) // 2
    newest = int(market["ts_ns"][half - 1])
    bad = [(1, newest + 8 * DAY), (0, 2**62), (1, 2**62), (2, 2**62), (2, 2**62 + NS)]
    pool = make_pool()
    got = run_all(pool, inserted(market, half, bad))
    assert np.array_equal(got, clean)
    assert pool.stats()["rejected"]["ahead"] == len(bad) and pool.stats()["ticks"] == len(market)
    assert pool.stats()["rejected"]["backwards"] == 0


def test_a_jump_of_the_whole_stream_is_taken_after_a_minute_of_it(market: np.ndarray) -> None:
    """A stream that resumes after a longer silence (a data set with a hole, a system down
    for weeks) is not refused for good: its ticks are taken once it has gone on for a minute
    at the new time with no tick at the old between. A snapshot taken meanwhile resumes
    exactly."""
    half = len(market) // 2
    data = market.copy()
    data["ts_ns"][half:] += 30 * DAY
    lost = int((data["ts_ns"][half:] < data["ts_ns"][half] + 60 * NS).sum())
    unbroken = make_pool()
    want = run_all(unbroken, data)
    assert lost > 1 and unbroken.stats()["rejected"]["ahead"] == lost
    assert unbroken.stats()["ticks"] == len(data) - lost
    pool = make_pool()
    head = pool.on_ticks(data[: half + 1])
    resumed = AgentPool()
    resumed.restore(pool.snapshot())
    got = np.concatenate([head, run_all(resumed, data[half + 1 :])])
    assert np.array_equal(got, want) and (got["ts_ns"] > data["ts_ns"][half]).sum() > 0
    assert resumed.stats() == unbroken.stats() and resumed.snapshot() == unbroken.snapshot()


def test_bars_outside_the_time_window_are_rejected() -> None:
    pool = AgentPool()
    pool.add_agent(0, 60)
    far = bars_of([(1.0, 1.2, 0.9, 1.1)], start=(2**63 - 1) // (60 * NS) * 60 * NS)
    pool.on_bars(far)
    assert pool.stats()["rejected"]["out_of_window"] == 1 and pool.stats()["bars"] == 0
    pool.on_bars(random_bars(20))
    assert pool.stats()["bars"] == 20


def fnv1a(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def poisoned(blob: bytes, old: int, new: int) -> bytes:
    """The snapshot with the time `old` written as `new` wherever it holds it, its checksum
    (the header's last word, FNV-1a of the payload after the 64-byte header) made good."""
    was = struct.pack("<q", old)
    assert blob.count(was) >= 1
    out = bytearray(blob.replace(was, struct.pack("<q", new)))
    out[56:64] = struct.pack("<Q", fnv1a(bytes(out[64:])))
    return bytes(out)


@pytest.mark.parametrize("where", ["last_tick", "open_bar_end"])
def test_restore_refuses_a_snapshot_holding_times_outside_the_window(where: str) -> None:
    pool = AgentPool()
    pool.add_agent(0, 60)
    last = T0 + 61 * NS + 500_000_000  # the symbol's newest tick; its open bar ends at T0 + 120 s
    pool.on_ticks(ticks([(T0 + 5 * NS, 1.0, 1.1), (last, 1.0, 1.1)]))
    old = last if where == "last_tick" else T0 + 120 * NS
    blob = poisoned(pool.snapshot(), old, 2**63 - 2**20)
    target = AgentPool()
    with pytest.raises(ValueError, match="outside"):
        target.restore(blob)
    assert len(target) == 0
    target.restore(poisoned(pool.snapshot(), old, old))  # the same bytes: the checksum is right


# ---- no look-ahead


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 2999))
def test_appending_bars_never_changes_earlier_signals(n: int) -> None:
    data = random_bars(3000, seed=7)
    full = make_pool(1, (60,))
    all_signals = full.on_bars(data)
    prefix = make_pool(1, (60,))
    early = prefix.on_bars(data[:n])
    known_by = data[n - 1]["ts_ns"] + 60 * NS
    assert np.array_equal(early, all_signals[all_signals["ts_ns"] <= known_by])


# ---- snapshot / restore


@settings(max_examples=25, deadline=None)
@given(cut=st.floats(0, 1))
def test_restore_mid_stream_emits_exactly_what_an_unbroken_pool_emits(market: np.ndarray, cut: float) -> None:
    at = int(cut * len(market))
    unbroken = make_pool()
    want = run_all(unbroken, market)
    first = make_pool()
    head = first.on_ticks(market[:at])
    blob = first.snapshot()
    del first
    resumed = AgentPool()  # an empty pool adopts the snapshot's agents
    resumed.restore(blob)
    tail = run_all(resumed, market[at:])
    assert np.array_equal(np.concatenate([head, tail]), want)
    assert resumed.stats() == unbroken.stats()
    assert resumed.snapshot() == unbroken.snapshot()


TWIN_SETS = [{}, {"k": 2}, {"weights": (0.25,) * 4, "min_conviction": 0.4}, {"min_conviction": 0.35}]


def test_twins_share_their_analyzers_and_signal_exactly_as_if_each_ran_alone(market: np.ndarray) -> None:
    """Agents of one series that differ only in how they score (weights, min_conviction)
    run their analyzers once per bar; each scores alone, in agent order. An agent added
    later with the same parameters has its own history, so it is no twin."""
    data = market.copy()
    data["recv_ns"] = np.arange(len(data))  # which tick closed each bar: the signals' order
    half = len(data) // 2
    together, alone = AgentPool(), []
    for sym in range(3):
        for p in TWIN_SETS:
            together.add_agent(sym, 60, **p)
            alone.append(AgentPool())
            alone[-1].add_agent(sym, 60, **p)
    assert together.twins == 6
    head = together.on_ticks(data[:half])
    resumed = AgentPool()
    resumed.restore(together.snapshot())  # followers' states are written out as their leader's
    assert resumed.twins == 6
    late = resumed.add_agent(0, 60, min_conviction=0.35)  # agent 3's parameters, but a fresh state
    assert resumed.twins == 6 and resumed.agent_state(late)["bars"] == 0
    tail, rest = resumed.on_ticks(data[half:]), resumed.flush()

    def each(pool: AgentPool, agent: int, part: np.ndarray) -> np.ndarray:
        out = pool.on_ticks(part)
        out["agent"] = agent
        return out

    want_head = np.concatenate([each(pool, a, data[:half]) for a, pool in enumerate(alone)])
    want_tail = np.concatenate([each(pool, a, data[half:]) for a, pool in enumerate(alone)])
    fresh = AgentPool()  # the late agent on its own series' history, which began before it
    fresh.add_agent(0, 60)
    fresh.on_ticks(data[:half])
    fresh.add_agent(0, 60, min_conviction=0.35)
    assert fresh.twins == 0
    got_late = fresh.on_ticks(data[half:])
    got_late = got_late[got_late["agent"] == 1]
    got_late["agent"] = late
    want_tail = np.concatenate([want_tail, got_late])
    assert set(np.concatenate([head, tail])["agent"]) >= {2, 3, 6, 7}  # the followers signal too
    for got, want in ((head, want_head), (tail, want_tail)):
        assert np.array_equal(got, want[np.lexsort((want["agent"], want["origin_ns"]))])
    flushed = [pool.flush() for pool in alone]
    for a, f in enumerate(flushed):
        f["agent"] = a
    last = fresh.flush()
    last = last[last["agent"] == 1]
    last["agent"] = late
    assert np.array_equal(rest, np.concatenate([*flushed, last]))
    for a, pool in enumerate(alone):
        assert {**resumed.agent_state(a), "agent": 0} == pool.agent_state(0)
    assert {**resumed.agent_state(late), "agent": 1} == fresh.agent_state(1)


def test_restore_into_an_identically_configured_pool(market: np.ndarray) -> None:
    pool = make_pool()
    pool.on_ticks(market[:5000])
    again = make_pool()
    again.restore(pool.snapshot())
    assert [again.agent_state(a) for a in range(len(pool))] == [pool.agent_state(a) for a in range(len(pool))]


def test_restore_refuses_a_pool_with_other_agents(market: np.ndarray) -> None:
    blob = make_pool().snapshot()
    fewer = make_pool(2)
    with pytest.raises(ValueError, match=r"it holds 12 agents, this pool has 8"):
        fewer.restore(blob)
    other = AgentPool()
    for _ in range(12):
        other.add_agent(0, 60, k=4)
    with pytest.raises(ValueError, match="agent 0 differs"):
        other.restore(blob)


def test_restore_refuses_other_versions_and_corrupt_data(market: np.ndarray) -> None:
    pool = make_pool()
    pool.on_ticks(market[:3000])
    blob = pool.snapshot()
    target = AgentPool()
    other_version = blob[:8] + struct.pack("<I", 99) + blob[12:]
    with pytest.raises(ValueError, match=f"layout version 99, this build reads version {LAYOUT_VERSION}"):
        target.restore(other_version)
    flipped = bytearray(blob)
    flipped[len(blob) // 2] ^= 0x40
    with pytest.raises(ValueError, match="checksum mismatch"):
        target.restore(bytes(flipped))
    with pytest.raises(ValueError, match="does not match its header"):
        target.restore(blob[:-1])
    with pytest.raises(ValueError, match="too short"):
        target.restore(b"")
    with pytest.raises(ValueError, match="bad magic"):
        target.restore(b"\0" * len(blob))
    assert len(target) == 0  # untouched by every failed restore


# ---- memory and the GIL


def test_memory_per_agent_is_within_8_kib() -> None:
    pool = AgentPool()
    for sym in range(100):
        for j in range(100):
            pool.add_agent(sym, 60 * (1 + j % 10), k=1 + j % 16)
    assert pool.memory_bytes() / len(pool) <= 8192


def test_on_ticks_releases_the_gil(market: np.ndarray) -> None:
    pool = make_pool()
    big = np.concatenate([market] * 10)
    big["ts_ns"] += np.repeat(np.arange(10, dtype=np.int64) * DAY, len(market))  # each copy a day on
    started = threading.Event()
    progress = 0

    def work() -> None:
        started.set()
        pool.on_ticks(big)

    t = threading.Thread(target=work)
    t.start()
    started.wait()
    while t.is_alive():  # without a released GIL this loop could not run meanwhile
        progress += 1
    t.join()
    assert progress > 1000
    assert pool.stats()["ticks"] == len(big)


def test_signals_come_back_as_signal_records(market: np.ndarray) -> None:
    out = run_all(make_pool(), market)
    assert out.dtype == SIGNAL_DTYPE and len(out) > 0
    assert set(np.unique(out["side"])) <= {-1, 1}
    assert np.all((out["conviction"] >= 0) & (out["conviction"] <= 1))
    assert np.all(np.diff(out["ts_ns"]) >= 0)
