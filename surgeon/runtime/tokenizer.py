"""The tokenizer a model runs with, and the one-BOS rule every path that feeds text to a
model follows (ARCHITECTURE: BOS is explicit). Torch-free: the canary's checks (salvage's
light path) use with_one_bos; transformers is imported only to load a tokenizer."""

from __future__ import annotations

from pathlib import Path

from surgeon.errors import SurgeonError, TokenizerError, first_line
from surgeon.model.geometry import config_error


def with_one_bos(ids: list[int], bos_id: int | None) -> list[int]:
    """Exactly one BOS at the start: prepended when missing, never doubled."""
    if bos_id is None:
        return list(ids)
    start = 0
    while start < len(ids) and ids[start] == bos_id:
        start += 1
    return [bos_id, *ids[start:]]


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json", "spiece.model")


def load_tokenizer(path: Path):
    """The tokenizer in folder `path`. Messages name the folder, not an option, because the
    TUI shows them too; `error.option` lets the CLI add "; pass --tokenizer"."""
    # deferred: this module is torch-free (canary.checks, on salvage's light path, uses
    # with_one_bos); transformers (1.7 s) is needed only to load a tokenizer
    from transformers import AutoTokenizer

    folder = Path(path)
    if folder.is_dir() and not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise tokenizer_error(f"{path}: has no tokenizer files (tokenizer.json, tokenizer.model, ...)")
    try:
        return AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as exc:
        first = first_line(exc)
        raise tokenizer_error(f"{path}: cannot load a tokenizer ({first})") from None
    except Exception as exc:  # AutoTokenizer reads config.json too, and transformers checks its values
        error = config_error(exc, str(folder / "config.json"))
        if error is None:
            raise
        raise error from None


def tokenizer_error(message: str) -> SurgeonError:
    """A SurgeonError that another tokenizer would fix: the CLI adds "; pass --tokenizer"."""
    return TokenizerError(message)
