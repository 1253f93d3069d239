"""Quantized safetensors checkpoints (NVFP4, FP8) read as logical float32 weights, in numpy.

Layouts, each from its exporter's and loader's source (see also requantize.py):
- ModelOpt NVFP4: `X.weight` U8 [rows, cols/2], two E2M1 codes a byte, the even column in
  the LOW nibble; `X.weight_scale` F8_E4M3 [rows, cols/16]; `X.weight_scale_2` F32 scalar;
  value = e2m1 * (scale * scale_2).
- compressed-tensors `nvfp4-pack-quantized`: `X.weight_packed` as above, `X.weight_scale`
  as above, `X.weight_global_scale` F32 [1], a divisor (= 1 / scale_2: compressed-tensors'
  modelopt_nvfp4 converter); value = e2m1 * (scale / global_scale) (forward_helpers._dequantize).
- FP8 (compressed-tensors `float-quantized`, ModelOpt FP8*, HF `fp8`): `X.weight` F8_E4M3
  [rows, cols] and `X.weight_scale` (or `X.weight_scale_inv`, DeepSeek's name for the same
  multiplier) F32/BF16/F16: one scalar, one per row ([rows] or [rows, 1]) or one per block
  [ceil(rows/b0), ceil(cols/b1)] with the block named by the config; value = e4m3 * scale.
Products are float32, in the order the exporters' own dequantizers compute them.

Activation-side tensors (input_scale, input_global_scale, k_scale, v_scale) are listed in
`auxiliary` and never decoded as weights. Every other tensor is `plain`.

Shapes come from headers that open_checkpoint validated against the file sizes, and a
weight's scales must have exactly the shape its weight implies, so nothing read here is
larger than the file. Rows are read with pread in bounded chunks (tensor_io.ShardReader).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NoReturn

import numpy as np

from surgeon.errors import SurgeonError
from surgeon.format.checkpoint import Checkpoint
from surgeon.format.dtypes import to_float64
from surgeon.format.quant_scheme import FP8, NVFP4, QuantScheme, quantization_scheme
from surgeon.format.requantize import E2M1_VALUES, NVFP4_GROUP, e2m1_encode, e4m3_decode, e4m3_encode
from surgeon.format.safetensors import TensorInfo
from surgeon.format.tensor_io import ShardReader

# Tensors beside a quantized weight that belong to activations or the KV cache.
AUXILIARY_SUFFIXES = frozenset(
    {"input_scale", "input_global_scale", "input_zero_point", "k_scale", "v_scale", "q_scale", "prob_scale"}
)
SCALAR_DTYPES = ("F32", "BF16", "F16")
DEFAULT_CHUNK_ELEMENTS = 1 << 22  # 16 MiB of float32 output per chunk


@dataclass(frozen=True)
class QuantizedWeight:
    """One logical weight as it is stored quantized."""

    name: str  # the logical name, `...q_proj.weight`
    storage: str  # "NVFP4", "FP8_E4M3 per-tensor", "FP8_E4M3 per-channel", "FP8_E4M3 block 128x128"
    shape: tuple[int, int]  # logical [rows, cols]
    data: TensorInfo  # the codes: packed E2M1 bytes or E4M3 elements
    scale: TensorInfo  # E4M3 per-16 scales (NVFP4), float scales (FP8)
    second: TensorInfo | None = None  # NVFP4's weight_scale_2 / weight_global_scale
    divide: bool = False  # the second scale divides (compressed-tensors) rather than multiplies
    block: tuple[int, int] = (1, NVFP4_GROUP)  # rows and columns one scale covers

    @property
    def layout(self) -> str:
        return NVFP4 if self.storage == "NVFP4" else FP8


def open_quantized(ckpt: Checkpoint) -> QuantizedReader | None:
    """A reader of `ckpt`'s quantized weights, or None where its config declares no quantization."""
    scheme = quantization_scheme(ckpt)
    return None if scheme is None else QuantizedReader(ckpt, scheme)


class QuantizedReader:
    """The weights of a quantized checkpoint by logical name; `decode_rows` reads and decodes."""

    def __init__(self, ckpt: Checkpoint, scheme: QuantScheme):
        self.ckpt = ckpt
        self.scheme = scheme
        self.weights: dict[str, QuantizedWeight] = {}
        self.plain: dict[str, TensorInfo] = {}
        self.auxiliary: dict[str, TensorInfo] = {}
        self._readers: dict[str, ShardReader] = {}
        self._lock = threading.Lock()
        self._seconds: dict[str, np.float32] = {}
        _Classifier(self).run()

    def decode_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of logical weight `name` as float32 [stop - start, cols]."""
        weight = self._weight(name)
        rows = weight.shape[0]
        if not 0 <= start <= stop <= rows:
            raise SurgeonError(f"{name!r}: rows {start}..{stop} are outside its {rows} rows")
        # finite scales whose product overflows (E4M3 448 * 3e38) decode to inf, and a code of 0
        # times an infinite scale to NaN: kept as such, unwarned, as a GGUF's damaged blocks are
        with np.errstate(over="ignore", invalid="ignore"):
            if weight.layout == NVFP4:
                return self._nvfp4_rows(weight, start, stop)
            return self._fp8_rows(weight, start, stop)

    def iter_rows(
        self, name: str, max_elements: int = DEFAULT_CHUNK_ELEMENTS, row_multiple: int = 1
    ) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, float32 rows) covering weight `name`, each chunk at most `max_elements`
        (one row where a row is larger), a multiple of `row_multiple` rows where that fits."""
        rows, cols = self._weight(name).shape
        per_chunk = max(1, max_elements // max(cols, 1))
        if per_chunk >= row_multiple:
            per_chunk -= per_chunk % row_multiple
        for first in range(0, rows, per_chunk):
            yield first, self.decode_rows(name, first, min(rows, first + per_chunk))

    def agreement_mask(self, name: str, start: int, stop: int, candidate: np.ndarray) -> np.ndarray:
        """bool [stop - start, cols]: the elements of `candidate` (float rows of weight `name`)
        that round, with this quant's own stored scales, to the value it stores (E2M1 for
        NVFP4, E4M3 for FP8, nearest with ties to even as the exporters round; +0 and -0 are
        one value). Where a scale is 0 an element agrees iff it is 0; a non-finite one never."""
        weight = self._weight(name)
        decoded = self.decode_rows(name, start, stop)  # checks the rows and the scales' finiteness
        ones = np.ones((stop - start, weight.shape[1]), dtype=np.float32)
        candidate = np.asarray(candidate, dtype=np.float32)
        # an overflowing scale is inf (as decode_rows): it agrees nowhere, unwarned
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            scale = self._scale_rows(weight, start, stop, ones)
            finite = np.isfinite(candidate) & np.isfinite(scale)
            ratio = np.where(finite & (scale != 0), candidate / scale, 0).astype(np.float32)
            if weight.layout == NVFP4:
                values = E2M1_VALUES[e2m1_encode(ratio)]
            else:
                values = e4m3_decode(e4m3_encode(np.clip(ratio, -448, 448)))
            agree = values * scale == decoded
        return np.where(scale == 0, candidate == 0, agree) & finite

    def _scale_rows(self, weight: QuantizedWeight, start: int, stop: int, ones: np.ndarray) -> np.ndarray:
        """Each element's effective scale in rows [start, stop): the decoding of all-ones codes."""
        if weight.layout == NVFP4:
            stored = e4m3_decode(self._read_rows(weight.scale, start, stop)).reshape(stop - start, -1)
            second = self._second(weight)
            scale = stored / second if weight.divide else stored * second
            return _apply_scale(ones, scale.astype(np.float32), weight.block, range(start, stop))
        first, last = start // weight.block[0], -(-stop // weight.block[0])
        raw = self._read_rows(weight.scale, first, last)
        scale = to_float64(raw.view(_raw_dtype(weight.scale)), weight.scale.dtype).astype(np.float32)
        grid_cols = -(-weight.shape[1] // weight.block[1])
        return _apply_scale(ones, scale.reshape(last - first, grid_cols), weight.block, range(start, stop))

    def _weight(self, name: str) -> QuantizedWeight:
        weight = self.weights.get(name)
        if weight is None:
            raise SurgeonError(f"{self.ckpt.root}: no quantized weight {name!r}")
        return weight

    def close(self) -> None:
        for reader in self._readers.values():
            reader.close()
        self._readers.clear()

    def __enter__(self) -> QuantizedReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- decoding -------------------------------------------------------------------

    def _nvfp4_rows(self, weight: QuantizedWeight, start: int, stop: int) -> np.ndarray:
        rows = stop - start
        cols = weight.shape[1]
        packed = self._read_rows(weight.data, start, stop).reshape(rows, cols // 2)
        codes = np.empty((rows, cols), dtype=np.uint8)
        codes[:, 0::2] = packed & 0x0F  # low nibble first: the even column
        codes[:, 1::2] = packed >> 4
        values = E2M1_VALUES[codes]
        stored = e4m3_decode(self._read_rows(weight.scale, start, stop)).reshape(rows, weight.scale.shape[1])
        self._check_finite(weight.scale, stored, start)
        second = self._second(weight)
        scale = stored / second if weight.divide else stored * second
        return _apply_scale(values, scale.astype(np.float32), weight.block, range(start, stop))

    def _fp8_rows(self, weight: QuantizedWeight, start: int, stop: int) -> np.ndarray:
        cols = weight.shape[1]
        values = e4m3_decode(self._read_rows(weight.data, start, stop)).reshape(stop - start, cols)
        first, last = start // weight.block[0], -(-stop // weight.block[0])
        grid_cols = -(-cols // weight.block[1])
        raw = self._read_rows(weight.scale, first, last)
        scale = to_float64(raw.view(_raw_dtype(weight.scale)), weight.scale.dtype).astype(np.float32)
        scale = scale.reshape(last - first, grid_cols)
        self._check_finite(weight.scale, scale, first)
        return _apply_scale(values, scale, weight.block, range(start, stop))

    def _second(self, weight: QuantizedWeight) -> np.float32:
        """NVFP4's per-tensor scale, read once: finite, and not zero where it divides."""
        info = weight.second
        assert info is not None  # every NVFP4 weight has one (the classifier requires it)
        if info.name not in self._seconds:
            raw = self._read(info, info.start, info.nbytes)
            value = np.float32(to_float64(raw.view(_raw_dtype(info)), info.dtype)[0])
            if not np.isfinite(value) or (weight.divide and value == 0):
                raise SurgeonError(f"{self._where(info)}: tensor {info.name!r} is {value}, not a usable scale")
            self._seconds[info.name] = value
        return self._seconds[info.name]

    def _check_finite(self, info: TensorInfo, scale: np.ndarray, first_row: int) -> None:
        bad = ~np.isfinite(scale)
        if bad.any():
            row = first_row + int(np.argwhere(bad)[0][0])
            raise SurgeonError(f"{self._where(info)}: tensor {info.name!r} holds a NaN or infinite scale in row {row}")

    def _read_rows(self, info: TensorInfo, start: int, stop: int) -> np.ndarray:
        """The raw bytes of rows [start, stop) of a stored tensor (a scalar is one row)."""
        rows = info.shape[0] if info.shape else 1
        row_bytes = info.nbytes // rows if rows else 0
        return self._read(info, info.start + start * row_bytes, (stop - start) * row_bytes)

    def _read(self, info: TensorInfo, offset: int, size: int) -> np.ndarray:
        # under a lock: the quant diff decodes tensors on several threads, and a reader's buffer
        # is reused by its next read (unlocked, one thread's scales were read as another's bytes:
        # a NaN scale the file does not hold); the decoding itself runs outside it
        with self._lock:
            reader = self._readers.get(info.file)
            if reader is None:
                shard = self.ckpt.shards[info.file]
                reader = ShardReader(shard.path, expected_size=shard.file_size)
                self._readers[info.file] = reader
            # a copy: the reader's buffer is reused by its next read
            return np.frombuffer(reader.read(offset, size), dtype=np.uint8).copy()

    def _where(self, info: TensorInfo) -> str:
        return str(self.ckpt.shard_path(info.file))


def _raw_dtype(info: TensorInfo) -> np.dtype:
    assert info.dtype.raw is not None  # scalar scales are F32/BF16/F16, checked when classified
    return np.dtype(info.dtype.raw)


def _apply_scale(values: np.ndarray, scale: np.ndarray, block: tuple[int, int], rows: range) -> np.ndarray:
    """values * the scale of each element's block; scale row 0 is the block of rows.start."""
    cols = values.shape[1]
    if scale.size == 1:
        values *= scale.reshape(())
    elif block[0] == 1 and block[1] >= cols:
        values *= scale[:, :1]
    elif block[0] == 1 and cols % block[1] == 0:
        values.reshape(len(rows), -1, block[1])[...] *= scale[:, :, None]
    else:  # blocks of rows: each group of rows times its scale row, spread over the columns
        per_col = np.repeat(scale, block[1], axis=1)[:, :cols]
        first = rows.start // block[0]
        for group in range(per_col.shape[0]):
            lo = max(rows.start, (first + group) * block[0]) - rows.start
            hi = min(rows.stop, (first + group + 1) * block[0]) - rows.start
            values[lo:hi] *= per_col[group]
    return values


class _Classifier:
    """Sorts a checkpoint's tensors into quantized weights, auxiliary and plain tensors,
    checking every quantized weight's parts against each other and the declaration."""

    def __init__(self, reader: QuantizedReader):
        self.reader = reader
        self.scheme = reader.scheme
        self.ckpt = reader.ckpt

    def run(self) -> None:
        modules: dict[str, dict[str, TensorInfo]] = {}
        for name, info in self.ckpt.tensors.items():
            module, _, suffix = name.rpartition(".")
            modules.setdefault(module, {})[suffix] = info
        if self.scheme.unknown:
            self._refuse_unknown(modules)
        for module, parts in modules.items():
            self._module(module, parts)

    def _refuse_unknown(self, modules: dict[str, dict[str, TensorInfo]]) -> None:
        """A declared format surgeon cannot decode: named with the first tensor that uses it."""
        formats = ", ".join(self.scheme.unknown)
        for parts in modules.values():
            if "weight_scale" in parts or "weight_packed" in parts:
                info = parts.get("weight_packed") or parts.get("weight") or parts["weight_scale"]
                raise SurgeonError(
                    f"{self._where(info)}: tensor {info.name!r} is stored in compressed-tensors format "
                    f"{formats}, which surgeon does not decode (it decodes nvfp4-pack-quantized, float-quantized)"
                )
        raise SurgeonError(f"{self.scheme.where}: format {formats} is not one surgeon decodes")

    def _module(self, module: str, parts: dict[str, TensorInfo]) -> None:
        weight = self._weight(module, parts)
        if weight is None:
            for suffix, info in parts.items():
                target = self.reader.auxiliary if suffix in AUXILIARY_SUFFIXES else self.reader.plain
                target[info.name] = info
            return
        self._check_declared(module, weight)
        self.reader.weights[weight.name] = weight
        used = {weight.data.name, weight.scale.name, weight.second.name if weight.second else ""}
        for info in parts.values():
            if info.name not in used:
                self._extra(info)

    def _weight(self, module: str, parts: dict[str, TensorInfo]) -> QuantizedWeight | None:
        if "weight_packed" in parts:
            if "weight" in parts:  # both would be the logical weight `module.weight`
                self._fail(parts["weight"], f"beside {parts['weight_packed'].name!r}: two tensors for one weight")
            return self._nvfp4(module, parts, parts["weight_packed"], "weight_global_scale", divide=True)
        data = parts.get("weight")
        if data is None:
            return None
        if data.dtype.name == "U8" and NVFP4 in self.scheme.layouts and self.scheme.method == "modelopt":
            return self._nvfp4(module, parts, data, "weight_scale_2", divide=False)
        if data.dtype.name == "F8_E4M3":
            return self._fp8(module, parts, data)
        scaled = any(suffix.startswith("weight_scale") or suffix == "weight_global_scale" for suffix in parts)
        if scaled and data.dtype.name not in ("BF16", "F16", "F32"):
            # an integer or other 8-bit weight with scales (int8, F8_E5M2): a layout not decoded here.
            # A float weight beside scales is a fake-quantized one, already dequantized: plain.
            self._fail(data, f"is {data.dtype.name} beside its scales, a quantized layout surgeon does not decode")
        return None

    def _nvfp4(
        self, module: str, parts: dict[str, TensorInfo], data: TensorInfo, second_name: str, divide: bool
    ) -> QuantizedWeight:
        if data.dtype.name != "U8" or len(data.shape) != 2:
            self._fail(data, f"is {data.dtype.name} {list(data.shape)}, not a 2-d U8 tensor of packed E2M1 codes")
        rows, cols = data.shape[0], data.shape[1] * 2
        scale = self._part(parts, module, "weight_scale", data)
        if scale.dtype.name != "F8_E4M3":
            self._fail(scale, f"is {scale.dtype.name}, not F8_E4M3 (the per-16 scales of {data.name!r})")
        expected = (rows, -(-cols // NVFP4_GROUP))
        if scale.shape != expected:
            self._fail(scale, f"has shape {list(scale.shape)}, but {data.name!r} needs {list(expected)}")
        second = self._part(parts, module, second_name, data)
        self._check_scalar(second)
        return QuantizedWeight(f"{module}.weight", "NVFP4", (rows, cols), data, scale, second, divide)

    def _fp8(self, module: str, parts: dict[str, TensorInfo], data: TensorInfo) -> QuantizedWeight:
        if len(data.shape) != 2:
            self._fail(data, f"is a {len(data.shape)}-d FP8 weight; surgeon decodes 2-d ones")
        name = "weight_scale_inv" if "weight_scale_inv" in parts else "weight_scale"
        scale = self._part(parts, module, name, data)
        if scale.dtype.name not in SCALAR_DTYPES:
            self._fail(scale, f"is {scale.dtype.name}, not F32, BF16 or F16 (the scales of {data.name!r})")
        rows, cols = data.shape
        block, storage = self._fp8_block(scale, (rows, cols))
        return QuantizedWeight(f"{module}.weight", f"FP8_E4M3 {storage}", (rows, cols), data, scale, block=block)

    def _fp8_block(self, scale: TensorInfo, shape: tuple[int, int]) -> tuple[tuple[int, int], str]:
        rows, cols = shape
        if scale.numel == 1:
            return (max(rows, 1), max(cols, 1)), "per-tensor"
        if scale.shape in ((rows,), (rows, 1)):
            return (1, max(cols, 1)), "per-channel"
        for b0, b1 in self.scheme.fp8_blocks:
            if scale.shape == (-(-rows // b0), -(-cols // b1)):
                return (b0, b1), f"per-group {b1}" if b0 == 1 else f"block {b0}x{b1}"
        blocks = ", ".join(f"{b0}x{b1}" for b0, b1 in self.scheme.fp8_blocks) or "none"
        self._fail(
            scale,
            f"has shape {list(scale.shape)}, which fits no per-tensor, per-channel or declared block "
            f"({blocks}) scale of a {[rows, cols]} weight",
        )

    def _check_scalar(self, info: TensorInfo) -> None:
        if info.dtype.name not in SCALAR_DTYPES or info.numel != 1:
            self._fail(info, f"is {info.dtype.name} {list(info.shape)}, not one F32, BF16 or F16 scale")

    def _check_declared(self, module: str, weight: QuantizedWeight) -> None:
        """The stored layout against the declaration: allowed, and not on an ignored module."""
        declared = self.scheme.per_layer.get(module)
        allowed = {declared} if declared else self.scheme.layouts
        if weight.layout not in allowed:
            said = ", ".join(sorted(allowed)) or "no quantized layout"
            self._fail(weight.data, f"is stored as {weight.storage}, but {self.scheme.where} declares {said}")
        if self.scheme.ignores(module):
            self._fail(
                weight.data, f"is stored as {weight.storage}, but {self.scheme.where} lists {module!r} as ignored"
            )

    def _extra(self, info: TensorInfo) -> None:
        suffix = info.name.rpartition(".")[2]
        if suffix in AUXILIARY_SUFFIXES:
            self.reader.auxiliary[info.name] = info
        elif suffix.startswith("weight_"):  # weight_zero_point (asymmetric), weight_shape (int4 packing)
            self._fail(info, "is a weight parameter surgeon does not decode (an asymmetric or other layout)")
        else:
            self.reader.plain[info.name] = info  # a bias

    def _part(self, parts: dict[str, TensorInfo], module: str, suffix: str, data: TensorInfo) -> TensorInfo:
        info = parts.get(suffix)
        if info is None:
            self._fail(data, f"has no {module}.{suffix} beside it")
        return info

    def _fail(self, info: TensorInfo, problem: str) -> NoReturn:
        raise SurgeonError(f"{self._where(info)}: tensor {info.name!r} {problem}")

    def _where(self, info: TensorInfo) -> str:
        return str(self.ckpt.shard_path(info.file))
