"""Agents a trader configures ([[agents.sets]], issue 25): validation naming the key and the
range (the core's own), globs, grids and overrides, 1000 agents from three lines, `config
check`'s table, and the same agents in a backtest, a live system and its replay."""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from sovereign import presets
from sovereign.cli import entry
from sovereign.config import AGENT_PARAMS, Config, ConfigError, from_dict, load
from sovereign.core import AgentPool
from sovereign.engine.worker import build_pool, restore, save
from sovereign.market.datafile import load as load_data
from sovereign.market.feeds import sim_names
from sovereign.presets import DEFAULT_AGENT_SETS, agent_table, agents_for, check_sets, count_agents
from sovereign.research import backtest as engine
from sovereign.research.replay import load_session
from sovereign.state.store import StateStore
from tests.helpers import NS, T0, random_bars, ticks

CLI = [sys.executable, "-m", "sovereign.cli"]
NAMES = ["EURUSD", "EURGBP", "GBPUSD", "USDJPY", "XAUUSD"]


def agents(sets: list[dict[str, Any]], preset: str = "none") -> dict[str, Any]:
    return {"agents": {"preset": preset, "sets": sets}}


def one(**keys: Any) -> dict[str, Any]:
    """A raw config with one set: symbols ["*"] and timeframe H1 unless given."""
    return agents([{"symbols": ["*"], "timeframe": "H1", **keys}])


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (one(timeframe="H2"), r"agents\.sets\[1\]\.timeframe: a string of 2 characters is not one of "
                              r"M1 M5 M15 M30 H1 H4 D1 W1, or a number of seconds in \[1, 604800\]"),
        (one(timeframe=0), r"agents\.sets\[1\]\.timeframe: 0 is not one of .* seconds in \[1, 604800\]"),
        (one(timeframe=604_801), r"agents\.sets\[1\]\.timeframe: 604801 is not"),
        (one(timeframe=True), r"agents\.sets\[1\]\.timeframe: True is not"),
        (one(timeframe=60.5), r"agents\.sets\[1\]\.timeframe: 60\.5 is not"),
        (one(timeframe=[]), r"agents\.sets\[1\]\.timeframe: an empty list"),
        (agents([{"symbols": ["*"]}]), r"agents\.sets\[1\]\.timeframe is missing: a set needs one"),
        (agents([{"timeframe": "H1"}]), r"agents\.sets\[1\]\.symbols is missing: a set needs one"),
        (one(symbols=[]), r"agents\.sets\[1\]\.symbols: expected a list of symbol names or glob patterns"),
        (one(symbols=["EUR*", 3]), r"agents\.sets\[1\]\.symbols: item 2 \(3\) is not a symbol name or glob"),
        (one(symbols=["EUR USD"]), r"agents\.sets\[1\]\.symbols: item 1 .* is not a symbol name"),
        (one(k=17), r"agents\.sets\[1\]\.k: 17 is not in \[1, 16\]"),
        (one(k=0), r"agents\.sets\[1\]\.k: 0 is not in \[1, 16\]"),
        (one(k=2.5), r"agents\.sets\[1\]\.k: expected an integer \(or a list of them\), got 2\.5"),
        (one(k=True), r"agents\.sets\[1\]\.k: expected an integer"),
        (one(k="3"), r"agents\.sets\[1\]\.k: expected an integer .*got a string of 1 characters"),
        (one(k=[2, 3, 40]), r"agents\.sets\[1\]\.k: 40 is not in \[1, 16\]"),
        (one(atr_n=10_001), r"agents\.sets\[1\]\.atr_n: 10001 is not in \[1, 10000\]"),
        (one(m=129), r"agents\.sets\[1\]\.m: 129 is not in \[1, 128\]"),
        (one(max_levels=65), r"agents\.sets\[1\]\.max_levels: 65 is not in \[1, 64\]"),
        (one(tol_mult=0), r"agents\.sets\[1\]\.tol_mult: 0\.0 is not in \(0, 100\]"),
        (one(surge_rv=-1.0), r"agents\.sets\[1\]\.surge_rv: -1\.0 is not in \(0, 1e\+06\]"),
        (one(wick=1.0), r"agents\.sets\[1\]\.wick: 1\.0 is not in \[0, 1\)"),
        (one(min_conviction=1.5), r"agents\.sets\[1\]\.min_conviction: 1\.5 is not in \[0, 1\]"),
        (one(min_conviction=math.nan), r"agents\.sets\[1\]\.min_conviction: nan is not in \[0, 1\]"),
        (one(weights=[0.5, 0.5, 0.5, 0.5]), r"agents\.sets\[1\]\.weights: \[0\.5, 0\.5, 0\.5, 0\.5\] is not "
                                            r"four numbers in \[0, 1\] that sum to 1"),
        (one(weights=[1.5, -0.5, 0, 0]), r"agents\.sets\[1\]\.weights: .* is not four numbers in \[0, 1\]"),
        (one(weights=[1, 0]), r"agents\.sets\[1\]\.weights: expected four numbers in \[0, 1\]"),
        (one(weights=0.3), r"agents\.sets\[1\]\.weights: expected four numbers"),
        (one(kk=3), r"agents\.sets\[1\]\.kk is unknown; known in a set: symbols, timeframe, atr_n, tol_mult, "
                    r"k, m, surge_rv, max_levels, wick, weights, min_conviction"),
        (one(params=3), r"agents\.sets\[1\]\.params: expected a table"),
        (agents([{"symbols": ["*"], "timeframe": "M5"}, {"symbols": ["*"], "timeframe": "H1", "k": 99}]),
         r"agents\.sets\[2\]\.k: 99 is not in \[1, 16\]"),
        (one(k=list(range(1, 17)), m=list(range(1, 129))), r"agents\.sets\[1\]: its lists make 2,048 agents "
                                                           r"per symbol, more than 1000"),
        ({"agents": {"preset": "fast"}},
         r"agents\.preset: a string of 4 characters is not one of 'default', 'none'"),
        ({"agents": {"preset": "none"}},
         r"agents\.preset: 'none' with no \[\[agents\.sets\]\] leaves no agent"),
        ({"agents": {"sets": 3}}, r"agents\.sets: expected \[\[agents\.sets\]\] tables, got 3"),
        ({"agents": {"sets": [3]}}, r"agents\.sets\[1\]: expected a table, got 3"),
    ],
)
def test_a_bad_set_is_refused_naming_its_key_and_the_allowed_range(raw: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        from_dict(raw)


def _core_takes(name: str, value: Any) -> bool:
    try:
        AgentPool().add_agent(0, 60, **{name: value})
    except ValueError:
        return False
    return True


def _config_takes(name: str, value: Any) -> bool:
    try:
        from_dict(one(**{name: value}))
    except ConfigError:
        return False
    return True


@pytest.mark.parametrize("name", [n for n in AGENT_PARAMS if n != "weights"])
def test_the_config_refuses_exactly_what_the_core_refuses(name: str) -> None:
    """At each end of each range, and one step past it, the config and AgentPool.add_agent
    agree (csrc/analyzers/params.hpp), so no set passes the check and fails at start."""
    kind, lo, hi, _, _ = AGENT_PARAMS[name]
    if kind is int:
        values: list[Any] = [int(lo) - 1, int(lo), int(lo) + 1, int(hi) - 1, int(hi), int(hi) + 1, 2**40]
    else:
        values = [np.nextafter(lo, -1.0), lo, np.nextafter(lo, 2.0), np.nextafter(hi, 0.0), hi,
                  np.nextafter(hi, 2e6), math.inf, math.nan]  # fmt: skip
        values = [float(v) for v in values]
    seen = [(v, _core_takes(name, v), _config_takes(name, v)) for v in values]
    assert all(core == config for _, core, config in seen), seen
    assert any(core for _, core, _ in seen) and not all(core for _, core, _ in seen)


def test_weights_are_refused_as_the_core_refuses_them() -> None:
    for w in ([0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0], [0.3, 0.3, 0.3, 0.1 + 1e-10],
              [0.3, 0.3, 0.3, 0.2], [1.0 + 1e-12, 0.0, 0.0, 0.0], [-0.0, 0.5, 0.5, 0.0]):  # fmt: skip
        assert _core_takes("weights", w) == _config_takes("weights", w), w


def test_the_unknown_parameter_list_is_the_cores() -> None:
    with pytest.raises(ValueError, match="known: ") as e:
        AgentPool().add_agent(0, 60, kk=1)
    core = set(str(e.value).split("known: ")[1].split(", "))
    assert core == set(AGENT_PARAMS)


def test_globs_grids_and_overrides_give_each_symbol_its_agents_in_order() -> None:
    cfg = from_dict(agents([
        {"symbols": ["EUR*", "GBPUSD"], "timeframe": "H1", "k": 3, "min_conviction": 0.5},
        {"symbols": ["*JPY", "eur*"], "timeframe": ["M5", 7200], "atr_n": [7, 21]},  # case-sensitive
        {"symbols": "X?U[A-Z]SD", "timeframe": "D1",
         "weights": [[0.4, 0.2, 0.2, 0.2], [0.25, 0.25, 0.25, 0.25]]},
    ]))  # fmt: skip
    got = agents_for(cfg, NAMES)
    assert [(NAMES[s], tf) for s, tf, _ in got] == [
        ("EURUSD", 3600), ("EURGBP", 3600), ("GBPUSD", 3600),
        ("USDJPY", 300), ("USDJPY", 7200), ("USDJPY", 300), ("USDJPY", 7200),
        ("XAUUSD", 86_400), ("XAUUSD", 86_400),
    ]  # fmt: skip
    assert got[0][2] == {"k": 3, "min_conviction": 0.5}
    assert [p["atr_n"] for _, _, p in got[3:7]] == [7, 7, 21, 21]
    pool = build_pool(cfg, NAMES, range(len(NAMES)))
    assert len(pool) == len(got) == 9
    first = pool.agent_config(0)
    default = AgentPool()
    default.add_agent(0, 3600)
    plain = default.agent_config(0)
    # the set's keys replace the defaults; the others keep theirs (DESIGN.md section 3)
    assert (first["k"], first["min_conviction"], first["timeframe_s"]) == (3, 0.5, 3600)
    assert {k: v for k, v in first.items() if k not in ("k", "min_conviction", "symbol")} == {
        k: v for k, v in plain.items() if k not in ("k", "min_conviction", "symbol")}  # fmt: skip
    seventh = pool.agent_config(7)
    assert tuple(seventh["weights"]) == (0.4, 0.2, 0.2, 0.2) and seventh["symbol"] == 4
    # the preset's ten come first on every symbol, then the sets'
    both = dataclasses.replace(cfg, agents=dataclasses.replace(cfg.agents, preset="default"))
    with_preset = agents_for(both, NAMES, [0])
    assert [(tf, p) for _, tf, p in with_preset[:10]] == DEFAULT_AGENT_SETS and len(with_preset) == 11
    # one worker's symbols alone: the same agents as in the whole list
    assert agents_for(cfg, NAMES, [3, 4]) == [a for a in got if a[0] in (3, 4)]


def test_a_saved_config_reads_back_as_the_same_sets() -> None:
    cfg = from_dict(agents([{"symbols": ["EUR*"], "timeframe": ["H1", 120], "k": [2, 3],
                             "weights": [0.4, 0.2, 0.2, 0.2]}], preset="default"))  # fmt: skip
    saved = orjson.loads(orjson.dumps(dataclasses.asdict(cfg)))  # as the recording's header and state keep it
    assert from_dict(saved) == cfg
    assert agents_for(from_dict(saved), NAMES) == agents_for(cfg, NAMES)


def test_three_lines_give_a_thousand_agents_that_trade(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('[agents]\npreset = "none"\n'
                 '[[agents.sets]]\nsymbols = ["*"]\n'
                 'timeframe = ["M1", "M5", "M15", "M30", "H1", 120, 180, 240, 600, 1200]\n')  # fmt: skip
    cfg = load(f)
    names = sim_names(100)
    assert len(agents_for(cfg, names)) == 1000
    pool = build_pool(cfg, names, range(100))
    assert len(pool) == 1000
    from sovereign.market.sim import simulate_ticks

    signals = pool.on_ticks(simulate_ticks(100, 3000, seed=4, mean_interval_s=5.0))
    assert len(signals) and len(np.unique(signals["agent"])) > 100


def test_the_reference_reads_the_same_sets_and_agrees_with_the_core() -> None:
    """The pure-Python reference (research/reference.py) built from the config by the same
    function makes the core's signals."""
    from sovereign.market.sim import simulate_ticks
    from sovereign.presets import add_agents
    from sovereign.research.reference import ReferencePool

    cfg = from_dict(agents([{"symbols": ["SIM00[02]"], "timeframe": ["M1", "M5"], "k": [2, 4], "wick": 0.3,
                             "weights": [0.4, 0.2, 0.2, 0.2], "min_conviction": 0.4}]))  # fmt: skip
    names = sim_names(3)
    pool, ref = AgentPool(), ReferencePool()
    assert add_agents(pool, cfg, names) == add_agents(ref, cfg, names) == 8
    flow = simulate_ticks(3, 8000, seed=9, mean_interval_s=2.0)
    got = np.concatenate([pool.on_ticks(flow), pool.flush()])
    want = np.concatenate([ref.on_ticks(flow), ref.flush()])
    assert len(want) > 10 and set(want["symbol"].tolist()) == {0, 2}
    assert np.array_equal(got, want)


def test_check_sets_refuses_a_name_that_is_no_symbol_and_warns_of_an_empty_wildcard(
        monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    cfg = from_dict(agents([{"symbols": ["EURUSD", "EURUSX"], "timeframe": "H1"}]))
    with pytest.raises(ConfigError, match=r"agents\.sets\[1\]\.symbols: no symbol is named 'EURUSX'; the "
                                          r"symbols are EURUSD, EURGBP, GBPUSD, USDJPY, XAUUSD"):  # fmt: skip
        check_sets(cfg, NAMES)
    cfg = from_dict(agents([{"symbols": ["EUR*"], "timeframe": "H1"},
                            {"symbols": ["BTC*"], "timeframe": "H1"}]))  # fmt: skip
    assert check_sets(cfg, NAMES) == ["config key agents.sets[2].symbols: 'BTC*' matches no symbol "
                                      "(of EURUSD, EURGBP, GBPUSD, USDJPY, XAUUSD)"]  # fmt: skip
    nothing = from_dict(agents([{"symbols": ["BTC*"], "timeframe": "H1"}]))
    with pytest.raises(ConfigError, match="no set matches any symbol, and preset = 'none': no agent"):
        check_sets(nothing, NAMES)
    assert check_sets(Config(), NAMES) == []
    many = from_dict(agents([{"symbols": ["*"], "timeframe": list(range(60, 60 * 41, 60)),
                              "k": list(range(1, 17))}]))  # fmt: skip
    assert count_agents(many, sim_names(2000)) == 2000 * 40 * 16 == len(agents_for(many, sim_names(2000)))
    assert presets.agent_budget() > 100_000  # half of any machine this runs on
    monkeypatch.setattr(presets, "agent_budget", lambda: 1_000_000)
    with pytest.raises(ConfigError, match=r"agents\.sets: 1,280,000 agents on 2,000 symbols need about "
                                          r"9\.8 GiB, more than half this machine's memory "
                                          r"\(at most 1,000,000 agents\)"):  # fmt: skip
        check_sets(many, sim_names(2000))


def test_config_check_prints_each_symbols_agents_grouped(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    f = tmp_path / "c.toml"
    f.write_text('[feed]\nsymbols = 120\n[agents]\n'
                 '[[agents.sets]]\nsymbols = ["SIM1*", "XAU*"]\n'
                 'timeframe = ["H4", 7200]\nk = [2, 3]\n')  # fmt: skip
    assert entry(["config", "check", str(f)]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[1] == "agents: 1,280 on 120 symbols (per symbol, by timeframe)"
    assert lines[2].split() == ["symbols", "M1", "M5", "M15", "7200s", "H4", "total"]
    assert lines[3].split() == ["SIM000,", "SIM001", "and", "98", "more", "4", "4", "2", "-", "-", "10"]
    assert lines[4].split() == ["SIM100,", "SIM101", "and", "18", "more", "4", "4", "2", "2", "2", "14"]
    assert len(lines) == 5
    assert "warning: config key agents.sets[1].symbols: 'XAU*' matches no symbol" in err
    assert entry(["config", "check", str(f), "--json"]) == 0
    doc = orjson.loads(capsys.readouterr().out)
    assert doc["agents"]["total"] == 1280 and doc["agents"]["rows"][1]["agents"] == {
        "M1": 4, "M5": 4, "M15": 2, "7200s": 2, "H4": 2}  # fmt: skip
    assert len(doc["agents"]["rows"][1]["symbols"]) == 20
    f.write_text('[agents]\n[[agents.sets]]\nsymbols = ["EURUSD"]\ntimeframe = "H1"\n')
    assert entry(["config", "check", str(f)]) == 2
    err = capsys.readouterr().err
    assert "agents.sets[1].symbols: no symbol is named 'EURUSD'; the symbols are SIM000" in err
    f.write_text('[agents]\n[[agents.sets]]\nsymbols = ["*"]\ntimeframe = "H1"\nk = 40\n')
    assert entry(["config", "check", str(f), "--json"]) == 2
    assert "agents.sets[1].k: 40 is not in [1, 16]" in orjson.loads(capsys.readouterr().out)["error"]


def test_agent_table_groups_identical_rows() -> None:
    cfg = from_dict(agents([{"symbols": ["EUR*"], "timeframe": "H1"}]))
    rows = [(["EURUSD", "EURGBP"], [1]), (["GBPUSD", "USDJPY", "XAUUSD"], [0])]
    assert agent_table(cfg, NAMES) == ([3600], rows)


def test_a_worker_restarted_with_other_agents_refuses_its_snapshot(tmp_path: Path) -> None:
    """A snapshot restores only into the same agents: a changed set starts the worker cold
    with a journal line saying why, never with another agent's state."""
    names = ["EURUSD", "GBPUSD"]
    before = from_dict(agents([{"symbols": ["*"], "timeframe": "M1"}], preset="default"))
    after = from_dict(agents([{"symbols": ["*"], "timeframe": "M1", "k": 4}], preset="default"))
    pool = build_pool(before, names, [0, 1])
    pool.on_ticks(ticks([(T0 + i * NS * 7, 1.1 + i % 13 * 1e-4, 1.1002 + i % 13 * 1e-4) for i in range(500)]))
    with StateStore(tmp_path / "state") as store:
        save(store, pool, 0)
        same = build_pool(before, names, [0, 1])
        assert restore(store, same, 0).startswith("restored snapshot (500 ticks)")
        added = from_dict(agents([{"symbols": ["*"], "timeframe": ["M1", "H1"]}], preset="default"))
        more = build_pool(added, names, [0, 1])
        assert "it holds 22 agents, this pool has 24" in restore(store, more, 0)
        changed = build_pool(after, names, [0, 1])
        said = restore(store, changed, 0)
        events = store.read(lambda t: [v for _, v in t.items("journal")])
    assert said.startswith("snapshot refused (") and "agent 10 differs" in said
    assert changed.stats()["ticks"] == 0
    assert events[-1]["event"] == "snapshot_refused" and "agent 10 differs" in events[-1]["why"]
    assert "the config's agents changed since it was taken" in events[-1]["why"]


def _h1_csv(path: Path, n: int = 3000) -> Path:
    b = random_bars(n, seed=5, tf=3600)
    rows = ["time,symbol,open,high,low,close,volume"]
    for r in b:
        t = np.datetime64(int(r["ts_ns"]), "ns").astype("datetime64[s]")
        rows.append(f"{t}Z,EURUSD,{r['open'] * 0.011:.6f},{r['high'] * 0.011:.6f},{r['low'] * 0.011:.6f},"
                    f"{r['close'] * 0.011:.6f},{r['volume']:.0f}")  # fmt: skip
    path.write_text("\n".join(rows) + "\n")
    return path


def test_a_backtest_of_h1_bars_trades_with_an_h1_set(tmp_path: Path) -> None:
    """The preset's agents are on M1, M5 and M15: H1 bars give them nothing. A set on H1
    gives signals and trades, through the CLI with the config file as live reads it."""
    market = load_data([str(_h1_csv(tmp_path / "EURUSD_H1.csv"))])
    assert market.kind == "bars"
    preset_only = engine.run(Config(), market)
    assert preset_only.out.n_signals == 0
    h1 = from_dict(agents([{"symbols": ["EUR*"], "timeframe": "H1", "k": [2, 3]}], preset="default"))
    run = engine.run(h1, market)
    assert run.out.n_signals > 10 and len(run.out.fills) > 2
    assert {int(s["agent"]) for s in np.concatenate(run.out.signals or [np.zeros(0)])} <= {10, 11}
    cfg = tmp_path / "c.toml"
    cfg.write_text('[agents]\npreset = "none"\n'
                   '[[agents.sets]]\nsymbols = ["EURUSD"]\ntimeframe = "H1"\nk = [2, 3]\n')  # fmt: skip
    r = subprocess.run([*CLI, "backtest", str(tmp_path / "EURUSD_H1.csv"), "--config", str(cfg),
                        "--json", "--out", str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr
    doc = orjson.loads(r.stdout)
    assert doc["run"]["signals"] == run.out.n_signals and doc["metrics"]["trades"] > 0


def test_a_live_system_runs_the_sets_agents_and_its_replay_agrees(tmp_path: Path) -> None:
    """A small system: 6 symbols, 2 workers, a set on four of them (preset none). The
    supervisor journals the count, each worker says its own, and the recorded session's
    replay (which reads the sets from the recording's config) reproduces it."""
    cfg = tmp_path / "sovereign.toml"
    cfg.write_text(f'[system]\nstate_dir = "{tmp_path / "state"}"\nworkers = 2\n'
                   '[feed]\nsymbols = 6\nmax_ticks = 400000\n[agents]\npreset = "none"\n'
                   '[[agents.sets]]\nsymbols = ["SIM00[0-3]"]\ntimeframe = ["M1", "M5"]\nk = [2, 3]\n'
                   'min_conviction = 0.4\n')  # fmt: skip
    r = subprocess.run([*CLI, "run", "--config", str(cfg)], capture_output=True, text=True, timeout=300,
                       env={**os.environ})  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert "sovereign: started workers=2 symbols=6" in r.stdout and "agents=16 " in r.stdout, r.stdout
    # worker 0 has SIM000, SIM002, SIM004; worker 1 SIM001, SIM003, SIM005: four agents per symbol
    assert "worker-0: 8 agents (1 of its 3 symbols without one)" in r.stdout, r.stdout
    assert "worker-1: 8 agents (1 of its 3 symbols without one)" in r.stdout, r.stdout
    with StateStore(tmp_path / "state") as store:
        started = store.read(lambda t: [v for _, v in t.items("journal") if v["event"] == "started"])
    assert started[-1]["agents"] == 16
    s = load_session(tmp_path / "state" / "recordings")
    assert s.config.agents.sets[0].symbols == ("SIM00[0-3]",)
    rep = subprocess.run([*CLI, "replay", str(tmp_path / "state" / "recordings"), "--config", str(cfg),
                          "--json"], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert rep.returncode == 0, rep.stderr
    diff = orjson.loads(rep.stdout)
    assert diff["identical"] and not diff["problems"], diff["problems"]
    assert diff["signals"]["live"] > 20 and diff["signals"]["matched"] == diff["signals"]["live"]
