"""A quantized safetensors checkpoint (NVFP4, FP8: quantized.py) as a row reader (rows.py), so
that `surgeon diff BASE QUANT` compares it as it compares a GGUF.

Every quantized weight is one tensor under its logical name (`...q_proj.weight`, whatever its
codes are called on disk: `weight` or `weight_packed`), its storage the layout's name
("NVFP4", "FP8_E4M3 per-channel": the keys of quant_bounds.py). Tensors the scheme left in
float (norms, embeddings, the ignore list's modules, biases) are here as their dtype, decoded
as any safetensors tensor is. Activation-side scales (input_scale, k_scale, ...) are no
weights: `auxiliary` lists them and they are never decoded.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np

from surgeon.errors import SurgeonError
from surgeon.format.quantized import QuantizedReader
from surgeon.format.rows import ROW_CHUNK_ELEMENTS, RowTensor, SafetensorsRows, chunked
from surgeon.format.safetensors import TensorInfo
from surgeon.text import inert


class QuantizedRows:
    def __init__(self, reader: QuantizedReader):
        self.reader = reader
        self.source = reader.ckpt.source
        self._plain = SafetensorsRows(reader.ckpt)  # decodes the float tensors, by their stored names
        self._tensors = {name: RowTensor(name, w.shape, w.storage) for name, w in reader.weights.items()}
        self._tensors |= {name: self._plain.tensors[name] for name in reader.plain}

    @property
    def tensors(self) -> Mapping[str, RowTensor]:
        return self._tensors

    @property
    def auxiliary(self) -> Mapping[str, TensorInfo]:
        return self.reader.auxiliary

    def read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        if name in self.reader.weights:
            return self.reader.decode_rows(name, start, stop)
        if name in self.reader.plain:
            return self._plain.read_rows(name, start, stop)
        raise SurgeonError(f"{self.source}: has no tensor {inert(name)!r}")

    def iter_rows(
        self, name: str, *, multiple: int = 1, budget: int = ROW_CHUNK_ELEMENTS
    ) -> Iterator[tuple[int, np.ndarray]]:
        return chunked(self, name, multiple, budget)

    def stored(self, name: str) -> list[TensorInfo]:
        """The stored tensors tensor `name` is decoded from: codes and scales, or itself."""
        weight = self.reader.weights.get(name)
        if weight is None:
            return [self.reader.plain[name]]
        return [weight.data, weight.scale] + ([weight.second] if weight.second is not None else [])
