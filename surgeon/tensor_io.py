"""Reading tensor bytes in bounded chunks, straight from the shard files."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from surgeon.errors import SurgeonError
from surgeon.safetensors_format import TensorInfo

CHUNK_BYTES = 8 << 20


class ShardReader:
    """An open shard file; reads land in one reusable buffer per reader."""

    def __init__(self, path: Path, chunk_bytes: int = CHUNK_BYTES):
        self.path = path
        try:
            self.fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            raise SurgeonError(f"{path}: cannot read ({exc.strerror})") from None
        self.buffer = bytearray(chunk_bytes)

    def read(self, offset: int, size: int) -> memoryview:
        """`size` bytes at `offset`, valid until the next read."""
        if size > len(self.buffer):
            self.buffer = bytearray(size)  # a single row larger than a chunk: rare, so grow
        view = memoryview(self.buffer)[:size]
        got = os.preadv(self.fd, [view], offset)
        if got != size:
            raise SurgeonError(f"{self.path}: ended early, reading {size} bytes at offset {offset}")
        return view

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> ShardReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def row_chunks(info: TensorInfo, max_bytes: int, row_multiple: int = 1) -> Iterator[tuple[int, int]]:
    """(first_row, row_count) spans of a 2-d tensor's rows that fit in max_bytes.

    Spans are a multiple of row_multiple rows where possible (head boundaries).
    """
    rows = info.shape[0]
    row_bytes = info.nbytes // rows if rows else 0
    if rows == 0 or row_bytes == 0:
        return
    per_chunk = max(1, max_bytes // row_bytes)
    if per_chunk >= row_multiple:
        per_chunk -= per_chunk % row_multiple
    for first in range(0, rows, per_chunk):
        yield first, min(per_chunk, rows - first)


def element_chunks(info: TensorInfo, max_bytes: int) -> Iterator[tuple[int, int]]:
    """(byte_offset_in_tensor, byte_count) spans covering the tensor, whole elements each."""
    item = max(1, info.dtype.bits // 8)
    step = max(item, max_bytes - max_bytes % item)
    for offset in range(0, info.nbytes, step):
        yield offset, min(step, info.nbytes - offset)


def views_equal(a: memoryview, b: memoryview) -> bool:
    if len(a) != len(b):
        return False
    words = len(a) // 8 * 8
    if words and not np.array_equal(
        np.frombuffer(a[:words], dtype=np.uint64), np.frombuffer(b[:words], dtype=np.uint64)
    ):
        return False
    return a[words:].tobytes() == b[words:].tobytes()
