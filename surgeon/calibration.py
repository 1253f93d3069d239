"""Calibration text: reading a corpus, tokenizing with exactly one BOS, batching."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from surgeon.errors import SurgeonError

DEFAULT_CORPUS = Path(__file__).resolve().parent.parent / "fixtures" / "calibration.txt"


def read_corpus(path: Path) -> list[str]:
    """A .jsonl file holds one {"text": ...} object (or string) a line; any other file is
    text with one sample a line, or a paragraph a sample where blank lines separate them."""
    path = Path(path)
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SurgeonError(f"{path}: cannot read the calibration corpus ({exc})") from None
    texts = _jsonl(raw, path) if path.suffix == ".jsonl" else _plain(raw)
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise SurgeonError(f"{path}: the calibration corpus is empty")
    return texts


def _plain(raw: str) -> list[str]:
    if "\n\n" in raw.strip():
        return [" ".join(p.split("\n")).strip() for p in raw.split("\n\n")]
    return [line.strip() for line in raw.splitlines()]


def _jsonl(raw: str, path: Path) -> list[str]:
    texts = []
    for number, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError:
            raise SurgeonError(f"{path}:{number}: not valid JSON") from None
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
    from transformers import AutoTokenizer

    folder = Path(path)
    if folder.is_dir() and not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise SurgeonError(f"{path}: has no tokenizer files (tokenizer.json, tokenizer.model, ...); pass --tokenizer")
    try:
        return AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SurgeonError(f"{path}: cannot load a tokenizer ({first}); pass --tokenizer") from None
