"""Named agent parameter sets: the default ten per symbol (100 symbols x 10 = the 1000
agents the system runs by default), spread over M1, M5 and M15."""

from __future__ import annotations

from typing import Any, Protocol

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


class _Pool(Protocol):
    def add_agent(self, symbol: int, timeframe_s: int = 3600, **params: Any) -> int: ...


def add_default_agents(pool: _Pool, n_symbols: int) -> None:
    """The default ten agents for each of symbols 0..n_symbols-1 (AgentPool or reference)."""
    for sym in range(n_symbols):
        for tf, params in DEFAULT_AGENT_SETS:
            pool.add_agent(sym, tf, **params)
