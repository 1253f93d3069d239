"""Tensor names: which decoder stack and layer a tensor belongs to, and its family.

`model.layers.3.self_attn.q_proj.weight`, `model.language_model.layers.3....` and
`language_model.model.layers.3....` all parse to layer 3, family `self_attn.q_proj.weight`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from surgeon.errors import SurgeonError

_LAYER = re.compile(r"^(?P<stack>(?:.*\.)?(?:layers|h|blocks))\.(?P<index>\d+)\.(?P<family>.+)$")


@dataclass(frozen=True)
class TensorName:
    stack: str | None  # e.g. "model.language_model.layers"; None outside any layer stack
    layer: int | None
    family: str  # the name inside the layer, or the whole name outside a stack


def parse_name(name: str) -> TensorName:
    match = _LAYER.match(name)
    if match is None:
        return TensorName(None, None, name)
    return TensorName(match["stack"], int(match["index"]), match["family"])


def layer_ranges(layers: list[int] | set[int]) -> str:
    """`[0, 1, 2, 3, 7]` -> `0-3, 7`."""
    ordered = sorted(set(layers))
    parts: list[str] = []
    start = prev = None
    for value in ordered:
        if start is None:
            start = prev = value
        elif value == prev + 1:
            prev = value
        else:
            parts.append(_span(start, prev))
            start = prev = value
    if start is not None:
        parts.append(_span(start, prev))
    return ", ".join(parts)


def _span(start: int, end: int) -> str:
    return str(start) if start == end else f"{start}-{end}"


def describe_layers(layers: list[int] | set[int], count_them: bool = False) -> str:
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


def parse_layers(spec: str, num_layers: int, what: str = "--layers") -> list[int]:
    """Layer indices from "all" or ranges like "0-3,7"; `what` names the input in errors."""
    if spec.strip() == "all":
        return list(range(num_layers))
    chosen: set[int] = set()
    try:
        for part in spec.split(","):
            first, _, last = part.strip().partition("-")
            low, high = int(first), int(last or first)
            if high < low:
                raise ValueError(part)
            chosen.update(range(low, high + 1))
    except ValueError:
        raise SurgeonError(f"{what} {spec!r}: use 'all' or ranges like 0-3,7") from None
    outside = sorted(i for i in chosen if not 0 <= i < num_layers)
    if outside:
        raise SurgeonError(f"{what} {spec!r}: layer {outside[0]} does not exist (0-{num_layers - 1})")
    return sorted(chosen)
