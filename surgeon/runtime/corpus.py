"""Calibration text: reading a corpus, tokenizing with exactly one BOS, batching.

The bundled corpus (surgeon/_data/calibration/, one document a file; PROVENANCE.md there)
has two halves. One is original text written for surgeon: encyclopedia and news articles,
instructions, FAQs, lists, stories, letters, dialogues with "User:"/"Assistant:" turns,
essays, source code, technical documentation, worked maths and tables (75 documents, 60k
tokens with SmolLM2's tokenizer). The other is real text not written for it: the leading
paragraphs of each topic of the Python Language Reference as CPython ships it (79 documents,
38k tokens). Together, 98k tokens: enough for 12 tokens per column of G on a layer of width
8192 (Llama 70B), where the warning below starts at 4. The fixture corpus the written half
replaced (4.3 kB of one-line sentences, ~1,000 tokens) cost SmolLM2-135M +11% perplexity for
1 of 9 heads pruned in 4 layers.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
from pathlib import Path

from surgeon.errors import SurgeonError, first_line
from surgeon.jsonfile import parse_json, read_bounded
from surgeon.runtime.tokenizer import with_one_bos

BUNDLED_CORPUS = "calibration"  # the folder under surgeon/_data
# Genres of the bundled corpus that were not written for surgeon (PROVENANCE.md there): the
# Python Language Reference's topics. Written text alone fitted the heal to its own hand:
# SmolLM2-135M, 1 of 9 heads in all 30 layers, +16.2% perplexity on the held-out licences and
# release notes, against +3.9% with the reference alternated in (benchmarks/bench_domains.py).
SHIPPED_GENRES = frozenset({"pyref"})
# Calibration reads at most a few thousand samples; a corpus file past this is a mistake, not data.
MAX_CORPUS_BYTES = 1 << 30
# G = X^T X over fewer than this many tokens per column of o_proj's input is poorly
# conditioned (rank-deficient below 1 per column): the heal then fits noise.
MIN_TOKENS_PER_WIDTH = 4
# The default token budget: this many tokens per column of the widest layer, and never
# fewer than AUTO_MIN_TOKENS (SmolLM2-135M, width 576, then takes 8,192 tokens).
AUTO_TOKENS_PER_WIDTH = 8
AUTO_MIN_TOKENS = 8192


def auto_token_budget(width: int) -> int:
    return max(AUTO_MIN_TOKENS, AUTO_TOKENS_PER_WIDTH * width)


def bundled_corpus() -> tuple[list[str], dict]:
    """The bundled documents in the order a token budget reads them: the written ones
    interleaved by genre (the file name before "-NN"), alternating one for one with the
    documents shipped from elsewhere, so that any prefix mixes every kind of text and is
    half real text."""
    written: dict[str, list] = {}
    shipped: dict[str, list] = {}
    for file in bundled_files(BUNDLED_CORPUS):
        genre = file.name.rsplit("-", 1)[0]
        (shipped if genre in SHIPPED_GENRES else written).setdefault(genre, []).append(file)
    # one of each kind in turn, then the two halves in turn: a round robin at both levels
    ordered = _interleaved([_interleaved(list(written.values())), _interleaved(list(shipped.values()))])
    texts, digest = read_documents(ordered)
    return texts, {"source": f"bundled:{BUNDLED_CORPUS}", "file_sha256": digest}


def bundled_files(name: str) -> list:
    """The *.txt files of surgeon/_data/NAME, by name; one line if the installation lacks them."""
    folder = importlib.resources.files("surgeon") / "_data" / name
    listed = folder.iterdir() if folder.is_dir() else ()
    files = sorted((f for f in listed if f.name.endswith(".txt")), key=lambda f: f.name)
    if not files:
        raise SurgeonError(f"the bundled text (surgeon/_data/{name}/*.txt) is missing from the installation")
    return files


def read_documents(files) -> tuple[list[str], str]:
    """Each file's text, one document each, and one SHA256 over their names and bytes."""
    digest = hashlib.sha256()
    texts = []
    for file in files:
        data = file.read_bytes()
        digest.update(file.name.encode() + b"\0" + data + b"\0")
        texts.append(data.decode("utf-8").strip())
    return [t for t in texts if t], digest.hexdigest()


def read_text_file(path: Path, what: str, jsonl: bool) -> tuple[list[str], dict]:
    """A user's text file as documents (JSON lines of {"text": ...}, else plain text) and its
    record (name and SHA256 of the bytes read, never its path); `what` names it in errors."""
    file = Path(path)
    data = read_bounded(file, MAX_CORPUS_BYTES)  # a regular file: a FIFO or /dev/zero is one error line
    try:
        raw = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SurgeonError(f"{file}: cannot read the {what} ({exc})") from None
    texts = [t for t in (_jsonl(raw, file) if jsonl else _plain(raw)) if t.strip()]
    if not texts:
        raise SurgeonError(f"{file}: the {what} is empty")
    return texts, {"source": file.name, "file_sha256": hashlib.sha256(data).hexdigest()}


def _interleaved(groups: list[list]) -> list:
    """The first of each group, then the second of each, ...; a longer group's rest at the end."""
    return [f for depth in _round_robin(groups) for f in depth]


def _round_robin(groups: list[list]) -> list[list]:
    rounds = []
    for depth in range(max(map(len, groups), default=0)):
        rounds.append([g[depth] for g in groups if depth < len(g)])
    return rounds


def read_corpus(path: Path) -> list[str]:
    """A .jsonl file holds one {"text": ...} object (or string) a line; any other file is
    text with one sample a line, or a paragraph a sample where blank lines separate them."""
    return load_corpus(path)[0]


def load_corpus(path: str | Path | None) -> tuple[list[str], dict]:
    """The samples of `path` (None: the bundled corpus) and how a manifest names it.

    The record never holds the file's location: the bundled corpus is
    "bundled:calibration", a user's file is its name and the SHA256 of the bytes read.
    A path would leak the user's folders into a checkpoint they share and mean nothing on
    another machine; name and hash identify the file anywhere (`sha256sum corpus.txt`).
    """
    if path is None:
        return bundled_corpus()
    return read_text_file(Path(path), "calibration corpus", Path(path).suffix == ".jsonl")


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


def encode(tokenizer, texts: list[str], max_tokens: int, budget: int | None = None) -> list[list[int]]:
    """Samples of at most `max_tokens` ids, one BOS each whatever the tokenizer adds itself:
    a long text is cut into consecutive pieces (each starting with BOS), not truncated, so
    its later tokens count too. With `budget`, samples stop once that many ids are taken
    (the last one cut short)."""
    bos = tokenizer.bos_token_id
    step = max_tokens - (bos is not None)  # room left by the BOS each piece gets
    samples, total = [], 0
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if bos is not None:
            ids = with_one_bos(ids, bos)[1:]  # the text's own ids: a BOS it starts with is dropped
        for first in range(0, len(ids), step):
            piece = with_one_bos(ids[first : first + step], bos)
            if budget is not None:
                piece = piece[: budget - total]
            if len(piece) >= 2:
                samples.append(piece)
                total += len(piece)
            if budget is not None and budget - total < 2:  # no sample of two tokens fits any more
                return samples
    return samples


def parse_dataset_spec(spec: str) -> tuple[str, str | None, str]:
    """NAME[:CONFIG][:SPLIT] as (name, config or None, split, "train" by default)."""
    parts = spec.split(":")
    if len(parts) > 3 or any(not p.strip() for p in parts):
        raise SurgeonError(f"calibration dataset {spec!r}: use NAME, NAME:CONFIG or NAME:CONFIG:SPLIT")
    config = parts[1] if len(parts) > 1 else None
    split = parts[2] if len(parts) > 2 else "train"
    return parts[0], config, split


def load_dataset_corpus(spec: str, max_chars: int) -> tuple[list[str], dict]:
    """The texts of a Hugging Face dataset through `datasets` (offline, it resolves from the
    local cache), up to `max_chars` characters: rows are read one at a time from datasets'
    memory-mapped Arrow files, so a large dataset costs only what is taken. The text column
    is "text", else the only string column."""
    name, config, split = parse_dataset_spec(spec)
    try:  # deferred: an optional dependency, needed only with --calib-dataset
        import datasets
    except ImportError:
        raise SurgeonError("a calibration dataset needs the datasets package: pip install datasets") from None
    datasets.logging.set_verbosity_error()  # its "using the cached version" notes are not surgeon's output
    datasets.disable_progress_bars()
    try:
        data = datasets.load_dataset(name, config, split=split)
    except Exception as exc:  # datasets raises many types (ConnectionError offline, ValueError, FileNotFoundError)
        first = first_line(exc)
        raise SurgeonError(f"calibration dataset {spec!r}: cannot load it ({first[:200]})") from None
    column = _text_column(data, spec)
    texts, total = [], 0
    for row in data.select_columns([column]):
        text = row[column]
        if isinstance(text, str) and text.strip():
            texts.append(text[: max_chars - total])
            total += len(texts[-1])
        if total >= max_chars:
            break
    if not texts:
        raise SurgeonError(f"calibration dataset {spec!r}: no text in column {column!r}")
    record = {
        "source": f"dataset:{name}",
        "config": config,
        "split": split,
        "fingerprint": getattr(data, "_fingerprint", None),
        "rows": len(texts),
    }
    return texts, record


def _text_column(data, spec: str) -> str:
    text_types = ("string", "large_string")
    strings = [name for name, feature in data.features.items() if getattr(feature, "dtype", None) in text_types]
    if "text" in strings:
        return "text"
    if len(strings) == 1:
        return strings[0]
    raise SurgeonError(f'calibration dataset {spec!r}: no "text" column, and {len(strings)} text columns to pick from')
