"""The agents a config gives each symbol: the preset's (the default ten per symbol, 100
symbols x 10 = the 1000 agents the system runs by default, spread over M1, M5 and M15)
and then each [[agents.sets]] table's. Live workers, backtests and replays all build
their pools through agents_for, so they run the same agents in the same order (agent ids
are dense, in that order: a snapshot restores only into the same list)."""

from __future__ import annotations

import fnmatch
import math
import os
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from sovereign.config import TIMEFRAMES, AgentSet, Config, ConfigError

DEFAULT_AGENT_SETS: list[tuple[int, dict[str, Any]]] = [
    (60, {}),
    (60, {"k": 2, "atr_n": 7, "min_conviction": 0.45}),
    (60, {"k": 5, "m": 40, "max_levels": 32}),
    (300, {}),
    (300, {"k": 2, "wick": 0.3, "min_conviction": 0.4}),
    (300, {"tol_mult": 0.5, "max_levels": 8}),
    (900, {}),
    (900, {"k": 4, "atr_n": 20, "m": 10}),
    (60, {"weights": (0.25, 0.25, 0.25, 0.25), "min_conviction": 0.5}),
    (300, {"k": 1, "atr_n": 5, "m": 5}),
]
PRESETS: dict[str, list[tuple[int, dict[str, Any]]]] = {"default": DEFAULT_AGENT_SETS, "none": []}

Agent = tuple[int, int, dict[str, Any]]  # (symbol id, timeframe in seconds, parameters)
AGENT_BYTES = 8 << 10  # an agent's memory in a pool, about (AgentPool.memory_bytes / len)


class _Pool(Protocol):
    def add_agent(self, symbol: int, timeframe_s: int = 3600, **params: Any) -> int: ...


def matches(agent_set: AgentSet, name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in agent_set.symbols)


def agents_for(config: Config, names: Sequence[str], symbols: Iterable[int] | None = None) -> list[Agent]:
    """The agents of `symbols` (ids: indices into `names`, the system's symbols by id;
    default all of them), symbol by symbol: the preset's, then each set's in the file's
    order."""
    preset = PRESETS[config.agents.preset]
    grids = [(a, a.agents()) for a in config.agents.sets]
    out: list[Agent] = []
    for s in range(len(names)) if symbols is None else symbols:
        out += [(s, tf, params) for tf, params in preset]
        out += [(s, tf, params) for a in grids if matches(a[0], names[s]) for tf, params in a[1]]
    return out


def add_agents(pool: _Pool, config: Config, names: Sequence[str],
               symbols: Iterable[int] | None = None) -> int:  # fmt: skip
    """Adds agents_for(config, names, symbols) to `pool` (AgentPool or the reference); how many."""
    agents = agents_for(config, names, symbols)
    for s, tf, params in agents:
        pool.add_agent(s, tf, **params)
    return len(agents)


def add_default_agents(pool: _Pool, n_symbols: int) -> None:
    """The default ten agents for each of symbols 0..n_symbols-1 (AgentPool or reference)."""
    for sym in range(n_symbols):
        for tf, params in DEFAULT_AGENT_SETS:
            pool.add_agent(sym, tf, **params)


def check_sets(config: Config, names: Sequence[str]) -> list[str]:
    """The sets against the system's symbols, before start. A pattern without a wildcard
    that names no symbol is most likely a typo: ConfigError, showing the symbols there
    are. So is a config that gives no symbol any agent. A wildcard matching nothing may be
    meant (a config shared by accounts with other symbols): returned as a warning."""
    warnings = []
    have = set(names)
    for i, a in enumerate(config.agents.sets):
        key = f"config key agents.sets[{i + 1}].symbols"
        for p in a.symbols:
            if not any(c in p for c in "*?[") and p not in have:
                raise ConfigError(f"{key}: no symbol is named {p!r}; the symbols are {shown_names(names)}")
            if not any(fnmatch.fnmatchcase(n, p) for n in names):
                warnings.append(f"{key}: {p!r} matches no symbol (of {shown_names(names)})")
    n = count_agents(config, names)
    if n > agent_budget():
        raise ConfigError(f"config key agents.sets: {n:,} agents on {len(names):,} symbols need about "
                          f"{n * AGENT_BYTES / 2**30:.1f} GiB, more than half this machine's memory (at most "
                          f"{agent_budget():,} agents); use fewer values or symbols")  # fmt: skip
    if not n:
        raise ConfigError(f"config key agents.sets: no set matches any symbol, and preset = 'none': no agent "
                          f"would trade (the symbols are {shown_names(names)})")  # fmt: skip
    return warnings


def agent_budget() -> int:
    """The most agents this machine runs: half its memory at AGENT_BYTES each. More is a
    grid on too many symbols, refused before anything is built."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2 // AGENT_BYTES


def count_agents(config: Config, names: Sequence[str]) -> int:
    """len(agents_for(config, names)), without making them."""
    n = len(PRESETS[config.agents.preset]) * len(names)
    for a in config.agents.sets:
        grid = len(a.timeframe) * math.prod(len(v) for v in a.params.values())
        n += grid * sum(matches(a, name) for name in names)
    return n


def shown_names(names: Sequence[str], most: int = 12) -> str:
    if len(names) <= most:
        return ", ".join(names) or "none"
    return f"{', '.join(names[:most])}, ... ({len(names)} in all)"


def timeframe_name(seconds: int) -> str:
    return next((n for n, s in TIMEFRAMES.items() if s == seconds), f"{seconds}s")


def agent_table(config: Config, names: Sequence[str]) -> tuple[list[int], list[tuple[list[str], list[int]]]]:
    """How many agents each symbol gets on each timeframe: the timeframes (seconds,
    ascending) and rows of (symbols, counts per timeframe), symbols with identical counts
    in one row, rows in the order of their first symbol."""
    counts: dict[int, dict[int, int]] = {}
    for s, tf, _ in agents_for(config, names):
        counts.setdefault(s, {}).setdefault(tf, 0)
        counts[s][tf] += 1
    timeframes = sorted({tf for per in counts.values() for tf in per})
    rows: dict[tuple[int, ...], list[str]] = {}
    for s, name in enumerate(names):
        rows.setdefault(tuple(counts.get(s, {}).get(tf, 0) for tf in timeframes), []).append(name)
    return timeframes, [(group, list(key)) for key, group in rows.items()]
