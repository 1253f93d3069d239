"""Strings read from files (tensor and file names, metadata, config values, prompts,
generated text) are data, never markup or terminal commands.

- `inert` escapes every control and format character (ESC, CR, bidi overrides, zero-width
  marks): a hostile name cannot move the cursor, recolour the screen or hide its own end.
- `markup_safe` also escapes Rich/Textual markup, for the rare f-string that mixes our
  own markup with a file's string; everywhere else pass `Text(inert(s))`, which Rich and
  Textual never parse.
- `md_text` and `md_code` make a string inert for Markdown: no name can start a line,
  add a table cell or close a code span.
JSON output keeps the exact strings and needs none of this.
"""

from __future__ import annotations

import re
import unicodedata

# Unicode categories that print nothing by themselves: Cc (C0/C1 controls, DEL), Cf
# (format: bidi overrides, zero-width joiners), Cs/Co/Cn (surrogates, private, unassigned)
# and the line/paragraph separators, which some terminals treat as newlines.
_UNSAFE_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}
_MD_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")  # CommonMark: any ASCII punctuation may be escaped


def _escape_char(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def inert(value: object) -> str:
    """`value` as text with every non-printing character written as an escape (`\\x1b`)."""
    text = str(value)
    if text.isprintable():  # the common case costs one C-level scan
        return text
    return "".join(_escape_char(c) if unicodedata.category(c) in _UNSAFE_CATEGORIES else c for c in text)


def markup_safe(value: object) -> str:
    """inert text that Rich and Textual markup show literally (`[/]` stays `[/]`)."""
    from rich.markup import escape  # deferred: rich is only needed by the renderers

    return escape(inert(value))


def md_text(value: object) -> str:
    """inert text for Markdown prose or a table cell: every ASCII punctuation backslash-escaped."""
    return _MD_PUNCTUATION.sub(r"\\\1", inert(value))


def md_code(value: object) -> str:
    """inert text as a Markdown code span, safe inside a table cell too.

    The fence is one backtick longer than the longest run inside, with spaces where the
    text starts or ends with a backtick (CommonMark's rule), and `|` is escaped, because
    GFM splits table cells before it parses code spans.
    """
    text = inert(value).replace("|", "\\|")
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or not text.strip(" ") else ""
    return f"{fence}{pad}{text}{pad}{fence}"
