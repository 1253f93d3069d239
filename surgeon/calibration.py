"""Calibration text: reading a corpus, tokenizing with exactly one BOS, batching."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from surgeon.errors import SurgeonError, TokenizerError
from surgeon.jsonfile import parse_json, read_bounded

DEFAULT_CORPUS = Path(__file__).resolve().parent.parent / "fixtures" / "calibration.txt"
# Calibration reads at most a few thousand samples; a corpus file past this is a mistake, not data.
MAX_CORPUS_BYTES = 1 << 30


def read_corpus(path: Path) -> list[str]:
    """A .jsonl file holds one {"text": ...} object (or string) a line; any other file is
    text with one sample a line, or a paragraph a sample where blank lines separate them."""
    return load_corpus(path)[0]


def load_corpus(path: Path | None) -> tuple[list[str], dict]:
    """The samples of `path` (None: the bundled corpus) and how a manifest names it.

    The record never holds the file's location: the bundled corpus is
    "bundled:calibration.txt", a user's file is its name and the SHA256 of the bytes read.
    A path would leak the user's folders into a checkpoint they share and mean nothing on
    another machine; name and hash identify the file anywhere (`sha256sum corpus.txt`).
    """
    file = Path(path) if path is not None else DEFAULT_CORPUS
    data = read_bounded(file, MAX_CORPUS_BYTES)  # a regular file: a FIFO or /dev/zero is one error line
    try:
        raw = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SurgeonError(f"{file}: cannot read the calibration corpus ({exc})") from None
    texts = _jsonl(raw, file) if file.suffix == ".jsonl" else _plain(raw)
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise SurgeonError(f"{file}: the calibration corpus is empty")
    source = f"bundled:{DEFAULT_CORPUS.name}" if path is None else file.name
    return texts, {"source": source, "file_sha256": hashlib.sha256(data).hexdigest()}


def _plain(raw: str) -> list[str]:
    if "\n\n" in raw.strip():
        return [" ".join(p.split("\n")).strip() for p in raw.split("\n\n")]
    return [line.strip() for line in raw.splitlines()]


def _jsonl(raw: str, path: Path) -> list[str]:
    texts = []
    for number, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        item = parse_json(line, f"{path}:{number}")
        text = item.get("text") if isinstance(item, dict) else item
        if not isinstance(text, str):
            raise SurgeonError(f'{path}:{number}: expected a string or an object with "text"')
        texts.append(text)
    return texts


def corpus_sha256(texts: list[str]) -> str:
    return hashlib.sha256(json.dumps(texts).encode("utf-8")).hexdigest()


def with_one_bos(ids: list[int], bos_id: int | None) -> list[int]:
    """Exactly one BOS at the start: prepended when missing, never doubled."""
    if bos_id is None:
        return list(ids)
    start = 0
    while start < len(ids) and ids[start] == bos_id:
        start += 1
    return [bos_id, *ids[start:]]


def encode(tokenizer, texts: list[str], max_tokens: int) -> list[list[int]]:
    """Token ids per text, one BOS each whatever the tokenizer adds itself, truncated."""
    bos = tokenizer.bos_token_id
    encoded = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        encoded.append(with_one_bos(ids, bos)[:max_tokens])
    return [ids for ids in encoded if len(ids) >= 2]


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json", "spiece.model")


def load_tokenizer(path: Path):
    """The tokenizer in folder `path`. Messages name the folder, not an option, because the
    TUI shows them too; `error.option` lets the CLI add "; pass --tokenizer"."""
    from transformers import AutoTokenizer

    from surgeon.arch import config_error

    folder = Path(path)
    if folder.is_dir() and not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise tokenizer_error(f"{path}: has no tokenizer files (tokenizer.json, tokenizer.model, ...)")
    try:
        return AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise tokenizer_error(f"{path}: cannot load a tokenizer ({first})") from None
    except Exception as exc:  # AutoTokenizer reads config.json too, and transformers checks its values
        error = config_error(exc, str(folder / "config.json"))
        if error is None:
            raise
        raise error from None


def tokenizer_error(message: str) -> SurgeonError:
    """A SurgeonError that another tokenizer would fix: the CLI adds "; pass --tokenizer"."""
    return TokenizerError(message)
