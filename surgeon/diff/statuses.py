"""The closed sets of diff statuses, and the one style each is shown in: by `surgeon diff` on a terminal and by the TUI.

A tensor's status (STATUSES below), a shard's (SHARD_STATUSES) and another
file's are rich style strings here, so that a status reads the same wherever it is shown.
Plain colours, no background: they stay readable on dark and on light terminals. "added" is
bright blue, not blue: ANSI blue is hard to read on a dark background in many palettes
(xterm's #0000ee on black). Imports nothing, so the light `diff` install can use it.
"""

from __future__ import annotations

from typing import Literal, get_args

# The closed sets of statuses (docs/diff-json.md): a tensor's, a shard file's, a side file's.
# "reshaped": an attention projection of the same dtype whose shape lost whole heads, the
# rest of it compared head by head with BASE's rows of those heads (surgeon.diff.reshape).
TensorStatus = Literal["identical", "changed", "added", "removed", "retyped", "reshaped"]
ShardStatus = Literal["identical", "header-only", "changed", "added", "removed"]
FileStatus = Literal["identical", "changed", "added", "removed"]
STATUSES: tuple[str, ...] = get_args(TensorStatus)
SHARD_STATUSES: tuple[str, ...] = get_args(ShardStatus)
# Statuses added within schema 1 that `summary.tensors` counts only where a tensor has one: the
# JSON of every pair that has none stays byte for byte what it was.
COUNTED_WHEN_PRESENT: tuple[str, ...] = ("reshaped",)


def status_counts(statuses: list[str]) -> dict[str, int]:
    """`summary.tensors`' count per status, in STATUSES order."""
    counts = {s: statuses.count(s) for s in STATUSES}
    return {s: n for s, n in counts.items() if n or s not in COUNTED_WHEN_PRESENT}


STATUS_STYLE: dict[str, str] = {
    "identical": "green",
    "changed": "yellow",
    "header-only": "cyan",
    "added": "bright_blue",
    "removed": "red",
    "retyped": "magenta",
    "reshaped": "bright_magenta",
}
