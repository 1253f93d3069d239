"""Strings read from files (tensor and file names, metadata, config values, prompts,
generated text) are data, never markup or terminal commands.

- `inert` escapes every control and format character (ESC, CR, bidi overrides, zero-width
  marks): a hostile name cannot move the cursor, recolour the screen or hide its own end.
  `inert_lines` keeps line breaks, for generated text and messages of several lines.
- `markup_safe` also escapes Rich/Textual markup, for the rare f-string that mixes our
  own markup with a file's string; everywhere else pass `Text(inert(s))`, which Rich and
  Textual never parse.
- `md_text` and `md_code` make a string inert for Markdown: no name can start a line,
  add a table cell or close a code span.
JSON output keeps the exact strings and needs none of this.
"""

from __future__ import annotations

import json
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


def shown(value: object) -> str:
    """A config value as the user wrote it, short and inert: (got '8'), (got null)."""
    text = json.dumps(value) if value is None or isinstance(value, bool) else repr(value)
    return inert(text if len(text) <= 60 else text[:57] + "...")


def inert_lines(value: object) -> str:
    """inert text that keeps its line breaks, for a message of several lines (a dialog's body)."""
    return "\n".join(inert(line) for line in str(value).split("\n"))


def markup_safe(value: object) -> str:
    """inert text that Rich markup shows literally (`[/]` stays `[/]`).

    Rich's escape only: Textual's own markup has more tags (`[$accent]`), so in the TUI pass
    `Text(inert(s))` or `markup=False` instead.
    """
    # deferred: rich.markup costs 33 ms (measured); every module imports text, only renderers need this
    from rich.markup import escape

    return escape(inert(value))


def md_text(value: object) -> str:
    """inert text for Markdown prose or a table cell: every ASCII punctuation backslash-escaped,
    and spaces at either end written as `&#32;`, which Markdown would otherwise trim."""
    text = _MD_PUNCTUATION.sub(r"\\\1", inert(value))
    core = text.strip(" ")
    if core == text:
        return text
    start = text.index(core) if core else len(text)
    return "&#32;" * start + core + "&#32;" * (len(text) - start - len(core))


def md_code(value: object, table: bool = True) -> str:
    """inert text as a Markdown code span; with `table`, safe inside a GFM table cell too.

    The fence is one backtick longer than the longest run inside, with a space inside each
    end where the text starts or ends with a backtick or CommonMark would strip one (it
    starts and ends with a space). In a table `|` is escaped, because GFM splits cells before
    it parses code spans; a backslash right before a `|` is read differently by GitHub
    (cmark-gfm: an escaped backslash, so the pipe splits) and markdown-it (an escaped pipe),
    so such a name is written as escaped text instead, which both read the same way.
    """
    text = inert(value)
    if table:
        if "\\|" in text:
            return md_text(text)
        text = text.replace("|", "\\|")
    if not text:
        return "` `"  # CommonMark has no empty code span; one space is the closest
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    stripped = text.startswith(" ") and text.endswith(" ") and text.strip(" ")
    pad = " " if text.startswith("`") or text.endswith("`") or stripped else ""
    return f"{fence}{pad}{text}{pad}{fence}"


# Layer numbers as text, for every message, report and manifest (`layers_text`) that lists them.
def and_list(words: list[str]) -> str:
    """`a`, `a and b`, `a, b and c`: a list in words."""
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def percent(fraction: float) -> str:
    """12.5%, 25%, 11.1%, 87.5%: three figures at most, no trailing zeros (a fraction asked
    as 0.125 is not shown as 12% or 13%)."""
    return f"{fraction * 100:.3g}%"


def layer_ranges(layers: list[int] | set[int]) -> str:
    """`[0, 1, 2, 3, 7]` -> `0-3, 7`."""
    ordered = sorted(set(layers))
    if not ordered:
        return ""
    parts: list[str] = []
    start = prev = ordered[0]
    for value in ordered[1:]:
        if value == prev + 1:
            prev = value
        else:
            parts.append(span(start, prev))
            start = prev = value
    parts.append(span(start, prev))
    return ", ".join(parts)


def span(start: int, end: int) -> str:
    return str(start) if start == end else f"{start}-{end}"
