"""`surgeon eval`'s options, apart from the engine (which imports torch): the CLI builds its
options from these fields, and `surgeon --help` must not load torch."""

from __future__ import annotations

from dataclasses import dataclass

from surgeon.errors import SurgeonError
from surgeon.options import EVAL_TEXT_HELP, EVAL_TOKENS_HELP, option
from surgeon.runtime.settings import RunSettings

TEXT_FORMATS = ("auto", "text", "jsonl")
# A figure on fewer scored tokens than this gets a warning: a mean KL over a few hundred
# tokens moves by several times from one text to the next (issue 19)
FEW_TOKENS = 4096


@dataclass(frozen=True)
class EvalOptions:
    # the CLI's --eval-text and --eval-tokens, as in prune --eval and salvage (the field names
    # stay: they are the keys of the report's `options`); --text and --max-tokens were eval's own
    text: str | None = option(None, EVAL_TEXT_HELP, path="file", flag="--eval-text", aliases=("--text",))
    text_format: str = option("auto", "auto (a .jsonl suffix means JSON lines), text or jsonl.", cli=False)
    window: int = option(512, "Tokens per window (at most the model's max_position_embeddings).", minimum=2)
    per_document: bool = option(
        False,
        "Cut each document into windows of its own, instead of packing the documents into one stream "
        "of full windows (llama.cpp's way): for a text of short independent samples.",
    )
    max_tokens: int = option(8192, EVAL_TOKENS_HELP, minimum=2, flag="--eval-tokens", aliases=("--max-tokens",))
    batch_size: int = option(4, "Windows per forward pass.", minimum=1)
    # --device, --dtype, --tokenizer; options.device, .dtype and .tokenizer in the report
    # (surgeon.options.record). Not its quant: eval streams the layers in `dtype`.
    run: RunSettings = option(RunSettings(), "How the models run.", fields=("device", "dtype", "tokenizer"))
    # the base's per-layer stream, see EvalSession._cache_fits
    cache_budget_bytes: int = option(2 << 30, "Memory for the base's cached stream, in bytes.", cli=False)

    def validate(self) -> None:
        self.run.validate()
        checks = [
            (self.run.quant is None, "eval runs the layers in their dtype, not quantised"),
            (self.text_format in TEXT_FORMATS, f"the text format must be one of {', '.join(TEXT_FORMATS)}"),
            (self.window >= 2, "the window must be at least 2 tokens"),
            (self.max_tokens >= 2, "the token budget must be at least 2 tokens"),
            (self.batch_size >= 1, "the batch size must be at least 1"),
            (self.cache_budget_bytes >= 0, "the cache budget must be >= 0 bytes"),
        ]
        for ok, message in checks:
            if not ok:
                raise SurgeonError(message)
