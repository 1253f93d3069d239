"""Options dataclasses describe themselves once: each field's default, type and help text
(with its unit) live on the field, and the CLI builds its click options from them
(surgeon.cli.options), as mergekit's `add_merge_options` does. The engine reads the same
dataclasses, so a default, a choice or a help text has one owner.

Torch-free and click-free: the engine's options modules import this, and `surgeon diff`
must never pay for either.
"""

from __future__ import annotations

import dataclasses
from typing import Any

PATH_KINDS = ("file", "dir", "any")  # what a path option must name; it must exist


def option(
    default: Any,
    help: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    below: float | None = None,
    path: str | None = None,
    metavar: str | None = None,
    flag: str | None = None,
    aliases: tuple[str, ...] = (),
    cli: bool = True,
    fields: tuple[str, ...] | None = None,
) -> Any:
    """A dataclass field with what the CLI needs to offer it.

    help: one sentence, with the unit of any threshold. minimum/maximum: the range a number
    must be in (inclusive); below: an upper bound it must stay under (a fraction < 1).
    path: "file", "dir" or "any" for a value naming an existing path.
    flag: the option's name when it is not --field-name. aliases: its earlier names, still
    accepted for one release but not shown in --help (surgeon.cli.options.renamed).
    cli=False keeps a field out of the CLI (an internal knob such as a cache budget).
    fields: for a field holding a nested options record (RunSettings in PruneOptions), the
    names of its fields this class uses; the CLI offers those under their own flags and
    `record` lists them in the nested record's place; the others keep their defaults.
    """
    if path is not None and path not in PATH_KINDS:
        raise ValueError(f"path must be one of {PATH_KINDS}")  # a programming error, not input
    metadata = {
        "help": help,
        "minimum": minimum,
        "maximum": maximum,
        "below": below,
        "path": path,
        "metavar": metavar,
        "flag": flag,
        "aliases": aliases,
        "cli": cli,
        "fields": fields,
    }
    return dataclasses.field(default=default, metadata=metadata)


def cli_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of options dataclass CLS that the CLI offers, in declaration order."""
    return [f for f in dataclasses.fields(cls) if f.metadata.get("cli")]


def nested_record(field: dataclasses.Field) -> type | None:
    """The options class FIELD holds (RunSettings in PruneOptions), or None for a plain value."""
    default = field.default
    return type(default) if dataclasses.is_dataclass(default) and not isinstance(default, type) else None


def used_fields(field: dataclasses.Field, nested: type) -> list[dataclasses.Field]:
    """The fields of the NESTED record held in FIELD that its owner uses (option's `fields`)."""
    wanted = field.metadata.get("fields")
    return [f for f in dataclasses.fields(nested) if wanted is None or f.name in wanted]


def record(options: Any) -> dict[str, Any]:
    """OPTIONS as a manifest or report records them: `dataclasses.asdict`, with the used
    fields of a nested record (RunSettings) in its place under their own names, so the JSON
    kept its flat keys (options.device, options.dtype, options.tokenizer) when the run
    settings became one record."""
    out: dict[str, Any] = {}
    plain = dataclasses.asdict(options)
    for field in dataclasses.fields(options):
        nested = nested_record(field)
        if nested is None:
            items = {field.name: plain[field.name]}
        else:
            inner = record(getattr(options, field.name))
            items = {f.name: inner[f.name] for f in used_fields(field, nested)}
        if items.keys() & out.keys():  # a programming error: two fields recorded under one key
            raise ValueError(f"{type(options).__name__}: {sorted(items.keys() & out.keys())} recorded twice")
        out |= items
    return out


def in_range(field: dataclasses.Field, value: float) -> bool:
    """Whether VALUE is in FIELD's range (option's minimum, maximum and below); NaN is not."""
    low, high, below = (field.metadata.get(k) for k in ("minimum", "maximum", "below"))
    return (low is None or value >= low) and (high is None or value <= high) and (below is None or value < below)


def range_text(field: dataclasses.Field) -> str:
    """FIELD's range as a message says it: [0, 1), [1, 4], >= 2, < 1."""
    low, high, below = (field.metadata.get(k) for k in ("minimum", "maximum", "below"))
    top = f"{below:g})" if below is not None else f"{high:g}]" if high is not None else None
    if low is not None:
        return f"[{low:g}, {top}" if top else f">= {low:g}"
    if top:
        return f"< {below:g}" if below is not None else f"<= {high:g}"
    return "any number"


def field_named(cls: type, name: str) -> dataclasses.Field:
    """The field NAME of options class CLS."""
    return next(f for f in dataclasses.fields(cls) if f.name == name)


# One name for one thing in every command (README, "Options: one vocabulary"): the text a
# model is measured on and how many of its tokens, in eval as in prune --eval and salvage.
# a text file, as --calib and --eval-text read it (surgeon.runtime.corpus.read_text_file)
TEXT_FILE_HELP = (
    '.jsonl (one {"text": ...} a line) or plain text (a document a line, or paragraphs between blank lines)'
)
# A figure holds for the text it was measured on (issue 19): the user's own text is the path
# the help recommends, for calibration and for measuring alike.
OWN_TEXT_ADVICE = "text from the domain the model will serve is recommended"
EVAL_TEXT_HELP = f"Text to measure on: {TEXT_FILE_HELP}; default: the bundled held-out text; {OWN_TEXT_ADVICE}."
EVAL_TOKENS_HELP = "Tokens of the text to score, in all."
