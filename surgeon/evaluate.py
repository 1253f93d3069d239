"""Mean next-token NLL of a checkpoint on a corpus, streamed one decoder layer at a time."""

from __future__ import annotations

from pathlib import Path

import torch

from surgeon.adapters import describe
from surgeon.calibration import DEFAULT_CORPUS, encode, load_tokenizer, read_corpus
from surgeon.checkpoint import open_checkpoint
from surgeon.stream import LayerStream, resolve_device, resolve_dtype


def corpus_nll(
    checkpoint: str | Path,
    corpus: Path | None = None,
    max_tokens: int = 128,
    device: str = "cpu",
    dtype: str = "float32",
    tokenizer: Path | None = None,
) -> float:
    from surgeon.prune import _make_batches

    ckpt = open_checkpoint(checkpoint)
    tok = load_tokenizer(tokenizer or ckpt.root)
    sequences = encode(tok, read_corpus(corpus or DEFAULT_CORPUS), max_tokens)
    dev = resolve_device(device)
    stream = LayerStream(ckpt, describe(ckpt), dev, resolve_dtype(dtype, dev))
    batches = _make_batches(sequences, 64, tok.pad_token_id or 0)
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            stream.trace(batch)
        for index in range(len(stream.layout.layers)):
            layer = stream.load_layer(index)
            for batch in batches:
                batch.hidden = stream.run_layer(layer, index, batch)
        for batch in batches:
            part, tokens = stream.nll(batch.hidden, batch)
            total, count = total + part, count + tokens
    return total / max(count, 1)
