"""The codes a GGUF quant stored, and how many of them a candidate checkpoint reproduces.

Tier 2 of `surgeon origin`: where a ggml type stores its own scales (the K-quants above all,
which gguf-py cannot quantize), the candidate's weights are rounded with the quant's own
stored scales and offsets and the codes that agree with the stored ones are counted. For
every type here a stored element decodes as `scale * code + offset`, with an integer code in
[qmin, qmax] and a scale and offset shared by a sub-block of `group` elements.

Block layouts are ggml-common.h's (`block_q4_0` ... `block_q6_K`), read against gguf-py 0.19's
`gguf/quants.py`, whose `dequantize_blocks` the tests hold `Grid.values()` to, bit for bit.
Symmetric types (Q4_0, Q5_0, Q8_0, Q3_K, Q6_K) keep llama.cpp's signed codes and an offset of
-0.0: x + (-0.0) is x for every x, -0.0 included, so `scale * code + offset` keeps the sign of
a zero product as gguf-py's `d * q` does.

How llama.cpp rounds, and so how a candidate is rounded here (ggml-quants.c):
- K-quants: after the scale search (make_qkx2_quants / make_qx_quants) the codes are chosen
  again from the final, stored scales: `l = nearest_int((x + dm) / d)` clamped, with d and dm
  the fp16 super-scales times the 4- or 6-bit sub-scales, in float32. nearest_int rounds half
  to even (the 12582912 magic), as np.rint does. Both paths do this last pass, the plain
  quantize_row_qN_K_ref and the importance-matrix quantize_row_qN_K_impl (read in
  ggml-quants.c; no llama.cpp here to run). So the weights a K-quant was made from reproduce
  every code, bar sub-blocks whose scale is 0 (below).
- Legacy types: the codes are rounded with the float32 scale (`id = 1/d`) before d is stored
  as fp16, so rounding the same weights with the stored fp16 scale moves the boundaries by up
  to 2**-11 of the code's value: elements within that of a boundary can flip. Measured, see
  tests/format/test_gguf_codes.py. Q4_0/Q5_0/Q4_1/Q5_1 round `(int)(x*id + 8.5f)` (half up);
  Q8_0 `roundf` (half away from zero). Exact ties have measure zero on real weights; the
  rounding rule is matched anyway. A legacy quant made with an importance matrix
  (quantize_row_q4_0_impl and kin) keeps the codes of a weighted scale search and stores a
  least-squares scale refit to them, so it agrees less with its own source: not measured.

A sub-block whose scale is 0 decodes every code to its offset, so its codes say nothing
about the weights. There an element agrees iff the candidate equals the decoded value
exactly: an all-zero sub-block (a zeroed row, padding) agrees with zeros and with nothing
else; a constant sub-block that fp16 could not hold exactly disagrees even with its own source
(llama.cpp keeps make_qkx2_quants' codes there, `if (!d) continue`), which real weights
essentially never are.

What the counts mean (measured, tests/format/test_gguf_codes.py, 65,536 Gaussian weights
quantized by gguf-py 0.19): the weights a legacy quant was made from agree on 99.2% (Q8_0) to
99.95% (Q4_0) of elements, the worst row 98.5%; the same weights plus Gaussian noise of 1% of
their standard deviation on 57.9% (Q8_0: the noise is 0.4 of a step) to 97.2% (Q4_0); an
unrelated Gaussian candidate of the same scale on 0.56% (Q8_0) to 8.2% (Q4_0), about the
chance that two draws share a code. A K-quant's own source agrees on every element by
construction (above): not checked against llama.cpp's own output, which cannot run here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from surgeon.errors import SurgeonError
from surgeon.text import inert

if TYPE_CHECKING:
    from surgeon.format.gguf import GGUFModel

Q = GGMLQuantizationType


@dataclass(frozen=True)
class Grid:
    """Block rows as codes on an affine grid: element [r, i] is
    `sub_scale[r, i // group] * codes[r, i] + sub_offset[r, i // group]`."""

    codes: np.ndarray  # int16 [rows, row_len], in [qmin, qmax]
    sub_scale: np.ndarray  # float32 [rows, row_len // group]
    sub_offset: np.ndarray  # float32 [rows, row_len // group]
    group: int
    qmin: int
    qmax: int

    @property
    def scale(self) -> np.ndarray:
        """float32 [rows, row_len]: each element's scale."""
        return np.repeat(self.sub_scale, self.group, axis=1)

    @property
    def offset(self) -> np.ndarray:
        """float32 [rows, row_len]: each element's offset."""
        return np.repeat(self.sub_offset, self.group, axis=1)

    def values(self) -> np.ndarray:
        """The dequantized float32 values, [rows, row_len]."""
        with np.errstate(over="ignore", invalid="ignore"):  # damaged scales: NaN or inf, unwarned
            return self.scale * self.codes + self.offset


# One block type's decoder: blocks uint8 [n, type_size] -> (codes int16 [n, block_size],
# scale float32 [n, subs], offset float32 [n, subs]).
Decoded = tuple[np.ndarray, np.ndarray, np.ndarray]


def _fp16(field: np.ndarray) -> np.ndarray:
    """A 2-byte little-endian fp16 field of each block as float32 [n, 1]."""
    return np.ascontiguousarray(field).view("<f2").astype(np.float32)


def _packed(data: np.ndarray, chunk: int, width: int) -> np.ndarray:
    """ggml's packing of `width`-bit codes: each run of `chunk` bytes holds 8 // width runs of
    `chunk` codes, the lowest bits first. uint8 [n, k * chunk] -> [n, k * chunk * 8 // width]."""
    n = data.shape[0]
    shifts = np.arange(0, 8, width, dtype=np.uint8).reshape(1, 1, -1, 1)
    codes = (data.reshape(n, -1, 1, chunk) >> shifts) & np.uint8((1 << width) - 1)
    return codes.reshape(n, -1)


def _fields(blocks: np.ndarray, *sizes: int) -> list[np.ndarray]:
    """A block's consecutive fields of these byte sizes (the last takes the rest)."""
    return np.hsplit(blocks, np.cumsum(sizes).tolist())


def _symmetric(d: np.ndarray) -> np.ndarray:
    return np.full_like(d, -0.0)


def _q4_0(blocks: np.ndarray) -> Decoded:
    d, qs = _fields(blocks, 2)
    d = _fp16(d)
    return _packed(qs, 16, 4).astype(np.int16) - 8, d, _symmetric(d)


def _q4_1(blocks: np.ndarray) -> Decoded:
    d, m, qs = _fields(blocks, 2, 2)
    return _packed(qs, 16, 4).astype(np.int16), _fp16(d), _fp16(m)


def _fifth_bit(qh: np.ndarray) -> np.ndarray:
    """Q5_0/Q5_1's qh: a little-endian u32 whose bit i is element i's fifth bit."""
    return np.unpackbits(qh, axis=1, bitorder="little").astype(np.int16) << 4


def _q5_0(blocks: np.ndarray) -> Decoded:
    d, qh, qs = _fields(blocks, 2, 4)
    d = _fp16(d)
    return (_packed(qs, 16, 4) | _fifth_bit(qh)) - 16, d, _symmetric(d)


def _q5_1(blocks: np.ndarray) -> Decoded:
    d, m, qh, qs = _fields(blocks, 2, 2, 4)
    return _packed(qs, 16, 4) | _fifth_bit(qh), _fp16(d), _fp16(m)


def _q8_0(blocks: np.ndarray) -> Decoded:
    d, qs = _fields(blocks, 2)
    d = _fp16(d)
    return np.ascontiguousarray(qs).view(np.int8).astype(np.int16), d, _symmetric(d)


def _q2_k(blocks: np.ndarray) -> Decoded:
    # block_q2_K: scales[16] (low nibble scale, high nibble min), qs[64], d, dmin
    scales, qs, d, dmin = _fields(blocks, 16, 64, 2)
    scale = _fp16(d) * (scales & 0xF).astype(np.float32)
    offset = -(_fp16(dmin) * (scales >> 4).astype(np.float32))
    return _packed(qs, 32, 2).astype(np.int16), scale, offset


def _q3_k_scales(packed: np.ndarray) -> np.ndarray:
    """block_q3_K's 12 bytes as 16 signed 6-bit scales: low nibbles in bytes 0-7 (sub-block j
    < 8 in the low, j >= 8 in the high nibble of byte j % 8), the top two bits of sub-block j
    at bits 2*(j // 4) of byte 8 + j % 4; stored +32."""
    low = _packed(packed[:, :8], 8, 4)
    high = _packed(packed[:, 8:], 4, 2)
    return ((low | (high << 4)).astype(np.int16) - 32).astype(np.float32)


def _q3_k(blocks: np.ndarray) -> Decoded:
    # block_q3_K: hmask[32], qs[64], scales[12], d; an element's code is its 2 low bits,
    # less 4 where its hmask bit is clear
    hmask, qs, scales, d = _fields(blocks, 32, 64, 12)
    codes = _packed(qs, 32, 2).astype(np.int16) - 4 * (1 - _packed(hmask, 32, 1).astype(np.int16))
    scale = _fp16(d) * _q3_k_scales(scales)
    return codes, scale, _symmetric(scale)


def _scale_min_k4(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """llama.cpp's get_scale_min_k4 over block_q4_K's 12 bytes: 8 6-bit scales and mins.
    j < 4: scale = q[j] & 63, min = q[j + 4] & 63; j >= 4: scale = (q[j + 4] & 15) |
    (q[j - 4] >> 6) << 4, min = (q[j + 4] >> 4) | (q[j] >> 6) << 4."""
    q = packed.astype(np.int16)
    scale = np.concatenate([q[:, 0:4] & 63, (q[:, 8:12] & 15) | ((q[:, 0:4] >> 6) << 4)], axis=1)
    mins = np.concatenate([q[:, 4:8] & 63, (q[:, 8:12] >> 4) | ((q[:, 4:8] >> 6) << 4)], axis=1)
    return scale.astype(np.float32), mins.astype(np.float32)


def _k4_scales(d: np.ndarray, dmin: np.ndarray, packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scale, mins = _scale_min_k4(packed)
    return _fp16(d) * scale, -(_fp16(dmin) * mins)


def _q4_k(blocks: np.ndarray) -> Decoded:
    # block_q4_K: d, dmin, scales[12], qs[128]
    d, dmin, scales, qs = _fields(blocks, 2, 2, 12)
    return (_packed(qs, 32, 4).astype(np.int16), *_k4_scales(d, dmin, scales))


def _q5_k(blocks: np.ndarray) -> Decoded:
    # block_q5_K: d, dmin, scales[12], qh[32] (bit b of qh[l]: element 32*b + l), qs[128]
    d, dmin, scales, qh, qs = _fields(blocks, 2, 2, 12, 32)
    codes = _packed(qs, 32, 4).astype(np.int16) | (_packed(qh, 32, 1).astype(np.int16) << 4)
    return (codes, *_k4_scales(d, dmin, scales))


def _q6_k(blocks: np.ndarray) -> Decoded:
    # block_q6_K: ql[128] (low nibbles), qh[64] (top two bits), scales[16] int8, d
    ql, qh, scales, d = _fields(blocks, 128, 64, 16)
    codes = (_packed(ql, 64, 4).astype(np.int16) | (_packed(qh, 32, 2).astype(np.int16) << 4)) - 32
    scale = _fp16(d) * np.ascontiguousarray(scales).view(np.int8).astype(np.float32)
    return codes, scale, _symmetric(scale)


@dataclass(frozen=True)
class _Kind:
    decode: Callable[[np.ndarray], Decoded]
    group: int  # elements per sub-block sharing a scale and an offset
    qmin: int
    qmax: int
    nearest: Callable[[np.ndarray], np.ndarray]  # llama.cpp's rounding of x / scale


def _half_even(x: np.ndarray) -> np.ndarray:
    # nearest_int: x + 12582912.f (1.5 * 2**23) in float32 rounds half to even, as rint does
    return np.rint(x)


def _half_up(x: np.ndarray) -> np.ndarray:
    # (int)(x*id + 8.5f): truncation of a positive number, so half rounds up
    return np.floor(x + np.float32(0.5))


def _half_away(x: np.ndarray) -> np.ndarray:
    # roundf
    return np.sign(x) * np.floor(np.abs(x) + np.float32(0.5))


_KINDS: dict[int, _Kind] = {
    Q.Q4_0: _Kind(_q4_0, 32, -8, 7, _half_up),
    Q.Q4_1: _Kind(_q4_1, 32, 0, 15, _half_up),
    Q.Q5_0: _Kind(_q5_0, 32, -16, 15, _half_up),
    Q.Q5_1: _Kind(_q5_1, 32, 0, 31, _half_up),
    Q.Q8_0: _Kind(_q8_0, 32, -128, 127, _half_away),
    Q.Q2_K: _Kind(_q2_k, 16, 0, 3, _half_even),
    Q.Q3_K: _Kind(_q3_k, 16, -4, 3, _half_even),
    Q.Q4_K: _Kind(_q4_k, 32, 0, 15, _half_even),
    Q.Q5_K: _Kind(_q5_k, 32, 0, 31, _half_even),
    Q.Q6_K: _Kind(_q6_k, 16, -32, 31, _half_even),
}


def supports(qtype: int) -> bool:
    """Whether the type's elements are affine codes read here. The IQ types (codebook grids),
    TQ1_0/TQ2_0, MXFP4 and NVFP4 (non-uniform values) and the float types are not."""
    return qtype in _KINDS


def _kind(qtype: int) -> _Kind:
    kind = _KINDS.get(qtype)
    if kind is None:
        raise SurgeonError(f"ggml type {_type_name(qtype)} stores no affine codes that can be compared")
    return kind


def _type_name(qtype: int) -> str:
    try:
        return GGMLQuantizationType(qtype).name
    except ValueError:
        return str(qtype)


def affine_grid(raw: np.ndarray, qtype: int) -> Grid:
    """uint8 block rows [rows, row_bytes] of ggml type `qtype` as a Grid."""
    kind = _kind(qtype)
    block, size = GGML_QUANT_SIZES[GGMLQuantizationType(qtype)]
    if raw.dtype != np.uint8 or raw.ndim != 2 or raw.shape[1] % size:
        raise SurgeonError(
            f"{_type_name(qtype)} rows must be uint8 [rows, a multiple of {size} bytes], not {raw.dtype} {raw.shape}"
        )
    rows, row_len = raw.shape[0], raw.shape[1] // size * block
    with np.errstate(over="ignore", invalid="ignore"):  # an inf fp16 scale times a 0 sub-scale: NaN, unwarned
        codes, scale, offset = kind.decode(raw.reshape(-1, size))
    return Grid(
        codes=codes.reshape(rows, row_len),
        sub_scale=scale.reshape(rows, -1),
        sub_offset=offset.reshape(rows, -1),
        group=kind.group,
        qmin=kind.qmin,
        qmax=kind.qmax,
    )


def agreement(raw: np.ndarray, qtype: int, candidate: np.ndarray) -> np.ndarray:
    """Per row, how many elements of `candidate` agree (agreement_mask): int64 [rows]."""
    return agreement_mask(raw, qtype, candidate).sum(axis=1, dtype=np.int64)


def agreement_mask(raw: np.ndarray, qtype: int, candidate: np.ndarray) -> np.ndarray:
    """bool [rows, row_len]: the elements of `candidate` (float32 [rows, row_len], the GGUF's
    row layout) that round, with the stored scales and offsets, to the stored code (per
    element, so a caller can sum by columns: o_proj's heads). In a sub-block of scale 0, an
    element agrees iff it equals the decoded value (see the module's docstring); a
    non-finite candidate element never agrees, nor any element of a sub-block whose scale or
    offset is not finite (a damaged block: x / inf is 0, which would "agree" with code 0)."""
    # a dozen full-size temporaries: 0.43 s for 1024 x 4096 Q4_K rows (2 shared cores), about 8x
    # gguf-py's dequantize of the same rows; callers pass a chunk of rows, as iter_rows reads
    grid = affine_grid(raw, qtype)
    candidate = np.asarray(candidate, dtype=np.float32)
    if candidate.shape != grid.codes.shape:
        raise SurgeonError(f"candidate rows {candidate.shape} against {_type_name(qtype)} rows {grid.codes.shape}")
    scale, offset = grid.scale, grid.offset
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        # candidate - offset: llama.cpp's x + dm, the same float32 operation
        nearest = _kind(qtype).nearest((candidate - offset) / scale)
    agree = np.clip(nearest, grid.qmin, grid.qmax) == grid.codes
    finite = np.isfinite(candidate) & np.isfinite(scale) & np.isfinite(offset)
    return np.where(scale == 0, candidate == offset, agree) & finite


# The codes the reference encoders (llama-quantize without an importance matrix, gguf-py) give
# every block's extreme weight: d = max / -8 puts the weight of largest magnitude on code -8
# (Q4_0; -16 for Q5_0), d = amax / 127 on +-127 (Q8_0), and d = (max - min) / 15 its min and
# max on 0 and 15 (Q4_1; 0 and 31 for Q5_1). A scale an importance matrix searched for
# rarely lands there. The K-quants search their scales either way: no signature.
_PLAIN_CODES: dict[int, tuple[tuple[int, ...], ...]] = {
    Q.Q4_0: ((-8,),),
    Q.Q5_0: ((-16,),),
    Q.Q8_0: ((127, -127),),
    Q.Q4_1: ((0,), (15,)),
    Q.Q5_1: ((0,), (31,)),
}


def plain_blocks(raw: np.ndarray, qtype: int) -> tuple[int, int]:
    """(blocks bearing the reference encoder's signature, blocks) of legacy-type block rows: a
    block whose scale is 0 (an all-zero block) counts as plain; (0, 0) for a type without one."""
    wanted = _PLAIN_CODES.get(qtype)
    if wanted is None:
        return 0, 0
    grid = affine_grid(raw, qtype)
    codes = grid.codes.reshape(-1, grid.group)
    plain = np.ones(len(codes), dtype=bool)
    for any_of in wanted:
        plain &= np.isin(codes, any_of).any(axis=1)
    plain |= grid.sub_scale.reshape(-1) == 0
    return int(plain.sum()), len(codes)


def row_codes_agree(
    model: GGUFModel, tensor_name: str, start: int, stop: int, candidate_rows: np.ndarray
) -> np.ndarray:
    """agreement() of rows [start, stop) of a GGUF tensor: int64 [stop - start]."""
    qtype = model.tensor(tensor_name).qtype
    if not supports(qtype):
        raise SurgeonError(
            f"{model.source}: tensor {inert(tensor_name)!r} is {_type_name(qtype)}, whose values are not affine codes"
        )
    return agreement(model.raw_rows(tensor_name, start, stop), qtype, candidate_rows)
