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

# A tensor is reproduced by its candidate when this share of its elements agrees, over the
# tensor and within every head, and no row "differs" (under ROW_DIFFERS). The source agrees on
# every element: llama.cpp's own quants of SmolLM2 (bench_origin.py, Q8_0, Q4_0, Q5_0, Q4_K,
# Q6_K) 1.0000, its re-encoded bytes and its K-quant codes alike; 1e-4 is room for a tie.
# A light fine-tune does not: base + 0.03% of each weight's std keeps 99.9% of Q4_0's codes.
REPRODUCED = 0.9999
HEAD_REPRODUCED = 0.999
# Consistent, not reproduced: what codes rounded with scales surgeon cannot re-derive (an
# importance matrix's), or an NMSE within its bound, can show. Measured (gguf_codes tests,
# Gaussian weights): the source + 1% noise keeps 96-99% of Q4 codes, an unrelated tensor of
# the same scale 10-35%, a zeroed row only the codes of its near-zero weights.
CONSISTENT = 0.98
HEAD_CONSISTENT = 0.9
ROW_DIFFERS = 0.5
# A legacy-type tensor whose blocks carry the reference encoder's signature (gguf_codes
# .plain_blocks) this often was encoded without an importance matrix: its source re-encodes
# to its bytes, and codes that merely agree are no evidence of it.
PLAIN = 0.99


@dataclass
class Agreement:
    tier: int  # 1: re-encoded bytes, 2: codes rounded with the quant's own scales
    agree: int = 0  # elements that agree
    total: int = 0
    rows_differing: int = 0  # rows under ROW_DIFFERS
    head_agree: np.ndarray | None = None
    head_total: np.ndarray | None = None
    via: str | None = None  # tier 1: the intermediate the candidate was rounded to first (F16, BF16)
    plain: int = 0  # tier 1, legacy types: blocks bearing the reference encoder's signature
    blocks: int = 0
    reproducible: bool = True  # False: codes rounded with scales surgeon cannot re-derive

    @property
    def fraction(self) -> float:
        return self.agree / self.total if self.total else 1.0

    @property
    def plain_share(self) -> float:
        return self.plain / self.blocks if self.blocks else 0.0

    def heads_below(self, share: float = HEAD_REPRODUCED) -> list[int]:
        if self.head_agree is None or self.head_total is None:
            return []
        shares = np.divide(self.head_agree, np.maximum(self.head_total, 1))
        return [int(h) for h in np.flatnonzero(shares < share)]

    @property
    def matched(self) -> bool:
        """Reproduced: the candidate gives the quant's bytes, or its codes under scales that the
        type's encoder re-rounds every code with (the K-quants, NVFP4, FP8)."""
        return self.reproducible and self.fraction >= REPRODUCED and not self.heads_below() and self.rows_differing == 0

    @property
    def consistent(self) -> bool:
        """Agrees as a light fine-tune of the source would too: evidence, not proof."""
        return self.fraction >= CONSISTENT and not self.heads_below(HEAD_CONSISTENT) and self.rows_differing == 0


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
    """How much of GGUF `entry` agrees with the candidate's tensor `entry.hf` at `tier`. At
    tier 1 the candidate is also rounded to F16 and to BF16 before it is re-encoded, as
    `convert_hf_to_gguf --outtype f16` then `llama-quantize` makes a quant, and the
    intermediate that reproduces the most is kept (`via`)."""
    stored = candidate.tensors[entry.hf].storage
    kinds = {model.tensor(p.gguf).type_name for p in entry.pieces}
    via = [None] + ([v for v in INTERMEDIATES if v != stored] if tier == 1 and kinds - {"F32", "F16", "BF16"} else [])
    found = {v: _empty(tier, layout, v) for v in via}
    # convert_hf_to_gguf keeps an F16 tensor in float16 through its transforms (BF16 goes to
    # float32 first): Gemma's 1 + w is rounded to f16 before the F32 norm is written
    dtype = np.float16 if stored == "F16" else np.float32
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
            for name, each in found.items():
                rounded = INTERMEDIATES[name](rows) if name is not None else rows
                mask = (
                    _reencoded_mask(raw, info.qtype, rounded)
                    if tier == 1
                    else _own_scale_mask(raw, info.qtype, rounded)
                )
                _add(each, mask, start, layout)
            if tier == 1:
                _add_plain(found[None], raw, info.qtype)
    best = max(found.values(), key=lambda a: a.agree)  # the first (as stored) where they tie
    best.plain, best.blocks = found[None].plain, found[None].blocks
    return best


def _empty(tier: int, layout: HeadLayout | None, via: str | None) -> Agreement:
    found = Agreement(tier, via=via)
    if layout is not None:
        found.head_agree, found.head_total = np.zeros(layout.num_heads, np.int64), np.zeros(layout.num_heads, np.int64)
    return found


def _add_plain(found: Agreement, raw: np.ndarray, qtype: int) -> None:
    from surgeon.format.gguf_codes import plain_blocks

    plain, blocks = plain_blocks(raw, qtype)
    found.plain += plain
    found.blocks += blocks


def _to_f16(rows: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return rows.astype(np.float16).astype(np.float32)


def _to_bf16(rows: np.ndarray) -> np.ndarray:
    """Round to bfloat16, nearest with ties to even, as torch's and gguf-py's casts round."""
    bits = rows.astype(np.float32).view(np.uint32)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))) & np.uint32(0xFFFF0000)
    return np.where(np.isnan(rows), rows, rounded.view(np.float32))


# The intermediates a quant is commonly made through: a GGUF of F16 or BF16 first.
INTERMEDIATES = {"F16": _to_f16, "BF16": _to_bf16}


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
    found = _empty(2, layout, None)
    rows, cols = reader.weights[name].shape
    step = row_step(cols, layout.head_dim if layout is not None and layout.axis == "rows" else 1, budget)
    for start in range(0, rows, step):
        if should_stop is not None:
            check_stop(should_stop)
        stop = min(start + step, rows)
        mask = reader.agreement_mask(name, start, stop, candidate.read_rows(name, start, stop))
        _add(found, mask, start, layout)
    return found


def stored_agreement(
    quant: SafetensorsRows, name: str, candidate: SafetensorsRows, should_stop=None, budget: int = ROW_CHUNK_ELEMENTS
) -> Agreement:
    """Tier 1 on a tensor a safetensors quant keeps in floats (norms, embeddings): the
    candidate's values, rounded to the stored dtype, against the stored values."""
    found = _empty(1, None, None)
    kind = quant.tensors[name].storage
    rounding = INTERMEDIATES.get(kind)
    for start, stored in quant.iter_rows(name, budget=budget):
        if should_stop is not None:
            check_stop(should_stop)
        rows = candidate.read_rows(name, start, start + stored.shape[0]).astype(np.float32, copy=False)
        rounded = rounding(rows) if rounding is not None and kind != candidate.tensors[name].storage else rows
        same = (rounded == stored) | (np.isnan(rounded) & np.isnan(stored))
        _add(found, same.reshape(stored.shape[0], -1), start, None)
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
