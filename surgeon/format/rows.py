"""A checkpoint's tensors as rows: the one reader interface every format sits behind
(ARCHITECTURE.md, principle 13), and its safetensors implementation.

A reader names its tensors (`RowTensor`: name, logical shape, storage type) and decodes any
run of a tensor's rows to floats, a bounded chunk at a time. A row is the last dimension;
every other dimension counts rows (a [experts, rows, cols] tensor has experts*rows rows, a 1-D
tensor is one row). This is what a comparison across formats needs and nothing more: the
byte-range view (`Checkpoint`, `TensorInfo`) stays what hashing, the byte compare and the
writer use, so the safetensors diff keeps its own faster paths.

Implementations: `SafetensorsRows` here; `surgeon.model.gguf_rows.GGUFRows` (a GGUF read
through Hugging Face names, llama.cpp's layout transforms undone).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from surgeon.errors import SurgeonError
from surgeon.format.checkpoint import Checkpoint
from surgeon.format.dtypes import raw_view, to_float64
from surgeon.format.tensor_io import ShardReader
from surgeon.text import inert

# Elements decoded per chunk by default: 256Ki (1 MiB of float32), so a chunk of each side
# and their difference stay in the CPU's L2 cache and the RSS stays small. gguf-py's Q8_0
# dequantize on 4096-wide rows, one core: 500 M elements/s in 64Ki-256Ki chunks, 380 at 1Mi,
# 260 at 4Mi. bench_quant_diff's 1 GB Q8_0 pair, one thread, CPU seconds (best of 2, the
# shared box): 7.5 at 64Ki, 5.8 at 256Ki, 8.8 at 1Mi.
ROW_CHUNK_ELEMENTS = 1 << 18


@dataclass(frozen=True)
class RowTensor:
    name: str
    shape: tuple[int, ...]  # logical, row-major (Hugging Face order)
    storage: str  # how it is stored: a safetensors dtype ("BF16") or a GGUF type ("Q4_0")
    held: int | None = None  # rows the reader can decode, the first ones; None: all of them

    @property
    def rows(self) -> int:
        return math.prod(self.shape[:-1])

    @property
    def row_len(self) -> int:
        return self.shape[-1] if self.shape else 1

    @property
    def readable(self) -> int:
        return self.rows if self.held is None else self.held


class RowReader(Protocol):
    """A checkpoint's tensors, decoded by rows."""

    source: str

    @property
    def tensors(self) -> Mapping[str, RowTensor]: ...

    def read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of tensor `name` as a float array [stop-start, row_len] of the
        caller's own (float32 or float64: whichever holds the stored values exactly)."""
        ...

    def iter_rows(
        self, name: str, *, multiple: int = 1, budget: int = ROW_CHUNK_ELEMENTS
    ) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, rows) over the rows the reader holds, about `budget` elements at a
        time, a multiple of `multiple` rows per chunk (whole heads)."""
        ...


def row_step(row_len: int, multiple: int, budget: int) -> int:
    """Rows per chunk: about `budget` elements, a multiple of `multiple`, at least one."""
    return max(1, budget // max(row_len, 1) // multiple) * multiple


def chunked(
    reader: RowReader, name: str, multiple: int = 1, budget: int = ROW_CHUNK_ELEMENTS
) -> Iterator[tuple[int, np.ndarray]]:
    """iter_rows built from read_rows, for readers that decode any run of rows alike."""
    info = reader.tensors[name]
    step = row_step(info.row_len, multiple, budget)
    for start in range(0, info.readable, step):
        yield start, reader.read_rows(name, start, min(start + step, info.readable))


class SafetensorsRows:
    """A safetensors checkpoint (`Checkpoint`) as rows, read with pread like every other reader
    of shards (tensor_io.ShardReader: a file that shrinks is an error, not a SIGBUS). BF16, F16
    and F32 decode to float32, which holds their values exactly; other dtypes to float64 (the
    dtypes module). float32 halves the bytes every later pass touches: bench_quant_diff's
    1.9 GB bf16 base, one thread, decoded with the arithmetic of the quant diff, 6.5 s of
    which 2.2 s in float64 decoding; a 256Ki-element chunk decodes in 0.6 ms as float32."""

    def __init__(self, ckpt: Checkpoint):
        self.ckpt = ckpt
        self.source = ckpt.source
        self._tensors = {
            name: RowTensor(name, tuple(info.shape), info.dtype.name) for name, info in ckpt.tensors.items()
        }

    @property
    def tensors(self) -> Mapping[str, RowTensor]:
        return self._tensors

    def read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        info = self.ckpt.tensors.get(name)
        if info is None:
            raise SurgeonError(f"{self.source}: has no tensor {inert(name)!r}")
        rows = self._tensors[name]
        if not 0 <= start <= stop <= rows.rows:
            raise SurgeonError(f"{self.source}: rows {start}:{stop} of {inert(name)!r}, which has {rows.rows}")
        if info.dtype.raw is None:
            raise SurgeonError(f"{self.source}: {inert(name)!r} is {info.dtype.name}, which surgeon does not decode")
        row_bytes = info.nbytes // rows.rows if rows.rows else 0
        with ShardReader(self.ckpt.shard_path(info.file)) as reader:
            raw = raw_view(reader.read(info.start + start * row_bytes, (stop - start) * row_bytes), info.dtype)
        # new arrays, or views of the buffer this call's reader owns alone
        values = _float32(raw, info.dtype.name)
        if values is None:
            values = to_float64(raw, info.dtype)
        return values.reshape(stop - start, rows.row_len)

    def iter_rows(
        self, name: str, *, multiple: int = 1, budget: int = ROW_CHUNK_ELEMENTS
    ) -> Iterator[tuple[int, np.ndarray]]:
        return chunked(self, name, multiple, budget)


def _float32(raw: np.ndarray, name: str) -> np.ndarray | None:
    """The dtypes float32 holds exactly, decoded to it; None for the others."""
    if name == "BF16":
        return np.left_shift(raw, 16, dtype=np.uint32).view(np.float32)
    if name == "F16":
        return raw.view(np.float16).astype(np.float32)
    if name == "F32":
        return raw.view(np.float32)
    return None
