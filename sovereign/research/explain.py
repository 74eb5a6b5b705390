"""Why a backtest did what it did: which symbols of the data no agent reads (with the
config lines that would add one), and what became of every signal (an order that filled,
or the stage that refused it and why).

Each signal is counted once, at the decision it arrives in, with what became of its
symbol there: the coordinator made no intent (its net conviction was below the threshold,
the symbol was already positioned that way, or an order for it was in flight), risk
refused the intent (its Reason), the broker refused the order, or the order filled.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sovereign.files import want_dict, want_int, want_list, want_str

TIMEFRAMES = {60: "M1", 300: "M5", 900: "M15", 1800: "M30", 3600: "H1", 14_400: "H4", 86_400: "D1",
              604_800: "W1"}  # fmt: skip
FILLED = "filled"
BELOW_THRESHOLD = "below_threshold"
POSITIONED = "positioned"
IN_FLIGHT = "in_flight"
UNFILLED = "unfilled_at_end"


def timeframe_name(seconds: int) -> str:
    """M1, H1, ... as the config takes them; other timeframes as seconds."""
    return TIMEFRAMES.get(seconds, f"{seconds} s")


def _toml_timeframe(seconds: int) -> str:
    return f'"{TIMEFRAMES[seconds]}"' if seconds in TIMEFRAMES else str(seconds)


class SignalOutcomes:
    """What became of the signals of one run, counted by outcome (see the module docstring)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.waiting: dict[int, int] = {}  # client order id -> signals behind the intent, until settled

    def _add(self, key: str, n: int) -> None:
        self.counts[key] = self.counts.get(key, 0) + n

    def decided(self, signals: np.ndarray, intents: list[tuple], coord: Any) -> None:
        """A decision's signals and the coordinator's intents for them (ORDER_DTYPE tuples).
        Called at every decision: plain Python on a few signals is cheaper than numpy here."""
        per_symbol: dict[int, int] = {}
        for s in signals["symbol"].tolist():
            per_symbol[s] = per_symbol.get(s, 0) + 1
        ids = {t[4]: t[2] for t in intents}
        for s, n in per_symbol.items():
            cid = ids.get(s)
            if cid is not None:
                self.waiting[cid] = self.waiting.get(cid, 0) + n
            else:
                self._add(_no_intent(s, coord), n)

    def refused(self, cid: int, reason: str) -> None:
        """Risk refused intent `cid` (a Reason's name)."""
        self._add(f"risk:{reason}", self.waiting.pop(cid, 0))

    def sent(self, cid: int, filled: bool, reason: str) -> None:
        """The broker filled order `cid`, or refused it (`reason`: its retcode's name)."""
        self._add(FILLED if filled else f"broker:{reason}", self.waiting.pop(cid, 0))

    def summary(self, total: int) -> dict[str, Any]:
        """{signals, filled, refused: [{reason, signals, why}] most first}; orders still
        waiting count as unfilled at the end of the data."""
        counts = dict(self.counts)
        if self.waiting:
            counts[UNFILLED] = counts.get(UNFILLED, 0) + sum(self.waiting.values())
        refused = sorted(((k, v) for k, v in counts.items() if k != FILLED and v),
                         key=lambda kv: (-kv[1], kv[0]))  # fmt: skip
        return {
            "signals": total,
            "filled": counts.get(FILLED, 0),
            "refused": [{"reason": k, "signals": v, "why": describe(k)} for k, v in refused],
        }

    def to_dict(self) -> dict[str, Any]:
        return {"counts": dict(sorted(self.counts.items())), "waiting": sorted(self.waiting.items())}

    def load_dict(self, d: Any) -> None:
        """The state of to_dict back, each field checked (ValueError)."""
        d = want_dict(d, "out.outcomes", {"counts", "waiting"})
        counts = d["counts"]
        if type(counts) is not dict or len(counts) > 1000:
            raise ValueError("out.outcomes.counts: not an object of up to 1000 reasons")
        self.counts = {want_str(k, "out.outcomes reason", 80): want_int(v, "out.outcomes count", 0)
                       for k, v in counts.items()}  # fmt: skip
        self.waiting = {}
        for x in want_list(d["waiting"], "out.outcomes.waiting"):
            cid, n = want_list(x, "out.outcomes.waiting", 2)
            self.waiting[want_int(cid, "out.outcomes id", 0)] = want_int(n, "out.outcomes count", 0)


def _no_intent(symbol: int, coord: Any) -> str:
    """Why the coordinator made no intent for `symbol` at this decision (its checks, in its
    order). Flat and with no order in flight, only the threshold can have stopped it."""
    position, flight = coord.position.get(symbol, 0), coord.in_flight.get(symbol)
    if not position and (flight is None or flight[1] <= coord.book.clock_ns):
        return BELOW_THRESHOLD
    net = 0.0
    for live in coord.book.live(symbol):  # (agent, expires_ns, side, conviction, ...), netted in this order
        net += live[2] * live[3]
    if not abs(net) >= coord.book.threshold:
        return BELOW_THRESHOLD
    if position == (1 if net > 0 else -1):
        return POSITIONED
    return IN_FLIGHT


_WHY = {
    BELOW_THRESHOLD: "the coordinator's net conviction for the symbol was below coordinator.threshold",
    POSITIONED: "the symbol was already positioned in the signal's direction",
    IN_FLIGHT: "an order for the symbol was still waiting for its answer",
    UNFILLED: "the order was waiting for the next bar when the data ended",
}


def describe(key: str) -> str:
    """An outcome in words."""
    if key.startswith("risk:"):
        return f"risk refused the order: {key[5:]}"
    if key.startswith("broker:"):
        return f"the broker refused the order: {key[7:]} (orders.csv has each one's reason)"
    return _WHY.get(key, key)


# ---- which data no agent reads


def data_timeframes(market: Any) -> dict[int, set[int]]:
    """symbol id -> the timeframes of its records (bars), or {0} (ticks: agents build their own bars)."""
    r = market.records
    present = np.flatnonzero(np.bincount(r["symbol"], minlength=len(market.names))).tolist() if len(r) else []
    if market.kind == "ticks":
        return {s: {0} for s in present}
    tf = r["timeframe_s"]
    if len(tf) and (tf == tf[0]).all():
        return {s: {int(tf[0])} for s in present}
    pairs = np.unique(r["symbol"].astype(np.int64) << 32 | tf.astype(np.int64))
    out: dict[int, set[int]] = {}
    for p in pairs.tolist():
        out.setdefault(p >> 32, set()).add(p & 0xFFFF_FFFF)
    return out


def agent_timeframes(pool: Any) -> dict[int, set[int]]:
    """symbol id -> the timeframes its agents run on."""
    out: dict[int, set[int]] = {}
    for a in range(len(pool)):
        c = pool.agent_config(a)
        out.setdefault(int(c["symbol"]), set()).add(int(c["timeframe_s"]))
    return out


def unread(market: Any, pool: Any) -> list[tuple[str, int, list[int]]]:
    """The (symbol, data timeframe) pairs no agent reads: (name, timeframe_s or 0 for ticks,
    the timeframes the symbol's agents run on). A bar of timeframe T feeds the agents of T
    and of every larger timeframe T divides (M1 bars build M5); ticks feed every agent."""
    agents = agent_timeframes(pool)
    out = []
    for s, tfs in sorted(data_timeframes(market).items()):
        mine = agents.get(s, set())
        for tf in sorted(tfs):
            if not any(a % tf == 0 for a in mine) if tf else not mine:
                out.append((market.names[s], tf, sorted(mine)))
    return out


def unread_note(gaps: list[tuple[str, int, list[int]]], all_names: list[str]) -> str:
    """What to tell the user about `gaps` (from unread), with the config that adds the agents."""
    if not gaps:
        return ""
    lines = []
    for name, tf, mine in gaps[:5]:
        data = f"{timeframe_name(tf)} bars" if tf else "ticks"
        has = f"agents on {', '.join(timeframe_name(a) for a in mine)} only" if mine else "no agents"
        lines.append(f"  {name}: {data}, {has}")
    if len(gaps) > 5:
        lines.append(f"  ... and {len(gaps) - 5} more")
    by_tf: dict[int, list[str]] = {}
    for name, tf, _ in gaps:
        by_tf.setdefault(tf, []).append(name)
    sets = []
    for tf, names in sorted(by_tf.items()):
        every = len(names) > 20 and sorted(names) == sorted(all_names)
        shown = '"*"' if every else ", ".join(f'"{n}"' for n in names[:20])
        more = f"  # and {len(names) - 20} more" if len(names) > 20 and not every else ""
        timeframe = f"\ntimeframe = {_toml_timeframe(tf)}" if tf else ""
        sets.append(f"[[agents.sets]]\nsymbols = [{shown}]{more}{timeframe}")
    return ("no agent reads the data of these symbols, so they cannot trade:\n" + "\n".join(lines)
            + "\nadd agents for it to the config (--config FILE), e.g.:\n\n" + "\n\n".join(sets) + "\n")


__all__ = ["SignalOutcomes", "describe", "timeframe_name", "unread", "unread_note"]
