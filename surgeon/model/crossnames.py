"""Hugging Face tensor names to GGUF tensor names, and the layout transforms that make a GGUF
tensor's decoded rows comparable with the Hugging Face tensor's rows. Torch-free.

Names come from gguf-py's own table (`gguf.get_tensor_name_map(arch, n_blocks)`), the one
llama.cpp's converter uses. The converter changes more than names; each change it makes is
undone here by a named transform, so a report can say what was undone (llama.cpp's
`conversion/llama.py` and `conversion/gemma.py`, read at ggml-org/llama.cpp 2bbcf7f):

- rotary-unpermute: LlamaModel.permute reorders each head's q and k rows (and biases) from
  halves to interleaved pairs, `w.reshape(n_head, 2, hd/2, ...).swapaxes(1, 2)`, with the
  kv-head count for k. Only the `llama` architecture (Llama, Mistral, Mixtral): Qwen and
  Gemma convert without it, and Llama 4 writes `llama4`, also without it.
- norm-shift: Gemma's RMSNorm scales by 1 + w; llama.cpp stores 1 + w for every tensor named
  `*norm.weight` of gemma, gemma2 and gemma3 (Gemma3Model.norm_shift). Gemma 3n and Gemma 4
  scale by w and are stored as is.
- vocab-trim: Gemma 3 (and Gemma 4, which inherits it) drops the embedding rows past the
  tokenizer's vocabulary; only the rows both sides hold are compared, and the count of the
  others is reported.
- expert-stack: the experts of a layer are one 3-D GGUF tensor [experts, rows, cols]; a
  Hugging Face per-expert tensor (`mlp.experts.3.up_proj.weight`) or fused one
  (`experts.gate_up_proj` [experts, 2*ff, hidden], gate first) maps to row ranges of it.

Multimodal checkpoints name the text model `model.language_model.` (Gemma 3/4) or
`language_model.model.` (Llava): the converter strips that first, so `get_name` would
return None without it. Vision and audio towers go to llama.cpp's separate mmproj file.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
from gguf import MODEL_ARCH, MODEL_ARCH_NAMES, TensorNameMap, get_tensor_name_map

from surgeon.errors import SurgeonError
from surgeon.format.gguf import CHUNK_ELEMENTS, GGUFModel

# The GGUF architectures whose converter transforms are declared below. Another architecture
# could map its names but might hide a transform: refused rather than called "different".
ARCHITECTURES = ("llama", "qwen2", "qwen3", "qwen2moe", "qwen3moe", "gemma", "gemma2", "gemma3", "gemma4")
PERMUTED = ("llama",)
NORM_SHIFTED = ("gemma", "gemma2", "gemma3")
VOCAB_TENSORS = ("token_embd.weight", "output.weight", "per_layer_token_embd.weight")

# Prefixes of a multimodal checkpoint's text model, replaced as llama.cpp's converters do.
TEXT_PREFIXES = (
    ("model.language_model.", "model."),
    ("language_model.model.", "model."),
    ("language_model.", ""),
    ("model.text_model.", "model."),  # SmolVLM (LlamaModel.filter_tensors drops "text_model.")
)
MULTIMODAL_PREFIXES = (
    "model.vision_tower.",
    "vision_tower.",
    "model.audio_tower.",
    "audio_tower.",
    "model.embed_vision.",
    "model.embed_audio.",
    "model.multi_modal_projector.",
    "multi_modal_projector.",
    "model.vision_model.",
    "vision_model.",
)
SUFFIXES = (".weight", ".bias")
_PER_EXPERT = re.compile(r"(?P<head>.*\.experts)\.(?P<expert>0|[1-9][0-9]{0,5})\.(?P<tail>[A-Za-z0-9_]+)")
_BLOCK = re.compile(r"blk\.(0|[1-9][0-9]{0,8})\.")
# gguf-py's names of the stacked expert tensors, per projection
_STACKED = {"gate": "ffn_gate_exps", "up": "ffn_up_exps", "down": "ffn_down_exps"}
_FUSED_GATE_UP = "ffn_gate_up_exps"
# Names gguf-py's table lacks, renamed by a converter's modify_tensors: Gemma 4's router scale
# and per-expert scale (Gemma4Model.modify_tensors).
_RENAMES = {
    "gemma4": (
        (re.compile(r"model\.layers\.(0|[1-9][0-9]{0,8})\.router\.scale"), "blk.{}.ffn_gate_inp.scale"),
        (re.compile(r"model\.layers\.(0|[1-9][0-9]{0,8})\.router\.per_expert_scale"), "blk.{}.ffn_down_exps.scale"),
    ),
}


# ---------------------------------------------------------------------------------------------
# Transforms


@dataclass(frozen=True)
class Transform:
    """One change llama.cpp's converter made, undone on decoded GGUF rows by from_gguf."""

    kind: str  # rotary-unpermute, norm-shift, vocab-trim, expert-stack
    detail: str

    def from_gguf(self, rows: np.ndarray) -> np.ndarray:
        return rows

    def to_gguf(self, rows: np.ndarray) -> np.ndarray:
        return rows


@dataclass(frozen=True)
class Unpermute(Transform):
    """LlamaModel.permute undone. The permutation stays within a head, so whole heads are
    decoded at a time (TensorMap.row_multiple). A bias is one row: permuted along it."""

    n_head: int = 1
    head_dim: int = 2
    along_row: bool = False  # a 1-D tensor (bias): its elements, not its rows, are permuted

    def from_gguf(self, rows: np.ndarray) -> np.ndarray:
        # stored per head as (hd/2, 2) pairs; Hugging Face's order is (2, hd/2) halves
        return self._swap(rows, (self.head_dim // 2, 2))

    def to_gguf(self, rows: np.ndarray) -> np.ndarray:
        return self._swap(rows, (2, self.head_dim // 2))

    def _swap(self, rows: np.ndarray, pair: tuple[int, int]) -> np.ndarray:
        flat = rows.reshape(-1, 1) if self.along_row else rows
        heads = flat.shape[0] // self.head_dim
        return flat.reshape(heads, *pair, -1).swapaxes(1, 2).reshape(rows.shape)


@dataclass(frozen=True)
class NormShift(Transform):
    shift: float = 1.0

    def from_gguf(self, rows: np.ndarray) -> np.ndarray:
        return rows - np.float32(self.shift)

    def to_gguf(self, rows: np.ndarray) -> np.ndarray:
        return rows + rows.dtype.type(self.shift)  # in the rows' own precision, as the converter adds


@dataclass(frozen=True)
class Piece:
    """Rows `gguf_rows` of GGUF tensor `gguf` are the Hugging Face tensor's rows `hf_rows`
    (rows: every dimension but the last; a 1-D tensor is one row)."""

    gguf: str
    gguf_rows: range
    hf_rows: range


@dataclass(frozen=True)
class TensorMap:
    hf: str
    pieces: tuple[Piece, ...]
    transforms: tuple[Transform, ...] = ()  # every one applies to each piece, in order
    row_multiple: int = 1  # decode a multiple of this many rows at once (whole heads)

    @property
    def gguf_names(self) -> list[str]:
        return list(dict.fromkeys(piece.gguf for piece in self.pieces))


@dataclass
class CrossMap:
    """Every Hugging Face tensor mapped to GGUF rows, or listed with the reason it is not;
    every GGUF tensor (or part of one) no Hugging Face tensor maps to, with a reason."""

    architecture: str
    entries: dict[str, TensorMap] = field(default_factory=dict)
    hf_only: dict[str, str] = field(default_factory=dict)
    gguf_only: dict[str, str] = field(default_factory=dict)
    mismatched: dict[str, str] = field(default_factory=dict)  # mapped, but shapes disagree

    def transform_counts(self) -> dict[str, int]:
        """How many tensors each kind of transform was applied to, for the report."""
        counts: dict[str, int] = {}
        for entry in self.entries.values():
            for kind in dict.fromkeys(t.kind for t in entry.transforms):
                counts[kind] = counts.get(kind, 0) + 1
        return counts


def iter_hf_rows(model: GGUFModel, entry: TensorMap, budget: int = CHUNK_ELEMENTS) -> Iterator[tuple[int, np.ndarray]]:
    """(first Hugging Face row, float32 rows) covering the rows `entry` maps: the GGUF rows
    dequantized about `budget` elements at a time, with the transforms undone."""
    for piece in entry.pieces:
        info = model.tensor(piece.gguf)
        step = max(1, budget // max(info.row_len, 1) // entry.row_multiple) * entry.row_multiple
        for start in range(0, len(piece.gguf_rows), step):
            stop = min(start + step, len(piece.gguf_rows))
            rows = model.decode_rows(piece.gguf, piece.gguf_rows.start + start, piece.gguf_rows.start + stop)
            for transform in entry.transforms:
                rows = transform.from_gguf(rows)
            yield piece.hf_rows.start + start, rows


# ---------------------------------------------------------------------------------------------
# Names


def text_name(hf_name: str) -> str | None:
    """The name llama.cpp's converter maps: a multimodal text prefix replaced; None for a
    vision or audio tensor, which goes to the mmproj file."""
    if hf_name.startswith(MULTIMODAL_PREFIXES):
        return None
    for prefix, replacement in TEXT_PREFIXES:
        if hf_name.startswith(prefix):
            return replacement + hf_name[len(prefix) :]
    return hf_name


@dataclass(frozen=True)
class _Named:
    gguf: str  # the GGUF tensor name gguf-py's table gives
    expert: int | None = None  # the expert of a per-expert Hugging Face tensor


def gguf_name(name_map: TensorNameMap, hf_name: str) -> _Named | None:
    """The GGUF name of a (text) Hugging Face tensor name, or None. A name with no .weight or
    .bias (Gemma 4's layer_scalar, fused experts' gate_up_proj) gets ".weight", as Gemma 4's
    converter appends it; a per-expert name maps to its layer's stacked tensor."""
    base, suffix = hf_name, ".weight"
    for candidate in SUFFIXES:
        if hf_name.endswith(candidate):
            base, suffix = hf_name[: -len(candidate)], candidate
    expert = None
    match = _PER_EXPERT.fullmatch(base)
    if match:
        base, expert = f"{match['head']}.{match['tail']}", int(match["expert"])
    mapped = name_map.get_name(base)
    return None if mapped is None else _Named(mapped + suffix, expert)


def _renamed(arch: str, text: str) -> _Named | None:
    for pattern, target in _RENAMES.get(arch, ()):
        if match := pattern.fullmatch(text):
            return _Named(target.format(match[1]))
    return None


def block_count(model: GGUFModel) -> int:
    """Blocks to build gguf-py's name table for: one past the highest `blk.N.` of the tensors
    (a table is a dict of every name for every block, so the metadata's block_count, which a
    hostile file could set to 2**32, must not size it)."""
    highest = max((int(m[1]) for name in model.tensors if (m := _BLOCK.match(name))), default=-1)
    if highest >= len(model.tensors):
        raise SurgeonError(f"{model.source}: a tensor of block {highest}, but only {len(model.tensors)} tensors")
    return highest + 1


def name_map_for(model: GGUFModel) -> TensorNameMap:
    arch = model.architecture
    if arch not in ARCHITECTURES:
        raise SurgeonError(
            f"{model.source}: GGUF architecture {arch!r}; the converter's transforms are known for "
            + ", ".join(ARCHITECTURES)
        )
    enum = next(key for key, value in MODEL_ARCH_NAMES.items() if value == arch)
    return get_tensor_name_map(MODEL_ARCH(enum), block_count(model))


# ---------------------------------------------------------------------------------------------
# The map


def build_crossmap(hf_shapes: Mapping[str, tuple[int, ...]], model: GGUFModel) -> CrossMap:
    """Map each Hugging Face tensor (name -> shape, row-major) onto `model`'s tensors."""
    name_map = name_map_for(model)
    cross = CrossMap(model.architecture)
    for hf, shape in hf_shapes.items():
        _map_one(cross, name_map, model, hf, tuple(shape))
    _uncovered(cross, model)
    return cross


def _map_one(cross: CrossMap, name_map: TensorNameMap, model: GGUFModel, hf: str, shape: tuple[int, ...]) -> None:
    text = text_name(hf)
    if text is None:
        cross.hf_only[hf] = "a vision or audio tensor: llama.cpp writes those to a separate mmproj GGUF"
        return
    named = _renamed(cross.architecture, text) or gguf_name(name_map, text)
    if named is None:
        cross.hf_only[hf] = f"gguf-py's {cross.architecture} table has no name for it"
        return
    try:
        entry = _entry(model, hf, shape, named)
    except MappingMismatch as exc:
        cross.mismatched[hf] = str(exc)
        return
    if entry is None:
        cross.hf_only[hf] = _absent_reason(model, named.gguf)
        return
    cross.entries[hf] = entry


class MappingMismatch(Exception):
    """A Hugging Face tensor maps to a GGUF tensor of another shape (CrossMap.mismatched)."""


def gguf_entry(model: GGUFModel, hf: str, shape: tuple[int, ...], gguf: str) -> TensorMap | None:
    """Hugging Face tensor `hf` mapped onto GGUF tensor `gguf` (None: the GGUF lacks it), with
    the transforms its names call for; MappingMismatch where the shapes disagree."""
    return _entry(model, hf, shape, _Named(gguf))


def _absent_reason(model: GGUFModel, name: str) -> str:
    if name == "output.weight" and "token_embd.weight" in model.tensors:
        return "maps to output.weight, which the GGUF leaves out: it ties the output to token_embd.weight"
    return f"maps to {name}, which the GGUF does not hold"


def _entry(model: GGUFModel, hf: str, shape: tuple[int, ...], named: _Named) -> TensorMap | None:
    if named.expert is not None:
        return _expert_entry(model, hf, shape, named)
    if named.gguf.endswith(f"{_FUSED_GATE_UP}.weight") and named.gguf not in model.tensors:
        return _fused_gate_up_entry(model, hf, shape, named.gguf)
    info = model.tensors.get(named.gguf)
    if info is None:
        return None
    hf_rows, row_len = _rows(shape)
    if row_len != info.row_len:
        raise MappingMismatch(
            f"rows of {row_len} here, {info.row_len} in {named.gguf} ({_shape(shape)} vs {info.shape})"
        )
    transforms = list(_value_transforms(model, hf, named.gguf, shape))
    rows = hf_rows
    if hf_rows != info.rows:
        if named.gguf not in VOCAB_TENSORS:
            raise MappingMismatch(f"{hf_rows} rows here, {info.rows} in {named.gguf} ({_shape(shape)} vs {info.shape})")
        rows = min(hf_rows, info.rows)
        transforms.append(_vocab_trim(hf_rows, info.rows))
    multiple = next((t.head_dim for t in transforms if isinstance(t, Unpermute) and not t.along_row), 1)
    return TensorMap(hf, (Piece(named.gguf, range(rows), range(rows)),), tuple(transforms), multiple)


def _rows(shape: tuple[int, ...]) -> tuple[int, int]:
    """(rows, row length) of a tensor of this shape: the last dimension is the row."""
    return math.prod(shape[:-1]), (shape[-1] if shape else 1)


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape)) or "scalar"


def _vocab_trim(hf_rows: int, gguf_rows: int) -> Transform:
    if gguf_rows < hf_rows:
        trimmed = hf_rows - gguf_rows
        detail = f"{trimmed} of {hf_rows} rows are not in the GGUF (vocabulary trimmed); the first {gguf_rows} compared"
    else:
        padded = gguf_rows - hf_rows
        detail = f"the GGUF adds {padded} rows past the {hf_rows} here (vocabulary padded); those are not compared"
    return Transform("vocab-trim", detail)


def _value_transforms(model: GGUFModel, hf: str, gguf: str, shape: tuple[int, ...]) -> Iterator[Transform]:
    arch = model.architecture
    if arch in PERMUTED and hf.endswith(("q_proj.weight", "q_proj.bias", "k_proj.weight", "k_proj.bias")):
        yield _unpermute(model, hf, shape)
    if arch in NORM_SHIFTED and hf.endswith("norm.weight"):
        yield NormShift("norm-shift", f"{arch} stores 1 + w for its RMSNorm weights: 1 subtracted", 1.0)


def _unpermute(model: GGUFModel, hf: str, shape: tuple[int, ...]) -> Unpermute:
    is_q = "q_proj." in hf
    heads = model.head_count if is_q else model.head_count_kv
    if isinstance(heads, list):  # llama writes one count; a list would mean a per-layer geometry
        heads = heads[0] if len(set(heads)) == 1 else None
    if not isinstance(heads, int) or heads <= 0 or shape[0] % heads or (shape[0] // heads) % 2:
        raise MappingMismatch(f"cannot undo the rotary permutation: {shape[0]} rows and head count {heads}")
    head_dim = shape[0] // heads
    which = "q" if is_q else "k"
    detail = f"{which}: {heads} heads of {head_dim}, pairs interleaved by llama.cpp's LlamaModel.permute"
    return Unpermute("rotary-unpermute", detail, heads, head_dim, along_row=len(shape) == 1)


def _expert_entry(model: GGUFModel, hf: str, shape: tuple[int, ...], named: _Named) -> TensorMap | None:
    """A per-expert tensor: its rows are rows [e*R, (e+1)*R) of the layer's stacked tensor
    (R rows per expert), or a half of them where gate and up are fused in the GGUF."""
    assert named.expert is not None
    projection = next((p for p, stacked in _STACKED.items() if f".{stacked}." in named.gguf), None)
    target, half = named.gguf, None
    if named.gguf not in model.tensors and projection in ("gate", "up"):
        target, half = named.gguf.replace(_STACKED[projection], _FUSED_GATE_UP), projection
    info = model.tensors.get(target)
    if info is None:
        return None
    hf_rows, row_len = _rows(shape)
    if len(info.shape) != 3 or info.row_len != row_len or named.expert >= info.shape[0]:
        raise MappingMismatch(f"expert {named.expert} ({_shape(shape)}) does not fit {target} {info.shape}")
    per_expert = info.shape[1] // (2 if half else 1)
    if per_expert != hf_rows:
        raise MappingMismatch(f"{hf_rows} rows here, {per_expert} per expert in {target} {info.shape}")
    start = named.expert * info.shape[1] + (per_expert if half == "up" else 0)
    detail = f"expert {named.expert} of the {info.shape[0]} stacked in {target}" + (f" ({half} half)" if half else "")
    transform = Transform("expert-stack", detail)
    return TensorMap(hf, (Piece(target, range(start, start + per_expert), range(hf_rows)),), (transform,))


def _fused_gate_up_entry(model: GGUFModel, hf: str, shape: tuple[int, ...], fused: str) -> TensorMap | None:
    """A Hugging Face fused gate_up_proj [experts, 2*ff, hidden] (gate rows first) against a
    GGUF that stores gate and up stacked apart: two pieces per expert."""
    gate, up = (fused.replace(_FUSED_GATE_UP, _STACKED[p]) for p in ("gate", "up"))
    if gate not in model.tensors or up not in model.tensors:
        return None
    if len(shape) != 3 or shape[1] % 2:
        raise MappingMismatch(f"{_shape(shape)} is not [experts, 2*ff, hidden]")
    experts, ff = shape[0], shape[1] // 2
    for name in (gate, up):
        if model.tensors[name].shape != (experts, ff, shape[2]):
            raise MappingMismatch(f"{_shape(shape)} does not split into {name} {model.tensors[name].shape}")
    pieces = []
    for e in range(experts):
        pieces.append(Piece(gate, range(e * ff, (e + 1) * ff), range(2 * e * ff, (2 * e + 1) * ff)))
        pieces.append(Piece(up, range(e * ff, (e + 1) * ff), range((2 * e + 1) * ff, (2 * e + 2) * ff)))
    detail = f"{experts} experts' gate and up halves, stacked apart in {gate} and {up}"
    return TensorMap(hf, tuple(pieces), (Transform("expert-stack", detail),))


def _uncovered(cross: CrossMap, model: GGUFModel) -> None:
    covered: dict[str, int] = {}
    for entry in cross.entries.values():
        for piece in entry.pieces:
            covered[piece.gguf] = covered.get(piece.gguf, 0) + len(piece.gguf_rows)
    for name, info in model.tensors.items():
        rows = covered.get(name, 0)
        if rows == 0:
            cross.gguf_only[name] = (
                "RoPE frequency factors the converter computes; no Hugging Face tensor"
                if name.startswith("rope_freqs")
                else "no Hugging Face tensor maps to it"
            )
        elif rows < info.rows:
            cross.gguf_only[name] = f"only {rows} of its {info.rows} rows have a Hugging Face tensor"
