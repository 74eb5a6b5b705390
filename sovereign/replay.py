"""Replay a live session: its recorded ticks through the backtest wiring, with the config
it ran with, compared with what the live system decided (its LMDB state).

Compared, in the time span of the recording:
- signals, every field but origin_ns (the live receive clock): exactly;
- the coordinator's decisions: each intent's time, symbol, side and agent, and whether risk
  approved it or refused it and why;
- for the approved orders: volume, stop and target (risk's sizing), reported as
  differences when they differ, with the fill prices side by side.

The agents see exactly the recorded ticks, so signals must match bit for bit; any
difference is a defect and is reported first. Live orders go through processes that run
concurrently: risk sizes from the quote on the board when the intent reaches it, and the
broker fills at the quote when the order reaches it, a few ticks after the tick the
backtest decides on. Such differences are listed, never hidden.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sovereign.config import Config, from_dict
from sovereign.core import SIGNAL_DTYPE
from sovereign.data import DataError
from sovereign.datafile import Market, open_file
from sovereign.recorder import recordings

SIGNAL_FIELDS = [n for n in SIGNAL_DTYPE.names or () if n != "origin_ns"]
DECISION = ("ts_ns", "symbol", "side", "agent")


def load_recording(path: str | Path) -> tuple[Market, Config]:
    """A recording (a file or a directory of them) as one Market, and its config."""
    files = recordings(path)
    if not files:
        raise DataError(f"{path}: no recordings (ticks-*.sovdata) here")
    parts = [open_file(f) for f in files]
    first = parts[0]
    if "config" not in first.meta:
        raise DataError(f"{files[0]}: not a recording (its header has no config)")
    for f, m in zip(files[1:], parts[1:], strict=True):
        if m.meta.get("config") != first.meta["config"] or m.names != first.names:
            raise DataError(f"{f}: recorded with another config or other symbols than {files[0]}; "
                            "replay the sessions one by one")  # fmt: skip
    records = np.concatenate([np.asarray(m.records) for m in parts])
    issues = [i for m in parts for i in m.issues]
    market = Market("ticks", records, first.names, issues, first.meta)
    return market, from_dict(first.meta["config"])


def live_signals(t: Any, first_ns: int, last_ns: int) -> np.ndarray:
    raw = [v for _, v in t.items("signals", raw=True)]
    recs = np.frombuffer(b"".join(raw), SIGNAL_DTYPE) if raw else np.zeros(0, SIGNAL_DTYPE)
    return recs[(recs["ts_ns"] >= first_ns) & (recs["ts_ns"] <= last_ns + 86_400 * 10**9)]


def live_orders(t: Any, first_ns: int) -> list[dict[str, Any]]:
    """The live coordinator's intents (agent-made orders; risk's own closes are left out)."""
    out = []
    for _, o in t.items("orders"):
        if int(o.get("ts_ns", 0)) < first_ns or o.get("reason") == "FLATTEN":
            continue
        if "agent" in o and o["agent"] == 0xFFFFFFFF:
            continue
        out.append(o)
    return out


def compare(replayed: np.ndarray, orders: list[dict[str, Any]], live_sig: np.ndarray,
            live_ord: list[dict[str, Any]], names: list[str], limit: int = 20) -> dict[str, Any]:  # fmt: skip
    """Differences between the replay and the live session (see the module docstring)."""
    sig = _signal_diff(replayed, live_sig, names, limit)
    mine = [o for o in orders if o["agent"] != 0xFFFFFFFF]
    dec = _order_diff(mine, live_ord, names, limit)
    return {"signals": sig, "orders": dec, "identical": sig["identical"] and dec["identical"]}


def _signal_diff(a: np.ndarray, b: np.ndarray, names: list[str], limit: int) -> dict[str, Any]:
    if len(b) and len(a):
        a = a[a["ts_ns"] >= b["ts_ns"].min()]  # the live history may have been trimmed
    ka = np.sort(np.asarray(a[SIGNAL_FIELDS]), order=["ts_ns", "agent"])
    kb = np.sort(np.asarray(b[SIGNAL_FIELDS]), order=["ts_ns", "agent"])
    set_a = {tuple(r) for r in ka.tolist()}
    set_b = {tuple(r) for r in kb.tolist()}
    only_replay = sorted(set_a - set_b)
    only_live = sorted(set_b - set_a)

    def show(rows: list[tuple]) -> list[dict[str, Any]]:
        out = []
        for r in rows[:limit]:
            d = dict(zip(SIGNAL_FIELDS, r, strict=True))
            d["symbol"] = names[d["symbol"]] if d["symbol"] < len(names) else d["symbol"]
            out.append(d)
        return out

    return {"replayed": len(ka), "live": len(kb), "matched": len(set_a & set_b),
            "only_in_replay": show(only_replay), "only_live": show(only_live),
            "identical": not only_replay and not only_live}  # fmt: skip


def _order_diff(mine: list[dict[str, Any]], live: list[dict[str, Any]], names: list[str],
                limit: int) -> dict[str, Any]:  # fmt: skip
    def key(o: dict[str, Any]) -> tuple:
        return int(o["ts_ns"]), int(o["symbol"]), int(o["side"])

    def outcome(o: dict[str, Any]) -> str:
        if o.get("state", "") != "REJECTED":
            return "APPROVED"
        if o.get("retcode"):  # risk approved it; the broker refused it
            return f"BROKER_REJECTED:{o['retcode']}"
        return "REJECTED:" + str(o.get("reason", ""))

    live_by = {key(o): o for o in live}
    mine_by = {key(o): o for o in mine}
    differ = []
    for k in sorted(set(live_by) & set(mine_by)):
        a, b = mine_by[k], live_by[k]
        what: dict[str, Any] = {}
        if outcome(a) != outcome(b):
            what["outcome"] = {"replay": outcome(a), "live": outcome(b)}
        elif outcome(a) == "APPROVED":
            for f in ("volume", "sl", "tp"):
                if abs(float(a[f]) - float(b.get(f, 0.0))) > 1e-12:
                    what[f] = {"replay": a[f], "live": b.get(f)}
        if what:
            what["fill_price"] = {"replay": a.get("fill_price"), "live": b.get("fill_price")}
            differ.append({"time": k[0], "symbol": names[k[1]], "side": k[2], **what})
    only_r = [{"time": k[0], "symbol": names[k[1]], "side": k[2], "outcome": outcome(mine_by[k])}
              for k in sorted(set(mine_by) - set(live_by))]  # fmt: skip
    only_l = [{"time": k[0], "symbol": names[k[1]], "side": k[2], "outcome": outcome(live_by[k])}
              for k in sorted(set(live_by) - set(mine_by))]  # fmt: skip
    both = len(set(live_by) & set(mine_by))
    return {"replayed": len(mine), "live": len(live), "matched": both - len(differ),
            "differ": differ[:limit], "n_differ": len(differ), "only_in_replay": only_r[:limit],
            "n_only_in_replay": len(only_r), "only_live": only_l[:limit], "n_only_live": len(only_l),
            "identical": not differ and not only_r and not only_l}  # fmt: skip
