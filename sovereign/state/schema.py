"""Every LMDB database and every key, with who writes it and who reads it. A process
names a key only through this module, so a key cannot drift between its writer and its
readers. Values are orjson (`Txn.put`), keys are text or big-endian u64 (`u64_key`).
"""

from __future__ import annotations

import struct

DATABASES = (
    "orders",  # client id (u64) -> the order's record. Gateway and risk (refusals) write; CLI, replay read.
    # Final orders past the retention move to the archive (sovereign.state.archive), open ones never.
    "positions",  # BOOK_KEY. Risk writes; coordinator (start), CLI, ops checks read.
    "risk",  # RISK_STATE_KEY, DAY_OPENS_KEY. Risk writes; coordinator (start), CLI, ops checks read.
    "coordinator",  # NEXT_ID_KEY. Whoever reserves client ids (coordinator, risk) writes and reads.
    "bridge",  # the broker side: PAPER_BROKER_KEY or MT5_BROKER_KEY, LAST_REPORTS_KEY, exec_key, deal_key.
    # Gateway writes.
    # exec_key and deal_key records past the retention are archived; the rest is what a
    # restarted gateway and risk reconcile from (the account and the newest ticket), never archived.
    "snapshots",  # snapshot_key(k) -> worker k's AgentPool snapshot. Worker k writes and reads.
    "journal",  # seq (u64) -> an event. Every process appends; CLI, ops checks read. The oldest are
    # archived: the live keys run from META_JOURNAL_ARCHIVED + 1, with no gap.
    "signals",  # seq (u64) -> raw Signal records, the newest system.signal_history. Coordinator writes.
    "meta",  # META_*: the session's start. Supervisor writes; CLI, ops checks, replay read.
    # client id (u64) -> b"": the orders in an open state, written in the same transaction as
    # the order (OrderBook), so open orders are found without scanning every order ever made.
    "open_orders",
)

BOOK_KEY = "book"  # positions: risk's ledger (Ledger.to_dict), committed on every report
RISK_STATE_KEY = "state"  # risk: trading state, peak, day, in flight (Risk.to_dict)
# risk: each recent trading day's opening equity, {day: equity} (views.keep_day_open, with
# the day's `trading_day` journal entry); views.pnl reads it
DAY_OPENS_KEY = "day_opens"
PAPER_BROKER_KEY = "paper"  # bridge: the paper broker's account and ticket counter; risk reconciles from it
LAST_REPORTS_KEY = "last_reports"  # bridge: the reports of the gateway's newest commit, until pushed
# bridge: the feed's position as of the ticks the broker has been shown (gateway.FeedPosition),
# committed with PAPER_BROKER_KEY in one transaction; a restarted gateway resumes the feed after it.
FEED_KEY = "feed"
# bridge, broker.kind = "mt5": the MT5 broker's own state (the last deal applied, MT5Broker.to_dict),
# committed in the same transaction as the deals it covers, so each deal is applied once.
MT5_BROKER_KEY = "mt5"
# bridge: the venue's positions as of a (re)connect's reconciliation, as a Ledger book with the
# newest deal it holds ({"seq", "epoch", "ticket", "positions", "at_ns"}). Gateway writes; risk
# reconciles its book from it (each seq once) and journals the correction.
VENUE_BOOK_KEY = "venue_book"
# bridge: the trading specs the terminal sent for each of our symbols, by symbol index
# ({"epoch", "by_symbol": {index: {contract_size, lot_step, min_lot, max_lot, point, stops_level}}}),
# written by the gateway with MT5_BROKER_KEY when they change; risk sizes with them, not the config's.
VENUE_SPECS_KEY = "venue_specs"
# bridge: whether the terminal is connected, and why not ({"connected", "why", "since_ns", "epoch"}),
# written by the gateway when it changes; `sovereign status` and `doctor` read it.
BRIDGE_STATUS_KEY = "bridge_status"
NEXT_ID_KEY = "next_client_order_id"  # coordinator: the next client order id not yet reserved
META_SYMBOLS = "symbols"  # meta: the symbol names, by index
META_LAYOUT = "layout_version"  # meta: the record layout the state was written with
META_CONFIG = "config"  # meta: the config of the last start (no secret: see sovereign.credentials)
META_CONFIG_PATH = "config_path"  # meta: the file it came from
META_SUPERVISOR = "supervisor"  # meta: the supervisor's pid and start
META_OPEN_INDEX = "open_orders_index"  # meta: present once open_orders holds every open order (OrderBook)
# meta: the newest journal seq moved to the archive, written with the deletes (the archiver);
# the next journal entry is numbered after it even when every live entry is archived
META_JOURNAL_ARCHIVED = "journal_archived_through"
META_STATE_ID = "state_id"  # meta: a secret made once per state; names its shared memory (runtime.shm_prefix)


def u64_key(n: int) -> bytes:
    """Big-endian u64: LMDB's byte order then sorts keys numerically."""
    return struct.pack(">Q", n)


def key_u64(key: bytes) -> int:
    return int(struct.unpack(">Q", key)[0])


def exec_key(cid: int) -> bytes:
    """bridge: the broker's execution of order `cid` (gateway writes; recover, replay read)."""
    return b"exec:" + u64_key(cid)


def deal_key(ticket: int) -> bytes:
    """bridge: a deal the broker made on its own (a stop or target), by ticket."""
    return b"deal:" + u64_key(ticket)


def snapshot_key(worker: int) -> str:
    """snapshots: worker `worker`'s AgentPool."""
    return f"worker-{worker}"
