"""Server text on a terminal, shown as it is: never read as rich markup, emoji codes or terminal controls.

Titles, names, contents, filenames, labels and error messages come from other people. Printed through rich's
defaults, ``[/x]`` raises MarkupError, ``[bold]x`` is styled, ``:smile:`` becomes an emoji; printed raw,
``\\x1b[31m`` recolours the user's terminal (or worse: moves the cursor, rewrites the title bar). So every
console here has markup, emoji codes and highlighting off, and every piece of server text goes through
``visible``: control characters (C0 but newline and tab, DEL, C1) become ``\\xNN`` escapes, shown in reverse
video on a colour terminal so that they stand apart from a literal backslash. Everything else (emoji,
right-to-left scripts, combining marks) is printed unchanged.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.text import Text

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
ESCAPE_STYLE = "reverse"


def _escape(char: str) -> str:
    return f"\\x{ord(char):02x}"


def visible(text: str) -> str:
    """``text`` with every control character (but newline and tab) written as a ``\\xNN`` escape."""
    return _CONTROL.sub(lambda match: _escape(match.group()), text)


def literal(text: object, style: str = "") -> Text:
    """A rich Text showing ``str(text)`` to the letter (controls escaped, see ``visible``) in ``style``."""
    raw = str(text)
    shown = Text(style=style)
    position = 0
    for match in _CONTROL.finditer(raw):
        shown.append(raw[position : match.start()])
        shown.append(_escape(match.group()), style=ESCAPE_STYLE)
        position = match.end()
    shown.append(raw[position:])
    return shown


def join(*parts: str | Text) -> Text:
    """One Text of ``parts``: Text as it is (e.g. ``literal`` server text), str through ``visible``."""
    line = Text()
    for part in parts:
        line.append(part if isinstance(part, Text) else visible(part))
    return line


def plain_console(*, stderr: bool = False) -> Console:
    """A console that prints strings to the letter: no markup, no emoji codes, no highlighting."""
    return Console(stderr=stderr, markup=False, emoji=False, highlight=False)


@dataclass
class Output:
    """Where a command writes: JSON on stdout with ``--json``, else rich text; progress never mixes with JSON.

    ``out`` prints results, ``progress`` status lines as they happen (stderr under ``--json``), ``err``
    errors and notes.
    """

    json: bool
    out: Console = field(default_factory=plain_console)
    err: Console = field(default_factory=lambda: plain_console(stderr=True))

    @property
    def progress(self) -> Console:
        return self.err if self.json else self.out

    def emit(self, value: Any, *, compact: bool = False) -> None:
        """Write ``value`` as JSON (ASCII-only: every control or non-ASCII character escaped) on stdout."""
        sys.stdout.write(json.dumps(value, indent=None if compact else 2) + "\n")
        sys.stdout.flush()
