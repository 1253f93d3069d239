"""`surgeon canary`: does the model still generate like the base?

Greedy generation per prompt, for the model and the base, with exactly one BOS at the
start whatever the tokenizer does. Four checks per prompt:
  drift      the model's NLL on the base's continuation over the base's own NLL on it
  shape      bigram repetition, non-printable characters, an early end
  self_ratio the model's NLL on the base's continuation over its NLL on its own (a model
             confident in its own loop scores high)
  agreement  tokens generated before the first divergence from the base
The base's outputs are cached, keyed by everything that could change them.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from surgeon.atomic import write_text_atomic
from surgeon.calibration import with_one_bos
from surgeon.errors import SurgeonError
from surgeon.hashcache import user_cache_dir
from surgeon.jsonfile import parse_json, read_bounded

# Prompts are a few dozen lines; a file past this is a mistake (or /dev/zero), not prompts.
MAX_PROMPTS_BYTES = 16 << 20

DEFAULT_PROMPTS = [
    "The capital of France is",
    "Water boils at",
    "The sun rises in the",
    "A week has seven days. A year has",
    "To make tea, boil the water,",
]
SCHEMA = "surgeon.canary/1"


@dataclass(frozen=True)
class Prompt:
    text: str | None = None
    messages: list | None = None  # a chat conversation, formatted by the tokenizer's template

    @property
    def label(self) -> str:
        return self.text if self.text is not None else json.dumps(self.messages)[:80]


@dataclass(frozen=True)
class CanaryOptions:
    max_new_tokens: int = 24
    max_drift: float = 3.0
    max_self_ratio: float = 8.0
    max_repetition: float = 0.5
    max_nonprintable: float = 0.1
    min_tokens: int = 5
    min_agreement: int = 1
    nll_floor: float = 0.05  # nats added to both NLLs of a ratio so near-zero NLLs compare sanely
    bos: str = "auto"  # auto: the tokenizer's BOS, exactly once; none: no BOS


@dataclass
class PromptResult:
    prompt: str
    base_text: str
    text: str
    drift: float
    self_ratio: float
    repetition: float
    nonprintable: float
    tokens: int
    agreement: int
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures


@dataclass
class CanaryReport:
    passed: bool
    prompts: list[PromptResult]
    options: dict
    base_cache_hit: bool
    composed_layers: list[int] | None = None  # composed in memory: the candidate's layers put on the base

    def to_json(self) -> dict:
        out = {
            "schema": SCHEMA,
            "passed": self.passed,
            "base_cache_hit": self.base_cache_hit,
            "options": self.options,
            "prompts": [asdict(p) | {"passed": p.passed} for p in self.prompts],
        }
        if self.composed_layers is not None:  # a manifest then says which plan this canary judged
            out["composed_layers"] = self.composed_layers
        return out


def read_prompts(path: Path | None) -> list[Prompt]:
    """Built-in prompts, or a file: one prompt a line, or JSONL of {"prompt": ...} or
    {"messages": [...]} (chat, formatted by the tokenizer's template)."""
    if path is None:
        return [Prompt(text=t) for t in DEFAULT_PROMPTS]
    data = read_bounded(Path(path), MAX_PROMPTS_BYTES)  # a regular file: a FIFO or /dev/zero is one error line
    try:
        raw = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SurgeonError(f"{path}: cannot read prompts ({exc})") from None
    if Path(path).suffix != ".jsonl":
        prompts = [Prompt(text=line) for line in raw.splitlines() if line.strip()]
    else:
        prompts = [_jsonl_prompt(line, path, n) for n, line in enumerate(raw.splitlines(), 1) if line.strip()]
    if not prompts:
        raise SurgeonError(f"{path}: no prompts")
    return prompts


def _jsonl_prompt(line: str, path, number: int) -> Prompt:
    item = parse_json(line, f"{path}:{number}")
    if isinstance(item, dict) and "messages" in item:
        if not _is_conversation(item["messages"]):
            raise SurgeonError(f'{path}:{number}: "messages" must be a list of {{"role": ..., "content": ...}} objects')
        return Prompt(messages=item["messages"])
    text = item.get("prompt", item.get("text")) if isinstance(item, dict) else item
    if not isinstance(text, str):
        raise SurgeonError(f'{path}:{number}: expected "prompt" text or "messages"')
    return Prompt(text=text)


def _is_conversation(messages) -> bool:
    return (
        isinstance(messages, list)
        and bool(messages)
        and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), (str, list))
            for m in messages
        )
    )


def prompt_ids(tokenizer, prompt: Prompt, bos: str) -> list[int]:
    """Token ids with exactly one BOS (or none with bos='none'). A chat prompt is formatted
    by the template once, never re-wrapped; a template that adds BOS itself is not doubled."""
    if prompt.messages is not None:
        ids = _chat_ids(tokenizer, prompt)
    else:
        ids = tokenizer(prompt.text, add_special_tokens=False)["input_ids"]
    bos_id = tokenizer.bos_token_id
    if bos == "none" or bos_id is None:
        return [i for i in ids if i != bos_id] if bos == "none" and bos_id is not None else ids
    return with_one_bos(ids, bos_id)


def _chat_ids(tokenizer, prompt: Prompt) -> list[int]:
    """A chat prompt through the tokenizer's own template. No template, or one that fails
    on these messages, is one line naming the tokenizer, found before any model is loaded."""
    from jinja2 import TemplateError

    where = getattr(tokenizer, "name_or_path", "") or "the tokenizer"
    if not getattr(tokenizer, "chat_template", None):
        raise SurgeonError(f'{where}: has no chat template; give plain prompts ("prompt", not "messages")')
    try:
        ids = tokenizer.apply_chat_template(prompt.messages, add_generation_prompt=True, tokenize=True)
    except (TemplateError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SurgeonError(f"{where}: the chat template failed on {prompt.label} ({first[:200]})") from None
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return list(ids)


# -- the checks -------------------------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufffd]")


def bigram_repetition(tokens: list[int]) -> float:
    """Fraction of the continuation's bigrams that already occurred earlier in it."""
    bigrams = list(itertools.pairwise(tokens))
    if not bigrams:
        return 0.0
    seen: set = set()
    repeated = 0
    for bigram in bigrams:
        repeated += bigram in seen
        seen.add(bigram)
    return repeated / len(bigrams)


def nonprintable_fraction(text: str) -> float:
    return len(_CONTROL.findall(text)) / len(text) if text else 0.0


def agreement(a: list[int], b: list[int]) -> int:
    count = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        count += 1
    return count


def judge(result: PromptResult, options: CanaryOptions) -> None:
    rules = [
        (result.drift > options.max_drift, f"drift {result.drift:.2f} > {options.max_drift}"),
        (
            result.self_ratio > options.max_self_ratio,
            f"self-vs-base {result.self_ratio:.2f} > {options.max_self_ratio}",
        ),
        (
            result.repetition > options.max_repetition,
            f"repetition {result.repetition:.2f} > {options.max_repetition}",
        ),
        (
            result.nonprintable > options.max_nonprintable,
            f"non-printable {result.nonprintable:.2f} > {options.max_nonprintable}",
        ),
        (result.tokens < options.min_tokens, f"ended after {result.tokens} tokens (< {options.min_tokens})"),
        (result.agreement < options.min_agreement, f"agreement {result.agreement} < {options.min_agreement}"),
    ]
    result.failures = [message for failed, message in rules if failed]


def ratio(numerator: float, denominator: float, floor: float) -> float:
    value = (numerator + floor) / (denominator + floor)
    return value if math.isfinite(value) else math.inf


# -- the base cache ---------------------------------------------------------------------


def cache_key(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def default_cache_dir() -> Path:
    return user_cache_dir("canary", "SURGEON_CANARY_CACHE")


def cache_read(cache_dir: Path | None, key: str) -> dict | None:
    """A cached base output, or None (a miss) for anything that is not one: the cache is a
    folder others can write, so an entry must be a bounded regular file holding a list of
    token ids and a finite NLL, and anything else is recomputed, never an error."""
    if cache_dir is None:
        return None
    path = Path(cache_dir) / f"{key}.json"
    try:
        entry = parse_json(read_bounded(path, MAX_PROMPTS_BYTES), str(path))
    except SurgeonError:
        return None
    return entry if _is_base_output(entry) else None


def _is_base_output(entry: object) -> bool:
    if not isinstance(entry, dict) or not isinstance(entry.get("tokens"), list):
        return False
    nll = entry.get("nll")
    tokens_ok = all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in entry["tokens"])
    return tokens_ok and isinstance(nll, (int, float)) and not isinstance(nll, bool) and math.isfinite(nll)


def cache_write(cache_dir: Path | None, key: str, value: dict) -> None:
    if cache_dir is None:
        return
    try:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        write_text_atomic(Path(cache_dir) / f"{key}.json", json.dumps(value))
    except OSError:
        pass
