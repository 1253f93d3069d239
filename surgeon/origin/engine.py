"""Judge each candidate against one GGUF quant, tensor by tensor (the package docstring).

Every candidate first goes through `surgeon diff`'s quant comparison (diff/quant.py): the
name map, the transforms, what maps to nothing, and the NMSE of every tensor, which is the
tier-3 evidence. Tensors whose type allows it are then compared code by code (evidence.py):
re-encoded first, and where the bytes differ (an importance matrix moves the scales; another
encoder rounds ties otherwise) rounded with the quant's own scales, when the type stores
affine ones. The stronger evidence decides; NMSE alone decides only for types that allow
nothing else (the IQ codebooks, TQ).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from pathlib import Path

from threadpoolctl import threadpool_limits

from surgeon.diff.quant import QuantOptions, check_architecture, diff_quant
from surgeon.diff.quant_report import COMPARED, QuantReport, QuantTensor
from surgeon.diff.stats import HeadLayout
from surgeon.errors import SurgeonError
from surgeon.format.checkpoint import Checkpoint, open_checkpoint
from surgeon.format.gguf import GGUFModel, open_gguf
from surgeon.format.hashing import default_workers
from surgeon.format.quantized import QuantizedReader, open_quantized
from surgeon.format.rows import SafetensorsRows
from surgeon.model.crossnames import TensorMap, build_crossmap
from surgeon.model.gguf_rows import with_tied_output
from surgeon.origin.evidence import (
    PLAIN,
    Agreement,
    agreement,
    folder_agreement,
    own_scales,
    stored_agreement,
    tier_of,
)
from surgeon.origin.report import Candidate, OriginReport, OriginTensor, QuantSide
from surgeon.parallel import map_cancellable
from surgeon.progress import NoProgress, ProgressSink
from surgeon.text import inert


@dataclass(frozen=True)
class QuantInput:
    """QUANT as given, resolved: a GGUF (a file, split set or folder; a Hub repo's cached file)
    or a quantized safetensors checkpoint (NVFP4, FP8), opened."""

    spec: str
    gguf: Path | None = None
    ckpt: Checkpoint | None = None


def open_quant(spec: str, revision: str | None = None) -> QuantInput:
    """QUANT: a GGUF path, a Hub id of a GGUF repo (`owner/repo[:Q4_K_M]`), or a checkpoint
    folder or Hub id whose config declares a quantization surgeon decodes."""
    from surgeon.format.hub_gguf import hub_gguf
    from surgeon.format.kinds import names_gguf
    from surgeon.format.quant_scheme import decoded_scheme

    if names_gguf(spec):
        return QuantInput(spec, gguf=Path(spec).expanduser())
    found = hub_gguf(spec, revision)
    if found is not None:
        return QuantInput(spec, gguf=found)
    ckpt = open_checkpoint(spec, revision)
    if decoded_scheme(ckpt) is None:
        raise SurgeonError(
            f"{spec}: not a quant: neither a GGUF nor a checkpoint whose config declares NVFP4 or FP8 "
            "(modelopt, compressed-tensors, fp8)"
        )
    return QuantInput(spec, ckpt=ckpt)


def find_origin(
    quant: QuantInput,
    candidates: list[tuple[str, Checkpoint]],
    *,
    workers: int | None = None,
    progress: ProgressSink | None = None,
    cancel: threading.Event | None = None,
) -> OriginReport:
    """Each candidate (as given, opened) judged against `quant`."""
    _check_distinct(candidates)
    sink = progress or NoProgress()
    if quant.gguf is not None:
        model = open_gguf(quant.gguf)
        judged = [_judge(model, quant, spec, ckpt, workers, sink, cancel) for spec, ckpt in candidates]
        return OriginReport(_quant_side(quant.spec, model), judged)
    assert quant.ckpt is not None
    reader = open_quantized(quant.ckpt)
    assert reader is not None  # open_quant checked the declaration
    with reader:
        judged = [_judge_folder(reader, quant, spec, ckpt, workers, sink, cancel) for spec, ckpt in candidates]
    return OriginReport(_folder_side(quant.spec, reader), judged)


def _check_distinct(candidates: list[tuple[str, Checkpoint]]) -> None:
    seen: dict[str, str] = {}
    for spec, ckpt in candidates:
        where = _where(spec, ckpt)
        if where in seen:
            raise SurgeonError(f"{spec} and {seen[where]} are the same checkpoint: name each candidate once")
        seen[where] = spec


def _where(spec: str, ckpt: Checkpoint) -> str:
    """The candidate's fully resolved path: the .safetensors file named, or its folder."""
    path = Path(spec).expanduser()
    return str(path.resolve() if path.is_file() else Path(ckpt.root).resolve())


def _quant_side(spec: str, model: GGUFModel) -> QuantSide:
    types: dict[str, int] = {}
    for info in model.tensors.values():
        types[info.type_name] = types.get(info.type_name, 0) + 1
    first = model.parts[0].path
    return QuantSide(
        source=spec,
        name=first.name,
        path=str(first.resolve()),
        architecture=model.architecture,
        types=dict(sorted(types.items(), key=lambda kv: -kv[1])),
        files=[p.path.name for p in model.parts],
    )


def _folder_side(spec: str, reader: QuantizedReader) -> QuantSide:
    types: dict[str, int] = {}
    for weight in reader.weights.values():
        types[weight.storage] = types.get(weight.storage, 0) + 1
    for name in reader.plain:
        kind = reader.ckpt.tensors[name].dtype.name
        types[kind] = types.get(kind, 0) + 1
    model_type = (reader.ckpt.config or {}).get("model_type")
    return QuantSide(
        source=spec,
        name=Path(spec).name or spec,
        path=str(Path(reader.ckpt.root).resolve()),
        architecture=model_type if isinstance(model_type, str) else "unknown",
        types=dict(sorted(types.items(), key=lambda kv: -kv[1])),
        files=list(reader.ckpt.shards),
    )


def _judge(model, quant: QuantInput, spec, ckpt, workers, progress, cancel) -> Candidate:
    name = Path(spec).name or spec  # as the user named it (a link, a Hub id), not as it resolved
    resolved = _where(spec, ckpt)
    unrelated = _unrelated(ckpt, model)
    if unrelated is not None:
        return Candidate(spec, name, resolved, [], None, unrelated)
    options = QuantOptions(workers=workers)
    report = diff_quant(ckpt, str(quant.gguf), options, source=quant.spec, progress=progress, cancel=cancel)
    tensors = _code_evidence(model, ckpt, report, workers, progress, cancel)
    return Candidate(spec, name, resolved, tensors, report.main_stack)


def _judge_folder(reader: QuantizedReader, quant: QuantInput, spec, ckpt, workers, progress, cancel) -> Candidate:
    """A candidate against an NVFP4 or FP8 checkpoint: tier 2 on its quantized weights (the
    candidate rounded with the quant's own scales), tier 3 on the tensors it keeps in floats."""
    name = Path(spec).name or spec
    resolved = _where(spec, ckpt)
    unrelated = _folder_unrelated(ckpt, reader)
    if unrelated is not None:
        return Candidate(spec, name, resolved, [], None, unrelated)
    assert quant.ckpt is not None
    options = QuantOptions(workers=workers)
    report = diff_quant(ckpt, quant.ckpt, options, source=quant.spec, progress=progress, cancel=cancel)
    rows, stored = SafetensorsRows(ckpt), SafetensorsRows(reader.ckpt)
    floats = {n for n in reader.plain if n in ckpt.tensors and ckpt.tensors[n].shape == reader.ckpt.tensors[n].shape}
    known = set(reader.weights) | floats
    compared = [t for t in report.tensors if t.verdict in COMPARED and t.name in known]

    def measure(tensor: QuantTensor, should_stop) -> OriginTensor:
        if tensor.name in reader.weights:
            found = folder_agreement(reader, tensor.name, rows, _layout(tensor), should_stop)
        else:  # kept in floats: its values, exactly
            found = stored_agreement(stored, tensor.name, rows, should_stop)
        return _from_agreement(tensor, found, None)

    judged = _run(compared, measure, workers, progress, cancel)
    return Candidate(
        spec, name, resolved, [judged.get(t.name) or _from_nmse(t) for t in report.tensors], report.main_stack
    )


def _folder_unrelated(ckpt: Checkpoint, reader: QuantizedReader) -> str | None:
    theirs = (reader.ckpt.config or {}).get("model_type")
    ours = (ckpt.config or {}).get("model_type")
    if isinstance(theirs, str) and isinstance(ours, str) and theirs != ours:
        return f"{ckpt.source} is {inert(ours)}, the quant {inert(theirs)}: not a quant of this model"
    shapes = {name: w.shape for name, w in reader.weights.items()}
    same = [n for n, shape in shapes.items() if n in ckpt.tensors and tuple(ckpt.tensors[n].shape) == shape]
    if not same:
        return f"none of the quant's weights has a tensor of the same name and shape in {ckpt.source}"
    return None


def _unrelated(ckpt: Checkpoint, model: GGUFModel) -> str | None:
    """Why `ckpt` cannot be the quant's source at all (another architecture, no tensor of the
    quant's shape), or None. Those are answers about a candidate, not trouble."""
    try:
        check_architecture(ckpt, model)
    except SurgeonError as exc:
        return str(exc)
    shapes = {name: tuple(info.shape) for name, info in ckpt.tensors.items()}
    if not build_crossmap(shapes, model).entries:
        return f"none of {model.source}'s tensors maps onto a tensor of {ckpt.source} of the same shape"
    return None


def _code_evidence(model, ckpt, report: QuantReport, workers, progress, cancel) -> list[OriginTensor]:
    shapes = {name: tuple(info.shape) for name, info in ckpt.tensors.items()}
    entries = with_tied_output(build_crossmap(shapes, model), model, shapes).entries
    rows = SafetensorsRows(ckpt)
    compared = [t for t in report.tensors if t.verdict in COMPARED and t.name in entries]

    def measure(tensor: QuantTensor, should_stop) -> OriginTensor:
        return _evidence(model, entries[tensor.name], tensor, rows, should_stop)

    judged = _run(compared, measure, workers, progress, cancel)
    return [judged.get(t.name) or _from_nmse(t) for t in report.tensors]


def _run(compared: list[QuantTensor], measure, workers, progress, cancel) -> dict[str, OriginTensor]:
    """measure(tensor, should_stop) over the tensors on the worker threads, by name."""
    progress.start("matching codes", sum(_elements(t) for t in compared))

    def work(tensor: QuantTensor, should_stop) -> OriginTensor:
        found = measure(tensor, should_stop)
        progress.advance(_elements(tensor))
        return found

    try:
        with threadpool_limits(limits=1, user_api="blas"):  # one BLAS thread per worker, as diff_quant
            judged = map_cancellable(work, compared, workers or default_workers(), cancel)
    finally:
        progress.stop()
    return {t.name: t for t in judged}


def _evidence(model: GGUFModel, entry: TensorMap, tensor: QuantTensor, rows, should_stop) -> OriginTensor:
    assert tensor.storage is not None
    kinds = tensor.storage.split("+")
    tier = max(tier_of(kind) for kind in kinds)
    if tier == 3:
        return _from_nmse(tensor)
    layout = _layout(tensor)
    found = agreement(model, entry, rows, tier, layout, should_stop)
    if tier == 2 or found.matched or not all(own_scales(kind) for kind in kinds):
        return _from_agreement(tensor, found, _via(found))
    reencoded = f"re-encoded, {found.fraction:.1%} of its blocks' bytes agree"
    if found.plain_share >= PLAIN:  # the reference encoder's scales: its source gives its bytes
        note = f"{reencoded}; {found.plain_share:.1%} of its blocks bear the reference encoder's scales"
        return _from_agreement(tensor, found, note)
    codes = agreement(model, entry, rows, 2, layout, should_stop)
    codes.reproducible = False  # scales an importance matrix (or another encoder) chose
    note = (
        f"{reencoded}; its scales are not the reference encoder's (an importance matrix?): rounded with "
        f"them, {codes.fraction:.2%} of its codes agree, which a light fine-tune of the source would too"
    )
    return _from_agreement(tensor, codes, note)


def _via(found: Agreement) -> str | None:
    return f"re-encoded from {found.via}, as a quant made through an {found.via} GGUF is" if found.via else None


def _layout(tensor: QuantTensor) -> HeadLayout | None:
    heads = tensor.heads
    return None if heads is None else HeadLayout(heads.axis, heads.num_heads, heads.head_dim)


def _from_agreement(tensor: QuantTensor, found: Agreement, note: str | None) -> OriginTensor:
    if found.rows_differing and note is None:
        note = f"{found.rows_differing} rows disagree"
    # bytes either reproduce or not: a re-encoding that half agrees is no lighter evidence, so
    # only codes (tier 2) can be consistent without being reproduced
    consistent = found.matched or (found.tier == 2 and found.consistent)
    return _origin_tensor(tensor, found.tier, found.fraction, found.matched, found.heads_below(), note, consistent)


def _from_nmse(tensor: QuantTensor) -> OriginTensor:
    """Tier 3, or a tensor not compared at all (only on one side, of another shape)."""
    compared = tensor.verdict in COMPARED
    matched = tensor.verdict == "within"
    note = tensor.note
    if tensor.verdict == "unverified":
        note = f"no evidence: {inert(tensor.note or 'its type has no measured bound')}"
    elif not compared:
        note = f"{tensor.verdict}: {tensor.note}" if tensor.note else tensor.verdict
    return _origin_tensor(
        tensor,
        3 if compared and tensor.verdict != "unverified" else None,
        (1.0 if matched else 0.0) if compared else None,
        False,  # an NMSE within its bound is what a light fine-tune of the source shows too
        list(tensor.heads.beyond) if tensor.heads is not None else [],
        note,
        consistent=matched,
    )


def _origin_tensor(
    tensor: QuantTensor, tier, agree, matched: bool, heads: list[int], note: str | None, consistent: bool
) -> OriginTensor:
    """The quant diff's tensor with origin's evidence for it."""
    return OriginTensor(
        tensor.name,
        tensor.stack,
        tensor.layer,
        tensor.family,
        tensor.storage,
        _elements(tensor),
        tier,
        agree,
        matched,
        heads,
        note,
        tensor.counts,
        consistent=consistent,
    )


def _elements(tensor: QuantTensor) -> int:
    return math.prod(tensor.shape or tensor.other_shape or [])
