"""Feeds: where the gateway's ticks come from when the broker is the paper broker.

`sim` is a SimMarket; `replay` is CSV files (sovereign.market.data). Either can run as fast as
possible or in real time (ticks released when the wall clock reaches their time, the
first tick mapped to now; `speed` > 1 runs the market clock that many times faster),
and stop after max_ticks.

The feed is the gateway's only source of ticks, so it screens their times as AgentPool
does (csrc/agent_pool.hpp): a tick outside [2000-01-01, 2200-01-01) or far ahead of the
stream is dropped and counted here, before the quote board, the recorder, the workers or
the broker see it. Its market clock (`clock_ns`) is what the workers close bars by.

Symbols are numbered by the system's list (`feed_symbols`): a state's names keep their ids
at every start, whatever order the files come in, and new names follow them.

The feed's position is state (`Feed.mark`, kept by the gateway with the broker's state): a
restarted feed resumes after it (`resume`), never from the start of its data, and its
market clock never goes back. The same data (the same files, or the same sim) goes on
exactly where the mark was; other data resumes after the mark's market time.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from sovereign.config import Config, sim_start_ns
from sovereign.core import TICK_DTYPE, AgentPool
from sovereign.market.data import MAX_SYMBOLS, DataError, SymbolListError, known_symbols, load_ticks
from sovereign.market.sim import DEFAULT_START_NS, SimMarket

NS = 1_000_000_000
MAX_SIM_SYMBOLS = 100_000  # the most config feed.symbols allows: a sim state's list may be this long
REGENERATE = 1 << 16  # sim ticks a resume may make again, at least (see Feed._snapshot)


def sim_names(n: int) -> list[str]:
    return [f"SIM{s:03d}" for s in range(n)]


def feed_symbols(config: Config, stored: object = None) -> tuple[str, ...]:
    """The system's symbol names by id: the state's list (meta "symbols", `stored`) with
    every name at its index, then the feed's names it lacks, in their order of first
    appearance. So positions, books, orders and agent snapshots keyed by id keep their
    instrument when the files are reordered. A stored name the feed no longer has keeps its
    id: no tick comes for it, and a position on it stays unquoted (risk values it at cost
    and waits). A stored list that is not one (SymbolListError) or a total past the limit
    (replay: MAX_SYMBOLS, DataError) stops the start."""
    f = config.feed
    if f.kind == "replay":
        known = known_symbols(stored, MAX_SYMBOLS)
        return tuple(load_ticks(f.files, f.layout, config.symbols.point, f.bad_rows, known)[1])
    known = known_symbols(stored, MAX_SIM_SYMBOLS)
    have = set(known)
    names = known + [n for n in sim_names(f.symbols) if n not in have]
    if len(names) > MAX_SIM_SYMBOLS:
        raise SymbolListError(
            f"the state's {len(known)} symbols and the sim's {f.symbols} make "
            f"{len(names)}, more than {MAX_SIM_SYMBOLS}: use a new state directory"
        )
    return tuple(names)


class TimeScreen:
    """AgentPool's screen of tick times for a stream in time order (the sim makes it so,
    replay files are sorted at load), vectorised: a tick outside the window is refused as
    `out_of_window`; one more than MAX_AHEAD_NS past the newest tick taken as `ahead`,
    until the refused have gone on for JUMP_CONFIRM_NS at the new time (a stream resuming
    after a long hole: taken there). Python walks the jumps, never the ticks."""

    def __init__(self) -> None:
        self.newest = 0  # the newest tick time taken; 0 before the first
        self.jump = 0  # the first tick refused as ahead since the last one taken; 0 if none
        self.refused = {"out_of_window": 0, "ahead": 0}

    def state(self) -> dict[str, Any]:
        return {"newest": self.newest, "jump": self.jump, "refused": dict(self.refused)}

    def load(self, d: Mapping[str, Any]) -> None:
        """`state()` back: the same ticks after it are screened as they were."""
        newest, jump, refused = int(d["newest"]), int(d["jump"]), d["refused"]
        self.refused = {k: int(refused[k]) for k in self.refused}
        self.newest, self.jump = newest, jump

    def __call__(self, ticks: np.ndarray) -> np.ndarray:
        """The ticks to keep, in order."""
        ts = ticks["ts_ns"]
        inside = (ts >= AgentPool.MIN_TIME_NS) & (ts < AgentPool.MAX_TIME_NS)
        if not inside.all():
            self.refused["out_of_window"] += int(len(ts) - inside.sum())
            ticks, ts = ticks[inside], ts[inside]
        ahead = self._ahead(ts)
        if ahead.any():
            self.refused["ahead"] += int(ahead.sum())
            ticks = ticks[~ahead]
        return ticks

    def _ahead(self, ts: np.ndarray) -> np.ndarray:
        out = np.zeros(len(ts), bool)
        limit, confirm = AgentPool.MAX_AHEAD_NS, AgentPool.JUMP_CONFIRM_NS
        i, n = 0, len(ts)
        while i < n:
            if self.jump == 0:  # taken up to the first tick more than `limit` past the one before
                prev = np.r_[self.newest or ts[i], ts[i : n - 1]]
                gaps = np.flatnonzero(ts[i:] - prev > limit)
                j = i + int(gaps[0]) if len(gaps) else n
                if j > i:
                    self.newest = max(self.newest, int(ts[j - 1]))
                if j == n:
                    break
                self.jump, out[j], i = int(ts[j]), True, j + 1
            else:  # refused until the stream has gone on `confirm` there, or jumps again
                since = ts[i:] - self.jump
                stop = np.flatnonzero((since > limit) | (since >= confirm))
                k = i + int(stop[0]) if len(stop) else n
                out[i:k] = True
                if k == n:
                    break
                if since[k - i] > limit:
                    self.jump, out[k], i = int(ts[k]), True, k + 1
                else:
                    self.jump, self.newest, i = 0, int(ts[k]), k
        return out


class Snapshot(NamedTuple):
    """Where the feed's source stood at the start of a chunk: ticks taken from it (`at`),
    the sim market then (its bytes; None for files) and the screen then."""

    at: int
    sim: bytes | None
    screen: dict[str, Any]


class FeedMark(NamedTuple):
    """The feed's position: `given` ticks given since the snapshot `base`, the market clock
    and the ticks given in all. `to_dict` is what the gateway keeps; `Feed.resume` takes it."""

    kind: str
    identity: dict[str, Any]
    base: Snapshot
    given: int
    clock_ns: int
    emitted: int

    def to_dict(self) -> dict[str, Any]:
        sim = None if self.base.sim is None else base64.b64encode(self.base.sim).decode()
        return {"kind": self.kind, "identity": self.identity, "at": self.base.at, "sim": sim,
                "screen": self.base.screen, "given": self.given, "clock_ns": self.clock_ns,
                "emitted": self.emitted}  # fmt: skip


class Feed:
    """Batches of ticks in time order; `done` once a finite feed is exhausted.

    `names`: the system's symbol names by id (feed_symbols); the ticks are numbered by them.
    Empty: the feed's own, in order of first appearance."""

    def __init__(self, config: Config, names: Sequence[str] = ()):
        f = config.feed
        self.config = config
        self.realtime = f.pace == "realtime"
        self.speed = f.speed
        self.max_ticks = f.max_ticks or None
        self.emitted = 0
        self.done = False
        self.finished_at: float | None = None  # time.monotonic() when it ran out
        self._sim: SimMarket | None = None
        self._ids: np.ndarray | None = None  # sim symbol -> the system's id, where they differ
        self._data: np.ndarray | None = None
        self._at = 0  # ticks taken from the source (files: the index of the next)
        self._pending = np.zeros(0, TICK_DTYPE)
        self.screen = TimeScreen()
        self._told = 0  # refusals reported so far
        # The market time every tick up to which has been given: no later tick is older.
        # At fast pace the newest tick given; paced, the market time that maps to now.
        self.clock_ns = 0
        self.resumed: dict[str, Any] = {"mode": "new"}  # how `resume` went (journaled by the gateway)
        if f.kind == "sim":
            self.start_ns = sim_start_ns(f.start) if f.start else (time.time_ns() if self.realtime else None)
            self._sim = self._new_sim(self.start_ns, f.seed)
            own = sim_names(f.symbols)
            self.names = tuple(names) or tuple(own)
            self._number_sim(own)
            self.identity: dict[str, Any] = {"symbols": f.symbols, "seed": f.seed,
                                             "interval_s": f.tick_interval_s}  # fmt: skip
        else:
            self._data, got = load_ticks(f.files, f.layout, config.symbols.point, f.bad_rows, tuple(names))
            if names and tuple(got) != tuple(names):
                new = ", ".join(got[len(names) :][:5])
                raise DataError(f"the data files now have symbols the system did not start with ({new}): "
                                "restart the system to take them")  # fmt: skip
            self.names = tuple(got)
            digest = hashlib.blake2b(self._data.tobytes(), digest_size=16).hexdigest()
            self.identity = {"ticks": len(self._data), "digest": digest}
        # The ids this feed has ticks for: a name of the state's it lacks is never quoted.
        ids = np.unique(self._data["symbol"]) if self._data is not None else self._sim_ids()
        self.fed = frozenset(int(s) for s in ids)
        self._mono0 = self._market0 = 0  # the pace: monotonic, so an NTP step neither floods nor stalls it
        self._base = self._snapshot()
        self._given = 0  # ticks given since _base

    @property
    def n_symbols(self) -> int:
        return len(self.names)

    @property
    def kind(self) -> str:
        return "sim" if self._sim is not None else "replay"

    @property
    def refused(self) -> dict[str, int]:
        """Ticks dropped, by reason (as AgentPool.stats()["rejected"] names them)."""
        return self.screen.refused

    def mark(self) -> FeedMark:
        """The position after the ticks given so far (cheap: the gateway takes one per batch)."""
        return FeedMark(self.kind, self.identity, self._base, self._given, self.clock_ns, self.emitted)

    def resume(self, saved: Mapping[str, Any] | None, same_run: bool = False, clock_floor_ns: int = 0
               ) -> None:  # fmt: skip
        """Go on after a mark (`FeedMark.to_dict`) a feed of this state left, before the
        first `next`. The same data (the same files; the same sim, from its configured start
        or none) goes on exactly after the mark's last tick. Other data (other files, another
        kind, another sim, or a sim whose configured start is later) resumes after the
        mark's market time: older ticks of files are skipped and counted, a sim starts
        there with the symbols' last prices. `clock_floor_ns`: a market time the last
        feed of this run reached (its published clock), under which nothing is given again
        unless the resume is exact. `same_run`: the mark is of this run (a restarted
        gateway), so max_ticks counts on from it."""
        clock = clock_floor_ns
        why = ""
        if saved is not None:
            try:
                clock = max(clock, int(saved["clock_ns"]))
                if self._exact(saved):
                    self._restore(saved, same_run, clock)
                    return
            except (KeyError, TypeError, ValueError) as e:
                why = f"the saved position is unreadable ({type(e).__name__}: {e}); "
        if clock:
            self._after(clock, saved, why)

    # ---- giving ticks

    def next(self, n: int) -> np.ndarray:
        """Up to n ticks (fewer when pacing holds them back or the screen drops them); empty
        once done."""
        if self.done:
            return self._pending[:0]
        if self.max_ticks is not None:
            n = min(n, self.max_ticks - self.emitted)
        if len(self._pending) == 0 and n > 0:
            if self._sim is None or self._at - self._base.at >= max(REGENERATE, 64 * self._sim.n_symbols):
                self._base, self._given = self._snapshot(), 0
            raw = self._source(n if not self.realtime else max(n, 256))
            if len(raw) == 0:
                self._finish()
                return self._pending
            self._pending = self.screen(raw)
            self._tell()
        take, clock = min(n, len(self._pending)), 0
        if self.realtime and len(self._pending):
            if self._mono0 == 0:
                self._mono0, self._market0 = time.monotonic_ns(), int(self._pending["ts_ns"][0])
            due = self._market0 + int((time.monotonic_ns() - self._mono0) * self.speed)
            upto = int(np.searchsorted(self._pending["ts_ns"], due, side="right"))
            if upto <= take:  # every tick due goes now
                take = upto
                if upto < len(self._pending):  # and the next one is later: the market is at `due`
                    clock = due
        out, self._pending = self._pending[:take], self._pending[take:]
        self.emitted += take
        self._given += take
        if self.max_ticks is not None and self.emitted >= self.max_ticks:
            self._finish()
            clock = 0  # the market ends with the last tick given, at any pace
        self.clock_ns = max(self.clock_ns, clock, int(out["ts_ns"][-1]) if take else 0)
        return out

    def due_in(self) -> float:
        """Seconds until the next tick is due (realtime; 0 when one may be due now or the
        pace is fast): how long the gateway may sleep before asking again."""
        if not self.realtime or self.done or len(self._pending) == 0 or self._mono0 == 0:
            return 0.0
        market_ns = (int(self._pending["ts_ns"][0]) - self._market0) / self.speed
        wait_ns = market_ns - (time.monotonic_ns() - self._mono0)
        return max(0.0, wait_ns / NS)

    def _finish(self) -> None:
        self.done = True
        self.finished_at = time.monotonic()

    def _tell(self) -> None:
        """A line for the log at the first refusal and each time their count doubles."""
        total = sum(self.refused.values())
        if total > self._told and total >= 2 * self._told:
            self._told = total
            print(f"feed: {total} ticks dropped so far ({self.refused}): their times are outside "
                  "[2000-01-01, 2200-01-01) or more than 7 days ahead of the stream", flush=True)  # fmt: skip

    def _source(self, n: int) -> np.ndarray:
        if self._sim is not None:
            out = self._sim.next(n)
            self._at += len(out)
            if self._ids is not None:
                out["symbol"] = self._ids[out["symbol"]]
            return out
        assert self._data is not None
        out = self._data[self._at : self._at + n]
        self._at += len(out)
        return out

    # ---- the position

    def _snapshot(self) -> Snapshot:
        """The source and the screen now, at the start of a chunk. Files: every chunk (an
        index). The sim: its bytes are 64 per symbol, so it is taken again only once it has
        made REGENERATE ticks, or 64 per symbol (a byte a tick at most), since the last: a
        resume makes up to that many ticks again to reach its mark."""
        sim = self._sim.state() if self._sim is not None else None
        return Snapshot(self._at, sim, self.screen.state())

    def _new_sim(self, start_ns: int | None, seed: int) -> SimMarket:
        f = self.config.feed
        kw = {"start_ns": start_ns} if start_ns is not None else {}
        return SimMarket(f.symbols, seed=seed, mean_interval_s=f.tick_interval_s, **kw)

    def _number_sim(self, own: list[str]) -> None:
        """The sim's symbol s is named SIMs; its ticks carry that name's id in `names`."""
        where = {n: i for i, n in enumerate(self.names)}
        missing = [n for n in own if n not in where]
        if missing:
            raise DataError(f"the sim's symbols {', '.join(missing[:5])} are not among the system's: restart "
                            "the system to take them")  # fmt: skip
        ids = np.array([where[n] for n in own], np.uint32)
        if not np.array_equal(ids, np.arange(len(own))):
            self._ids = ids

    def _sim_ids(self) -> np.ndarray:
        return self._ids if self._ids is not None else np.arange(self.config.feed.symbols)

    def _exact(self, saved: Mapping[str, Any]) -> bool:
        """Whether this feed is the one the mark was taken of, from where it was taken."""
        if saved["kind"] != self.kind or saved["identity"] != self.identity:
            return False
        if self._sim is None:
            return True
        # A sim started later than the mark (a configured start, or now for a paced sim
        # with none: its market follows the wall clock) does not go on from the mark.
        start = self.start_ns
        return start is None or (self.config.feed.start != "" and start <= int(saved["clock_ns"]))

    def _restore(self, saved: Mapping[str, Any], same_run: bool, clock: int) -> None:
        """Back to the mark's snapshot, then past the ticks given since it, made again."""
        at, given = int(saved["at"]), int(saved["given"])
        sim = base64.b64decode(saved["sim"]) if self._sim is not None else None
        market = SimMarket.from_state(sim) if sim is not None else None
        if at < 0 or given < 0 or (self._data is not None and at > len(self._data)):
            raise ValueError(f"position {at} + {given} is not in the data")
        self.screen.load(saved["screen"])
        if market is not None:
            if market.n_symbols != self.config.feed.symbols:
                raise ValueError(f"its sim has {market.n_symbols} symbols")
            self._sim = market
        self._at = at
        self._base = Snapshot(at, sim, self.screen.state())
        left = given
        while left > 0:
            raw = self._source(max(left, 4096))
            if len(raw) == 0:
                break
            kept = self.screen(raw)
            drop = min(left, len(kept))
            left -= drop
            self._pending = kept[drop:]
        if left:
            raise ValueError(f"the data ends {left} ticks before the position")
        self._given = given
        self.emitted = int(saved["emitted"]) if same_run else 0
        self.clock_ns = clock
        self.resumed = {"mode": "exact", "at": at, "given": given, "clock_ns": clock}
        print(f"feed: resumed where this state's feed stopped ({self.kind}: {at} + {given} ticks in, market "
              f"time {_utc(clock)})", flush=True)  # fmt: skip

    def _after(self, clock: int, saved: Mapping[str, Any] | None, why: str) -> None:
        """Resume after market time `clock` on other data: never a tick at or before it."""
        self.clock_ns = clock
        self.screen, self._pending, self._at = TimeScreen(), self._pending[:0], 0
        skipped = 0
        if self._data is not None:
            skipped = int(np.searchsorted(self._data["ts_ns"], clock, side="right"))
            self._at = skipped
            what = f"skipped the {skipped} ticks of the data files at or before it"
        else:
            f = self.config.feed
            start = max(clock, self.start_ns if self.start_ns is not None else DEFAULT_START_NS)
            mixed = hashlib.blake2b(f"{f.seed}:{start}".encode(), digest_size=8).digest()
            seed = int.from_bytes(mixed, "little")
            self._sim = self._new_sim(start, seed)  # a seed of its own: not the first days again
            prices = _sim_prices(saved, f.symbols)
            if prices is not None:
                self._sim.set_mids(prices)
            what = f"the sim starts there{' from the last prices' if prices is not None else ''}"
        self._base, self._given = self._snapshot(), 0
        self.resumed = {"mode": "after", "clock_ns": clock, "skipped": skipped}
        print(f"feed: {why}other data than this state's last feed: resumed after its market time "
              f"{_utc(clock)}; {what}", flush=True)  # fmt: skip


def _sim_prices(saved: Mapping[str, Any] | None, n: int) -> np.ndarray | None:
    """The sim's mid prices at a sim mark, for the first n symbols (0: none known), or None
    for a mark that is not a sim's or cannot be read."""
    if saved is None or saved.get("kind") != "sim" or not isinstance(saved.get("sim"), str):
        return None
    try:
        market = SimMarket.from_state(base64.b64decode(saved["sim"]))
        screen = TimeScreen()
        screen.load(saved["screen"])
        mids, left = market.mids(), int(saved["given"])
        while left > 0:  # the ticks given since the snapshot: each symbol's last is its price
            kept = screen(market.next(max(left, 4096)))[:left][::-1]  # newest first
            left -= len(kept)
            symbols, newest = np.unique(kept["symbol"], return_index=True)
            mids[symbols] = kept["last"][newest]
    except (KeyError, TypeError, ValueError):
        return None
    out = np.zeros(n)
    k = min(n, len(mids))
    out[:k] = mids[:k]
    return out


def _utc(ns: int) -> str:
    return str(np.datetime64(ns, "ns"))[:19] + "Z"
