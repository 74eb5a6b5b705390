"""The order lifecycle of DESIGN.md section 5, kept in the `orders` database.

Every transition is checked against the lifecycle and journaled in the same transaction
as the new state, so the journal and the order book never disagree.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from sovereign.state import StateStore, Txn, key_u64


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


class LifecycleError(ValueError):
    """A transition the order lifecycle does not allow."""


class OrderBook:
    """Orders by client_order_id (u64, allocated here, never reused)."""

    def __init__(self, store: StateStore):
        self.store = store

    def create(self, **fields: Any) -> int:
        """Record a new order in INTENT; returns its client_order_id."""

        def tx(t: Txn) -> int:
            last = t.last_key("orders")
            cid = 1 if last is None else key_u64(last) + 1
            t.put("orders", cid, {**fields, "client_order_id": cid, "state": S.INTENT.value})
            t.journal("order", client_order_id=cid, state=S.INTENT.value, **fields)
            return cid

        return self.store.write(tx)

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
            t.put("orders", cid, order)
            t.journal("order", client_order_id=cid, state=new.value, previous=old.value, **fields)
            return order

        return self.store.write(tx)

    def get(self, cid: int) -> dict[str, Any] | None:
        return self.store.read(lambda t: t.get("orders", cid))

    def in_state(self, *states: OrderState) -> list[dict[str, Any]]:
        wanted = {s.value for s in states}
        return self.store.read(lambda t: [o for _, o in t.items("orders") if o["state"] in wanted])
