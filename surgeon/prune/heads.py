"""How many query heads a fraction prunes: the one rule that the engine selects heads by
and that the CLI, the manifest and the TUI's Prune form report, torch-free.

A fraction is rarely a whole number of heads: 12.5% of 4 heads is half a head, and prune
takes 1 of 4 (25%). What was asked and what was pruned are both said (issue 19).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from surgeon.model.families import LayerSpec
from surgeon.text import layer_ranges, percent

# 0.3 x 10 heads is 3.0000000000000004, and 3 of 10 is exactly what was asked; so is 3 of 9
# for 0.333, a third typed to three decimals as the reshape solver suggests it (and as the
# percentages here show one decimal: "33.3%; asked 33.3%" said nothing)
_EXACT = 5e-4


def heads_to_prune(fraction: float, num_heads: int, num_kv_heads: int) -> int:
    """`fraction` of `num_heads` query heads, rounded half up (12.5% of 4 is 1, of 9 is 1),
    and no more than leave every kv head one query head, as select_heads does (so a model
    with a kv head per query head, multi-head attention, prunes none)."""
    return max(0, min(math.floor(fraction * num_heads + 0.5), num_heads - num_kv_heads))


@dataclass(frozen=True)
class HeadCount:
    """The heads pruned in each layer of a group: layers of one head count asked one fraction
    that prune the same number of heads."""

    layers: tuple[int, ...]
    num_heads: int
    asked_frac: float
    heads_pruned: int

    @property
    def effective_frac(self) -> float:
        return self.heads_pruned / self.num_heads if self.num_heads else 0.0

    @property
    def exact(self) -> bool:
        """The heads pruned are the fraction asked, not a rounding of it."""
        return abs(self.effective_frac - self.asked_frac) <= _EXACT

    @property
    def capped(self) -> bool:
        """Fewer heads than the rounding gave: every kv head keeps one query head."""
        return self.heads_pruned < math.floor(self.asked_frac * self.num_heads + 0.5)

    def text(self) -> str:
        """`1 of 4 (25%; asked 12.5%)`; `2 of 8 (25%)` where that is what was asked."""
        return f"{self.heads_pruned} of {self.num_heads} {self.fractions()}"

    def fractions(self) -> str:
        """`(25%; asked 12.5%)`: the fraction pruned, and the one asked where they differ."""
        said = percent(self.effective_frac)
        if not self.exact:
            said += f"; asked {percent(self.asked_frac)}"
        if self.capped:
            said += "; every kv head keeps one query head"
        return f"({said})"

    def record(self) -> dict:
        """The manifest's `head_counts[]` entry."""
        return {
            "layers": list(self.layers),
            "num_heads": self.num_heads,
            "heads_pruned": self.heads_pruned,
            "asked_frac": self.asked_frac,
            "effective_frac": self.effective_frac,
        }


def head_counts(
    layers: Sequence[LayerSpec], selected: Iterable[int], prune_frac: float, layer_fracs: Iterable[tuple[int, float]]
) -> list[HeadCount]:
    """The heads each selected layer loses, grouped by head count, fraction asked and heads
    pruned, in order of first layer: one group where the layers are alike, more where layer
    types differ in heads (or in kv heads, which cap the count: Gemma's full-attention
    layers) or --layer-frac asks another fraction."""
    fracs, wanted = dict(layer_fracs), set(selected)
    groups: dict[tuple[int, float, int], list[int]] = {}
    for spec in layers:
        if spec.index in wanted:
            asked = fracs.get(spec.index, prune_frac)
            key = (spec.num_heads, asked, heads_to_prune(asked, spec.num_heads, spec.num_kv_heads))
            groups.setdefault(key, []).append(spec.index)
    return [HeadCount(tuple(indices), *key) for key, indices in groups.items()]


def counts_text(counts: list[HeadCount]) -> str:
    """`1 of 4 query heads in each of layers 0-2 (25%; asked 12.5%)`, a group after another
    joined by "and"; "no layer" where none is pruned."""
    parts = []
    for count in counts:
        where = (
            f"each of layers {layer_ranges(list(count.layers))}"
            if len(count.layers) > 1
            else f"layer {count.layers[0]}"
        )
        parts.append(f"{count.heads_pruned} of {count.num_heads} query heads in {where} {count.fractions()}")
    return " and ".join(parts) or "no layer"


def rounding_warning(counts: list[HeadCount]) -> str | None:
    """One line where a group prunes other than the fraction asked; None where all are exact."""
    inexact = [count for count in counts if not count.exact]
    if not inexact:
        return None
    return f"pruning other than the fraction asked: {counts_text(inexact)}"
