"""Each analyzer of DESIGN.md section 3 against hand-worked cases, TA-Lib and the
pure-Python reference. Prices in the hand cases are multiples of 1/4, so every
expected value below is exact in binary floating point."""

from __future__ import annotations

import numpy as np
import pytest
import talib

from sovereign.core import AgentPool
from sovereign.market.sim import simulate_ticks
from sovereign.research.reference import ReferencePool
from tests.helpers import NS, T0, bars, random_bars


def feed_one_by_one(pool: AgentPool, rows: np.ndarray, agent: int = 0) -> tuple[list[dict], list]:
    """Feed bars one at a time; the agent's state after each, and all signals."""
    states, signals = [], []
    for i in range(len(rows)):
        signals.extend(pool.on_bars(rows[i : i + 1]).tolist())
        states.append(pool.agent_state(agent))
    return states, signals


# ---- ATR


def test_atr_warm_up_and_wilder_smoothing_by_hand() -> None:
    pool = AgentPool()
    pool.add_agent(0, 60, atr_n=3)
    rows = bars([
        (9.5, 10, 9, 9.5),
        (10, 10.5, 9.5, 10),      # TR 1
        (10.5, 11, 10, 10.75),    # TR 1
        (11, 12, 10.5, 11),       # TR max(1.5, 1.25, 0.25) = 1.5 -> ATR = 3.5/3
        (11, 11.25, 9, 9.25),     # TR 2.25
        (15, 15, 14.5, 15),       # gap: TR = |15 - 9.25| = 5.75
    ])  # fmt: skip
    states, _ = feed_one_by_one(pool, rows)
    assert [s["atr"] for s in states[:3]] == [None, None, None]
    a3 = (1 + 1 + 1.5) / 3
    a4 = (a3 * 2 + 2.25) / 3
    a5 = (a4 * 2 + 5.75) / 3
    assert [s["atr"] for s in states[3:]] == [a3, a4, a5]
    assert states[5]["tol"] == 0.25 * a5


def test_atr_and_obv_match_talib_on_a_long_series() -> None:
    rows = random_bars(20_000, seed=11)
    for n in (1, 2, 14, 50):
        pool = AgentPool()
        pool.add_agent(0, 60, atr_n=n)
        got_atr, got_obv = [], []
        for i in range(0, len(rows), 1):
            if i < 3000 or i % 97 == 0 or i == len(rows) - 1:  # state after a sample of bars
                pool.on_bars(rows[i : i + 1])
                s = pool.agent_state(0)
                got_atr.append((i, s["atr"]))
                got_obv.append((i, s["momentum"]["obv"]))
            else:
                pool.on_bars(rows[i : i + 1])
        ref_atr = talib.ATR(rows["high"], rows["low"], rows["close"], timeperiod=n)
        ref_obv = talib.OBV(rows["close"], rows["volume"])
        for i, v in got_atr:
            if np.isnan(ref_atr[i]):
                assert v is None, (n, i)
            else:
                assert v == pytest.approx(ref_atr[i], rel=1e-12, abs=0), (n, i)
        for i, v in got_obv:
            assert v == ref_obv[i], i


# ---- swing pivots and trend


def highs_only(hs: list[float]) -> np.ndarray:
    return bars([(h - 0.25, h, h - 0.5, h - 0.25) for h in hs])


def test_swing_high_is_confirmed_k_bars_later_and_not_before() -> None:
    pool = AgentPool()
    pool.add_agent(0, 60, k=2)
    states, _ = feed_one_by_one(pool, highs_only([1, 2, 3, 5, 4, 3, 2]))
    assert [s["swing_highs"] for s in states] == [[], [], [], [], [], [5.0], [5.0]]


def test_swing_high_ties_strict_before_inclusive_after() -> None:
    pool = AgentPool()
    pool.add_agent(0, 60, k=2)
    # bar 2 (5) ties bar 3 on its right: a pivot. Bar 3 ties bar 2 on its left: not one.
    states, _ = feed_one_by_one(pool, highs_only([1, 2, 5, 5, 3, 2, 1]))
    assert states[-1]["swing_highs"] == [5.0]


def test_no_pivot_in_the_first_k_bars() -> None:
    pool = AgentPool()
    pool.add_agent(0, 60, k=2)
    states, _ = feed_one_by_one(pool, highs_only([9, 1, 1, 1, 1, 1]))
    assert states[-1]["swing_highs"] == []


def test_swing_lows_and_a_bar_that_is_both() -> None:
    pool = AgentPool()
    pool.add_agent(0, 60, k=1)
    rows = bars([(10, 11, 9, 10), (10, 12, 8, 10), (10, 11, 9, 10)])  # bar 1: outside bar
    states, _ = feed_one_by_one(pool, rows)
    assert states[-1]["swing_highs"] == [12.0] and states[-1]["swing_lows"] == [8.0]


def test_trend_up_down_and_range() -> None:
    def trend_of(hl: list[tuple[float, float]]) -> tuple[int, float]:
        pool = AgentPool()
        pool.add_agent(0, 60, k=1, atr_n=1)
        s, _ = feed_one_by_one(pool, bars([((h + lo) / 2, h, lo, (h + lo) / 2) for h, lo in hl]))
        return s[-1]["trend"], s[-1]["trend_strength"]

    # zig-zag with higher highs and higher lows
    up = [(10, 9), (12, 10), (11, 8), (13, 11), (12, 9), (14, 12), (13, 10)]
    down = [(h_ * -1 + 30, l_ * -1 + 30)[::-1] for h_, l_ in up]
    flat = [(10, 9), (12, 10), (11, 8), (12, 11), (11, 8), (12, 11), (11, 10)]
    t_up, s_up = trend_of(up)
    t_down, s_down = trend_of(down)
    assert t_up == 1 and 0 < s_up <= 1
    assert t_down == -1 and -1 <= s_down < 0
    assert trend_of(flat)[0] == 0
    assert trend_of(up[:3]) == (0, 0.0)  # fewer than two of each


# ---- momentum


def test_momentum_by_hand() -> None:
    pool = AgentPool()
    pool.add_agent(0, 60, m=3)
    closes = [10, 11, 10.5, 10.5, 12]
    vols = [1, 2, 3, 4, 10]
    rows = bars([(c, c + 0.5, c - 0.5, c, v) for c, v in zip(closes, vols, strict=True)])
    s, _ = feed_one_by_one(pool, rows)
    mom = [x["momentum"] for x in s]
    assert [x["rv"] for x in mom[:3]] == [None] * 3 and [x["vb"] for x in mom[:3]] == [None] * 3
    assert mom[3]["rv"] == 4 / ((1 + 2 + 3) / 3) and mom[3]["vb"] == (2 - 3) / (2 + 3 + 4)
    assert mom[4]["rv"] == 10 / ((2 + 3 + 4) / 3) and mom[4]["vb"] == (10 - 3) / (3 + 4 + 10)
    assert [x["obv"] for x in mom] == [1, 3, 0, 0, 10]
    assert [x["surge"] for x in mom] == [False, False, False, True, True]


# ---- levels, bounce and conviction: one hand-worked path (k=1, atr_n=1, tol = 0.5)

LEVEL_PATH = [  # (open, high, low, close); every TR is 1 until the last bar
    (10.5, 11, 10, 10.5),
    (11, 11.5, 10.5, 11),     # 1: swing high 11.5, confirmed at 2
    (10.5, 11, 10, 10.5),
    (10, 10.5, 9.5, 10),      # 3: swing low 9.5, confirmed at 4
    (10.5, 11, 10, 10.5),
    (11, 11.5, 10.5, 11),     # 5: swing high 11.5 again: merges (touches 2)
    (10.5, 11, 10, 10.5),
    (10.25, 10.75, 9.75, 10.25),  # 7: swing low 9.75: merges into 9.5 -> 9.625
    (10.5, 11, 10, 10.5),
    (10.25, 10.5, 9.5, 10.5), # 9: probes 9.625 and closes away: bullish bounce
    (10.5, 10.5, 8.5, 8.5),   # 10: TR 2, tol 1: closes below 9.625 - 1: support broken
]  # fmt: skip
LEVEL_PARAMS = dict(k=1, atr_n=1, tol_mult=0.5, min_conviction=0.45)


def levels_of(state: dict) -> list[tuple[float, int, str]]:
    return [(lv["price"], lv["touches"], lv["kind"]) for lv in state["levels"]]


def test_levels_form_merge_and_break_by_hand() -> None:
    pool = AgentPool()
    pool.add_agent(0, 60, **LEVEL_PARAMS)
    s, _ = feed_one_by_one(pool, bars(LEVEL_PATH))
    assert levels_of(s[1]) == []
    assert levels_of(s[2]) == [(11.5, 1, "resistance")]
    assert levels_of(s[4]) == [(11.5, 1, "resistance"), (9.5, 1, "support")]
    assert levels_of(s[6]) == [(11.5, 2, "resistance"), (9.5, 1, "support")]
    assert s[6]["levels"][0]["last_ts"] == T0 + 5 * 60 * NS  # the pivot bar's ts
    assert levels_of(s[8]) == [(11.5, 2, "resistance"), (9.625, 2, "support")]
    # bar 9 confirms a swing high at bar 8 (11): merges into 11.5 -> (11.5*2 + 11)/3
    assert levels_of(s[9]) == [((11.5 * 2 + 11) / 3, 3, "resistance"), (9.625, 2, "support")]
    assert levels_of(s[10]) == [((11.5 * 2 + 11) / 3, 3, "resistance")]


def test_bounce_signal_by_hand() -> None:
    pool = AgentPool()
    pool.add_agent(0, 60, **LEVEL_PARAMS)
    _, signals = feed_one_by_one(pool, bars(LEVEL_PATH))
    assert len(signals) == 1
    ts, agent, symbol, side, flags, touches, tf, conviction, entry, stop, target, level, _origin = signals[0]
    # touches 2 -> 0.4; RANGE (equal highs) -> 0.5; vb undefined -> 0.5; wick 0.75
    expected = 0.30 * 0.4 + 0.25 * 0.5 + 0.20 * 0.5 + 0.25 * ((0.75 - 0.4) / (1 - 0.4))
    assert (ts, agent, symbol, side, flags, touches, tf) == (T0 + 10 * 60 * NS, 0, 0, 1, 0, 2, 60)
    assert conviction == expected
    assert (entry, stop, level) == (10.5, 9.625 - 0.5, 9.625)
    assert target == 11.5  # the resistance as it stood before bar 9's pivot merged into it


def test_conviction_below_threshold_emits_nothing() -> None:
    pool = AgentPool()
    pool.add_agent(0, 60, **{**LEVEL_PARAMS, "min_conviction": 0.5})
    assert feed_one_by_one(pool, bars(LEVEL_PATH))[1] == []


def test_bearish_bounce_mirrors_bullish() -> None:
    mirrored = [(30 - o, 30 - lo, 30 - h, 30 - c) for o, h, lo, c in LEVEL_PATH]
    pool = AgentPool()
    pool.add_agent(0, 60, **LEVEL_PARAMS)
    _, signals = feed_one_by_one(pool, bars(mirrored))
    assert len(signals) == 1
    side, entry, stop, target, level = signals[0][3], *signals[0][-5:-1]
    assert (side, entry, level, stop, target) == (-1, 19.5, 20.375, 20.875, 18.5)


def test_no_bounce_on_a_flat_bar_or_a_short_wick() -> None:
    for last in [(10, 10, 10, 10), (10.25, 10.5, 9.5, 10.5)]:
        path = [*LEVEL_PATH[:9], last]
        params = {**LEVEL_PARAMS, "wick": 0.8 if last[1] != last[2] else 0.4}
        pool = AgentPool()
        pool.add_agent(0, 60, **params)
        assert feed_one_by_one(pool, bars(path))[1] == []


def test_target_falls_back_to_twice_the_risk_without_a_level_beyond() -> None:
    # With room for one level, only the support 9.75 (from bar 7) is left at bar 9.
    pool = AgentPool()
    pool.add_agent(0, 60, **{**LEVEL_PARAMS, "max_levels": 1, "min_conviction": 0.4})
    _, signals = feed_one_by_one(pool, bars(LEVEL_PATH[:10]))
    assert len(signals) == 1
    side, conviction, entry, stop, target, level = signals[0][3], *signals[0][-6:-1]
    assert (side, entry, level, stop) == (1, 10.5, 9.75, 9.25)
    assert target == 10.5 + 2 * (10.5 - 9.25) == 13.0
    assert conviction == 0.30 * 0.2 + 0.25 * 0.5 + 0.20 * 0.5 + 0.25 * ((0.75 - 0.4) / 0.6)


def test_eviction_drops_fewest_touches_then_oldest() -> None:
    pool = AgentPool()
    pool.add_agent(0, 60, **{**LEVEL_PARAMS, "max_levels": 1})
    s, _ = feed_one_by_one(pool, bars(LEVEL_PATH[:7]))
    assert levels_of(s[4]) == [(9.5, 1, "support")]  # 11.5 (older) evicted
    assert levels_of(s[6]) == [(11.5, 1, "resistance")]  # then 9.5 is the older one


def test_eviction_between_levels_of_one_pivot_bar_drops_the_older() -> None:
    # Bar 1 is an outside bar: a swing high and a swing low at once, confirmed at bar 2.
    # Its high becomes a level first, so with room for one, the high is the older of two
    # levels with equal touches and equal last_ts, and goes.
    pool = AgentPool()
    pool.add_agent(0, 60, **{**LEVEL_PARAMS, "max_levels": 1})
    s, _ = feed_one_by_one(pool, bars([(10.5, 11, 10, 10.5), (10.5, 12, 9, 10.5), (10.5, 11, 10, 10.5)]))
    assert levels_of(s[2]) == [(9.0, 1, "support")]
    assert s[2]["levels"][0]["last_ts"] == T0 + 60 * NS


# ---- the whole pipeline against the reference


PARAM_SETS = [
    {},
    {"k": 2, "atr_n": 5, "m": 5, "wick": 0.3, "min_conviction": 0.4},
    {"k": 1, "max_levels": 3, "tol_mult": 1.0, "min_conviction": 0.3},
    {"k": 5, "atr_n": 30, "m": 50, "max_levels": 40, "weights": (0.1, 0.2, 0.3, 0.4), "min_conviction": 0.2},
]


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("volumes", ["whole", "fractional stretch", "fractional", "coarse prices"])
def test_pool_matches_reference_on_simulated_markets(seed: int, volumes: str) -> None:
    """Whole tick volumes keep momentum's sums as running totals; a fractional volume in a
    window sends it back to summing the window: both must be the reference's sums.
    Coarse prices (multiples of 2^-10, so every difference is exact) make ties: levels at
    one price, a pivot as far from two levels, evictions between equals, which the pool's
    price-sorted levels must settle as the reference's creation-ordered list does."""
    ticks = simulate_ticks(4, 15_000, seed=seed, mean_interval_s=0.5)
    if volumes == "coarse prices":
        for side in ("bid", "ask"):
            ticks[side] = np.round(ticks[side] * 1024) / 1024
        ticks["ask"] = np.maximum(ticks["ask"], ticks["bid"])
    if volumes == "fractional":
        ticks["volume"] *= 0.37
    elif volumes == "fractional stretch":  # windows go from whole to mixed and back
        ticks["volume"][len(ticks) // 2 : len(ticks) // 2 + 400] += 0.25
    pool, ref = AgentPool(), ReferencePool()
    for sym in range(4):
        for tf in (60, 300):
            for p in PARAM_SETS:
                pool.add_agent(sym, tf, **p)
                ref.add_agent(sym, tf, **p)
    cut = len(ticks) // 3
    got = np.concatenate([pool.on_ticks(ticks[:cut]), pool.on_ticks(ticks[cut:]), pool.flush()])
    want = np.concatenate([ref.on_ticks(ticks), ref.flush()])
    assert len(want) > 20
    assert np.array_equal(got, want)
    for a, ra in enumerate(ref.agents):
        s = pool.agent_state(a)
        assert s["atr"] == ra.ATR[-1] and s["momentum"]["obv"] == ra.OBV[-1]
        assert s["momentum"]["vb"] == ra.vb and s["momentum"]["rv"] == ra.rv
        assert s["trend"] == ra.trend and s["trend_strength"] == ra.trend_strength
        assert levels_of(s) == [(lv.price, lv.touches, lv.kind) for lv in ra.levels]
