"""Reference quantizers for NVFP4 and FP8 (E4M3), in numpy alone.

They reproduce what the exporters write, step for step in float32, so that a candidate
weight can be quantized again and compared with a quantized checkpoint (the diff's first
tier), and so that tests and benchmarks can write checkpoints of these layouts:

- ModelOpt NVFP4 (modelopt/torch/quantization/qtensor/nvfp4_tensor.py): scale_2 = amax /
  (6 * 448); per-16 block scale = e4m3(block_amax / (6 * scale_2)), 0 -> 1, at least 2**-9;
  codes = e2m1(w / (scale * scale_2)), ties to the even code; value = e2m1 * (scale * scale_2).
- compressed-tensors NVFP4 (quantization/utils/helpers.py, calculate_qparams and
  generate_gparam): global_scale = 6 * 448 / amax; scale = e4m3(global_scale * block_amax /
  6), 0 -> 0.125; value = e2m1 * (scale / global_scale).
- FP8 (both exporters): scale = amax / 448 over the tensor, a row or a block;
  codes = e4m3(w / scale); value = e4m3 * scale.

Every quantizer returns its dequantized values computed from the chosen values, not by
decoding its own bytes, so a decoder can be tested against it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from surgeon.format.dtypes import DTYPES, to_float64

E4M3_MAX = 448.0
E2M1_MAX = 6.0
NVFP4_GROUP = 16

# E2M1 code -> value: bit 3 is the sign, bits 0-2 index the magnitudes.
E2M1_VALUES = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6], dtype=np.float32)


def _e4m3_magnitudes() -> np.ndarray:
    """The values of codes 0x00..0x7e (every finite non-negative E4M3), increasing with the code."""
    return E4M3_VALUES[:0x7F].astype(np.float64)


def _nearest_code(magnitude: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Index of the nearest entry of the increasing `table`, ties to the even index (the even
    code: round-to-nearest-even, as torch's float8 cast and ModelOpt's e2m1 cast do), above
    the last entry the last (saturation)."""
    hi = np.clip(np.searchsorted(table, magnitude, side="left"), 1, len(table) - 1)
    lo = hi - 1
    below = magnitude - table[lo]
    above = table[hi] - magnitude
    take_hi = (above < below) | ((above == below) & (hi % 2 == 0))
    return np.where(take_hi, hi, lo)


def e4m3_encode(values: np.ndarray) -> np.ndarray:
    """float -> E4M3 (e4m3fn) codes, nearest with ties to even, saturating at +-448; NaN is refused."""
    values = np.asarray(values, dtype=np.float64)
    if np.isnan(values).any():
        raise ValueError("e4m3_encode: NaN input")
    codes = _nearest_code(np.abs(values), _e4m3_magnitudes()).astype(np.uint8)
    return codes | np.where(np.signbit(values), np.uint8(0x80), np.uint8(0))


# E4M3 code -> float32 value (exact: every E4M3 value is a float32); 0x7f and 0xff are NaN.
E4M3_VALUES = to_float64(np.arange(256, dtype=np.uint8), DTYPES["F8_E4M3"]).astype(np.float32)


def e4m3_decode(codes: np.ndarray) -> np.ndarray:
    """E4M3 codes -> float32, by one table lookup."""
    return E4M3_VALUES[np.asarray(codes, dtype=np.uint8)]


def e2m1_encode(values: np.ndarray) -> np.ndarray:
    """float -> E2M1 codes (0..15), nearest with ties to the even code, saturating at +-6."""
    values = np.asarray(values, dtype=np.float32)
    codes = _nearest_code(np.abs(values), E2M1_VALUES[:8]).astype(np.uint8)
    return codes | np.where(np.signbit(values), np.uint8(8), np.uint8(0))


def pack_e2m1(codes: np.ndarray) -> np.ndarray:
    """[rows, cols] codes -> [rows, cols/2] bytes, the even column in the LOW nibble."""
    return (codes[:, 0::2] | (codes[:, 1::2] << 4)).astype(np.uint8)


@dataclass(frozen=True)
class Nvfp4:
    packed: np.ndarray  # uint8 [rows, cols/2]
    scale: np.ndarray  # uint8 E4M3 codes [rows, cols/16]
    second: (
        np.float32
    )  # ModelOpt's weight_scale_2 (a multiplier) or compressed-tensors' weight_global_scale (a divisor)
    dequantized: np.ndarray  # float32 [rows, cols]


def _blocks(w: np.ndarray, group: int) -> np.ndarray:
    rows, cols = w.shape
    if cols % group:
        raise ValueError(f"{cols} columns are not a whole number of {group}-element groups")
    return w.reshape(rows, cols // group, group)


def quantize_nvfp4(w: np.ndarray, convention: str = "modelopt") -> Nvfp4:
    """Quantize a 2-d weight to NVFP4 as ModelOpt ("modelopt") or compressed-tensors
    ("compressed-tensors") computes it."""
    blocks = _blocks(np.asarray(w, dtype=np.float32), NVFP4_GROUP)
    block_amax = np.abs(blocks).max(axis=2)
    amax = np.float32(block_amax.max()) if block_amax.size else np.float32(0)
    if convention == "modelopt":
        second, scale_codes, block_scale = _modelopt_scales(amax, block_amax)
    elif convention == "compressed-tensors":
        second, scale_codes, block_scale = _ct_scales(amax, block_amax)
    else:
        raise ValueError(f"unknown NVFP4 convention {convention!r}")
    codes = e2m1_encode(blocks / block_scale[:, :, None]).reshape(w.shape)
    values = E2M1_VALUES[codes].reshape(blocks.shape) * block_scale[:, :, None]
    return Nvfp4(pack_e2m1(codes), scale_codes, second, values.reshape(w.shape))


def _modelopt_scales(amax: np.float32, block_amax: np.ndarray) -> tuple[np.float32, np.ndarray, np.ndarray]:
    """(scale_2, E4M3 codes, effective block scale e4m3 * scale_2), in ModelOpt's float32 order
    of operations. An all-zero weight gets scale_2 0 and block scales 1 (ModelOpt itself would
    divide 0 by 0 there and store NaN scales, which no loader could use)."""
    scale_2 = np.float32(amax / np.float32(E2M1_MAX * E4M3_MAX))
    with np.errstate(divide="ignore", invalid="ignore"):
        raw = block_amax / (np.float32(E2M1_MAX) * scale_2)
    raw = np.where((raw == 0) | ~np.isfinite(raw), np.float32(1), raw)
    codes = e4m3_encode(np.maximum(raw, np.float32(2.0**-9)))
    return scale_2, codes, (e4m3_decode(codes) * scale_2).astype(np.float32)


def _ct_scales(amax: np.float32, block_amax: np.ndarray) -> tuple[np.float32, np.ndarray, np.ndarray]:
    """(global_scale, E4M3 codes, effective block scale e4m3 / global_scale), as
    compressed-tensors computes them."""
    tiny = np.finfo(np.float32).tiny
    # torch computes `2688 / amax` as 2688 * (1 / amax), which can differ from a division by an ulp
    global_scale = np.float32(np.float32(E4M3_MAX * E2M1_MAX) * (np.float32(1) / max(amax, tiny)))
    if not np.isfinite(global_scale):
        global_scale = np.float32(1)  # generate_gparam's nan_to_num fallback
    raw = (global_scale * (block_amax / np.float32(E2M1_MAX))).astype(np.float32)
    codes = e4m3_encode(np.clip(raw, -E4M3_MAX, E4M3_MAX))
    codes = np.where(codes == 0, e4m3_encode(np.float32(0.125)), codes)  # calculate_qparams' eps for E4M3
    return global_scale, codes, (e4m3_decode(codes) / global_scale).astype(np.float32)


@dataclass(frozen=True)
class Fp8:
    codes: np.ndarray  # uint8 E4M3 [rows, cols]
    scale: np.ndarray  # float32 [ceil(rows/b0), ceil(cols/b1)]
    block: tuple[int, int]  # rows and columns one scale covers
    dequantized: np.ndarray  # float32 [rows, cols]


def fp8_block(shape: tuple[int, int], granularity: str | tuple[int, int]) -> tuple[int, int]:
    """The (rows, cols) one FP8 scale covers: "tensor", "channel" (a row), or a block."""
    rows, cols = shape
    if granularity == "tensor":
        return max(rows, 1), max(cols, 1)
    if granularity == "channel":
        return 1, max(cols, 1)
    if isinstance(granularity, tuple) and len(granularity) == 2:
        return granularity
    raise ValueError(f"unknown FP8 granularity {granularity!r}")


def expand_scale(scale: np.ndarray, block: tuple[int, int], rows: range, cols: int) -> np.ndarray:
    """The per-element scale of `rows` from a scale grid whose row 0 is the block of rows.start."""
    first = rows.start // block[0]
    row_index = np.arange(rows.start, rows.stop) // block[0] - first
    col_index = np.arange(cols) // block[1]
    return scale[row_index][:, col_index]


def quantize_fp8(w: np.ndarray, granularity: str | tuple[int, int] = "tensor") -> Fp8:
    """Quantize a 2-d weight to FP8 E4M3 with one float32 scale = amax / 448 per tensor, row or block."""
    w = np.asarray(w, dtype=np.float32)
    rows, cols = w.shape
    block = fp8_block((rows, cols), granularity)
    grid = (-(-rows // block[0]), -(-cols // block[1]))
    padded = np.zeros((grid[0] * block[0], grid[1] * block[1]), dtype=np.float32)
    padded[:rows, :cols] = np.abs(w)
    amax = padded.reshape(grid[0], block[0], grid[1], block[1]).max(axis=(1, 3))
    scale = (amax / np.float32(E4M3_MAX)).astype(np.float32)
    full = expand_scale(scale, block, range(rows), cols)
    divisor = np.where(full == 0, np.float32(1), full)  # an all-zero block stays zero (ModelOpt does the same)
    codes = e4m3_encode(np.clip(w / divisor, -E4M3_MAX, E4M3_MAX))
    return Fp8(codes, scale, block, (e4m3_decode(codes) * full).astype(np.float32))
