"""The sim feed (csrc/sim.hpp): seeded, the same however it is drawn, and a market with
the structure the analyzers look for."""

from __future__ import annotations

import numpy as np
import pytest

from sovereign.config import ConfigError, from_dict
from sovereign.core import TICK_DTYPE, TICK_FLAG_ASK, TICK_FLAG_BID, TICK_FLAG_VOLUME, AgentPool
from sovereign.market.sim import DEFAULT_START_NS, SimMarket, simulate_ticks
from sovereign.presets import add_default_agents


def test_the_same_seed_gives_the_same_ticks_however_they_are_drawn() -> None:
    whole = SimMarket(7, seed=42).next(30_000)
    m = SimMarket(7, seed=42)
    parts = np.concatenate([m.next(n) for n in (1, 0, 2047, 5000, 12_952, 10_000)])
    assert whole.dtype == TICK_DTYPE
    assert parts.tobytes() == whole.tobytes()
    assert SimMarket(7, seed=43).next(30_000).tobytes() != whole.tobytes()
    assert m.clock_ns == int(whole["ts_ns"][-1])


def test_ticks_are_a_merged_stream_of_valid_quotes() -> None:
    t = simulate_ticks(5, 20_000, seed=3, mean_interval_s=0.5)
    assert len(t) == 100_000
    assert (np.diff(t["ts_ns"]) > 0).all() and t["ts_ns"][0] > DEFAULT_START_NS
    assert ((t["ask"] > t["bid"]) & (t["bid"] > 0)).all()
    assert np.array_equal(np.round(t["bid"], 5), t["bid"]) and np.array_equal(np.round(t["ask"], 5), t["ask"])
    assert ((t["volume"] >= 1) & (t["volume"] == np.floor(t["volume"]))).all()
    assert (t["flags"] == TICK_FLAG_BID | TICK_FLAG_ASK | TICK_FLAG_VOLUME).all() and not t["recv_ns"].any()
    counts = np.bincount(t["symbol"], minlength=5)
    assert len(counts) == 5 and counts.min() > 19_000  # each symbol about a fifth
    # 5 symbols at 0.5 s each: a merged gap of 0.1 s on average
    assert 0.09e9 < np.diff(t["ts_ns"]).mean() < 0.11e9


def test_the_market_moves_in_regimes_the_agents_trade() -> None:
    t = simulate_ticks(3, 20_000, seed=5, mean_interval_s=0.5)
    for s in range(3):
        mid = ((t["bid"] + t["ask"]) / 2)[t["symbol"] == s]
        steps = np.diff(np.log(mid))
        assert 2e-5 < steps.std() < 1e-3  # FX-like moves of a fraction of a basis point to a few
        # volatility changes with the regime: some stretches calm, some bursts
        vol = np.array([c.std() for c in np.array_split(steps, 40)])
        assert vol.max() > 1.5 * vol.min()
    pool = AgentPool()
    add_default_agents(pool, 3)
    signals = pool.on_ticks(t)
    assert len(signals) > 0 and {1, -1} <= set(signals["side"].tolist())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_symbols": 0}, "n_symbols must be in"),
        ({"seed": -1}, "seed must be in"),
        ({"mean_interval_s": 0.0}, "mean_interval_s must be a finite number > 0"),
        ({"mean_interval_s": float("nan")}, "mean_interval_s must be a finite number > 0"),
    ],
)
def test_bad_arguments_are_refused_by_name(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SimMarket(**{"n_symbols": 2, **kwargs})


def test_a_negative_count_and_a_negative_seed_in_the_config_are_refused() -> None:
    with pytest.raises(ValueError, match="n must be >= 0"):
        SimMarket(2).next(-1)
    with pytest.raises(ConfigError, match=r"feed\.seed"):
        from_dict({"feed": {"seed": -1}})
