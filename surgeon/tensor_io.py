"""Reading tensor bytes in bounded chunks, straight from the shard files."""

from __future__ import annotations

import mmap
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


class MappedShard:
    """A shard file mapped read-only: views of its bytes without copies.

    Mapped pages that were read count towards the process's resident size, so callers
    release() each range when done with it; the pages stay in the page cache.
    """

    def __init__(self, path: Path, expected_size: int | None = None):
        self.path = path
        try:
            with open(path, "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                if expected_size is not None and size != expected_size:
                    raise SurgeonError(f"{path}: file is {size} bytes, its header says {expected_size}")
                self._map = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) if size else None
        except OSError as exc:
            raise SurgeonError(f"{path}: cannot read ({exc.strerror})") from None
        self._view = memoryview(self._map) if self._map is not None else memoryview(b"")
        self.size = size

    def view(self, start: int, end: int) -> memoryview:
        return self._view[start:end]

    def release(self, start: int, end: int) -> None:
        """Drop [start, end) from this process's resident set (whole pages inside it)."""
        first = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE
        last = end // mmap.PAGESIZE * mmap.PAGESIZE
        if self._map is not None and last > first:
            self._map.madvise(mmap.MADV_DONTNEED, first, last - first)

    def close(self) -> None:
        self._view.release()
        if self._map is not None:
            self._map.close()

    def __enter__(self) -> MappedShard:
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


def views_equal(a: memoryview, b: memoryview, scratch: np.ndarray) -> bool:
    """Byte equality, compared as 64-bit words into a preallocated bool buffer."""
    if len(a) != len(b):
        return False
    words = len(a) // 8
    step = len(scratch)
    wa = np.frombuffer(a, dtype=np.uint64, count=words)
    wb = np.frombuffer(b, dtype=np.uint64, count=words)
    for first in range(0, words, step):
        out = scratch[: min(step, words - first)]
        if not np.equal(wa[first : first + step], wb[first : first + step], out=out).all():
            return False
    return a[words * 8 :].tobytes() == b[words * 8 :].tobytes()
