"""Reading and writing the safetensors file format directly, without torch.

Layout: an 8-byte little-endian header length N, N bytes of JSON, then the data. Each
tensor's `data_offsets` are relative to the end of the header. The checks mirror the
reference implementation (safetensors' Rust `validate`) plus duplicate JSON keys, which
serde would silently resolve to the last value.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

from surgeon.atomic import atomic_output
from surgeon.dtypes import DTYPES, DType, nbytes_for
from surgeon.errors import SurgeonError

MAX_HEADER_SIZE = 100_000_000
METADATA_KEY = "__metadata__"


@dataclass(frozen=True)
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
    header_bytes: bytes
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


def _decode_json(raw: bytes, where: str) -> dict:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SurgeonError(f"{where}: header is not valid UTF-8") from None
    if not text.startswith("{"):
        raise SurgeonError(f"{where}: header does not start with '{{'")
    try:
        parsed = json.loads(text, object_pairs_hook=_reject_duplicates)
    except ValueError as exc:
        raise SurgeonError(f"{where}: header is not valid JSON ({exc})") from None
    if not isinstance(parsed, dict):
        raise SurgeonError(f"{where}: header is not a JSON object")
    return parsed


def _parse_metadata(value: object, where: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise SurgeonError(f"{where}: __metadata__ must map strings to strings")
    return value


def _parse_entry(name: str, entry: object, where: str) -> tuple[DType, tuple[int, ...], int, int]:
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
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
    expected = nbytes_for(dtype, tuple(shape))
    if expected != end - begin:
        raise SurgeonError(
            f"{where}: tensor {name!r} holds {end - begin} bytes but {dtype.name} x {shape} needs {expected}"
        )
    return dtype, tuple(shape), begin, end


def _is_uint(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_coverage(tensors: list[TensorInfo], data_len: int, data_start: int, where: str) -> None:
    position = data_start
    for info in sorted(tensors, key=lambda t: (t.start, t.end)):
        if info.start != position:
            kind = "overlaps the previous tensor" if info.start < position else "leaves a hole"
            raise SurgeonError(f"{where}: tensor {info.name!r} {kind} (offset {info.start - data_start})")
        position = info.end
    if position != data_start + data_len:
        raise SurgeonError(f"{where}: tensors cover {position - data_start} bytes but the file holds {data_len}")


def read_header(path: Path, name: str | None = None) -> ShardHeader:
    """Parse and validate one safetensors file's header; reads no tensor data."""
    where = str(path)
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise SurgeonError(f"{where}: too short to be a safetensors file ({size} bytes)")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > MAX_HEADER_SIZE:
                raise SurgeonError(f"{where}: header length {header_len} exceeds {MAX_HEADER_SIZE}")
            if 8 + header_len > size:
                raise SurgeonError(f"{where}: header length {header_len} runs past the end of the file")
            raw = handle.read(header_len)
    except OSError as exc:
        raise SurgeonError(f"{where}: cannot read ({exc.strerror})") from None
    parsed = _decode_json(raw, where)
    metadata = None
    if METADATA_KEY in parsed:
        metadata = _parse_metadata(parsed.pop(METADATA_KEY), where)
    shard = ShardHeader(path, name or path.name, size, header_len, raw, metadata)
    data_start = 8 + header_len
    for tensor_name, entry in parsed.items():
        dtype, shape, begin, end = _parse_entry(tensor_name, entry, where)
        shard.tensors[tensor_name] = TensorInfo(
            tensor_name, dtype, shape, shard.name, data_start + begin, data_start + end
        )
    _check_coverage(list(shard.tensors.values()), size - data_start, data_start, where)
    return shard


@dataclass(frozen=True)
class TensorBytes:
    """One tensor to write: its raw little-endian data, already in the target dtype."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    data: bytes | memoryview


def encode_header(tensors: list[TensorBytes], metadata: dict[str, str] | None) -> bytes:
    """The header bytes (length prefix included), padded to 8 bytes like safetensors does."""
    header: dict[str, object] = {}
    if metadata:
        header[METADATA_KEY] = dict(metadata)
    offset = 0
    for tensor in tensors:
        size = len(tensor.data) if isinstance(tensor.data, bytes) else tensor.data.nbytes
        header[tensor.name] = {
            "dtype": tensor.dtype,
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + size],
        }
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
