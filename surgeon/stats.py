"""Numeric difference statistics and the per-head view of attention projections.

Tensors are read in row chunks and decoded to float64 chunk by chunk, so memory stays
bounded however large the tensor. Head membership follows the projection's layout:
q/k/v_proj split their output rows into heads, o_proj its input columns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from surgeon.dtypes import raw_view, to_float64
from surgeon.safetensors_format import TensorInfo
from surgeon.tensor_io import ShardReader, element_chunks, row_chunks

STATS_CHUNK_BYTES = 8 << 20


@dataclass(frozen=True)
class HeadLayout:
    axis: str  # "rows" (q/k/v_proj output) or "cols" (o_proj input)
    num_heads: int
    head_dim: int

    def fits(self, info: TensorInfo) -> bool:
        if len(info.shape) != 2:
            return False
        size = info.shape[0] if self.axis == "rows" else info.shape[1]
        return size == self.num_heads * self.head_dim


@dataclass
class TensorStats:
    max_abs_delta: float | None
    rel_frobenius: float | None  # ||other - base|| / ||base||
    cosine: float | None
    frac_changed: float  # fraction of elements whose bits differ
    elements_changed: int


@dataclass
class HeadScan:
    """Per head: is it all zeros on each side, and do its bits differ."""

    layout: HeadLayout
    base_zero: list[bool] = field(default_factory=list)
    other_zero: list[bool] = field(default_factory=list)
    changed: list[bool] = field(default_factory=list)

    def statuses(self) -> list[str]:
        out = []
        for base_zero, other_zero, changed in zip(self.base_zero, self.other_zero, self.changed, strict=True):
            if other_zero and not base_zero:
                out.append("zeroed")
            else:
                out.append("changed" if changed else "unchanged")
        return out


class _Accumulator:
    def __init__(self, layout: HeadLayout | None):
        self.max_abs = 0.0
        self.sum_dd = self.sum_bb = self.sum_oo = self.sum_bo = 0.0
        self.changed = 0
        self.numel = 0
        self.nan = False
        self.layout = layout
        self._row_cursor = 0
        heads = layout.num_heads if layout else 0
        self.base_nonzero = np.zeros(heads, dtype=bool)
        self.other_nonzero = np.zeros(heads, dtype=bool)
        self.head_changed = np.zeros(heads, dtype=bool)

    def add(self, base: np.ndarray, other: np.ndarray, differ: np.ndarray, rows: int) -> None:
        delta = other - base
        if delta.size:
            peak = float(np.max(np.abs(delta)))
            self.nan |= math.isnan(peak)
            self.max_abs = max(self.max_abs, peak) if not math.isnan(peak) else self.max_abs
        self.sum_dd += float(np.dot(delta, delta))
        self.sum_bb += float(np.dot(base, base))
        self.sum_oo += float(np.dot(other, other))
        self.sum_bo += float(np.dot(base, other))
        self.changed += int(np.count_nonzero(differ))
        self.numel += differ.size
        if self.layout is not None:
            self._add_heads(base, other, differ, rows)

    def _add_heads(self, base, other, differ, rows) -> None:
        heads, dim = self.layout.num_heads, self.layout.head_dim
        if self.layout.axis == "cols":
            shape, axes = (rows, heads, dim), (0, 2)
            index = slice(None)
        else:
            first_head = self._row_cursor // dim
            count = rows // dim
            shape, axes = (count, -1), (1,)
            index = slice(first_head, first_head + count)
            self._row_cursor += rows
        self.base_nonzero[index] |= np.any(base.reshape(shape) != 0, axis=axes)
        self.other_nonzero[index] |= np.any(other.reshape(shape) != 0, axis=axes)
        self.head_changed[index] |= np.any(differ.reshape(shape), axis=axes)

    def stats(self) -> TensorStats:
        norm_b, norm_o = math.sqrt(self.sum_bb), math.sqrt(self.sum_oo)
        rel = math.sqrt(self.sum_dd) / norm_b if norm_b > 0 else None
        if norm_b > 0 and norm_o > 0:
            cosine = max(-1.0, min(1.0, self.sum_bo / (norm_b * norm_o)))
        else:
            cosine = 1.0 if norm_b == norm_o == 0 else None
        frac = self.changed / self.numel if self.numel else 0.0
        finite = not self.nan and all(map(math.isfinite, (self.sum_dd, self.sum_bb, self.sum_oo)))
        return TensorStats(
            max_abs_delta=self.max_abs if not self.nan else None,
            rel_frobenius=rel if finite else None,
            cosine=cosine if finite else None,
            frac_changed=frac,
            elements_changed=self.changed,
        )

    def heads(self) -> HeadScan | None:
        if self.layout is None:
            return None
        return HeadScan(
            self.layout,
            base_zero=[not v for v in self.base_nonzero.tolist()],
            other_zero=[not v for v in self.other_nonzero.tolist()],
            changed=self.head_changed.tolist(),
        )


def _spans(info: TensorInfo, layout: HeadLayout | None):
    """(byte offset, byte count, rows) chunks; head layouts get whole heads per chunk."""
    if layout is None:
        for offset, size in element_chunks(info, STATS_CHUNK_BYTES):
            yield offset, size, 0
        return
    row_bytes = info.nbytes // info.shape[0]
    multiple = layout.head_dim if layout.axis == "rows" else 1
    for first, rows in row_chunks(info, STATS_CHUNK_BYTES, multiple):
        yield first * row_bytes, rows * row_bytes, rows


def compare_tensors(
    base_path: Path,
    base: TensorInfo,
    other_path: Path,
    other: TensorInfo,
    layout: HeadLayout | None = None,
) -> tuple[TensorStats, HeadScan | None]:
    """Stats of other - base for two tensors of the same numeric dtype and shape."""
    if layout is not None and not layout.fits(base):
        layout = None
    acc = _Accumulator(layout)
    with ShardReader(base_path, STATS_CHUNK_BYTES) as a, ShardReader(other_path, STATS_CHUNK_BYTES) as b:
        for offset, size, rows in _spans(base, layout):
            raw_b = raw_view(a.read(base.start + offset, size), base.dtype)
            raw_o = raw_view(b.read(other.start + offset, size), other.dtype)
            acc.add(to_float64(raw_b, base.dtype), to_float64(raw_o, other.dtype), raw_b != raw_o, rows)
    return acc.stats(), acc.heads()


def zero_heads(path: Path, info: TensorInfo, layout: HeadLayout) -> list[bool] | None:
    """Which heads of one tensor are entirely zero, or None if the layout does not fit."""
    if not layout.fits(info):
        return None
    scan = compare_tensors(path, info, path, info, layout)[1]
    return scan.other_zero
