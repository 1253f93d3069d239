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
) -> Any:
    """A dataclass field with what the CLI needs to offer it.

    help: one sentence, with the unit of any threshold. minimum/maximum: the range a number
    must be in (inclusive); below: an upper bound it must stay under (a fraction < 1).
    path: "file", "dir" or "any" for a value naming an existing path.
    flag: the option's name when it is not --field-name. aliases: its earlier names, still
    accepted for one release but not shown in --help (surgeon.cli.options.renamed).
    cli=False keeps a field out of the CLI (an internal knob such as a cache budget).
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
    }
    return dataclasses.field(default=default, metadata=metadata)


def cli_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of options dataclass CLS that the CLI offers, in declaration order."""
    return [f for f in dataclasses.fields(cls) if f.metadata.get("cli")]


# Help of the fields every model-running options class has (prune, eval, canary runs).
DEVICE_HELP = "auto, cuda, cuda:N or cpu."
DTYPE_HELP = "auto (bf16 on GPU, fp32 on CPU), bf16, fp16, fp32."
TOKENIZER_HELP = "Tokenizer folder (default: BASE's own)."
# One name for one thing in every command (README, "Options: one vocabulary"): the text a
# model is measured on and how many of its tokens, in eval as in prune --eval and salvage.
# a text file, as --calib and --eval-text read it (surgeon.runtime.corpus.read_text_file)
TEXT_FILE_HELP = (
    '.jsonl (one {"text": ...} a line) or plain text (a document a line, or paragraphs between blank lines)'
)
EVAL_TEXT_HELP = f"Text to measure on: {TEXT_FILE_HELP}; default: the bundled held-out text."
EVAL_TOKENS_HELP = "Tokens of the text to score, in all."
