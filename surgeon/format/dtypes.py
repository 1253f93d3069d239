"""Safetensors dtypes: their sizes, and decoding raw bytes to float64 with numpy alone.

numpy has no bfloat16 or fp8 types, so those are decoded from their bit patterns.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np


@dataclass(frozen=True)
class DType:
    name: str
    bits: int
    # numpy type holding one element's raw bits; None for sub-byte and complex types,
    # which surgeon compares byte-for-byte but does not decode.
    raw: str | None
    numeric: bool


_TABLE = [
    DType("BOOL", 8, "u1", True),
    DType("U8", 8, "u1", True),
    DType("I8", 8, "i1", True),
    DType("U16", 16, "<u2", True),
    DType("I16", 16, "<i2", True),
    DType("U32", 32, "<u4", True),
    DType("I32", 32, "<i4", True),
    DType("U64", 64, "<u8", True),
    DType("I64", 64, "<i8", True),
    DType("F16", 16, "<u2", True),
    DType("BF16", 16, "<u2", True),
    DType("F32", 32, "<u4", True),
    DType("F64", 64, "<u8", True),
    DType("F8_E4M3", 8, "u1", True),
    DType("F8_E5M2", 8, "u1", True),
    DType("F8_E8M0", 8, "u1", True),
    DType("F4", 4, None, False),
    DType("F6_E2M3", 6, None, False),
    DType("F6_E3M2", 6, None, False),
    DType("C64", 64, None, False),
]
DTYPES: dict[str, DType] = {d.name: d for d in _TABLE}


TOO_BIG = -1  # nbytes_for's answer past 2**128 bits: more than any file holds


def nbytes_for(dtype: DType, shape: tuple[int, ...] | list[int]) -> int | None:
    """Byte size of a tensor; None when its bit count is not a whole number of bytes, TOO_BIG
    past 2**128 bits: a shape of a thousand 4000-digit numbers (from a hostile header) must
    not turn into hours of big-int products."""
    if 0 in shape:
        return 0
    bits = dtype.bits
    for dim in shape:
        bits *= dim
        if bits >> 128:
            return TOO_BIG
    return bits // 8 if bits % 8 == 0 else None


def _fp8_table(exp_bits: int, man_bits: int, finite_only: bool) -> np.ndarray:
    bias = (1 << (exp_bits - 1)) - 1
    values = np.empty(256, dtype=np.float64)
    for code in range(256):
        sign = -1.0 if code & 0x80 else 1.0
        exp = (code >> man_bits) & ((1 << exp_bits) - 1)
        man = code & ((1 << man_bits) - 1)
        if finite_only and exp == (1 << exp_bits) - 1 and man == (1 << man_bits) - 1:
            values[code] = np.nan  # e4m3fn: only S.1111.111 is NaN, there is no infinity
        elif not finite_only and exp == (1 << exp_bits) - 1:
            values[code] = sign * np.inf if man == 0 else np.nan
        elif exp == 0:
            values[code] = sign * (man / (1 << man_bits)) * 2.0 ** (1 - bias)
        else:
            values[code] = sign * (1 + man / (1 << man_bits)) * 2.0 ** (exp - bias)
    return values


@cache
def _lookup(name: str) -> np.ndarray:
    if name == "F8_E4M3":
        return _fp8_table(4, 3, finite_only=True)
    if name == "F8_E5M2":
        return _fp8_table(5, 2, finite_only=False)
    if name == "F8_E8M0":
        table = 2.0 ** (np.arange(256, dtype=np.float64) - 127)
        table[255] = np.nan
        return table
    raise KeyError(name)


def raw_view(buffer, dtype: DType) -> np.ndarray:
    """The tensor's elements as unsigned/signed integers of their own width (no copy)."""
    return np.frombuffer(buffer, dtype=np.dtype(dtype.raw))


def to_float64(raw: np.ndarray, dtype: DType) -> np.ndarray:
    """Decode an array from raw_view() to float64 values."""
    with np.errstate(invalid="ignore"):  # NaN payloads are kept as NaN, not worth a warning
        return _decode(raw, dtype.name)


def _decode(raw: np.ndarray, name: str) -> np.ndarray:
    if name == "BF16":
        return (raw.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    if name == "F16":
        return raw.view(np.float16).astype(np.float64)
    if name == "F32":
        return raw.view(np.float32).astype(np.float64)
    if name == "F64":
        return raw.view(np.float64)
    if name.startswith("F8_"):
        return _lookup(name)[raw]
    return raw.astype(np.float64)


def decode_into(raw: np.ndarray, dtype: DType, out: np.ndarray, scratch: np.ndarray) -> np.ndarray:
    """to_float64() into preallocated buffers: `out` float64 and `scratch` uint32, each at
    least raw.size long. Fresh multi-MB arrays per chunk cost page faults that dominate."""
    n = raw.size
    out = out[:n]
    name = dtype.name
    with np.errstate(invalid="ignore"):
        if name == "BF16":
            bits = np.left_shift(raw, 16, out=scratch[:n], dtype=np.uint32)
            np.copyto(out, bits.view(np.float32))
        elif name == "F16":
            np.copyto(out, raw.view(np.float16))
        elif name == "F32":
            np.copyto(out, raw.view(np.float32))
        elif name == "F64":
            np.copyto(out, raw.view(np.float64))
        elif name.startswith("F8_"):
            np.take(_lookup(name), raw, out=out)
        else:
            np.copyto(out, raw, casting="unsafe")
    return out


def float32_to_bf16_bits(values: np.ndarray) -> np.ndarray:
    """Round float32 values to bfloat16 (nearest, ties to even); returns the uint16 bits."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounding = ((bits >> 16) & 1) + np.uint32(0x7FFF)
    rounded = ((bits.astype(np.uint64) + rounding) >> 16).astype(np.uint16)
    nan = np.isnan(values)
    if nan.any():
        rounded[nan] = 0x7FC0
    return rounded
