import hashlib
import os
import shutil
import time

import pytest

from surgeon.diff.engine import DiffOptions, diff_checkpoints
from surgeon.format import hashing
from surgeon.format.checkpoint import open_checkpoint
from surgeon.format.hashcache import HashCache
from surgeon.format.hashing import hash_one_file, hash_shards
from tests.format.test_checkpoint import make_hub_cache
from tests.helpers import BASE, PRUNED, count_reads


def expected_hashes(shard):
    data = shard.path.read_bytes()
    tensors = {n: hashlib.sha256(data[i.start : i.end]).hexdigest() for n, i in shard.tensors.items()}
    return hashlib.sha256(data).hexdigest(), tensors


@pytest.mark.parametrize("chunk", [7, 4096, 1 << 22])
def test_one_read_gives_file_and_tensor_hashes(monkeypatch, chunk):
    # Chunk sizes that split tensors (and the header) at odd places.
    monkeypatch.setattr(hashing, "CHUNK_BYTES", chunk)
    shard = open_checkpoint(BASE).shards["model-00002-of-00002.safetensors"]
    got = hash_one_file(shard)
    assert (got.file_sha256, got.tensors) == expected_hashes(shard)
    assert got.bytes_read == shard.file_size


def test_known_file_hash_skips_the_header(monkeypatch):
    shard = open_checkpoint(BASE).shards["model-00001-of-00002.safetensors"]
    got = hash_one_file(shard, known_sha="f" * 64)
    assert got.file_sha256 == "f" * 64
    assert got.tensors == expected_hashes(shard)[1]
    assert got.bytes_read == shard.file_size - shard.data_start


def test_warm_cache_reads_nothing(tmp_path, monkeypatch):
    cache = HashCache(tmp_path / "cache")
    shards = list(open_checkpoint(BASE).shards.values())
    calls = count_reads(monkeypatch)
    first = hash_shards(shards, cache)
    assert len(calls) == 2
    second = hash_shards(shards, cache)
    assert len(calls) == 2
    assert {k: (v.file_sha256, v.tensors) for k, v in first.items()} == {
        k: (v.file_sha256, v.tensors) for k, v in second.items()
    }
    assert all(v.bytes_read == 0 for v in second.values())


def test_second_diff_against_same_base_hashes_only_the_other_side(tmp_path, monkeypatch):
    options = DiffOptions(cache_dir=tmp_path / "cache")
    diff_checkpoints(open_checkpoint(BASE), open_checkpoint(BASE / ".." / "base"), options)
    calls = count_reads(monkeypatch)
    diff_checkpoints(open_checkpoint(BASE), open_checkpoint(PRUNED), options)
    assert sorted(calls) == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    calls.clear()
    diff_checkpoints(open_checkpoint(BASE), open_checkpoint(PRUNED), options)
    assert calls == []


def test_changed_file_is_rehashed(tmp_path, monkeypatch):
    ckpt_dir = shutil.copytree(BASE, tmp_path / "ckpt")
    cache = HashCache(tmp_path / "cache")
    shard_path = ckpt_dir / "model-00002-of-00002.safetensors"
    before = hash_shards(list(open_checkpoint(ckpt_dir).shards.values()), cache)
    data = bytearray(shard_path.read_bytes())
    data[-1] ^= 0xFF  # flip bits in the last tensor, same size
    time.sleep(0.01)
    shard_path.write_bytes(bytes(data))
    calls = count_reads(monkeypatch)
    after = hash_shards(list(open_checkpoint(ckpt_dir).shards.values()), cache)
    assert calls == ["model-00002-of-00002.safetensors"]
    key = os.path.realpath(shard_path)
    assert after[key].file_sha256 == hashlib.sha256(bytes(data)).hexdigest()
    assert after[key].file_sha256 != before[key].file_sha256


def test_same_file_named_twice_is_read_once(tmp_path, monkeypatch):
    calls = count_reads(monkeypatch)
    shards = list(open_checkpoint(BASE).shards.values())
    hash_shards(shards + list(open_checkpoint(BASE).shards.values()), HashCache(None))
    assert len(calls) == 2


def test_hf_blob_name_is_the_file_hash(tmp_path, monkeypatch):
    from huggingface_hub import constants

    snapshot = make_hub_cache(tmp_path / "hub")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # a real hub cache layout
    cache = HashCache(tmp_path / "cache")
    shards = list(open_checkpoint(snapshot).shards.values())
    result = hash_shards(shards, cache)
    for shard in shards:
        real = os.path.realpath(shard.path)
        assert result[real].file_sha256 == os.path.basename(real)
        assert result[real].bytes_read == shard.file_size - shard.data_start  # header skipped
    assert not (tmp_path / "cache" / "files").exists()  # no stat-keyed entry is needed for a blob
    # A second run, or any other copy of the same content, needs no hashing at all.
    calls = count_reads(monkeypatch)
    again = hash_shards(shards, cache)
    assert calls == []
    assert {k: v.tensors for k, v in again.items()} == {k: v.tensors for k, v in result.items()}


def test_cache_that_cannot_be_written_only_costs_speed(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    shards = list(open_checkpoint(BASE).shards.values())
    result = hash_shards(shards, HashCache(blocker / "cache"))
    assert len(result) == 2


def test_cancel_event_stops_hashing(monkeypatch):
    import threading

    from surgeon.errors import Cancelled

    monkeypatch.setattr(hashing, "CHUNK_BYTES", 4096)
    cancel = threading.Event()
    seen = []

    def progress(n):
        seen.append(n)
        cancel.set()  # cancelled after the first chunk

    shards = list(open_checkpoint(BASE).shards.values())
    with pytest.raises(Cancelled):
        hash_shards(shards, HashCache(None), progress=progress, cancel=cancel, workers=1)
    assert 1 <= len(seen) <= 2  # one chunk per file at most: nothing ran on to the end


def test_error_in_one_worker_stops_the_others():
    import threading

    from surgeon.parallel import map_cancellable

    stopped = threading.Event()

    def work(item, should_stop):
        if item == 0:
            raise ValueError("boom")
        for _ in range(2000):
            if should_stop():
                stopped.set()
                return None
            threading.Event().wait(0.005)
        return item

    with pytest.raises(ValueError, match="boom"):
        map_cancellable(work, [1, 0], workers=2)
    assert stopped.is_set()
