"""Read-only views of the state for operators: what `sovereign status`, `positions`,
`orders`, `signals`, `journal` and `pnl` show. Each takes a read transaction, so they work the
same against the live environment (LMDB readers never block the writers) and against a
stopped system or a backup.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np

from sovereign.core import SIGNAL_DTYPE
from sovereign.market.calendar import EPOCH, Days
from sovereign.state.archive import history
from sovereign.state.orders import open_orders
from sovereign.state.schema import BOOK_KEY, DAY_OPENS_KEY, RISK_STATE_KEY, key_u64
from sovereign.state.store import Txn
from sovereign.text import MAX_FIELD, clean


def symbol_names(t: Txn) -> list[str]:
    return list(t.get("meta", "symbols") or [])


def _name(names: list[str], symbol: int) -> str:
    return names[symbol] if 0 <= symbol < len(names) else f"#{symbol}"


def account(t: Txn) -> dict[str, Any]:
    """The account as risk last saved it (it saves every second and on every fill)."""
    saved = t.get("risk", RISK_STATE_KEY)
    book = t.get("positions", BOOK_KEY)
    if saved is None:
        return {"state": None, "stale": True, "why": "no risk state yet (the system has never run here)"}
    equity, peak, day_start = Decimal(saved["equity"]), Decimal(saved["peak"]), Decimal(saved["day_start"])
    balance = book["balance"] if book is not None else None
    return {
        "state": saved["state"], "why": saved["why"], "balance": balance, "equity": saved["equity"],
        "peak": saved["peak"], "day_pnl": str(equity - day_start),
        "drawdown": float((peak - equity) / peak) if peak > 0 else 0.0,
        "open_positions": len(book["positions"]) if book else 0, "flattening": saved.get("flattening", False),
        "stale": True,
    }  # fmt: skip


def positions(t: Txn) -> list[dict[str, Any]]:
    """Open positions (netting: one per symbol) from risk's book."""
    book = t.get("positions", BOOK_KEY)
    names = symbol_names(t)
    out = []
    for s, p in sorted(((int(k), v) for k, v in (book or {}).get("positions", {}).items())):
        lots = [(Decimal(v), Decimal(px)) for v, px in p["lots"]]
        volume = sum((v for v, _ in lots), Decimal(0))
        if not volume:
            continue
        avg = sum((v * px for v, px in lots), Decimal(0)) / volume
        out.append({
            "symbol": s, "name": _name(names, s), "side": "BUY" if volume > 0 else "SELL",
            "volume": str(abs(volume)), "avg_price": str(avg.quantize(Decimal("1e-8")).normalize()),
            "sl": p.get("sl"), "tp": p.get("tp"), "lots": len(lots),
        })  # fmt: skip
    return out


def orders(t: Txn, *, open_only: bool = False, limit: int = 50) -> list[dict[str, Any]]:
    """The newest orders first (client ids only grow); open_only: those in an open state,
    from the index (a stuck order may be old)."""
    names = symbol_names(t)
    found = reversed(open_orders(t)) if open_only else (o for _, o in t.items("orders", reverse=True))
    out = []
    for o in found:
        if "symbol" in o:
            o["name"] = _name(names, int(o["symbol"]))
        out.append(o)
        if limit and len(out) >= limit:
            break
    return out


def order_history(t: Txn, archive: str | Path, start: int | None, end: int | None,
                  limit: int = 0) -> list[dict[str, Any]]:  # fmt: skip
    """Orders whose market time is in [start, end), oldest first, from the archive and
    then LMDB (see sovereign.state.archive.history); the first `limit` (0: all)."""
    names = symbol_names(t)
    out = []
    for _, o in history(t, archive, "orders", start, end):
        if "symbol" in o:
            o["name"] = _name(names, int(o["symbol"]))
        out.append(o)
        if limit and len(out) >= limit:
            break
    return out


def journal_history(t: Txn, archive: str | Path, start: int | None, end: int | None,
                    limit: int = 0) -> list[dict[str, Any]]:  # fmt: skip
    """Journal events of [start, end) market time with their sequence numbers, oldest
    first, from the archive and then LMDB; the first `limit` (0: all)."""
    out = []
    for seq, e in history(t, archive, "journal", start, end):
        out.append({"seq": seq, **e})
        if limit and len(out) >= limit:
            break
    return out


def signals(t: Txn, *, limit: int = 50, after: int = 0) -> list[dict[str, Any]]:
    """Recorded signals: the newest `limit` (oldest first), or all after sequence `after`."""
    names = symbol_names(t)
    raw: list[tuple[int, bytes]] = []
    if after:
        raw = [(key_u64(k), v) for k, v in t.items("signals", after + 1, raw=True)]
    else:
        for k, v in t.items("signals", raw=True, reverse=True):
            raw.append((key_u64(k), v))
            if len(raw) >= limit:
                break
        raw.reverse()
    if not raw:
        return []
    recs = np.frombuffer(b"".join(v for _, v in raw), SIGNAL_DTYPE)
    return [{
        "seq": seq, "ts_ns": int(r["ts_ns"]), "agent": int(r["agent"]), "symbol": int(r["symbol"]),
        "name": _name(names, int(r["symbol"])), "side": "BUY" if r["side"] > 0 else "SELL",
        "conviction": float(r["conviction"]), "entry": float(r["entry"]), "stop": float(r["stop"]),
        "target": float(r["target"]), "touches": int(r["touches"]), "timeframe_s": int(r["timeframe_s"]),
    } for (seq, _), r in zip(raw, recs, strict=True)]  # fmt: skip


def journal(t: Txn, *, limit: int = 50, after: int = 0) -> list[dict[str, Any]]:
    """Journal events with their sequence numbers: the newest `limit`, or all after `after`."""
    if after:
        return [{"seq": key_u64(k), **v} for k, v in t.items("journal", after + 1)]
    out = []
    for k, v in t.items("journal", reverse=True):
        out.append({"seq": key_u64(k), **v})
        if len(out) >= limit:
            break
    out.reverse()
    return out


# ---- the journal in words (what `sovereign journal` prints; --json keeps the entries as stored)

_PRICES = frozenset({"price", "sl", "tp", "fill_price", "entry", "stop", "target", "avg_price"})
_FILL_WHY = {"sl": "stop loss", "tp": "target", "": "market"}


def journal_text(e: dict[str, Any], names: list[str], digits: Callable[[str], int]) -> str:
    """A journal entry for an operator, after its event's name: symbols by name, sides as buy
    and sell, prices at the symbol's digits (digits(name)), an order's conviction named as
    what it is (the net of its symbol's live signals, at most 1), no order id 0 (a fill the
    broker made by itself: a stop or a target); orders and fills as sentences, other
    events as key=value pairs."""
    event = e.get("event")
    fields = {k: v for k, v in e.items() if k not in ("seq", "event")}
    symbol = fields.get("symbol")
    name = _name(names, symbol) if type(symbol) is int else symbol
    places = digits(name) if isinstance(name, str) else 5
    w = {k: _word(k, v, places) for k, v in fields.items()}
    if name is not None:
        w["symbol"] = str(name)
    if not fields.get("client_order_id"):
        w.pop("client_order_id", None)
    what = " ".join(w.pop(k) for k in ("symbol", "side", "volume") if k in w)
    if "price" in w:
        what += f" at {w.pop('price')}"
    stops = ", ".join(f"{label} {w.pop(k)}" for k, label in (("sl", "stop"), ("tp", "target"))
                      if w.get(k) not in (None, "", "0", "None"))  # fmt: skip
    w.pop("sl", None), w.pop("tp", None)
    what += f" ({stops})" if stops else ""
    if event == "order":
        line = f"{w.pop('client_order_id', '?')} {what}".rstrip() + f": {w.pop('state', '')}"
        was = w.pop("previous", "")
        line += f" (was {was})" if was else ""
        reason = w.pop("reason", "")
        line += f", {reason}" if reason and reason != "OK" else ""
        if "fill_price" in w:
            line += f" at {w.pop('fill_price')}"
        if "conviction" in w:
            w["net_conviction"] = w.pop("conviction")
    elif event == "fill":
        if fields.get("retcode") == 10009:  # done: what every fill is
            w.pop("retcode")
        why = w.pop("reason", "")
        line = f"{what} ({_FILL_WHY.get(why, why)})"
        if "client_order_id" in w:
            line += f", order {w.pop('client_order_id')}"
    else:
        line = what
    if "ts_ns" in w:
        w["time"] = w.pop("ts_ns")
    tail = " ".join(f"{k}={v}" for k, v in w.items())
    return " · ".join(x for x in (line.strip(), tail) if x)


def _word(key: str, v: Any, places: int) -> str:
    """A field's value in words, escaped and bounded (sovereign.text), whatever is stored."""
    if key in _PRICES and v not in (None, "", 0, 0.0):
        try:
            return f"{Decimal(str(v)):.{places}f}"
        except (ArithmeticError, ValueError):
            pass
    if key == "side" and v in (1, -1):
        return "buy" if v > 0 else "sell"
    if key == "conviction" and isinstance(v, float):
        return f"{v:.2f}"
    if key == "ts_ns" and type(v) is int and v > 0:
        return _iso(v)
    return clean(v, MAX_FIELD)


def _iso(ns: int) -> str:
    return str(np.datetime64(ns, "ns").astype("datetime64[ms]")) + "Z"


DAY_OPENS_KEPT = 70  # trading days: a month, and the day before it, with room for a long gap


def keep_day_open(t: Txn, day: int, equity: str) -> None:
    """Record trading day `day`'s opening equity (risk, as the day begins), keeping the
    newest DAY_OPENS_KEPT days: what `pnl` measures the week and the month from."""
    opens = t.get("risk", DAY_OPENS_KEY) or {}
    opens[str(day)] = equity
    for old in sorted(opens, key=int)[:-DAY_OPENS_KEPT]:
        del opens[old]
    t.put("risk", DAY_OPENS_KEY, opens)


def pnl(t: Txn, now_ns: int, day_timezone: str, day_start: str) -> dict[str, Any]:
    """P&L of the trading day, week (from Monday's trading day) and month so far: equity now
    against the equity each period opened with, as risk recorded it when each trading day
    began (keep_day_open). A period whose start the record does not reach (a state younger
    than the period, or one from before the record was kept) is measured from the oldest day
    it holds and says so (`complete`: false, `since`: that day's date). Days follow risk's:
    `day_start` in `day_timezone`; `now_ns` is market time (0: risk's own current day)."""
    saved = t.get("risk", RISK_STATE_KEY)
    if saved is None or int(saved.get("day", -1)) < 0:
        return {"equity": None, "why": "no trading day yet (the system has not marked its book here)",
                "periods": {}}  # fmt: skip
    today = int(saved["day"])
    if now_ns > 0:
        today = max(today, Days(day_timezone, day_start).key(now_ns))
    date = EPOCH + timedelta(days=today)
    firsts = {"day": today, "week": today - date.weekday(), "month": today - (date.day - 1)}
    opens = {int(d): Decimal(e) for d, e in (t.get("risk", DAY_OPENS_KEY) or {}).items()}
    reaches_back = any(d < firsts["month"] for d in opens)  # every period's start is in the record
    if today not in opens and int(saved["day"]) == today:
        opens[today] = Decimal(saved["day_start"])  # a state from before the record was kept
    equity = Decimal(saved["equity"])
    periods = {}
    for name, first in firsts.items():
        days = [d for d in opens if d >= first]
        if not days:  # today's opening not known (a day not marked yet): nothing to measure from
            periods[name] = {"complete": False, **dict.fromkeys(("since", "start_equity", "pnl", "ratio"))}
            continue
        start = min(days)
        base = opens[start]
        periods[name] = {
            "complete": start == first or reaches_back, "since": str(EPOCH + timedelta(days=start)),
            "start_equity": str(base), "pnl": str(equity - base),
            "ratio": float((equity - base) / base) if base > 0 else None,
        }  # fmt: skip
    return {"equity": str(equity), "today": str(date), "periods": periods}
