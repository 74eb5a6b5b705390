"""MT5Broker: the engine's side of the MetaTrader 5 bridge, a `Broker` over the bridge file.

No call blocks: `submit` queues, `poll` does one turn (heartbeat, read every ring, move
each order on) and returns what became final and the deals seen. Identity is magic +
our client order id in the comment, never MT5's request_id. Return codes follow MT5.md's
policy (base.classify); an ambiguous answer, a missing one, or a lost transport is
resolved by looking the client id up at the terminal (LOOKUP, after the deal stream)
before anything is resent; requests carry an expiry, so one stuck in a dead ring is never
executed late. At every (re)connect: the deals since the last one seen are replayed
(HISTORY) and the positions listed, before any order is sent or resent.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import numpy as np

from sovereign.broker.base import (
    AccountInfo,
    Act,
    BrokerPosition,
    Deal,
    OrderRequest,
    Outcome,
    classify,
    retcode_name,
)
from sovereign.broker.bridge import Bridge, BridgeError, lib, text
from sovereign.core import TICK_DTYPE
from sovereign.ledger import to_decimal
from sovereign.symbols import SymbolSpec

MARKET, EXCHANGE = 2, 3  # SYMBOL_TRADE_EXECUTION
# The deal tickets remembered to skip a replay (a reconnect's HISTORY, a deal the ring and the
# history both carry); a ticket at or below the newest one forgotten counts as seen. The
# broker keeps no other deal once it is reported: a 12-year run holds a bounded set.
SEEN_DEALS = 4096
FOK, IOC, RETURN = 0, 1, 2  # ORDER_FILLING
POSITION_CLOSED = 10036
LOT_EPSILON = Decimal("1e-9")  # volumes the terminal sums as floats: less than this is nothing
# An order the terminal accepted (DONE or PLACED) without saying the volume is looked up this
# many times, settle_s apart, for its deals; it is never resent.
ACCEPTED_LOOKUPS = 20
HEDGING = 2  # ACCOUNT_MARGIN_MODE
# A list during which deals kept coming is asked for again at most this often in a row, then
# taken as it is (a close it got wrong is refused 10036 and repairs it): reduce-only orders
# wait for it, and a flatten must not wait for a quiet account.
MAX_RELISTS = 5
INOUT = 2  # DEAL_ENTRY: a netting reversal


@dataclass
class MT5Settings:
    bridge_path: str
    magic: int
    symbols: Sequence[str]  # our names; the index is our symbol id
    symbol_map: dict[str, str] = field(default_factory=dict)  # ours -> the terminal's, where they differ
    deviation: int = 10
    max_reprice: int = 3
    max_backoff: int = 3
    backoff_s: float = 0.2
    max_resend: int = 1  # resends after a look-up found nothing (twice, settle_s apart)
    result_timeout_s: float = 5.0
    settle_s: float = 0.5
    heartbeat_timeout_ms: int = 3000
    request_ttl_ms: int = 10_000
    owner_uid: int = -1


def filling_for(spec: np.void) -> int | None:
    """MetaQuotes' CTrade::FillingCheck: the ORDER_FILLING for a market order, or None
    (10030). SYMBOL_FILLING_MODE is a mask with other numbers (FOK=1, IOC=2)."""
    mask, mode = int(spec["filling_mode"]), int(spec["execution_mode"])
    if mode not in (MARKET, EXCHANGE):
        return -1  # request or instant execution: the terminal sets it
    if mask & 1:
        return FOK
    if mask & 2:
        return IOC
    return RETURN if mode == EXCHANGE else None


@dataclass
class _Order:
    req: OrderRequest
    recovering: bool = False  # a crash left it in SUBMITTING: resolved, never resent
    state: str = "queued"  # queued, wait (a result), lookup, hold (until `at`), done
    rid: int = 0
    at: float = 0.0
    reprices: int = 0
    backoffs: int = 0
    resends: int = 0
    nones: int = 0
    last_retcode: int = 0
    tickets: list[int] = field(default_factory=list)  # its deals seen, in order
    # A reduce-only order closes by position ticket, one request (a leg) per position: a
    # hedging account can hold several on one symbol. What its legs executed so far:
    filled: Decimal = Decimal(0)
    cost: Decimal = Decimal(0)  # volume x price
    leg_deals: list[int] = field(default_factory=list)
    position: int = 0  # the position the leg in flight closes
    leg_volume: Decimal = Decimal(0)  # what the leg in flight asked for
    closed: set[int] = field(default_factory=set)  # positions its legs closed (their deals may come later)
    accepted: bool = False  # the terminal took the leg without saying its volume: looked up, never resent


class MT5Broker:
    def __init__(self, settings: MT5Settings, state: dict[str, Any] | None = None):
        self.s = settings
        self.L = lib()
        self.ids = {settings.symbol_map.get(n, n): i for i, n in enumerate(settings.symbols)}
        self.last_deal = int((state or {}).get("last_deal", 0))
        self.bridge: Bridge | None = None
        self.why_down = "not connected yet"
        self.specs: dict[str, np.void] = {}
        self.account: np.void | None = None
        self.orders: dict[int, _Order] = {}
        # Deals are reported once (poll) and then forgotten: `seen` (the newest SEEN_DEALS
        # tickets, in arrival order) and `seen_floor` (the newest ticket dropped from it) are
        # what skips a replay; last_deal is where the next reconciliation starts.
        self.seen: dict[int, None] = {}
        self.seen_floor = 0
        self.positions: list[BrokerPosition] = []
        # The terminal's positions per terminal symbol, {ticket: signed volume}, from the last
        # position list and every deal since (a deal names its position): one per symbol on a
        # netting account, any number on a hedging one. Reduce-only orders close by ticket.
        self.held: dict[str, dict[int, Decimal]] = {}
        self.connects = 0  # reconciliations completed: a new one means the venue's book is fresh
        # The newest deal the last reconciliation's position list holds: the last deal seen before
        # it, raised by its history's replays, but not by a live deal read meanwhile (one that
        # came after the list, whose report risk applies on top of the venue's book).
        self.book_ticket = 0
        self.reconciling: set[int] = set()  # request ids of HISTORY / POSITIONS still answering
        # HISTORY + POSITIONS for a deal a look-up found that the deal stream never brought (its
        # notice lost with the connection): the deal is reported when the list comes, and the
        # positions then held are listed again (netting closes go by them).
        self.fetching: dict[int, int] = {}  # request id -> the ticket its history starts after
        self._lists: dict[int, list[BrokerPosition]] = {}  # a POSITIONS request's rows so far
        # Deals applied while a POSITIONS request is out: a list that may predate one of them
        # does not replace `held` (it would bring back a position a deal closed); another is asked.
        self._list_deals: dict[int, int] = {}
        self._relists = 0  # lists asked again in a row; past MAX_RELISTS the next one is taken
        self._outcomes: list[Outcome] = []
        self._new_deals: list[Deal] = []
        self._ticks: deque[np.ndarray] = deque()
        self.dropped_ticks = 0
        self._rid = time.time_ns() // 1_000_000 << 20  # unique across restarts without being stored
        self.epoch = 0
        # The terminal sends the symbols' specs once, when it creates the file: a successor of
        # a gateway that died keeps the specs its predecessor read from the same file (same
        # epoch), or it would refuse every order until the terminal restarted.
        saved = (state or {}).get("specs") or {}
        self._saved_epoch = int(saved.get("epoch", 0))
        self._saved_specs = {name: bytes.fromhex(raw) for name, raw in (saved.get("by_name") or {}).items()}
        self.specs_read = 0  # spec records read: the gateway commits to_dict in the turn that reads one

    # ---- the interface

    def to_dict(self) -> dict[str, Any]:
        specs = {name: sp.tobytes().hex() for name, sp in self.specs.items()}
        return {"last_deal": self.last_deal, "specs": {"epoch": self.epoch, "by_name": specs}}

    def connected(self) -> tuple[bool, str]:
        if self.bridge is None:
            return False, self.why_down
        if self.account is not None and not (self.account["connected"] and self.account["trade_allowed"]):
            return False, "the terminal is not connected to its server, or AutoTrading is off"
        return True, ""

    def submit(self, orders: Sequence[OrderRequest]) -> None:
        for o in orders:
            if o.client_order_id in self.orders:
                continue  # the same id twice is the same order
            self.orders[o.client_order_id] = _Order(o)

    def resolve(self, client_order_ids: Sequence[int],
                requests: dict[int, OrderRequest] | None = None) -> None:  # fmt: skip
        """`requests`: the orders as the book holds them (symbol, side, volume), so that what
        the terminal executed of one is told FILLED or PARTIALLY_FILLED in whole lots."""
        for cid in client_order_ids:
            if cid not in self.orders:
                req = (requests or {}).get(cid) or OrderRequest(cid, -1, 0, Decimal(0))
                self.orders[cid] = _Order(req, recovering=True, state="lookup")

    def poll(self) -> tuple[list[Outcome], list[Deal]]:
        self._turn()
        out, deals = self._outcomes, self._new_deals
        self._outcomes, self._new_deals = [], []
        return out, deals

    def ticks(self) -> np.ndarray:
        """The terminal's ticks since the last call, as TICK_DTYPE with our symbol ids."""
        parts = list(self._ticks)
        self._ticks.clear()
        return np.concatenate(parts) if parts else np.zeros(0, TICK_DTYPE)

    def open_positions(self) -> list[BrokerPosition]:
        return list(self.positions)

    def deals_since(self, ticket: int) -> list[Deal]:
        """The deals seen but not yet taken by `poll`, above `ticket` (what was reported is
        not kept: the venue's own history answers for it, from last_deal on)."""
        return sorted((d for d in self._new_deals if d.ticket > ticket), key=lambda d: d.ticket)

    def account_info(self) -> AccountInfo | None:
        a = self.account
        if a is None:
            return None
        return AccountInfo(
            to_decimal(a["balance"]),
            to_decimal(a["equity"]),
            to_decimal(a["margin"]),
            text(a["currency"]),
            int(a["margin_mode"]),
            bool(a["trade_allowed"]),
        )

    def symbol_specs(self) -> dict[int, SymbolSpec]:
        out = {}
        for name, sp in self.specs.items():
            if name in self.ids and sp["exists"]:
                out[self.ids[name]] = SymbolSpec(
                    contract_size=to_decimal(sp["contract_size"]),
                    lot_step=to_decimal(sp["volume_step"]),
                    min_lot=to_decimal(sp["volume_min"]),
                    max_lot=to_decimal(sp["volume_max"]),
                    point=to_decimal(sp["point"]),
                    stops_level=int(sp["stops_level"]),
                )
        return out

    def close(self) -> None:
        if self.bridge is not None:
            self.bridge.close()
            self.bridge = None

    # ---- one turn

    def _turn(self) -> None:
        if self.bridge is None and not self._connect():
            self._refuse_queued()
            return
        b = self.bridge
        assert b is not None
        try:
            b.beat()
            if b.recreated():
                return self._lost("the terminal recreated the bridge file (a terminal restart)")
            rc, _, why = b.peer(self.s.heartbeat_timeout_ms)
            if rc != self.L.SB_OK:
                return self._lost(why)
            self._read(b)
            if not self.reconciling:
                self._advance(b)
        except BridgeError as e:
            if e.code == self.L.SB_E_CORRUPT:  # reported, skipped, counted: the look-ups recover its content
                self.why_down = f"skipped a bad record: {e.message}"
                for ring in range(self.L.SB_N_RINGS - 1):
                    if b.pending(ring):
                        try:
                            b.poll(ring, 1)
                        except BridgeError:
                            b.skip(ring)
                            break
                return None
            self._lost(e.message)
        return None

    def _connect(self) -> bool:
        try:
            self.bridge = Bridge.engine(self.s.bridge_path, self.s.owner_uid)
        except BridgeError as e:
            self.why_down = e.message
            return False
        self.epoch = self.bridge.hello()[1]
        self.why_down = ""
        self.bridge.beat()
        self.specs.clear()
        if self.epoch == self._saved_epoch:  # the file our predecessor read them from
            dtype = self.bridge.dtypes[self.L.SB_RING_SPECS]
            for name, raw in self._saved_specs.items():
                if len(raw) == dtype.itemsize:
                    self.specs[name] = np.frombuffer(raw, dtype)[0].copy()
        self._saved_specs, self._saved_epoch = {}, 0
        # Reconcile before anything is sent: the deals since the last one seen, the positions.
        # An order that was waiting for an answer is looked up again afterwards.
        for o in self.orders.values():
            if o.state in ("wait", "hold"):
                o.state = "lookup"
        since = min([self.last_deal, *self.fetching.values()])  # a fetch the old file never answered
        self.fetching, self._lists, self._list_deals = {}, {}, {}
        self.book_ticket = self.last_deal
        self.reconciling = {
            self._request(self.L.SB_ACTION_HISTORY, since=since),
            self._request(self.L.SB_ACTION_POSITIONS),
        }
        return True

    def _lost(self, why: str) -> None:
        self.why_down = why
        if self.bridge is not None:
            self.bridge.close()
        self.bridge = None
        self.account = None
        for o in self.orders.values():  # whatever was at the terminal is looked up at the reconnect
            if o.state in ("wait", "hold"):
                o.state = "lookup"

    def _refuse_queued(self) -> None:
        for cid, o in list(self.orders.items()):
            if o.state == "queued":
                self._reject(cid, o, 10031, f"not sent: the bridge is down ({self.why_down})")

    # ---- reading

    def _read(self, b: Bridge) -> None:
        L = self.L
        for sp in b.poll(L.SB_RING_SPECS):
            self.specs[text(sp["symbol"])] = sp
            self.specs_read += 1
        acc = b.poll(L.SB_RING_ACCOUNT)
        if len(acc):
            self.account = acc[-1]
        self._read_ticks(b)
        for d in b.poll(L.SB_RING_DEALS):
            self._on_deal(d)
        for p in b.poll(L.SB_RING_POSITIONS):
            if int(p["snapshot"]) in self.reconciling or int(p["snapshot"]) in self.fetching:
                self._lists.setdefault(int(p["snapshot"]), []).append(self._position(p))
        for r in b.poll(L.SB_RING_RESULTS):
            self._on_result(r)

    def _read_ticks(self, b: Bridge) -> None:
        raw = b.poll(self.L.SB_RING_TICKS, 65536)
        if not len(raw):
            return
        ids = np.array([self.ids.get(text(s), -1) for s in raw["symbol"]], np.int64)
        keep = ids >= 0
        self.dropped_ticks += int((~keep).sum())
        t = np.zeros(int(keep.sum()), TICK_DTYPE)
        for f in ("bid", "ask", "last", "volume", "flags"):
            t[f] = raw[f][keep]
        t["ts_ns"] = raw["time_msc"][keep] * 1_000_000
        t["symbol"] = ids[keep]
        t["recv_ns"] = time.monotonic_ns()
        self._ticks.append(t)

    def _position(self, p: np.void) -> BrokerPosition:
        return BrokerPosition(
            int(p["ticket"]),
            self.ids.get(text(p["symbol"]), -1),
            1 if p["type"] == 0 else -1,
            to_decimal(p["volume"]),
            to_decimal(p["price_open"]),
            float(p["sl"]),
            float(p["tp"]),
            int(p["magic"]),
        )

    def _on_deal(self, d: np.void) -> None:
        ticket = int(d["ticket"])
        if self.reconciling and int(d["replay"]):
            self.book_ticket = max(self.book_ticket, ticket)
        if ticket in self.seen or ticket <= self.seen_floor:
            return  # replayed after a reconnect: applied once
        comment = text(d["comment"])
        ours = int(d["magic"]) == self.s.magic and comment.isdigit()
        deal = Deal(
            ticket,
            int(d["order"]),
            int(d["position"]),
            self.ids.get(text(d["symbol"]), -1),
            1 if d["type"] == 0 else -1,
            int(d["entry"]),
            to_decimal(d["volume"]),
            to_decimal(d["price"]),
            to_decimal(d["commission"]),
            to_decimal(d["profit"]),
            int(d["magic"]),
            int(comment) if ours else 0,
            int(d["reason"]),
            int(d["time_msc"]),
        )
        self.seen[ticket] = None
        if len(self.seen) > SEEN_DEALS:
            oldest = next(iter(self.seen))
            del self.seen[oldest]
            self.seen_floor = max(self.seen_floor, oldest)
        self.last_deal = max(self.last_deal, ticket)
        if ours and (o := self.orders.get(deal.client_order_id)) is not None:
            o.tickets.append(ticket)
        self._new_deals.append(deal)
        for rid in self._list_deals:
            self._list_deals[rid] += 1
        if deal.side * deal.volume and deal.position:
            self._hold(text(d["symbol"]), deal)

    def _hold(self, name: str, deal: Deal) -> None:
        """Apply a deal to `held`. A deal names its position by identifier (DEAL_POSITION_ID),
        a close by ticket (POSITION_TICKET). The two are one number but for a netting
        reversal, after which the position's ticket is the reversing order's: a netting
        account's one position per symbol is kept under the ticket a close must name."""
        book = self.held.setdefault(name, {})
        delta = deal.side * deal.volume
        hedging = self.account is None or int(self.account["margin_mode"]) == HEDGING
        if hedging:
            key = deal.position
            v = book.get(key, Decimal(0)) + delta
        else:
            (key, v), *_ = book.items() if book else [(deal.position, Decimal(0))]
            book.clear()
            v = v + delta
            if deal.entry == INOUT:
                key = deal.order
        if v:
            book[key] = v
        else:
            book.pop(key, None)
        if not book:
            del self.held[name]

    def _refresh_positions(self) -> None:
        """Ask the terminal for its positions again (`held` follows the list)."""
        rid = self._request(self.L.SB_ACTION_POSITIONS)
        if rid:
            self.fetching[rid] = self.last_deal

    def terminal_name(self, symbol: int) -> str:
        """The terminal's name of our symbol id."""
        if 0 <= symbol < len(self.s.symbols):
            return self.s.symbol_map.get(self.s.symbols[symbol], self.s.symbols[symbol])
        return f"#{symbol}"

    def _on_result(self, r: np.void) -> None:
        L, rid, code = self.L, int(r["request_id"]), int(r["retcode"])
        if rid in self.reconciling or rid in self.fetching:
            if code == L.SB_LIST_DONE:
                # The list went out before its end mark: whatever of it this turn's read left
                # in its ring is there now (one ring per record kind, no order across rings).
                assert self.bridge is not None
                if int(r["action"]) == L.SB_ACTION_HISTORY:
                    while len(batch := self.bridge.poll(L.SB_RING_DEALS)):
                        for d in batch:
                            self._on_deal(d)
                else:
                    while len(batch := self.bridge.poll(L.SB_RING_POSITIONS)):
                        for p in batch:
                            if int(p["snapshot"]) in self.reconciling or int(p["snapshot"]) in self.fetching:
                                self._lists.setdefault(int(p["snapshot"]), []).append(self._position(p))
                fetched = self.fetching.pop(rid, None) is not None
                self.reconciling.discard(rid)
                if int(r["action"]) == L.SB_ACTION_POSITIONS:
                    self.positions = self._lists.pop(rid, [])
                    if self._list_deals.pop(rid, 0) and self._relists < MAX_RELISTS:
                        self._relists += 1
                        self._refresh_positions()
                    else:
                        self._relists = 0
                        self.held = {}
                        for p in self.positions:
                            book = self.held.setdefault(self.terminal_name(p.symbol), {})
                            book[p.ticket] = book.get(p.ticket, Decimal(0)) + p.side * p.volume
                if not self.reconciling and not fetched:
                    self.connects += 1
            return
        cid = int(r["client_order_id"])
        o = self.orders.get(cid)
        if o is None or o.rid != rid or o.state != "wait":
            return  # an answer to an earlier session's or an abandoned request
        if int(r["action"]) == L.SB_ACTION_LOOKUP:
            return self._on_lookup(cid, o, r)
        o.last_retcode = code
        act = classify(code)
        vol, price = to_decimal(r["volume"]), to_decimal(r["price"])
        why = f"{retcode_name(code)}: {text(r['comment'])}"
        if act == Act.DONE and vol <= 0:  # taken (PLACED, or DONE without a volume): its deals say what
            o.accepted, o.nones, o.state = True, 0, "lookup"
            return None
        if act == Act.DONE:
            return self._leg_done(cid, o, code, vol, price, int(r["deal"]))
        if act == Act.PARTIAL:  # the venue canceled the rest: no further leg
            return self._leg_done(cid, o, code, vol, price, int(r["deal"]), why, last=True)
        if act == Act.REPRICE and o.reprices < self.s.max_reprice:
            o.reprices += 1
            o.state = "queued"
            return None
        if act == Act.BACKOFF and o.backoffs < self.s.max_backoff:
            o.backoffs += 1
            o.state, o.at = "hold", time.monotonic() + self.s.backoff_s * 2**o.backoffs
            return None
        if act == Act.AMBIGUOUS:
            o.state = "lookup"
            return None
        if code == POSITION_CLOSED and o.req.reduce_only and o.position:
            # The position is gone (a stop closed it, or our book of them is behind): forget it,
            # ask for the terminal's list, and close the next one, if any. Not after a resend:
            # then this leg itself may have closed it (its first answer lost), and the order
            # ends with what is known.
            self.held.get(self.terminal_name(o.req.symbol), {}).pop(o.position, None)
            o.closed.add(o.position)
            self._refresh_positions()
            if not o.resends and o.filled < o.req.volume and self._to_close(o) is not None:
                o.state = "queued"
                return None
        return self._reject(cid, o, code, why)

    def _on_lookup(self, cid: int, o: _Order, r: np.void) -> None:
        L, code = self.L, int(r["retcode"])
        vol, price = to_decimal(r["volume"]), to_decimal(r["price"])
        if code == L.SB_LOOKUP_FOUND and not o.recovering and o.filled and vol - o.filled < LOT_EPSILON:
            code = L.SB_LOOKUP_NONE  # only the earlier legs' deals: the leg in question did not execute
        if code == L.SB_LOOKUP_FOUND:
            ticket = int(r["deal"])
            if ticket and ticket not in self.seen and ticket > self.seen_floor:
                # Executed, but its deal never came (the notice was lost with the connection, or
                # with the terminal): ask for the history from before it, or risk would never
                # apply it (and take the position's close for a new one).
                since = min(self.last_deal, ticket - 1)
                rid = self._request(L.SB_ACTION_HISTORY, since=since)
                if not rid:
                    o.state = "lookup"  # the request ring is full: look it up again next turn
                    return None
                self.fetching[rid] = since
                listing = self._request(L.SB_ACTION_POSITIONS)
                if listing:
                    self.fetching[listing] = since
            if o.recovering:  # everything its legs executed before the crash, in one answer
                vol = self._lots(o, vol)
                tickets = tuple(sorted({*o.tickets, ticket} - {0}))
                short = o.req.volume > 0 and vol < o.req.volume - LOT_EPSILON
                state = "PARTIALLY_FILLED" if short else "FILLED"
                return self._final(cid, o, state, 10009, vol, price, tickets, "found at the terminal")
            leg = self._lots(o, vol - o.filled)  # the terminal sums this id's deals: less the earlier legs'
            leg_price = (price * vol - o.cost) / leg if leg else price
            short = leg < o.leg_volume - LOT_EPSILON  # partly filled, the rest canceled: no further leg
            return self._leg_done(cid, o, 10009, leg, leg_price, ticket, "found at the terminal", last=short)
        if o.accepted:  # taken by the terminal: its deals will show; never resent
            o.nones += 1
            if o.nones < ACCEPTED_LOOKUPS:
                o.state, o.at = "hold_lookup", time.monotonic() + self.s.settle_s
                return None
            why = f"accepted by the terminal, no deal of it found in {ACCEPTED_LOOKUPS} look-ups: not resent"
            return self._reject(cid, o, o.last_retcode, why)
        if code == L.SB_LOOKUP_PENDING or (code == L.SB_LOOKUP_NONE and o.nones == 0):
            o.nones += code == L.SB_LOOKUP_NONE
            o.state, o.at = "hold_lookup", time.monotonic() + self.s.settle_s  # look again once it settled
            return None
        if o.recovering:
            return self._reject(cid, o, o.last_retcode, "not executed: not found at the terminal")
        if o.resends < self.s.max_resend:
            o.resends += 1
            o.nones = 0
            o.state = "queued"
            return None
        return self._reject(cid, o, o.last_retcode, "not executed (looked up), no resends left")

    def _leg_done(self, cid: int, o: _Order, code: int, vol: Decimal, price: Decimal, deal: int,
                  why: str = "", last: bool = False) -> None:  # fmt: skip
        """A request of the order executed `vol`: a reduce-only order goes on to the next
        position (oldest first) until its volume is closed; any other order is final."""
        o.filled += vol
        o.cost += vol * price
        if deal:
            o.leg_deals.append(deal)
        if o.position:
            o.closed.add(o.position)
        if not last and o.req.reduce_only and o.filled < o.req.volume and self._to_close(o) is not None:
            o.state, o.reprices, o.backoffs, o.resends, o.nones = "queued", 0, 0, 0, 0
            o.last_retcode, o.accepted = 0, False
            return None
        return self._filled(cid, o, code, why, price)

    def _reject(self, cid: int, o: _Order, code: int, why: str) -> None:
        """The order goes no further: rejected, or partly filled where earlier legs executed."""
        if not o.filled:
            return self._final(cid, o, "REJECTED", code, why=why)
        return self._filled(cid, o, code, why)

    def _filled(self, cid: int, o: _Order, code: int, why: str, price: Decimal = Decimal(0)) -> None:
        """Final with what its legs executed: FILLED, or PARTIALLY_FILLED when short (`price`:
        the answer's, where nothing was filled)."""
        state = "FILLED" if o.filled >= o.req.volume else "PARTIALLY_FILLED"
        deals = tuple(sorted(set(o.tickets) | set(o.leg_deals)))
        vwap = o.cost / o.filled if o.filled else price
        return self._final(cid, o, state, code, o.filled, vwap, deals, why)

    def _to_close(self, o: _Order) -> tuple[int, Decimal] | None:
        """The position a reduce-only order's next leg closes: the oldest (lowest ticket) held
        against the order's side that none of its legs closed yet (FIFO, which brokers under
        FIFO rules, retcode 10045, demand), and its volume."""
        book = self.held.get(self.terminal_name(o.req.symbol), {})
        for ticket in sorted(book):
            if book[ticket] * o.req.side < 0 and ticket not in o.closed:
                return ticket, abs(book[ticket])
        return None

    def _lots(self, o: _Order, v: Decimal) -> Decimal:
        """`v` in whole volume steps of the order's symbol (the terminal sums floats)."""
        spec = self.specs.get(self.terminal_name(o.req.symbol))
        step = to_decimal(spec["volume_step"]) if spec is not None else Decimal(0)
        if step <= 0:
            return v
        return (v / step).to_integral_value() * step

    # ---- sending

    def _advance(self, b: Bridge) -> None:
        now = time.monotonic()
        for cid, o in list(self.orders.items()):
            if o.state == "hold" and now >= o.at:
                o.state = "queued"
            elif o.state == "hold_lookup" and now >= o.at:
                o.state = "lookup"
            elif o.state == "wait" and now - o.at > self.s.result_timeout_s:
                o.state = "lookup"  # no answer: may have executed
            if o.state == "queued" and not (o.req.reduce_only and self.fetching):
                # (a reduce-only order waits for a list being fetched: it picks positions by it)
                self._send_order(cid, o)
            elif o.state == "lookup":
                o.rid = self._request(self.L.SB_ACTION_LOOKUP, cid=cid)
                if o.rid:
                    o.state, o.at = "wait", now

    def _send_order(self, cid: int, o: _Order) -> None:
        r = o.req
        name = self.terminal_name(r.symbol)
        spec = self.specs.get(name)
        if spec is None or not spec["exists"]:
            return self._reject(cid, o, 10013, f"the terminal has no symbol {name}")
        filling = filling_for(spec)
        if filling is None:
            return self._reject(cid, o, 10030, f"{name}: no filling mode fits its mask")
        volume, position = r.volume, 0
        if r.reduce_only:  # closes by a position's ticket, never more than it holds
            pick = self._to_close(o)
            if pick is None:
                return self._reject(cid, o, POSITION_CLOSED, f"{name}: no position to reduce")
            position, held = pick
            volume = min(volume - o.filled, held)
        o.position, o.leg_volume = position, volume
        o.rid = self._request(
            self.L.SB_ACTION_DEAL,
            cid=cid,
            symbol=name,
            side=r.side,
            volume=float(volume),
            sl=r.sl or 0.0,
            tp=r.tp or 0.0,
            filling=filling,
            position=position,
        )
        if o.rid:
            o.state, o.at = "wait", time.monotonic()
        return None

    def _request(
        self,
        action: int,
        cid: int = 0,
        since: int = 0,
        symbol: str = "",
        side: int = 1,
        volume: float = 0.0,
        sl: float = 0.0,
        tp: float = 0.0,
        filling: int = -1,
        position: int = 0,
    ) -> int:
        """Send one request; its id, or 0 when the ring is full (tried again next turn)."""
        b = self.bridge
        assert b is not None
        self._rid += 1
        q = np.zeros(1, b.dtypes[self.L.SB_RING_REQUESTS])[0]
        q["request_id"], q["client_order_id"], q["magic"], q["action"] = self._rid, cid, self.s.magic, action
        q["since"], q["symbol"], q["comment"] = since, symbol.encode(), (str(cid) if cid else "").encode()
        q["type"], q["volume"], q["sl"], q["tp"] = 0 if side > 0 else 1, volume, sl, tp
        q["deviation"], q["filling"], q["position"] = self.s.deviation, filling, position
        if action == self.L.SB_ACTION_DEAL:
            q["expire_msc"] = time.time_ns() // 1_000_000 + self.s.request_ttl_ms
        if not b.request(q):
            return 0
        if action == self.L.SB_ACTION_POSITIONS:
            self._list_deals[self._rid] = 0
        return self._rid

    def _final(
        self,
        cid: int,
        o: _Order,
        state: str,
        retcode: int,
        volume: Decimal = Decimal(0),
        price: Decimal = Decimal(0),
        deals: tuple[int, ...] = (),
        why: str = "",
    ) -> None:
        o.state = "done"
        del self.orders[cid]
        self._outcomes.append(
            Outcome(cid, o.req.symbol, o.req.side, state, retcode, volume, price, deals, why)
        )
