"""The coordinator: nets conviction per symbol, expires signals, caps a symbol's risk."""

from __future__ import annotations

import numpy as np
import pytest

from sovereign.config import Config, from_dict
from sovereign.core import (
    ORDER_DTYPE,
    ORDER_FILL,
    ORDER_INTENT,
    SIGNAL_DTYPE,
)
from sovereign.engine.coordinator import Coordinator
from tests.helpers import NS, ids


def signal(symbol: int, side: int, conviction: float, *, agent: int = 0, ts: int = 1000 * NS, tf: int = 60,
           entry: float = 1.1, stop: float = 1.09, target: float = 1.12) -> tuple:  # fmt: skip
    return (ts, agent, symbol, side, 0, 2, tf, conviction, entry, stop, target, stop, 7)




# ---- coordinator


def test_coordinator_acts_on_net_conviction_and_cancels_opposites() -> None:
    c = Coordinator(Config(), ids())
    assert len(c.on_signals(np.array([signal(0, 1, 0.5)], SIGNAL_DTYPE))) == 0  # 0.5 < 0.55
    out = c.on_signals(np.array([signal(0, 1, 0.3, agent=1)], SIGNAL_DTYPE))  # net 0.8
    assert len(out) == 1
    o = out[0]
    assert (o["kind"], o["side"], o["symbol"], o["origin_ns"]) == (ORDER_INTENT, 1, 0, 7)
    assert o["conviction"] == pytest.approx(0.8) and o["risk"] == pytest.approx(0.005 * 0.8)
    assert o["agent"] == 0 and (o["price"], o["sl"], o["tp"]) == (1.1, 1.09, 1.12)  # the strongest
    c2 = Coordinator(Config(), ids())
    both = np.array([signal(1, 1, 0.7), signal(1, -1, 0.6, agent=1)], SIGNAL_DTYPE)
    assert len(c2.on_signals(both)) == 0  # 0.7 - 0.6 cancels below the threshold


def test_coordinator_signals_expire_after_one_bar_and_in_flight_blocks_repeats() -> None:
    c = Coordinator(Config(), ids())
    c.on_signals(np.array([signal(0, 1, 0.4, ts=1000 * NS)], SIGNAL_DTYPE))
    later = np.array([signal(0, 1, 0.4, agent=1, ts=1061 * NS)], SIGNAL_DTYPE)  # the first expired at 1060 s
    assert len(c.on_signals(later)) == 0
    first = c.on_signals(np.array([signal(0, 1, 0.4, agent=2, ts=1062 * NS)], SIGNAL_DTYPE))
    assert len(first) == 1
    again = c.on_signals(np.array([signal(0, 1, 0.9, agent=3, ts=1063 * NS)], SIGNAL_DTYPE))
    assert len(again) == 0  # an intent for symbol 0 is in flight
    fill = np.zeros(1, ORDER_DTYPE)
    fill[0]["client_order_id"], fill[0]["kind"], fill[0]["side"], fill[0]["volume"] = (
        first[0]["client_order_id"],
        ORDER_FILL,
        1,
        0.3,
    )
    c.on_reports(fill)
    assert c.position[0] == 1
    assert (
        len(c.on_signals(np.array([signal(0, 1, 0.9, agent=4, ts=1064 * NS)], SIGNAL_DTYPE))) == 0
    )  # long already
    flip = c.on_signals(np.array([signal(0, -1, 5.0, agent=5, ts=1065 * NS)], SIGNAL_DTYPE))
    assert len(flip) == 1 and flip[0]["side"] == -1


def test_coordinator_caps_a_symbols_risk() -> None:
    cfg = from_dict({"coordinator": {"max_symbol_share": 0.05}})
    c = Coordinator(cfg, ids())
    out = c.on_signals(np.array([signal(0, 1, 1.0, agent=a) for a in range(5)], SIGNAL_DTYPE))
    assert out[0]["risk"] == pytest.approx(0.05 * 0.005 * 20)  # not 0.005 * 5


def test_coordinator_nets_in_the_order_agents_came_and_an_expired_agent_comes_again_last() -> None:
    """The net is a float sum in order; the order is the agents' first arrival, an agent
    whose signal expired rejoining at the end (as a dict would keep them)."""
    c = Coordinator(Config(), ids())
    c.on_signals(np.array([signal(0, 1, 0.1, agent=a, ts=1000 * NS) for a in (7, 3, 5)], SIGNAL_DTYPE))
    c.on_signals(np.array([signal(0, 1, 0.1, agent=3, ts=1030 * NS, tf=300)], SIGNAL_DTYPE))  # in place
    assert [x[0] for x in c.book.live(0)] == [7, 3, 5]
    c.on_signals(np.array([signal(0, 1, 0.1, agent=9, ts=1061 * NS)], SIGNAL_DTYPE))  # 7's and 5's expired
    assert [x[0] for x in c.book.live(0)] == [3, 9]
    c.on_signals(np.array([signal(0, 1, 0.1, agent=7, ts=1062 * NS)], SIGNAL_DTYPE))
    assert [x[0] for x in c.book.live(0)] == [3, 9, 7]
    assert c.book.live(0)[0][1] == 1330 * NS and c.clock_ns == 1062 * NS


def test_coordinator_pickled_mid_run_decides_as_the_original() -> None:
    import pickle

    from sovereign.research.backtest import Ids

    a = Coordinator(Config(), Ids())
    a.on_signals(np.array([signal(s, 1, 0.3, agent=s) for s in range(3)], SIGNAL_DTYPE))
    b = pickle.loads(pickle.dumps(a))
    assert b.clock_ns == a.clock_ns and all(b.book.live(s) == a.book.live(s) for s in range(3))
    more = np.array([signal(s, 1, 0.3, agent=9, ts=1010 * NS) for s in range(3)], SIGNAL_DTYPE)
    assert np.array_equal(a.on_signals(more), b.on_signals(more))


def test_coordinator_refuses_records_that_are_not_signals() -> None:
    c = Coordinator(Config(), ids())
    with pytest.raises(TypeError, match=r"SignalBook\.update expects a 1-D array of"):
        c.on_signals(np.zeros(2, ORDER_DTYPE))
    bad = np.array([signal(0, 1, 0.9)], SIGNAL_DTYPE)
    bad["symbol"] = 1 << 20
    with pytest.raises(ValueError, match="signal symbol 1048576 is out of range"):
        c.on_signals(bad)
    assert len(c.on_signals(np.array([signal(0, 1, 0.9)], SIGNAL_DTYPE))) == 1  # nothing was half taken


