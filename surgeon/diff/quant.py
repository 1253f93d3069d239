"""`surgeon diff BASE QUANT`: a safetensors checkpoint against a GGUF quant of it.

Every tensor the GGUF holds is read through Hugging Face names (model/crossnames.py: llama.cpp's
transforms undone and named), dequantized a chunk of rows at a time (format/rows.py) and
compared with BASE's rows by NMSE = sum((q - b)^2) / sum(b^2), summed in float64 over the
chunks, against the measured bound of its storage type (format/quant_bounds.py). Attention
projections keep a per-head view: the same sums per head over q/k/v rows and o_proj input
columns, judged against the per-row bound, so a zeroed head (NMSE 1.0) or a healed o_proj
(~0.14) shows even where the whole tensor's NMSE would hide it.

A verdict per tensor (VERDICTS): `within` its bound, `differs` beyond it, `unverified` where its
type has no measured bound, and for what could not be compared `shape-mismatch`, `base-only`
(a BASE tensor the GGUF lacks) and `quant-only`. `QuantReport.made_from` (exit 0) holds only
when every tensor that counts is `within`: a tensor that is unverified, missing or of
another shape is not evidence. Two absences do not count, and are listed all the same:
vision and audio towers (llama.cpp writes them to a separate mmproj GGUF) and the RoPE
frequency factors the converter computes.

NMSE where BASE is all zero: 0 when the quant is all zero there too (every GGUF type encodes
0 exactly), undefined (None, shown as "base all zero") otherwise, which is `differs`.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
from threadpoolctl import threadpool_limits

from surgeon.diff.engine import SideSummary, _side, natural_key
from surgeon.diff.quant_report import HeadNMSE, QuantFile, QuantReport, QuantTensor, Verdict
from surgeon.diff.stats import HeadLayout
from surgeon.errors import SurgeonError
from surgeon.format.checkpoint import Checkpoint
from surgeon.format.gguf import GGUFModel, open_gguf
from surgeon.format.hashing import default_workers, file_sha256
from surgeon.format.quant_bounds import MEASURED, bound_for
from surgeon.format.quantized import QuantizedReader, open_quantized
from surgeon.format.quantized_rows import QuantizedRows
from surgeon.format.rows import ROW_CHUNK_ELEMENTS, RowReader, RowTensor, SafetensorsRows
from surgeon.model.crossnames import NormShift, Transform, build_crossmap, text_name
from surgeon.model.geometry import AttentionGeometry, geometry_by_layer, head_axis
from surgeon.model.gguf_rows import GGUFRows, mismatch_targets, with_tied_output
from surgeon.model.names import main_stack, parse_name
from surgeon.parallel import check_stop, map_cancellable
from surgeon.progress import NoProgress, ProgressSink
from surgeon.text import inert

# BASE's config.json model_type -> the GGUF architecture llama.cpp's converter writes for it
# (conversion/*.py at ggml-org/llama.cpp 2bbcf7f: Mistral and Mixtral convert as llama).
GGUF_ARCH = {
    "llama": "llama",
    "mistral": "llama",
    "mixtral": "llama",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "qwen2_moe": "qwen2moe",
    "qwen3_moe": "qwen3moe",
    "gemma": "gemma",
    "gemma2": "gemma2",
    "gemma3": "gemma3",
    "gemma3_text": "gemma3",
    "gemma4": "gemma4",
    "gemma4_text": "gemma4",
}


@dataclass(frozen=True)
class QuantOptions:
    workers: int | None = None  # threads comparing tensors (default: all cores)
    budget: int = ROW_CHUNK_ELEMENTS  # elements decoded at once per tensor and side
    hash_files: bool = False  # SHA256 of every quant file and BASE shard (the card's evidence)


def diff_quant(
    base: Checkpoint,
    quant: str | Checkpoint,
    options: QuantOptions = QuantOptions(),
    *,
    source: str | None = None,
    progress: ProgressSink | None = None,
    cancel: threading.Event | None = None,
) -> QuantReport:
    """BASE against QUANT: a GGUF (a path: file, split set, folder) or a quantized safetensors
    checkpoint (opened). `source` names the quant where the path is not what the user typed
    (a Hub id's cached file)."""
    side = _open_side(base, quant, options.hash_files, source)
    rows = SafetensorsRows(base)
    measured = _measure_all(side, rows, _layouts(base, side.rows.tensors), options, progress or NoProgress(), cancel)
    tensors = measured + side.unmatched
    tensors.sort(key=lambda t: natural_key(t.name))
    stack = main_stack(t.stack for t in tensors)
    return QuantReport(
        base=_side(base),
        other=side.summary,
        architecture=side.architecture,
        tensors=tensors,
        transforms=side.transforms,
        files=side.files,
        main_stack=stack,
        num_layers=len({t.layer for t in tensors if t.stack == stack and t.layer is not None}),
        base_sha256=_base_hashes(base) if options.hash_files else {},
        format=side.format,
        scheme=side.scheme,
    )


@dataclass
class _Provenance:
    """Where a compared tensor's quant rows come from."""

    stored: list[str]  # the stored tensors decoded (GGUF names; codes and scales)
    shard: str  # the quant's file holding them (a GGUF: its first part, as before)
    transforms: tuple[Transform, ...] = ()  # llama.cpp's, undone
    stored_bytes: int = 0  # what decoding it reads, for the progress bar


@dataclass
class _QuantSide:
    """The quant as the engine needs it, whatever its format."""

    rows: RowReader
    provenance: Callable[[str], _Provenance]
    summary: SideSummary
    architecture: str
    unmatched: list[QuantTensor]
    files: list[QuantFile]
    format: str  # "gguf" or "safetensors"
    scheme: str | None = None  # a safetensors quant's declaration: "modelopt NVFP4"
    transforms: dict[str, int] = field(default_factory=dict)


def _open_side(base: Checkpoint, quant: str | Checkpoint, hashed: bool, source: str | None) -> _QuantSide:
    if isinstance(quant, Checkpoint):
        return _safetensors_side(base, quant, hashed)
    return _gguf_quant_side(base, quant, hashed, source)


def _gguf_quant_side(base: Checkpoint, spec: str, hashed: bool, source: str | None) -> _QuantSide:
    model = open_gguf(spec)
    check_architecture(base, model)
    shapes = {name: tuple(info.shape) for name, info in base.tensors.items()}
    cross = with_tied_output(build_crossmap(shapes, model), model, shapes)
    if not cross.entries:
        raise SurgeonError(_nothing_maps(base, model, cross))
    rows = GGUFRows(model, cross, shapes)
    summary = _gguf_side(source or spec, model)

    def provenance(name: str) -> _Provenance:
        entry = rows.entry(name)
        size = sum(len(p.gguf_rows) * model.tensors[p.gguf].row_bytes for p in entry.pieces)
        return _Provenance(entry.gguf_names, summary.name, entry.transforms, size)

    return _QuantSide(
        rows,
        provenance,
        summary,
        model.architecture,
        _unmatched(base, model, cross, summary.name),
        _files(model, hashed),
        "gguf",
        transforms=cross.transform_counts(),
    )


def check_architecture(base: Checkpoint, model: GGUFModel) -> None:
    """A GGUF of another architecture than BASE's config says is trouble, not a difference:
    its tensors would map by name onto rows that mean something else."""
    config = base.config or {}
    model_type = config.get("model_type")
    expected = GGUF_ARCH.get(model_type) if isinstance(model_type, str) else None
    if expected is not None and model.architecture != expected:
        raise SurgeonError(
            f"{model.source}: a GGUF of architecture {inert(model.architecture)!r}, but {base.source} is "
            f"{inert(model_type)} (llama.cpp converts it as {expected!r}): not a quant of this model"
        )


def check_maps(base: Checkpoint, model: GGUFModel) -> None:
    """What diff_quant refuses before it reads a row (another architecture, no tensor that
    maps onto BASE), from the headers alone: `surgeon tui` asks before its screen starts."""
    check_architecture(base, model)
    shapes = {name: tuple(info.shape) for name, info in base.tensors.items()}
    cross = with_tied_output(build_crossmap(shapes, model), model, shapes)
    if not cross.entries:
        raise SurgeonError(_nothing_maps(base, model, cross))


def _nothing_maps(base: Checkpoint, model: GGUFModel, cross) -> str:
    if cross.mismatched:
        name, why = next(iter(cross.mismatched.items()))
        return (
            f"{model.source}: the shapes of all {len(cross.mismatched)} tensors that map onto {base.source} "
            f"disagree ({inert(name)}: {inert(why)}): not a quant of this model"
        )
    return f"{model.source}: none of its {len(model.tensors)} tensors maps onto a tensor of {base.source}"


def _gguf_side(spec: str, model: GGUFModel) -> SideSummary:
    first = model.parts[0].path
    return SideSummary(
        source=spec,
        path=str(first.resolve()),
        revision=None,
        tensors=len(model.tensors),
        shards=len(model.parts),
        bytes=sum(part.size for part in model.parts),
        name=first.name,
    )


def _files(model: GGUFModel, hashed: bool) -> list[QuantFile]:
    return [QuantFile(p.path.name, p.size, file_sha256(p.path) if hashed else None) for p in model.parts]


def _base_hashes(base: Checkpoint) -> dict[str, str]:
    return {name: file_sha256(base.shard_path(name)) for name in base.shards}


# ---------------------------------------------------------------------------------------------
# Heads


def _layouts(base: Checkpoint, entries: Iterable[str]) -> dict[str, tuple[str, HeadLayout]]:
    """The head layout of each attention projection whose geometry BASE's config and shapes
    give (model/geometry.py, as the safetensors diff finds it)."""
    geometry = geometry_by_layer(base.config, base.tensors)
    found = {}
    for name in entries:
        layout = _layout(name, geometry, tuple(base.tensors[name].shape))
        if layout is not None:
            found[name] = layout
    return found


def _layout(
    name: str, geometry: dict[tuple[str, int], AttentionGeometry], shape: tuple[int, ...]
) -> tuple[str, HeadLayout] | None:
    parsed = parse_name(name)
    axis = head_axis(parsed.family)
    geo = geometry.get((parsed.stack, parsed.layer)) if parsed.stack is not None and parsed.layer is not None else None
    if axis is None or geo is None or len(shape) != 2:
        return None
    side, proj = axis
    heads = geo.num_heads if proj in ("q", "o") else geo.num_kv_heads
    if not heads or shape[0 if side == "rows" else 1] != heads * geo.head_dim:
        return None
    return f"{proj}_proj", HeadLayout(side, heads, geo.head_dim)


# ---------------------------------------------------------------------------------------------
# Measuring


class _Sums:
    """sum((q - b)^2) and sum(b^2), in float64, over the whole tensor and per head; and for a
    norm-shifted tensor the float rounding of 1 + w in its storage type, which llama.cpp's
    shift costs on top of the type's own error (an F32 norm stored as 1 + w is not w exactly)."""

    def __init__(self, layout: HeadLayout | None, shift: NormShift | None, storage: str):
        self.dd = self.bb = self.rounding = 0.0
        self.rows = 0
        self.layout = layout
        heads = layout.num_heads if layout else 0
        self.head_dd, self.head_bb = np.zeros(heads), np.zeros(heads)
        self.spacing = _spacing(storage) if shift is not None else None
        self.shift = shift.shift if shift is not None else 0.0

    def add(self, start: int, q: np.ndarray, b: np.ndarray) -> None:
        # float32 where both sides are (q - b rounds by 2**-24 of itself, nothing a bound sees);
        # squares and sums in float64 by einsum, which casts as it goes: as exact as converting
        # each chunk to float64 first, and faster than any conversion measured (a 256Ki chunk:
        # 0.7 ms; converting and two dots 6.7 ms with reused buffers, 22 ms with fresh ones)
        d = np.subtract(q, b)
        flat_d, flat_b = d.reshape(-1), b.reshape(-1)
        with np.errstate(over="ignore", invalid="ignore"):  # a damaged block decodes to inf or NaN
            self.dd += float(np.einsum("i,i->", flat_d, flat_d, dtype=np.float64))
            self.bb += float(np.einsum("i,i->", flat_b, flat_b, dtype=np.float64))
        self.rows += q.shape[0]
        if self.layout is not None:
            self._add_heads(self.layout, start, d, b)
        if self.spacing is not None:
            half = self.spacing(np.abs(flat_b.astype(np.float64) + self.shift)) / 2
            self.rounding += float(np.dot(half, half))

    def _add_heads(self, layout: HeadLayout, start: int, d: np.ndarray, b: np.ndarray) -> None:
        def squares(x: np.ndarray, keep: str) -> np.ndarray:
            return np.einsum(f"ij,ij->{keep}", x, x, dtype=np.float64)

        if layout.axis == "cols":  # o_proj: every row holds a slice of every head
            self.head_dd += squares(d, "j").reshape(layout.num_heads, layout.head_dim).sum(axis=1)
            self.head_bb += squares(b, "j").reshape(layout.num_heads, layout.head_dim).sum(axis=1)
            return
        heads = (start + np.arange(d.shape[0])) // layout.head_dim  # a chunk may hold parts of two heads
        self.head_dd += np.bincount(heads, squares(d, "i"), minlength=layout.num_heads)
        self.head_bb += np.bincount(heads, squares(b, "i"), minlength=layout.num_heads)

    def nmse(self) -> float | None:
        return _nmse(self.dd, self.bb)


def _nmse(dd: float, bb: float) -> float | None:
    if not (math.isfinite(dd) and math.isfinite(bb)):
        return None
    if bb == 0:
        return 0.0 if dd == 0 else None
    return dd / bb


def _spacing(storage: str):
    """Half of it is the most a value's rounding to `storage` moves it; None for a quant type,
    whose measured bound covers its rounding already."""
    if storage == "F32":
        return lambda v: np.spacing(v.astype(np.float32)).astype(np.float64)
    if storage == "F16":
        return lambda v: np.spacing(v.astype(np.float16)).astype(np.float64)
    if storage == "BF16":  # bfloat16 keeps 8 of float32's 24 significant bits
        return lambda v: np.spacing(v.astype(np.float32)).astype(np.float64) * 65536
    return None


def _measure_all(side: _QuantSide, base: SafetensorsRows, layouts, options, progress, cancel) -> list[QuantTensor]:
    quant = side.rows
    names = sorted(quant.tensors, key=lambda n: -quant.tensors[n].readable * quant.tensors[n].row_len)
    where = {n: side.provenance(n) for n in names}
    progress.start("comparing", sum(p.stored_bytes for p in where.values()))

    def work(name: str, should_stop) -> QuantTensor:
        return _measure(quant, base, name, where[name], layouts.get(name), options.budget, should_stop, progress)

    try:
        # one BLAS thread per worker: the tensors are spread over the cores already (engine.py)
        with threadpool_limits(limits=1, user_api="blas"):
            return map_cancellable(work, names, options.workers or default_workers(), cancel)
    finally:
        progress.stop()


def _measure(
    quant: RowReader, base: SafetensorsRows, name: str, where: _Provenance, layout, budget, should_stop, progress
) -> QuantTensor:
    info = quant.tensors[name]
    shift = next((t for t in where.transforms if isinstance(t, NormShift)), None)
    sums = _Sums(layout[1] if layout else None, shift, info.storage)
    multiple = layout[1].head_dim if layout and layout[1].axis == "rows" else 1
    per_row = where.stored_bytes / max(info.readable, 1)
    for start, q in quant.iter_rows(name, multiple=multiple, budget=budget):
        check_stop(should_stop)
        sums.add(start, q, base.read_rows(name, start, start + q.shape[0]))
        progress.advance(int(q.shape[0] * per_row))
    parsed = parse_name(name)
    gguf = isinstance(quant, GGUFRows)
    tensor = QuantTensor(
        name,
        "within",
        parsed.stack,
        parsed.layer,
        parsed.family,
        base_dtype=base.tensors[name].storage,
        storage=info.storage,
        shape=list(base.tensors[name].shape),
        other_shape=list(info.shape),
        gguf=where.stored if gguf else [],
        stored=where.stored,
        base_shard=base.ckpt.tensors[name].file,
        other_shard=where.shard,
        transforms=[{"kind": t.kind, "detail": t.detail} for t in where.transforms],
        rows=info.rows,
        rows_compared=sums.rows,
        nmse=sums.nmse(),
    )
    _judge(tensor, sums, layout)
    return tensor


def _judge(tensor: QuantTensor, sums: _Sums, layout) -> None:
    assert tensor.storage is not None
    bound, row_bound, why = _bounds(tensor.storage)
    if bound is not None and sums.spacing is not None and sums.bb > 0:
        bound += sums.rounding / sums.bb  # the shift's rounding, computed from BASE's values
    tensor.bound = bound
    if layout is not None:
        tensor.heads = _heads(layout, sums, row_bound)
    tensor.verdict, tensor.note = _verdict(tensor, sums, why)


def _bounds(storage: str) -> tuple[float | None, float | None, str | None]:
    """(tensor bound, row bound, why there is none): the loosest of the types a tensor's
    pieces are stored in; None with the reason where any of them has no measured bound."""
    tensor_bound = row_bound = 0.0
    for kind in storage.split("+"):
        found = bound_for(kind)
        if found.status != MEASURED or found.tensor is None or found.row is None:
            note = f" ({found.note})" if found.note else ""
            return None, None, f"no measured bound for {kind}: {found.status}{note}"
        tensor_bound, row_bound = max(tensor_bound, found.tensor), max(row_bound, found.row)
    return tensor_bound, row_bound, None


def _heads(layout: tuple[str, HeadLayout], sums: _Sums, row_bound: float | None) -> HeadNMSE:
    projection, head = layout
    nmse = [_nmse(float(dd), float(bb)) for dd, bb in zip(sums.head_dd, sums.head_bb, strict=True)]
    beyond = [] if row_bound is None else [h for h, v in enumerate(nmse) if v is None or v > row_bound]
    return HeadNMSE(projection, head.axis, head.num_heads, head.head_dim, nmse, row_bound, beyond)


def _verdict(tensor: QuantTensor, sums: _Sums, why: str | None) -> tuple[Verdict, str | None]:
    if tensor.nmse is None:
        if math.isfinite(sums.dd) and math.isfinite(sums.bb):
            return "differs", "base all zero, the quant is not"
        return "differs", "values that are not finite (NaN or inf)"
    if why is not None:
        return "unverified", why
    assert tensor.bound is not None
    if tensor.nmse > tensor.bound:
        return "differs", None
    if tensor.heads is not None and tensor.heads.beyond:
        heads = ", ".join(map(str, tensor.heads.beyond))
        return "differs", f"within as a whole, but head{'s' if len(tensor.heads.beyond) > 1 else ''} {heads} beyond"
    return "within", None


# ---------------------------------------------------------------------------------------------
# What maps to nothing


def _unmatched(base: Checkpoint, model: GGUFModel, cross, gguf_file: str) -> list[QuantTensor]:
    out = []
    for name, why in cross.mismatched.items():
        out.append(_listed(name, "shape-mismatch", why, base, counts=True, other_shard=gguf_file))
    for name, why in cross.hf_only.items():
        out.append(_listed(name, "base-only", why, base, counts=text_name(name) is not None))
    mismatched = mismatch_targets(cross, model)
    for name, why in cross.gguf_only.items():
        shape = list(model.tensors[name].shape)
        if name in mismatched:  # counted once, as the mismatch of the tensor that maps to it
            why, counts = f"the GGUF side of {mismatched[name]}, of another shape", False
        else:
            counts = not name.startswith("rope_freqs")  # RoPE factors the converter computes
        out.append(_listed(name, "quant-only", why, None, counts, shape, gguf_file))
    return out


def _listed(
    name: str,
    verdict: Verdict,
    why: str,
    base: Checkpoint | None,
    counts: bool,
    other_shape: list[int] | None = None,
    other_shard: str | None = None,
) -> QuantTensor:
    parsed = parse_name(name)
    info = base.tensors.get(name) if base is not None else None
    return QuantTensor(
        name,
        verdict,
        parsed.stack,
        parsed.layer,
        parsed.family,
        base_dtype=info.dtype.name if info else None,
        shape=list(info.shape) if info else None,
        other_shape=other_shape,
        base_shard=info.file if info else None,
        other_shard=other_shard,
        note=why,
        counts=counts,
    )


# ---------------------------------------------------------------------------------------------
# A quantized safetensors checkpoint (NVFP4, FP8)


def _safetensors_side(base: Checkpoint, ckpt: Checkpoint, hashed: bool) -> _QuantSide:
    """Tensors pair by name: the quantized weights under their logical names, the float ones
    as they are. A quant of another model type, or one where no tensor pairs, is trouble."""
    reader = open_quantized(ckpt)
    if reader is None:
        raise SurgeonError(f"{ckpt.source}: its config declares no quantization: not a quantized checkpoint")
    rows = QuantizedRows(reader)
    architecture = _check_model_type(base, ckpt)
    base_shapes = {name: tuple(info.shape) for name, info in base.tensors.items()}
    mismatched = {n for n, t in rows.tensors.items() if n in base_shapes and base_shapes[n] != t.shape}
    paired = {n for n in rows.tensors if n in base_shapes} - mismatched
    if not paired:
        raise SurgeonError(f"{ckpt.source}: none of its {len(rows.tensors)} tensors is one of {base.source}'s")
    compared = _Paired(rows, paired)

    def provenance(name: str) -> _Provenance:
        stored = rows.stored(name)
        return _Provenance([i.name for i in stored], stored[0].file, (), sum(i.nbytes for i in stored))

    return _QuantSide(
        compared,
        provenance,
        _side(ckpt),
        architecture,
        _unpaired(base, rows, mismatched),
        [
            QuantFile(n, s.file_size, file_sha256(ckpt.shard_path(n)) if hashed else None)
            for n, s in ckpt.shards.items()
        ],
        "safetensors",
        scheme=_scheme_label(reader),
    )


class _Paired:
    """A row reader narrowed to the tensors both sides hold alike."""

    def __init__(self, rows: QuantizedRows, names: set[str]):
        self.source = rows.source
        self._rows = rows
        self._tensors = {n: t for n, t in rows.tensors.items() if n in names}

    @property
    def tensors(self) -> Mapping[str, RowTensor]:
        return self._tensors

    def read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        return self._rows.read_rows(name, start, stop)

    def iter_rows(self, name: str, *, multiple: int = 1, budget: int = ROW_CHUNK_ELEMENTS):
        return self._rows.iter_rows(name, multiple=multiple, budget=budget)


def _check_model_type(base: Checkpoint, ckpt: Checkpoint) -> str:
    """The quant's model_type, which must be BASE's where both name one: the same names
    would otherwise pair rows that mean something else."""
    theirs, ours = (ckpt.config or {}).get("model_type"), (base.config or {}).get("model_type")
    if isinstance(theirs, str) and isinstance(ours, str) and theirs != ours:
        raise SurgeonError(
            f"{ckpt.source}: a quant of model type {inert(theirs)!r}, but {base.source} is {inert(ours)!r}: "
            "not a quant of this model"
        )
    return theirs if isinstance(theirs, str) else "unknown"


def _scheme_label(reader: QuantizedReader) -> str:
    """ "modelopt NVFP4", "compressed-tensors FP8": the exporter and the layouts it declares."""
    return f"{reader.scheme.method} {'+'.join(sorted(layout.upper() for layout in reader.scheme.layouts))}"


def _unpaired(base: Checkpoint, rows: QuantizedRows, mismatched: set[str]) -> list[QuantTensor]:
    out = []
    for name in sorted(mismatched):
        why = f"base {list(base.tensors[name].shape)}, quant {list(rows.tensors[name].shape)}"
        out.append(_listed(name, "shape-mismatch", why, base, True, list(rows.tensors[name].shape)))
    for name in base.tensors.keys() - rows.tensors.keys():
        out.append(_listed(name, "base-only", "not in the quant", base, counts=True))
    for name in rows.tensors.keys() - base.tensors.keys():
        shape = list(rows.tensors[name].shape)
        out.append(_listed(name, "quant-only", "not in the base", None, True, shape, rows.stored(name)[0].file))
    for name, info in rows.auxiliary.items():  # the activations' scales: no weight to compare
        why = "an activation or KV-cache scale, not a weight"
        out.append(_listed(name, "quant-only", why, None, False, list(info.shape), info.file))
    return out
