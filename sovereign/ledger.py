"""Ledger: netting positions as first-in first-out lots and a balance, kept exactly.

The paper broker keeps one (the broker's truth) and risk keeps one fed by execution
reports (its view); the same code does both, so they cannot drift apart. Money is
Decimal; a float price becomes Decimal(repr(price)), the shortest decimal that is that
float, so 1.1 stays 1.1. Lots are kept in the symbol's quote currency; P&L is converted
to the account currency by the symbol's spec (sovereign.symbols) at the price it is made
at: a deal's fill price, a mark's bid or ask.
"""

from __future__ import annotations

import functools
from collections import deque
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from sovereign.symbols import SymbolSpec

ZERO = Decimal(0)


def new_deal(ticket: int, newest: int) -> bool:
    """Whether a fill report's deal is not in a book that has every deal up to `newest`:
    the broker's deal tickets rise, so an older one is in it already (0: no ticket, new)."""
    return ticket > newest or not ticket


def to_decimal(price: float) -> Decimal:
    """The decimal a float prints as (1.1 -> Decimal('1.1')): prices, volumes, costs."""
    p = float(price)
    return _decimal(p) if p else Decimal(repr(p))  # 0.0 and -0.0 are one key: not cached


@functools.lru_cache(maxsize=1 << 16)  # the same prices come back all the time; bounded for years
def _decimal(p: float) -> Decimal:
    return Decimal(repr(p))


@dataclass(slots=True)
class Position:
    lots: deque[tuple[Decimal, Decimal]] = field(default_factory=deque)  # (signed volume, price)
    sl: Decimal | None = None
    tp: Decimal | None = None
    volume: Decimal = ZERO  # net: the sum of the lots, kept as they change (read far more often)

    def __post_init__(self) -> None:
        self.volume = sum((v for v, _ in self.lots), ZERO)


class Ledger:
    """Positions per symbol and the balance (account currency); specs[symbol] converts lots
    to units and the quote currency to the account currency."""

    def __init__(self, balance: Decimal, specs: dict[int, SymbolSpec]):
        self.balance = Decimal(balance)
        self.specs = specs
        self.positions: dict[int, Position] = {}  # open positions only

    def volume(self, symbol: int) -> Decimal:
        pos = self.positions.get(symbol)
        return pos.volume if pos is not None else ZERO

    def open_symbols(self) -> list[int]:
        return list(self.positions)  # a position closed is removed

    def fill(
        self,
        symbol: int,
        side: int,
        volume: Decimal,
        price: Decimal,
        commission: Decimal,
        sl: Decimal | None = None,
        tp: Decimal | None = None,
    ) -> Decimal:
        """Apply an execution; returns the P&L it realized (before commission), in the
        account currency."""
        spec = self.specs[symbol]
        size = spec.contract_size
        pos = self.positions.get(symbol)
        if pos is None:
            pos = self.positions[symbol] = Position()
        direction_before = pos.volume > 0 if pos.lots else None
        realized = ZERO
        left = volume
        while left > 0 and pos.lots and (pos.lots[0][0] > 0) != (side > 0):  # close FIFO
            lot_vol, lot_price = pos.lots[0]
            take = min(left, abs(lot_vol))
            realized += (price - lot_price) * take * size * (1 if lot_vol > 0 else -1)
            left -= take
            if take == abs(lot_vol):
                pos.lots.popleft()
            else:
                pos.lots[0] = (lot_vol + side * take, lot_price)
        if left > 0:
            pos.lots.append((side * left, price))
        pos.volume = sum((v for v, _ in pos.lots), ZERO)
        if not pos.lots:
            del self.positions[symbol]
        elif (pos.volume > 0) != direction_before or sl is not None or tp is not None:
            pos.sl, pos.tp = sl, tp  # a new or flipped position never inherits the old stops
        if realized:
            realized = spec.to_account(realized, price)
        self.balance += realized - commission
        return realized

    def unrealized(self, symbol: int, bid: Decimal, ask: Decimal) -> Decimal:
        pos = self.positions.get(symbol)
        if pos is None:
            return ZERO
        mark = bid if pos.volume > 0 else ask  # what closing it would get
        spec = self.specs[symbol]
        quoted = sum(((mark - p) * v * spec.contract_size for v, p in pos.lots), ZERO)
        return spec.to_account(quoted, mark) if quoted else quoted

    # ---- persistence: exact decimals as strings, so a restart restores them bit for bit

    def to_dict(self) -> dict[str, Any]:
        return {
            "balance": str(self.balance),
            "positions": {
                str(s): {"lots": [[str(v), str(p)] for v, p in pos.lots],
                         "sl": None if pos.sl is None else str(pos.sl),
                         "tp": None if pos.tp is None else str(pos.tp)}
                for s, pos in self.positions.items()
            },
        }  # fmt: skip

    def load_dict(self, d: dict[str, Any]) -> None:
        self.balance = Decimal(d["balance"])
        self.positions = {}
        for s, p in d["positions"].items():
            if not p["lots"]:
                continue
            self.positions[int(s)] = Position(
                deque((Decimal(v), Decimal(px)) for v, px in p["lots"]),
                None if p["sl"] is None else Decimal(p["sl"]),
                None if p["tp"] is None else Decimal(p["tp"]),
            )


def same_book(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two Ledger.to_dict() books hold the same amounts (1.6205 == 1.62050)."""

    def norm(d: dict[str, Any]) -> tuple:
        def dec(x: str | None) -> Decimal | None:
            return None if x is None else Decimal(x)

        positions = {s: ([(Decimal(v), Decimal(p)) for v, p in pos["lots"]], dec(pos["sl"]), dec(pos["tp"]))
                     for s, pos in d["positions"].items()}  # fmt: skip
        return Decimal(d["balance"]), positions

    return norm(a) == norm(b)
