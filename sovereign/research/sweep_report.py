"""A sweep's results: results.csv and results.json (one row per cell: its parameters,
group and window, its in-sample and out-of-sample metrics), and report.html: a heatmap of
the out-of-sample objective per pair of parameters (averaged over everything else), and
the out-of-sample equity curves of the cells that were best in-sample, as a trader
choosing on the in-sample part would have picked them.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import itertools
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from sovereign.files import write_atomic
from sovereign.research.report import iso
from sovereign.research.sweep import Plan
from sovereign.research.sweep_spec import LOWER_IS_BETTER, label

# The metrics each row shows, in-sample (is_) and out-of-sample (oos_).
COLUMNS = (
    "total_return",
    "cagr",
    "sharpe",
    "sortino",
    "max_drawdown",
    "calmar",
    "trades",
    "win_rate",
    "profit_factor",
    "expectancy",
    "net_pnl",
    "signals",
    "state",
)
MAX_BINS = 8  # a heatmap axis of more distinct values (a random search's ranges) is binned
DAY_NS = 86_400 * 1_000_000_000


def rows(sweep: Plan, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    params = {p.path: p for p in sweep.spec.params}
    out = []
    for cell, r in zip(sweep.cells, results, strict=True):
        w = cell.window
        out.append(
            {
                "cell": cell.key[:16],
                **{k: label(v, params[k]) for k, v in cell.point.items()},
                "group": cell.group,
                "window": w.index + 1,
                "train_from": iso(w.train[0]),
                "train_to": iso(w.train[1]),
                "test_from": iso(w.test[0]),
                "test_to": iso(w.test[1]),
                **{f"is_{m}": r["in_sample"].get(m) for m in COLUMNS},
                **{f"oos_{m}": r["out_of_sample"].get(m) for m in COLUMNS},
            }
        )
    return out


def write(out: Path, sweep: Plan, results: list[dict[str, Any]], how: dict[str, Any]) -> list[Path]:
    table = rows(sweep, results)
    spec = sweep.spec
    doc = {
        "spec": str(spec.path),
        "search": {
            "kind": spec.kind,
            "samples": spec.samples or None,
            "seed": spec.seed if spec.kind == "random" else None,
            "objective": spec.objective,
            "points": len(sweep.points),
        },
        "params": [p.path for p in spec.params],
        "groups": sweep.groups,
        "windows": [
            {
                "window": w.index + 1,
                "train": [iso(w.train[0]), iso(w.train[1])],
                "test": [iso(w.test[0]), iso(w.test[1])],
            }
            for w in sweep.windows
        ],
        "data": {"files": spec.data, "digest": sweep.data, "symbols": sweep.market.names},
        "run": how,
        "rows": [
            {**row, "point": r["point"], "in_sample": r["in_sample"], "out_of_sample": r["out_of_sample"]}
            for row, r in zip(table, results, strict=True)
        ],
    }
    write_atomic(out / "results.json", orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(table[0]), lineterminator="\n")
    w.writeheader()
    w.writerows([{k: _csv_cell(v) for k, v in row.items()} for row in table])
    write_atomic(out / "results.csv", buf.getvalue().encode())
    write_atomic(out / "report.html", _html(sweep, table, results, how).encode())
    return [out / "results.csv", out / "results.json", out / "report.html"]


def best(sweep: Plan, results: list[dict[str, Any]], n: int) -> list[int]:
    """The n cells best in-sample by the objective (indices into results)."""
    key = sweep.spec.objective
    sign = 1 if key in LOWER_IS_BETTER else -1
    return sorted(range(len(results)), key=lambda i: (sign * _num(results[i]["in_sample"].get(key)), i))[:n]


def _num(v: Any) -> float:
    return float(v) if isinstance(v, int | float | str) and v != "" else float("nan")


def _csv_cell(v: Any) -> Any:
    if isinstance(v, str) and v[:1] in ("=", "+", "-", "@", "\t", "\r"):  # never a spreadsheet formula
        try:
            float(v)
        except ValueError:
            return "'" + v
    return v


# ---- the page


def _dims(sweep: Plan, table: list[dict[str, Any]]) -> list[str]:
    dims = [p.path for p in sweep.spec.params if len({row[p.path] for row in table}) > 1]
    if len(sweep.groups) > 1:
        dims.append("group")
    return dims


def _axis(values: list[Any]) -> tuple[list[str], list[int]]:
    """The labels of an axis and each row's place on it (numbers in order; binned when many)."""
    distinct = sorted(set(values), key=lambda v: (_num(v) if _is_number(v) else float("inf"), str(v)))
    if len(distinct) <= MAX_BINS or not all(_is_number(v) for v in distinct):
        return [str(v) for v in distinct], [distinct.index(v) for v in values]
    x = np.array([_num(v) for v in values])
    edges = np.linspace(x.min(), x.max(), MAX_BINS + 1)
    place = np.clip(np.searchsorted(edges, x, "right") - 1, 0, MAX_BINS - 1)
    return [f"{edges[i]:.4g}–{edges[i + 1]:.4g}" for i in range(MAX_BINS)], place.tolist()


def _is_number(v: Any) -> bool:
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False


def _heatmap(table: list[dict[str, Any]], a: str, b: str, objective: str) -> bytes:
    plt = _figure()
    ya, pa = _axis([row[a] for row in table])
    xb, pb = _axis([row[b] for row in table])
    total, count = np.zeros((len(ya), len(xb))), np.zeros((len(ya), len(xb)))
    for row, i, j in zip(table, pa, pb, strict=True):
        v = _num(row[f"oos_{objective}"])
        if np.isfinite(v):
            total[i, j] += v
            count[i, j] += 1
    grid = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    fig, ax = plt.subplots(figsize=(1.2 * len(xb) + 3, 0.6 * len(ya) + 2))
    cmap = "RdYlGn_r" if objective in LOWER_IS_BETTER else "RdYlGn"
    im = ax.imshow(grid, cmap=cmap, aspect="auto")
    ax.set_xticks(range(len(xb)), xb, rotation=30, ha="right")
    ax.set_yticks(range(len(ya)), ya)
    ax.set_xlabel(b)
    ax.set_ylabel(a)
    if grid.size <= 144:
        for i, j in itertools.product(range(len(ya)), range(len(xb))):
            if np.isfinite(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.3g}", ha="center", va="center", fontsize=8)
    fig.colorbar(im, ax=ax, label=f"out-of-sample {objective} (mean)")
    fig.tight_layout()
    return _png(fig)


def _curves(sweep: Plan, results: list[dict[str, Any]], chosen: list[int]) -> bytes:
    plt = _figure()
    fig, ax = plt.subplots(figsize=(11, 5))
    for rank, i in enumerate(chosen):
        eq = results[i]["oos_equity"]
        if not eq:
            continue
        t = np.array([x for x, _ in eq], np.int64)
        v = np.array([e for _, e in eq])
        start = results[i]["test"][0]
        initial = float(results[i]["out_of_sample"]["initial"])
        ax.plot((t - start) / DAY_NS, v / initial, lw=1, label=f"#{rank + 1} {results[i]['key'][:8]}")
    ax.axhline(1.0, color="#888888", lw=0.5)
    ax.set_xlabel("days into the out-of-sample window")
    ax.set_ylabel("equity / initial")
    ax.set_title(f"Out-of-sample equity of the {len(chosen)} cells best in-sample by {sweep.spec.objective}")
    ax.grid(alpha=0.3)
    if chosen:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def _html(
    sweep: Plan, table: list[dict[str, Any]], results: list[dict[str, Any]], how: dict[str, Any]
) -> str:
    spec, obj = sweep.spec, sweep.spec.objective
    dims = _dims(sweep, table)
    pairs = list(itertools.combinations(dims, 2)) or ([(dims[0], "window")] if dims else [])
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>Sovereign sweep</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;"
        "font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}"
        "img{max-width:100%}</style></head><body>",
        f"<h1>Sweep: {html.escape(spec.path.name)}</h1>",
        f"<p>{len(sweep.cells)} cells: {sweep.shape()} (a {spec.kind} search"
        f"{f', seed {spec.seed}' if spec.kind == 'random' else ''}; groups of symbols, walk-forward "
        "windows); "
        f"ran {how['ran']} on {html.escape(how['on'])} in "
        f"{how['seconds']:.1f} s, {how['cached']} from the cache. Objective: {html.escape(obj)}.</p>",
    ]
    if not pairs:
        parts.append("<p>Nothing varies between the cells but the window: no heatmap.</p>")
    for a, b in pairs:
        parts.append(f"<h2>{html.escape(a)} × {html.escape(b)}</h2>")
        parts.append(_img(_heatmap(table, a, b, obj)))
    chosen = best(sweep, results, spec.best)
    parts.append(
        "<h2>The best cells</h2><p>Chosen by their in-sample "
        + html.escape(obj)
        + "; the curves are their out-of-sample parts, which the choice never saw.</p>"
    )
    parts.append(_img(_curves(sweep, results, chosen)))
    shown = [
        "cell",
        *[p.path for p in spec.params],
        "group",
        "window",
        f"is_{obj}",
        f"oos_{obj}",
        "oos_total_return",
        "oos_max_drawdown",
        "oos_trades",
    ]
    parts.append("<table><tr><th>#</th>" + "".join(f"<th>{html.escape(c)}</th>" for c in shown) + "</tr>")
    for rank, i in enumerate(chosen):
        cells = "".join(f"<td>{html.escape(_fmt(table[i][c]))}</td>" for c in shown)
        parts.append(f"<tr><td>{rank + 1}</td>{cells}</tr>")
    parts.append("</table><p>Every cell: results.csv and results.json beside this page.</p></body></html>")
    return "\n".join(parts)


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _img(png: bytes) -> str:
    return f"<p><img src='data:image/png;base64,{base64.b64encode(png).decode()}'></p>"


def _figure():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, metadata={"Software": None})
    _figure().close(fig)
    return buf.getvalue()
