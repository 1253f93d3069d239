"""Reading and writing the safetensors file format directly, without torch.

Layout: an 8-byte little-endian header length N, N bytes of JSON, then the data. Each
tensor's `data_offsets` are relative to the end of the header. The checks mirror the
reference implementation (safetensors' Rust `validate`) plus duplicate JSON keys, which
serde would silently resolve to the last value.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path

from surgeon.atomic import atomic_output
from surgeon.errors import SurgeonError
from surgeon.format.dtypes import DTYPES, TOO_BIG, DType, nbytes_for
from surgeon.jsonfile import open_regular

MAX_HEADER_SIZE = 100_000_000
METADATA_KEY = "__metadata__"


@dataclass(frozen=True, slots=True)  # slots: ~80 bytes each, a 1M-tensor header holds 1M of them
class TensorInfo:
    name: str
    dtype: DType
    shape: tuple[int, ...]
    file: str  # shard file name, relative to the checkpoint directory
    start: int  # absolute byte offset of the data in the file
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start

    @property
    def numel(self) -> int:
        n = 1
        for dim in self.shape:
            n *= dim
        return n


@dataclass
class ShardHeader:
    path: Path
    name: str
    file_size: int
    header_len: int
    header_sha256: str  # of the header's JSON bytes: equal headers, byte for byte, have equal digests
    metadata: dict[str, str] | None
    tensors: dict[str, TensorInfo] = field(default_factory=dict)

    @property
    def data_start(self) -> int:
        return 8 + self.header_len


def _reject_duplicates(pairs: list[tuple[str, object]]) -> dict:
    seen: dict[str, object] = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"duplicate key {key!r}")
        seen[key] = value
    return seen


_ENTRY_KEYS = frozenset(("dtype", "shape", "data_offsets"))
_SPACE = re.compile(r"[ \t\n\r]*")  # JSON's whitespace, no more
# The stdlib's JSON string scanner (the C one where _json exists), which JSONDecoder itself
# uses for keys; typeshed leaves it out of json/decoder.pyi, hence the ignore.
_scanstring: Callable[[str, int], tuple[str, int]] = json.decoder.scanstring  # type: ignore[attr-defined]


def _skip(text: str, index: int) -> int:
    match = _SPACE.match(text, index)
    assert match is not None  # a `*` pattern matches, if only the empty string, at any index
    return match.end()


def _header_text(raw: bytes | bytearray, where: str) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SurgeonError(f"{where}: header is not valid UTF-8") from None
    if not text.startswith("{"):
        raise SurgeonError(f"{where}: header does not start with '{{'")
    return text


def _decode_json(text: str, where: str, shard: str, data_start: int) -> tuple[dict[str, TensorInfo], dict | None]:
    """(tensors, __metadata__) from the header's JSON. Bad JSON, deep nesting included, is
    one "not valid JSON" error, as surgeon.jsonfile.parse_json words it."""
    try:
        return _scan_header(text, where, shard, data_start)
    except RecursionError:
        raise SurgeonError(f"{where}: header is not valid JSON (nested too deeply)") from None
    except ValueError as exc:  # JSONDecodeError, a duplicate key, an int past 4300 digits
        raise SurgeonError(f"{where}: header is not valid JSON ({exc})") from None


def _scan_header(text: str, where: str, shard: str, data_start: int) -> tuple[dict[str, TensorInfo], dict | None]:
    """The top object read one member at a time: each entry becomes a TensorInfo as soon as
    it is parsed, so the parsed dicts and lists of a million entries, and json.loads' list
    of a million key/value pairs, never exist all at once; equal shapes share one tuple."""
    decoder = json.JSONDecoder(object_pairs_hook=_reject_duplicates)
    tensors: dict[str, TensorInfo] = {}
    metadata: dict[str, str] | None = None
    shapes: dict[tuple[int, ...], tuple[int, ...]] = {}
    index = _skip(text, 1)  # text starts with "{"
    empty = text.startswith("}", index)
    while not empty:
        if not text.startswith('"', index):
            raise json.JSONDecodeError("Expecting property name enclosed in double quotes", text, index)
        key, index = _scanstring(text, index + 1)
        index = _skip(text, index)
        if not text.startswith(":", index):
            raise json.JSONDecodeError("Expecting ':' delimiter", text, index)
        value, index = decoder.raw_decode(text, _skip(text, index + 1))
        if key in tensors or (key == METADATA_KEY and metadata is not None):
            raise ValueError(f"duplicate key {key!r}")
        if key == METADATA_KEY:
            metadata = _parse_metadata(value, where)
        else:
            dtype, shape, begin, end = _parse_entry(key, value, where)
            shape = shapes.setdefault(shape, shape)
            tensors[key] = TensorInfo(key, dtype, shape, shard, data_start + begin, data_start + end)
        index = _skip(text, index)
        if text.startswith("}", index):
            break
        if not text.startswith(",", index):
            raise json.JSONDecodeError("Expecting ',' delimiter", text, index)
        index = _skip(text, index + 1)
    if _skip(text, index + 1) != len(text):  # index is at the closing "}"
        raise json.JSONDecodeError("Extra data", text, _skip(text, index + 1))
    return tensors, metadata


def _parse_metadata(value: object, where: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise SurgeonError(f"{where}: __metadata__ must map strings to strings")
    return value


def _parse_entry(name: str, entry: object, where: str) -> tuple[DType, tuple[int, ...], int, int]:
    if not isinstance(entry, dict) or not entry.keys() >= _ENTRY_KEYS:
        raise SurgeonError(f"{where}: tensor {name!r} needs dtype, shape and data_offsets")
    dtype = DTYPES.get(entry["dtype"]) if isinstance(entry["dtype"], str) else None
    if dtype is None:
        raise SurgeonError(f"{where}: tensor {name!r} has unknown dtype {entry['dtype']!r}")
    shape, offsets = entry["shape"], entry["data_offsets"]
    if not isinstance(shape, list) or not all(_is_uint(d) for d in shape):
        raise SurgeonError(f"{where}: tensor {name!r} has an invalid shape {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_uint, offsets))):
        raise SurgeonError(f"{where}: tensor {name!r} has invalid data_offsets {offsets!r}")
    begin, end = offsets
    if end < begin:
        raise SurgeonError(f"{where}: tensor {name!r} ends before it begins {offsets}")
    expected = nbytes_for(dtype, shape)
    if expected != end - begin:
        needs = {TOO_BIG: "more than any file holds", None: "a fraction of a byte"}.get(expected, expected)
        raise SurgeonError(
            f"{where}: tensor {name!r} holds {end - begin} bytes but {dtype.name} x {shape} needs {needs}"
        )
    return dtype, tuple(shape), begin, end


def _is_uint(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_coverage(tensors: list[TensorInfo], data_len: int, data_start: int, where: str) -> None:
    # Sorted by (start, end) with two stable sorts on plain int keys: a key tuple per
    # tensor would cost ~64 bytes each on a million-tensor header.
    tensors.sort(key=attrgetter("end"))
    tensors.sort(key=attrgetter("start"))
    position = data_start
    for info in tensors:
        if info.start != position:
            kind = "overlaps the previous tensor" if info.start < position else "leaves a hole"
            raise SurgeonError(f"{where}: tensor {info.name!r} {kind} (offset {info.start - data_start})")
        position = info.end
    if position != data_start + data_len:
        raise SurgeonError(f"{where}: tensors cover {position - data_start} bytes but the file holds {data_len}")


def read_header(path: Path, name: str | None = None) -> ShardHeader:
    """Parse and validate one safetensors file's header; reads no tensor data.

    Memory, as tracemalloc's peak over this call against the header's size (200k tensors;
    tests/test_bounds.py keeps it under 6x):
                                       json.loads + dicts    now
        113-byte entries (22.6 MB)       9.6x                3.5x  (2.5x kept)
        71-byte entries (14.2 MB)       14.1x                4.4x  (3.4x kept)
    What is left is the text being parsed (1x) and what the Checkpoint keeps: names,
    TensorInfo objects and the dict. The bytes are dropped once decoded (their SHA256 is
    kept to compare headers) and each entry becomes a TensorInfo as soon as it is parsed."""
    where = str(path)
    size, header_len, raw = _read_header_bytes(path, where)
    digest = hashlib.sha256(raw).hexdigest()
    text = _header_text(raw, where)
    del raw  # bytes, text and entries are each about the header's size: hold few at once
    shard_name = name or path.name
    tensors, metadata = _decode_json(text, where, shard_name, 8 + header_len)
    del text
    _check_coverage(list(tensors.values()), size - 8 - header_len, 8 + header_len, where)
    return ShardHeader(path, shard_name, size, header_len, digest, metadata, tensors)


def _read_header_bytes(path: Path, where: str) -> tuple[int, int, bytearray]:
    """(file size, header length, header bytes) of a regular file; a FIFO or a device
    named *.safetensors is refused before anything waits on it or reads it forever."""
    with open_regular(path, where) as (fd, info):
        size = info.st_size
        prefix = os.pread(fd, 8, 0)
        if len(prefix) < 8:
            raise SurgeonError(f"{where}: too short to be a safetensors file ({size} bytes)")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > MAX_HEADER_SIZE:
            raise SurgeonError(f"{where}: header length {header_len} exceeds {MAX_HEADER_SIZE}")
        if 8 + header_len > size:
            raise SurgeonError(f"{where}: header length {header_len} runs past the end of the file")
        raw = _read_exactly(fd, header_len, 8)
        if len(raw) != header_len:
            raise SurgeonError(f"{where}: changed while it was being read (header cut short)")
        return size, header_len, raw


def _read_exactly(fd: int, length: int, offset: int) -> bytearray:
    """Up to `length` bytes at `offset` (fewer only at the end of the file), read into one
    buffer: no chunks to join, so the header is in memory once."""
    buffer = bytearray(length)
    done = 0
    with open(fd, "rb", buffering=0, closefd=False) as handle, memoryview(buffer) as view:
        handle.seek(offset)
        while done < length and (count := handle.readinto(view[done:])):
            done += count
    del buffer[done:]
    return buffer


@dataclass(frozen=True)
class TensorBytes:
    """One tensor to write: its raw little-endian data, already in the target dtype."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    data: bytes | memoryview


def encode_header(tensors: list[TensorBytes], metadata: dict[str, str] | None) -> bytes:
    """The header bytes (length prefix included), padded to 8 bytes like safetensors does."""
    sized = [(t.name, t.dtype, t.shape, len(t.data) if isinstance(t.data, bytes) else t.data.nbytes) for t in tensors]
    return encode_header_of(sized, metadata)


def encode_header_of(tensors: list[tuple[str, str, tuple[int, ...], int]], metadata: dict[str, str] | None) -> bytes:
    """encode_header from (name, dtype, shape, byte size) alone: a header written before its
    tensors' bytes are made (surgeon.format.reshaped)."""
    header: dict[str, object] = {}
    if metadata:
        header[METADATA_KEY] = dict(metadata)
    offset = 0
    for name, dtype, shape, size in tensors:
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    body = json.dumps(header, separators=(",", ":")).encode("utf-8")
    body += b" " * (-len(body) % 8)
    return struct.pack("<Q", len(body)) + body


def write_safetensors(path: Path, tensors: list[TensorBytes], metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file atomically; tensors are laid out in the order given."""
    with atomic_output(path) as handle:
        handle.write(encode_header(tensors, metadata))
        for tensor in tensors:
            handle.write(tensor.data)
