"""Tensor names: which decoder stack and layer a tensor belongs to, and its family.

`model.layers.3.self_attn.q_proj.weight`, `model.language_model.layers.3....` and
`language_model.model.layers.3....` all parse to layer 3, family `self_attn.q_proj.weight`.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections import Counter
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from itertools import islice

from surgeon.errors import SurgeonError
from surgeon.text import layer_ranges, span

# A layer index is 1-9 ASCII digits without a leading zero: `\d` and int() would also take
# other scripts' digits (`layers.٣` is layer 3 to int()), a leading zero would give two
# names for one layer, and 9 digits keep every index below 10**9. A longer or odd number
# leaves the name outside any stack, as if it had no index. Layer numbers never size an
# allocation anywhere: they are keys, counted by the tensors that carry them.
MAX_LAYER_DIGITS = 9
_INDEX = rf"0|[1-9][0-9]{{0,{MAX_LAYER_DIGITS - 1}}}"
_LAYER = re.compile(rf"(?P<stack>(?:.*\.)?(?:layers|h|blocks))\.(?P<index>{_INDEX})\.(?P<family>.+)", re.DOTALL)
# Any run of ASCII digits is a number in a selection; one longer than MAX_LAYER_DIGITS is read as
# BEYOND, past every layer a model can have (int() refuses 4300 digits and more).
_RANGE = re.compile(r"\s*([0-9]+)\s*(?:-\s*([0-9]+)\s*)?")
BEYOND = 10**MAX_LAYER_DIGITS


@dataclass(frozen=True)
class TensorName:
    stack: str | None  # e.g. "model.language_model.layers"; None outside any layer stack
    layer: int | None
    family: str  # the name inside the layer, or the whole name outside a stack


def parse_name(name: str) -> TensorName:
    match = _LAYER.fullmatch(name)
    if match is None:
        return TensorName(None, None, name)
    return TensorName(match["stack"], int(match["index"]), match["family"])


def layers_cell(layers: list[int] | set[int], count_them: bool = False) -> str:
    """Ranges for a report cell: `0-3`, `(none)`, or with count_them `4-59 (all 56)`."""
    if not layers:
        return "(none)"
    text = layer_ranges(layers)
    count = len(set(layers))
    if not count_them:
        return text
    if count > 3 and "," not in text:
        return f"{text} (all {count})"
    if count > 3:
        return f"{text} ({count} layers)"
    return text


def layers_phrase(layers) -> str:
    """ "layer 3", "layers 0-3,7" or "no layers", for sentences."""
    layers = sorted(layers)
    if not layers:
        return "no layers"
    return f"layer{'s' if len(layers) > 1 else ''} {layer_ranges(layers)}"


@dataclass(frozen=True)
class LayerSelection:
    """A layer selection as typed ("all", "none" or ranges like "0-3,7"), parsed but not
    yet checked against a model. Ranges stay (low, high) pairs until they are checked, so
    "0-300000000" costs two integers, not a set of 300 million."""

    text: str
    what: str  # how messages name it: "--keep", "layers"
    ranges: tuple[tuple[int, int], ...] | None  # None: all

    def resolve(self, existing: int | Collection[int]) -> list[int]:
        """The chosen layers, each checked to exist: `existing` is a layer count (layers
        0..n-1) or the layer numbers a model has (sparse ones included)."""
        present = range(existing) if isinstance(existing, int) else sorted(set(existing))
        if self.ranges is None:
            return list(present)
        for low, high in self.ranges:
            missing = _first_missing(present, low, high)
            if missing is not None:
                raise SurgeonError(f"{self.what} {_quote(self.text)}: {_missing_words(missing, present)}")
        # Every chosen layer exists, so this set is no larger than the model's layer list.
        return sorted({n for low, high in self.ranges for n in range(low, high + 1)})


def parse_layer_spec(spec: str, what: str = "layers", allow_none: bool = False) -> LayerSelection:
    """Parse "all", "none" (when allow_none) or ranges like "0-3,7"; `what` names the input
    in messages. An empty spec is an error: "none" says no layers on purpose."""
    text = spec.strip()
    if text == "all":
        return LayerSelection(spec, what, None)
    if allow_none and text == "none":
        return LayerSelection(spec, what, ())
    usage = "use 'all'" + (", 'none'" if allow_none else "") + " or ranges like 0-3,7"
    if not text:
        raise SurgeonError(f"{what} is empty: {usage}")
    ranges = []
    for part in text.split(","):
        match = _RANGE.fullmatch(part)
        low = _number(match[1]) if match else 0
        high = _number(match[2] or match[1]) if match else -1
        if high < low:
            raise SurgeonError(f"{what} {_quote(spec)}: {usage}")
        ranges.append((low, high))
    return LayerSelection(spec, what, tuple(ranges))


def _number(digits: str) -> int:
    return int(digits) if len(digits) <= MAX_LAYER_DIGITS else BEYOND


def parse_layers(spec: str, num_layers: int | Collection[int], what: str = "layers") -> list[int]:
    """Layer indices from "all" or ranges like "0-3,7", each checked against the model's
    layers (a count, or the layer numbers it has); `what` names the input in errors."""
    return parse_layer_spec(spec, what).resolve(num_layers)


def _first_missing(present: range | list[int], low: int, high: int) -> int | None:
    """The first number in low..high that is not in `present` (sorted), or None; the
    work is bounded by len(present), not by the range's width."""
    if isinstance(present, range):
        return low if low >= len(present) else (len(present) if high >= len(present) else None)
    expected = low
    for value in islice(present, bisect_left(present, low), None):
        if expected > high or value != expected:
            break
        expected += 1
    return expected if expected <= high else None


def _missing_words(missing: int, present: range | list[int]) -> str:
    """Why a selection fails: the first layer it names that the model lacks, and where that
    is past the model's last layer, that the selection goes beyond its layers."""
    existing = _existing_layers(present)
    if present and missing > present[-1]:
        beyond = f"beyond the model's {len(present)} layer{'s' if len(present) > 1 else ''}"
        return (
            f"{beyond} ({existing})" if missing >= BEYOND else f"layer {missing} does not exist ({existing}), {beyond}"
        )
    return f"layer {missing} does not exist ({existing})"


def _existing_layers(present: range | list[int], parts: int = 6) -> str:
    if not present:
        return "the model has no numbered layers"
    if isinstance(present, range):
        return span(0, len(present) - 1)
    return few_ranges(present, parts)


def few_ranges(numbers: list[int], parts: int = 6) -> str:
    """layer_ranges() cut after `parts` spans: `0-3, 7, ... 12 more` stays one short line."""
    spans = layer_ranges(numbers).split(", ") if numbers else []
    return ", ".join(spans[:parts]) + (f", ... {len(spans) - parts} more" if len(spans) > parts else "")


def _quote(text: str, limit: int = 40) -> str:
    """The user's spec in a message, cut so that a pasted megabyte stays one line."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def main_stack(stacks: Iterable[str | None], *, text_only: bool = False) -> str | None:
    """The layer stack most tensors belong to (the decoder's, in a model that also has a
    vision tower), or None; text_only leaves vision and audio stacks out."""
    counts = Counter(s for s in stacks if s is not None and not (text_only and ("vision" in s or "audio" in s)))
    return max(counts, key=counts.__getitem__) if counts else None


# A mixture-of-experts family: "mlp.experts.17.up_proj.weight" (Qwen-MoE, Mixtral's
# "block_sparse_moe.experts.17.w1.weight") is expert 17 of the family
# "mlp.experts.{*}.up_proj.weight".
_EXPERT = re.compile(r"(?P<head>(?:.*\.)?experts\.)(?P<expert>[0-9]{1,6})(?P<tail>\..+)")
# Fused experts: one tensor holds every expert of a layer, stacked along its first axis.
# Gemma 4's MoE (26B-A4B) stores "experts.gate_up_proj" [experts, 2*ff, hidden] and
# "experts.down_proj" [experts, hidden, ff], parameters of the experts module itself (no
# ".weight"; transformers 5.24 modeling_gemma4.py, Gemma4TextExperts, with no conversion
# mapping, so the state_dict keys are the checkpoint's names). GPT-OSS and Llama 4 stack their
# experts first too ("mlp.experts.gate_up_proj", "feed_forward.experts.down_proj": their
# modeling files in the same transformers).
_FUSED_EXPERTS = re.compile(r"(?:.*\.)?experts\.(?![0-9]+$)[A-Za-z0-9_]+")


def expert_family(family: str) -> tuple[str, str, int] | None:
    """(the family's text before the expert number, after it, the expert), or None when the
    family is not one expert of a mixture-of-experts layer."""
    match = _EXPERT.fullmatch(family)
    if match is None:
        return None
    return match["head"], match["tail"], int(match["expert"])


def fused_experts(family: str, shape: list[int] | tuple[int, ...]) -> int | None:
    """How many experts a fused experts tensor stacks along its first axis (the slice
    [e] is expert e), or None when the tensor is not one: a parameter of a module named
    "experts" with two or more dimensions."""
    if len(shape) < 2 or _FUSED_EXPERTS.fullmatch(family) is None:
        return None
    return shape[0]
