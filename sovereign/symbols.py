"""Symbol specs: what a lot is, how finely it trades, where a stop may lie, and how money
in the symbol's quote currency becomes money in the account currency.

Risk and the paper broker both take their specs from here (the MT5 bridge will fill the
same fields from the terminal), so the two books value every deal the same way.

Conversion from the quote currency to the account currency, in this order:
- the quote currency is the account currency: 1;
- a fixed `rate` from the config (account units per unit of quote currency);
- the base currency is the account currency (USDJPY in a USD account): 1 / price, the
  price being the one the amount was made at (a deal's fill, a mark's bid or ask);
- none: the symbol is refused (risk: NO_RATE; the paper broker: REJECT), never traded as
  if its quote currency were the account's.
A six-letter name of two ISO currency codes (EURGBP) gives its base and quote currency
unless the config says otherwise; any other name quotes in the account currency unless
the config says otherwise.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

from sovereign.config import Config, SymbolDefaults

ONE = Decimal(1)
# ISO 4217 codes of the currencies (and metals) that FX symbol names are made of.
CURRENCIES = frozenset({
    "USD", "EUR", "JPY", "GBP", "CHF", "AUD", "NZD", "CAD", "SEK", "NOK", "DKK", "PLN", "HUF", "CZK",
    "TRY", "ZAR", "MXN", "SGD", "HKD", "CNH", "CNY", "RUB", "ILS", "THB", "INR", "BRL", "KRW", "TWD",
    "XAU", "XAG", "XPT", "XPD",
})  # fmt: skip
_FX_NAME = re.compile(r"^([A-Z]{3})([A-Z]{3})$")


@dataclass(frozen=True)
class SymbolSpec:
    contract_size: Decimal = Decimal(100_000)
    lot_step: Decimal = Decimal("0.01")
    min_lot: Decimal = Decimal("0.01")
    max_lot: Decimal = Decimal(100)
    point: Decimal = Decimal("0.00001")
    stops_level: int = 0  # points a stop or target must keep from the price it closes at
    # Account currency per unit of quote currency: fixed (`rate`), or 1 / price
    # (`inverse`, the base currency is the account's); neither and not ONE: no rate.
    rate: Decimal | None = ONE
    inverse: bool = False
    commission_per_lot: Decimal | None = None  # None: the broker's

    @property
    def convertible(self) -> bool:
        """Whether money in this symbol's quote currency can be valued in the account's."""
        return self.rate is not None or self.inverse

    def to_account(self, amount: Decimal, price: Decimal) -> Decimal:
        """`amount` in the quote currency, made at `price`, in the account currency."""
        if self.inverse:
            return amount / price
        if self.rate is None:
            raise ValueError("symbol has no conversion rate to the account currency")
        return amount if self.rate == ONE else amount * self.rate

    def factor(self, price: float) -> float:
        """to_account's factor in float, for screening (never for money that is kept)."""
        if self.inverse:
            return 1.0 / price
        return float(self.rate) if self.rate is not None else float("nan")

    def stops_ok(self, side: int, sl: Decimal | None, tp: Decimal | None, bid: Decimal, ask: Decimal) -> bool:
        """Whether a stop and a target of a position opened on `side` lie beyond the price
        that closes it (a long closes at the bid, a short at the ask) by at least the stops
        level: a stop inside the spread would close the position on the next tick."""
        gap = self.stops_level * self.point
        if side > 0:
            return (sl is None or (sl < bid and sl <= bid - gap)) and (
                tp is None or (tp > bid and tp >= bid + gap))  # fmt: skip
        return (sl is None or (sl > ask and sl >= ask + gap)) and (
            tp is None or (tp < ask and tp <= ask - gap))  # fmt: skip


def currencies(name: str) -> tuple[str, str] | None:
    """(base, quote) of a six-letter FX name of two known currencies, else None."""
    m = _FX_NAME.match(name)
    if m is None or m[1] not in CURRENCIES or m[2] not in CURRENCIES:
        return None
    return m[1], m[2]


def settings_for(config: Config, name: str) -> SymbolDefaults:
    """The config's table for `name`: [symbols.NAME], else the first glob pattern that
    matches it ([symbols."*JPY"]), in the file's order, else the [symbols] defaults."""
    table = config.symbols.overrides.get(name)
    if table is not None:
        return table
    for pattern, table in config.symbols.overrides.items():
        if fnmatch.fnmatchcase(name, pattern):
            return table
    return config.symbols


def spec_for(config: Config, name: str) -> SymbolSpec:
    """The spec of the symbol called `name` (empty: unnamed, the defaults)."""
    d = settings_for(config, name)
    account = config.broker.account_currency
    fx = currencies(name)
    quote = d.quote_currency or (fx[1] if fx else account)
    base = d.base_currency or (fx[0] if fx else "")
    rate: Decimal | None = None
    if quote == account:
        rate = ONE
    elif d.rate > 0:
        rate = _dec(d.rate)
    inverse = rate is None and base == account
    commission = None if d.commission_per_lot < 0 else _dec(d.commission_per_lot)
    return SymbolSpec(_dec(d.contract_size), _dec(d.lot_step), _dec(d.min_lot), _dec(d.max_lot),
                      _dec(d.point), d.stops_level, rate, inverse, commission)  # fmt: skip


def symbol_specs(config: Config, names: Sequence[str] | int) -> dict[int, SymbolSpec]:
    """Every symbol's spec by index; `names` may be a count of unnamed symbols."""
    if isinstance(names, int):
        names = [""] * names
    cache: dict[str, SymbolSpec] = {}
    for n in names:
        if n not in cache:
            cache[n] = spec_for(config, n)
    return {i: cache[n] for i, n in enumerate(names)}


def _dec(x: float) -> Decimal:
    return Decimal(repr(float(x)))
