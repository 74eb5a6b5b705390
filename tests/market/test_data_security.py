"""Data files are untrusted input: symbol names that a terminal, a spreadsheet or markup
could act on are refused at load, and a file cannot make a load allocate without bound
(issue 20, items 5 and 9)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sovereign.market.data import MAX_SYMBOLS, DataError, load_csv, load_ticks
from sovereign.market.datafile import header_bytes, load

HOSTILE = [
    "EUR[/bold]USD",  # Rich markup: crashed `data info`
    "\x1b]8;;http://evil/\x1b\\EURUSD\x1b]8;;\x1b\\",  # a hidden OSC-8 link
    "\x1b]0;pwned\x07",  # a terminal title change
    "\x1b[2J",  # a screen clear
    "=HYPERLINK(\"http://evil\",\"x\")",  # a spreadsheet formula
    "$\\frac{$",  # mathtext: aborted the report
    "A" * 300,
    "EUR USD",
    "",
]


@pytest.mark.parametrize("name", HOSTILE)
def test_a_hostile_symbol_name_is_refused_at_load(tmp_path: Path, name: str) -> None:
    f = tmp_path / "t.csv"
    quoted = name.replace('"', '""')
    f.write_text(f'time,symbol,bid,ask\n2026-01-01T00:00:00Z,"{quoted}",1.0,1.1\n2026-01-01T00:00:01Z,EURUSD,1.0,1.1\n')
    with pytest.raises(DataError) as e:
        load_csv(f)
    assert "\x1b" not in str(e.value) and len(str(e.value)) < 300
    skipped = load_csv(f, bad_rows="skip")  # skipped rows are reported, not loaded
    assert skipped.names == ["EURUSD"] and len(skipped.issues) == 1


def test_an_mt5_file_name_and_a_sovdata_header_are_checked_too(tmp_path: Path) -> None:
    f = tmp_path / "EUR$USD_ticks.csv"
    f.write_text("<DATE>\t<TIME>\t<BID>\t<ASK>\n2026.01.01\t00:00:00\t1.0\t1.1\n")
    with pytest.raises(DataError, match="file name gives the symbol"):
        load_csv(f, "mt5")
    bad = tmp_path / "x.sovdata"
    bad.write_bytes(header_bytes({"kind": "ticks", "symbols": ["\x1b[2J"], "rows": 0}))
    with pytest.raises(DataError, match="header's symbol"):
        load([str(bad)])


def test_symbols_past_the_limit_are_refused_before_they_are_allocated(tmp_path: Path) -> None:
    f = tmp_path / "many.csv"
    rows = "".join(f"2026-01-01T00:00:00Z,S{i},1.0,1.1\n" for i in range(MAX_SYMBOLS + 5))
    f.write_text("time,symbol,bid,ask\n" + rows)
    for policy in ("refuse", "skip"):  # not a bad row to skip: the whole file is refused
        with pytest.raises(DataError, match=f"more than {MAX_SYMBOLS} symbols"):
            load_csv(f, bad_rows=policy)
    parts = [tmp_path / f"p{k}.csv" for k in range(2)]
    half = MAX_SYMBOLS // 2 + 1
    for k, p in enumerate(parts):  # each file within the limit, the two together past it
        p.write_text("time,symbol,bid,ask\n" + "".join(
            f"2026-01-01T00:00:00Z,F{k}S{i},1.0,1.1\n" for i in range(half)))  # fmt: skip
    with pytest.raises(DataError, match=f"more than {MAX_SYMBOLS} symbols"):
        load([str(p) for p in parts])
    with pytest.raises(DataError, match=f"more than {MAX_SYMBOLS} symbols"):
        load_ticks([str(p) for p in parts])


def test_data_import_replaces_a_planted_symlink_and_never_writes_through_it(tmp_path: Path) -> None:
    from sovereign.market.datafile import open_file, write

    src = tmp_path / "t.csv"
    src.write_text("time,symbol,bid,ask\n2026-01-01T00:00:00Z,EURUSD,1.0,1.1\n")
    victim = tmp_path / "victim"
    victim.write_text("untouched")
    out = tmp_path / "out.sovdata"
    (tmp_path / ".out.sovdata.tmp").symlink_to(victim)  # the old predictable temporary name
    out.symlink_to(victim)
    write(out, load([str(src)]))
    assert victim.read_text() == "untouched" and not out.is_symlink()
    assert open_file(out).names == ["EURUSD"]
