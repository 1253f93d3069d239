"""Reading a reshaped pair's attention projections a head at a time (surgeon.diff.reshape).

A reshape slices whole heads out and moves nothing else, so OTHER's head at position p is
BASE's head kept[p]: q/k/v hold it as `head_dim` consecutive rows (a bias as `head_dim`
consecutive elements), o_proj as `head_dim` consecutive input columns. Memory is one head's
rows of each side, or a chunk of o_proj's rows, never a whole tensor.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from surgeon.diff.stats import STATS_CHUNK_ELEMENTS, PairStats, TensorStats
from surgeon.format.dtypes import raw_view
from surgeon.format.safetensors import TensorInfo
from surgeon.format.tensor_io import ShardReader


@dataclass
class KeptHeads:
    """Each kept head of one tensor against BASE's same head, by position in `kept`."""

    changed: list[bool]
    base_zero: list[bool]
    other_zero: list[bool]
    stats: TensorStats | None  # over the kept heads only; None unless asked for and numeric


def readable(info: TensorInfo) -> bool:
    """Whole-byte elements surgeon can view raw: what a head-by-head read needs."""
    return info.dtype.raw is not None and info.dtype.bits % 8 == 0 and info.nbytes > 0


def head_digests(path: Path, info: TensorInfo, heads: int, dim: int) -> list[bytes]:
    """A digest of each head's rows (q/k/v), read one head at a time: a kept head's rows
    are byte-identical to BASE's, which is how a reshape with no manifest is matched."""
    with ShardReader(path) as reader:
        return [hashlib.blake2b(_head(reader, info, h, dim), digest_size=16).digest() for h in range(heads)]


def compare_rows(
    paths: tuple[Path, Path], infos: tuple[TensorInfo, TensorInfo], kept: list[int], dim: int, stats: bool
) -> KeptHeads:
    """q/k/v (weight or bias): OTHER's head p against BASE's head kept[p], a head at a time."""
    base, other = infos
    acc = PairStats(base.dtype) if stats and base.dtype.numeric else None
    out = KeptHeads([], [], [], None)
    with ShardReader(paths[0]) as rb, ShardReader(paths[1]) as ro:
        for position, head in enumerate(kept):
            raw_b = raw_view(_head(rb, base, head, dim), base.dtype)
            raw_o = raw_view(_head(ro, other, position, dim), other.dtype)
            out.changed.append(not np.array_equal(raw_b, raw_o))
            out.base_zero.append(not np.any(raw_b))  # raw bits: a -0.0 counts as not zero
            out.other_zero.append(not np.any(raw_o))
            if acc is not None:
                acc.add(raw_b, raw_o)
    out.stats = acc.stats() if acc is not None else None
    return out


def compare_cols(
    paths: tuple[Path, Path], infos: tuple[TensorInfo, TensorInfo], kept: list[int], dim: int, stats: bool
) -> KeptHeads:
    """o_proj: OTHER's input columns of head p against BASE's columns of head kept[p], over
    chunks of whole rows (every row holds a slice of every head)."""
    base, other = infos
    rows, width = base.shape[0], base.dtype.bits // 8
    heads_b = base.shape[1] // dim
    acc = PairStats(base.dtype) if stats and base.dtype.numeric else None
    changed, nonzero_b, nonzero_o = (np.zeros(len(kept), dtype=bool) for _ in range(3))
    step = max(1, STATS_CHUNK_ELEMENTS // max(base.shape[1], 1))
    with ShardReader(paths[0]) as rb, ShardReader(paths[1]) as ro:
        for first in range(0, rows, step):
            n = min(step, rows - first)
            whole = raw_view(rb.read(base.start + first * base.shape[1] * width, n * base.shape[1] * width), base.dtype)
            raw_b = whole.reshape(n, heads_b, dim)[:, kept, :]  # a copy: the kept heads' columns, in OTHER's order
            raw_o = raw_view(
                ro.read(other.start + first * other.shape[1] * width, n * other.shape[1] * width), other.dtype
            )
            raw_o = raw_o.reshape(n, len(kept), dim)
            changed |= np.any(raw_b != raw_o, axis=(0, 2))
            nonzero_b |= np.any(raw_b != 0, axis=(0, 2))
            nonzero_o |= np.any(raw_o != 0, axis=(0, 2))
            if acc is not None:
                acc.add(np.ascontiguousarray(raw_b).ravel(), raw_o.ravel())
    return KeptHeads(
        changed.tolist(),
        (~nonzero_b).tolist(),
        (~nonzero_o).tolist(),
        acc.stats() if acc is not None else None,
    )


def _head(reader: ShardReader, info: TensorInfo, head: int, dim: int) -> memoryview:
    """Head `head`'s rows of a q/k/v weight (or its elements of a bias), valid until the
    reader's next read."""
    row_bytes = info.nbytes // info.shape[0]
    return reader.read(info.start + head * dim * row_bytes, dim * row_bytes)
