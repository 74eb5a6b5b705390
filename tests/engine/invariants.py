"""The risk invariants of issue 19, checked on what a whole-system run left in LMDB: every
deal the paper broker made (its orders' executions and its own stop and target exits),
replayed in ticket order."""

from __future__ import annotations

from collections import Counter
from decimal import Decimal
from pathlib import Path

from sovereign.ledger import same_book
from sovereign.model import REDUCE_ONLY, Reason
from sovereign.state.schema import key_u64
from sovereign.state.store import StateStore, Txn

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


def system_violations(state: Path, max_open_positions: int = 20) -> list[str]:
    """Issue 22's invariants on a stopped system's raw state, each broken one said in a
    line (empty: none is broken): no order left in flight (SUBMITTING, APPROVED); every deal
    ticket once, and the tickets the broker handed out all there; no order executed twice;
    risk's book the broker's, symbol by symbol; the deals adding up to the broker's positions
    and balance; the journal without gaps; and `check_system_invariants`.

    Records a retention window moved to `<state>/archive` are not in LMDB: there the
    tickets and the journal are checked from the first one kept, and the deals' sums
    are not checked (they need the archived deals too)."""
    with StateStore(state, readonly=True) as st:
        book, broker, risk_state, config = st.read(lambda t: (
            t.get("positions", "book"), t.get("bridge", "paper"), t.get("risk", "state"),
            t.get("meta", "config")))  # fmt: skip
        orders = st.read(lambda t: [v for _, v in t.items("orders")])
        deals = st.read(lambda t: [(bytes(k), v) for k, v in t.items("bridge")
                                   if bytes(k)[:5] in (b"deal:", b"exec:")])  # fmt: skip
        journal_keys, fills = st.read(_journal_facts)
    out: list[str] = []
    archived = (state / "archive").exists()
    for o in orders:
        if o["state"] in ("SUBMITTING", "APPROVED", "INTENT"):
            out.append(f"order {o['client_order_id']} left in {o['state']}")
    if broker is None:
        return out + (["risk has a book but the broker has none"] if book else [])
    done = [v for _, v in deals if v["retcode"] == 10009 and v["ticket"]]
    tickets = Counter(int(d["ticket"]) for d in done)
    out += [f"deal ticket {t} recorded {n} times" for t, n in tickets.items() if n > 1]
    handed_out = set(range(1, int(broker["next_ticket"])))
    if archived and tickets:
        handed_out = {t for t in handed_out if t >= min(tickets)}
    missing = sorted(handed_out - set(tickets))
    if missing:  # an execution overwritten (an order executed twice) or a deal never recorded
        out.append(f"{len(missing)} deal tickets the broker handed out are not recorded: {missing[:10]}")
    out += [f"order {cid} journaled FILLED {n} times" for cid, n in fills.items() if n > 1]
    execs = {int(v["client_order_id"]): v for k, v in deals if k[:5] == b"exec:"}
    for o in orders:
        ex = execs.get(int(o["client_order_id"]))
        if o["state"] == "FILLED" and (ex is None or int(ex["ticket"]) != int(o.get("ticket", -1))):
            out.append(f"order {o['client_order_id']} FILLED with ticket {o.get('ticket')}, its execution "
                       f"says {ex and ex['ticket']}")
    out += _book_differences(book, broker["ledger"])
    if risk_state is not None and int(risk_state.get("ticket", 0)) > int(broker["next_ticket"]) - 1:
        out.append(f"risk applied deal {risk_state['ticket']}, past the broker's newest "
                   f"{int(broker['next_ticket']) - 1}")
    if not archived:
        out += _deals_add_up(done, broker["ledger"], config)
    if journal_keys:
        first, last, n = journal_keys
        if n != last - first + 1 or (first != 1 and not archived):
            out.append(f"journal has gaps: {n} entries with keys {first}..{last}")
    try:
        check_system_invariants(state, max_open_positions)
    except AssertionError as e:
        out.append(f"check_system_invariants: {str(e)[:500]}")
    return out


def _journal_facts(t: Txn) -> tuple[tuple[int, int, int] | None, Counter]:
    """(first key, last key, count) of the journal, and how often each order was journaled FILLED."""
    first = last = None
    n = 0
    fills: Counter = Counter()
    for k, v in t.items("journal"):
        seq = key_u64(k)
        first = seq if first is None else first
        last, n = seq, n + 1
        if v.get("event") == "order" and v.get("state") == "FILLED":
            fills[int(v["client_order_id"])] += 1
    return (None if first is None or last is None else (first, last, n)), fills


def _volumes(ledger: dict) -> dict[int, Decimal]:
    return {int(s): sum((Decimal(v) for v, _ in p["lots"]), Decimal(0))
            for s, p in ledger["positions"].items()}  # fmt: skip


def _book_differences(book: dict | None, broker: dict) -> list[str]:
    """Risk's book against the broker's account, symbol by symbol."""
    if book is None:
        return [] if not broker["positions"] else ["risk has no book; the broker has positions"]
    if same_book(book, broker):
        return []
    out = []
    if Decimal(book["balance"]) != Decimal(broker["balance"]):
        out.append(f"balance: risk {book['balance']}, broker {broker['balance']}")
    mine, theirs = _volumes(book), _volumes(broker)
    for s in sorted(set(mine) | set(theirs)):
        if mine.get(s, 0) != theirs.get(s, 0):
            out.append(f"symbol {s}: risk holds {mine.get(s, 0)}, the broker {theirs.get(s, 0)}")
    return out or [f"risk's book differs from the broker's in lots or stops: {book} != {broker}"]


def _deals_add_up(done: list[dict], ledger: dict, config: dict | None) -> list[str]:
    """The deals, in ticket order, make the broker's positions and its balance."""
    held: dict[int, Decimal] = {}
    cash = Decimal(0)
    for d in sorted(done, key=lambda d: int(d["ticket"])):
        s = int(d["symbol"])
        held[s] = held.get(s, Decimal(0)) + int(d["side"]) * Decimal(d["volume"])
        cash += Decimal(d["realized_pnl"]) - Decimal(d["commission"])
    out = []
    final = _volumes(ledger)
    for s in sorted(set(held) | set(final)):
        if held.get(s, 0) != final.get(s, 0):
            out.append(f"symbol {s}: the deals add up to {held.get(s, 0)}, the broker holds "
                       f"{final.get(s, 0)}")
    if config is not None:
        initial = Decimal(repr(float(config["broker"]["initial_balance"])))
        if initial + cash != Decimal(ledger["balance"]):
            out.append(f"balance: {initial} + the deals' P&L and commissions = {initial + cash}, the broker "
                       f"has {ledger['balance']}")
    return out
