"""The order lifecycle of DESIGN.md section 5, kept in the `orders` database.

Every transition is checked against the lifecycle and journaled in the same transaction
as the new state, so the journal and the order book never disagree. The same transaction
keeps the `open_orders` index, so open orders are found without scanning every order ever
made; a state written before the index existed gets it built once, by the first OrderBook
that opens it for writing.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from sovereign.errors import OperationalError
from sovereign.state.schema import META_OPEN_INDEX, NEXT_ID_KEY
from sovereign.state.store import StateStore, Txn


class OrderState(str, Enum):
    INTENT = "INTENT"
    APPROVED = "APPROVED"
    REJECTED = "REJECTED"
    SUBMITTING = "SUBMITTING"
    ACCEPTED = "ACCEPTED"
    PARTIALLY_FILLED = "PARTIALLY_FILLED"
    FILLED = "FILLED"
    CANCELED = "CANCELED"
    EXPIRED = "EXPIRED"


S = OrderState
TRANSITIONS: dict[OrderState, frozenset[OrderState]] = {
    S.INTENT: frozenset({S.APPROVED, S.REJECTED}),
    S.APPROVED: frozenset({S.SUBMITTING, S.REJECTED}),
    S.SUBMITTING: frozenset({S.ACCEPTED, S.REJECTED, S.PARTIALLY_FILLED, S.FILLED}),
    S.ACCEPTED: frozenset({S.PARTIALLY_FILLED, S.FILLED, S.CANCELED, S.EXPIRED}),
    S.PARTIALLY_FILLED: frozenset({S.PARTIALLY_FILLED, S.FILLED, S.CANCELED, S.EXPIRED}),
    S.REJECTED: frozenset(),
    S.FILLED: frozenset(),
    S.CANCELED: frozenset(),
    S.EXPIRED: frozenset(),
}
OPEN_STATES = frozenset({S.INTENT, S.APPROVED, S.SUBMITTING, S.ACCEPTED, S.PARTIALLY_FILLED})
OPEN_VALUES = frozenset(s.value for s in OPEN_STATES)


class LifecycleError(OperationalError, ValueError):
    """A transition the order lifecycle does not allow."""


def put_order(t: Txn, cid: int, order: dict[str, Any]) -> None:
    """Write an order and keep the open-order index with it: every writer of `orders` goes
    through here."""
    t.put("orders", cid, order)
    if order["state"] in OPEN_VALUES:
        t.put_bytes("open_orders", cid, b"")
    else:
        t.delete("open_orders", cid)


def open_orders(t: Txn) -> list[dict[str, Any]]:
    """The orders in an open state, by client id: from the index, or by a scan of every
    order where the index was never built (an older state opened read-only)."""
    if t.get("meta", META_OPEN_INDEX) is None:
        return [o for _, o in t.items("orders") if o.get("state") in OPEN_VALUES]
    found = (t.get("orders", k) for k, _ in t.items("open_orders", raw=True))
    return [o for o in found if o is not None and o.get("state") in OPEN_VALUES]


def build_open_index(t: Txn) -> int:
    """Build the open-order index from every order, once (the migration of a state written
    before it existed); returns how many open orders it holds, or -1 when it was built."""
    if t.get("meta", META_OPEN_INDEX) is not None:
        return -1
    n = 0
    for k, o in t.items("orders"):
        if o.get("state") in OPEN_VALUES:
            t.put_bytes("open_orders", k, b"")
            n += 1
    t.put("meta", META_OPEN_INDEX, {"built_with": n})
    return n


def claim_open_index(t: Txn, previous: str | None, session: str) -> int:
    """At a supervisor's start, in the transaction that records its session: the index is
    this code's only if the run before was too (the marker names the session that last
    kept it, and `previous` is the session of the last supervisor of any version). A run of
    an older release in between (a rollback: install.sh keeps three) wrote orders without
    keeping the index, so it is built again from every order (bounded by the retention).
    Returns the open orders of a rebuild, or -1 when the index was kept."""
    marker = t.get("meta", META_OPEN_INDEX)
    n = -1
    if marker is not None and (previous is None or marker.get("session") != previous):
        for k, _ in list(t.items("open_orders", raw=True)):
            t.delete("open_orders", k)
        t.delete("meta", META_OPEN_INDEX)
        marker = None
    if marker is None:
        n = build_open_index(t)
    t.put("meta", META_OPEN_INDEX, {**(t.get("meta", META_OPEN_INDEX) or {}), "session": session})
    return n


def reserve_ids(t: Txn, n: int) -> int:
    """Reserve n client order ids in transaction t; returns the first."""
    first = t.get("coordinator", NEXT_ID_KEY) or 1
    t.put("coordinator", NEXT_ID_KEY, first + n)
    return int(first)


class ClientIds:
    """Client order ids for one process. Every process that creates orders draws from one
    counter in LMDB, a block at a time (one durable commit per block), so ids are unique
    across processes and never reused; a crash only skips the rest of a block."""

    def __init__(self, store: StateStore, block: int = 1024):
        self.store = store
        self.block = block
        self._next = self._end = 0
        self.issued: list[int] = []  # given since the caller last cleared it (its event log)

    def next(self) -> int:
        if self._next >= self._end:
            self._next = self.store.write(lambda t: reserve_ids(t, self.block))
            self._end = self._next + self.block
        self._next += 1
        self.issued.append(self._next - 1)
        return self._next - 1


class OrderBook:
    """Orders by client_order_id (u64, never reused)."""

    def __init__(self, store: StateStore):
        self.store = store
        if not store.readonly and store.read(lambda t: t.get("meta", META_OPEN_INDEX)) is None:
            store.write(build_open_index)

    def create(self, **fields: Any) -> int:
        """Record a new order in INTENT with a fresh client id; returns the id."""

        def tx(t: Txn) -> int:
            cid = reserve_ids(t, 1)
            put_order(t, cid, {**fields, "client_order_id": cid, "state": S.INTENT.value})
            t.journal("order", client_order_id=cid, state=S.INTENT.value, **fields)
            return cid

        return self.store.write(tx)

    def advance(self, t: Txn, cid: int, path: list[OrderState], **fields: Any) -> dict[str, Any]:
        """In transaction t, take order cid (created in INTENT if new) through each state of
        path in turn, every step checked and journaled; fields merge into the record."""
        order = t.get("orders", cid)
        if order is None:
            order = {"client_order_id": cid, "state": S.INTENT.value}
            t.journal("order", client_order_id=cid, state=S.INTENT.value)
        for step, new in enumerate(path):
            old = OrderState(order["state"])
            if new not in TRANSITIONS[old]:
                allowed = ", ".join(sorted(s.value for s in TRANSITIONS[old])) or "none (final)"
                raise LifecycleError(f"order {cid}: {old.value} -> {new.value} is not allowed; from "
                                     f"{old.value} only {allowed}")
            order["state"] = new.value
            extra = fields if step == len(path) - 1 else {}
            t.journal("order", client_order_id=cid, state=new.value, previous=old.value, **extra)
        order.update(fields)
        put_order(t, cid, order)
        return order

    def transition(self, cid: int, new: OrderState, **fields: Any) -> dict[str, Any]:
        """Move order cid to `new`, merging fields; durable before it returns."""

        def tx(t: Txn) -> dict[str, Any]:
            order = t.get("orders", cid)
            if order is None:
                raise LifecycleError(f"no order with client_order_id {cid}")
            old = OrderState(order["state"])
            if new not in TRANSITIONS[old]:
                allowed = ", ".join(sorted(s.value for s in TRANSITIONS[old])) or "none (final)"
                raise LifecycleError(f"order {cid}: {old.value} -> {new.value} is not allowed; from "
                                     f"{old.value} only {allowed}")
            order.update(fields, state=new.value)
            put_order(t, cid, order)
            t.journal("order", client_order_id=cid, state=new.value, previous=old.value, **fields)
            return order

        return self.store.write(tx)

    def get(self, cid: int) -> dict[str, Any] | None:
        return self.store.read(lambda t: t.get("orders", cid))

    def in_state(self, *states: OrderState) -> list[dict[str, Any]]:
        """Orders in any of `states`, by client id; open states only are found through the index."""
        wanted = {s.value for s in states}
        if wanted <= OPEN_VALUES:
            return [o for o in self.store.read(open_orders) if o["state"] in wanted]
        return self.store.read(lambda t: [o for _, o in t.items("orders") if o["state"] in wanted])
