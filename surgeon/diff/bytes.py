"""Byte comparison of tensors without hashing (`surgeon diff --no-hash`)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from surgeon.format.hashing import default_workers
from surgeon.format.safetensors import TensorInfo
from surgeon.format.tensor_io import MappedShard, element_chunks
from surgeon.parallel import check_stop, map_cancellable

# Read with pread (tensor_io.MappedShard) in chunks that stay in the CPU caches between the
# copy and the compare. bench_diff's pair (0.85 GB per side), 2 threads, best wall of 3:
# 16 MiB reads 0.36 s, 2 MiB 0.13 s, 256 KiB 0.22 s (syscalls); mmap views took 0.08 s.
COMPARE_CHUNK_BYTES = 2 << 20
# A full chunk is compared as `bytearray == bytearray` (one memcmp, about 14 GB/s here);
# numpy's word-by-word equal into a bool buffer and .all() made two passes, and a memoryview's
# == compares item by item (15x slower). bench_startup.py's pair (1.07 GB per side, one
# thread, best CPU of 3 on the shared 2-core box): reading alone 0.27 s, reading + memcmp
# 0.33 s, reading + numpy 0.36 s. The pread copy is the floor (mmap would risk SIGBUS, see
# ShardReader).


@dataclass(frozen=True)
class Pair:
    name: str
    base_path: Path
    base: TensorInfo
    other_path: Path
    other: TensorInfo


def compare_bytes(
    pairs: list[Pair],
    progress: Callable[[int], None] | None = None,
    cancel: threading.Event | None = None,
    workers: int | None = None,
) -> dict[str, bool]:
    """Whether each pair's bytes are equal; one thread per pair of files, early exit per tensor."""
    groups: dict[tuple[str, str], list[Pair]] = {}
    for pair in pairs:
        key = (os.path.realpath(pair.base_path), os.path.realpath(pair.other_path))
        groups.setdefault(key, []).append(pair)
    result: dict[str, bool] = {}
    largest_first = sorted(groups.items(), key=lambda kv: -sum(p.base.nbytes for p in kv[1]))

    def work(item, should_stop) -> dict[str, bool]:
        (base, other), group = item
        return _compare_group(base == other, group, progress, should_stop)

    for found in map_cancellable(work, largest_first, workers or default_workers(), cancel):
        result.update(found)
    return result


def _compare_group(same_file: bool, group: list[Pair], progress, should_stop) -> dict[str, bool]:
    group = sorted(group, key=lambda p: p.base.start)
    # Buffers of exactly one chunk: reads never exceed it, so a full chunk fills each buffer.
    buffers = bytearray(COMPARE_CHUNK_BYTES), bytearray(COMPARE_CHUNK_BYTES)
    with (
        MappedShard(group[0].base_path, buffer=buffers[0]) as a,
        MappedShard(group[0].other_path, buffer=buffers[1]) as b,
    ):
        return {p.name: _equal(p, a, b, same_file, progress, should_stop) for p in group}


def _equal(pair: Pair, a: MappedShard, b: MappedShard, same_file, progress, should_stop) -> bool:
    if pair.base.nbytes != pair.other.nbytes:
        return False
    if same_file and pair.base.start == pair.other.start:
        return True
    for offset, size in element_chunks(pair.base, COMPARE_CHUNK_BYTES):
        check_stop(should_stop)
        start_a, start_b = pair.base.start + offset, pair.other.start + offset
        with a.view(start_a, start_a + size) as view_a, b.view(start_b, start_b + size) as view_b:
            same = _same(a.buffer, b.buffer, view_a, view_b)
        if progress:
            progress(size)
        if not same:
            return False
    return True


def _same(buffer_a: bytearray, buffer_b: bytearray, view_a: memoryview, view_b: memoryview) -> bool:
    """Byte equality of two views of the readers' buffers: one memcmp where each view is its
    whole buffer (a full chunk), else (a tensor's last, shorter chunk) of copies of the views."""
    if len(view_a) == len(buffer_a) == len(buffer_b):
        return buffer_a == buffer_b
    return view_a.tobytes() == view_b.tobytes()
