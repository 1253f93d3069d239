"""Reading GGUF files (llama.cpp's format) without torch: the header is parsed here, the
tensor data is dequantized by gguf-py (`gguf.quants.dequantize`) a few rows at a time.

Layout (GGUF v2 and v3, little-endian): "GGUF", u32 version, u64 tensor count, u64 key/value
count, the key/values (string key, u32 value type, value), the tensor infos (string name,
u32 n_dims, n_dims u64 dimensions in ggml order, fastest first, u32 ggml type, u64 offset
into the data), padding to `general.alignment` (32 by default), then the data. A model split
by llama.cpp (`gguf-split`, or the converter's --split-max-*) is several such files named
`PREFIX-00001-of-0000N.gguf`, each holding `split.no`, `split.count` and
`split.tensors.count`; the first also holds the model's metadata.

Why not gguf-py's GGUFReader for the header: measured with gguf 0.19.0, a 57-byte file whose
one key/value claims an array of 2**40 u8 keeps GGUFReader looping (each element read past
the end of the file is empty, so its offset never advances) until memory runs out; it also
builds two np.memmap views per string of the vocabulary: 25.7 s for a header holding a
262,144-token vocabulary (6.7 MB), 0.16 s here (2 shared cores). Here every count is checked
against the bytes left before anything loops over it or allocates for it, numeric arrays stay
views of the file's map and string arrays are walked, never kept. tests/format/test_gguf_reader.py
checks this parser against GGUFReader on well-formed files.

Shapes are given in row-major (numpy, Hugging Face) order: GGUF's ggml order reversed. A
tensor is read as rows: its last dimension (ggml's ne[0], along which quantization blocks
run) is the row, every other dimension counts rows.
"""

from __future__ import annotations

import math
import os
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType
from gguf.quants import dequantize

from surgeon.errors import SurgeonError
from surgeon.format.kinds import SPLIT_NAME
from surgeon.format.tensor_io import ShardReader
from surgeon.jsonfile import open_regular
from surgeon.text import inert

GGUF_MAGIC = b"GGUF"
VERSIONS = (2, 3)  # v1 (2023) used 32-bit counts; llama.cpp itself reads v2 and v3 only
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS: llama.cpp refuses more
# No converter writes near these (DeepSeek-V3, 61 layers with stacked experts: ~1,100 tensors
# per file; a vocabulary is one key/value); they cap what a hostile header can make us keep.
MAX_TENSORS = 1 << 18
MAX_KVS = 1 << 16
MAX_ARRAY_DEPTH = 3
# Smallest encodings, to bound counts by the bytes left: a key/value (empty key, u8 value) and
# a tensor info (empty name, no dimensions).
MIN_KV_BYTES = 8 + 4 + 1
MIN_TENSOR_INFO_BYTES = 8 + 4 + 4 + 8
# Rows of float32 decoded at once by iter_rows: 16M elements, 64 MiB of output. A decode's
# peak is twice its output at 4M elements and more (tracemalloc, every type: gguf-py concatenates
# its groups of 16 rows into a fresh array; small chunks pay a fixed ~0.5 MB more), so
# 128 MiB. Decoding speed, stored bytes per second on the shared 2-core box (load ~4, random
# blocks, 2048 x 4096): F32 4.5 GB/s, BF16 1.4, F16 1.0, Q8_0 0.42, Q6_K 0.20, Q4_0 0.18,
# Q4_K 0.14, Q5_K 0.10, Q2_K 0.06, TQ2_0 0.06, MXFP4 and NVFP4 0.05, IQ4_XS 0.04, IQ3_S 0.02,
# IQ2_XXS 0.012 GB/s. gguf-py is numpy on one thread: the IQ types are its slow ones.
CHUNK_ELEMENTS = 16 << 20

_SCALARS: dict[int, str] = {
    GGUFValueType.UINT8: "<B",
    GGUFValueType.INT8: "<b",
    GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I",
    GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f",
    GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q",
    GGUFValueType.FLOAT64: "<d",
}
# Plain numeric tensor types gguf.quants.dequantize does not take: decoded with numpy here.
_PLAIN = {
    GGMLQuantizationType.F64: "<f8",
    GGMLQuantizationType.I8: "i1",
    GGMLQuantizationType.I16: "<i2",
    GGMLQuantizationType.I32: "<i4",
    GGMLQuantizationType.I64: "<i8",
}
SPLIT_NO, SPLIT_COUNT, SPLIT_TENSORS = "split.no", "split.count", "split.tensors.count"


@dataclass(frozen=True)
class GGUFStrings:
    """A metadata array of strings (a vocabulary): its length only, the strings are not kept."""

    count: int


@dataclass(frozen=True)
class GGUFNested:
    """A metadata array of arrays: its length only."""

    count: int


@dataclass(frozen=True, slots=True)
class GGUFTensor:
    name: str
    qtype: int  # the ggml type's number
    shape: tuple[int, ...]  # row-major order: ggml's dimensions reversed
    part: int  # index of the file (split part) holding it
    offset: int  # absolute offset of its data in that file
    nbytes: int

    @property
    def type_name(self) -> str:
        return GGMLQuantizationType(self.qtype).name

    @property
    def row_len(self) -> int:
        return self.shape[-1] if self.shape else 1

    @property
    def rows(self) -> int:
        return math.prod(self.shape[:-1])

    @property
    def row_bytes(self) -> int:
        block, size = GGML_QUANT_SIZES[GGMLQuantizationType(self.qtype)]
        return self.row_len // block * size

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass
class GGUFPart:
    path: Path
    version: int
    alignment: int
    data_start: int
    size: int
    data: np.ndarray = field(repr=False)  # the whole file, mapped read-only (uint8)


@dataclass
class GGUFModel:
    """A GGUF model: one file or a split set, read as one."""

    source: str
    parts: list[GGUFPart]
    metadata: dict[str, Any]  # the first part's key/values (scalars, str, numpy arrays, GGUFStrings)
    tensors: dict[str, GGUFTensor]

    @property
    def architecture(self) -> str:
        arch = self.metadata.get("general.architecture")
        if not isinstance(arch, str):
            raise SurgeonError(f"{self.source}: has no general.architecture")
        return arch

    def arch_value(self, key: str) -> Any:
        """`{architecture}.{key}` (e.g. "block_count", "attention.head_count_kv"), or None."""
        return self.metadata.get(f"{self.architecture}.{key}")

    @property
    def block_count(self) -> int | None:
        return _as_int(self.arch_value("block_count"))

    @property
    def head_count(self) -> int | list[int] | None:
        return _per_layer(self.arch_value("attention.head_count"))

    @property
    def head_count_kv(self) -> int | list[int] | None:
        """One count, or one per layer (Gemma 4: sliding and full layers differ)."""
        return _per_layer(self.arch_value("attention.head_count_kv"))

    @property
    def vocab_tokens(self) -> int | None:
        tokens = self.metadata.get("tokenizer.ggml.tokens")
        return tokens.count if isinstance(tokens, GGUFStrings) else None

    def tensor(self, name: str) -> GGUFTensor:
        info = self.tensors.get(name)
        if info is None:
            raise SurgeonError(f"{self.source}: has no tensor {inert(name)!r}")
        return info

    def raw_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) as stored: uint8 [stop-start, row_bytes], a new array.

        Read with pread, not from the map, as tensor_io.ShardReader reads shards: a mapped
        page read stays in the process's resident set until the map goes, so a 1 GB GGUF read
        through its map held 1 GB of RSS by the end of a diff (a 0.19 GB file: 267 MB peak,
        99 MB with pread); and a mapped file that shrinks raises SIGBUS, a pread an error."""
        info = self.tensor(name)
        if not 0 <= start <= stop <= info.rows:
            raise SurgeonError(f"{self.source}: rows {start}:{stop} of {inert(name)!r}, which has {info.rows}")
        row_bytes = info.row_bytes
        part = self.parts[info.part]
        with ShardReader(part.path, expected_size=part.size) as reader:
            raw = reader.read(info.offset + start * row_bytes, (stop - start) * row_bytes)
        # the reader's buffer is this call's own: the array keeps it, nothing else writes it
        return np.frombuffer(raw, dtype=np.uint8).reshape(stop - start, row_bytes)

    def decode_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) dequantized: a new float32 array [stop-start, row_len]."""
        info = self.tensor(name)
        raw = self.raw_rows(name, start, stop)
        return decode_raw(raw, info.qtype, f"{self.source}: tensor {inert(name)!r}")

    def iter_rows(
        self, name: str, *, multiple: int = 1, budget: int = CHUNK_ELEMENTS
    ) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, float32 rows) over the whole tensor, about `budget` elements at a time
        and a multiple of `multiple` rows per chunk (whole heads, whole experts), so a
        262144 x 5376 embedding (5.6 GB in float32) is never decoded whole."""
        info = self.tensor(name)
        step = max(1, budget // max(info.row_len, 1) // multiple) * multiple
        for start in range(0, info.rows, step):
            yield start, self.decode_rows(name, start, min(start + step, info.rows))


def decode_raw(raw: np.ndarray, qtype: int, where: str) -> np.ndarray:
    """uint8 block rows of ggml type `qtype` as float32 [rows, row_len] (a new array)."""
    kind = GGMLQuantizationType(qtype)
    plain = _PLAIN.get(kind)
    if plain is not None:
        return raw.view(plain).astype(np.float32)
    if not can_decode(qtype):
        raise SurgeonError(f"{where} is {kind.name}, which gguf-py cannot dequantize")
    with np.errstate(all="ignore"):  # damaged scales decode to NaN or inf, kept as such, unwarned
        values = dequantize(raw, kind)
    # F32 comes back as a view of the raw bytes (or of a map): copied, so every answer is the caller's own
    return values.copy() if kind == GGMLQuantizationType.F32 else values


@cache
def can_decode(qtype: int) -> bool:
    """Whether gguf-py (or numpy, for the plain types) decodes ggml type `qtype`: tried on one
    zero block, since gguf-py keeps its table of types private."""
    kind = GGMLQuantizationType(qtype)
    if kind in _PLAIN:
        return True
    _, type_size = GGML_QUANT_SIZES[kind]
    try:
        dequantize(np.zeros((1, type_size), dtype=np.uint8), kind)
    except NotImplementedError:
        return False
    return True


def _as_int(value: Any) -> int | None:
    return int(value) if isinstance(value, int | np.integer) and not isinstance(value, bool) else None


def _per_layer(value: Any) -> int | list[int] | None:
    if isinstance(value, np.ndarray) and value.dtype.kind in "iu":
        return [int(v) for v in value]
    return _as_int(value)


# ---------------------------------------------------------------------------------------------
# Opening: a file, a split set, or a folder holding one of them


def open_gguf(spec: str | os.PathLike) -> GGUFModel:
    """Open a .gguf file, the first part of a split set (its other parts are found beside it),
    or a folder holding one model (a single .gguf or one split set). Every problem with the
    files is one SurgeonError naming the file."""
    source = str(spec)
    first = _first_file(Path(source).expanduser(), source)
    part0 = _read_part(first)
    metadata, tensors = part0.header.metadata, dict(part0.tensors)
    parts = [part0.part]
    count = _split_count(metadata, first)
    if count > 1:
        for index, path in enumerate(_split_paths(first, count), start=1):
            extra = _read_part(path)
            _check_part(extra.header.metadata, path, index, count)
            for name, info in extra.tensors.items():
                if name in tensors:
                    raise SurgeonError(f"{path}: tensor {inert(name)!r} is also in {parts[tensors[name].part].path}")
                tensors[name] = _in_part(info, index)
            parts.append(extra.part)
        expected = metadata.get(SPLIT_TENSORS)
        if expected != len(tensors):
            raise SurgeonError(f"{first}: split.tensors.count is {expected}, the {count} parts hold {len(tensors)}")
    return GGUFModel(source, parts, metadata, tensors)


def _in_part(info: GGUFTensor, part: int) -> GGUFTensor:
    return GGUFTensor(info.name, info.qtype, info.shape, part, info.offset, info.nbytes)


def _first_file(path: Path, source: str) -> Path:
    if path.is_dir():
        return _model_in_folder(path)
    if not path.exists():
        raise SurgeonError(f"{source}: no such file or folder")
    if path.suffix != ".gguf":
        raise SurgeonError(f"{source}: not a .gguf file or a folder holding one")
    match = SPLIT_NAME.fullmatch(path.name)
    if match and int(match["no"]) != 1:
        first = f"{match['prefix']}-00001-of-{match['count']}.gguf"
        raise SurgeonError(f"{source}: is part {int(match['no'])} of a split model; name its first part, {first}")
    return path


def _model_in_folder(folder: Path) -> Path:
    """The folder's one model: a lone .gguf, or the first part of its one split set."""
    names = sorted(p.name for p in folder.glob("*.gguf") if p.is_file())
    models = [n for n in names if not (m := SPLIT_NAME.fullmatch(n)) or int(m["no"]) == 1]
    if not models:
        raise SurgeonError(f"{folder}: holds no .gguf file" + (" (only later parts of a split)" if names else ""))
    if len(models) > 1:
        shown = ", ".join(inert(n) for n in models[:4]) + (f" and {len(models) - 4} more" if len(models) > 4 else "")
        raise SurgeonError(f"{folder}: holds several GGUF models ({shown}); name one file")
    return folder / models[0]


def _split_count(metadata: dict[str, Any], path: Path) -> int:
    count = metadata.get(SPLIT_COUNT)
    match = SPLIT_NAME.fullmatch(path.name)
    if count is None:
        if match and int(match["count"]) > 1:
            raise SurgeonError(f"{path}: is named as part 1 of {int(match['count'])} but has no split.count")
        return 1
    _check_part(metadata, path, 0, count)
    if count > 1 and (match is None or int(match["count"]) != count):
        raise SurgeonError(f"{path}: is part 1 of {count} but not named PREFIX-00001-of-{count:05d}.gguf")
    return int(count)


def _check_part(metadata: dict[str, Any], path: Path, index: int, count: int) -> None:
    no, total = _as_int(metadata.get(SPLIT_NO)), _as_int(metadata.get(SPLIT_COUNT))
    if total is None or no is None or total < 1:
        raise SurgeonError(f"{path}: split.no and split.count are missing or not numbers")
    if no != index or total != count:
        raise SurgeonError(f"{path}: says it is part {no + 1} of {total}, expected part {index + 1} of {count}")


def _split_paths(first: Path, count: int) -> list[Path]:
    """Parts 2..count beside `first`; a missing one, or a part of the same prefix that the set
    does not include (another count, a number past it), is an error."""
    match = SPLIT_NAME.fullmatch(first.name)
    assert match is not None  # _split_count checked the name
    prefix = match["prefix"]
    wanted = {f"{prefix}-{i:05d}-of-{count:05d}.gguf" for i in range(1, count + 1)}
    siblings = {p.name for p in first.parent.glob(f"{_glob_escape(prefix)}-*-of-*.gguf")}
    extra = sorted(n for n in siblings - wanted if (m := SPLIT_NAME.fullmatch(n)) and m["prefix"] == prefix)
    if extra:
        raise SurgeonError(f"{first.parent}: {inert(extra[0])} does not belong to the {count}-part set of {first.name}")
    paths = [first.parent / f"{prefix}-{i:05d}-of-{count:05d}.gguf" for i in range(2, count + 1)]
    for i, path in enumerate(paths, start=2):
        if not path.is_file():
            raise SurgeonError(f"{first}: part {i} of {count} ({path.name}) is missing")
    return paths


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


# ---------------------------------------------------------------------------------------------
# One file's header


@dataclass
class _Header:
    version: int
    metadata: dict[str, Any]
    infos: list[tuple[str, tuple[int, ...], int, int]]  # name, ggml dims, type, relative offset
    end: int  # where the header ends (before padding)


@dataclass
class _PartRead:
    part: GGUFPart
    header: _Header
    tensors: dict[str, GGUFTensor]


def _read_part(path: Path) -> _PartRead:
    where = str(path)
    data = _map(path, where)
    header = _Cursor(data, where).header()
    alignment = _alignment(header.metadata, where)
    data_start = -(-header.end // alignment) * alignment
    part = GGUFPart(path, header.version, alignment, data_start, data.size, data)
    return _PartRead(part, header, _tensors(header, part, where))


def _map(path: Path, where: str) -> np.ndarray:
    """The file mapped read-only; a FIFO or a device is refused first (open_regular)."""
    with open_regular(path, where) as (fd, info):
        if info.st_size < 24:
            raise SurgeonError(f"{where}: too short to be a GGUF file ({info.st_size} bytes)")
        head = os.pread(fd, 4, 0)
        if head != GGUF_MAGIC:
            raise SurgeonError(f"{where}: not a GGUF file (it starts with {head!r}, not b'GGUF')")
        try:  # the descriptor checked above, not the path again; the map outlives it
            with open(fd, "rb", closefd=False) as handle:
                mapped = np.memmap(handle, dtype=np.uint8, mode="r", shape=(info.st_size,))
        except (OSError, ValueError) as exc:
            raise SurgeonError(f"{where}: cannot map it ({exc})") from None
    # a plain ndarray view (it keeps the map alive): arrays computed from an np.memmap stay
    # np.memmap instances, which numpy then checks against the file on every operation
    return np.asarray(mapped)


def _alignment(metadata: dict[str, Any], where: str) -> int:
    value = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if _as_int(value) is None or value <= 0 or value & (value - 1):
        raise SurgeonError(f"{where}: general.alignment is {inert(repr(value))}, not a power of two")
    return int(value)


def _tensors(header: _Header, part: GGUFPart, where: str) -> dict[str, GGUFTensor]:
    tensors: dict[str, GGUFTensor] = {}
    data_size = part.size - part.data_start
    for name, dims, qtype, offset in header.infos:
        shown = f"{where}: tensor {inert(name)!r}"
        if name in tensors:
            raise SurgeonError(f"{shown} is listed twice")
        nbytes = _nbytes(dims, qtype, shown)
        if offset % part.alignment:
            raise SurgeonError(f"{shown}: offset {offset} is not a multiple of the alignment {part.alignment}")
        if offset + nbytes > data_size:
            raise SurgeonError(f"{shown}: {nbytes} bytes at offset {offset} run past the end of the file")
        shape = tuple(reversed(dims))
        tensors[name] = GGUFTensor(name, qtype, shape, 0, part.data_start + offset, nbytes)
    _check_overlaps(list(tensors.values()), where)
    return tensors


def _nbytes(dims: tuple[int, ...], qtype: int, shown: str) -> int:
    try:
        kind = GGMLQuantizationType(qtype)
        block, type_size = GGML_QUANT_SIZES[kind]
    except (ValueError, KeyError):
        raise SurgeonError(f"{shown} has ggml type {qtype}, which gguf-py does not know") from None
    row = dims[0] if dims else 1
    if row % block:
        raise SurgeonError(f"{shown}: rows of {row} elements are not whole {kind.name} blocks of {block}")
    rows = math.prod(dims[1:])  # Python ints: four u64 dimensions multiply exactly
    return rows * (row // block) * type_size


def _check_overlaps(tensors: list[GGUFTensor], where: str) -> None:
    tensors.sort(key=lambda t: t.offset)
    for before, after in pairwise(tensors):
        if after.offset < before.offset + before.nbytes:
            raise SurgeonError(f"{where}: tensors {inert(before.name)!r} and {inert(after.name)!r} overlap")


class _Cursor:
    """Reads the header from the mapped file, checking each length against the bytes left."""

    def __init__(self, data: np.ndarray, where: str):
        self.data, self.where, self.pos, self.end = data, where, 0, data.size
        self.view = memoryview(data.data)  # what struct reads

    def header(self) -> _Header:
        self.pos = 4  # the magic, checked by _map
        version = self.scalar("<I")
        if version not in VERSIONS:
            swapped = version & 0xFFFF == 0  # a big-endian file reads as version << 16 here
            what = "a big-endian GGUF file, which surgeon does not read" if swapped else f"GGUF version {version}"
            raise SurgeonError(f"{self.where}: {what} (versions {VERSIONS[0]} and {VERSIONS[1]} are read)")
        n_tensors, n_kv = self.scalar("<Q"), self.scalar("<Q")
        self.bound(n_kv, MIN_KV_BYTES, MAX_KVS, "key/values")
        metadata = self.metadata(n_kv)
        self.bound(n_tensors, MIN_TENSOR_INFO_BYTES, MAX_TENSORS, "tensors")
        infos = [self.tensor_info() for _ in range(n_tensors)]
        return _Header(version, metadata, infos, self.pos)

    def bound(self, count: int, min_bytes: int, limit: int, what: str) -> None:
        if count > limit:
            raise SurgeonError(f"{self.where}: claims {count} {what}, more than the {limit} surgeon reads")
        if count * min_bytes > self.end - self.pos:
            raise SurgeonError(f"{self.where}: claims {count} {what}, more than its {self.end} bytes can hold")

    def need(self, n: int) -> None:
        if n > self.end - self.pos:
            raise SurgeonError(f"{self.where}: ends inside its header (at byte {self.pos}, {n} more bytes needed)")

    def scalar(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        self.need(size)
        (value,) = struct.unpack_from(fmt, self.view, self.pos)
        self.pos += size
        return value

    def raw_string(self) -> bytes:
        n = self.scalar("<Q")
        self.need(n)
        text = self.data[self.pos : self.pos + n].tobytes()
        self.pos += n
        return text

    def name(self, what: str) -> str:
        raw = self.raw_string()
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise SurgeonError(f"{self.where}: a {what} is not valid UTF-8 ({raw[:40]!r})") from None

    def metadata(self, count: int) -> dict[str, Any]:
        metadata: dict[str, Any] = {}
        for _ in range(count):
            key = self.name("metadata key")
            if key in metadata:
                raise SurgeonError(f"{self.where}: metadata key {inert(key)!r} is listed twice")
            metadata[key] = self.value(self.scalar("<I"), 0)
        return metadata

    def value(self, kind: int, depth: int) -> Any:
        fmt = _SCALARS.get(kind)
        if fmt is not None:
            return self.scalar(fmt)
        if kind == GGUFValueType.STRING:
            return self.raw_string().decode("utf-8", errors="replace")
        if kind == GGUFValueType.ARRAY:
            return self.array(depth)
        raise SurgeonError(f"{self.where}: unknown metadata value type {kind} at byte {self.pos - 4}")

    def array(self, depth: int) -> Any:
        if depth >= MAX_ARRAY_DEPTH:
            raise SurgeonError(f"{self.where}: metadata arrays nested more than {MAX_ARRAY_DEPTH} deep")
        kind, count = self.scalar("<I"), self.scalar("<Q")
        fmt = _SCALARS.get(kind)
        if fmt is not None:
            size = struct.calcsize(fmt)
            self.need(count * size)
            values = np.frombuffer(self.data, dtype=np.dtype(fmt), count=count, offset=self.pos)
            self.pos += count * size
            return values
        if kind == GGUFValueType.STRING:
            self.need(count * 8)  # each string has at least its length
            for _ in range(count):
                self.need(n := self.scalar("<Q"))
                self.pos += n
            return GGUFStrings(count)
        if kind == GGUFValueType.ARRAY:
            self.need(count * 12)  # each inner array has at least its type and length
            for _ in range(count):
                self.array(depth + 1)
            return GGUFNested(count)
        raise SurgeonError(f"{self.where}: unknown metadata array type {kind} at byte {self.pos - 12}")

    def tensor_info(self) -> tuple[str, tuple[int, ...], int, int]:
        name = self.name("tensor name")
        n_dims = self.scalar("<I")
        if n_dims > MAX_DIMS:
            raise SurgeonError(f"{self.where}: tensor {inert(name)!r} has {n_dims} dimensions (ggml allows {MAX_DIMS})")
        dims = tuple(self.scalar("<Q") for _ in range(n_dims))
        return name, dims, self.scalar("<I"), self.scalar("<Q")
