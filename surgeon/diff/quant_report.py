"""A checkpoint against its quant, as a report: the verdicts, the summary in words and the
JSON form (schema `surgeon.diff/1`, extended: docs/diff-json.md). No GGUF or numpy import here:
the engine (diff/quant.py) fills these, the renderers read them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal, get_args

from surgeon.diff.engine import SideSummary
from surgeon.diff.report import SCHEMA
from surgeon.diff.statuses import SHARD_STATUSES, status_counts
from surgeon.model.names import layers_phrase
from surgeon.text import and_list

Verdict = Literal["within", "differs", "unverified", "shape-mismatch", "base-only", "quant-only"]
VERDICTS: tuple[str, ...] = get_args(Verdict)
COMPARED = ("within", "differs", "unverified")


@dataclass
class HeadNMSE:
    projection: str  # q_proj, k_proj, v_proj, o_proj
    axis: str  # rows (q/k/v) or cols (o)
    num_heads: int
    head_dim: int
    nmse: list[float | None]  # per head; None where BASE is all zero there and the quant is not
    bound: float | None  # the per-row bound of the type: a head's rows are rows
    beyond: list[int]  # heads whose NMSE is over the bound or undefined


@dataclass
class QuantTensor:
    name: str  # the Hugging Face name; a GGUF name for a quant-only tensor
    verdict: Verdict
    stack: str | None
    layer: int | None
    family: str
    base_dtype: str | None = None
    storage: str | None = None  # the GGUF type(s) it is stored in
    shape: list[int] | None = None  # BASE's shape
    other_shape: list[int] | None = None  # the quant's, as compared: BASE's order (None: not compared)
    gguf: list[str] = field(default_factory=list)  # the GGUF tensors its rows come from
    stored: list[str] = field(default_factory=list)  # the quant's stored tensors it is decoded from
    other_shard: str | None = None  # the quant's file holding it (a GGUF: its first part)
    transforms: list[dict[str, str]] = field(default_factory=list)  # {kind, detail}: what was undone
    rows: int | None = None
    rows_compared: int | None = None
    nmse: float | None = None
    bound: float | None = None
    base_shard: str | None = None  # BASE's shard file holding it
    note: str | None = None  # why: no measured bound, base all zero, the mismatch, the absence
    heads: HeadNMSE | None = None
    counts: bool = True  # whether it decides the exit code (False: an absence that is expected)


@dataclass
class QuantFile:
    """One file of the quant: a GGUF part or a safetensors shard."""

    name: str
    size: int
    sha256: str | None = None  # only where asked (the card's evidence): hashed from the bytes


@dataclass
class QuantReport:
    base: SideSummary
    other: SideSummary
    architecture: str
    tensors: list[QuantTensor]
    transforms: dict[str, int]
    files: list[QuantFile]
    main_stack: str | None
    num_layers: int
    base_sha256: dict[str, str] = field(default_factory=dict)  # BASE's shards, where asked
    format: str = "gguf"  # or "safetensors": a quantized checkpoint (NVFP4, FP8)
    scheme: str | None = None  # a safetensors quant's declaration: "modelopt NVFP4"

    def count(self, verdict: str) -> int:
        return sum(1 for t in self.tensors if t.verdict == verdict)

    @property
    def counted(self) -> list[QuantTensor]:
        return [t for t in self.tensors if t.counts]

    @property
    def made_from(self) -> bool:
        """Every tensor that counts is within its bound (exit 0)."""
        return all(t.verdict == "within" for t in self.counted)

    def layers_changed(self) -> list[int]:
        """Layers with a tensor beyond its bound, of another shape, or on one side only."""
        return sorted(
            {
                t.layer
                for t in self.counted
                if t.stack == self.main_stack and t.layer is not None and t.verdict not in ("within", "unverified")
            }
        )

    def layers_unverified(self) -> list[int]:
        return sorted(
            {
                t.layer
                for t in self.counted
                if t.stack == self.main_stack and t.layer is not None and t.verdict == "unverified"
            }
        )

    def layer_numbers(self) -> list[int]:
        return sorted({t.layer for t in self.tensors if t.stack == self.main_stack and t.layer is not None})


# The tensor status (statuses.py) each verdict takes in the JSON's `status`: a quant never has
# the base's bytes, so a tensor compared is `retyped`, one side's alone `added` or `removed`.
STATUS_OF = {
    "within": "retyped",
    "differs": "retyped",
    "unverified": "retyped",
    "shape-mismatch": "retyped",
    "base-only": "removed",
    "quant-only": "added",
}
VERDICT_STYLE = {
    "within": "green",
    "differs": "yellow",
    "unverified": "magenta",
    "shape-mismatch": "red",
    "base-only": "red",
    "quant-only": "bright_blue",
}


def storage_counts(report: QuantReport) -> dict[str, int]:
    """Tensors compared per storage type, the most common first."""
    counts: dict[str, int] = {}
    for t in report.tensors:
        if t.storage is not None:
            counts[t.storage] = counts.get(t.storage, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


ATTENTION_ORDER = ("q_proj", "k_proj", "v_proj", "o_proj")  # as attention reads them, not a-z


def _reading_order(name: str) -> tuple[int, str]:
    return (ATTENTION_ORDER.index(name) if name in ATTENTION_ORDER else len(ATTENTION_ORDER), name)


def _short_family(family: str) -> str:
    """`self_attn.q_proj.weight` -> `q_proj`: the projection a sentence names."""
    parts = [p for p in family.split(".") if p not in ("weight", "bias")]
    return parts[-1] if parts else family


def summary_line(report: QuantReport) -> str:
    counted = report.counted
    if report.made_from:
        types = and_list(list(storage_counts(report)))
        text = f"made from {report.base.name}: {len(counted)} of {len(counted)} tensors within their {types} bounds"
        skipped = len(report.tensors) - len(counted)
        return text + (f"; {skipped} listed, not compared as expected" if skipped else "")
    parts = [p for p in (_differs_phrase(report), _unverified_phrase(report), _unmatched_phrase(report)) if p]
    return "; ".join(parts)


def _differs_phrase(report: QuantReport) -> str:
    differing = [t for t in report.counted if t.verdict == "differs"]
    if not differing:
        return ""
    layers = sorted({t.layer for t in differing if t.stack == report.main_stack and t.layer is not None})
    names = sorted(dict.fromkeys(_short_family(t.family) for t in differing), key=_reading_order)
    where = f" in {layers_phrase(layers)}" if layers else ""
    shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    return f"differs beyond quantization error{where} ({shown}): {len(differing)} of {len(report.counted)} tensors"


def _unverified_phrase(report: QuantReport) -> str:
    unverified = [t for t in report.counted if t.verdict == "unverified"]
    if not unverified:
        return ""
    types = and_list(list(dict.fromkeys(t.storage or "?" for t in unverified)))
    within = report.count("within")
    lead = "not verified: " if not any(t.verdict == "differs" for t in report.counted) else ""
    return (
        f"{lead}{len(unverified)} of {len(report.counted)} tensors are {types}, with no measured bound"
        f" ({within} within their bounds)"
    )


def _unmatched_phrase(report: QuantReport) -> str:
    words = {"base-only": "only in the base", "quant-only": "only in the quant", "shape-mismatch": "of another shape"}
    found = [f"{n} {words[v]}" for v in words if (n := sum(1 for t in report.counted if t.verdict == v))]
    return "not compared: " + ", ".join(found) if found else ""


def heads_beyond(report: QuantReport) -> list[dict]:
    return [
        {"tensor": t.name, "layer": t.layer, "projection": t.heads.projection, "heads": t.heads.beyond}
        for t in report.tensors
        if t.heads is not None and t.heads.beyond
    ]


@dataclass
class QuantFamily:
    """One row per (layer stack, family): its types, the tensor closest to (or furthest past)
    its bound, and the layers where a tensor differs."""

    stack: str | None
    family: str
    storage: list[str] = field(default_factory=list)
    worst: QuantTensor | None = None
    verdicts: dict[str, int] = field(default_factory=dict)
    layers_changed: list[int] = field(default_factory=list)
    layers_unchanged: list[int] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)


def family_rows(report: QuantReport) -> list[QuantFamily]:
    rows: dict[tuple[str | None, str], QuantFamily] = {}
    for t in report.tensors:
        row = rows.setdefault((t.stack, t.family), QuantFamily(t.stack, t.family))
        row.verdicts[t.verdict] = row.verdicts.get(t.verdict, 0) + 1
        status = STATUS_OF[t.verdict]
        row.statuses[status] = row.statuses.get(status, 0) + 1
        if t.storage is not None and t.storage not in row.storage:
            row.storage.append(t.storage)
        if _ratio(t) > _ratio(row.worst):
            row.worst = t
        if t.layer is not None:
            changed = t.counts and t.verdict not in ("within", "unverified")
            (row.layers_changed if changed else row.layers_unchanged).append(t.layer)
    return list(rows.values())


def _ratio(t: QuantTensor | None) -> float:
    """How far along its bound a tensor is: over 1 beyond it, infinite where undefined."""
    if t is None or t.verdict not in ("within", "differs", "unverified"):
        return -1.0
    if t.nmse is None:
        return float("inf")
    if t.bound is None:
        return 0.0  # unverified: no bound to measure against
    return t.nmse / t.bound if t.bound > 0 else (0.0 if t.nmse == 0 else float("inf"))


# ---------------------------------------------------------------------------------------------
# JSON


def to_json(report: QuantReport) -> dict:
    layers = report.layers_changed()
    changed = set(layers)
    statuses = [STATUS_OF[t.verdict] for t in report.tensors]
    return {
        "schema": SCHEMA,
        "base": asdict(report.base),
        "other": asdict(report.other),
        "hashed": False,
        "summary": {
            "identical": False,
            "text": summary_line(report),
            "tensors": {"total": len(report.tensors)} | status_counts(statuses),
            "shards": {"total": 0} | dict.fromkeys(SHARD_STATUSES, 0),
            "layer_stack": report.main_stack,
            "num_layers": report.num_layers,
            "layers_changed": layers,
            "layers_unchanged": [n for n in report.layer_numbers() if n not in changed],
            "uniform_attention": [],
        },
        "families": [_family_json(row) for row in family_rows(report)],
        "shards": [],
        "files": [],
        "tensors": [_tensor_json(t, report) for t in report.tensors],
        "quant": _quant_json(report),
    }


def _family_json(row: QuantFamily) -> dict:
    return {
        "stack": row.stack,
        "family": row.family,
        "layers_changed": row.layers_changed,
        "layers_unchanged": row.layers_unchanged,
        "statuses": row.statuses,
    }


def _tensor_json(t: QuantTensor, report: QuantReport) -> dict:
    return {
        "name": t.name,
        "status": STATUS_OF[t.verdict],
        "stack": t.stack,
        "layer": t.layer,
        "family": t.family,
        "sha256": [None, None],
        "dtype": [t.base_dtype, t.storage],
        "shape": [t.shape, t.other_shape],
        "shard": [t.base_shard, t.other_shard],
        "stats": None,
        "heads": None,
        "quant": {
            "verdict": t.verdict,
            "counts": t.counts,
            "storage": t.storage,
            "gguf": t.gguf,
            "stored": t.stored,
            "transforms": t.transforms,
            "rows": t.rows,
            "rows_compared": t.rows_compared,
            "nmse": t.nmse,
            "bound": t.bound,
            "note": t.note,
            "heads": asdict(t.heads) if t.heads is not None else None,
        },
    }


def _quant_json(report: QuantReport) -> dict:
    return {
        "format": report.format,
        "scheme": report.scheme,
        "architecture": report.architecture,
        "made_from": report.made_from,
        "verdicts": {v: report.count(v) for v in VERDICTS},
        "storage": storage_counts(report),
        "transforms": report.transforms,
        "layers_unverified": report.layers_unverified(),
        "heads_beyond": heads_beyond(report),
        # no SHA256 here (`hashed` is false): the card hashes the files, as its evidence
        "files": [{"name": f.name, "size": f.size} for f in report.files],
    }
