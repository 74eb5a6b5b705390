"""A sweep's spec (`sovereign sweep SPEC.toml`): what to vary, over which symbols and
windows, read and checked before anything runs. Every error names the spec's key.

    config = "sovereign.toml"        # the base config: a path (from the spec's folder),
                                     # or inline tables: [config.risk] max_drawdown = 0.2
    data = ["year.sovdata"]          # data files, as `sovereign backtest` takes them

    [search]
    kind = "grid"                    # or "random": `samples` points drawn with `seed`
    objective = "sharpe"             # a report metric: what "best" means in the report

    [params]                         # any config key by its dotted path: the values to try
    risk.risk_per_trade = [0.002, 0.005]
    "agents.sets" = [[{symbols = ["*"], timeframe = "M1"}], [{symbols = ["*"], timeframe = "M5"}]]
    # random search only: a range, drawn uniformly (log = true: on a log scale; two
    # integers: an integer)
    # risk.max_drawdown = {low = 0.05, high = 0.3}

    [groups]                         # symbol groups (glob patterns); default: all = ["*"]
    majors = ["EURUSD", "GBPUSD"]

    [walk_forward]                   # in-sample (train) and out-of-sample (test) windows
    train = "90d"; test = "30d"; step = "30d"    # durations: s m h d w (m: minutes)
    # or: count = 4, test_share = 0.25 (the data cut into 4 windows, the last quarter of
    # each out-of-sample); default: count = 1
"""

from __future__ import annotations

import copy
import fnmatch
import math
import random
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sovereign.config import Config, ConfigError, from_dict
from sovereign.errors import UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

NS = 1_000_000_000
MAX_POINTS = 100_000
MAX_CELLS = 1_000_000
TOP_KEYS = ("config", "data", "layout", "search", "params", "groups", "walk_forward")
# The report's metrics a sweep may rank by, and the ones where less is better.
OBJECTIVES = (
    "sharpe",
    "sortino",
    "calmar",
    "total_return",
    "cagr",
    "profit_factor",
    "expectancy",
    "win_rate",
    "net_pnl",
    "max_drawdown",
    "volatility",
)
LOWER_IS_BETTER = frozenset({"max_drawdown", "volatility"})
_DURATION = re.compile(r"(\d+)\s*(s|m|h|d|w)")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


class SpecError(UsageError):
    """The sweep's spec is invalid; the message names the key."""


@dataclass(frozen=True)
class Param:
    """One swept config key: the values of a grid or a random search's choices, or a range."""

    path: str  # dotted config key, e.g. "risk.risk_per_trade"
    values: tuple[Any, ...] = ()
    low: Any = None  # a range (random search only): two numbers, or two integers
    high: Any = None
    log: bool = False
    integer: bool = False


@dataclass(frozen=True)
class Walk:
    train: str = ""  # durations as written, or empty
    test: str = ""
    step: str = ""
    count: int = 0
    test_share: float = 0.25


@dataclass(frozen=True)
class Window:
    index: int
    train: tuple[int, int]  # [from, to) in ns
    test: tuple[int, int]


@dataclass
class Spec:
    path: Path
    base: dict[str, Any]  # the base config as TOML tables
    data: list[str]
    layout: str | None
    kind: str
    samples: int
    seed: int
    objective: str
    best: int
    params: list[Param]
    groups: dict[str, list[str]]
    walk: Walk
    raw: dict[str, Any] = field(default_factory=dict)


def load(path: str | Path) -> Spec:
    """The spec in TOML file `path`, checked (SpecError naming the key)."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise SpecError(f"sweep spec {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(f"sweep spec {path} cannot be read: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"sweep spec {path} is not valid TOML: {e}") from None
    return parse(raw, path)


def parse(raw: dict[str, Any], path: Path) -> Spec:
    unknown = sorted(set(raw) - set(TOP_KEYS))
    if unknown:
        raise SpecError(f"sweep spec key {unknown[0]} is unknown; known: {', '.join(TOP_KEYS)}")
    folder = path.parent
    base = _base(raw.get("config", {}), folder)
    data = raw.get("data")
    if isinstance(data, str):
        data = [data]
    if not isinstance(data, list) or not data or not all(isinstance(d, str) and d for d in data):
        raise SpecError('sweep spec key data: expected the data files, e.g. data = ["year.sovdata"]')
    layout = raw.get("layout")
    if layout is not None and layout not in ("generic", "mt5"):
        raise SpecError("sweep spec key layout: expected 'generic' or 'mt5'")
    search = _table(raw, "search")
    _known(search, "search", ("kind", "samples", "seed", "objective", "best"))
    kind = search.get("kind", "grid")
    if kind not in ("grid", "random"):
        raise SpecError(f"sweep spec key search.kind: {kind!r} is not 'grid' or 'random'")
    if kind == "grid" and ("samples" in search or "seed" in search):
        raise SpecError("sweep spec key search.samples: only a random search draws samples (kind = 'random')")
    samples = _int(search, "samples", 1, MAX_POINTS, None if kind == "random" else 0)
    seed = _int(search, "seed", 0, 2**63 - 1, 0)
    objective = search.get("objective", "sharpe")
    if objective not in OBJECTIVES:
        raise SpecError(
            f"sweep spec key search.objective: {objective!r} is not one of {', '.join(OBJECTIVES)}"
        )
    best = _int(search, "best", 1, 50, 5)
    params = _params(_table(raw, "params"), kind)
    groups = _groups(raw.get("groups", {"all": ["*"]}))
    walk = _walk(_table(raw, "walk_forward"))
    spec = Spec(
        path,
        base,
        [str(folder / d) for d in data],
        layout,
        kind,
        samples,
        seed,
        objective,
        best,
        params,
        groups,
        walk,
        raw,
    )
    # Each value in turn, the other keys at their first, so that an error names the key and value.
    first = {p.path: p.values[0] if p.values else p.low for p in params}
    for p in params:
        for v in p.values or (p.low, p.high):
            config_for(spec, {**first, p.path: v}, f"params.{p.path} = {_short(v)}")
    return spec


def _base(value: Any, folder: Path) -> dict[str, Any]:
    if isinstance(value, dict):
        return copy.deepcopy(value)
    if not isinstance(value, str):
        raise SpecError(
            "sweep spec key config: expected a config file's path or inline tables ([config.risk])"
        )
    file = folder / value
    try:
        base = tomllib.loads(file.read_text())
    except OSError as e:
        raise SpecError(f"sweep spec key config: {file} cannot be read: {e.strerror or e}") from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise SpecError(f"sweep spec key config: {file} is not valid TOML: {e}") from None
    return base


def _table(raw: dict[str, Any], key: str) -> dict[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise SpecError(f"sweep spec key {key}: expected a table ([{key}])")
    return value


def _known(table: dict[str, Any], name: str, keys: tuple[str, ...]) -> None:
    unknown = sorted(set(table) - set(keys))
    if unknown:
        raise SpecError(f"sweep spec key {name}.{unknown[0]} is unknown; known in {name}: {', '.join(keys)}")


def _int(table: dict[str, Any], key: str, lo: int, hi: int, default: int | None) -> int:
    name = f"search.{key}"
    if key not in table:
        if default is None:
            raise SpecError(f"sweep spec key {name} is missing: a random search needs it, e.g. {key} = 100")
        return default
    v = table[key]
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise SpecError(f"sweep spec key {name}: expected an integer in [{lo}, {hi}], got {_short(v)}")
    return v


def _params(table: dict[str, Any], kind: str) -> list[Param]:
    out: list[Param] = []

    def walk(node: dict[str, Any], prefix: str) -> None:
        for k, v in node.items():
            path = f"{prefix}{k}"
            if isinstance(v, dict) and not ({"low", "high"} & set(v)):
                walk(v, f"{path}.")
            else:
                out.append(_param(path, v, kind))

    walk(table, "")
    return out


def _param(path: str, v: Any, kind: str) -> Param:
    key = f"sweep spec key params.{path}"
    if isinstance(v, list):
        if not v:
            raise SpecError(f"{key}: an empty list leaves nothing to try")
        return Param(path, tuple(v))
    if isinstance(v, dict):
        if kind != "random":
            raise SpecError(f"{key}: a range ({{low, high}}) is for a random search; a grid lists its values")
        unknown = sorted(set(v) - {"low", "high", "log"})
        if unknown:
            raise SpecError(f"{key}.{unknown[0]} is unknown; a range has low, high and log")
        low, high, log = v.get("low"), v.get("high"), v.get("log", False)
        if not all(isinstance(x, int | float) and not isinstance(x, bool) for x in (low, high)):
            raise SpecError(f"{key}: a range needs numbers low < high, e.g. {{low = 0.001, high = 0.01}}")
        assert isinstance(low, int | float) and isinstance(high, int | float)
        if not math.isfinite(low) or not math.isfinite(high) or not low < high:
            raise SpecError(f"{key}: a range needs numbers low < high, e.g. {{low = 0.001, high = 0.01}}")
        if not isinstance(log, bool) or (log and low <= 0):
            raise SpecError(f"{key}.log: true or false; a log scale needs low > 0")
        return Param(path, (), low, high, log, isinstance(low, int) and isinstance(high, int))
    raise SpecError(
        f"{key}: expected a list of values to try"
        f"{' or a range {low, high}' if kind == 'random' else ''}, got {_short(v)}"
    )


def _groups(table: Any) -> dict[str, list[str]]:
    if not isinstance(table, dict) or not table:
        raise SpecError('sweep spec key groups: expected a table of symbol groups, e.g. majors = ["EURUSD"]')
    for name, patterns in table.items():
        if isinstance(patterns, str):
            table[name] = patterns = [patterns]
        if (
            not isinstance(patterns, list)
            or not patterns
            or not all(isinstance(p, str) and p for p in patterns)
        ):
            raise SpecError(f"sweep spec key groups.{name}: expected a list of symbol names or glob patterns")
    return dict(table)


def _walk(table: dict[str, Any]) -> Walk:
    _known(table, "walk_forward", ("train", "test", "step", "count", "test_share"))
    for key in ("train", "test", "step"):
        if key in table:
            duration_ns(table[key], f"walk_forward.{key}")
    count, share = table.get("count"), table.get("test_share", 0.25)
    if count is not None and ("train" in table or "test" in table or "step" in table):
        raise SpecError(
            "sweep spec key walk_forward.count: give count (with test_share) or train and test "
            "(with step), not both"
        )
    if count is None and ("train" in table) != ("test" in table):
        raise SpecError(
            'sweep spec key walk_forward.test: train and test go together, e.g. train = "90d", test = "30d"'
        )
    if count is not None and (
        not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= 10_000
    ):
        raise SpecError(
            f"sweep spec key walk_forward.count: expected an integer in [1, 10000], got {_short(count)}"
        )
    if not isinstance(share, int | float) or isinstance(share, bool) or not 0 < share < 1:
        raise SpecError(
            f"sweep spec key walk_forward.test_share: expected a number in (0, 1), got {_short(share)}"
        )
    if "train" in table:
        return Walk(table["train"], table["test"], table.get("step", table["test"]))
    return Walk(count=count or 1, test_share=float(share))


def duration_ns(text: Any, key: str) -> int:
    m = _DURATION.fullmatch(text.strip()) if isinstance(text, str) else None
    if m is None or int(m.group(1)) <= 0:
        raise SpecError(
            f'sweep spec key {key}: expected a duration like "30d" (s, m, h, d or w; m: minutes), '
            f"got {_short(text)}"
        )
    return int(m.group(1)) * _UNIT_S[m.group(2)] * NS


# ---- expansion


def points(spec: Spec) -> list[dict[str, Any]]:
    """The parameter points: the whole grid, or the random search's draws (repeats
    dropped), in a fixed order. Each point is checked as a whole config."""
    if spec.kind == "grid":
        out: list[dict[str, Any]] = [{}]
        for p in spec.params:
            out = [{**pt, p.path: v} for pt in out for v in p.values]
            if len(out) > MAX_POINTS:
                raise SpecError(
                    f"sweep spec key params: the grid has more than {MAX_POINTS:,} points; "
                    "narrow it or use a random search"
                )
    else:
        rng = random.Random(spec.seed)  # Python's generator: the same draws on every machine and version
        out, seen = [], set()
        for _ in range(spec.samples):
            pt = {p.path: _draw(rng, p) for p in spec.params}
            key = repr(sorted(pt.items()))
            if key not in seen:
                seen.add(key)
                out.append(pt)
    for pt in out:
        config_for(spec, pt, ", ".join(f"params.{k} = {_short(v)}" for k, v in pt.items()) or "config")
    return out


def _draw(rng: random.Random, p: Param) -> Any:
    if p.values:
        return p.values[rng.randrange(len(p.values))]
    assert p.low is not None and p.high is not None
    if p.integer:
        return rng.randint(int(p.low), int(p.high))
    if p.log:
        return float(math.exp(rng.uniform(math.log(p.low), math.log(p.high))))
    return rng.uniform(p.low, p.high)


def raw_config(spec: Spec, point: dict[str, Any]) -> dict[str, Any]:
    """The base config's tables with the point's keys set (dotted paths)."""
    raw = copy.deepcopy(spec.base)
    for path, value in point.items():
        node = raw
        *parents, last = path.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise SpecError(f"sweep spec key params.{path}: {part} is not a table in the config")
            node = child
        node[last] = copy.deepcopy(value)
    return raw


def config_for(spec: Spec, point: dict[str, Any], what: str) -> Config:
    try:
        return from_dict(raw_config(spec, point))
    except ConfigError as e:
        raise SpecError(f"sweep spec {what}: {e}") from None


def group_symbols(spec: Spec, names: list[str]) -> dict[str, list[str]]:
    """Each group's symbols of the data, in the data's order."""
    out = {}
    for g, patterns in spec.groups.items():
        chosen = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
        if not chosen:
            raise SpecError(
                f"sweep spec key groups.{g}: no symbol of the data matches {', '.join(patterns)} "
                f"(the data has {', '.join(names[:10])}{' ...' if len(names) > 10 else ''})"
            )
        out[g] = chosen
    return out


def windows(walk: Walk, first_ns: int, end_ns: int) -> list[Window]:
    """The walk-forward windows over data from first_ns to end_ns (left out)."""
    span = end_ns - first_ns
    days = span / (86_400 * NS)
    if walk.count:  # whole minutes (whole seconds for windows under an hour): readable bounds
        unit = 60 * NS if span // walk.count >= 3600 * NS else NS
        size = span // walk.count // unit * unit
        test = max(int(size * walk.test_share) // unit * unit, unit)
        if size - test < 1:
            raise SpecError(f"sweep spec key walk_forward.count: {walk.count} windows do not fit the data")
        return [
            Window(
                i,
                (first_ns + i * size, first_ns + (i + 1) * size - test),
                (first_ns + (i + 1) * size - test, first_ns + (i + 1) * size),
            )
            for i in range(walk.count)
        ]
    train = duration_ns(walk.train, "walk_forward.train")
    test = duration_ns(walk.test, "walk_forward.test")
    step = duration_ns(walk.step, "walk_forward.step")
    out: list[Window] = []
    start = first_ns
    while start + train + test <= first_ns + span:
        out.append(Window(len(out), (start, start + train), (start + train, start + train + test)))
        start += step
    if not out:
        raise SpecError(
            f"sweep spec key walk_forward.train: train {walk.train} + test {walk.test} is longer "
            f"than the data ({days:.1f} days)"
        )
    return out


def label(value: Any, param: Param) -> str:
    """A value as a column shows it: numbers and text as they are; a list or table (an
    alternative set of agents) by its place among the values, #1, #2, ..."""
    if isinstance(value, list | dict):
        return f"#{param.values.index(value) + 1}" if value in param.values else "#?"
    return str(value)


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."
