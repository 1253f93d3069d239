"""A GGUF model as a row reader (surgeon.format.rows) under Hugging Face names: each tensor a
CrossMap entry maps, its shape the Hugging Face one, its rows decoded from the GGUF with
llama.cpp's transforms undone (crossnames.py). Tensors that map to nothing are not here: the
CrossMap lists them, with the reason.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import replace

import numpy as np

from surgeon.errors import SurgeonError
from surgeon.format.gguf import GGUFModel
from surgeon.format.rows import ROW_CHUNK_ELEMENTS, RowTensor
from surgeon.model.crossnames import (
    CrossMap,
    MappingMismatch,
    Piece,
    TensorMap,
    Transform,
    gguf_entry,
    gguf_name,
    iter_hf_rows,
    name_map_for,
    text_name,
)
from surgeon.text import inert

TOKEN_EMBD = "token_embd.weight"


class GGUFRows:
    def __init__(self, model: GGUFModel, cross: CrossMap, hf_shapes: Mapping[str, tuple[int, ...]]):
        self.model, self.cross = model, cross
        self.source = model.source
        self._tensors = {name: self._row_tensor(name, entry, hf_shapes[name]) for name, entry in cross.entries.items()}

    def _row_tensor(self, name: str, entry: TensorMap, shape: tuple[int, ...]) -> RowTensor:
        held = sum(len(piece.hf_rows) for piece in entry.pieces)
        tensor = RowTensor(name, tuple(shape), storage_of(self.model, entry))
        return tensor if held >= tensor.rows else replace(tensor, held=held)  # a trimmed vocabulary

    @property
    def tensors(self) -> Mapping[str, RowTensor]:
        return self._tensors

    def entry(self, name: str) -> TensorMap:
        entry = self.cross.entries.get(name)
        if entry is None:
            raise SurgeonError(f"{self.source}: no tensor maps to {inert(name)!r}")
        return entry

    def iter_rows(
        self, name: str, *, multiple: int = 1, budget: int = ROW_CHUNK_ELEMENTS
    ) -> Iterator[tuple[int, np.ndarray]]:
        entry = self.entry(name)
        # whole heads where the caller asks, and always where a rotary permutation is undone
        aligned = replace(entry, row_multiple=math.lcm(multiple, entry.row_multiple))
        return iter_hf_rows(self.model, aligned, budget)

    def read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        entry, info = self.entry(name), self._tensors[name]
        if not 0 <= start <= stop <= info.readable:
            raise SurgeonError(f"{self.source}: rows {start}:{stop} of {inert(name)!r}, which holds {info.readable}")
        out = np.empty((stop - start, info.row_len), dtype=np.float32)
        for piece in entry.pieces:
            low, high = max(start, piece.hf_rows.start), min(stop, piece.hf_rows.stop)
            if low < high:
                out[low - start : high - start] = self._piece_rows(entry, piece, low, high)
        return out

    def _piece_rows(self, entry: TensorMap, piece: Piece, low: int, high: int) -> np.ndarray:
        """Hugging Face rows [low, high) of one piece, decoded from whole heads where the
        transforms need them (a permutation never crosses a head)."""
        m = entry.row_multiple
        first, last = low - piece.hf_rows.start, high - piece.hf_rows.start
        begin, end = first // m * m, min(-(-last // m) * m, len(piece.gguf_rows))
        rows = self.model.decode_rows(piece.gguf, piece.gguf_rows.start + begin, piece.gguf_rows.start + end)
        for transform in entry.transforms:
            rows = transform.from_gguf(rows)
        return rows[first - begin : last - begin]


def storage_of(model: GGUFModel, entry: TensorMap) -> str:
    """The GGUF type the entry's rows are stored in ("Q4_0"); several joined by "+" where its
    pieces sit in tensors of different types."""
    names = dict.fromkeys(model.tensors[piece.gguf].type_name for piece in entry.pieces)
    return "+".join(names)


def with_tied_output(cross: CrossMap, model: GGUFModel, hf_shapes: Mapping[str, tuple[int, ...]]) -> CrossMap:
    """`cross` with a Hugging Face output head (lm_head.weight) that the GGUF leaves out, since
    llama.cpp then reads the output from token_embd.weight, mapped onto token_embd.weight's
    rows: what the quant computes with is compared with BASE's head, and the tie is named.
    BASE may hold the head alone (safetensors' save_model keeps one of two tied tensors)."""
    if "output.weight" in model.tensors or TOKEN_EMBD not in model.tensors:
        return cross
    name_map = name_map_for(model)
    for hf in list(cross.hf_only):
        text = text_name(hf)
        named = gguf_name(name_map, text) if text is not None else None
        if named is None or named.gguf != "output.weight":
            continue
        try:
            entry = gguf_entry(model, hf, tuple(hf_shapes[hf]), TOKEN_EMBD)
        except MappingMismatch as exc:
            cross.mismatched[hf] = f"tied to {TOKEN_EMBD}: {exc}"
            del cross.hf_only[hf]
            continue
        assert entry is not None  # token_embd.weight is in the GGUF
        why = "the GGUF has no output.weight: llama.cpp reads the output from token_embd.weight"
        tie = Transform("tied-output", why)
        cross.entries[hf] = TensorMap(hf, entry.pieces, (*entry.transforms, tie), entry.row_multiple)
        del cross.hf_only[hf]
        cross.gguf_only.pop(TOKEN_EMBD, None)  # covered now, by the head
    return cross


def mismatch_targets(cross: CrossMap, model: GGUFModel) -> dict[str, str]:
    """GGUF name -> the Hugging Face tensor of another shape that maps to it: the GGUF side of
    a shape mismatch, which the mismatch itself reports (not a second difference)."""
    name_map = name_map_for(model)
    found = {}
    for hf in cross.mismatched:
        text = text_name(hf)
        named = gguf_name(name_map, text) if text is not None else None
        if named is not None and named.gguf in cross.gguf_only:
            found[named.gguf] = hf
    return found
