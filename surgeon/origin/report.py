"""surgeon origin's findings: per candidate and tensor, what agreed at which tier; the ranking,
the one-line answer, and the JSON form (schema `surgeon.origin/1`, docs/origin-json.md)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from surgeon.model.names import layers_phrase
from surgeon.text import and_list

SCHEMA = "surgeon.origin/1"
TIER_WORDS = {1: "re-encoded bytes", 2: "codes with the quant's scales", 3: "NMSE within the type's bound"}


@dataclass
class OriginTensor:
    name: str  # the Hugging Face name (a GGUF name for a tensor no candidate tensor maps to)
    stack: str | None
    layer: int | None
    family: str
    storage: str | None
    elements: int
    tier: int | None  # the evidence used: 1, 2, 3; None where nothing was compared
    agree: float | None  # share of elements agreeing (tiers 1-2); 1.0 / 0.0 within or not (tier 3)
    matched: bool  # reproduced: the candidate gives the quant's bytes or its re-rounded codes
    heads: list[int] = field(default_factory=list)  # heads that do not agree
    note: str | None = None
    counts: bool = True  # an absence that is expected (a vision tower, RoPE factors) does not
    consistent: bool = False  # reproduced, or agrees as a light fine-tune of the source would too


@dataclass
class Candidate:
    source: str  # as given on the command line
    name: str  # for display: the folder's name
    path: str  # fully resolved
    tensors: list[OriginTensor]
    main_stack: str | None
    unrelated: str | None = None  # why it is no candidate at all (another architecture, no tensor maps)

    @property
    def counted(self) -> list[OriginTensor]:
        return [t for t in self.tensors if t.counts]

    @property
    def matched(self) -> bool:
        return self.unrelated is None and bool(self.counted) and all(t.matched for t in self.counted)

    @property
    def consistent(self) -> bool:
        """Every tensor reproduced or consistent: what a light fine-tune of the source shows too."""
        return self.unrelated is None and bool(self.counted) and all(t.consistent for t in self.counted)

    @property
    def score(self) -> float:
        """The share of the quant's elements that agree, over every tensor that counts."""
        counted = self.counted
        total = sum(t.elements for t in counted)
        if self.unrelated is not None or not total:
            return 0.0
        return sum((t.agree or 0.0) * t.elements for t in counted) / total

    @property
    def differing(self) -> list[OriginTensor]:
        """The tensors that disagree: neither reproduced nor consistent."""
        return [t for t in self.counted if not t.consistent]

    def tiers(self) -> dict[int, int]:
        found: dict[int, int] = {}
        for tensor in self.counted:
            if tensor.tier is not None:
                found[tensor.tier] = found.get(tensor.tier, 0) + 1
        return dict(sorted(found.items()))

    def differing_layers(self) -> list[int]:
        return sorted({t.layer for t in self.differing if t.stack == self.main_stack and t.layer is not None})


@dataclass
class QuantSide:
    source: str
    name: str
    path: str
    architecture: str
    types: dict[str, int]  # storage type -> tensors
    files: list[str]


@dataclass
class OriginReport:
    quant: QuantSide
    candidates: list[Candidate]  # as given

    @property
    def ranked(self) -> list[Candidate]:
        return sorted(self.candidates, key=lambda c: (not c.matched, not c.consistent, -c.score))

    @property
    def matching(self) -> list[Candidate]:
        return [c for c in self.candidates if c.matched]

    @property
    def best(self) -> Candidate | None:
        """The candidate it was made from: the one that matches; None where none or several do."""
        matching = self.matching
        return matching[0] if len(matching) == 1 else None

    @property
    def consistent_with(self) -> Candidate | None:
        """Where none reproduces the quant: the one candidate consistent with it, if one is."""
        found = [c for c in self.candidates if c.consistent]
        return found[0] if not self.matching and len(found) == 1 else None

    def answer(self) -> str:
        best, matching, consistent = self.best, self.matching, self.consistent_with
        if best is not None:
            return f"made from {best.name}: {_agreeing(best)}"
        if matching:
            names = and_list([c.name for c in matching])
            return f"cannot tell {names} apart: each agrees with the quant in every tensor it holds"
        if consistent is not None:
            return f"consistent with {consistent.name}, not reproduced: {_unproven(consistent)}"
        several = [c.name for c in self.candidates if c.consistent]
        if several:
            return f"consistent with {and_list(several)}, none reproduced: cannot tell which"
        closest = self.ranked[0] if self.candidates else None
        if closest is None or closest.unrelated is not None:
            return "made from none of them: no candidate is a model of this architecture and shape"
        return f"made from none of them; closest {closest.name}: {_against(closest)}"

    def to_json(self) -> dict:
        best = self.best
        return {
            "schema": SCHEMA,
            "quant": asdict(self.quant),
            "best": best.source if best is not None else None,
            "consistent": self.consistent_with.source if self.consistent_with is not None else None,
            "answer": self.answer(),
            "candidates": [_candidate_json(c) for c in self.ranked],
        }


def _agreeing(candidate: Candidate) -> str:
    counted = candidate.counted
    tiers = ", ".join(f"{n} by {TIER_WORDS[tier]}" for tier, n in candidate.tiers().items())
    return f"{len(counted)} of {len(counted)} tensors agree ({tiers})"


def _unproven(candidate: Candidate) -> str:
    unproven = [t for t in candidate.counted if not t.matched]
    return (
        f"{len(unproven)} of {len(candidate.counted)} tensors agree only as a light fine-tune of it would "
        "(codes under scales surgeon cannot re-derive, or an NMSE within its bound)"
    )


def _against(candidate: Candidate) -> str:
    differing = candidate.differing
    layers = candidate.differing_layers()
    where = f" in {layers_phrase(layers)}" if layers else ""
    return f"{len(differing)} of {len(candidate.counted)} tensors disagree{where}"


def _candidate_json(candidate: Candidate) -> dict:
    return {
        "source": candidate.source,
        "path": candidate.path,
        "matched": candidate.matched,
        "consistent": candidate.consistent,
        "score": round(candidate.score, 6),
        "unrelated": candidate.unrelated,
        "tiers": {str(k): v for k, v in candidate.tiers().items()},
        "tensors_agreeing": sum(1 for t in candidate.counted if t.matched),
        "tensors_consistent": sum(1 for t in candidate.counted if t.consistent),
        "tensors_counted": len(candidate.counted),
        "layers_differing": candidate.differing_layers(),
        "layers": layer_scores(candidate),
        "differing": [_tensor_json(t) for t in candidate.differing],
    }


def _tensor_json(tensor: OriginTensor) -> dict:
    data = asdict(tensor)
    if data["agree"] is not None:
        data["agree"] = round(data["agree"], 6)
    return data


def layer_scores(candidate: Candidate) -> list[dict]:
    """Per layer of the main stack (and "other" for the rest): tensors agreeing, counted, and
    the share of elements that agree."""
    groups: dict[int | None, list[OriginTensor]] = {}
    for tensor in candidate.counted:
        key = tensor.layer if tensor.stack == candidate.main_stack else None
        groups.setdefault(key, []).append(tensor)
    rows = []
    for key in sorted(groups, key=lambda k: (k is None, k if k is not None else 0)):
        tensors = groups[key]
        total = sum(t.elements for t in tensors)
        agree = sum((t.agree or 0.0) * t.elements for t in tensors) / total if total else 1.0
        rows.append(
            {
                "layer": key,
                "agreeing": sum(1 for t in tensors if t.matched),
                "consistent": sum(1 for t in tensors if t.consistent),
                "tensors": len(tensors),
                "agree": round(agree, 6),
            }
        )
    return rows
