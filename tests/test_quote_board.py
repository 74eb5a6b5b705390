"""The shared-memory pieces between processes: the quote board and the worker's pump."""

from __future__ import annotations

import multiprocessing as mp

import numpy as np
import pytest

from sovereign.core import (
    TICK_DTYPE,
    AgentPool,
    QuoteBoard,
    SignalRing,
    TickRing,
)
from sovereign.market.sim import simulate_ticks
from sovereign.presets import add_default_agents
from tests.helpers import ring_name

# ---- shared memory: quote board and the worker's pump


def _hammer(name: str, n: int) -> None:
    with QuoteBoard.attach(name) as board:
        t = np.zeros(1, TICK_DTYPE)
        for i in range(1, n + 1):
            t["ts_ns"], t["bid"], t["ask"], t["symbol"], t["recv_ns"] = i, i, i + 0.5, 0, i
            board.publish(t)


def test_quote_board_reads_are_never_torn_across_processes() -> None:
    name = ring_name("qb")
    with QuoteBoard.create(name, 4) as board:
        writer = mp.get_context("spawn").Process(target=_hammer, args=(name, 300_000))
        writer.start()
        seen = 0
        while writer.is_alive() or seen == 0:
            ts, bid, ask, recv = board.read(0)
            if ts:  # 0: the writer has not published yet
                assert bid == ts and ask == ts + 0.5 and recv == ts  # one tick's fields, never a mix
                seen += 1
        writer.join()
        assert board.read(0)[0] == 300_000 and board.updates == 300_000
        assert board.read(3) == (0, 0.0, 0.0, 0)
        with pytest.raises(IndexError):
            board.read(4)
        snap = board.snapshot()
        assert snap["ts_ns"][0] == 300_000 and len(snap) == 4
        assert board.newest_ts() == 300_000
        t = np.zeros(1, TICK_DTYPE)
        t["ts_ns"], t["symbol"] = 400_000, 2
        board.publish(t)
        assert board.newest_ts() == int(board.snapshot()["ts_ns"].max()) == 400_000
    with QuoteBoard.create(ring_name("qb"), 3) as empty:
        assert empty.newest_ts() == 0


def test_a_symbols_quote_never_goes_back_in_time() -> None:
    """Ticks older than the quote a symbol holds are skipped (a restarted gateway gives the
    ticks after the broker's durable mark again, which the board had already shown); one of
    the same time replaces it; other symbols' ticks in the batch are published."""
    with QuoteBoard.create(ring_name("qb"), 2) as board:
        t = np.zeros(4, TICK_DTYPE)
        t["ts_ns"], t["bid"], t["ask"], t["symbol"] = [10, 5, 10, 7], [1.2, 1.1, 1.3, 2.0], 9.0, [0, 0, 0, 1]
        assert board.publish(t) == 3  # the tick at 5 is older than the one at 10
        assert board.read(0)[:2] == (10, 1.3) and board.read(1)[:2] == (7, 2.0)
        assert board.publish(t[:2]) == 1 and board.read(0)[:2] == (10, 1.2)  # same time: replaced
        assert board.updates == 4


def test_pump_runs_the_pool_between_rings_like_on_ticks() -> None:
    ticks = simulate_ticks(5, 4000, seed=2)
    ticks["recv_ns"] = np.arange(len(ticks))
    expected = AgentPool()
    add_default_agents(expected, 5)
    want = expected.on_ticks(ticks)
    pool = AgentPool()
    add_default_agents(pool, 5)
    with TickRing.create(ring_name("pt"), 1 << 15) as tr, SignalRing.create(ring_name("ps"), 1 << 12) as sr:
        tr.push(ticks)
        n, emitted, pushed = pool.pump(tr, sr, 0.2)
        got = sr.pop(1 << 12)
    assert n == len(ticks) and emitted == pushed == len(want) > 0
    assert got.tobytes() == want.tobytes()  # origin_ns is the recv_ns of the closing tick
    assert (got["origin_ns"] > 0).all()


