"""The public face of the C++ core: record dtypes, shared-memory rings, the quote board
and AgentPool.

The dtypes are spelled out here, field by field with explicit offsets, and checked at
import against the layouts the extension was compiled with, so a stale build fails
loudly instead of reading records at the wrong offsets.
"""

from __future__ import annotations

import numpy as np

from sovereign import _core

__all__ = [
    "BAR_DTYPE",
    "LAYOUT_VERSION",
    "NO_AGENT",
    "ORDER_APPROVED",
    "ORDER_DTYPE",
    "ORDER_FILL",
    "ORDER_INTENT",
    "ORDER_REJECT",
    "QUOTE_DTYPE",
    "SIGNAL_DTYPE",
    "SIGNAL_FLAG_SURGE",
    "TICK_DTYPE",
    "TICK_FLAG_ASK",
    "TICK_FLAG_BID",
    "TICK_FLAG_LAST",
    "TICK_FLAG_VOLUME",
    "AgentPool",
    "OrderRing",
    "QuoteBoard",
    "RingError",
    "Screen",
    "SignalRing",
    "TickRing",
    "first_touch",
    "last_of_each",
    "wait_for_records",
]


def _record(itemsize: int, *fields: tuple[str, str, int]) -> np.dtype:
    names, formats, offsets = zip(*fields, strict=True)
    return np.dtype(
        {"names": list(names), "formats": list(formats), "offsets": list(offsets), "itemsize": itemsize}
    )


TICK_DTYPE = _record(
    56,
    ("ts_ns", "<i8", 0), ("bid", "<f8", 8), ("ask", "<f8", 16), ("last", "<f8", 24),
    ("volume", "<f8", 32), ("symbol", "<u4", 40), ("flags", "<u4", 44), ("recv_ns", "<i8", 48),
)  # fmt: skip
BAR_DTYPE = _record(
    56,
    ("ts_ns", "<i8", 0), ("open", "<f8", 8), ("high", "<f8", 16), ("low", "<f8", 24),
    ("close", "<f8", 32), ("volume", "<f8", 40), ("symbol", "<u4", 48), ("timeframe_s", "<u4", 52),
)  # fmt: skip
SIGNAL_DTYPE = _record(
    72,
    ("ts_ns", "<i8", 0), ("agent", "<u4", 8), ("symbol", "<u4", 12), ("side", "i1", 16),
    ("flags", "u1", 17), ("touches", "<u2", 18), ("timeframe_s", "<u4", 20),
    ("conviction", "<f8", 24), ("entry", "<f8", 32), ("stop", "<f8", 40), ("target", "<f8", 48),
    ("level", "<f8", 56), ("origin_ns", "<i8", 64),
)  # fmt: skip
ORDER_DTYPE = _record(
    104,
    ("ts_ns", "<i8", 0), ("origin_ns", "<i8", 8), ("client_order_id", "<u8", 16), ("ticket", "<u8", 24),
    ("symbol", "<u4", 32), ("agent", "<u4", 36), ("side", "i1", 40), ("kind", "u1", 41),
    ("reason", "<u2", 42), ("retcode", "<u4", 44), ("volume", "<f8", 48), ("price", "<f8", 56),
    ("sl", "<f8", 64), ("tp", "<f8", 72), ("conviction", "<f8", 80), ("risk", "<f8", 88),
    ("commission", "<f8", 96),
)  # fmt: skip
QUOTE_DTYPE = _record(32, ("ts_ns", "<i8", 0), ("bid", "<f8", 8), ("ask", "<f8", 16), ("recv_ns", "<i8", 24))

# MT5's TICK_FLAG_* bits: which fields a tick changed.
TICK_FLAG_BID = 2
TICK_FLAG_ASK = 4
TICK_FLAG_LAST = 8
TICK_FLAG_VOLUME = 16
# Signal.flags bits.
SIGNAL_FLAG_SURGE = 1
# Order.kind: which hop an Order record is.
ORDER_INTENT = 1
ORDER_APPROVED = 2
ORDER_FILL = 3
ORDER_REJECT = 4
NO_AGENT = 0xFFFFFFFF

for _name, _ours, _theirs in (
    ("TICK_DTYPE", TICK_DTYPE, _core.TICK_DTYPE),
    ("BAR_DTYPE", BAR_DTYPE, _core.BAR_DTYPE),
    ("SIGNAL_DTYPE", SIGNAL_DTYPE, _core.SIGNAL_DTYPE),
    ("ORDER_DTYPE", ORDER_DTYPE, _core.ORDER_DTYPE),
    ("QUOTE_DTYPE", QUOTE_DTYPE, _core.QUOTE_DTYPE),
):
    if _ours != _theirs:
        raise ImportError(
            f"sovereign._core was built with another {_name} layout ({_theirs}); rebuild it with "
            f"'pip install .'"
        )

LAYOUT_VERSION: int = _core.LAYOUT_VERSION
AgentPool = _core.AgentPool
TickRing = _core.TickRing
SignalRing = _core.SignalRing
OrderRing = _core.OrderRing
QuoteBoard = _core.QuoteBoard
RingError = _core.RingError
Screen = _core.Screen
SignalBook = _core.SignalBook
last_of_each = _core.last_of_each
wait_for_records = _core.wait_for_records
first_touch = _core.first_touch
