"""The risk invariants of issue 19, checked on what a whole-system run left in LMDB: every
deal the paper broker made (its orders' executions and its own stop and target exits),
replayed in ticket order."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from sovereign.ledger import same_book
from sovereign.model import REDUCE_ONLY, Reason
from sovereign.state.store import StateStore

REDUCE_ONLY_NAMES = {r.name for r in REDUCE_ONLY}


def check_system_invariants(state: Path, max_open_positions: int = 20) -> None:
    """Risk's book is the broker's; no reduce-only order opened or grew a position; the
    open positions never outnumbered the limit."""
    with StateStore(state, readonly=True) as st:
        book, broker = st.read(lambda t: (t.get("positions", "book"), t.get("bridge", "paper")))
        orders = st.read(lambda t: {int(v["client_order_id"]): v for _, v in t.items("orders")})
        deals = st.read(lambda t: [v for k, v in t.items("bridge") if bytes(k)[:5] in (b"deal:", b"exec:")])
    assert same_book(book, broker["ledger"]), (book, broker["ledger"])
    done = sorted((d for d in deals if d["retcode"] == 10009 and d["ticket"]), key=lambda d: d["ticket"])
    held: dict[int, Decimal] = {}
    for d in done:
        before = held.get(d["symbol"], Decimal(0))
        after = before + d["side"] * Decimal(d["volume"])
        order = orders.get(int(d["client_order_id"])) if d["client_order_id"] else None
        if (order is not None and order.get("reason") in REDUCE_ONLY_NAMES) or d["reason"] in ("sl", "tp"):
            why = (order and order.get("reason")) or d["reason"]
            assert before != 0 and abs(after) < abs(before) and (after == 0 or (after > 0) == (before > 0)), (
                f"deal {d['ticket']} ({why}) took symbol {d['symbol']} from {before} to {after}")
        held[d["symbol"]] = after
        assert sum(v != 0 for v in held.values()) <= max_open_positions, d
    final = {int(s): sum((Decimal(v) for v, _ in p["lots"]), Decimal(0))
             for s, p in broker["ledger"]["positions"].items()}  # fmt: skip
    assert {s: v for s, v in held.items() if v} == {s: v for s, v in final.items() if v}
    assert Reason.CLOSE in REDUCE_ONLY
