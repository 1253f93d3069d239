"""Per-file and per-tensor SHA256 in a single read of each file, files in parallel threads.

Each chunk read from a shard feeds the whole-file hash (on a helper thread) and the hash of
every tensor whose byte range it overlaps (on the reading thread); hashlib releases the GIL,
so both cores work. Memory stays at a few chunk buffers whatever the checkpoint size.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from surgeon.errors import SurgeonError
from surgeon.format.hashcache import FileIdentity, HashCache, hf_blob_sha256
from surgeon.format.safetensors import ShardHeader
from surgeon.format.tensor_io import MappedShard
from surgeon.jsonfile import open_regular
from surgeon.parallel import StopCheck, check_stop, map_cancellable

CHUNK_BYTES = 4 << 20
Progress = Callable[[int], None]


@dataclass(frozen=True)
class FileHashes:
    file_sha256: str
    tensors: dict[str, str]
    bytes_read: int  # 0 when every hash came from the cache or the file's HF blob name
    # Where file_sha256 came from: "bytes" (hashed now), "cache" (hashed earlier, found by the
    # file's stat key) or "hub-blob-name" (the name huggingface_hub gave the blob; not hashed).
    source: str = "bytes"


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def hash_shards(
    shards: list[ShardHeader],
    cache: HashCache,
    *,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
    workers: int | None = None,
    trust_cache: bool = True,
    trust_blob_names: bool = True,
) -> dict[str, FileHashes]:
    """Hashes of each shard, keyed by the file's real path (a file named twice is read once).

    `progress` is called with each chunk's byte count as it is hashed; bytes_to_hash()
    gives the total to expect. `trust_cache` lets a stat-keyed cache entry stand for the
    bytes, `trust_blob_names` a Hugging Face blob's name for its SHA256 (speed-ups for
    diff); without them every byte is read. Fresh hashes are stored in the cache either way.
    """
    results: dict[str, FileHashes] = {}
    pending: dict[str, tuple[ShardHeader, FileIdentity, str | None]] = {}
    for shard in shards:
        ident = _identity(shard)
        if ident.real_path in results or ident.real_path in pending:
            continue
        cached = _from_cache(shard, ident, cache, trust_blob_names) if trust_cache else None
        if cached is not None:
            results[ident.real_path] = cached
        else:
            pending[ident.real_path] = (shard, ident, hf_blob_sha256(shard.path) if trust_blob_names else None)
    if not pending:
        return results
    workers = workers or default_workers()
    order = sorted(pending.values(), key=lambda item: -item[0].file_size)
    with ThreadPoolExecutor(workers) as side_pool:

        def work(item, should_stop):
            shard, ident, known = item
            return _hash_and_store(shard, ident, known, cache, side_pool, progress, should_stop)

        hashed = map_cancellable(work, order, workers, cancel)
    for (_, ident, _), hashes in zip(order, hashed, strict=True):
        results[ident.real_path] = hashes
    return results


def bytes_to_hash(
    shards: list[ShardHeader], cache: HashCache, *, trust_cache: bool = True, trust_blob_names: bool = True
) -> int:
    """How many bytes hash_shards() will read for these shards: for sizing a progress bar."""
    seen: set[str] = set()
    total = 0
    for shard in shards:
        ident = _identity(shard)
        if ident.real_path in seen:
            continue
        seen.add(ident.real_path)
        if trust_cache and _from_cache(shard, ident, cache, trust_blob_names) is not None:
            continue
        named = trust_blob_names and hf_blob_sha256(shard.path) is not None
        total += shard.file_size - (shard.data_start if named else 0)
    return total


def _identity(shard: ShardHeader) -> FileIdentity:
    try:
        return FileIdentity.of(shard.path)
    except OSError as exc:
        raise SurgeonError(f"{shard.path}: cannot stat ({exc.strerror})") from None


def _from_cache(shard: ShardHeader, ident: FileIdentity, cache: HashCache, trust_blob_names: bool = True):
    """The shard's hashes without reading it, or None. A blob's name stands for the file's
    SHA256 only where hf_blob_sha256 says it is a real hub cache blob."""
    named = hf_blob_sha256(shard.path) if trust_blob_names else None
    file_sha = named or cache.file_sha256(ident)
    if file_sha is None:
        return None
    tensors = cache.tensor_sha256(file_sha)
    if tensors is None or tensors.keys() != shard.tensors.keys():
        return None
    return FileHashes(file_sha, tensors, 0, "hub-blob-name" if named else "cache")


def _hash_and_store(
    shard: ShardHeader,
    ident: FileIdentity,
    known_sha: str | None,
    cache: HashCache,
    side_pool: Executor,
    progress: Progress | None,
    should_stop: StopCheck | None,
) -> FileHashes:
    hashes = hash_one_file(shard, known_sha=known_sha, side_pool=side_pool, progress=progress, should_stop=should_stop)
    if FileIdentity.of(shard.path) != ident:
        raise SurgeonError(f"{shard.path}: changed while it was being read")
    cache.store_tensors(hashes.file_sha256, hashes.tensors)
    if known_sha is not None:  # a Hugging Face blob is named by its hash: no stat entry needed
        return dataclasses.replace(hashes, source="hub-blob-name")
    cache.store_file(ident, hashes.file_sha256)
    return hashes


def hash_one_file(
    shard: ShardHeader,
    *,
    known_sha: str | None = None,
    side_pool: Executor | None = None,
    progress: Progress | None = None,
    should_stop: StopCheck | None = None,
) -> FileHashes:
    """One sequential read of a shard: its file SHA256 (unless known) and every tensor's."""
    spans = sorted((info.start, info.end, name) for name, info in shard.tensors.items())
    tensor_hashers = {name: hashlib.sha256() for name in shard.tensors}
    file_hasher = None if known_sha else hashlib.sha256()
    first = 0 if file_hasher else shard.data_start
    next_span = 0
    with MappedShard(shard.path, shard.file_size) as mapped:
        for position in range(first, shard.file_size, CHUNK_BYTES):
            end = min(position + CHUNK_BYTES, shard.file_size)
            with mapped.view(position, end) as block:
                side = _start_file_hash(file_hasher, block, side_pool)
                try:
                    next_span = _feed_tensors(spans, next_span, tensor_hashers, block, position)
                finally:
                    if side is not None:
                        side.result()  # the file hash reads `block`: done before the next read reuses it
            if progress:
                progress(end - position)
            check_stop(should_stop)
    file_sha = known_sha if file_hasher is None else file_hasher.hexdigest()
    assert file_sha is not None  # there is no file hasher only when the SHA was known
    tensors = {name: hasher.hexdigest() for name, hasher in tensor_hashers.items()}
    return FileHashes(file_sha, tensors, shard.file_size - first)


def _start_file_hash(hasher, block: memoryview, pool: Executor | None):
    if hasher is None:
        return None
    if pool is None:
        hasher.update(block)
        return None
    return pool.submit(hasher.update, block)


def _feed_tensors(spans, index: int, hashers, block: memoryview, position: int) -> int:
    """Feed the part of `block` (at file offset `position`) that each tensor owns."""
    end_of_block = position + len(block)
    while index < len(spans):
        start, end, name = spans[index]
        if start >= end_of_block:
            break
        lo, hi = max(start, position), min(end, end_of_block)
        if hi > lo:
            hashers[name].update(block[lo - position : hi - position])
        if end > end_of_block:
            break
        index += 1
    return index


def file_sha256(path: Path) -> str:
    """A side file's SHA256 (config, tokenizer, index), read to the end: a regular file only
    (a FIFO or device swapped in after the folder was listed is one SurgeonError, not a hang)."""
    digest = hashlib.sha256()
    with open_regular(path) as (fd, _):
        while block := os.read(fd, 1 << 20):
            digest.update(block)
    return digest.hexdigest()
