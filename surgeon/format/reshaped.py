"""Write a checkpoint some of whose tensors change shape (reshape mode: heads sliced out).

The same contract as surgeon.format.writer, whose pieces it uses: a shard with no reshaped
tensor is the base's file, copied by the kernel and hashed as written; every other shard
gets a new header (same tensors, same order, same metadata; new shapes and offsets) and
each tensor not reshaped is copied byte for byte into it. config.json and the index are
replaced by the caller's bytes (a new head count, a new total size). Everything goes into a
temporary sibling folder that one no-replace rename publishes. Torch-free: the caller
gives raw bytes.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from surgeon.atomic import output_errors, temp_dir
from surgeon.errors import Cancelled, SurgeonError
from surgeon.format.checkpoint import Checkpoint
from surgeon.format.dtypes import nbytes_for
from surgeon.format.manifest import MANIFEST_NAME, manifest_json
from surgeon.format.safetensors import encode_header_of
from surgeon.format.tensor_io import MappedShard
from surgeon.format.writer import (
    COPY_CHUNK,
    WriteReport,
    check_loadable_base,
    check_output_folder,
    copy_side_files,
    publish_folder,
    whole_copy,
    write_all,
    write_each_shard,
)
from surgeon.parallel import check_stop
from surgeon.progress import NoProgress, ProgressSink


@dataclass(frozen=True)
class NewTensor:
    """A tensor's new shape (same dtype) and how to make its raw bytes, called once, when
    its shard is written: a 70B model's sliced projections need not all be in memory."""

    shape: tuple[int, ...]
    make: Callable[[], bytes]


def write_reshaped(
    base: Checkpoint,
    output: Path,
    reshaped: dict[str, NewTensor],
    files: dict[str, bytes],
    *,
    manifest: Callable[[WriteReport], dict],
    force: bool = False,
    cancel: threading.Event | None = None,
    progress: ProgressSink | None = None,
) -> WriteReport:
    """Write `base` with `reshaped` tensors and the side `files` (name -> bytes: config.json,
    the index) replacing the base's; returns the writer's own hashes."""
    sizes = _new_sizes(base, reshaped)
    target = check_output_folder(output, [base], force)
    check_loadable_base(base)
    progress = progress or NoProgress()
    with output_errors(output), temp_dir(target) as tmp:
        progress.start("writing", sum(s.file_size for s in base.shards.values()))
        try:
            report = _write_shards(base, tmp, reshaped, sizes, cancel, progress.advance)
        finally:
            progress.stop()
        copy_side_files(base, tmp, report)
        for name, data in files.items():
            (tmp / name).write_bytes(data)
            report.files[name] = hashlib.sha256(data).hexdigest()
        (tmp / MANIFEST_NAME).write_text(manifest_json(manifest(report)))
        if cancel is not None and cancel.is_set():
            raise Cancelled()
        publish_folder(tmp, target, force, output)
    return report


def _new_sizes(base: Checkpoint, reshaped: dict[str, NewTensor]) -> dict[str, int]:
    """Each reshaped tensor's byte size, checked against the base before anything is written:
    only a shape changes, never the dtype or the name."""
    sizes = {}
    for name, new in reshaped.items():
        info = base.tensors.get(name)
        size = nbytes_for(info.dtype, new.shape) if info is not None else None
        if info is None or size is None or size < 0:
            raise SurgeonError(f"{name}: not a tensor of the base with a whole byte size: cannot reshape it")
        sizes[name] = size
    return sizes


def index_bytes(base: Checkpoint, reshaped: dict[str, NewTensor]) -> bytes | None:
    """The base's index with `metadata.total_size` (the bytes of all tensors) made true of
    the output; None for a checkpoint with no index."""
    if base.index_name is None:
        return None
    index = json.loads((base.root / base.index_name).read_text(encoding="utf-8"))
    if isinstance(index.get("metadata"), dict) and "total_size" in index["metadata"]:
        sizes = _new_sizes(base, reshaped)
        index["metadata"]["total_size"] = sum(sizes.get(n, info.nbytes) for n, info in base.tensors.items())
    return (json.dumps(index, indent=2) + "\n").encode("utf-8")


def _write_shards(base, folder: Path, reshaped, sizes, cancel, advance) -> WriteReport:
    def work(shard_name: str, should_stop) -> WriteReport:
        check_stop(should_stop)
        part = WriteReport()
        shard = base.shards[shard_name]
        if any(n in reshaped for n in shard.tensors):
            _rewrite_shard(shard, folder / shard_name, reshaped, sizes, part, should_stop, advance)
        else:
            whole_copy(shard, folder / shard_name, part, False, should_stop, advance)
        return part

    return write_each_shard(base, work, cancel)


def _rewrite_shard(shard, target: Path, reshaped, sizes, report: WriteReport, should_stop, advance) -> None:
    """One shard with reshaped tensors: a new header, then every tensor in the base's order,
    copied or made. The output is hashed as written; the base file is hashed whole (a record
    of what was read)."""
    order = sorted(shard.tensors.values(), key=lambda t: (t.start, t.end))
    header = encode_header_of(
        [
            (
                t.name,
                t.dtype.name,
                reshaped[t.name].shape if t.name in reshaped else t.shape,
                sizes.get(t.name, t.nbytes),
            )
            for t in order
        ],
        shard.metadata,
    )
    out_digest, base_digest = hashlib.sha256(), hashlib.sha256()
    with MappedShard(shard.path, shard.file_size) as source, open(target, "wb", buffering=0) as out:
        _emit(out, out_digest, header)
        for info in order:
            check_stop(should_stop)
            if info.name in reshaped:
                data = reshaped[info.name].make()
                if len(data) != sizes[info.name]:
                    raise SurgeonError(f"{info.name}: made {len(data)} bytes, its new shape holds {sizes[info.name]}")
                report.tensors[info.name] = {
                    "base_sha256": _range_sha(source, info.start, info.end),
                    "sha256": _emit(out, out_digest, data),
                }
            else:
                for offset in range(info.start, info.end, COPY_CHUNK):
                    _emit(out, out_digest, source.view(offset, min(offset + COPY_CHUNK, info.end)))
            advance(info.nbytes)
        for offset in range(0, shard.file_size, COPY_CHUNK):
            base_digest.update(source.view(offset, min(offset + COPY_CHUNK, shard.file_size)))
    report.shards[shard.name] = out_digest.hexdigest()
    report.base_shards[shard.name] = base_digest.hexdigest()


def _emit(out, digest, data) -> str:
    """Write `data`, feed the shard's digest; returns the SHA256 of `data` alone."""
    write_all(out, data)
    digest.update(data)
    return hashlib.sha256(data).hexdigest()


def _range_sha(source: MappedShard, start: int, end: int) -> str:
    digest = hashlib.sha256()
    for offset in range(start, end, COPY_CHUNK):
        digest.update(source.view(offset, min(offset + COPY_CHUNK, end)))
    return digest.hexdigest()
