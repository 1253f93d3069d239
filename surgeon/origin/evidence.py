"""Code-level evidence that a GGUF tensor was made from a candidate's tensor: tiers 1 and 2 of
surgeon origin (the package docstring). Each compares the candidate's rows, put back into the
GGUF's layout (crossnames' transforms, forward), with the rows the GGUF stores, and yields a
mask of the elements that agree: every element of a block whose re-encoded bytes equal the
stored ones (tier 1), or each element whose code, rounded with the quant's own scales, equals
the stored code (tier 2). The masks are summed over the tensor, per head and per row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import quantize

from surgeon.diff.stats import HeadLayout
from surgeon.format.gguf import GGUFModel
from surgeon.format.quantized import QuantizedReader
from surgeon.format.rows import ROW_CHUNK_ELEMENTS, SafetensorsRows, row_step
from surgeon.model.crossnames import TensorMap
from surgeon.parallel import check_stop

# gguf-py encodes these as llama.cpp does, byte for byte, from the same float32 values:
# the converter's own encoder (convert_hf_to_gguf writes F32/F16/BF16/Q8_0 through it) and
# llama-quantize's reference C code for the legacy types, without an importance matrix.
REENCODED = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "MXFP4")

# A tensor matches its candidate when this share of its elements agrees, over the tensor and
# within every head; a row "differs" below ROW_DIFFERS. Measured (gguf_codes tests, Gaussian
# weights): the source agrees on 100% of codes, the source + 1% noise on 96-99% (Q4), an
# unrelated tensor of the same scale on 10-35%, a zeroed row on the codes of its near-zero
# weights only.
MATCH = 0.98
HEAD_MATCH = 0.9
ROW_DIFFERS = 0.5


@dataclass
class Agreement:
    tier: int  # 1: re-encoded bytes, 2: codes rounded with the quant's own scales
    agree: int = 0  # elements that agree
    total: int = 0
    rows_differing: int = 0  # rows under ROW_DIFFERS
    head_agree: np.ndarray | None = None
    head_total: np.ndarray | None = None

    @property
    def fraction(self) -> float:
        return self.agree / self.total if self.total else 1.0

    def heads_below(self, share: float = HEAD_MATCH) -> list[int]:
        if self.head_agree is None or self.head_total is None:
            return []
        shares = np.divide(self.head_agree, np.maximum(self.head_total, 1))
        return [int(h) for h in np.flatnonzero(shares < share)]

    @property
    def matched(self) -> bool:
        return self.fraction >= MATCH and not self.heads_below() and self.rows_differing == 0


def tier_of(storage: str) -> int:
    """The strongest tier a GGUF type allows: 1, 2, or 3 (NMSE only)."""
    if storage in REENCODED:
        return 1
    return 2 if own_scales(storage) else 3


def own_scales(storage: str) -> bool:
    """Whether the quant's own scales can round a candidate: a type of affine codes."""
    from surgeon.format.gguf_codes import supports  # parsed block layouts: tier 2 only

    return supports(_qtype(storage))


def agreement(
    model: GGUFModel,
    entry: TensorMap,
    candidate: SafetensorsRows,
    tier: int,
    layout: HeadLayout | None,
    should_stop=None,
    budget: int = ROW_CHUNK_ELEMENTS,
) -> Agreement:
    """How much of GGUF `entry` agrees with the candidate's tensor `entry.hf` at `tier`."""
    found = Agreement(tier)
    if layout is not None:
        found.head_agree, found.head_total = np.zeros(layout.num_heads, np.int64), np.zeros(layout.num_heads, np.int64)
    # convert_hf_to_gguf keeps an F16 tensor in float16 through its transforms (BF16 goes to
    # float32 first): Gemma's 1 + w is rounded to f16 before the F32 norm is written
    dtype = np.float16 if candidate.tensors[entry.hf].storage == "F16" else np.float32
    multiple = entry.row_multiple * (layout.head_dim if layout is not None and layout.axis == "rows" else 1)
    for piece in entry.pieces:
        info = model.tensor(piece.gguf)
        step = row_step(info.row_len, multiple, budget)
        for offset in range(0, len(piece.gguf_rows), step):
            if should_stop is not None:
                check_stop(should_stop)
            count = min(step, len(piece.gguf_rows) - offset)
            first = piece.gguf_rows.start + offset
            raw = model.raw_rows(piece.gguf, first, first + count)
            start = piece.hf_rows.start + offset
            rows = candidate.read_rows(entry.hf, start, start + count).astype(dtype, copy=False)
            for transform in reversed(entry.transforms):
                rows = transform.to_gguf(rows)
            rows = rows.astype(np.float32, copy=False)
            mask = _reencoded_mask(raw, info.qtype, rows) if tier == 1 else _own_scale_mask(raw, info.qtype, rows)
            _add(found, mask, start, layout)
    return found


def folder_agreement(
    reader: QuantizedReader,
    name: str,
    candidate: SafetensorsRows,
    layout: HeadLayout | None,
    should_stop=None,
    budget: int = ROW_CHUNK_ELEMENTS,
) -> Agreement:
    """Tier 2 on an NVFP4 or FP8 weight of a quantized safetensors checkpoint: the candidate's
    rows rounded with the quant's own scales (QuantizedReader.agreement_mask)."""
    found = Agreement(2)
    if layout is not None:
        found.head_agree, found.head_total = np.zeros(layout.num_heads, np.int64), np.zeros(layout.num_heads, np.int64)
    rows, cols = reader.weights[name].shape
    step = row_step(cols, layout.head_dim if layout is not None and layout.axis == "rows" else 1, budget)
    for start in range(0, rows, step):
        if should_stop is not None:
            check_stop(should_stop)
        stop = min(start + step, rows)
        mask = reader.agreement_mask(name, start, stop, candidate.read_rows(name, start, stop))
        _add(found, mask, start, layout)
    return found


def _add(found: Agreement, mask: np.ndarray, start: int, layout: HeadLayout | None) -> None:
    per_row = mask.sum(axis=1)
    found.agree += int(per_row.sum())
    found.total += mask.size
    found.rows_differing += int(np.count_nonzero(per_row < ROW_DIFFERS * mask.shape[1]))
    if layout is None or found.head_agree is None or found.head_total is None:
        return
    if layout.axis == "cols":
        found.head_agree += mask.sum(axis=0).reshape(layout.num_heads, layout.head_dim).sum(axis=1)
        found.head_total += mask.shape[0] * layout.head_dim
        return
    heads = (start + np.arange(mask.shape[0])) // layout.head_dim
    found.head_agree += np.bincount(heads, per_row, minlength=layout.num_heads).astype(np.int64)
    found.head_total += np.bincount(heads, minlength=layout.num_heads) * mask.shape[1]


def _reencoded_mask(raw: np.ndarray, qtype: int, rows: np.ndarray) -> np.ndarray:
    """bool [rows, row_len]: the elements of each block whose re-encoding is byte-identical."""
    block, size = GGML_QUANT_SIZES[GGMLQuantizationType(qtype)]
    with np.errstate(all="ignore"):  # NaN or huge candidate weights: gguf-py's casts would warn
        encoded = np.ascontiguousarray(quantize(rows, GGMLQuantizationType(qtype))).view(np.uint8)
    encoded = encoded.reshape(raw.shape[0], -1, size)
    same = (encoded == raw.reshape(encoded.shape)).all(axis=2)
    return np.repeat(same, block, axis=1)


def _own_scale_mask(raw: np.ndarray, qtype: int, rows: np.ndarray) -> np.ndarray:
    from surgeon.format.gguf_codes import agreement_mask

    return agreement_mask(raw, qtype, rows)


def _qtype(storage: str) -> int:
    return int(GGMLQuantizationType[storage]) if storage in GGMLQuantizationType.__members__ else -1
