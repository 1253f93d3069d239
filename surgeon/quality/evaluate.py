"""Teacher-forced evaluation of a model against its base, one decoder layer at a time.

The comparison llama.cpp users know from `perplexity --kl-divergence`: both models read
the same windows of a held-out text; per scored token we keep the base's and the model's
next-token NLL, KL(base || model) and whether their argmax agrees. Perplexity alone misses
a model that is as confident as the base but about other tokens; KL and top-1 catch it.

Memory: LayerStream holds one decoder layer of each model on the device at a time, plus
the streams (tokens x hidden each). Logits are made a few hundred rows at a time in float32,
so a 262k vocabulary never needs tokens x vocab at once.

Composed plans ("base + the candidate's layers K") are evaluated layer-major: each layer
is loaded at most once from the base and once with the candidate's tensors per call, and
every plan's stream advances through it. A plan shares the base's stream until its first
kept layer.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import threading
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from surgeon.errors import SurgeonError
from surgeon.format.checkpoint import Checkpoint, open_checkpoint
from surgeon.model.families import model_layout
from surgeon.options import record
from surgeon.parallel import check_stop
from surgeon.progress import NoProgress, ProgressSink
from surgeon.quality.options import TEXT_FORMATS, EvalOptions
from surgeon.recover.canary.runner import changed_by_layer
from surgeon.runtime.corpus import bundled_files, encode, load_corpus, read_documents, read_text_file
from surgeon.runtime.device import resolve_run
from surgeon.runtime.memory import return_freed_memory
from surgeon.runtime.settings import RunSettings
from surgeon.runtime.stream import EMBEDDING, Batch, LayerStream, make_batches
from surgeon.runtime.threads import use_cpu_threads
from surgeon.runtime.tokenizer import load_tokenizer, tokenizer_error, with_one_bos

SCHEMA = "surgeon.eval/1"
BUNDLED = "bundled:heldout"
# One float32 row-chunk of logits is at most this big; four such arrays (the base's log-probs
# and probabilities, the model's log-probs, the KL term) live at once. On the CPU: 170 rows
# of a 49k vocabulary, 32 of Gemma's 262k (256 rows took 0.2 GB more peak RSS on
# SmolLM2-135M); on a GPU 256 rows whatever the vocabulary.
LOGITS_BYTES = {"cpu": 32 << 20}
GPU_LOGITS_BYTES = 256 << 20
MAX_LOGIT_ROWS = 256
VOCAB_CHUNK = 16384  # rows of a bf16/fp16 head converted to float32 at a time
TOKENIZE_MARGIN = 64  # tokens kept clear of a cut made in the text before tokenizing it
# The packed stream windows are picked from: this many times the token budget, and at least
# MIN_STREAM_TOKENS (the bundled held-out text, 14.4k tokens with SmolLM2's tokenizer, is
# always read whole).
STREAM_TOKENS_PER_BUDGET = 8
MIN_STREAM_TOKENS = 1 << 16


# -- text ---------------------------------------------------------------------------


def load_eval_text(path: Path | None, text_format: str = "auto") -> tuple[list[str], dict]:
    """Documents of the evaluation text and how a report names it (never by its path).

    None is the bundled held-out text: each `*.txt` of surgeon/_data/heldout is one
    document (an article of several paragraphs: windows need long context to exercise
    attention). A `.jsonl` file (or `text_format="jsonl"`) holds one {"text": ...} per line;
    any other file is plain text whose documents are separated by blank lines, read like a
    calibration corpus.
    """
    if text_format not in TEXT_FORMATS:
        raise SurgeonError(f"text format {text_format!r}: use {', '.join(TEXT_FORMATS)}")
    if path is None:
        return _bundled()
    jsonl = text_format == "jsonl" or (text_format == "auto" and Path(path).suffix == ".jsonl")
    return read_text_file(Path(path), "evaluation text", jsonl)


def _bundled() -> tuple[list[str], dict]:
    documents, digest = read_documents(bundled_files("heldout"))
    return documents, {"source": BUNDLED, "file_sha256": digest}


def make_windows(
    tokenizer, documents: list[str], window: int, max_tokens: int, per_document: bool = False
) -> list[list[int]]:
    """Token windows for scoring, each starting with exactly one BOS where the tokenizer has
    one: the documents packed into one stream and cut into full windows (packed_stream and
    cut_windows), or with `per_document` each document cut into windows of its own."""
    if per_document:
        return document_windows(tokenizer, documents, window, max_tokens)
    return cut_windows(packed_stream(tokenizer, documents, max_tokens), tokenizer.bos_token_id, window, max_tokens)


def document_windows(tokenizer, documents: list[str], window: int, max_tokens: int) -> list[list[int]]:
    """--per-document: windows of at most `window` ids cut from each document in order until
    `max_tokens` ids in all, a document's last, shorter piece kept when it has 2 tokens or
    more (one scored). For a text of short independent samples, such as the demo model's
    training sentences: a model trained on one sentence at a time is not asked to read on
    from one into the next (the demo's base perplexity is 1.17 this way, 80 packed)."""
    bos = tokenizer.bos_token_id
    step = window - 1 if bos is not None else window
    windows: list[list[int]] = []
    total = 0
    for text in documents:
        need = max_tokens - total
        if need < 2:
            break
        ids = _prefix_ids(tokenizer, text, need)
        if bos is not None:
            ids = with_one_bos(ids, bos)[1:]  # a BOS the tokenizer or the text put first goes
        for first in range(0, len(ids), step):
            piece = ([bos] if bos is not None else []) + ids[first : first + step]
            piece = piece[: max_tokens - total]
            if len(piece) < 2:
                break
            windows.append(piece)
            total += len(piece)
    return windows


def packed_stream(tokenizer, documents: list[str], max_tokens: int) -> list[int]:
    """The documents' ids in order, joined by a blank line's ids: one stream, as llama.cpp's
    `perplexity` reads a file. Before issue 19 each document (a paragraph of a plain-text
    file) had windows of its own: a 2,000-token document split at blank lines became 31
    windows of 4 to 199 tokens, and SmolLM2-135M's perplexity on it read 33.8 against 10.9
    as one text, since most tokens were scored with almost no context.

    At most STREAM_TOKENS_PER_BUDGET x max_tokens ids (and never fewer than MIN_STREAM_TOKENS)
    are read, so a 1 GB file is not tokenized whole; a BOS a document starts with goes."""
    bos = tokenizer.bos_token_id
    cap = max(MIN_STREAM_TOKENS, STREAM_TOKENS_PER_BUDGET * max_tokens)
    separator = tokenizer("\n\n", add_special_tokens=False)["input_ids"]
    stream: list[int] = []
    for text in documents:
        if len(stream) >= cap:
            break
        ids = _prefix_ids(tokenizer, text, cap - len(stream))
        if bos is not None:
            ids = with_one_bos(ids, bos)[1:]
        if stream and ids:
            stream.extend(separator)
        stream.extend(ids)
    return stream[:cap]


def cut_windows(stream: list[int], bos: int | None, window: int, max_tokens: int) -> list[list[int]]:
    """Windows of `window` ids (BOS first, where there is one) over the stream. When the whole
    stream fits in max_tokens every window is kept, the last one possibly shorter; otherwise
    max_tokens // window full windows, evenly spaced over it, so that a budget smaller than
    the text still reads every part of it (the bundled text's six documents and domains, not
    its first two). A budget under one window takes one window of that many ids."""
    prefix = [bos] if bos is not None else []
    step = window - len(prefix)
    windows = [prefix + stream[i : i + step] for i in range(0, len(stream), step)]
    windows = [w for w in windows if len(w) >= 2]  # one scored token at least
    if sum(map(len, windows)) <= max_tokens:
        return windows
    count = max_tokens // window
    if count == 0:
        return [windows[0][:max_tokens]] if max_tokens >= 2 else []
    full = [w for w in windows if len(w) == window]  # all but perhaps the last; at least `count`
    return [full[(2 * i + 1) * len(full) // (2 * count)] for i in range(count)]


def _prefix_ids(tokenizer, text: str, need: int) -> list[int]:
    """The ids of `text`, or of a prefix of it long enough for `need` tokens: a 1 GB single
    document is not tokenized whole to use 8k of its tokens. Tokens near a cut may differ
    from the whole text's, so the cut is kept TOKENIZE_MARGIN tokens past what is used."""
    limit = max(need * 16, 1 << 16)
    while True:
        part = text if limit >= len(text) else text[:limit]
        ids = tokenizer(part, add_special_tokens=False)["input_ids"]
        if part is text:
            return ids
        if len(ids) > need + TOKENIZE_MARGIN:
            return ids[: need + 1]
        limit *= 4


# -- options and reports ----------------------------------------------------------------


@dataclass
class WindowStats:
    index: int
    tokens: int  # scored (next-token targets), one less than the window's length
    ppl_base: float
    ppl: float
    kl_mean: float
    kl_p99: float
    top1: float


@dataclass
class EvalReport:
    base: str
    model: str
    plan: list[int] | None  # the candidate's layers kept on the base; None: the model as a whole
    options: dict
    text: dict
    tokens: int
    ppl_base: float
    ppl: float
    ppl_ratio: float
    kl_mean: float
    kl_p99: float
    top1: float
    windows: list[WindowStats]

    def summary(self) -> dict:
        """The numbers a manifest or a model card carries."""
        return {
            "tokens": self.tokens,
            "ppl_base": _finite(self.ppl_base),
            "ppl": _finite(self.ppl),
            "ppl_ratio": _finite(self.ppl_ratio),
            "kl_mean": _finite(self.kl_mean),
            "kl_p99": _finite(self.kl_p99),
            "top1": _finite(self.top1),
        }

    def to_json(self) -> dict:
        return {
            "schema": SCHEMA,
            "base": self.base,
            "model": self.model,
            "plan": self.plan,
            "options": self.options,
            "text": self.text,
            "totals": self.summary(),
            "windows": [{k: _finite(v) for k, v in asdict(w).items()} for w in self.windows],
        }


def _finite(value):
    """JSON has no NaN or infinity (a model whose logits overflowed): null instead."""
    return value if not isinstance(value, float) or math.isfinite(value) else None


def measure(
    model: str | Path,
    base: str | Path,
    options: EvalOptions,
    *,
    progress: ProgressSink | None = None,
    cancel: threading.Event | None = None,
) -> dict:
    """The manifest's quality record of MODEL against BASE: the eval text and the summary
    numbers (surgeon.quality.record reads it back)."""
    session = EvalSession(base, model, options, progress=progress, cancel=cancel)
    return {"text": session.text, "eval": session.evaluate_model().summary()}


# -- the engine ---------------------------------------------------------------------


class EvalSession:
    """BASE and one other checkpoint over the same token windows.

    `evaluate_model()` scores OTHER as a whole model; `evaluate_plans()` scores "base + the
    candidate's (OTHER's) layers K" for several K, composed in memory. The windows, the
    base's trace and (within the budget) the base's per-layer stream are made once and
    reused by every call.
    """

    def __init__(
        self,
        base: str | Path | Checkpoint,
        other: str | Path | Checkpoint,
        options: EvalOptions = EvalOptions(),
        *,
        progress: ProgressSink | None = None,
        cancel: threading.Event | None = None,
    ):
        options.validate()
        return_freed_memory()
        self.options = options
        self.progress = progress or NoProgress()
        self.cancel = cancel
        self.device, self.dtype = resolve_run(options.run)
        self.base = base if isinstance(base, Checkpoint) else open_checkpoint(base)
        self.other = other if isinstance(other, Checkpoint) else open_checkpoint(other)
        self.base_layout, self.other_layout = model_layout(self.base), model_layout(self.other)
        use_cpu_threads(self.device, self.base_layout.config.get("hidden_size"))
        tokenizer = load_tokenizer(options.run.tokenizer_dir(self.base.root))
        documents, record = load_eval_text(Path(options.text) if options.text else None, options.text_format)
        window = _model_window(options.window, self.base_layout.config)
        if options.per_document:
            stream = None
            self.windows = document_windows(tokenizer, documents, window, options.max_tokens)
        else:
            stream = packed_stream(tokenizer, documents, options.max_tokens)
            self.windows = cut_windows(stream, tokenizer.bos_token_id, window, options.max_tokens)
        if not self.windows:
            raise SurgeonError(f"{record['source']}: the evaluation text has no window of two tokens or more")
        self._check_vocab(max(max(w) for w in self.windows))
        self.text = {
            **record,
            "documents": len(documents),
            "packing": "per-document" if options.per_document else "packed",
            "stream_tokens": len(stream) if stream is not None else None,
            "window": window,
            "windows": len(self.windows),
            "tokens": sum(map(len, self.windows)),
            "bos_token_id": tokenizer.bos_token_id,
        }
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.base_stream = LayerStream(self.base, self.base_layout, self.device, self.dtype)
        self._other_stream: LayerStream | None = None
        self._batches: list[Batch] | None = None  # the base's traced batches
        self._embedded: list[torch.Tensor] = []
        self._cache: list[list[torch.Tensor]] | None = None
        self._changed: dict[int, list[str]] | None = None
        self._heads_ready: set[int] = set()

    # -- public ---------------------------------------------------------------------
    @property
    def changed_layers(self) -> dict[int, list[str]]:
        """Layer -> names of the tensors the candidate changed in it (from the bytes). A
        change outside the layers is refused: a composed plan cannot express it."""
        if self._changed is None:
            self._changed = changed_by_layer(self.base, self.other)
        return self._changed

    def evaluate_model(self) -> EvalReport:
        """OTHER as a whole model (its embeddings, layers and head) against BASE."""
        batches = self._trace_base()
        other = self._other()
        other_batches = self._batches_for(other)
        other_h = _traced_hidden(other_batches)
        count_base, count_other = len(self.base_layout.layers), len(self.other_layout.layers)
        cache = self._cache
        cached = cache is not None
        new_cache: list[list[torch.Tensor]] | None = [] if not cached and self._cache_fits() else None
        base_h = list(self._embedded)
        for index in range(max(count_base, count_other)):
            self._check()
            run_base = not cached and index < count_base
            self.progress.start(self._label(index), len(base_h) * (run_base + (index < count_other)), unit="batches")
            if run_base:
                if new_cache is not None:
                    new_cache.append(_on_cpu(base_h))
                base_h = self._run(self.base_stream, self.base_stream.load_layer(index), index, batches, base_h)
            if index < count_other:
                other_h = self._run(other, other.load_layer(index), index, other_batches, other_h)
            self.progress.stop()
        base_final = cache[-1] if cache is not None else base_h
        if new_cache is not None:
            new_cache.append(_on_cpu(base_h))
            self._cache = new_cache
        return self._score(batches, [(other, other_h)], base_final, [None])[0]

    def evaluate_plans(self, plans: list[Iterable[int]]) -> list[EvalReport]:
        """One report per plan: base + the candidate's tensors in the plan's layers (those the
        candidate changed), everything else the base's. Nothing is written."""
        count = len(self.base_layout.layers)
        changed = self.changed_layers
        kept = [self._kept(plan, changed, count) for plan in plans]
        if not kept:
            return []
        batches = self._trace_base()
        cache = self._cache
        cached = cache is not None
        new_cache: list[list[torch.Tensor]] | None = [] if not cached and self._cache_fits() else None
        firsts = [min(k) for k in kept if k]
        start = (min(firsts) if firsts else count) if cached else 0
        own: list[list[torch.Tensor] | None] = [None] * len(kept)  # None: still the base's stream
        base_h = list(self._embedded)
        for index in range(start, count):
            self._check()
            base_in = cache[index] if cache is not None else base_h
            on_base = [(p, h) for p, h in enumerate(own) if h is not None and index not in kept[p]]
            on_cand = [(p, h) for p, h in enumerate(own) if h is not None and index in kept[p]]
            entering = [p for p, h in enumerate(own) if h is None and index in kept[p]]
            runs = (not cached) + len(on_base) + len(on_cand) + len(entering)
            self.progress.start(self._label(index), runs * len(base_in), unit="batches")
            if not cached or on_base:
                layer = self.base_stream.load_layer(index)
                if not cached:
                    if new_cache is not None:
                        new_cache.append(_on_cpu(base_in))
                    base_h = self._run(self.base_stream, layer, index, batches, base_in)
                for p, h in on_base:
                    own[p] = self._run(self.base_stream, layer, index, batches, h)
                del layer
            if on_cand or entering:
                replace = self._other().read_tensors(changed[index])
                layer = self.base_stream.load_layer(index, replace=replace)
                for p, h in on_cand:
                    own[p] = self._run(self.base_stream, layer, index, batches, h)
                for p in entering:
                    own[p] = self._run(self.base_stream, layer, index, batches, base_in)
                del layer, replace
            self.progress.stop()
        base_final = cache[count] if cache is not None else base_h
        if new_cache is not None:
            new_cache.append(_on_cpu(base_h))
            self._cache = new_cache
        return self._score(batches, [(self.base_stream, h) for h in own], base_final, [sorted(k) for k in kept])

    def part(self, windows: list[list[int]], *, cache: bool = True) -> EvalSession:
        """A session over WINDOWS (windows of this session's text, cut as make_windows cuts
        them) instead of its own: the checkpoints, tokenizer checks and layer streams are
        shared, the traces and the base's cached stream are the part's own. salvage --auto
        searches on one part of its text and confirms on another (surgeon.quality.budget).
        cache=False: a part scored once keeps no stream of the base."""
        if not windows:
            raise SurgeonError(f"{self.text['source']}: no window for this part of the evaluation text")
        self._other()  # made once, shared: the parts read the candidate's tensors through it
        part = copy.copy(self)
        part.windows = windows
        part._check_vocab(max(max(w) for w in windows))
        part.text = {**self.text, "windows": len(windows), "tokens": sum(map(len, windows))}
        part._batches, part._embedded, part._cache = None, [], None
        if not cache:
            part.options = dataclasses.replace(self.options, cache_budget_bytes=0)
        return part

    # -- streams ----------------------------------------------------------------------
    def _trace_base(self) -> list[Batch]:
        """The base's batches, traced on the first call."""
        if self._batches is None:
            self._batches = self._batches_for(self.base_stream)
            self._embedded = _traced_hidden(self._batches)
        return self._batches

    def _batches_for(self, stream: LayerStream) -> list[Batch]:
        batches = make_batches(self.windows, self.options.batch_size, self.pad_id)
        for batch in batches:
            self._check()
            stream.trace(batch)
        return batches

    def _other(self) -> LayerStream:
        if self._other_stream is None:
            self._other_stream = LayerStream(self.other, self.other_layout, self.device, self.dtype)
        return self._other_stream

    def _cache_fits(self) -> bool:
        """Whether the base's stream may be kept: the input of every layer and the last
        layer's output, on the CPU, costs (layers + 1) x tokens x hidden x dtype bytes
        (padding included): 31 x 8192 x 576 x 4 = 0.59 GB for SmolLM2-135M in float32, but
        61 x 8192 x 5376 x 2 = 5.4 GB for a 31B model in bf16. Past the budget nothing is
        kept and every call runs the base's layers again."""
        per_layer = sum(h.numel() * h.element_size() for h in self._embedded)
        return (len(self.base_layout.layers) + 1) * per_layer <= self.options.cache_budget_bytes

    def _run(self, stream: LayerStream, layer, index: int, batches, hidden: list[torch.Tensor]) -> list:
        out = []
        for batch, h in zip(batches, hidden, strict=True):
            self._check()
            out.append(stream.run_layer(layer, index, batch, hidden=h))
            self.progress.advance(1)
        return out

    def _kept(self, plan: Iterable[int], changed: dict, count: int) -> frozenset[int]:
        layers = {int(k) for k in plan}
        for layer in sorted(layers):
            if not 0 <= layer < count:
                raise SurgeonError(f"layer {layer} does not exist (the model has layers 0-{count - 1})")
        return frozenset(layers & set(changed))

    def _check_vocab(self, largest_id: int) -> None:
        vocab = {}
        for ckpt, layout in ((self.base, self.base_layout), (self.other, self.other_layout)):
            by_module = {layout.module_name(n): t.shape[0] for n, t in ckpt.tensors.items()}
            # the head gives the distribution compared; a tied embedding may be stored as the head
            rows = by_module.get("lm_head.weight", by_module.get(EMBEDDING))
            if rows is not None and largest_id >= rows:
                raise tokenizer_error(
                    f"the tokenizer produced token id {largest_id} but the embedding of {ckpt.source} has "
                    f"{rows} rows: it is not the model's own tokenizer"
                )
            vocab[ckpt.source] = rows
        if len(set(vocab.values())) > 1:  # KL needs one distribution over the same tokens
            (base, base_rows), (other, other_rows) = vocab.items()
            raise SurgeonError(
                f"{other} predicts {other_rows} tokens and {base} {base_rows}: they do not share a vocabulary"
            )

    def _label(self, index: int) -> str:
        return f"eval layer {index}/{max(len(self.base_layout.layers), len(self.other_layout.layers)) - 1}"

    def _check(self) -> None:
        check_stop(self.cancel.is_set if self.cancel is not None else None)

    # -- scoring ----------------------------------------------------------------------
    @torch.no_grad()
    def _score(self, batches: list[Batch], models, base_final: list[torch.Tensor], plans: list) -> list[EvalReport]:
        """Per scored token: base NLL, and per model its NLL, KL(base || model) and top-1
        agreement. The base's log-probs of each row chunk are made once for all models; a
        model whose stream is None is the base itself."""
        base_nll, window_of = [], []
        per_model: list[tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]] = [
            ([], [], []) for _ in models
        ]
        self.progress.start("eval logits", len(batches), unit="batches")
        for number, batch in enumerate(batches):
            self._check()
            valid = (batch.attention_mask[:, 1:] & batch.attention_mask[:, :-1]).bool()
            targets = batch.input_ids[:, 1:][valid]
            rows = torch.arange(valid.shape[0])[:, None].expand_as(valid)[valid]
            window_of.append(rows + number * self.options.batch_size)
            base_rows = base_final[number][:, :-1][valid.to(base_final[number].device)]
            model_rows = [None if h is None else h[number][:, :-1][valid.to(h[number].device)] for _, h in models]
            step = self._row_chunk()
            for first in range(0, len(targets), step):
                part = slice(first, first + step)
                target = targets[part].to(self.device)[:, None]
                lp_base = self._log_probs(self.base_stream, base_rows[part])
                p_base = lp_base.exp()
                nll_base = -lp_base.gather(1, target)[:, 0]
                top_base = lp_base.argmax(-1)
                base_nll.append(nll_base.double().cpu())
                for (stream, _), rows_m, (nll, kl, agree) in zip(models, model_rows, per_model, strict=True):
                    if rows_m is None:
                        nll.append(base_nll[-1])
                        kl.append(torch.zeros(len(target), dtype=torch.float64))
                        agree.append(torch.ones(len(target), dtype=torch.bool))
                        continue
                    lp = self._log_probs(stream, rows_m[part])
                    nll.append(-lp.gather(1, target)[:, 0].double().cpu())
                    agree.append((lp.argmax(-1) == top_base).cpu())
                    term = torch.sub(lp_base, lp, out=lp).mul_(p_base)  # p_base (log p_base - log p), in place
                    kl.append(term.sum(-1).clamp_min(0).double().cpu())  # KL >= 0; below it is rounding
                    del lp, term
                del lp_base, p_base
            self.progress.advance(1)
        self.progress.stop()
        base_nll_all, windows = torch.cat(base_nll), torch.cat(window_of)
        return [
            self._report(plan, base_nll_all, torch.cat(nll), torch.cat(kl), torch.cat(agree), windows)
            for plan, (nll, kl, agree) in zip(plans, per_model, strict=True)
        ]

    def _row_chunk(self) -> int:
        vocab = self.base_stream.model.config.vocab_size
        budget = LOGITS_BYTES.get(self.device.type, GPU_LOGITS_BYTES)
        return max(1, min(MAX_LOGIT_ROWS, budget // (4 * max(vocab, 1))))

    def _log_probs(self, stream: LayerStream, rows: torch.Tensor) -> torch.Tensor:
        return self._logits32(stream, rows).log_softmax(-1)

    def _logits32(self, stream: LayerStream, rows: torch.Tensor) -> torch.Tensor:
        """Float32 logits of some final hidden rows. In float32 these are LayerStream's own.
        In bf16/fp16 the norm runs in the model's dtype as the model runs it, but the vocab
        matmul is done in float32 a slice of the head at a time: bf16 logits near 20 are only
        good to 0.06, a noise floor on the KL of two close models."""
        if stream.dtype == torch.float32:
            return stream.logits(rows).float()
        if id(stream) not in self._heads_ready:
            stream.logits(rows[:1])  # materialises the head (and ties it to the embedding)
            self._heads_ready.add(id(stream))
        normed = stream.model.model.norm(rows.to(stream.device)).float()
        head = stream.model.lm_head
        logits = torch.empty(normed.shape[0], head.weight.shape[0], dtype=torch.float32, device=normed.device)
        for first in range(0, head.weight.shape[0], VOCAB_CHUNK):
            logits[:, first : first + VOCAB_CHUNK] = normed @ head.weight[first : first + VOCAB_CHUNK].float().T
        if head.bias is not None:
            logits += head.bias.float()
        cap = stream.layout.config.get("final_logit_softcapping")  # as LayerStream.logits does
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    def _report(self, plan, base_nll, nll, kl, agree, window_of) -> EvalReport:
        counts = torch.bincount(window_of, minlength=len(self.windows)).tolist()
        windows, first = [], 0
        for index, count in enumerate(counts):
            part = slice(first, first + count)
            windows.append(_window(index, base_nll[part], nll[part], kl[part], agree[part]))
            first += count
        totals = _window(-1, base_nll, nll, kl, agree)
        # flat, as the schema has them: options.device, .dtype, .tokenizer
        options = dict(record(self.options), text=self.text["source"], device=str(self.device))
        options["dtype"] = str(self.dtype).replace("torch.", "")
        return EvalReport(
            base=self.base.source,
            model=self.other.source,
            plan=plan,
            options=options,
            text=dict(self.text),
            tokens=totals.tokens,
            ppl_base=totals.ppl_base,
            ppl=totals.ppl,
            ppl_ratio=_ratio(totals.ppl, totals.ppl_base),
            kl_mean=totals.kl_mean,
            kl_p99=totals.kl_p99,
            top1=totals.top1,
            windows=windows,
        )


def _model_window(window: int, config: dict) -> int:
    """The window asked, but no longer than the positions the model has: a window past its
    max_position_embeddings would score tokens at positions it never learned (the demo
    model has 256)."""
    limit = config.get("max_position_embeddings")
    if isinstance(limit, int) and not isinstance(limit, bool) and 2 <= limit < window:
        return limit
    return window


def _window(index: int, base_nll, nll, kl, agree) -> WindowStats:
    count = len(nll)
    return WindowStats(
        index=index,
        tokens=count,
        ppl_base=_ppl(base_nll),
        ppl=_ppl(nll),
        kl_mean=float(kl.mean()) if count else math.nan,
        kl_p99=quantile(kl, 0.99),
        top1=float(agree.double().mean()) if count else math.nan,
    )


def _ppl(nll: torch.Tensor) -> float:
    if not len(nll):
        return math.nan
    mean = float(nll.double().mean())
    return math.exp(mean) if mean < 700 else math.inf


def _ratio(value: float, base: float) -> float:
    return value / base if base and math.isfinite(base) else math.nan


def quantile(values: torch.Tensor, q: float) -> float:
    """torch.quantile's default (linear interpolation) for any length: torch.quantile itself
    refuses inputs past 2^24 elements, which a long evaluation reaches."""
    count = values.numel()
    if not count:
        return math.nan
    ordered = torch.sort(values.double().flatten()).values
    position = q * (count - 1)
    low = math.floor(position)
    high = min(low + 1, count - 1)
    return float(ordered[low] + (ordered[high] - ordered[low]) * (position - low))


def _on_cpu(hidden: list[torch.Tensor]) -> list[torch.Tensor]:
    return [h.cpu() for h in hidden]


def _traced_hidden(batches: list[Batch]) -> list[torch.Tensor]:
    """Each batch's embeddings, which LayerStream.trace has just filled in."""
    hidden = []
    for batch in batches:
        assert batch.hidden is not None  # trace() sets it
        hidden.append(batch.hidden)
    return hidden


# -- the small NLL tests use -------------------------------------------------------------


def corpus_nll(
    checkpoint: str | Path,
    corpus: Path | None = None,
    *,
    max_tokens: int = 128,
    run: RunSettings = RunSettings(device="cpu", dtype="float32"),
) -> float:
    """Mean next-token NLL of a checkpoint on a calibration corpus (None: the bundled one),
    each sample truncated to `max_tokens`."""
    ckpt = open_checkpoint(checkpoint)
    tok = load_tokenizer(run.tokenizer_dir(ckpt.root))
    sequences = encode(tok, load_corpus(corpus)[0], max_tokens)
    stream = LayerStream(ckpt, model_layout(ckpt), *resolve_run(run))
    batches = make_batches(sequences, 64, tok.pad_token_id or 0)
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            stream.trace(batch)
        for index in range(len(stream.layout.layers)):
            layer = stream.load_layer(index)
            for batch in batches:
                batch.hidden = stream.run_layer(layer, index, batch)
        for batch in batches:
            assert batch.hidden is not None  # trace() set it, then each run_layer()
            part, tokens = stream.nll(batch.hidden, batch)
            total, count = total + part, count + tokens
    return total / max(count, 1)
