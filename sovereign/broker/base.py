"""The broker interface the gateway drives (paper and MT5 implement it), its records, and
MT5's return codes sorted by what a client must do with each (MT5.md's retry policy)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from enum import Enum
from typing import Protocol

from sovereign.symbols import SymbolSpec

RETCODE_NAMES = {
    10004: "REQUOTE",
    10006: "REJECT",
    10007: "CANCEL",
    10008: "PLACED",
    10009: "DONE",
    10010: "DONE_PARTIAL",
    10011: "ERROR",
    10012: "TIMEOUT",
    10013: "INVALID",
    10014: "INVALID_VOLUME",
    10015: "INVALID_PRICE",
    10016: "INVALID_STOPS",
    10017: "TRADE_DISABLED",
    10018: "MARKET_CLOSED",
    10019: "NO_MONEY",
    10020: "PRICE_CHANGED",
    10021: "PRICE_OFF",
    10022: "INVALID_EXPIRATION",
    10023: "ORDER_CHANGED",
    10024: "TOO_MANY_REQUESTS",
    10025: "NO_CHANGES",
    10026: "SERVER_DISABLES_AT",
    10027: "CLIENT_DISABLES_AT",
    10028: "LOCKED",
    10029: "FROZEN",
    10030: "INVALID_FILL",
    10031: "CONNECTION",
    10032: "ONLY_REAL",
    10033: "LIMIT_ORDERS",
    10034: "LIMIT_VOLUME",
    10035: "INVALID_ORDER",
    10036: "POSITION_CLOSED",
    10038: "INVALID_CLOSE_VOLUME",
    10039: "CLOSE_ORDER_EXIST",
    10040: "LIMIT_POSITIONS",
    10041: "REJECT_CANCEL",
    10042: "LONG_ONLY",
    10043: "SHORT_ONLY",
    10044: "CLOSE_ONLY",
    10045: "FIFO_CLOSE",
    10046: "HEDGE_PROHIBITED",
}
DONE, DONE_PARTIAL, PLACED = 10009, 10010, 10008


class Act(Enum):
    """What a client does with a return code."""

    DONE = "done"  # executed (PLACED: accepted, its deal follows)
    PARTIAL = "partial"  # part executed, the rest canceled: final, never topped up under the same id
    REPRICE = "reprice"  # re-price and resend, bounded
    BACKOFF = "backoff"  # wait, then resend, bounded
    AMBIGUOUS = "ambiguous"  # may have executed: look the client id up before anything is resent
    OPERATOR = "operator"  # final, and a person must act (AutoTrading off, market closed)
    FINAL = "final"  # refused: final


def classify(retcode: int) -> Act:
    """MT5.md's policy. A code it does not know is AMBIGUOUS: looked up, never resent blindly."""
    if retcode in (DONE, PLACED):
        return Act.DONE
    if retcode == DONE_PARTIAL:
        return Act.PARTIAL
    if retcode in (10004, 10020, 10021):
        return Act.REPRICE
    if retcode in (10024, 10028, 10029):
        return Act.BACKOFF
    if retcode in (10011, 10012, 10031) or retcode not in RETCODE_NAMES:
        return Act.AMBIGUOUS
    if retcode in (10017, 10018, 10026, 10027):
        return Act.OPERATOR
    return Act.FINAL


def retcode_name(retcode: int) -> str:
    return RETCODE_NAMES.get(retcode, f"unknown retcode {retcode}")


ACCOUNT_MODES = {0: "netting", 1: "exchange", 2: "hedging"}  # ACCOUNT_MARGIN_MODE


@dataclass(frozen=True)
class OrderRequest:
    """A market order as the gateway sends it (symbol: our id)."""

    client_order_id: int
    symbol: int
    side: int  # +1 buy, -1 sell
    volume: Decimal
    sl: float | None = None
    tp: float | None = None
    reduce_only: bool = False


@dataclass(frozen=True)
class Deal:
    """One deal at the broker, ours or not (a stop, a target, a stop-out, a manual trade)."""

    ticket: int
    order: int
    position: int
    symbol: int  # our id; -1: a symbol we do not trade
    side: int  # +1 bought, -1 sold
    entry: int  # DEAL_ENTRY: 0 in, 1 out, 2 in/out, 3 out by
    volume: Decimal
    price: Decimal
    commission: Decimal
    profit: Decimal
    magic: int
    client_order_id: int  # 0: not one of ours
    reason: int  # DEAL_REASON: 0 client, 3 expert, 4 sl, 5 tp, 6 stop-out, ...
    time_ms: int


@dataclass(frozen=True)
class Outcome:
    """The final answer to one order: FILLED, PARTIALLY_FILLED (the rest canceled) or REJECTED."""

    client_order_id: int
    symbol: int
    side: int
    state: str
    retcode: int
    volume: Decimal  # executed
    price: Decimal  # volume-weighted over its deals; 0 when nothing executed
    deals: tuple[int, ...] = ()
    why: str = ""


@dataclass(frozen=True)
class BrokerPosition:
    ticket: int
    symbol: int
    side: int
    volume: Decimal
    price: Decimal
    sl: float
    tp: float
    magic: int


@dataclass(frozen=True)
class AccountInfo:
    balance: Decimal
    equity: Decimal
    margin: Decimal
    currency: str
    margin_mode: int  # ACCOUNT_MARGIN_MODE: 0 netting, 1 exchange, 2 hedging (ACCOUNT_MODES)
    trade_allowed: bool


class Broker(Protocol):
    """What the gateway drives. No call blocks: `submit` hands orders over, `poll` returns
    what became final and every deal seen since the last poll (each ticket once)."""

    def connected(self) -> tuple[bool, str]:
        """(up, why not)."""
        ...

    def submit(self, orders: Sequence[OrderRequest]) -> None: ...

    def poll(self) -> tuple[list[Outcome], list[Deal]]: ...

    def resolve(self, client_order_ids: Sequence[int],
                requests: dict[int, OrderRequest] | None = None) -> None:  # fmt: skip
        """Orders a crash left in SUBMITTING: their outcomes come from the broker's record
        (through `poll`), never from sending them again. `requests`: those orders as the
        book holds them, where known."""
        ...

    def open_positions(self) -> list[BrokerPosition]: ...

    def deals_since(self, ticket: int) -> list[Deal]: ...

    def account_info(self) -> AccountInfo | None: ...

    def symbol_specs(self) -> dict[int, SymbolSpec]: ...
