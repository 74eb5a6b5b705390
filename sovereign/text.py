"""Free text made safe to log and to show: an operator's reason, a name from a data file, a
broker's message. Such text must not start a new line (a forged log or journal line),
steer a terminal (ANSI escapes) or run to any length.

`clean` shows every character that `str.isprintable` refuses (control characters, ESC,
newlines, DEL, line and paragraph separators, bidirectional overrides) as its Python
escape (`\\n`, `\\x1b`, `\\u2028`), and cuts the text to `limit` characters with a marker
saying how much was left out. Its output is printable and within the limit, so cleaning it
again changes nothing: text cleaned where it comes in (a halt's reason) is shown as
stored, and text that reached the state raw (older journal entries) is cleaned when shown.
A backslash is left as it is, so a typed `\\n` and an escaped newline look alike; what
matters is that neither is a newline.
"""

from __future__ import annotations

from typing import Any

MAX_TEXT = 200  # operator-supplied text: a reason, a name
MAX_FIELD = 1000  # anything else logged or shown (status lines, error messages)


def clean(value: Any, limit: int = MAX_TEXT) -> str:
    """str(value), escaped and cut to at most `limit` characters (see the module doc; a
    limit under about 20 may not hold the marker)."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit and text.isprintable():
        return text
    out: list[str] = []  # one piece per character of text kept
    used = 0
    for ch in text:
        piece = ch if ch.isprintable() else repr(ch)[1:-1]
        if used + len(piece) > limit:
            break
        out.append(piece)
        used += len(piece)
    else:
        return "".join(out)
    while True:  # too long: give back whole pieces until the marker fits
        marker = f"…[+{len(text) - len(out):,} chars]"
        if used + len(marker) <= limit or not out:
            return "".join(out) + marker
        used -= len(out.pop())
