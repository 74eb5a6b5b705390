"""Chaos against the outside venue (issue 23): the system trading the MT5 terminal simulator,
SIGKILL of a random engine process, of the whole engine, or of the simulator (a terminal
restart) at seeded random moments (bench/chaos_mt5.py); then, from the simulator's own
books, every client id executed at most its ordered volume, once, nothing left in
SUBMITTING, and risk's book the venue's positions. Recovery times are reported, never
asserted. SOVEREIGN_CHAOS_MT5_KILLS scales it (CI: 200), SOVEREIGN_CHAOS_MT5_SEED picks the
schedule; a failure says how to run it again."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.chaos_mt5 import TERMINAL, chaos_mt5, table

KILLS = int(os.environ.get("SOVEREIGN_CHAOS_MT5_KILLS", "200"))
SEED = int(os.environ.get("SOVEREIGN_CHAOS_MT5_SEED", "23"))


@pytest.mark.slow
def test_random_kills_against_the_venue_execute_every_order_at_most_once(tmp_path: Path) -> None:
    again = (f"SOVEREIGN_CHAOS_MT5_SEED={SEED} SOVEREIGN_CHAOS_MT5_KILLS={KILLS} python3 -m pytest "
             f"tests/engine/test_chaos_mt5.py, or: python3 -m bench.chaos_mt5 --kills {KILLS} --seed {SEED} "
             "--terminal-share 0.5 --max-gap 0.3 --live-code")  # fmt: skip
    # Terminal restarts are the cheap kills (a fraction of a second): half of them keeps 200
    # kills within about 6 minutes on 2 cores.
    result = chaos_mt5(tmp_path, KILLS, SEED, terminal_share=0.5, max_gap_s=0.3)
    report = table(result)
    print(report)
    assert len(result.kills) == KILLS
    assert {k.target for k in result.kills} >= {TERMINAL, "gateway"}, report
    assert result.exit_code == 0 and not result.violations, f"{report}\nreproduce: {again}"
    assert sum(result.orders.values()) > 0 and result.venue_deals > 0, report


HEDGING_KILLS = int(os.environ.get("SOVEREIGN_CHAOS_MT5_HEDGING_KILLS", "60"))


@pytest.mark.slow
def test_random_kills_against_a_hedging_account_execute_every_order_at_most_once(tmp_path: Path) -> None:
    """The same on a hedging account whose owner also trades by hand (a manual buy every
    couple of seconds, each its own position): risk adopts them, and its closes go to the
    venue one position at a time; no position is closed twice by one order, and risk's
    book is the sum of the venue's positions."""
    again = (f"SOVEREIGN_CHAOS_MT5_SEED={SEED} SOVEREIGN_CHAOS_MT5_HEDGING_KILLS={HEDGING_KILLS} python3 -m "
             f"pytest tests/engine/test_chaos_mt5.py, or: python3 -m bench.chaos_mt5 --hedging --kills "
             f"{HEDGING_KILLS} --seed {SEED} --terminal-share 0.5 --max-gap 0.3 --live-code")  # fmt: skip
    result = chaos_mt5(tmp_path, HEDGING_KILLS, SEED, terminal_share=0.5, max_gap_s=0.3, hedging=True)
    report = table(result)
    print(report)
    assert len(result.kills) == HEDGING_KILLS and "hedging account" in report
    assert result.exit_code == 0 and not result.violations, f"{report}\nreproduce: {again}"
    assert sum(result.orders.values()) > 0 and result.adopted > 0, report
