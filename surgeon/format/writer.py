"""The tensor-level checkpoint writer shared by prune and salvage.

Only the tensors the surgery changed get new bytes; every other tensor is copied
byte-for-byte, each shard keeps the base's header verbatim (dtype, shape and offsets are
unchanged, so the layout is too), and a shard with no changed tensor is a plain copy of the
base's file. Everything is written into a temporary sibling folder, hashed as it is
written, and renamed into place at the end: a failure or Ctrl-C leaves no output.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import itertools
import json
import os
import stat
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from surgeon.atomic import check_output, output_errors, publish, temp_dir
from surgeon.errors import Cancelled, SurgeonError
from surgeon.format.checkpoint import Checkpoint
from surgeon.format.hashcache import FileIdentity, HashCache, hf_blob_sha256, hub_snapshot_repo
from surgeon.format.hashing import default_workers
from surgeon.format.manifest import MANIFEST_NAME  # owned by the manifest; importers take it from here too
from surgeon.format.replacing import check_replaceable, refuse_cwd
from surgeon.format.safetensors import ShardHeader
from surgeon.format.tensor_io import MappedShard
from surgeon.parallel import check_stop, map_cancellable
from surgeon.progress import NoProgress, ProgressSink

COPY_CHUNK = 8 << 20
# The largest side file a checkpoint needs is its tokenizer.json: about 33 MB for a vocabulary
# of 262k tokens (Gemma 3's), 9 MB for Llama 3's 128k. 64 MiB holds twice the largest, and
# keeps a multi-GB file that has no business beside the weights (a GGUF, an archive) out.
SIDE_FILE_MAX = 64 << 20


@dataclass(frozen=True)
class TensorSource:
    """Replacement bytes that live in another file (a candidate checkpoint's shard)."""

    path: Path
    start: int
    end: int

    def __len__(self) -> int:
        return self.end - self.start


@dataclass
class WriteReport:
    """What the writer's own hashes say was written."""

    shards: dict[str, str] = field(default_factory=dict)  # output shard -> SHA256
    base_shards: dict[str, str] = field(default_factory=dict)  # the base's shard -> SHA256, same read
    copied_shards: list[str] = field(default_factory=list)  # written byte-identical to the base's file
    tensors: dict[str, dict[str, str]] = field(default_factory=dict)  # replaced -> base/out SHA256
    files: dict[str, str] = field(default_factory=dict)  # side file written (config, index...) -> SHA256
    skipped_files: dict[str, str] = field(default_factory=dict)  # side file of the base not copied -> why

    def changed_tensors(self) -> list[str]:
        return sorted(n for n, h in self.tensors.items() if h["base_sha256"] != h["sha256"])


def check_output_path(output: Path, inputs: list[Checkpoint], force: bool) -> Path:
    """The output guard of every writer (surgeon.atomic.check_output) over these checkpoints;
    returns the resolved output to write."""
    return check_output(output, [path for ckpt in inputs for path in input_paths(ckpt)], force)


def check_output_folder(output: str | os.PathLike, inputs: list[Checkpoint], force: bool) -> Path:
    """check_output_path for an output folder (prune, salvage, demo, the TUI's write): never
    the current folder or one holding it, and with `force`, what is there must be what
    --force may replace (surgeon.format.replacing); returns the resolved output."""
    target = check_output_path(Path(output), inputs, force)
    refuse_cwd(target, output)
    if force:
        check_replaceable(target, output)
    return target


def check_loadable_base(base: Checkpoint) -> None:
    """SurgeonError unless the files an output needs to load (config.json; the index, for
    shards) would be copied from `base`: a side file that is a link out of the base's folder
    is never copied (_copy_side_file), and a base made of links (`ln -s snapshot/* lm/`)
    gave an output with neither, which transformers cannot load. Checked before any work."""
    inside = side_file_root(base.root)
    for name in ("config.json", base.index_name):
        path = base.root / name if name else None
        if path is None or not os.path.islink(path):
            continue
        real = Path(os.path.realpath(path))
        if not real.is_relative_to(inside):
            raise SurgeonError(
                f"{base.source}: {name} is a link out of the folder (to {real}); surgeon copies no file from outside "
                "the folder it reads, and the output cannot load without it: copy the files into the folder "
                f"(cp -L), or pass the folder they link into ({real.parent})"
            )


def publish_folder(tmp: Path, target: Path, force: bool, shown: str | os.PathLike) -> None:
    """Move the finished folder `tmp` to `target`: a new output never replaces; with `force`
    the replacement is checked again first (the folder may have changed during a long run)
    and exchanged in one step."""
    if force:
        check_replaceable(target, shown)
    publish(tmp, target, replace=force, shown=shown)


def input_paths(ckpt: Checkpoint) -> list[Path]:
    """What an output must not be over or inside: the checkpoint's folder (only its file, for
    a single .safetensors file given by path) and each shard's real file (a Hub snapshot's
    shards are links into the cache's blobs folder)."""
    given = Path(ckpt.source).expanduser()
    if given.is_file():
        return [given, Path(os.path.realpath(given))]
    shards = [Path(os.path.realpath(shard.path)) for shard in ckpt.shards.values()]
    return [ckpt.root, *_hub_repo(ckpt.root), *_real_files(ckpt.root), *shards]


def _hub_repo(root: Path) -> list[Path]:
    """A Hub snapshot (`models--org--name/snapshots/REV`) lives on its repo folder: its
    `refs/` and `blobs/` are what resolve it, so an output anywhere in that folder is over
    the input."""
    snapshots = root.parent
    if snapshots.name == "snapshots" and snapshots.parent.name.startswith(("models--", "datasets--", "spaces--")):
        return [snapshots.parent]
    return []


def _real_files(root: Path, limit: int = 10_000) -> list[Path]:
    """Where the folder's side files really are: a Hub snapshot's config.json and index are
    links into the cache's blobs folder, and a report written with --force over such a blob
    would replace the input's config. A checkpoint folder holds tens of entries; `limit`
    bounds a hostile one."""
    found = []
    with os.scandir(root) as entries:
        for entry in itertools.islice(entries, limit):
            if entry.is_symlink():
                found.append(Path(os.path.realpath(entry.path)))
    return found


def write_checkpoint(
    base: Checkpoint,
    output: Path,
    replacements: dict[str, bytes | TensorSource],
    *,
    manifest: Callable[[WriteReport], dict] | None = None,
    force: bool = False,
    cancel: threading.Event | None = None,
    cache_dir: Path | None = None,
    durable: bool = False,
    progress: ProgressSink | None = None,
) -> WriteReport:
    """Write base with `replacements` (tensor name -> raw bytes of the same dtype and shape,
    given in memory or as a byte range of another file). Shards are written in parallel.

    A shard with no replacement is copied by the kernel (copy_file_range) and read back to
    hash what was written; every other byte is hashed as it is written, so the manifest's
    hashes are of the output. The hash cache in `cache_dir` only gives the base's own
    hashes (a record) for shards that change.

    The output appears atomically (a renamed temporary folder) either way; `durable` also
    waits for every file to reach the disk before the rename (fsync), which cp and
    save_pretrained do not do and which costs the disk's write time.
    """
    for name, data in replacements.items():
        info = base.tensors.get(name)
        if info is None or info.nbytes != len(data):
            raise SurgeonError(f"{name}: a replacement must match a base tensor's byte size")
    target = check_output_folder(output, [base], force)
    check_loadable_base(base)
    progress = progress or NoProgress()
    with output_errors(output), temp_dir(target) as tmp:
        progress.start("writing", sum(s.file_size for s in base.shards.values()))
        try:
            report = _write_shards(base, tmp, replacements, HashCache(cache_dir), cancel, durable, progress.advance)
        finally:
            progress.stop()
        copy_side_files(base, tmp, report)
        if manifest is not None:
            (tmp / MANIFEST_NAME).write_text(json.dumps(manifest(report), indent=2) + "\n")
        if durable:
            _fsync_dir(tmp)
        if cancel is not None and cancel.is_set():
            raise Cancelled()
        publish_folder(tmp, target, force, output)
    return report


def _write_shards(base: Checkpoint, folder: Path, replacements, cache: HashCache, cancel, durable, advance):
    def work(shard_name: str, should_stop) -> WriteReport:
        check_stop(should_stop)
        part = WriteReport()
        shard = base.shards[shard_name]
        target = folder / shard_name
        changed = any(n in replacements for n in shard.tensors)
        ident = FileIdentity.of(shard.path)  # taken once: the cache entry and the checks agree
        if changed:
            # The base's own hashes are a record, not what was written: the cache may give them.
            known = hf_blob_sha256(shard.path) or cache.file_sha256(ident)
            base_tensor_shas = (cache.tensor_sha256(known) if known else None) or {}
            _write_shard(
                base, shard_name, target, replacements, part, known, durable, should_stop, base_tensor_shas, advance
            )
        else:
            whole_copy(shard, target, part, durable, should_stop, advance)
        if FileIdentity.of(shard.path) != ident:
            raise SurgeonError(f"{shard.path}: changed while it was being copied")
        copied_sha = part.base_shards[shard_name]
        if not changed and hf_blob_sha256(shard.path) is None and cache.file_sha256(ident) != copied_sha:
            cache.store_file(ident, copied_sha)  # the copy's hash is the file's: the next diff skips it
        return part

    return write_each_shard(base, work, cancel)


def write_each_shard(base: Checkpoint, work, cancel: threading.Event | None) -> WriteReport:
    """work(shard name, should_stop) -> its WriteReport, for every shard of `base` on the
    worker threads (the largest first: the last to finish is a small one), merged into one
    report, sorted by shard name; a shard whose output hash is the base's was copied."""
    names = sorted(base.shards, key=lambda n: -base.shards[n].file_size)
    report = WriteReport()
    for part in map_cancellable(work, names, min(len(names), default_workers()), cancel):
        report.shards.update(part.shards)
        report.base_shards.update(part.base_shards)
        report.tensors.update(part.tensors)
    report.shards = dict(sorted(report.shards.items()))
    report.base_shards = dict(sorted(report.base_shards.items()))
    report.copied_shards = sorted(n for n, sha in report.shards.items() if sha == report.base_shards[n])
    return report


def whole_copy(shard: ShardHeader, target: Path, report: WriteReport, durable, should_stop, advance):
    """An unchanged shard: copied in the kernel, and the output read back and hashed, a chunk
    behind the copy on a helper thread, so the manifest's SHA256 is of the bytes written (not
    a cached hash of the source). The chunk just written is still in the page cache, so the
    read-back costs the SHA256, not a disk read, except where copy_file_range shares extents
    (btrfs, XFS reflinks): there the output's bytes are read from the disk, once."""
    digest = hashlib.sha256()
    buffer = bytearray(min(COPY_CHUNK, shard.file_size))
    with (
        open(shard.path, "rb") as source,
        open(target, "wb+", buffering=0) as out,
        ThreadPoolExecutor(1) as hasher,
    ):
        pending = None
        for offset in range(0, shard.file_size, COPY_CHUNK):
            check_stop(should_stop)
            count = min(COPY_CHUNK, shard.file_size - offset)
            _kernel_copy_range(source.fileno(), out, offset, count, shard.path)
            if pending is not None:
                pending.result()  # one chunk in flight: `buffer` is free again
            pending = hasher.submit(_hash_written, digest, out.fileno(), offset, count, buffer, target)
            advance(count)
        if pending is not None:
            pending.result()
        if durable:
            os.fsync(out.fileno())
    report.shards[shard.name] = report.base_shards[shard.name] = digest.hexdigest()


def _hash_written(digest, fd: int, offset: int, count: int, buffer: bytearray, path: Path) -> None:
    """Feed `digest` the bytes [offset, offset + count) of the output file itself."""
    view = memoryview(buffer)
    while count:
        got = os.preadv(fd, [view[: min(count, len(view))]], offset)
        if got == 0:
            raise SurgeonError(f"{path}: shorter than what was copied into it")
        digest.update(view[:got])
        offset, count = offset + got, count - got


def _write_shard(
    base: Checkpoint,
    shard_name: str,
    target: Path,
    replacements,
    report: WriteReport,
    known: str | None = None,
    durable: bool = False,
    should_stop=None,
    base_tensor_shas: dict[str, str] | None = None,
    advance=lambda _count: None,
) -> None:
    """Write one shard, hashing the output; the base file is hashed in the same read unless
    its SHA256 is `known` (from the hash cache), and so are the replaced tensors' base bytes
    unless the cache knows their hashes."""
    shard = base.shards[shard_name]
    ours = {n: replacements[n] for n in shard.tensors if n in replacements}
    out_digest, base_digest = hashlib.sha256(), hashlib.sha256()
    hash_base = bool(ours) and known is None
    with (
        MappedShard(shard.path, shard.file_size) as source,
        open(target, "wb", buffering=0) as out,
        _Sources() as sources,
        ThreadPoolExecutor(1) as hasher,
    ):

        def emit(data, also=None) -> None:
            # The output hash runs beside the write and `also`'s hash (all release the GIL);
            # it must finish before the caller reads into `data`'s buffer again.
            pending = hasher.submit(out_digest.update, data)
            try:
                write_all(out, data)
                if also is not None:
                    also.update(data)
            finally:
                pending.result()
            advance(memoryview(data).nbytes)

        def keep(start: int, end: int) -> None:
            """Base bytes that stay: read once, and the bytes hashed are the bytes written (a
            kernel copy beside a hash of a second read would vouch for what was read, not
            for what was written)."""
            also = base_digest if hash_base else None
            for offset in range(start, end, COPY_CHUNK):
                check_stop(should_stop)
                stop = min(offset + COPY_CHUNK, end)
                emit(source.view(offset, stop), also=also)

        position = 0
        for info in sorted(shard.tensors.values(), key=lambda t: (t.start, t.end)):
            if info.name not in ours:
                continue
            keep(position, info.start)
            base_sha = (base_tensor_shas or {}).get(info.name)
            if hash_base or base_sha is None:
                own = None if base_sha else hashlib.sha256()
                _hash_range(source, info.start, info.end, [d for d in (own, base_digest if hash_base else None) if d])
                if not base_sha:
                    assert own is not None  # made above whenever no hash was given
                    base_sha = own.hexdigest()
            report.tensors[info.name] = {
                "base_sha256": base_sha,
                "sha256": _emit_replacement(ours[info.name], sources, emit),
            }
            position = max(position, info.end)
        keep(position, shard.file_size)
        if durable:
            os.fsync(out.fileno())
    report.shards[shard_name] = out_digest.hexdigest()
    report.base_shards[shard_name] = known or (base_digest if ours else out_digest).hexdigest()


def _hash_range(source: MappedShard, start: int, end: int, digests: list) -> None:
    """Feed each digest the bytes [start, end) of `source`, a chunk at a time: a tensor can be
    gigabytes."""
    for offset in range(start, end, COPY_CHUNK):
        stop = min(offset + COPY_CHUNK, end)
        with source.view(offset, stop) as view:
            for digest in digests:
                digest.update(view)


def write_all(out, data) -> None:
    view = memoryview(data).cast("B")
    while view:
        view = view[out.write(view) :]


_NO_KERNEL_COPY = {errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.EPERM}


def _kernel_copy_range(src_fd: int, out, offset: int, count: int, path: Path) -> None:
    """count bytes from src_fd at offset to the end of `out`: inside the kernel where it can
    (copy_file_range), else through user space (another filesystem, another OS)."""
    while count:
        try:
            copied = os.copy_file_range(src_fd, out.fileno(), count, offset)
        except (OSError, AttributeError) as exc:
            if isinstance(exc, OSError) and exc.errno not in _NO_KERNEL_COPY:
                raise
            _plain_copy_range(src_fd, out, offset, count, path)
            return
        if copied == 0:
            raise SurgeonError(f"{path}: changed while it was being read (it ended at {offset})")
        offset, count = offset + copied, count - copied


def _plain_copy_range(src_fd: int, out, offset: int, count: int, path: Path) -> None:
    while count:
        data = os.pread(src_fd, min(count, COPY_CHUNK), offset)
        if not data:
            raise SurgeonError(f"{path}: changed while it was being read (it ended at {offset})")
        write_all(out, data)
        offset, count = offset + len(data), count - len(data)


def _emit_replacement(data, sources: _Sources, emit) -> str:
    """Write one replacement tensor; returns its SHA256."""
    digest = hashlib.sha256()  # the tensor's own hash, for the manifest
    both = functools.partial(emit, also=digest)

    if isinstance(data, TensorSource):
        source = sources.open(data.path)
        if source.size < data.end:
            raise SurgeonError(f"{data.path}: {source.size} bytes, too short for a tensor ending at {data.end}")
        _copy_range(source, data.start, data.end, both)
    else:
        both(data)
    return digest.hexdigest()


class _Sources:
    """Candidate shards opened on first use, closed together. They share one read buffer (a
    replacement is copied whole before the next starts): a prune's shard can draw on one
    file per layer."""

    def __init__(self) -> None:
        self._open: dict[Path, MappedShard] = {}
        self._buffer: bytearray | None = None

    def open(self, path: Path) -> MappedShard:
        if path not in self._open:
            if self._buffer is None:
                self._buffer = bytearray(COPY_CHUNK)
            self._open[path] = MappedShard(path, buffer=self._buffer)
        return self._open[path]

    def __enter__(self) -> _Sources:
        return self

    def __exit__(self, *exc) -> None:
        for mapped in self._open.values():
            mapped.close()


def _copy_range(source: MappedShard, start: int, end: int, emit) -> None:
    for offset in range(start, end, COPY_CHUNK):
        stop = min(offset + COPY_CHUNK, end)
        with source.view(offset, stop) as view:
            emit(view)


def copy_side_files(base: Checkpoint, tmp: Path, report: WriteReport) -> None:
    """Copy the base's config, index, tokenizer and template files into `report.files`, each
    one's SHA256 hashed from the bytes as they were copied, for the manifest (verify checks
    them: an edited config or tokenizer must not pass). What is not copied, and why, goes to
    `report.skipped_files`: a link that leads out of the base (a README.md linking to
    ~/.ssh/id_rsa would be published, and vouched for by verify), a file larger than
    SIDE_FILE_MAX, anything that is not a regular file."""
    inside = side_file_root(base.root)
    for path in sorted(base.root.iterdir()):
        if path.name in base.shards or path.name == MANIFEST_NAME or path.name.startswith("."):
            continue
        if path.name in base.ignored:  # an index transformers does not read: its shards are not written
            continue
        if path.suffix in (".safetensors", ".bin", ".pt", ".pth") or (path.is_dir() and not path.is_symlink()):
            continue  # weights, and subfolders: not side files
        try:
            report.files[path.name] = _copy_side_file(path, inside, tmp / path.name)
        except _NotCopied as exc:
            report.skipped_files[path.name] = str(exc)


class _NotCopied(Exception):
    """A side file left out of the output; its message says why."""


def side_file_root(folder: Path) -> Path:
    """How far a side file's link may lead: the folder itself, or its repo folder in the
    Hugging Face cache, whose snapshots link into ../../blobs."""
    return hub_snapshot_repo(folder) or Path(os.path.realpath(folder))


def _copy_side_file(source: Path, inside: Path, target: Path) -> str:
    """Copy one side file, at most SIDE_FILE_MAX bytes, hashing the bytes copied; returns the
    SHA256. A link is followed only to a file under `inside` (side_file_root); the file is
    opened without following a link or waiting on a FIFO (O_NOFOLLOW, O_NONBLOCK) and must
    be a regular file once open. Not jsonfile.open_regular: it turns every OSError of its
    body into "cannot read", and a full output disk must stay the write's error, not a
    skipped file."""
    real = Path(os.path.realpath(source))
    if not real.is_relative_to(inside):
        raise _NotCopied("a link that leads out of the checkpoint's folder")
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise _NotCopied(f"cannot be read ({exc.strerror})") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):  # checked on the descriptor: open() of a folder's fd raises
        os.close(fd)
        raise _NotCopied("not a regular file")
    with open(fd, "rb") as src:
        if info.st_size > SIDE_FILE_MAX:
            raise _NotCopied(f"{info.st_size} bytes, more than the {SIDE_FILE_MAX >> 20} MiB a side file may have")
        return _copy_bounded(src, target)


def _copy_bounded(src, target: Path) -> str:
    """Copy `src` into `target` up to SIDE_FILE_MAX bytes (a file may grow after its size was
    checked); returns the SHA256 of the bytes copied."""
    digest, copied = hashlib.sha256(), 0
    with open(target, "wb") as out:
        while block := src.read(min(COPY_CHUNK, SIDE_FILE_MAX + 1 - copied)):
            copied += len(block)
            if copied > SIDE_FILE_MAX:
                break
            digest.update(block)
            out.write(block)
    if copied > SIDE_FILE_MAX:
        target.unlink()
        raise _NotCopied(f"grew past the {SIDE_FILE_MAX >> 20} MiB a side file may have while it was copied")
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
