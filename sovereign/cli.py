"""The `sovereign` command: run the system and operate it.

Read commands (status, positions, orders, signals, journal) read the state straight from
LMDB, read-only, so they work whether the system runs or not; `status` adds the live
view of the processes when it runs. Control commands (halt, resume, flatten, reload) go
to the running supervisor over its control socket and fail with exit code 3 when it is
down. Every read command takes --json for scripts.

Which system: --config FILE, else $SOVEREIGN_CONFIG, else /etc/sovereign/sovereign.toml
when it exists, else the embedded defaults (state in ./state). --state-dir overrides.

\b
Exit codes:
  0  success
  1  the operation failed, or a check found a problem (doctor, state verify), or
     `run` ended uncleanly
  2  bad arguments, or an invalid config or data file (nothing was started or changed)
  3  the system is not running (control commands; `status` still prints the stored state)
`status` exits 1, printing the stored state, when the control socket stays busy.

Free text shown (reasons, names from data files, a broker's messages) has its control
characters escaped and is cut to a bounded length (sovereign.text), whatever is stored.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import click
import orjson

from sovereign.text import MAX_FIELD, clean

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_DOWN = 0, 1, 2, 3
STATUS_BUSY_WAIT_S = 2.0  # then `status` prints the stored state
SYSTEM_CONFIG = "/etc/sovereign/sovereign.toml"
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class Fail(click.ClickException):
    """Print `sovereign: message` and exit 1 (subclasses: 2 and 3)."""

    exit_code = EXIT_FAILED

    def show(self, file: Any = None) -> None:
        click.echo(f"sovereign: {clean(self.message, MAX_FIELD)}", err=True)


class BadInput(Fail):
    exit_code = EXIT_USAGE


class Down(Fail):
    exit_code = EXIT_DOWN


class SocketBusy(Fail):
    """Every slot of the control socket stayed taken while we waited."""


def _safe(value: Any, limit: int = MAX_FIELD) -> str:
    """Text for a line or a table cell that rich reads as markup: escaped, bounded, and
    its brackets never taken for markup."""
    from rich.markup import escape

    return escape(clean(value, limit))


def _console() -> Any:
    from rich.console import Console

    # colours only on a terminal (never with NO_COLOR); piped output is not cut to 80 columns
    return Console(highlight=False, soft_wrap=False, width=None if sys.stdout.isatty() else 240)


def _json(data: Any) -> None:
    sys.stdout.buffer.write(orjson.dumps(data, option=orjson.OPT_INDENT_2, default=str) + b"\n")
    sys.stdout.flush()


# ---- which system


class Target:
    """The config, state directory and socket a command acts on."""

    def __init__(self, config_path: str | None, state_dir: str | None):
        from sovereign.config import ConfigError, load
        from sovereign.engine.control import socket_path

        if config_path is None and Path(SYSTEM_CONFIG).exists():
            config_path = SYSTEM_CONFIG
        try:
            config = load(config_path)
        except ConfigError as e:
            raise BadInput(str(e)) from None
        if state_dir is not None:
            config = replace(config, system=replace(config.system, state_dir=state_dir))
        self.config_path = config_path
        self.config = config
        self.state_dir = Path(config.system.state_dir)
        self.socket = socket_path(config.system.state_dir, config.system.runtime_dir)

    def store(self) -> Any:
        """The state, read-only."""
        from sovereign.state.store import StateError, StateStore

        if not (self.state_dir / "data.mdb").exists():
            raise Fail(f"no state at {self.state_dir}: the system has never run with this config "
                       "(wrong --config or --state-dir?)")  # fmt: skip
        try:
            return StateStore(self.state_dir, readonly=True)
        except StateError as e:
            raise Fail(str(e)) from None

    def read(self, fn: Callable[[Any], Any]) -> Any:
        with self.store() as store:
            return store.read(fn)

    def ask(self, cmd: str, busy_timeout: float | None = None, **args: Any) -> Any:
        """The answer; busy_timeout: how long to wait for a free slot (default: all the time
        the request may take)."""
        from sovereign.engine.control import Busy, ControlError, NotRunning, request

        try:
            return request(self.socket, cmd, busy_timeout=busy_timeout, **args)
        except NotRunning as e:
            raise Down(str(e)) from None
        except Busy as e:
            raise SocketBusy(str(e)) from None
        except ControlError as e:
            raise Fail(str(e)) from None

    def live(self, cmd: str, **args: Any) -> Any | None:
        """The answer, or None when the system is not running."""

        try:
            return self.ask(cmd, **args)
        except Down:
            return None


def target_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    @click.option("--config", "config_path", metavar="FILE", envvar="SOVEREIGN_CONFIG",
                  help=f"TOML config (default: $SOVEREIGN_CONFIG, {SYSTEM_CONFIG}, or the embedded defaults)")
    @click.option("--state-dir", metavar="DIR", help="state directory (overrides system.state_dir)")
    @functools.wraps(fn)
    def wrapper(config_path: str | None, state_dir: str | None, **kw: Any) -> Any:
        return fn(Target(config_path, state_dir), **kw)

    return wrapper  # fmt: skip


json_option = click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")


# ---- the commands


MAX_STATE_BYTES = 4 << 30  # a backtest's --save-state file: refused above this before reading it


def failure(e: Exception, prefix: str = "") -> Fail:
    """The CLI's answer to an error of the system's own (sovereign.errors) or of the C++
    core's rings: its message, and its exit code (usage 2, operational 1)."""
    from sovereign.errors import SovereignError

    code = e.exit_code if isinstance(e, SovereignError) else EXIT_FAILED
    out = BadInput(f"{prefix}{e}") if code == EXIT_USAGE else Fail(f"{prefix}{e}")
    return out


class Root(click.Group):
    """Every command's errors of the system's own are caught here, once."""

    def invoke(self, ctx: click.Context) -> Any:
        from sovereign.core import RingError
        from sovereign.errors import SovereignError

        try:
            return super().invoke(ctx)
        except (SovereignError, RingError) as e:
            raise failure(e) from None


@click.group(cls=Root, context_settings=CONTEXT, help=__doc__)
@click.version_option(package_name="sovereign")
def main() -> None:
    # Everything the system writes is its own (state, backups, recordings, reports): files
    # 0600 and directories 0700 whatever umask it was started under.
    os.umask(0o077)


@main.command(epilog="Example: sovereign run --config /etc/sovereign/sovereign.toml")
@click.option("--config", "config_path", metavar="FILE", envvar="SOVEREIGN_CONFIG",
              help="TOML config (default: $SOVEREIGN_CONFIG or the embedded defaults)")  # fmt: skip
@click.option("--max-ticks", type=click.IntRange(min=1), help="stop the feed after N ticks, then shut down")
@click.option("--state-dir", metavar="DIR", help="state directory (overrides system.state_dir)")
@click.option("--no-telegram", is_flag=True,
              help="do not start the Telegram bot (systemd runs it in a unit of its own)")  # fmt: skip
def run(config_path: str | None, max_ticks: int | None, state_dir: str | None, no_telegram: bool) -> None:
    """Run the whole system in the foreground (what systemd starts).

    Supervisor, gateway, pinned workers, coordinator and risk; it trades until SIGTERM or
    Ctrl-C (or until a finite feed ends), then drains and exits 0.
    """
    from sovereign.config import check_state_dir, load, with_absolute_paths
    from sovereign.core import RingError
    from sovereign.engine import supervisor
    from sovereign.errors import SovereignError

    if config_path is not None:
        config_path = str(Path(config_path).absolute())  # SIGHUP and `reload` read it again later
    try:
        config = load(config_path)
        if state_dir is not None:
            config = replace(config, system=replace(config.system, state_dir=state_dir))
        if max_ticks is not None:
            config = replace(config, feed=replace(config.feed, max_ticks=max_ticks))
        check_state_dir(config.system.state_dir)
        # Neither the supervisor nor its children may import from the directory it was
        # started in (a `socket.py` there ran in all five children): paths are made
        # absolute, the processes work in /, and no child puts its directory on sys.path.
        config = with_absolute_paths(config)
        os.environ["PYTHONSAFEPATH"] = "1"
        os.chdir("/")
        code = supervisor.Supervisor(config, config_path, telegram=not no_telegram).run()
    except (SovereignError, RingError) as e:
        raise failure(e, "" if getattr(e, "exit_code", 1) == EXIT_USAGE else "cannot start: ") from None
    sys.exit(code)


@main.command(epilog="Example: sovereign status --json | jq .account.equity")
@target_options
@json_option
def status(t: Target, as_json: bool) -> None:
    """Processes, rings, rates, trading state and the account.

    When the system is down it prints the state it left in LMDB and exits 3; when the
    control socket stays busy, the same, and exits 1.
    """
    from sovereign.ops.maintenance import storage
    from sovereign.state import views

    def stored() -> dict[str, Any]:
        account = t.read(views.account) if (t.state_dir / "data.mdb").exists() else None
        return {"account": account, "state_dir": str(t.state_dir)}

    def bridge() -> dict[str, Any] | None:
        """broker.kind = "mt5": whether the terminal is connected, and why not, as the gateway last said."""
        from sovereign.state.schema import BRIDGE_STATUS_KEY

        if t.config.broker.kind != "mt5" or not (t.state_dir / "data.mdb").exists():
            return None
        return t.read(lambda tx: tx.get("bridge", BRIDGE_STATUS_KEY)) or {"connected": False,
                                                                          "why": "the gateway has not run"}

    try:
        data = {"running": True, "live": True, **t.ask("status", busy_timeout=STATUS_BUSY_WAIT_S)}
        code = EXIT_OK
    except Down:
        data, code = {"running": False, "live": False, **stored()}, EXIT_DOWN
    except SocketBusy as e:
        data, code = {"running": True, "live": False, "busy": e.message, **stored()}, EXIT_FAILED
    data["storage"] = storage(t.config)
    data["bridge"] = bridge()
    if as_json:
        _json(data)
    else:
        _print_status(data, t)
    sys.exit(code)


def _print_status(data: dict[str, Any], t: Target) -> None:
    from rich.table import Table

    con = _console()
    if not data["running"]:
        con.print(f"[bold red]not running[/] (socket {_safe(t.socket)}); the stored state at "
                  f"{_safe(t.state_dir)}:")  # fmt: skip
    elif not data["live"]:
        con.print(f"[bold yellow]running, but the control socket is busy[/] ({_safe(data['busy'])}); the "
                  f"stored state at {_safe(t.state_dir)}:")  # fmt: skip
    else:
        pid, line = data["supervisor_pid"], _safe(data["status"])
        con.print(f"[bold green]running[/] · supervisor pid {pid} · {line}")
        procs = Table("process", "pid", "core", "state", "uptime", "heartbeat", "restarts", "ticks",
                      "signals", "orders", "rejects", "dropped")  # fmt: skip
        for p in data["processes"]:
            age = p["heartbeat_age_s"]
            colour = "green" if p["health"] == "ok" else "yellow" if p["health"] == "starting" else "red"
            procs.add_row(p["role"], str(p["pid"]), "-" if p["core"] is None else str(p["core"]),
                          f"[{colour}]{p['state']}[/]", _duration(p["uptime_s"]), f"{age * 1e3:.0f} ms",
                          str(p["restarts"]), f"{p['ticks']:,}", f"{p['signals']:,}", f"{p['orders']:,}",
                          f"{p['rejects']:,}", f"{p['dropped']:,}")  # fmt: skip
        con.print(procs)
        rings = Table("ring", "depth", "capacity", "high water", "dropped")
        for r in data["rings"]:
            rings.add_row(r["name"], f"{r['depth']:,}", f"{r['capacity']:,}", f"{r['high_water']:,}",
                          f"[red]{r['dropped']:,}[/]" if r["dropped"] else "0")  # fmt: skip
        con.print(rings)
        r = data["rates"]
        con.print(f"rates: {r.get('ticks', 0):,.0f} ticks/s · {r.get('signals', 0):,.0f} signals/s · "
                  f"{r.get('orders', 0):,.2f} orders/s")  # fmt: skip
        lat = data.get("tick_to_order") or {}
        window = f"tick-to-order over the last full {lat.get('window_s', 0):.0f} s"
        if lat.get("n"):
            con.print(f"{window}: p50 {lat['p50_us'] / 1e3:,.2f} ms · p99 {lat['p99_us'] / 1e3:,.2f} ms · "
                      f"{lat['n']:,} orders")  # fmt: skip
        elif r.get("orders", 0) > 0:  # orders now, in a window not over yet: not 'no orders'
            con.print(f"{window}: none measured yet (the orders of the last seconds are in a window not "
                      "over yet)")  # fmt: skip
        else:
            con.print(f"{window}: no orders")
        con.print(f"metrics: {_safe(data.get('metrics') or 'off ([metrics] listen)')}")
    _print_storage(con, data.get("storage") or {})
    b = data.get("bridge")
    if b is not None:
        up = b.get("connected") and not b.get("missing")
        con.print(f"MT5 bridge: {'[green]connected[/]' if up else '[bold red]down[/]'}"
                  f"{'' if up else ' (' + _safe(b.get('why', '')) + ')'}")  # fmt: skip
    a = data.get("account")
    if not a or a.get("state") is None:
        con.print("account: no risk state yet")
        return
    colour = {"ACTIVE": "green", "REDUCING": "yellow", "HALTED": "red"}.get(a["state"], "white")
    why = f" ({_safe(a['why'])})" if a.get("why") else ""
    stale = " · as last saved" if a.get("stale") else ""
    con.print(f"trading: [bold {colour}]{a['state']}[/]{why}{stale}")
    con.print(f"balance {_money(a.get('balance'))} · equity {_money(a['equity'])} · day P&L "
              f"{_money(a['day_pnl'])} · drawdown {a['drawdown']:.2%} · open positions {a['open_positions']}")


def _print_storage(con: Any, s: dict[str, Any]) -> None:
    from sovereign.ops.maintenance import size_text

    db, archive = s.get("lmdb"), s.get("archive") or {}
    state = (f"LMDB {size_text(db['file_bytes'])} (in use {size_text(db['used_bytes'])}, free pages "
             f"{size_text(db['free_bytes'])})" if db else "no LMDB state yet")  # fmt: skip
    con.print(f"storage: {state} · archive {size_text(archive.get('bytes', 0))} in "
              f"{archive.get('files', 0)} files")  # fmt: skip


def _money(x: Any) -> str:
    return "-" if x is None else f"{Decimal(x):,.2f}"


def _duration(s: float) -> str:
    s = int(s)
    return f"{s // 86400}d{s % 86400 // 3600:02d}h" if s >= 86400 else f"{s // 3600}h{s % 3600 // 60:02d}m" \
        if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _when(ts_ns: int | None) -> str:
    if not ts_ns:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts_ns / 1e9))


@main.command(epilog="Example: sovereign positions --json")
@target_options
@json_option
def positions(t: Target, as_json: bool) -> None:
    """Open positions (one per symbol), with unrealized P&L while the system runs."""
    from sovereign.state import views

    rows = t.read(views.positions)
    quotes, no_prices = None, "the system is not running"
    if rows:
        try:
            quotes = t.live("quotes", busy_timeout=STATUS_BUSY_WAIT_S, symbols=[r["symbol"] for r in rows])
        except SocketBusy:
            no_prices = "the control socket is busy"
    size = Decimal(repr(t.config.symbols.contract_size))
    for r in rows:
        q = (quotes or {}).get(str(r["symbol"]))
        if q:
            vol = Decimal(r["volume"]) * (1 if r["side"] == "BUY" else -1)
            exit_px = Decimal(repr(q["bid"] if vol > 0 else q["ask"]))
            r["price"] = str(exit_px)
            pnl = (exit_px - Decimal(r["avg_price"])) * vol * size
            r["unrealized"] = str(pnl.quantize(Decimal("0.01")))
    if as_json:
        _json(rows)
        return
    from rich.table import Table

    table = Table("symbol", "side", "volume", "avg price", "price", "unrealized", "stop", "target")
    digits = _digits_of(t.config)

    def px(x: Any, d: int) -> str:
        return "-" if x in (None, "", "-") else f"{Decimal(str(x)):.{d}f}"

    for r in rows:
        d = digits(r["name"])  # an average price gets one digit more
        avg = f"{Decimal(r['avg_price']):.{d + 1}f}".rstrip("0")
        table.add_row(_safe(r["name"]), r["side"], r["volume"], avg if avg[-1] != "." else avg + "0",
                      px(r.get("price"), d), _money(r.get("unrealized")), px(r["sl"], d),
                      px(r["tp"], d))  # fmt: skip
    con = _console()
    con.print(table if rows else "no open positions")
    if rows and quotes is None:
        con.print(f"({no_prices}: no prices, no unrealized P&L)")


def _months(start: str | None, end: str | None) -> tuple[int | None, int | None]:
    """--from and --to (a month, 2027-01, or a day, UTC) as nanoseconds; --to is left out."""
    from sovereign.state.archive import parse_month

    try:
        lo = parse_month(start, "--from") if start is not None else None
        hi = parse_month(end, "--to") if end is not None else None
    except ValueError as e:
        raise BadInput(str(e)) from None
    if lo is not None and hi is not None and hi <= lo:
        raise BadInput(f"--to {end} is not after --from {start} (--to is the first month left out)")
    return lo, hi


def _history(t: Target, fetch: Callable[..., list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Rows of the archive and the state together; the read transaction begins first (see
    sovereign.state.archive.history)."""
    from sovereign.state.archive import ArchiveError, archive_dir

    try:
        return t.read(lambda tx: fetch(tx, archive_dir(t.config)))  # type: ignore[no-any-return]
    except ArchiveError as e:
        raise Fail(str(e)) from None


from_options = [
    click.option("--from", "start", metavar="MONTH", help="from this month (2027-01) or day of market time, "
                                                          "archived history included; oldest first"),
    click.option("--to", "end", metavar="MONTH", help="up to this month or day, left out (--from or not)"),
]  # fmt: skip


def with_from(fn: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(from_options):
        fn = option(fn)
    return fn


@main.command(epilog="Examples: sovereign orders --open · sovereign orders --from 2027-01 --to 2027-02")
@target_options
@click.option("--open", "open_only", is_flag=True, help="only orders not yet final (the open-order index)")
@click.option("--limit", type=click.IntRange(min=0),
              help="newest N (default 30; with --from or --to: the first N, default all; 0: all)")
@with_from
@json_option
def orders(t: Target, open_only: bool, limit: int | None, start: str | None, end: str | None,
           as_json: bool) -> None:  # fmt: skip
    """Orders, newest first, with their lifecycle state; with --from or --to, those of a
    span of market time, oldest first, archived ones included."""
    from sovereign.state import views

    lo, hi = _months(start, end)
    rows: Any
    if lo is not None or hi is not None:
        if open_only:
            raise BadInput("--open shows every open order, whatever its time: give it without --from or --to")
        rows = _history(t, lambda tx, archive: views.order_history(tx, archive, lo, hi, limit or 0))
    else:
        rows = t.read(lambda tx: views.orders(tx, open_only=open_only, limit=30 if limit is None else limit))
    if as_json:
        _json(rows)
        return
    from rich.table import Table

    table = Table("client id", "time (UTC)", "symbol", "side", "volume", "price", "state", "ticket", "reason")
    for o in rows:
        side = {1: "BUY", -1: "SELL"}.get(o.get("side"), "-")
        reason = "" if o.get("reason") in (None, "OK") else _safe(o["reason"])
        table.add_row(str(o["client_order_id"]), _when(o.get("ts_ns")), _safe(o.get("name", "-")), side,
                      str(o.get("volume", "-")), str(o.get("price", "-")), o["state"],
                      str(o.get("ticket") or "-"), reason)  # fmt: skip
    _console().print(table if rows else ("no open orders" if open_only else "no orders"))


def _follow(t: Target, fetch: Callable[..., list[dict[str, Any]]], show: Callable[[Any], None],
            follow: bool, as_json: bool, first: list[dict[str, Any]] | None = None) -> None:
    """Print the newest `limit` rows (or `first`), then (follow) new ones as they are written."""
    rows = first if first is not None else t.read(functools.partial(fetch, after=0))
    last = rows[-1]["seq"] if rows else 0
    emit = (lambda r: sys.stdout.buffer.write(orjson.dumps(r) + b"\n")) if as_json and follow else show
    if as_json and not follow:
        _json(rows)
        return
    for r in rows:
        emit(r)
    if not follow:
        return
    try:
        while True:
            sys.stdout.flush()
            time.sleep(0.5)
            with t.store() as store:
                new = store.read(functools.partial(fetch, after=last))
            for r in new:
                emit(r)
                last = r["seq"]
    except KeyboardInterrupt:
        pass


@main.command(epilog="Example: sovereign signals --follow")
@target_options
@click.option("--follow", "-f", is_flag=True, help="keep printing new signals (Ctrl-C stops)")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True, help="newest N first")
@json_option
def signals(t: Target, follow: bool, limit: int, as_json: bool) -> None:
    """Signals the agents emitted (the newest system.signal_history are kept)."""
    from sovereign.state import views

    con = _console()

    def show(s: dict[str, Any]) -> None:
        name = _safe(s["name"])
        con.print(f"{s['seq']:>8} {_when(s['ts_ns'])} {name:<8} agent {s['agent']:<5} {s['side']:<4} "
                  f"conv {s['conviction']:.2f} entry {s['entry']:.5f} stop {s['stop']:.5f} "
                  f"target {s['target']:.5f} touches {s['touches']}")  # fmt: skip

    _follow(t, lambda tx, after: views.signals(tx, limit=limit, after=after), show, follow, as_json)


@main.command(epilog="Examples: sovereign journal --follow --json · "
                     "sovereign journal --from 2027-01 --to 2027-02")  # fmt: skip
@target_options
@click.option("--follow", "-f", is_flag=True, help="keep printing new events (Ctrl-C stops)")
@click.option("--limit", type=click.IntRange(min=1),
              help="newest N (default 30; with --from or --to: the first N, default all)")
@with_from
@json_option
def journal(t: Target, follow: bool, limit: int | None, start: str | None, end: str | None,
            as_json: bool) -> None:  # fmt: skip
    """The append-only audit journal: orders, fills, restarts, state changes, operator
    commands; with --from or --to, a span of market time, archived months included."""
    from sovereign.state import views

    lo, hi = _months(start, end)
    first = None
    if lo is not None or hi is not None:
        first = _history(t, lambda tx, archive: views.journal_history(tx, archive, lo, hi, limit or 0))
    limit = limit or 30

    con = _console()
    names = t.read(views.symbol_names)
    digits = _digits_of(t.config)

    def show(e: dict[str, Any]) -> None:  # entries written before text was escaped at input are escaped here
        text = views.journal_text(e, names, digits)
        con.print(f"{e['seq']:>8} [bold]{_safe(e['event'])}[/] {_safe(text, 8 * MAX_FIELD)}", markup=True)

    _follow(t, lambda tx, after: views.journal(tx, limit=limit, after=after), show, follow, as_json, first)


def _digits_of(config: Any) -> Callable[[str], int]:
    """A symbol's digits (its point: 0.00001 -> 5), as the config specifies it."""
    from sovereign.research.report import point_digits
    from sovereign.symbols import spec_for

    @functools.cache
    def digits(name: str) -> int:
        return point_digits(spec_for(config, name).point)

    return digits


def _report(answer: dict[str, Any]) -> None:
    why = f" ({clean(answer['why'])})" if answer.get("why") else ""
    click.echo(f"{answer.get('did') or 'done'}; trading state {answer['state']}{why}; "
               f"open positions {answer['open_positions']}")


@main.command(epilog="Example: sovereign halt --flatten --reason 'broker maintenance'")
@target_options
@click.option("--flatten", is_flag=True, help="also close every open position at market")
@click.option("--reason", default="operator halt", show_default=True, help="recorded in the journal")
def halt(t: Target, flatten: bool, reason: str) -> None:
    """Stop opening positions now (HALTED); with --flatten, close everything too."""
    _report(t.ask("halt", flatten=flatten, reason=reason))


@main.command(epilog="Example: sovereign resume")
@target_options
def resume(t: Target) -> None:
    """Back to ACTIVE after a halt (the drawdown that halted it counts as acknowledged)."""
    _report(t.ask("resume"))


@main.command(epilog="Examples: sovereign flatten EURUSD · sovereign flatten --all")
@target_options
@click.argument("symbol", required=False)
@click.option("--all", "everything", is_flag=True, help="every open position")
def flatten(t: Target, symbol: str | None, everything: bool) -> None:
    """Close one symbol's position (or --all) at market; the trading state is unchanged."""
    if (symbol is None) == (not everything):
        raise click.UsageError("give a SYMBOL or --all (not both)")
    _report(t.ask("flatten", **({"all": True} if everything else {"symbol": symbol})))


@main.command(epilog="Example: sovereign reload   (the same as systemctl reload sovereign)")
@target_options
def reload(t: Target) -> None:
    """Reload the [risk] limits from the config file the system was started with."""
    _report(t.ask("reload"))


@main.command(epilog="Example: sovereign metrics | grep sovereign_equity")
@target_options
def metrics(t: Target) -> None:
    """Print one scrape of the metrics (Prometheus' text format, docs/metrics.md).

    Asked over the control socket, so it works with [metrics] listen off or unreachable.
    """
    sys.stdout.write(str(t.ask("metrics")))
    sys.stdout.flush()


@main.command(epilog="Example: sovereign pnl --json")
@target_options
@json_option
def pnl(t: Target, as_json: bool) -> None:
    """P&L of the trading day, the week and the month so far (equity now against each one's
    opening equity, as risk journals it at each day's start), read from the state."""
    from sovereign.state import views
    from sovereign.state.archive import market_now

    r = t.config.risk
    data = t.read(lambda tx: views.pnl(tx, market_now(tx) or 0, r.day_timezone, r.day_start))
    if as_json:
        _json(data)
        return
    if data["equity"] is None:
        click.echo(f"no P&L yet: {clean(data['why'])}")
        return
    click.echo(f"equity {_money(data['equity'])} (trading day {data['today']})")
    for name, d in data["periods"].items():
        if d["pnl"] is None:
            click.echo(f"{name:<5}  not known yet")
            continue
        ratio = f" ({d['ratio']:+.2%})" if d["ratio"] is not None else ""
        partial = "" if d["complete"] else " (the history starts there)"
        click.echo(f"{name:<5}  {_money(d['pnl']):>14}{ratio} since {d['since']}{partial}")


@main.command(epilog="Example: sovereign telegram --config /etc/sovereign/sovereign.toml")
@target_options
@click.option("--socket", "socket_path", metavar="PATH",
              help="the system's control socket (default: the config's)")  # fmt: skip
@click.option("--token-file", metavar="FILE", help="the bot token's file (overrides telegram.token_file)")
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]), default="INFO",
              show_default=True)  # fmt: skip
@click.option("--outbox", metavar="FILE", help="where alerts wait until Telegram has them (default: "
              "$STATE_DIRECTORY/outbox.json, else <state_dir>/telegram-outbox.json)")  # fmt: skip
def telegram(t: Target, socket_path: str | None, token_file: str | None, log_level: str,
             outbox: str | None) -> None:  # fmt: skip
    """Run the Telegram bot in the foreground: alerts to the chats of [telegram], and commands
    from its listed users. Only with telegram.enabled (the supervisor then starts it itself,
    unless `run --no-telegram`). The token: telegram.token_file, $CREDENTIALS_DIRECTORY/
    telegram-token or $SOVEREIGN_TELEGRAM_TOKEN."""
    try:
        from sovereign.ops import telegram as bot
    except ImportError as e:
        raise BadInput(f"the Telegram bot needs python-telegram-bot ({e}): "
                   "pip install 'sovereign[telegram]'") from None  # fmt: skip
    if not t.config.telegram.enabled:  # (enabled, chats and users are empty is a config error)
        raise BadInput(f"telegram.enabled is not true in {t.config_path or 'the embedded defaults'}: "
                       "the bot is off (set it, with telegram.chats and telegram.users)")  # fmt: skip
    sys.exit(bot.main(t.config, socket_path or t.socket, token_file, log_level, outbox))


@main.group(context_settings=CONTEXT)
def config() -> None:
    """Configuration files."""


@config.command("check", epilog="Example: sovereign config check /etc/sovereign/sovereign.toml")
@click.argument("file", type=click.Path(dir_okay=False))
@json_option
def config_check(file: str, as_json: bool) -> None:
    """Validate FILE as the system would at start; exit 2 naming the bad key. Prints how
    many agents each symbol gets on each timeframe."""
    import dataclasses

    from sovereign.config import check_state_dir, load
    from sovereign.errors import SovereignError

    try:
        cfg = load(file)
        check_state_dir(cfg.system.state_dir)
        agents = _agents_check(cfg)
    except SovereignError as e:
        if as_json:
            _json({"ok": False, "error": str(e)})
            sys.exit(e.exit_code)
        raise failure(e, "") from None
    if as_json:
        _json({"ok": True, "config": dataclasses.asdict(cfg), "agents": agents})
        return
    click.echo(f"{file}: ok ({cfg.feed.kind} feed, {cfg.broker.kind} broker, "
               f"state in {cfg.system.state_dir})")
    _print_agents(agents)


def _agents_check(cfg: Any) -> dict[str, Any]:
    """The agents each of the system's symbols gets (sovereign.presets.agent_table), as at
    start: a set naming no symbol is a ConfigError, a pattern matching none a warning. The
    symbols are the feed's (a replay feed's files are read) or the MT5 account's; a state's
    earlier symbols join them at start."""
    from sovereign.engine.venue import venue_symbols
    from sovereign.market.feeds import feed_symbols
    from sovereign.presets import agent_table, check_sets, timeframe_name

    names = venue_symbols(cfg) if cfg.broker.kind == "mt5" else feed_symbols(cfg)
    warnings = check_sets(cfg, names)
    timeframes, rows = agent_table(cfg, names)
    return {"total": sum(len(group) * sum(counts) for group, counts in rows), "symbols": len(names),
            "timeframes": [timeframe_name(tf) for tf in timeframes],
            "rows": [{"symbols": group, "agents": dict(zip(map(timeframe_name, timeframes), counts,
                                                           strict=True))} for group, counts in rows],
            "warnings": warnings}  # fmt: skip


def _print_agents(agents: dict[str, Any]) -> None:
    """One row per group of symbols with the same agents on every timeframe."""

    def names(group: list[str]) -> str:
        shown = ", ".join(group) if len(group) <= 3 else f"{group[0]}, {group[1]} and {len(group) - 2} more"
        return clean(shown, 40)

    frames = agents["timeframes"]
    rows = [(names(r["symbols"]), [r["agents"][tf] for tf in frames]) for r in agents["rows"]]
    width = max([len("symbols"), *(len(n) for n, _ in rows)])
    click.echo(f"agents: {agents['total']:,} on {agents['symbols']:,} symbols (per symbol, by timeframe)")
    click.echo(f"  {'symbols':<{width}}" + "".join(f"{tf:>6}" for tf in [*frames, "total"]))
    for name, counts in rows:
        click.echo(f"  {name:<{width}}" + "".join(f"{c or '-':>6}" for c in [*counts, sum(counts)]))
    for w in agents["warnings"]:
        click.echo(f"sovereign: warning: {w}", err=True)


@main.group(context_settings=CONTEXT)
def state() -> None:
    """The LMDB state: back up, verify, restore, compact."""


@state.command("backup", epilog="Examples: sovereign state backup /backups/today · "
                                "sovereign state backup --rotate 14 /var/lib/sovereign/backups")  # fmt: skip
@target_options
@click.argument("dest", type=click.Path(file_okay=False))
@click.option("--rotate", type=click.IntRange(min=1), help="DEST holds dated backups; keep the newest N")
@json_option
def state_backup(t: Target, dest: str, rotate: int | None, as_json: bool) -> None:
    """A consistent hot copy of the state into DEST (safe while the system runs), verified."""
    from sovereign.ops.maintenance import backup
    from sovereign.state.archive import archive_dir

    manifest = backup(t.state_dir, dest, rotate=rotate or 0, archive_dir=archive_dir(t.config))
    if as_json:
        _json(manifest)
    else:
        c = manifest["counts"]
        click.echo(f"backed up to {manifest['path']}: {manifest['bytes']:,} bytes, {c['orders']:,} orders, "
                   f"{c['journal']:,} journal events, sha256 {manifest['sha256'][:16]}…")  # fmt: skip


def _print_checks(checks: list[Any], as_json: bool) -> None:
    if as_json:
        _json([c.to_dict() for c in checks])
        return
    from rich.table import Table

    colour = {"ok": "green", "warn": "yellow", "fail": "bold red"}
    table = Table("check", "result", "detail")
    for c in checks:
        table.add_row(c.name, f"[{colour[c.status]}]{c.status}[/]", _safe(c.detail))
    _console().print(table)


@state.command("verify", epilog="Examples: sovereign state verify · sovereign state verify /backups/today")
@target_options
@click.argument("path", required=False, type=click.Path(file_okay=False))
@json_option
def state_verify(t: Target, path: str | None, as_json: bool) -> None:
    """Check the integrity of the state (or of the backup at PATH); exit 1 on a failure."""
    from sovereign.ops.maintenance import failed, verify
    from sovereign.state.archive import archive_dir

    checks = verify(path or t.state_dir, archive=None if path else archive_dir(t.config))
    _print_checks(checks, as_json)
    sys.exit(EXIT_FAILED if failed(checks) else EXIT_OK)


@state.command("restore", epilog="Example: sovereign state restore --yes /backups/today")
@target_options
@click.argument("backup_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
@click.option("--unsigned", is_flag=True,
              help="restore a backup not signed with this installation's key")  # fmt: skip
def state_restore(t: Target, backup_dir: str, yes: bool, unsigned: bool) -> None:
    """Replace the state with BACKUP_DIR (verified first). The system must be stopped; the
    current state is moved aside, not deleted."""
    from sovereign.ops.maintenance import restore

    if t.live("ping") is not None:
        raise Fail("the system is running: stop it first (systemctl stop sovereign)")
    if not yes:
        if not sys.stdin.isatty():
            raise BadInput("restoring replaces the state: confirm with --yes")
        click.confirm(f"Replace the state at {t.state_dir} with {backup_dir}?", abort=True)
    from sovereign.state.archive import archive_dir

    done = restore(backup_dir, t.state_dir, unsigned=unsigned, archive_dir=archive_dir(t.config))
    moved = done["previous_state_moved_to"]
    click.echo(f"restored {done['restored']} from {done['from']}" +
               (f"; the previous state is at {moved}" if moved else ""))  # fmt: skip


@state.command("compact", epilog="Example: sovereign state compact")
@target_options
@json_option
def state_compact(t: Target, as_json: bool) -> None:
    """Rewrite the LMDB file without its free pages. With the system running, its supervisor
    does it (the processes' writes wait for the copy, then go on in the new file); it also
    does it by itself when retention.compact_free_ratio is passed."""
    from sovereign.ops.maintenance import size_text
    from sovereign.state.store import StateError, StateLock, compact

    done = t.live("compact", busy_timeout=5.0)
    if done is None:  # not running: compacted here, holding the state's lock
        try:
            with StateLock(t.state_dir, "sovereign state compact"):
                done = compact(t.state_dir)
        except StateError as e:
            raise Fail(f"cannot compact: {e}") from None
    if as_json:
        _json(done)
    else:
        ran = f" while the system ran (its writes waited {done['pause_ms']:.0f} ms)"
        how = ran if done.get("online") else ""
        click.echo(f"compacted {t.state_dir / 'data.mdb'}: {size_text(done['bytes_before'])} -> "
                   f"{size_text(done['bytes_after'])}{how}")  # fmt: skip


@main.group(context_settings=CONTEXT)
def archive() -> None:
    """The history archive: orders, executions and journal past retention.days, by month."""


@archive.command("run", epilog="Example: sovereign archive run")
@target_options
@json_option
def archive_run(t: Target, as_json: bool) -> None:
    """Move every whole month past the retention to the archive now. The system must be
    stopped (while it runs, its supervisor does this every retention.interval_s)."""
    from sovereign.state.archive import ArchiveError, Archiver, archive_dir
    from sovereign.state.store import StateError, StateLock, StateStore

    if not (t.state_dir / "data.mdb").exists():
        raise Fail(f"no state at {t.state_dir}: nothing to archive")
    try:
        with StateLock(t.state_dir, "sovereign archive run"), StateStore(t.state_dir) as store:
            done = Archiver(store, archive_dir(t.config), t.config.retention.days).run()
    except (StateError, ArchiveError) as e:
        raise Fail(f"cannot archive: {e}") from None
    if as_json:
        _json(done)
        return
    where = archive_dir(t.config)
    click.echo(f"archived {done['records']:,} records in {len(done['parts'])} parts to {where}")
    if done["mismatched"]:
        click.echo(f"sovereign: {done['mismatched']} records differ from their archived copy and were kept "
                   "in LMDB; see `sovereign archive verify`", err=True)  # fmt: skip
        sys.exit(EXIT_FAILED)


@archive.command("verify", epilog="Example: sovereign archive verify --json")
@target_options
@json_option
def archive_verify(t: Target, as_json: bool) -> None:
    """Check every archive file against the manifest (checksum, every record); exit 1 on a failure."""
    from sovereign.ops.maintenance import failed, verify_archive
    from sovereign.state.archive import archive_dir

    checks = verify_archive(archive_dir(t.config))
    _print_checks(checks, as_json)
    sys.exit(EXIT_FAILED if failed(checks) else EXIT_OK)


@main.command(epilog="Example: sovereign doctor --config /etc/sovereign/sovereign.toml")
@target_options
@json_option
def doctor(t: Target, as_json: bool) -> None:
    """Check the machine: cores, shared memory, state directory, disk, unit file, clock."""
    from sovereign.ops.maintenance import doctor as run_checks
    from sovereign.ops.maintenance import failed

    checks = run_checks(t.config)
    _print_checks(checks, as_json)
    sys.exit(EXIT_FAILED if failed(checks) else EXIT_OK)


@main.command(epilog="Example: sovereign demo --symbols 20 --ticks-per-symbol 50000 --seed 7")
@click.option("--symbols", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--ticks-per-symbol", type=click.IntRange(min=1), default=20_000, show_default=True,
              help="simulated ticks per symbol, about 0.25 s apart")  # fmt: skip
@click.option("--seed", type=int, default=1, show_default=True, help="market seed")
@click.option("--show", type=click.IntRange(min=0), default=15, show_default=True, help="signals to print")
def demo(symbols: int, ticks_per_symbol: int, seed: int, show: int) -> None:
    """Run the C++ core alone on a simulated market and print its signals."""
    import numpy as np

    from sovereign.core import AgentPool
    from sovereign.market.sim import simulate_ticks
    from sovereign.presets import add_default_agents

    ticks = simulate_ticks(symbols, ticks_per_symbol, seed=seed, mean_interval_s=0.25)
    pool = AgentPool()
    add_default_agents(pool, symbols)
    batches = []
    t = time.perf_counter()
    for at in range(0, len(ticks), 4096):
        batches.append(pool.on_ticks(ticks[at : at + 4096]))
    batches.append(pool.flush())
    elapsed = time.perf_counter() - t
    sigs = np.concatenate(batches)
    click.echo(f"{'time (UTC)':<20} {'agent':>5} {'sym':>4} {'side':<4} {'conv':>5} {'entry':>11} "
               f"{'stop':>11} {'target':>11} {'touches':>7}")  # fmt: skip
    for s in sigs[:show]:
        side = "BUY" if s["side"] > 0 else "SELL"
        click.echo(f"{_when(int(s['ts_ns'])):<20} {s['agent']:>5} {s['symbol']:>4} {side:<4} "
                   f"{s['conviction']:>5.2f} {s['entry']:>11.5f} {s['stop']:>11.5f} {s['target']:>11.5f} "
                   f"{s['touches']:>7}")  # fmt: skip
    if len(sigs) > show:
        click.echo(f"... and {len(sigs) - show} more")
    st = pool.stats()
    click.echo(f"\n{len(pool)} agents, {st['ticks']:,} ticks, {st['bars']:,} bars closed, "
               f"{st['signals']:,} signals in {elapsed:.2f} s ({st['ticks'] / elapsed / 1e6:.1f} M ticks/s); "
               f"rejected: {sum(st['rejected'].values())}")  # fmt: skip


# ---- backtests, replay and data


symbol_option = click.option(
    "--symbol", metavar="NAME", help="the symbol of files without a symbol column (default: the file name's "
    "first word, EURUSD_H1.csv: EURUSD)")  # fmt: skip


def _when_arg(text: str | None, what: str) -> int | None:
    from sovereign.market.data import parse_time

    if text is None:
        return None
    try:
        return parse_time(text)
    except ValueError:
        raise BadInput(f"{what} {text!r} is not a time (ISO 8601, e.g. 2026-03-01T12:00Z)") from None


def _load_market(data: Sequence[str], layout: str, skip_bad_rows: bool, start: int | None,
                 end: int | None, symbol: str | None = None) -> Any:  # fmt: skip
    from sovereign.market.data import DataError
    from sovereign.market.datafile import load

    try:
        market = load(list(data), layout, "skip" if skip_bad_rows else "refuse", symbol)
    except DataError as e:
        raise BadInput(str(e)) from None
    for note in market.notes:
        click.echo(f"sovereign: {clean(note, MAX_FIELD)}", err=True)
    for f, line, what in market.issues[:20]:
        click.echo(f"sovereign: skipped {clean(f)}:{line}: {clean(what, MAX_FIELD)}", err=True)
    if len(market.issues) > 20:
        click.echo(f"sovereign: ... {len(market.issues) - 20} more bad rows skipped", err=True)
    market = market.between(start, end)
    if not len(market.records):
        raise BadInput("no data in the chosen date range")
    return market


class _Stages:
    """A backtest's stages (loading, the walk, the report) timed, and shown as a progress
    display on stderr when it is a terminal, from PROGRESS_AFTER_S into the run (a short run
    shows none; $SOVEREIGN_PROGRESS_AFTER_S changes the wait)."""

    def __init__(self) -> None:
        import threading

        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.times: dict[str, float] = {}
        self.bar = Progress(TextColumn("{task.description:<8}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), console=Console(stderr=True), transient=True)  # fmt: skip
        self.lock, self.shown, self.closed = threading.Lock(), False, False
        self.timer: Any = None
        if sys.stderr.isatty():
            try:
                after = float(os.environ.get("SOVEREIGN_PROGRESS_AFTER_S", PROGRESS_AFTER_S))
            except ValueError:
                after = PROGRESS_AFTER_S
            self.timer = threading.Timer(after, self._show)
            self.timer.daemon = True
            self.timer.start()

    def _show(self) -> None:
        with self.lock:
            if not self.closed:
                self.bar.start()
                self.shown = True

    @contextlib.contextmanager
    def stage(self, name: str, total: int | None = None) -> Iterator[Callable[[int], None]]:
        """Times the block as stage `name`; yields progress(done) for a stage of `total` steps."""
        task = self.bar.add_task(name, total=total)
        t0 = time.perf_counter()
        try:
            yield lambda done: self.bar.update(task, completed=done)
        finally:
            self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - t0
            self.bar.update(task, total=total or 1, completed=total or 1)

    def close(self) -> None:
        with self.lock:
            self.closed = True
            if self.timer is not None:
                self.timer.cancel()
            if self.shown:
                self.bar.stop()

    def summary(self) -> str:
        """'loading 1.20 s, walk 0.40 s, report 2.10 s: 3.70 s in all'."""
        parts = ", ".join(f"{name} {s:.2f} s" for name, s in self.times.items())
        return f"{parts}: {sum(self.times.values()):.2f} s in all"


PROGRESS_AFTER_S = 2.0


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def _lines(text: str) -> str:
    """Text of many lines for the terminal, each line cleaned (sovereign.text)."""
    return "\n".join(clean(line, MAX_FIELD) for line in text.split("\n")[:60])


def _run_backtest(config: Any, market: Any, resume: str | None, keep_signals: bool = False,
                  mark_interval: int = 3600, stages: _Stages | None = None) -> Any:  # fmt: skip
    from sovereign.config import ConfigError
    from sovereign.research import explain
    from sovereign.research.backtest import Backtest

    if resume is not None:
        try:
            if Path(resume).stat().st_size > MAX_STATE_BYTES:
                raise ValueError(f"larger than {MAX_STATE_BYTES >> 30} GiB: not a saved backtest")
            bt = Backtest.restore(Path(resume).read_bytes())
        except (OSError, ValueError) as e:
            raise BadInput(f"cannot resume from {resume}: {e}") from None
        if bt.names != market.names or bt.kind != market.kind:
            raise BadInput(f"{resume} is a snapshot of other data ({bt.kind}: {', '.join(bt.names[:5])})")
        market = market.between(bt.out.last_ns + 1, None)
    else:
        try:
            bt = Backtest(config, market.names, market.kind, keep_signals=keep_signals,
                          mark_interval_s=mark_interval)  # fmt: skip
        except ConfigError as e:  # a symbol the backtest cannot value (see Backtest)
            raise BadInput(str(e)) from None
    note = explain.unread_note(explain.unread(market, bt.pool), market.names)
    if note:  # before the run: it would make no trade on that data
        click.echo("sovereign: " + _lines(note), err=True)
    stages = stages or _Stages()
    with stages.stage("walk", len(market.records)) as progress:
        bt.feed(market.records, progress)
    return bt


@main.command(epilog="Examples: sovereign backtest EURUSD_M1_2025.csv --layout mt5 --out eurusd/ · "
                     "sovereign backtest year.sovdata --from 2025-03-01 --to 2025-06-01 --json")  # fmt: skip
@click.argument("data", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--config", "config_path", metavar="FILE", envvar="SOVEREIGN_CONFIG",
              help="the TOML config live uses (agents, risk, costs); default: $SOVEREIGN_CONFIG, "
                   f"{SYSTEM_CONFIG}, or the embedded defaults")  # fmt: skip
@click.option("--layout", type=click.Choice(["generic", "mt5"]), help="CSV layout (default: feed.layout)")
@symbol_option
@click.option("--from", "start", metavar="TIME", help="first time included (ISO 8601, UTC)")
@click.option("--to", "end", metavar="TIME", help="first time left out (ISO 8601, UTC)")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="backtest", show_default=True,
              help="where the report goes")  # fmt: skip
@click.option("--skip-bad-rows", is_flag=True, help="skip and report bad data rows (default: feed.bad_rows)")
@click.option("--resume", metavar="FILE", type=click.Path(dir_okay=False, exists=True),
              help="continue a run saved with --save-state, on the data after its end")  # fmt: skip
@click.option("--save-state", metavar="FILE", type=click.Path(dir_okay=False),
              help="save the run's state at the end, to --resume it on later data")  # fmt: skip
@click.option("--mark-interval", type=click.IntRange(1, 86_400), default=3600, show_default=True,
              help="seconds between equity marks (must divide a day)")  # fmt: skip
@json_option
def backtest(data: tuple[str, ...], config_path: str | None, layout: str | None, symbol: str | None,
             start: str | None,
             end: str | None, out_dir: str, skip_bad_rows: bool, resume: str | None, save_state: str | None,
             mark_interval: int, as_json: bool) -> None:  # fmt: skip
    """Run the live decision code (agents, coordinator, risk, paper broker) over history.

    DATA: tick or bar files, CSV (generic or MetaTrader 5 layout), Parquet or .sovdata (see
    `data import`), one or many symbols. Ticks fill at the quote; bars fill at the next bar's
    open, with stops and targets checked against each bar's high and low (the stop first
    when a bar touches both). Writes report.json, report.html, trades.csv, equity.csv,
    orders.csv and PNG pictures to --out.
    """
    from sovereign.config import ConfigError, load
    from sovereign.files import write_atomic
    from sovereign.research import report
    from sovereign.research.backtest import DAY_NS, NS

    if DAY_NS % (mark_interval * NS):
        raise BadInput(f"--mark-interval {mark_interval} does not divide a day (86400 s)")
    if config_path is None and Path(SYSTEM_CONFIG).exists():
        config_path = SYSTEM_CONFIG
    try:
        config = load(config_path)
    except ConfigError as e:
        raise BadInput(str(e)) from None
    skip = skip_bad_rows or config.feed.bad_rows == "skip"
    stages = _Stages()
    try:
        with stages.stage("loading"):
            market = _load_market(data, layout or config.feed.layout, skip, _when_arg(start, "--from"),
                                  _when_arg(end, "--to"), symbol)  # fmt: skip
        bt = _run_backtest(config, market, resume, mark_interval=mark_interval, stages=stages)
        with stages.stage("report"):
            if save_state is not None:  # replaces a file or link there, never writes through it
                try:
                    write_atomic(save_state, bt.snapshot())
                except OSError as e:
                    raise Fail(f"cannot save the state to {save_state}: {e.strerror}") from None
            bt.finish()
            doc, trades, prices = report.build(bt, market)
            try:
                report.write(out_dir, doc, trades, bt.out.equity, bt.out.orders, prices)
            except OSError as e:
                raise Fail(f"cannot write the report to {out_dir}: {e.strerror or e}") from None
    finally:
        stages.close()
    if as_json:
        _json(doc)
        return
    m = doc["metrics"]
    walk = stages.times["walk"]
    click.echo(f"{doc['data']['records']:,} {market.kind} of {_count(len(market.names), 'symbol')}, "
               f"{doc['data']['first']} .. {doc['data']['last']}; {stages.summary()} "
               f"(the walk {doc['data']['records'] / max(walk, 1e-9) / 1e6:.2f} M records/s)")  # fmt: skip
    so = doc["run"]["signal_outcomes"]
    click.echo(f"{len(bt.pool):,} agents: {_count(so['signals'], 'signal')}, {so['filled']:,} of them behind "
               "filled orders"
               + (f"; {report.refusals_text(so)}" if so["refused"] else ""))  # fmt: skip
    click.echo(f"return {m['total_return']:+.2%}  CAGR {m['cagr']:+.2%}  Sharpe {m['sharpe']:.2f}  "
               f"Sortino {m['sortino']:.2f}  max drawdown {m['max_drawdown']:.2%} "
               f"({m['max_drawdown_days']:.1f} days)  Calmar {m['calmar']:.2f}")  # fmt: skip
    pf = "n/a" if m["profit_factor"] is None else f"{m['profit_factor']:.2f}"
    click.echo(f"{_count(m['trades'], 'trade')}  win rate {m['win_rate']:.1%}  profit factor {pf}  "
               f"expectancy {m['expectancy']:.2f}  exposure {m['exposure']:.1%}  "
               f"final equity {m['final']}")  # fmt: skip
    for note in doc["notes"]:
        if not doc["data"]["unread"] or not note.startswith("no agent reads"):  # said before the run
            click.echo(f"note: {_lines(note)}")
    click.echo(f"report: {Path(out_dir) / 'report.html'}")


def _num(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


@main.command(epilog="Examples: sovereign sweep risk.toml --out sweeps/risk · sovereign sweep risk.toml "
                     "--ray auto (a cluster started with `ray start --head`)")  # fmt: skip
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--ray", "ray_address", metavar="ADDRESS",
              help="run the cells on the Ray cluster at ADDRESS (host:port, or auto: the one started on "
                   "this machine); needs sovereign[cluster]")  # fmt: skip
@click.option("--workers", type=click.IntRange(1, 1024), help="local processes (default: one per core)")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="sweep", show_default=True,
              help="where the cells, results and report go (the same --out resumes a sweep)")  # fmt: skip
def sweep(spec: str, ray_address: str | None, workers: int | None, out_dir: str) -> None:
    """Backtest every cell of a parameter sweep: config values (a grid or a seeded random
    search) × symbol groups × walk-forward windows, each on its in-sample and out-of-sample
    part. SPEC: the sweep's TOML (see sovereign/research/sweep_spec.py for its keys).

    Each cell is cached under --out by the hash of its inputs (config, data, code), so a
    stopped sweep run again does only the cells it had not finished. Writes results.csv,
    results.json and report.html (heatmaps, the best cells' out-of-sample equity).
    """
    from sovereign.research import sweep as sweeps
    from sovereign.research import sweep_report, sweep_spec

    if ray_address is not None and workers is not None:
        raise BadInput("--workers is for the local pool; on Ray each cell takes one of the cluster's CPUs")
    out = Path(out_dir)
    if out.is_symlink():
        raise BadInput(f"--out {out_dir} is a symlink: give the real path")
    plan = sweeps.plan(sweep_spec.load(spec))
    n = workers or len(os.sched_getaffinity(0))
    click.echo(f"sweep: {len(plan.cells)} cells ({plan.shape()}) on {len(plan.market.records):,} "
               f"{plan.market.kind} of {len(plan.market.names)} symbols")  # fmt: skip
    done = [0]

    def on_cell(r: dict[str, Any]) -> None:
        done[0] += 1
        obj = plan.spec.objective
        point = " ".join(f"{p.path}={sweep_spec.label(r['point'][p.path], p)}" for p in plan.spec.params)
        click.echo(f"cell {r['key'][:12]} {point} {r['group']} window {r['window'] + 1}: {obj} in-sample "
                   f"{_num(r['in_sample'][obj])}, out-of-sample {_num(r['out_of_sample'][obj])} "
                   f"({r['seconds']:.1f} s)")  # fmt: skip

    try:
        results, how = sweeps.run(plan, out, workers=n, ray=ray_address, on_cell=on_cell)
        paths = sweep_report.write(out, plan, results, how)
    except KeyboardInterrupt:
        click.echo(f"sovereign: stopped after {done[0]} new cells, kept in {out / 'cells'}; the same command "
                   "resumes", err=True)  # fmt: skip
        sys.exit(130)
    except OSError as e:
        raise Fail(f"cannot write to {out_dir}: {e.strerror or e}") from None
    rate = f", {how['cells_per_minute']:.1f} cells/min" if how["cells_per_minute"] else ""
    click.echo(f"{how['ran']} cells run on {how['on']} in {how['seconds']:.1f} s{rate}; {how['cached']} from "
               "the cache")  # fmt: skip
    click.echo(f"results: {', '.join(str(p) for p in paths)}")


@main.command(epilog="Example: sovereign replay /var/lib/sovereign/recordings "
                     "--config /etc/sovereign/sovereign.toml")  # fmt: skip
@target_options
@click.argument("recording", type=click.Path(exists=True))
@click.option("--session", help="which session of the recordings directory (default: the newest)")
@click.option("--limit", type=click.IntRange(min=0), default=20, show_default=True,
              help="differences shown per kind")  # fmt: skip
@json_option
def replay(t: Target, recording: str, session: str | None, limit: int, as_json: bool) -> None:
    """Run a recorded live session again, on the schedule its processes kept, and compare
    its signals, orders and executions with what the live system decided (its state).
    Exit 1 if anything differs.

    RECORDING: the recordings directory (the newest session, or --session), or one of a
    session's ticks-*.sovdata files.
    """
    from sovereign.market.data import DataError
    from sovereign.research.replay import compare, live_signals, live_state, load_session
    from sovereign.research.replay import replay as run_replay

    try:
        s = load_session(recording, session)
        if not len(s.market.records):
            raise BadInput(f"{recording}: session {s.name} holds no ticks")
        r = run_replay(s)
    except DataError as e:
        raise BadInput(str(e)) from None
    live_sig, live = t.read(lambda txn: (live_signals(txn, s), live_state(txn, s, r)))
    diff = {"session": s.name, "ticks": len(s.market.records), "recording_issues": s.issues,
            **compare(r, live_sig, live, s.market.names, limit)}  # fmt: skip
    if as_json:
        _json(diff)
    else:
        click.echo(f"session {s.name}: {len(s.market.records):,} ticks")
        for issue in s.issues:
            click.echo(f"  note: {issue}")
        for kind in ("signals", "orders", "executions"):
            d = diff[kind]
            click.echo(f"{kind + ':':12}{d['matched']:,} identical of {d['replayed']:,} replayed / "
                       f"{d['live']:,} live; {d['n_differ']} differ, {d['n_only_in_replay']} only in "
                       f"the replay, {d['n_only_live']} only live")
            for what in ("differ", "only_in_replay", "only_live"):
                for row in d.get(what, []):
                    click.echo(f"  {kind[:-1]} {what.replace('_', ' ')}: {row}")
        if diff["signals"]["not_in_live_history"]:
            click.echo(f"  note: {diff['signals']['not_in_live_history']} signals the coordinator took just "
                       "before it was killed never reached its history; the replay has them")  # fmt: skip
        if diff["orders"]["unrecorded"]:
            click.echo(f"  note: orders {diff['orders']['unrecorded']} were taken by a risk or gateway "
                       "killed before it recorded them: never sent, and not in the live state")  # fmt: skip
        for problem in diff["problems"]:
            click.echo(f"  schedule: {problem}")
    if not diff["identical"]:
        raise SystemExit(EXIT_FAILED)


@main.group(context_settings=CONTEXT)
def data() -> None:
    """Market data: import CSV or Parquet into the fast form, look at what a file holds, make a sample."""


@data.command("import", epilog="Examples: sovereign data import EURUSD_M1_2025.csv GBPUSD_M1_2025.csv "
                               "-o fx_m1_2025.sovdata · sovereign data import fx.sovdata -o fx.parquet")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("-o", "--out", "out", required=True, type=click.Path(dir_okay=False),
              help="the file to write: .sovdata (binary, memory-mapped), .parquet or .csv")  # fmt: skip
@click.option("--layout", type=click.Choice(["generic", "mt5"]), default="generic", show_default=True)
@symbol_option
@click.option("--skip-bad-rows", is_flag=True, help="skip and report bad rows instead of refusing the file")
@json_option
def data_import(files: tuple[str, ...], out: str, layout: str, symbol: str | None, skip_bad_rows: bool,
                as_json: bool) -> None:  # fmt: skip
    """Validate data files (CSV, Parquet, .sovdata) and write them as one file: .sovdata to
    backtest fast, Parquet or CSV to take them elsewhere (either reads back the same)."""
    _check_out(out)
    market = _load_market(files, layout, skip_bad_rows, None, None, symbol)
    summary = _write_market(out, market, [Path(f).name for f in files], as_json)
    if summary is not None:
        click.echo(f"wrote {out}: {summary['rows']:,} {market.kind}{_timeframe_text(summary)} of "
                   f"{len(market.names)} symbols, {summary.get('first', '')} .. {summary.get('last', '')}; "
                   f"{len(market.issues)} bad rows skipped")  # fmt: skip


def _check_out(out: str) -> None:
    from sovereign.market.datafile import SUFFIX

    if Path(out).suffix not in (SUFFIX, ".parquet", ".csv"):
        raise BadInput(f"the output file must end in {SUFFIX}, .parquet or .csv: {out}")


def _write_market(out: str, market: Any, source: Any, as_json: bool) -> dict[str, Any] | None:
    """Save `market` to `out`; its summary to print, or None when it went out as JSON."""
    from sovereign.market.data import DataError
    from sovereign.market.datafile import info, save

    try:
        save(out, market, source=source)
    except DataError as e:
        raise Fail(str(e)) from None
    summary = info(market)
    if as_json:
        _json({"written": out, **summary})
        return None
    return summary


def _timeframe_text(summary: dict[str, Any]) -> str:
    """' (M1)', ' (EURUSD M1, GBPUSD M5)' where symbols differ, or '' for ticks."""
    from sovereign.market.datafile import timeframe_name

    tfs = summary.get("timeframes_s") or {}
    if len(set(tfs.values())) > 1:
        return " (" + ", ".join(f"{_safe(n)} {timeframe_name(tf)}" for n, tf in list(tfs.items())[:10]) + ")"
    return f" ({timeframe_name(summary['timeframe_s'])})" if summary.get("timeframe_s") else ""


@data.command("info", epilog="Example: sovereign data info fx_m1_2025.sovdata --gap 3600")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--layout", type=click.Choice(["generic", "mt5"]), default="generic", show_default=True)
@symbol_option
@click.option("--gap", "gap_s", type=click.FloatRange(min=0, min_open=True),
              help="seconds without data that make a gap (default: 2 bars, or 600 s of ticks)")  # fmt: skip
@json_option
def data_info(files: tuple[str, ...], layout: str, symbol: str | None, gap_s: float | None,
              as_json: bool) -> None:  # fmt: skip
    """Symbols, timeframes, row counts, time ranges and gaps of data files (CSV, Parquet,
    .sovdata; bad rows are listed)."""
    from sovereign.market.datafile import info

    market = _load_market(files, layout, True, None, None, symbol)
    summary = info(market, gap_s)
    if as_json:
        _json(summary)
        return
    from rich.table import Table

    from sovereign.market.datafile import timeframe_name

    table = Table("symbol", "timeframe", "rows", "first", "last", "gaps", "longest gap (h)", box=None)
    for s in summary["symbols"]:
        longest = s.get("longest_gaps") or [{}]
        tf = timeframe_name(s["timeframe_s"]) if s.get("timeframe_s") else "ticks"
        table.add_row(_safe(s["symbol"]), tf, f"{s['rows']:,}", s.get("first", ""), s.get("last", ""),
                      str(s.get("gaps", 0)), str(longest[0].get("hours", "")))  # fmt: skip
    click.echo(f"{summary['kind']}{_timeframe_text(summary)}: {summary['rows']:,} rows, "
               f"{summary.get('first', '')} .. {summary.get('last', '')}; "
               f"{len(summary['bad_rows'])} bad rows")  # fmt: skip
    _console().print(table)


@data.command("sample", epilog="Example: sovereign data sample --symbols 2 --days 2 ticks.csv && "
                               "sovereign backtest ticks.csv")  # fmt: skip
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--symbols", type=click.IntRange(1, 1000), default=2, show_default=True,
              help="how many (EURUSD, GBPUSD, AUDUSD, NZDUSD, USDCHF, USDCAD, then SIM006, ...)")  # fmt: skip
@click.option("--days", type=click.FloatRange(0, 366, min_open=True), default=2.0, show_default=True)
@click.option("--timeframe", type=click.Choice(["ticks", "M1", "M5", "M15", "M30", "H1", "H4", "D1"]),
              default="ticks", show_default=True,
              help="ticks (about one a second a symbol), or bars of the ticks")  # fmt: skip
@click.option("--seed", type=click.IntRange(0, 2**64 - 1), default=7, show_default=True)
@json_option
def data_sample(out: str, symbols: int, days: float, timeframe: str, seed: int, as_json: bool) -> None:
    """Write the simulator's market (trends, ranges, volatility bursts) from 2026-01-01 as a
    data file to try things on: OUT ends in .csv, .parquet or .sovdata."""
    from sovereign.market.sample import TIMEFRAMES, sample

    _check_out(out)
    market = sample(symbols, days, TIMEFRAMES[timeframe], seed)
    summary = _write_market(out, market, "sovereign data sample", as_json)
    if summary is not None:
        click.echo(f"wrote {out}: {summary['rows']:,} {market.kind}{_timeframe_text(summary)} of "
                   f"{', '.join(market.names[:6])}{' ...' if symbols > 6 else ''}, "
                   f"{summary.get('first', '')} .. {summary.get('last', '')}")  # fmt: skip


@main.group(context_settings=CONTEXT)
def mt5() -> None:
    """The MetaTrader 5 bridge: the terminal simulator."""


@mt5.command("simulate", epilog="Example: sovereign mt5 simulate --state venue/ --faults "
             "'{\"odds\": {\"requote\": 0.1}}'")
@click.option("--state", "state_dir", required=True, type=click.Path(file_okay=False),
              help="the venue's own books (created if missing)")  # fmt: skip
@click.option("--bridge", "bridge_path", help="the bridge file to create (default: STATE/bridge.sov)")
@click.option("--symbols", default="EURUSD,GBPUSD,USDJPY", show_default=True, help="comma-separated")
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--faults", "faults_json", default="{}", help="JSON: script, odds, stopout_every, manual_every")
@click.option("--hedging", is_flag=True, help="a hedging account (default: netting)")
@click.option("--duration", type=click.FloatRange(min=0), help="seconds to run (default: until stopped)")
@click.option("--speed", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              help="market seconds per wall second of the ticks' times")  # fmt: skip
@click.option("--server-offset-min", type=click.IntRange(-720, 840), default=120, show_default=True,
              help="the trade server's zone, minutes ahead of UTC (brokers: commonly 120, 180 in summer); "
                   "the bridge carries UTC")  # fmt: skip
@click.option("--dump", is_flag=True, help="print the venue's books as JSON and exit")
def mt5_simulate(state_dir: str, bridge_path: str | None, symbols: str, seed: int, faults_json: str,
                 hedging: bool, duration: float | None, speed: float, server_offset_min: int,
                 dump: bool) -> None:  # fmt: skip
    """Stand in for the terminal and its trade server on the bridge file, with seeded faults."""
    from sovereign.broker import mt5sim

    if dump:
        click.echo(orjson.dumps(mt5sim.dump(state_dir), option=orjson.OPT_INDENT_2).decode())
        return
    try:
        spec = orjson.loads(faults_json)
        faults = mt5sim.Faults(seed=seed, **spec)
    except (orjson.JSONDecodeError, TypeError, ValueError) as e:
        raise click.UsageError(f"--faults: {e}") from e
    mids = mt5sim.DEFAULT_SYMBOLS
    names = [s for s in symbols.split(",") if s]
    sim = mt5sim.Simulator(state_dir, bridge_path or str(Path(state_dir).resolve() / "bridge.sov"),
                           {n: mids.get(n, 1.0) for n in names}, faults, hedging, speed=speed,
                           server_offset_min=server_offset_min)  # fmt: skip
    sim.run(duration)


@mt5.command("install-ea", epilog="Example: sovereign mt5 install-ea /srv/mt5/account1/MQL5")
@click.argument("mql5_dir", type=click.Path(file_okay=False))
def mt5_install_ea(mql5_dir: str) -> None:
    """Copy the Expert Advisor to MQL5/Experts and the bridge DLL to MQL5/Libraries of a
    terminal's folder (MQL5_DIR: its MQL5 folder, or the install folder holding it)."""
    import shutil

    import sovereign
    from sovereign.broker.bridge import find_file

    root = Path(mql5_dir)
    if root.name != "MQL5" and (root / "MQL5").is_dir():
        root = root / "MQL5"
    if not (root / "Experts").is_dir():
        raise BadInput(f"{mql5_dir} is not a terminal's MQL5 folder (it has no Experts folder); give the "
                       "MQL5 folder of a terminal started once with /portable")  # fmt: skip
    ea = find_file("SovereignBridge.mq5") or Path(sovereign.__file__).resolve().parents[1] / "mql5" / \
        "SovereignBridge.mq5"  # fmt: skip
    if not ea.is_file():
        raise Fail("the Expert Advisor's source (SovereignBridge.mq5) is not installed: copy mql5/"
                   "SovereignBridge.mq5 from the source checkout to MQL5/Experts")  # fmt: skip
    dll = find_file("sovbridge.dll")
    if dll is None:
        raise Fail("the bridge DLL was not built: mingw-w64 was missing when the package was built. Install "
                   "it (Debian: apt-get install gcc-mingw-w64-x86-64, or .ci/deps), reinstall the package "
                   "(python3 -m pip install .), and run this again")  # fmt: skip
    (root / "Libraries").mkdir(exist_ok=True)
    shutil.copy2(ea, root / "Experts" / ea.name)
    shutil.copy2(dll, root / "Libraries" / dll.name)
    click.echo(f"copied {ea.name} to {root / 'Experts'} and {dll.name} to {root / 'Libraries'}; compile the "
               "Expert Advisor in MetaEditor, attach it to one chart with 'Allow DLL imports' on, and turn "
               "AutoTrading on")  # fmt: skip


def entry(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (for tests and `python -m sovereign.cli`)."""
    try:
        main.main(args=list(argv) if argv is not None else None, prog_name="sovereign", standalone_mode=True)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else EXIT_FAILED)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(entry())
