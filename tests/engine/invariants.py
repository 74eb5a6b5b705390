"""The risk invariants of issue 19, checked on what a whole-system run left in LMDB: every
deal the paper broker made (its orders' executions and its own stop and target exits),
replayed in ticket order."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

from sovereign.ledger import same_book
from sovereign.model import REDUCE_ONLY, Reason
from sovereign.state.schema import key_u64
from sovereign.state.store import StateStore, Txn

REDUCE_ONLY_NAMES = {r.name for r in REDUCE_ONLY}


def check_system_invariants(state: Path, max_open_positions: int = 20) -> None:
    """Risk's book is the broker's; no reduce-only order opened or grew a position; the
    open positions never outnumbered the limit."""
    with StateStore(state, readonly=True) as st:
        book, broker = st.read(lambda t: (t.get("positions", "book"), t.get("bridge", "paper")))
        orders = st.read(lambda t: {int(v["client_order_id"]): v for _, v in t.items("orders")})
        deals = st.read(lambda t: [v for k, v in t.items("bridge") if bytes(k)[:5] in (b"deal:", b"exec:")])
    assert same_book(book, broker["ledger"]), (book, broker["ledger"])
    done = sorted((d for d in deals if d["retcode"] == 10009 and d["ticket"]), key=lambda d: d["ticket"])
    held: dict[int, Decimal] = {}
    for d in done:
        before = held.get(d["symbol"], Decimal(0))
        after = before + d["side"] * Decimal(d["volume"])
        order = orders.get(int(d["client_order_id"])) if d["client_order_id"] else None
        if (order is not None and order.get("reason") in REDUCE_ONLY_NAMES) or d["reason"] in ("sl", "tp"):
            why = (order and order.get("reason")) or d["reason"]
            assert before != 0 and abs(after) < abs(before) and (after == 0 or (after > 0) == (before > 0)), (
                f"deal {d['ticket']} ({why}) took symbol {d['symbol']} from {before} to {after}")
        held[d["symbol"]] = after
        assert sum(v != 0 for v in held.values()) <= max_open_positions, d
    final = {int(s): sum((Decimal(v) for v, _ in p["lots"]), Decimal(0))
             for s, p in broker["ledger"]["positions"].items()}  # fmt: skip
    assert {s: v for s, v in held.items() if v} == {s: v for s, v in final.items() if v}
    assert Reason.CLOSE in REDUCE_ONLY


def system_violations(state: Path, max_open_positions: int = 20) -> list[str]:
    """Issue 22's invariants on a stopped system's raw state, each broken one said in a
    line (empty: none is broken): no order left in flight (SUBMITTING, APPROVED); every deal
    ticket once, and every ticket the broker handed out recorded; no order executed twice;
    risk's book the broker's, symbol by symbol; the deals adding up to the broker's positions
    and balance, no reduce-only deal opening or growing a position, never more positions open
    than the limit; the journal without gaps.

    History that the retention moved to the archive counts with what LMDB holds (a record
    in both, as a cut-short archiving run leaves it, once); the archive must verify."""
    with StateStore(state, readonly=True) as st:
        book, broker, risk_state, config = st.read(lambda t: (
            t.get("positions", "book"), t.get("bridge", "paper"), t.get("risk", "state"),
            t.get("meta", "config")))  # fmt: skip
        h = st.read(lambda t: History.of(t, _archive_dir(state, config)))
    out = list(h.problems)
    for o in h.orders.values():
        if o["state"] in ("SUBMITTING", "APPROVED", "INTENT"):
            out.append(f"order {o['client_order_id']} left in {o['state']}")
    out += _journal_gaps(h)
    if broker is None:  # an outside venue's (MT5): its books are its own (tests/helpers.py: mt5_violations)
        outside = ((config or {}).get("broker") or {}).get("kind", "paper") != "paper"
        return out + (["risk has a book but the broker has none"] if book and not outside else [])
    done = [v for v in [*h.execs.values(), *h.deals.values()] if v["retcode"] == 10009 and v["ticket"]]
    tickets = Counter(int(d["ticket"]) for d in done)
    out += [f"deal ticket {t} recorded {n} times" for t, n in tickets.items() if n > 1]
    missing = sorted(set(range(1, int(broker["next_ticket"]))) - set(tickets))
    if missing:  # an execution overwritten (an order executed twice) or a deal never recorded
        out.append(f"{len(missing)} deal tickets the broker handed out are not recorded: {missing[:10]}")
    out += [f"order {cid} journaled FILLED {n} times" for cid, n in h.filled.items() if n > 1]
    for cid, o in h.orders.items():
        ex = h.execs.get(cid)
        if o["state"] == "FILLED" and (ex is None or int(ex["ticket"]) != int(o.get("ticket", -1))):
            out.append(f"order {cid} FILLED with ticket {o.get('ticket')}, its execution says "
                       f"{ex and ex['ticket']}")  # fmt: skip
    out += _book_differences(book, broker["ledger"])
    if risk_state is not None and int(risk_state.get("ticket", 0)) > int(broker["next_ticket"]) - 1:
        out.append(f"risk applied deal {risk_state['ticket']}, past the broker's newest "
                   f"{int(broker['next_ticket']) - 1}")
    out += _deals_add_up(done, h.orders, broker["ledger"], config, max_open_positions)
    return out


def _journal_gaps(h: History) -> list[str]:
    if h.journal_keys:
        first, last, n = h.journal_keys
        if n != last - first + 1 or first != 1:
            return [f"journal has gaps: {n} entries with keys {first}..{last}"]
    return []


def history(state: Path) -> History:
    """The whole history of a stopped system's state (LMDB and its archive)."""
    with StateStore(state, readonly=True) as st:
        config = st.read(lambda t: t.get("meta", "config"))
        return st.read(lambda t: History.of(t, _archive_dir(state, config)))


def _archive_dir(state: Path, config: dict | None) -> Path:
    configured = ((config or {}).get("retention") or {}).get("archive_dir")
    return Path(configured) if configured else state / "archive"


class History:
    """Orders, executions, deals and the journal, from LMDB and the archive merged (LMDB's
    copy of a record in both wins: it is the newer)."""

    def __init__(self) -> None:
        self.orders: dict[int, dict] = {}
        self.execs: dict[int, dict] = {}  # by client id
        self.deals: dict[int, dict] = {}  # the broker's own (stops, targets), by ticket
        self.journal: dict[int, dict] = {}  # seq -> event
        self.filled: Counter = Counter()  # client id -> times journaled FILLED
        self.journal_keys: tuple[int, int, int] | None = None  # first, last, count
        self.problems: list[str] = []

    @classmethod
    def of(cls, t: Txn, archive: Path) -> History:
        """Read inside the transaction t, begun before the archive is read: a record the
        archiver moves meanwhile is in t's snapshot, or in the manifest read after it."""
        h = cls()
        journal = h.journal
        found = {"orders": h.orders, "execs": h.execs, "deals": h.deals, "journal": journal}
        for series, key, record in _archived(archive, h.problems):
            found[series][key] = record
        for k, v in t.items("orders"):
            h.orders[key_u64(k)] = v
        for k, v in t.items("bridge"):
            if k[:5] == b"exec:":
                h.execs[key_u64(k[5:])] = v
            elif k[:5] == b"deal:":
                h.deals[key_u64(k[5:])] = v
        for k, v in t.items("journal"):
            journal[key_u64(k)] = v
        if journal:
            h.journal = journal = dict(sorted(journal.items()))
            h.journal_keys = (min(journal), max(journal), len(journal))
        for v in journal.values():
            if v.get("event") == "order" and v.get("state") == "FILLED":
                h.filled[int(v["client_order_id"])] += 1
        return h


def _archived(directory: Path, problems: list[str]) -> Iterator[tuple[str, int, dict]]:
    """(series, key, record) of every archived record; the archive verified first."""
    if not directory.exists():
        return
    try:
        from sovereign.state.archive import Archive  # the retention's archive (issue 22)
    except ImportError:
        problems.append(f"{directory} exists but this code cannot read an archive")
        return
    archive = Archive(directory)
    problems += [f"archive: {name}: {detail}" for name, verdict, detail in archive.verify()
                 if verdict == "fail"]  # fmt: skip
    for part in archive.load():
        for key, _, record in archive.read(part, check=False):
            yield part.series, key, record


def _volumes(ledger: dict) -> dict[int, Decimal]:
    return {int(s): sum((Decimal(v) for v, _ in p["lots"]), Decimal(0))
            for s, p in ledger["positions"].items()}  # fmt: skip


def _book_differences(book: dict | None, broker: dict) -> list[str]:
    """Risk's book against the broker's account, symbol by symbol."""
    if book is None:
        return [] if not broker["positions"] else ["risk has no book; the broker has positions"]
    if same_book(book, broker):
        return []
    out = []
    if Decimal(book["balance"]) != Decimal(broker["balance"]):
        out.append(f"balance: risk {book['balance']}, broker {broker['balance']}")
    mine, theirs = _volumes(book), _volumes(broker)
    for s in sorted(set(mine) | set(theirs)):
        if mine.get(s, 0) != theirs.get(s, 0):
            out.append(f"symbol {s}: risk holds {mine.get(s, 0)}, the broker {theirs.get(s, 0)}")
    return out or [f"risk's book differs from the broker's in lots or stops: {book} != {broker}"]


def _deals_add_up(done: list[dict], orders: dict[int, dict], ledger: dict, config: dict | None,
                  max_open_positions: int) -> list[str]:  # fmt: skip
    """The deals, in ticket order, make the broker's positions and its balance; none that is
    reduce-only (risk's exits and flatten orders, the broker's stops and targets) opens or
    grows a position; never more positions open than the limit (the first 20 such deals said:
    one lost deal makes every later one look wrong)."""
    held: dict[int, Decimal] = {}
    cash = Decimal(0)
    out: list[str] = []
    for d in sorted(done, key=lambda d: int(d["ticket"])):
        s = int(d["symbol"])
        before = held.get(s, Decimal(0))
        after = held[s] = before + int(d["side"]) * Decimal(d["volume"])
        cash += Decimal(d["realized_pnl"]) - Decimal(d["commission"])
        order = orders.get(int(d["client_order_id"])) if d["client_order_id"] else None
        why = order.get("reason") if order is not None else d["reason"]
        reduced = before != 0 and abs(after) < abs(before) and (after == 0 or (after > 0) == (before > 0))
        if (why in REDUCE_ONLY_NAMES or why in ("sl", "tp")) and not reduced and len(out) < 20:
            out.append(f"deal {d['ticket']} ({why}) took symbol {s} from {before} to {after}")
        if sum(v != 0 for v in held.values()) > max_open_positions and len(out) < 20:
            out.append(f"deal {d['ticket']}: more than {max_open_positions} positions open")
    final = _volumes(ledger)
    for s in sorted(set(held) | set(final)):
        if held.get(s, 0) != final.get(s, 0):
            out.append(f"symbol {s}: the deals add up to {held.get(s, 0)}, the broker holds "
                       f"{final.get(s, 0)}")
    if config is not None:
        initial = Decimal(repr(float(config["broker"]["initial_balance"])))
        if initial + cash != Decimal(ledger["balance"]):
            out.append(f"balance: {initial} + the deals' P&L and commissions = {initial + cash}, the broker "
                       f"has {ledger['balance']}")
    return out
