"""Config: defaults, the example file, and a clear error naming the key for bad input."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from sovereign.config import Config, ConfigError, from_dict, load, tomllib

EXAMPLE = Path(__file__).parent.parent / "systemd" / "sovereign.toml"


def test_no_file_means_the_embedded_defaults() -> None:
    cfg = load(None)
    assert (cfg.feed.kind, cfg.broker.kind, cfg.feed.symbols, cfg.system.state_dir) == (
        "sim", "paper", 100, "state")


def test_the_example_file_documents_exactly_the_defaults() -> None:
    assert load(EXAMPLE) == Config()


def test_a_partial_file_overrides_only_what_it_names(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('[risk]\nmax_drawdown = 0.2\n[feed]\nsymbols = 5\n[system]\ncores = [1, 2]\n')
    cfg = load(f)
    assert (cfg.risk.max_drawdown, cfg.feed.symbols, cfg.system.cores) == (0.2, 5, (1, 2))
    assert cfg.risk.risk_per_trade == Config().risk.risk_per_trade


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"risk": {"max_drawdown": 1.5}}, r"risk.max_drawdown: 1.5 is not in \(0, 1\]"),
        ({"risk": {"max_drawdown": 0}}, r"risk.max_drawdown: 0.0 is not in \(0, 1\]"),
        ({"risk": {"max_drawdown": float("nan")}}, "risk.max_drawdown: nan is not in"),
        ({"risk": {"max_drawdonw": 0.1}}, "risk.max_drawdonw is unknown; known in risk: risk_per_trade"),
        ({"riskk": {}}, "riskk is unknown; known in the top level"),
        ({"risk": 3}, "config key risk: expected a table"),
        ({"feed": {"kind": "csv"}}, "feed.kind: a string of 3 characters is not one of 'sim', 'replay'"),
        ({"feed": {"symbols": "5"}}, "feed.symbols: expected an integer, got a string of 1 characters"),
        ({"feed": {"symbols": True}}, "feed.symbols: expected an integer, got True"),
        ({"feed": {"symbols": 2.5}}, "feed.symbols: expected an integer, got 2.5"),
        ({"system": {"cores": [1, "a"]}}, "system.cores: expected a list of integers"),
        ({"system": {"cores": 3}}, "system.cores: expected a list of integers, got 3"),
        ({"feed": {"kind": "replay"}}, "feed.files: a replay feed needs at least one file"),
        ({"broker": {"kind": "mt5"}}, "mt5.bridge: broker.kind = 'mt5' needs the bridge file's absolute"),
        ({"broker": {"kind": "mt5"}, "mt5": {"bridge": "/srv/b.sov"}}, "mt5.magic: broker.kind = 'mt5'"),
        ({"broker": {"kind": "mt5"}, "mt5": {"bridge": "/dev/shm/b.sov", "magic": 7}}, "not under /dev/shm"),
        ({"broker": {"kind": "mt5"}, "mt5": {"bridge": "/srv/b.sov", "magic": 7}}, "mt5.symbols: broker"),
        ({"broker": {"kind": "mt5"}, "mt5": {"bridge": "/srv/b.sov", "magic": 7, "symbols": ["EURUSD"],
                                             "symbol_map": {"GBPUSD": "GBPUSD.r"}}},
         "mt5.symbol_map.GBPUSD: not one of mt5.symbols"),
        ({"mt5": {"symbol_map": {"EURUSD": 5}}}, "mt5.symbol_map.EURUSD: expected a string"),
        ({"symbols": {"min_lot": 5.0, "max_lot": 1.0}}, "symbols.min_lot: 5.0 is above symbols.max_lot"),
        ({"risk": {"daily_loss_limit": 0.5, "max_drawdown": 0.1}}, "risk.daily_loss_limit: 0.5 is above"),
    ],
)
def test_bad_values_name_the_key(raw: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        from_dict(raw)


def test_unreadable_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[risk\nmax_drawdown = ")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load(bad)
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="cannot be read"):
        load(binary)


def test_a_sim_start_outside_the_ticks_window_is_refused() -> None:
    from sovereign.core import AgentPool

    for start in ("1999-12-31T23:59:59", "2200-01-01T00:00:00", "1970-01-01T00:00:01"):
        with pytest.raises(ConfigError, match=r"outside 2000-01-01 \.\. 2200-01-01"):
            from_dict({"feed": {"start": start}})
    assert from_dict({"feed": {"start": "2000-01-01T00:00:00"}}).feed.start
    from sovereign.config import sim_start_ns

    assert sim_start_ns("2000-01-01T00:00:00") == AgentPool.MIN_TIME_NS


def test_an_mt5_broker_without_its_section_is_refused_before_anything_starts(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    """`kind = "mt5"` without a whole [mt5] section must not pass the check nor start
    anything: an engine that cannot name its terminal must not pretend to trade."""
    from sovereign.cli import entry

    f = tmp_path / "c.toml"
    f.write_text(f'[broker]\nkind = "mt5"\n[system]\nstate_dir = "{tmp_path / "state"}"\n')
    assert entry(["config", "check", str(f)]) == 2
    assert entry(["run", "--config", str(f)]) == 2
    assert "mt5.bridge: broker.kind = 'mt5' needs the bridge file's absolute path" in capsys.readouterr().err
    assert not (tmp_path / "state").exists()



def test_the_example_file_names_every_key() -> None:
    """Every key of every section is in the example: the file is the reference an operator
    reads (a key missing there is a setting nobody finds). Tables of names (symbol
    overrides, the MT5 symbol map) are shown as comments: they have no default entry; so
    are arrays of tables ([[agents.sets]]), as a commented header."""
    text = EXAMPLE.read_text()
    shown = tomllib.loads(text)
    missing = []
    for section in dataclasses.fields(Config):
        defaults = getattr(Config(), section.name)
        table = shown.get(section.name, {})
        for key in dataclasses.fields(defaults):
            value = getattr(defaults, key.name)
            header = f"# [[{section.name}.{key.name}]]"
            if value == () and "tuple[AgentSet" in str(key.type) and header in text:
                continue  # an array of tables
            if key.name not in table and not isinstance(value, dict):
                missing.append(f"{section.name}.{key.name}")
    assert not missing, f"not in {EXAMPLE.name}: {', '.join(missing)}"
