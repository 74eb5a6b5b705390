"""What a backtest produced, as a trader reads it: round-trip trades, statistics, the
equity and drawdown curves and trade marks on price (PNG, and one self-contained HTML
file), trades and equity as CSV, and JSON for machines.

Definitions (all from the equity curve and the trade list; no risk-free rate):
- daily returns: the last equity of each UTC day with data, day over day; a year has as
  many of them as the data has days per year (365 for a 24/7 market, ~260 for FX);
- volatility = stdev(daily) x sqrt(days per year); Sharpe = mean / stdev x sqrt(...);
  Sortino = mean / sqrt(mean(min(r, 0)^2)) x sqrt(...);
- CAGR = (final / initial)^(1 / years) - 1 over the data's span; Calmar = CAGR / max DD;
  from a span under SHORT_SPAN_DAYS, an annual rate says little: the report says so;
- max drawdown: the deepest fall of equity from its running peak; its duration: the
  longest time under a peak (to the recovery, or to the end);
- a trade: a position from flat back to flat (a reversal ends one and starts the next);
  its P&L is realized P&L minus the commissions of its fills (shared by volume when one
  fill closes one trade and opens another); the agent is the one whose order opened it;
- profit factor = gross wins / gross losses; expectancy = mean net P&L per trade;
  exposure = the share of the span with any position open.

Prices are written at each symbol's digits (its point: 0.00001 -> 5), money to the cent,
ratios of equity (returns, drawdown, win rate, exposure) as percent in the HTML.

Every output is a function of the run alone (no clock, no host), so the same data gives
byte-identical files.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
import re
from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from sovereign.core import NO_AGENT
from sovereign.files import write_atomic
from sovereign.research import explain

NS = 1_000_000_000
DAY_NS = 86_400 * NS
ZERO = Decimal(0)
SHORT_SPAN_DAYS = 90  # a CAGR from less data than this carries a caveat
DEFAULT_DIGITS = 5
PERCENT = frozenset({"total_return", "cagr", "volatility", "max_drawdown", "win_rate", "exposure"})


@dataclass
class Trade:
    symbol: str
    side: int  # +1 long, -1 short
    agent: int
    entry_ns: int
    exit_ns: int
    volume: Decimal
    entry_price: Decimal  # volume-weighted
    exit_price: Decimal
    pnl: Decimal  # realized, before commission
    commission: Decimal
    exit_reason: str

    @property
    def net(self) -> Decimal:
        return self.pnl - self.commission

    def row(self, digits: int = DEFAULT_DIGITS) -> dict[str, Any]:
        """The trade as trades.csv and the HTML list it: prices at the symbol's `digits`."""
        return {
            "symbol": self.symbol,
            "side": "long" if self.side > 0 else "short",
            "agent": "risk" if self.agent == NO_AGENT else self.agent,
            "entry_ns": self.entry_ns,
            "entry_time": iso(self.entry_ns),
            "exit_ns": self.exit_ns,
            "exit_time": iso(self.exit_ns),
            "volume": str(self.volume),
            "entry_price": _price(self.entry_price, digits),
            "exit_price": _price(self.exit_price, digits),
            "pnl": _q(self.pnl),
            "commission": _q(self.commission),
            "net": _q(self.net),
            "exit_reason": self.exit_reason,
        }


def trades_from_fills(fills: list[dict[str, Any]]) -> tuple[list[Trade], dict[str, dict[str, Any]]]:
    """Round trips from the broker's fills, and what is still open at the end."""
    open_: dict[str, dict[str, Any]] = {}
    done: list[Trade] = []
    for f in fills:
        sym, side, left = f["symbol"], f["side"], f["volume"]
        total = f["volume"]
        t = open_.get(sym)
        if t is not None and t["side"] != side:  # closes (part of) it
            take = min(left, t["volume"])
            share = f["commission"] * take / total
            t["exit_value"] += take * f["price"]
            t["closed"] += take
            t["pnl"] += f["realized"]  # the broker's realized P&L is all from the closing part
            t["commission"] += share
            t["volume"] -= take
            left -= take
            if t["volume"] == 0:
                done.append(
                    Trade(
                        sym,
                        t["side"],
                        t["agent"],
                        t["entry_ns"],
                        f["ts_ns"],
                        t["closed"],
                        t["entry_value"] / t["closed"],
                        t["exit_value"] / t["closed"],
                        t["pnl"],
                        t["commission"],
                        f["reason"],
                    )
                )
                del open_[sym]
                t = None
        if left > 0:
            share = f["commission"] * left / total
            if t is None:
                t = open_[sym] = {
                    "side": side,
                    "agent": f["agent"],
                    "entry_ns": f["ts_ns"],
                    "volume": ZERO,
                    "entry_value": ZERO,
                    "exit_value": ZERO,
                    "closed": ZERO,
                    "pnl": ZERO,
                    "commission": ZERO,
                }
            t["volume"] += left
            t["entry_value"] += left * f["price"]
            t["commission"] += share
    return done, open_


def metrics(
    equity: list[tuple[int, Decimal]], trades: list[Trade], initial: Decimal, first_ns: int, last_ns: int
) -> dict[str, Any]:
    """The report's statistics (see the module docstring for the definitions)."""
    ts = np.array([t for t, _ in equity], np.int64) if equity else np.array([first_ns], np.int64)
    eq = np.array([float(e) for _, e in equity]) if equity else np.array([float(initial)])
    final = Decimal(equity[-1][1]) if equity else initial
    span_ns = max(last_ns - first_ns, 1)
    years = span_ns / (365.25 * DAY_NS)
    growth = float(final / initial)
    peak = np.maximum.accumulate(np.r_[float(initial), eq])[1:]
    dd = 1 - eq / peak
    max_dd = float(dd.max()) if len(dd) else 0.0
    under, longest, since = False, 0, 0
    for i in range(len(eq)):  # the longest stretch below a previous peak
        if dd[i] > 0 and not under:
            under, since = True, int(ts[i - 1]) if i else int(ts[i])
        elif dd[i] == 0 and under:
            under, longest = False, max(longest, int(ts[i]) - since)
    if under:
        longest = max(longest, last_ns - since)
    days = ts // DAY_NS
    last_of_day = np.flatnonzero(np.r_[days[1:] != days[:-1], True])
    daily_eq = np.r_[float(initial), eq[last_of_day]]
    r = daily_eq[1:] / daily_eq[:-1] - 1
    per_year = len(r) / years if years > 0 else 0.0
    sd = float(np.std(r, ddof=1)) if len(r) > 1 else 0.0
    down = float(np.sqrt(np.mean(np.minimum(r, 0) ** 2))) if len(r) else 0.0
    mean = float(np.mean(r)) if len(r) else 0.0
    cagr = growth ** (1 / years) - 1 if years > 0 and growth > 0 else -1.0
    nets = [float(t.net) for t in trades]
    wins = [x for x in nets if x > 0]
    losses = [x for x in nets if x <= 0]
    return _round(
        {
            "initial": _q(initial),
            "final": _q(final),
            "total_return": growth - 1,
            "cagr": cagr,
            "volatility": sd * math.sqrt(per_year),
            "sharpe": mean / sd * math.sqrt(per_year) if sd > 0 else 0.0,
            "sortino": mean / down * math.sqrt(per_year) if down > 0 else 0.0,
            "max_drawdown": max_dd,
            "max_drawdown_days": longest / DAY_NS,
            "calmar": cagr / max_dd if max_dd > 0 else 0.0,
            "trades": len(trades),
            "win_rate": len(wins) / len(nets) if nets else 0.0,
            "average_win": float(np.mean(wins)) if wins else 0.0,
            "average_loss": float(np.mean(losses)) if losses else 0.0,
            "profit_factor": sum(wins) / -sum(losses) if losses and sum(losses) < 0 else None,
            "expectancy": float(np.mean(nets)) if nets else 0.0,
            "exposure": _exposure(trades, first_ns, last_ns),
            "net_pnl": _q(sum((t.net for t in trades), ZERO)),
            "commission": _q(sum((t.commission for t in trades), ZERO)),
            "years": years,
        }
    )


def breakdown(trades: list[Trade], key: str) -> list[dict[str, Any]]:
    """Per symbol or per agent: trades, wins, net P&L, win rate, profit factor."""
    groups: dict[Any, list[Trade]] = defaultdict(list)
    for t in trades:
        groups[getattr(t, key)].append(t)
    rows = []
    for k in sorted(groups, key=lambda x: (isinstance(x, str), x)):
        ts = groups[k]
        nets = [t.net for t in ts]
        gross_win = sum((x for x in nets if x > 0), ZERO)
        gross_loss = -sum((x for x in nets if x <= 0), ZERO)
        name = ("risk" if k == NO_AGENT else int(k)) if key == "agent" else k
        rows.append(
            _round(
                {
                    key: name,
                    "trades": len(ts),
                    "wins": sum(1 for x in nets if x > 0),
                    "win_rate": sum(1 for x in nets if x > 0) / len(ts),
                    "net_pnl": _q(sum(nets, ZERO)),
                    "profit_factor": float(gross_win / gross_loss) if gross_loss else None,
                }
            )
        )
    return rows


def _exposure(trades: list[Trade], first_ns: int, last_ns: int) -> float:
    if not trades or last_ns <= first_ns:
        return 0.0
    spans = sorted((t.entry_ns, t.exit_ns) for t in trades)
    covered, end = 0, first_ns
    for a, b in spans:
        a = max(a, end)
        if b > a:
            covered += b - a
            end = b
    return covered / (last_ns - first_ns)


def build(
    bt: Any, market: Any
) -> tuple[dict[str, Any], list[Trade], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """The report of a finished Backtest over `market` (a datafile.Market): the JSON
    document, the trades, and each symbol's price line for the pictures."""
    from sovereign.symbols import spec_for

    out = bt.out
    trades, still_open = trades_from_fills(out.fills)
    initial = Decimal(repr(bt.config.broker.initial_balance))
    r = market.records
    gaps = explain.unread(market, bt.pool)
    outcomes = out.outcomes.summary(int(out.n_signals))
    report = {
        "data": {
            "kind": market.kind,
            "symbols": market.names,
            "records": int(out.records),
            "first": iso(out.first_ns) if out.records else "",
            "last": iso(out.last_ns) if out.records else "",
            "timeframe_s": market.timeframe_s or None,
            "bad_rows_skipped": len(market.issues),
            "digits": {name: point_digits(spec_for(bt.config, name).point) for name in market.names},
            "unread": [{"symbol": name, "timeframe_s": tf or None, "agent_timeframes_s": mine}
                       for name, tf, mine in gaps],
        },
        "run": {
            "agents": len(bt.pool),
            "signals": int(out.n_signals),
            "orders": len(out.orders),
            "fills": len(out.fills),
            "trading_state": bt.risk.state.value,
            "why": bt.risk.why,
            "open_positions": {
                s: {"side": "long" if t["side"] > 0 else "short", "volume": str(t["volume"])}
                for s, t in sorted(still_open.items())
            },
            "unfilled_at_end": sum(len(v) for v in bt.pending.values()),
            "signal_outcomes": {**outcomes, "threshold": bt.config.coordinator.threshold},
        },
        "metrics": metrics(out.equity, trades, initial, out.first_ns, out.last_ns),
        "per_symbol": breakdown(trades, "symbol"),
        "per_agent": breakdown(trades, "agent"),
    }
    report["notes"] = notes(report, explain.unread_note(gaps, market.names))
    prices = {}
    px_field = "bid" if market.kind == "ticks" else "close"
    for sid, name in enumerate(market.names):
        idx = np.flatnonzero(r["symbol"] == sid)
        if len(idx) > 4000:
            idx = idx[np.linspace(0, len(idx) - 1, 4000).astype(np.int64)]
        prices[name] = (np.asarray(r["ts_ns"][idx]), np.asarray(r[px_field][idx]))
    return report, trades, prices


def notes(report: dict[str, Any], unread: str = "") -> list[str]:
    """What a reader must know to read the numbers: data no agent reads, signals that made
    no trade and why, a CAGR from a short span."""
    out = [unread.rstrip()] if unread else []
    run, m = report["run"], report["metrics"]
    so = run.get("signal_outcomes")
    if so and so["signals"] and not m["trades"]:
        out.append(f"{so['signals']:,} signals and no trades; " + refusals_text(so))
    elif not run["signals"] and not unread:
        out.append("the agents made no signals over this data")
    days = m["years"] * 365.25
    if report["data"]["records"] and days < SHORT_SPAN_DAYS:
        out.append(f"CAGR and Calmar are annualized from {days:.1f} days of data (under {SHORT_SPAN_DAYS}): "
                   "read them as a rate, not a forecast")  # fmt: skip
    return out


def refusals_text(outcomes: dict[str, Any], top: int = 3) -> str:
    """The top reasons signals made no trade, in words, with their counts."""
    refused = outcomes["refused"]
    if not refused:
        return "none was refused"
    parts = []
    for r in refused[:top]:
        why = r["why"]
        if r["reason"] == explain.BELOW_THRESHOLD:
            why += f" ({outcomes['threshold']:g})"
        parts.append(f"{r['signals']:,}: {why}")
    more = f"; {len(refused) - top} other reasons" if len(refused) > top else ""
    return "refused: " + "; ".join(parts) + more


# ---- files


def write(
    out_dir: str | Path,
    report: dict[str, Any],
    trades: list[Trade],
    equity: list[tuple[int, Decimal]],
    orders: list[dict[str, Any]],
    prices: dict[str, tuple[np.ndarray, np.ndarray]],
) -> list[Path]:
    """report.json, trades.csv, equity.csv, orders.csv, equity.png, one price PNG per
    traded symbol (the most traded first, at most 6), report.html. Returns the paths."""
    out = Path(out_dir)
    if out.is_symlink():  # the files inside are written atomically; the folder itself must be real
        raise OSError(f"{out} is a symlink: refusing to write the report through it (give the real path)")
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "report.json"]
    write_atomic(written[0], orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
    digits = report["data"].get("digits", {})
    rows = [t.row(digits.get(t.symbol, DEFAULT_DIGITS)) for t in trades]
    written.append(_csv(out / "trades.csv", rows, TRADE_COLUMNS))
    written.append(
        _csv(out / "equity.csv", [{"time": iso(t), "equity": _q(e)} for t, e in equity], ["time", "equity"])
    )
    names = report["data"]["symbols"]
    written.append(
        _csv(
            out / "orders.csv",
            [_order(o, names, digits) for o in orders],
            [
                "time",
                "ts_ns",
                "client_order_id",
                "symbol",
                "side",
                "agent",
                "conviction",
                "volume",
                "price",
                "sl",
                "tp",
                "state",
                "reason",
                "fill_price",
                "retcode",
            ],
        )
    )
    pictures = {"equity.png": _equity_png(equity, float(report["metrics"]["initial"]))}
    counts: dict[str, int] = defaultdict(int)
    for t in trades:
        counts[t.symbol] += 1
    for sym in sorted(counts, key=lambda s: (-counts[s], s))[:6]:
        if sym in prices:
            pictures[f"price_{_safe(sym)}.png"] = _price_png(
                sym, prices[sym], [t for t in trades if t.symbol == sym]
            )
    for name, png in pictures.items():
        write_atomic(out / name, png)
        written.append(out / name)
    write_atomic(out / "report.html", _html(report, rows, pictures).encode())
    written.append(out / "report.html")
    return written


TRADE_COLUMNS = ["symbol", "side", "agent", "entry_ns", "entry_time", "exit_ns", "exit_time", "volume",
                 "entry_price", "exit_price", "pnl", "commission", "net", "exit_reason"]  # fmt: skip


def _order(o: dict[str, Any], names: list[str], digits: dict[str, int]) -> dict[str, Any]:
    """An order (backtest._order_row) as orders.csv lists it: the symbol's name, BUY or SELL,
    prices at the symbol's digits, volumes and convictions without float noise."""
    s = o["symbol"]
    name = names[s] if isinstance(s, int) and 0 <= s < len(names) else str(s)
    d = digits.get(name, DEFAULT_DIGITS)

    def price(x: float) -> str:
        return "" if not x else f"{x:.{d}f}"

    side = {1: "BUY", -1: "SELL"}.get(o["side"], o["side"])
    return {**o, "time": iso(o["ts_ns"]), "symbol": name, "side": side,
            "conviction": _plain(o["conviction"], 6), "volume": _plain(o["volume"], 8),
            "price": price(o["price"]), "sl": price(o["sl"]), "tp": price(o["tp"])}  # fmt: skip


def _plain(x: float, places: int) -> str:
    """A float rounded to `places` decimals, without trailing zeros (0.29, not 0.29000000000000004)."""
    text = f"{x:.{places}f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def _csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> Path:
    buf = io.StringIO()
    w = csv.DictWriter(buf, columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows({k: _cell(v) for k, v in row.items()} for row in rows)
    write_atomic(path, buf.getvalue().encode())
    return path


# A text cell a spreadsheet would take for a formula (OWASP, "CSV injection"): one that
# starts with = + - @, a tab or a carriage return. A plain number (-12.50) is one only to
# the letter: it stays as it is, so that it is still read as a number.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", re.ASCII)


def _cell(v: Any) -> Any:
    """A CSV cell: text that a spreadsheet would run as a formula gets a leading ' (shown
    as text, not run); numbers and other text as they are. A carriage return in text
    becomes a line feed: the writer quotes a cell with a line feed (our line end), not
    one with a bare CR, which a spreadsheet reads as the end of the row, and the rest
    as the start of the next (where a formula would run)."""
    if not isinstance(v, str):
        return v
    if v.startswith(_FORMULA_START) and not _PLAIN_NUMBER.fullmatch(v):
        v = "'" + v
    return v.replace("\r\n", "\n").replace("\r", "\n") if "\r" in v else v


def _figure():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})  # no version stamp: reproducible
    _figure().close(fig)
    return buf.getvalue()


def _equity_png(equity: list[tuple[int, Decimal]], initial: float) -> bytes:
    plt = _figure()
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(11, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    if equity:
        t = np.array([x for x, _ in equity], "datetime64[ns]")
        eq = np.array([float(e) for _, e in equity])
        peak = np.maximum.accumulate(np.r_[initial, eq])[1:]
        ax1.plot(t, eq, lw=1, color="#1f77b4")
        ax2.fill_between(t, -(1 - eq / peak) * 100, 0, color="#d62728", alpha=0.5, step="post")
    ax1.set_ylabel("equity")
    ax1.set_title("Equity")
    ax2.set_ylabel("drawdown %")
    ax1.grid(alpha=0.3)
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def _price_png(symbol: str, price: tuple[np.ndarray, np.ndarray], trades: list[Trade]) -> bytes:
    plt = _figure()
    ts, px = price
    fig, ax = plt.subplots(figsize=(11, 4))
    ax.plot(ts.astype("datetime64[ns]"), px, lw=0.6, color="#555555")
    for side, color, marker in ((1, "#2ca02c", "^"), (-1, "#d62728", "v")):
        mine = [t for t in trades if t.side == side]
        ax.scatter(
            np.array([t.entry_ns for t in mine], "datetime64[ns]"),
            [float(t.entry_price) for t in mine],
            marker=marker,
            color=color,
            s=18,
            label=f"{'long' if side > 0 else 'short'} entry",
            zorder=3,
        )
    ax.scatter(
        np.array([t.exit_ns for t in trades], "datetime64[ns]"),
        [float(t.exit_price) for t in trades],
        marker="x",
        color="black",
        s=14,
        label="exit",
        zorder=3,
    )
    ax.set_title(f"{symbol}: trades on price")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def _html(report: dict[str, Any], trades: list[dict[str, Any]], pictures: dict[str, bytes]) -> str:
    """The page: `trades` are the rows trades.csv has."""
    e = html.escape
    m = report["metrics"]

    def table(rows: list[dict[str, Any]], limit: int = 500) -> str:
        if not rows:
            return "<p>none</p>"
        cols = list(rows[0])
        head = "".join(f"<th>{e(c)}</th>" for c in cols)
        body = "".join(
            "<tr>" + "".join(f"<td>{e(_fmt(r[c], c))}</td>" for c in cols) + "</tr>" for r in rows[:limit]
        )
        more = f"<p>… and {len(rows) - limit} more (trades.csv has them all)</p>" if len(rows) > limit else ""
        return f"<table><tr>{head}</tr>{body}</table>{more}"

    imgs = "".join(
        f'<h2>{e(name[:-4].replace("_", " "))}</h2><img alt="{e(name)}" '
        f'src="data:image/png;base64,{base64.b64encode(png).decode()}">'
        for name, png in pictures.items()
    )
    data = report["data"]
    notes = "".join(f"<pre class=note>{e(n)}</pre>" for n in report.get("notes", []))
    so = report["run"].get("signal_outcomes")
    outcomes = ""
    if so and so["signals"]:
        rows = [{"outcome": "filled: traded", "signals": so["filled"]}]
        rows += [{"outcome": r["why"], "signals": r["signals"]} for r in so["refused"]]
        outcomes = f"<h2>What became of the signals</h2>{table(rows)}"
    stats = [{"metric": k, "value": _stat(k, v)} for k, v in m.items()]
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Sovereign backtest</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1150px}}
table{{border-collapse:collapse;margin:1em 0}}img{{max-width:100%}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right;font-size:13px}}
pre.note{{background:#fff6dd;border-left:4px solid #e0a800;padding:.5em 1em;white-space:pre-wrap}}</style>
</head><body>
<h1>Backtest: {e(", ".join(data["symbols"][:10]))}{" …" if len(data["symbols"]) > 10 else ""}</h1>
<p>{e(data["kind"])} from {e(data["first"])} to {e(data["last"])};
{data["records"]:,} records; {report["run"]["agents"]} agents;
{report["run"]["signals"]:,} signals, {report["run"]["orders"]:,} orders.</p>
{notes}
<h2>Statistics</h2>{table(stats)}
{outcomes}
{imgs}
<h2>Per symbol</h2>{table(report["per_symbol"])}
<h2>Per agent</h2>{table(report["per_agent"])}
<h2>Trades</h2>{table([{k: v for k, v in t.items() if not k.endswith("_ns")} for t in trades])}
</body></html>
"""


def _fmt(v: Any, key: str = "") -> str:
    if isinstance(v, float):
        if key in PERCENT:
            return f"{v:.2%}"
        return f"{v:,.4f}" if abs(v) < 1e6 else f"{v:,.0f}"
    return "" if v is None else str(v)


def _stat(key: str, v: Any) -> Any:
    """A statistic as the HTML shows it (the console's way): ratios of equity as percent."""
    if isinstance(v, float) and key in PERCENT:
        return f"{v:.2%}"
    if key == "max_drawdown_days" and isinstance(v, float):
        return f"{v:.1f} days"
    if key == "years" and isinstance(v, float):
        return f"{v * 365.25:.1f} days" if v < 1 else f"{v:.2f} years"
    return v


def _price(x: Decimal, digits: int) -> str:
    """A price at the symbol's digits."""
    return str(Decimal(x).quantize(Decimal(1).scaleb(-digits)))


def point_digits(point: Decimal) -> int:
    """A symbol's digits from its point (0.00001 -> 5, 0.01 -> 2, 1 -> 0)."""
    return max(0, -Decimal(point).normalize().as_tuple().exponent)  # type: ignore[operator]


def _q(x: Decimal) -> str:
    """Money for people and files: to the cent (exact values stay in the ledger)."""
    return str(Decimal(x).quantize(Decimal("0.01")))


def _round(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (round(v, 10) if isinstance(v, float) and math.isfinite(v) else v) for k, v in d.items()}


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def iso(ns: int) -> str:
    return str(np.datetime64(int(ns), "ns").astype("datetime64[ms]")) + "Z"
