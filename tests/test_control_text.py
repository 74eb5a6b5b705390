"""Free text (an operator's reason, a name from a data file) as logged and shown: bounded,
and every character that could start a new line or steer a terminal made visible."""

from __future__ import annotations

from sovereign.text import MAX_TEXT, clean


def test_control_characters_become_visible_escapes() -> None:
    forged = "maintenance\nsovereign: stopped clean=True\r\x1b[2K\x1b]0;title\x07\x00\x7f\x85\u2028\u202e"
    out = clean(forged)
    assert out == ("maintenance\\nsovereign: stopped clean=True\\r\\x1b[2K\\x1b]0;title\\x07\\x00\\x7f"
                   "\\x85\\u2028\\u202e")  # fmt: skip
    assert out.isprintable()


def test_printable_text_is_unchanged_whatever_its_script() -> None:
    for text in ("broker maintenance", "Überprüfung der Marge: 日本円 ±2 %", "a \\n that was typed", ""):
        assert clean(text) == text


def test_long_text_is_cut_with_a_marker_that_says_how_much() -> None:
    out = clean("x" * 60_000)
    assert len(out) <= MAX_TEXT and out.startswith("x" * 100) and out.endswith("…[+59,816 chars]")
    assert len(clean("é" * 500, limit=50)) <= 50
    escapes = clean("\x1b" * 100, limit=30)  # an escape is never cut in half
    assert len(escapes) <= 30 and escapes.split("…")[0] == "\\x1b" * 4


def test_clean_is_idempotent_so_text_cleaned_at_input_is_shown_as_it_was_stored() -> None:
    for text in ("a\nb\x1b[0m", "y" * 1000, "\u2028" * 300, "plain"):
        once = clean(text)
        assert clean(once) == once


def test_anything_is_shown_as_its_text() -> None:
    assert clean(42) == "42" and clean(None) == "None" and clean(b"\n") == "b'\\n'"
