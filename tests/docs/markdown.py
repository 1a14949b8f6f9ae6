"""Just enough Markdown for the docs tests: headings and their GitHub anchors, links, fenced code blocks.

Links and headings inside fenced code blocks and inline code spans are not links or headings, as on GitHub.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

_FENCE = re.compile(r"^\s{0,3}(```|~~~)\s*([\w+-]*)")
_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_CODE_SPAN = re.compile(r"(`+)(.+?)\1")
# [text](target "title") and ![alt](target); the text may hold one level of brackets.
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^\s)>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_INLINE_LINK_TEXT = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")


@dataclass(frozen=True)
class Link:
    """A link in a Markdown file: its line number and its target as written (``path#anchor``, ``#anchor``)."""

    line: int
    target: str


def prose_lines(text: str) -> Iterator[tuple[int, str]]:
    """(1-based line number, line) of every line outside fenced code blocks."""
    fence: str | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        if fence is None:
            match = _FENCE.match(line)
            if match:
                fence = match.group(1)
            else:
                yield number, line
        elif line.strip() == fence:
            fence = None


def fenced_blocks(text: str, language: str) -> list[str]:
    """The bodies of the fenced code blocks of ``language`` (e.g. ``sh``), in order."""
    blocks: list[str] = []
    body: list[str] | None = None  # the open block's lines; None outside a block
    fence, keep = "", False
    for line in text.splitlines():
        if body is None:
            match = _FENCE.match(line)
            if match:
                fence, keep, body = match.group(1), match.group(2) == language, []
        elif line.strip() == fence:
            if keep:
                blocks.append("\n".join(body))
            body = None
        else:
            body.append(line)
    return blocks


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: link and code markup dropped, lower case, punctuation removed
    (letters, digits, ``_``, ``-`` and spaces stay), spaces turned into hyphens."""
    text = _INLINE_LINK_TEXT.sub(r"\1", heading)
    text = re.sub(r"<[^>]+>", "", text).replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def headings(text: str) -> list[str]:
    """The ATX headings' texts, in order."""
    return [m.group(2) for _, line in prose_lines(text) if (m := _HEADING.match(line))]


def anchors(text: str) -> set[str]:
    """Every anchor of the file's headings; repeated headings get ``-1``, ``-2``, ... as on GitHub."""
    seen: dict[str, int] = {}
    found: set[str] = set()
    for heading in headings(text):
        base = github_anchor(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(text: str) -> list[Link]:
    """Every Markdown link and image of the file outside code, with its line number."""
    found: list[Link] = []
    for number, line in prose_lines(text):
        plain = _CODE_SPAN.sub(lambda m: "x" * len(m.group(0)), line)
        found += [Link(number, m.group(1)) for m in _LINK.finditer(plain)]
    return found
