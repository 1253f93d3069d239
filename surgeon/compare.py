"""Byte comparison of tensors without hashing (`surgeon diff --no-hash`)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from surgeon.errors import Cancelled
from surgeon.hashing import default_workers
from surgeon.safetensors_format import TensorInfo
from surgeon.tensor_io import ShardReader, element_chunks, views_equal


@dataclass(frozen=True)
class Pair:
    name: str
    base_path: Path
    base: TensorInfo
    other_path: Path
    other: TensorInfo


def compare_pairs(
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
    with ThreadPoolExecutor(workers or default_workers()) as pool:
        futures = [
            pool.submit(_compare_group, base == other, group, progress, cancel)
            for (base, other), group in largest_first
        ]
        for future in futures:
            result.update(future.result())
    return result


def _compare_group(same_file: bool, group: list[Pair], progress, cancel) -> dict[str, bool]:
    group = sorted(group, key=lambda p: p.base.start)
    with ShardReader(group[0].base_path) as a, ShardReader(group[0].other_path) as b:
        return {p.name: _equal(p, a, b, same_file, progress, cancel) for p in group}


def _equal(pair: Pair, a: ShardReader, b: ShardReader, same_file: bool, progress, cancel) -> bool:
    if pair.base.nbytes != pair.other.nbytes:
        return False
    if same_file and pair.base.start == pair.other.start:
        return True
    for offset, size in element_chunks(pair.base, len(a.buffer)):
        if cancel is not None and cancel.is_set():
            raise Cancelled()
        same = views_equal(a.read(pair.base.start + offset, size), b.read(pair.other.start + offset, size))
        if progress:
            progress(size)
        if not same:
            return False
    return True
