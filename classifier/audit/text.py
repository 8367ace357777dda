"""Untrusted text on its way out, to a terminal or to a spreadsheet.

Registry fields, trial names, file names and anything read from packets are written by someone else.
On a terminal they must not steer it (ANSI/OSC escapes, bidi overrides) nor be read as rich markup
(`[/x]` crashes rich, `[link=...]` hides a hyperlink); in a CSV cell they must not become a formula
(`=HYPERLINK(...)`). Every writer of such text goes through the functions here.
"""

from __future__ import annotations

import re

from rich.markup import escape

# C0, DEL and C1 controls (so no escape sequence can start, whatever the terminal takes for ESC or CSI)
# and the Unicode bidi controls that make text read in another order than it is stored.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # what spreadsheets take for the start of a formula
_NEUTRALISED = re.compile("'*[" + re.escape("".join(FORMULA_START)) + "]")


def printable(text: object) -> str:
    """`text` with every control character written out as a visible escape (`\\x1b`, `\\u202e`, `\\n`):
    the terminal gets nothing to obey, and the reader still sees that something was there."""
    return _CONTROL.sub(lambda m: m[0].encode("unicode_escape").decode("ascii"), str(text))


def shown(text: object) -> str:
    """`printable(text)` with rich markup escaped, for a rich string or table cell (the consoles that
    print them are made with emoji=False, so ':name:' stays text too)."""
    return escape(printable(text))


def csv_cell(value: object) -> object:
    """A CSV cell no spreadsheet runs: text starting like a formula gets a leading "'". Text that starts
    with "'"s before such a character gets one more, so `csv_uncell` can undo exactly this and nothing
    else (numbers are not text and stay as they are)."""
    return "'" + value if isinstance(value, str) and _NEUTRALISED.match(value) else value


def csv_uncell(text: str) -> str:
    """The value `csv_cell` was given: one leading "'" less where it added one."""
    return text[1:] if text.startswith("'") and _NEUTRALISED.match(text, 1) else text
