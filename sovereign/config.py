"""Configuration: one TOML file, validated before anything starts; no file means the
embedded defaults (simulated market, paper broker, 1000 agents, state under ./state).

Each field declares its type and allowed range next to its default, and one validator
walks them, so every error names the key and what would be right:
    config key risk.max_drawdown: 1.5 is not in (0, 1]
"""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import itertools
import math
import os
import re
import sys
import tempfile
import zoneinfo
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

import numpy as np

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

from sovereign.errors import UsageError

NS = 1_000_000_000


class ConfigError(UsageError):
    """The configuration is invalid; the message names the key."""


def _f(default: Any, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
       choices: tuple[Any, ...] = ()) -> Any:
    return field(default=default, metadata={"lo": lo, "hi": hi, "lo_open": lo_open, "choices": choices})


@dataclass(frozen=True)
class SystemConfig:
    state_dir: str = _f("state")
    runtime_dir: str = _f("")  # the control socket's directory; empty: the state directory
    signal_history: int = _f(100_000, 0, 10**9)  # signals kept in LMDB for `sovereign signals`
    workers: int = _f(0, 0, 1024)  # 0: one per core but the first, at least one
    cores: tuple[int, ...] = _f(())  # cores to pin workers to; empty: all but core 0
    snapshot_interval_s: float = _f(60.0, 1.0, 86400.0)
    shutdown_timeout_s: float = _f(20.0, 1.0, 600.0)
    heartbeat_timeout_s: float = _f(10.0, 0.5, 600.0)  # a child silent this long is hung: restarted
    record_days: int = _f(30, 0, 36_500)  # days of recorded ticks kept for `sovereign replay`; 0: none
    record_dir: str = _f("")  # where the recording goes; empty: <state_dir>/recordings
    # The recordings' byte budget, MiB (0: none, record_days alone bounds them): past it the
    # oldest day files go first. At the default fast pace the sim makes about 400 MB of
    # ticks per simulated day of 100 symbols, so days alone would fill a disk in minutes.
    record_max_mb: int = _f(1024, 0, 10**9)
    # Feed batches the gateway's broker side may trail the feed by before the feed waits.
    # At full speed it always trails by all of them, and an approved order waits behind
    # them: fewer cut tick-to-order, more buy throughput (bench/bench_pipeline.py).
    broker_inbox: int = _f(8, 1, 1024)
    # Risk runs at this SCHED_FIFO priority (0: the normal scheduler), so that an intent
    # or a halt wakes it at once on cores the feed and the workers keep busy. Needs
    # CAP_SYS_NICE or an RLIMIT_RTPRIO this high (the unit's LimitRTPRIO); refused, risk
    # says so and runs at normal priority.
    risk_rt_priority: int = _f(10, 0, 99)


@dataclass(frozen=True)
class FeedConfig:
    kind: str = _f("sim", choices=("sim", "replay"))
    symbols: int = _f(100, 1, 100_000)
    seed: int = _f(1, 0, 2**63 - 1)  # sim: the same seed gives the same market
    start: str = _f("")  # sim: market time of the first tick, UTC ("2026-03-01T00:00:00"); empty: the default
    pace: str = _f("fast", choices=("fast", "realtime"))
    speed: float = _f(1.0, 0.0, 1e6, lo_open=True)  # realtime pace: market seconds per wall-clock second
    tick_interval_s: float = _f(1.0, 0.0, 3600.0, lo_open=True)  # sim: mean time between a symbol's ticks
    max_ticks: int = _f(0, 0, 10**15)  # stop the feed after this many ticks (0: never), then shut down
    files: tuple[str, ...] = _f(())
    layout: str = _f("generic", choices=("generic", "mt5"))
    bad_rows: str = _f("refuse", choices=("refuse", "skip"))  # a bad data row: stop, or skip and report it


@dataclass(frozen=True)
class BrokerConfig:
    kind: str = _f("paper", choices=("paper", "mt5"))
    initial_balance: float = _f(100_000.0, 0.0, 1e12, lo_open=True)
    commission_per_lot: float = _f(7.0, 0.0, 1e6)
    slippage_points: int = _f(0, 0, 10_000)
    account_currency: str = _f("USD")  # ISO 4217: what balance, equity and every limit are in


@dataclass(frozen=True)
class Mt5Config:
    """broker.kind = "mt5": the MetaTrader 5 bridge (docs/runbook.md, MT5 under Wine)."""

    # The bridge file the terminal's Expert Advisor creates and the engine maps: an absolute
    # path in a directory both units share through a group, never world-readable, not in a
    # private /dev/shm.
    bridge: str = _f("")
    magic: int = _f(0, 0, 2**63 - 1)  # the account's magic number: every order of ours carries it
    symbols: tuple[str, ...] = _f(())  # the symbols traded, by our names
    # our name -> the terminal's, where they differ ([mt5.symbol_map] EURUSD = "EURUSD.r")
    symbol_map: dict[str, str] = field(default_factory=dict)
    deviation: int = _f(10, 0, 100_000)  # points a market order may fill away from the quote
    max_reprice: int = _f(3, 0, 100)  # resends after a requote or a price change
    max_backoff: int = _f(3, 0, 100)  # resends after "too many requests", locked or frozen
    max_resend: int = _f(1, 0, 10)  # resends after a look-up found an ambiguous order not executed
    result_timeout_s: float = _f(5.0, 0.1, 600.0)  # no answer this long: the order is looked up
    heartbeat_timeout_s: float = _f(3.0, 0.1, 600.0)  # the terminal silent this long: disconnected
    # The uid that must own the bridge file (the terminal's user, `id -u mt5`); -1: the engine's
    # own. A file of anyone else is refused: its owner could feed the engine prices.
    terminal_uid: int = _f(-1, -1, 2**32 - 2)


@dataclass(frozen=True)
class SymbolDefaults:
    contract_size: float = _f(100_000.0, 0.0, 1e9, lo_open=True)
    lot_step: float = _f(0.01, 0.0, 1e6, lo_open=True)
    min_lot: float = _f(0.01, 0.0, 1e6, lo_open=True)
    max_lot: float = _f(100.0, 0.0, 1e6, lo_open=True)
    point: float = _f(0.00001, 0.0, 1e6, lo_open=True)  # slippage and MT5 spreads are in points
    stops_level: int = _f(0, 0, 1_000_000)  # points a stop or target keeps from the closing price
    # The currency prices are in; empty: a six-letter FX name's last three letters
    # (EURGBP: GBP), else the account currency.
    quote_currency: str = _f("")
    base_currency: str = _f("")  # empty: a six-letter FX name's first three letters
    # Account currency per unit of quote currency, fixed (0: none). Not needed when the
    # quote or the base currency is the account's; without either, the symbol is refused.
    rate: float = _f(0.0, 0.0, 1e9)
    commission_per_lot: float = _f(-1.0, -1.0, 1e6)  # in the account currency; -1: the broker's
    # Per symbol: [symbols.EURUSD] or a glob pattern [symbols."*JPY"], any of the keys
    # above; what a table does not set comes from [symbols]. An exact name wins, then the
    # first pattern that matches, in the file's order.
    overrides: dict[str, SymbolDefaults] = field(default_factory=dict)


@dataclass(frozen=True)
class RetentionConfig:
    # Market days of orders, executions and journal entries kept in LMDB; older ones move to
    # monthly archive files a whole month at a time (so LMDB keeps `days` to `days` + 31).
    # 0: nothing is archived. Must exceed system.record_days: a kept recording replays
    # against the orders in LMDB.
    days: int = _f(90, 0, 36_500)
    archive_dir: str = _f("")  # empty: <state_dir>/archive
    interval_s: float = _f(600.0, 1.0, 86_400.0)  # how often the supervisor looks for a month to archive
    # (and for free pages to compact)
    # The LMDB file is compacted when free pages are this share of it (and at least 64 MiB):
    # at the supervisor's start, and while the system runs (checked every interval_s; the
    # processes' writes wait for the copy). 1: only at 100% free, that is never. LMDB reuses
    # free pages without it.
    compact_free_ratio: float = _f(0.5, 0.0, 1.0, lo_open=True)


# [[agents.sets]] timeframe: a name, or any number of seconds up to a week (AgentPool's limit).
TIMEFRAMES = {"M1": 60, "M5": 300, "M15": 900, "M30": 1800, "H1": 3600, "H4": 14_400, "D1": 86_400,
              "W1": 604_800}  # fmt: skip
MAX_TIMEFRAME_S = 604_800
# The analyzers' parameters (DESIGN.md section 3) with the ranges AgentPool accepts
# (csrc/analyzers/params.hpp: kind, low, high, low open, high open); a set is checked here
# and then by the core itself, so the config refuses what the core would, before start.
AGENT_PARAMS: dict[str, tuple[type, float, float, bool, bool]] = {
    "atr_n": (int, 1, 10_000, False, False),
    "tol_mult": (float, 0.0, 100.0, True, False),
    "k": (int, 1, 16, False, False),
    "m": (int, 1, 128, False, False),
    "surge_rv": (float, 0.0, 1e6, True, False),
    "max_levels": (int, 1, 64, False, False),
    "wick": (float, 0.0, 1.0, False, True),
    "weights": (tuple, 0.0, 1.0, False, False),  # four, each in [0, 1], summing to 1
    "min_conviction": (float, 0.0, 1.0, False, False),
}
WEIGHTS_TEXT = "four numbers in [0, 1] that sum to 1 (level, trend, momentum, bounce)"


MAX_GRID = 1000  # agents one set may give one symbol (its grid's size): more is a typo, most likely


@dataclass(frozen=True)
class AgentSet:
    """One [[agents.sets]] table: agents on each symbol whose name matches one of
    `symbols` (glob patterns, case-sensitive), on bars of each of `timeframe` (seconds),
    with `params` in place of the defaults of DESIGN.md section 3. A key given a list of
    values makes a grid: one agent per combination (timeframe = ["M5", "H1"], k = [2, 3]:
    four agents per symbol)."""

    symbols: tuple[str, ...]
    timeframe: tuple[int, ...]
    params: dict[str, tuple[Any, ...]] = field(default_factory=dict)  # name -> its values

    def agents(self) -> list[tuple[int, dict[str, Any]]]:
        """(timeframe, parameters) of each agent a matching symbol gets, the timeframe first."""
        combos = itertools.product(*self.params.values())
        return [(tf, dict(zip(self.params, c, strict=True))) for c in combos for tf in self.timeframe]


@dataclass(frozen=True)
class AgentsConfig:
    # "default": the ten built-in sets on every symbol (sovereign/presets.py); "none": only `sets`
    preset: str = _f("default", choices=("default", "none"))
    sets: tuple[AgentSet, ...] = ()


@dataclass(frozen=True)
class CoordinatorConfig:
    threshold: float = _f(0.55, 0.0, 100.0, lo_open=True)
    max_symbol_share: float = _f(0.25, 0.0, 1.0, lo_open=True)


@dataclass(frozen=True)
class RiskConfig:
    risk_per_trade: float = _f(0.005, 0.0, 0.1, lo_open=True)
    max_open_positions: int = _f(20, 1, 10_000)
    max_symbol_exposure: float = _f(0.2, 0.0, 100.0, lo_open=True)  # notional / equity
    max_gross_exposure: float = _f(2.0, 0.0, 1000.0, lo_open=True)
    max_orders_per_minute: int = _f(60, 1, 100_000)
    price_band: float = _f(0.01, 0.0, 1.0, lo_open=True)  # |order price / last - 1|
    stale_after_s: float = _f(5.0, 0.0, 3600.0, lo_open=True)
    daily_loss_limit: float = _f(0.03, 0.0, 1.0, lo_open=True)
    max_drawdown: float = _f(0.10, 0.0, 1.0, lo_open=True)
    # The daily loss limit's day starts at day_start ("HH:MM") in day_timezone (an IANA
    # name), following its daylight saving. Brokers on New York close: "America/New_York", "17:00".
    day_timezone: str = _f("UTC")
    day_start: str = _f("00:00")


@dataclass(frozen=True)
class MarketConfig:
    # "fx": Sunday 17:00 to Friday 17:00 in `timezone`, less `holidays`; "always": 24/7.
    # A feed silent while the market is shut is not stale.
    hours: str = _f("fx", choices=("fx", "always"))
    timezone: str = _f("America/New_York")  # an IANA name: where 17:00 and the holidays' dates are
    holidays: tuple[str, ...] = _f(("12-25", "01-01"))  # "MM-DD": the FX day ending that date at 17:00


@dataclass(frozen=True)
class TelegramConfig:
    """The Telegram bot (`sovereign telegram`): alerts and commands, for the chats AND users
    listed here alone. It talks to the system over the control socket only."""

    enabled: bool = _f(False)  # the supervisor starts the bot (unless `sovereign run --no-telegram`)
    chats: tuple[int, ...] = _f(())  # chat ids it answers in and sends alerts to
    users: tuple[int, ...] = _f(())  # user ids it obeys, in those chats
    # The bot token's file (mode 0600); empty: $CREDENTIALS_DIRECTORY/telegram-token (systemd's
    # LoadCredential=), else the environment variable SOVEREIGN_TELEGRAM_TOKEN. Never the token itself.
    token_file: str = _f("")
    api_url: str = _f("https://api.telegram.org")  # https, or http on loopback only (a test's fake)
    poll_interval_s: float = _f(5.0, 0.2, 3600.0)  # how often it asks the system for its status
    queue_max: int = _f(1000, 10, 1_000_000)  # messages waiting for Telegram; the oldest alerts go first
    summary_at: str = _f("")  # "HH:MM" in risk.day_timezone: a daily summary; empty: none
    stale_feed_s: float = _f(60.0, 1.0, 86_400.0)  # the feed stalled this long with the market open: alert
    drawdown_warn_ratio: float = _f(0.8, 0.0, 1.0, lo_open=True)  # of a limit: warn before it is hit


@dataclass(frozen=True)
class MetricsConfig:
    # The Prometheus exporter: "host:port" ("[::1]:9817" for IPv6; port 0: any free port,
    # said at start and in `sovereign status`); "": off (`sovereign metrics` still works,
    # over the control socket). Loopback by default: the metrics say what the account holds.
    listen: str = _f("127.0.0.1:9817")


@dataclass(frozen=True)
class Config:
    system: SystemConfig = field(default_factory=SystemConfig)
    feed: FeedConfig = field(default_factory=FeedConfig)
    broker: BrokerConfig = field(default_factory=BrokerConfig)
    symbols: SymbolDefaults = field(default_factory=SymbolDefaults)
    agents: AgentsConfig = field(default_factory=AgentsConfig)
    coordinator: CoordinatorConfig = field(default_factory=CoordinatorConfig)
    risk: RiskConfig = field(default_factory=RiskConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    market: MarketConfig = field(default_factory=MarketConfig)
    mt5: Mt5Config = field(default_factory=Mt5Config)
    telegram: TelegramConfig = field(default_factory=TelegramConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)

    def __post_init__(self) -> None:
        if self.feed.start:
            sim_start_ns(self.feed.start)
        if self.broker.kind == "mt5":
            _check_mt5(self.mt5)
        if self.feed.kind == "replay" and not self.feed.files:
            raise ConfigError("config key feed.files: a replay feed needs at least one file")
        for name, table in {"": self.symbols, **self.symbols.overrides}.items():
            key = f"symbols.{name}." if name else "symbols."
            if table.min_lot > table.max_lot:
                raise ConfigError(f"config key {key}min_lot: {table.min_lot} is above "
                                  f"{key}max_lot ({table.max_lot})")
            for ccy in ("quote_currency", "base_currency"):
                code = getattr(table, ccy)
                if code and not re.fullmatch(r"[A-Z]{3}", code):
                    raise ConfigError(f"config key {key}{ccy}: {_shown(code)} is not a three-letter "
                                      "currency code like 'USD'")
        if not re.fullmatch(r"[A-Z]{3}", self.broker.account_currency):
            raise ConfigError(f"config key broker.account_currency: {_shown(self.broker.account_currency)} "
                              "is not a three-letter currency code like 'USD'")
        if self.retention.days and self.system.record_days and self.retention.days <= self.system.record_days:
            raise ConfigError(f"config key retention.days: {self.retention.days} is not above "
                              f"system.record_days ({self.system.record_days}); a kept recording is "
                              "replayed against the orders in LMDB, so they must outlive it")
        if self.risk.daily_loss_limit > self.risk.max_drawdown:
            raise ConfigError(f"config key risk.daily_loss_limit: {self.risk.daily_loss_limit} is above "
                              f"risk.max_drawdown ({self.risk.max_drawdown}); a day's loss would halt "
                              "the system before it could reduce")
        if self.agents.preset == "none" and not self.agents.sets:
            raise ConfigError("config key agents.preset: 'none' with no [[agents.sets]] leaves no agent to "
                              "trade; add a set, or keep preset = 'default'")  # fmt: skip
        _check_time_fields(self.market, self.risk)
        listen_address(self.metrics.listen, "config key metrics.listen")
        _check_telegram(self.telegram)


def _check_telegram(tg: TelegramConfig) -> None:
    """Deny by default: an enabled bot lists whom it obeys; its API is reached over TLS
    (the token is in every request's URL), or over plain http on this machine alone."""
    from urllib.parse import urlsplit

    if tg.enabled and not tg.chats:
        raise ConfigError("config key telegram.chats: telegram.enabled = true needs the chat ids it may "
                          "talk in, e.g. [123456789]")  # fmt: skip
    if tg.enabled and not tg.users:
        raise ConfigError("config key telegram.users: telegram.enabled = true needs the user ids it obeys "
                          "(a listed chat alone is not enough), e.g. [123456789]")  # fmt: skip
    if any(u <= 0 for u in tg.users):
        raise ConfigError("config key telegram.users: a user id is a positive integer")
    if any(c == 0 for c in tg.chats):
        raise ConfigError("config key telegram.chats: 0 is not a chat id")
    url = urlsplit(tg.api_url)
    loopback = url.hostname in ("127.0.0.1", "localhost", "::1")
    if url.scheme not in ("https", "http") or not url.hostname or url.query or url.fragment or (
        url.path not in ("", "/")
    ):
        raise ConfigError(f"config key telegram.api_url: {_shown(tg.api_url)} is not a base URL like "
                          "'https://api.telegram.org'")  # fmt: skip
    if url.scheme == "http" and not loopback:
        raise ConfigError("config key telegram.api_url: plain http only to this machine (127.0.0.1); "
                          "the token travels in every request's URL")  # fmt: skip
    if tg.summary_at and not re.fullmatch(r"([01][0-9]|2[0-3]):[0-5][0-9]", tg.summary_at):
        raise ConfigError(f"config key telegram.summary_at: {_shown(tg.summary_at)} is not a time of day "
                          "like '17:05' (HH:MM), or empty for no summary")  # fmt: skip


def _check_mt5(m: Mt5Config) -> None:
    """broker.kind = "mt5" needs a whole [mt5] section: an engine that cannot reach its
    terminal, or would trade symbols it cannot name, must not start."""
    if not m.bridge or not os.path.isabs(m.bridge):
        raise ConfigError("config key mt5.bridge: broker.kind = 'mt5' needs the bridge file's absolute path "
                          "(the file the terminal's Expert Advisor creates), e.g. "
                          "'/var/lib/sovereign-bridge/bridge.sov'")  # fmt: skip
    if m.bridge.startswith("/dev/shm/"):
        raise ConfigError("config key mt5.bridge: not under /dev/shm (the engine's unit has a private one, "
                          "the terminal would not see it); use a directory both units share")  # fmt: skip
    if not m.magic:
        raise ConfigError("config key mt5.magic: broker.kind = 'mt5' needs the account's magic number "
                          "(an integer above 0, the same in the Expert Advisor's inputs)")  # fmt: skip
    if not m.symbols:
        raise ConfigError("config key mt5.symbols: broker.kind = 'mt5' needs the symbols to trade, "
                          "e.g. [\"EURUSD\", \"GBPUSD\"]")  # fmt: skip
    for i, name in enumerate(m.symbols):
        if not re.fullmatch(r"[A-Za-z0-9._#-]{1,31}", name):
            raise ConfigError(f"config key mt5.symbols: item {i + 1} ({_shown(name)}) is not a symbol name "
                              "(1-31 of A-Z a-z 0-9 . _ # -)")  # fmt: skip
    if len(set(m.symbols)) != len(m.symbols):
        raise ConfigError("config key mt5.symbols: a symbol is listed twice")
    for ours, theirs in m.symbol_map.items():
        if ours not in m.symbols:
            raise ConfigError(f"config key mt5.symbol_map.{ours[:31]}: not one of mt5.symbols")
        if not isinstance(theirs, str) or not re.fullmatch(r"[A-Za-z0-9._#+-]{1,31}", theirs):
            raise ConfigError(f"config key mt5.symbol_map.{ours}: {_shown(theirs)} is not a terminal's "
                              "symbol name (1-31 of A-Z a-z 0-9 . _ # + -)")  # fmt: skip
    terminal = [m.symbol_map.get(n, n) for n in m.symbols]
    if len(set(terminal)) != len(terminal):
        raise ConfigError("config key mt5.symbol_map: two of our symbols map to one terminal symbol")


def listen_address(text: str, key: str) -> tuple[str, int] | None:
    """An exporter's address as (host, port), None for "" (off); ConfigError naming `key`
    for anything but "host:port" with an IPv4 address or a host name, or "[IPv6]:port",
    and a port in [0, 65535] (0: any free one)."""
    if text == "":
        return None
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([A-Za-z0-9.-]+):(\d{1,5})", text)
    if m is None:
        raise ConfigError(f"{key}: {_shown(text)} is not an address like '127.0.0.1:9817' or "
                          "'[::1]:9817' (host:port; \"\" turns the exporter off)")  # fmt: skip
    host, port = (m.group(1), int(m.group(2))) if m.group(1) else (m.group(3), int(m.group(4)))
    if m.group(1):
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(f"{key}: the part in brackets is not an IPv6 address") from None
    elif re.fullmatch(r"[0-9.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ConfigError(f"{key}: the host is not an IPv4 address like 127.0.0.1") from None
    if port > 65535:
        raise ConfigError(f"{key}: port {port} is not in [0, 65535]")
    return host, port


def _check_time_fields(market: MarketConfig, risk: RiskConfig) -> None:
    """The time zones, the day's start and the holidays: each one a calendar can use."""
    if market.hours == "fx":  # "always" never looks at a zone
        _check_zone("market.timezone", market.timezone)
    _check_zone("risk.day_timezone", risk.day_timezone)
    if not re.fullmatch(r"([01][0-9]|2[0-3]):[0-5][0-9]", risk.day_start):
        raise ConfigError(f"config key risk.day_start: {_shown(risk.day_start)} is not a time of day "
                          "like '17:00' (HH:MM, 00:00 to 23:59)")  # fmt: skip
    for i, day in enumerate(market.holidays):
        try:  # in 2000, a leap year: "02-29" is a day
            ok = re.fullmatch(r"\d\d-\d\d", day) is not None and np.datetime64(f"2000-{day}", "D") is not None
        except ValueError:
            ok = False
        if not ok:
            raise ConfigError(f"config key market.holidays: item {i + 1} ({_shown(day)}) is not a month "
                              "and day like '12-25'")


def _check_zone(key: str, name: str) -> None:
    if name == "UTC":  # known without a time zone database
        return
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        raise ConfigError(f"config key {key}: {_shown(name)} is not a time zone this machine knows; give an "
                          "IANA name like 'America/New_York' or 'UTC' (a machine without /usr/share/"
                          "zoneinfo needs the tzdata package)") from None


def check_state_dir(path: str) -> None:
    """system.state_dir as the system must find it at start: a directory it can write, or
    one it can make. ConfigError naming the key for a file (there, or where a directory
    must be made) and for a place this user cannot write (a read-only file system,
    another user's directory). `config check` and `run` both ask (a read command needs
    only to read, so loading a config does not)."""
    key = "config key system.state_dir"
    target = Path(path or ".")
    probe = target
    try:
        while not probe.exists() and probe.parent != probe:  # the directories up to here will be made
            probe = probe.parent
        is_dir = probe.is_dir()
    except OSError as e:  # a directory above it this user cannot enter
        raise ConfigError(f"{key}: {path} cannot be reached by this user (uid {os.getuid()}): "
                          f"{e.strerror}") from None  # fmt: skip
    if not is_dir:
        where = "" if probe == target else f" ({probe}, where its directory would be made)"
        raise ConfigError(f"{key}: {path} is not a directory: a file is in the way{where}")
    try:  # a file without a name (O_TMPFILE), gone when closed: the question asked of the file system
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        why = "it is on a read-only file system" if e.errno == errno.EROFS else e.strerror
        at = "" if probe == target else f" (in {probe}, where its directory would be made)"
        raise ConfigError(f"{key}: {path} cannot be written by this user (uid {os.getuid()}){at}: "
                          f"{why}") from None  # fmt: skip


def with_absolute_paths(config: Config) -> Config:
    """The config with every path made absolute against the current directory, for a
    process about to leave it (empty paths stay empty: they mean a default)."""

    def absolute(p: str) -> str:
        return os.path.abspath(p) if p else p

    s, f = config.system, config.feed
    system = dataclasses.replace(s, state_dir=absolute(s.state_dir), runtime_dir=absolute(s.runtime_dir),
                                 record_dir=absolute(s.record_dir))  # fmt: skip
    feed = dataclasses.replace(f, files=tuple(map(absolute, f.files)))
    retention = dataclasses.replace(config.retention, archive_dir=absolute(config.retention.archive_dir))
    telegram = dataclasses.replace(config.telegram, token_file=absolute(config.telegram.token_file))
    return dataclasses.replace(config, system=system, feed=feed, retention=retention, telegram=telegram)


def sim_start_ns(text: str) -> int:
    """feed.start as nanoseconds since the epoch (UTC)."""
    try:
        ns = int(np.datetime64(text.removesuffix("Z"), "ns").astype(np.int64))
    except ValueError:
        raise ConfigError(f"config key feed.start: {_shown(text)} is not a UTC time like "
                          "'2026-03-01T00:00:00'") from None  # fmt: skip
    if not 946_684_800 * NS <= ns < 7_258_118_400 * NS:  # the ticks' window (AgentPool.MIN/MAX_TIME_NS)
        raise ConfigError(f"config key feed.start: {text[:19]!a} is outside 2000-01-01 .. 2200-01-01, "
                          "where every tick would be refused")  # fmt: skip
    return ns


def load(path: str | Path | None = None) -> Config:
    """The config in TOML file `path`, or the embedded defaults when path is None."""
    if path is None:
        return Config()
    try:
        raw = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {path} cannot be read: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    return from_dict(raw)


def from_dict(raw: dict[str, Any]) -> Config:
    if isinstance(raw, dict) and isinstance(raw.get("symbols"), dict):
        raw = {**raw, "symbols": _symbol_tables(raw["symbols"])}
    return _build(Config, raw, "")


SYMBOL_PATTERN = re.compile(r"^[A-Za-z0-9._#*?\[\]-]{1,32}$")


def _symbol_tables(raw: dict[str, Any]) -> dict[str, Any]:
    """[symbols] with its sub-tables ([symbols.EURUSD]) gathered under `overrides`, each
    one merged over the defaults; `overrides` given as such (a saved config) is taken too."""
    defaults = {k: v for k, v in raw.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in raw.items() if isinstance(v, dict) and k != "overrides"}
    saved = raw.get("overrides", {})
    if not isinstance(saved, dict):
        raise ConfigError(f"config key symbols.overrides: expected a table, got {type(saved).__name__}")
    overrides = {}
    for name, table in {**saved, **tables}.items():
        shown = f"config key symbols.{str(name)[:40]!a}"
        if not isinstance(table, dict):
            raise ConfigError(f"{shown}: expected a table, got {type(table).__name__}")
        if not isinstance(name, str) or not SYMBOL_PATTERN.match(name):
            raise ConfigError(f"{shown}: a symbol name or glob pattern is 1-32 of "
                              "A-Z a-z 0-9 . _ # - * ? [ ]")  # fmt: skip
        if table.get("overrides"):
            raise ConfigError(f"config key symbols.{name}.overrides: per-symbol tables do not nest")
        overrides[name] = {**defaults, **{k: v for k, v in table.items() if k != "overrides"}}
    return {**defaults, "overrides": overrides}


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"config key {prefix.rstrip('.')}: expected a table, got {_shown(raw)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"config key {prefix}{unknown[0]} is unknown; known in "
                          f"{prefix.rstrip('.') or 'the top level'}: {', '.join(fields)}")
    hints = get_type_hints(cls)
    values: dict[str, Any] = {}
    for name, value in raw.items():
        key = f"{prefix}{name}"
        if getattr(hints[name], "__origin__", None) is dict:  # name -> table (symbols.overrides) or text
            item = hints[name].__args__[1]
            if not isinstance(value, dict):
                raise ConfigError(f"config key {key}: expected a table, got {type(value).__name__}")
            if item is str:  # mt5.symbol_map
                values[name] = {k: _check(f"{key}.{k}", str, v, {}) for k, v in value.items()}
                continue
            values[name] = {k: _build(item, v, f"{prefix}{k}.") for k, v in value.items()}
        elif hints[name] == tuple[AgentSet, ...]:
            if not isinstance(value, list | tuple):
                raise ConfigError(f"config key {key}: expected [[{key}]] tables, got {_shown(value)}")
            values[name] = tuple(_agent_set(v, f"{key}[{i + 1}]") for i, v in enumerate(value))
        elif dataclasses.is_dataclass(hints[name]):
            values[name] = _build(hints[name], value, f"{key}.")
        else:
            values[name] = _check(key, hints[name], value, fields[name].metadata)
    return cls(**values)


def _agent_set(raw: Any, key: str) -> AgentSet:
    """One [[agents.sets]] table (numbered from 1 in the file's order): symbols, timeframe
    and analyzer parameters side by side; a saved config's {symbols, timeframe, params} too."""
    if not isinstance(raw, dict):
        raise ConfigError(f"config key {key}: expected a table, got {_shown(raw)}")
    saved = raw.get("params", {})
    if not isinstance(saved, dict):
        raise ConfigError(f"config key {key}.params: expected a table, got {_shown(saved)}")
    params = {**saved, **{k: v for k, v in raw.items() if k not in ("symbols", "timeframe", "params")}}
    for what, example in (("symbols", '["EUR*", "GBPUSD"] (["*"]: every symbol)'),
                          ("timeframe", '"H1" (M1 M5 M15 M30 H1 H4 D1 W1, or seconds; a list for several)')):
        if what not in raw:
            raise ConfigError(f"config key {key}.{what} is missing: a set needs one, e.g. {what} = {example}")
    symbols = raw["symbols"]
    if isinstance(symbols, str):
        symbols = [symbols]
    if not isinstance(symbols, list | tuple) or not symbols:
        raise ConfigError(f"config key {key}.symbols: expected a list of symbol names or glob patterns, "
                          f'e.g. ["EUR*", "GBPUSD"], got {_shown(symbols)}')  # fmt: skip
    for i, pattern in enumerate(symbols):
        if not isinstance(pattern, str) or not SYMBOL_PATTERN.match(pattern):
            raise ConfigError(f"config key {key}.symbols: item {i + 1} ({_shown(pattern)}) is not a symbol "
                              "name or glob pattern (1-32 of A-Z a-z 0-9 . _ # - * ? [ ])")  # fmt: skip
    where = f"{key}.timeframe"
    timeframes = tuple(_timeframe(v, where) for v in _values(raw["timeframe"], where))
    agent_set = AgentSet(tuple(symbols), timeframes, _agent_params(params, key))
    size = len(timeframes) * math.prod(len(v) for v in agent_set.params.values())
    if size > MAX_GRID:
        raise ConfigError(f"config key {key}: its lists make {size:,} agents per symbol, more than "
                          f"{MAX_GRID}")  # fmt: skip
    return agent_set


def _values(value: Any, key: str, nested: bool = False) -> list[Any]:
    """A key's values: a list is a grid's (non-empty), anything else one value; for weights
    (`nested`: a value is itself a list) a list of lists is a grid."""
    if not isinstance(value, list | tuple):
        return [value]
    if nested and not any(isinstance(v, list | tuple) for v in value):
        return [value]
    if not value:
        raise ConfigError(f"config key {key}: an empty list; give a value, or a list of values for a grid")
    return list(value)


def _timeframe(value: Any, key: str) -> int:
    allowed = f"one of {' '.join(TIMEFRAMES)}, or a number of seconds in [1, {MAX_TIMEFRAME_S}]"
    if isinstance(value, str) and value.upper() in TIMEFRAMES:
        return TIMEFRAMES[value.upper()]
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_TIMEFRAME_S:
        return value
    raise ConfigError(f"config key {key}: {_shown(value)} is not {allowed}")


def _agent_params(params: dict[str, Any], key: str) -> dict[str, tuple[Any, ...]]:
    """The set's parameters, each value checked against AGENT_PARAMS, then every
    combination by the core's own AgentPool.add_agent (the final word: what it refuses
    never reaches a start)."""
    from sovereign.core import AgentPool

    out: dict[str, tuple[Any, ...]] = {}
    for name, given in params.items():
        if name not in AGENT_PARAMS:
            raise ConfigError(f"config key {key}.{name} is unknown; known in a set: symbols, timeframe, "
                              f"{', '.join(AGENT_PARAMS)} (DESIGN.md section 3)")  # fmt: skip
        where = f"config key {key}.{name}"
        out[name] = tuple(_agent_param(name, v, where) for v in _values(given, where, name == "weights"))
    pool = AgentPool()
    for combo in itertools.islice(itertools.product(*out.values()), MAX_GRID + 1):
        try:
            pool.add_agent(0, 60, **dict(zip(out, combo, strict=True)))
        except ValueError as e:
            raise ConfigError(f"config key {key}: {e}") from None
    return out


def _agent_param(name: str, value: Any, where: str) -> Any:
    kind, lo, hi, lo_open, hi_open = AGENT_PARAMS[name]
    if kind is tuple:
        if not isinstance(value, list | tuple) or len(value) != 4 or not all(
            isinstance(w, int | float) and not isinstance(w, bool) for w in value
        ):
            raise ConfigError(f"{where}: expected {WEIGHTS_TEXT} (or a list of such lists), "
                              f"got {_shown(value)}")  # fmt: skip
        weights = tuple(float(w) for w in value)
        if not all(0.0 <= w <= 1.0 for w in weights) or abs(sum(weights) - 1.0) > 1e-9:
            raise ConfigError(f"{where}: {list(weights)} is not {WEIGHTS_TEXT}")
        return weights
    if not isinstance(value, kind if kind is int else int | float) or isinstance(value, bool):
        raise ConfigError(f"{where}: expected {_name(kind)} (or a list of them), got {_shown(value)}")
    value = kind(value)
    if not ((value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)):
        raise ConfigError(f"{where}: {value} is not in {'(' if lo_open else '['}{lo:g}, {hi:g}"
                          f"{')' if hi_open else ']'}")  # fmt: skip
    return value


def _check(key: str, kind: Any, value: Any, meta: Any) -> Any:
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if getattr(kind, "__origin__", None) is tuple:  # TOML arrays: kept as tuples, immutable
        item = kind.__args__[0]
        if not isinstance(value, list) or not all(
            isinstance(v, item) and not isinstance(v, bool) for v in value
        ):
            plural = {int: "integers", float: "numbers", str: "strings"}[item]
            raise ConfigError(f"config key {key}: expected a list of {plural}, got {_shown(value)}")
        return tuple(value)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ConfigError(f"config key {key}: expected {_name(kind)}, got {_shown(value)}")
    choices = meta.get("choices", ())
    if choices and value not in choices:
        raise ConfigError(f"config key {key}: {_shown(value)} is not one of {', '.join(map(repr, choices))}")
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is not None and hi is not None:
        lo_ok = value > lo if meta.get("lo_open") else value >= lo
        if not (lo_ok and value <= hi):  # also catches NaN
            bracket = "(" if meta.get("lo_open") else "["
            raise ConfigError(f"config key {key}: {value} is not in {bracket}{lo:g}, {hi:g}]")
    return value


def _shown(value: Any) -> str:
    """A value as an error message may show it: numbers and flags as they are; text never
    (a token pasted under the wrong key would reach the journal, LMDB and every backup),
    only its kind and length; tables and lists by their kind."""
    if isinstance(value, bool | int | float):
        return repr(value)
    if isinstance(value, str):
        return f"a string of {len(value)} characters"
    kinds: dict[type, str] = {dict: "table", list: "list"}
    return f"a {kinds.get(type(value), type(value).__name__)}"


def _name(kind: Any) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(kind, str(kind))
