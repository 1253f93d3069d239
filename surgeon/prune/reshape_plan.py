"""Which query-head counts a reshape can reach, torch-free (issue 21).

Mask mode zeroes heads and keeps every shape; a reshape removes them, so what is left must
still be a model stock transformers builds:

- query heads are global: every layer keeps the same number Q' (transformers reads one
  `num_attention_heads`);
- under GQA query head i reads KV head i // g, so a layer type with n_kv KV heads of g query
  heads each can keep kv' <= n_kv whole KV groups of g' <= g query heads each: Q' = kv' * g'.
  Dropping a KV group drops its k/v rows as well.

Q' must be reachable in every layer type at once (Gemma 4's full-attention layers have fewer
KV heads than its sliding ones), so the reachable fractions are the intersection over types.
Arithmetic is exact (Fraction): 1/3 of 9 heads is 3 heads, not 2.9999999999999996.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

from surgeon.errors import SurgeonError
from surgeon.model.geometry import SUB_CONFIGS, check_config, config_geometry, config_int, text_config
from surgeon.text import percent

Option = tuple[int, int]  # (KV heads kept, query heads kept per KV head)


@dataclass(frozen=True)
class TypeGeometry:
    """The layers of one layer type that share one attention geometry."""

    layer_type: str | None  # None where the config names no layer types (Llama)
    layers: tuple[int, ...]
    num_heads: int
    num_kv_heads: int
    head_dim: int

    @property
    def group_size(self) -> int:
        return self.num_heads // self.num_kv_heads

    @property
    def name(self) -> str:
        return f"{self.layer_type} layers" if self.layer_type else "every layer"

    def options(self, heads: int) -> tuple[Option, ...]:
        """Every (kv', g') keeping `heads` query heads, most KV heads first: keeping a
        KV head costs nothing, so the first is the one to take."""
        top = min(self.num_kv_heads, heads)
        return tuple(
            (kv, heads // kv) for kv in range(top, 0, -1) if heads % kv == 0 and heads // kv <= self.group_size
        )


@dataclass(frozen=True)
class TypeShape:
    """What one layer type keeps: `kv_heads` KV groups of `group` query heads each."""

    geometry: TypeGeometry
    kv_heads: int
    group: int
    alternatives: tuple[Option, ...]  # the other (kv', g') giving the same count, fewer KV heads kept

    @property
    def drops_groups(self) -> bool:
        """Whole KV groups go, their k/v rows with them."""
        return self.kv_heads < self.geometry.num_kv_heads

    @property
    def costs_kv_heads(self) -> bool:
        """Drops KV heads that other query heads read: under multi-head attention every
        head is its own group, so dropping one is just pruning a head and worth no warning."""
        return self.drops_groups and self.geometry.group_size > 1

    def text(self) -> str:
        geo = self.geometry
        return (
            f"{geo.name} keep {self.kv_heads} of {geo.num_kv_heads} KV heads, "
            f"{self.group} of {geo.group_size} query heads each"
        )


@dataclass(frozen=True)
class Shape:
    """A reshape every layer type can take: `heads` of `num_heads` query heads kept."""

    num_heads: int
    heads: int
    types: tuple[TypeShape, ...]

    @property
    def fraction(self) -> Fraction:
        """The fraction of query heads removed."""
        return Fraction(self.num_heads - self.heads, self.num_heads)

    @property
    def drops_groups(self) -> bool:
        return any(t.drops_groups for t in self.types)

    def group_drops(self) -> tuple[TypeShape, ...]:
        """The GQA layer types that must drop whole KV groups to keep `heads`."""
        return tuple(t for t in self.types if t.costs_kv_heads)

    def text(self) -> str:
        """`keeps 28 of 32 query heads (12.5% removed): sliding_attention layers keep ...`."""
        kept = "; ".join(t.text() for t in self.types)
        return f"keeps {self.heads} of {self.num_heads} query heads ({percent(float(self.fraction))} removed): {kept}"


def type_geometries(config: dict, where: str = "config.json") -> list[TypeGeometry]:
    """The main stack's layers grouped by layer type and geometry, in order of first layer."""
    if not isinstance(config, dict):
        raise SurgeonError(f"{where}: not a JSON object, so no attention geometry can be read")
    check_config(config, where)  # values of the wrong type: one line naming the key
    cfg = text_config(config, None)
    prefix = next((f"{key}." for key in SUB_CONFIGS if config.get(key) is cfg), "")
    count = config_int(cfg, "num_hidden_layers")
    if count is None:
        raise SurgeonError(f"{where}: {prefix}num_hidden_layers is missing; a reshape needs every layer's geometry")
    groups: dict[tuple, list[int]] = {}
    for layer in range(count):
        groups.setdefault(_layer_key(cfg, layer, where, prefix), []).append(layer)
    return [TypeGeometry(key[0], tuple(layers), *key[1:]) for key, layers in groups.items()]


def _layer_key(cfg: dict, layer: int, where: str, prefix: str) -> tuple[str | None, int, int, int]:
    heads, head_dim, kv_heads, layer_type = config_geometry(cfg, layer)
    if heads is None or kv_heads is None:
        raise SurgeonError(f"{where}: {prefix}num_attention_heads is missing; a reshape needs the query-head count")
    if head_dim is None:
        raise SurgeonError(f"{where}: {prefix}head_dim and hidden_size are missing; layer {layer} has no head size")
    if heads % kv_heads:
        raise SurgeonError(
            f"{where}: layer {layer} has {heads} query heads and {kv_heads} KV heads; "
            "each KV head must serve a whole number of query heads"
        )
    return layer_type, heads, kv_heads, head_dim


def reachable(geoms: Sequence[TypeGeometry]) -> list[Shape]:
    """Every reshape removing at least one query head, fewest removed first."""
    num_heads = _global_heads(geoms)
    shapes = []
    for heads in range(num_heads - 1, 0, -1):
        options = [geo.options(heads) for geo in geoms]
        if all(options):
            types = tuple(
                TypeShape(geo, *opts[0], alternatives=opts[1:]) for geo, opts in zip(geoms, options, strict=True)
            )
            shapes.append(Shape(num_heads, heads, types))
    return shapes


def _global_heads(geoms: Sequence[TypeGeometry]) -> int:
    counts = {geo.num_heads for geo in geoms}
    if len(counts) != 1:
        # transformers builds every layer from one num_attention_heads
        found = "no layer" if not counts else ", ".join(str(c) for c in sorted(counts))
        raise SurgeonError(f"a reshape needs one query-head count for every layer (found {found})")
    return counts.pop()


def solve(geoms: Sequence[TypeGeometry], target: float | Fraction, tolerance: float = 1e-9) -> Shape:
    """The reshape removing `target` of the query heads, or a SurgeonError naming the nearest."""
    if not (isinstance(target, (int, float, Fraction)) and 0 < target < 1):  # NaN fails too
        raise SurgeonError(f"a reshape removes a fraction of the query heads above 0 and below 1 (got {target!r})")
    shapes = reachable(geoms)
    wanted = Fraction(target)
    for shape in shapes:
        if abs(shape.fraction - wanted) <= Fraction(tolerance) or _typed_back(target, shape):
            return shape
    raise SurgeonError(_refusal(geoms, shapes, wanted))


def _typed_back(target: float | Fraction, shape: Shape) -> bool:
    """The fraction as fractions_text shows it (0.333 for 1/3): a value copied from a
    refusal or the reachable list is that reshape, not a near miss."""
    return float(target) == float(_decimal(shape.fraction, shape.num_heads))


def _refusal(geoms: Sequence[TypeGeometry], shapes: list[Shape], wanted: Fraction) -> str:
    num_heads = _global_heads(geoms)
    asked = percent(float(wanted))
    head = (
        f"a reshape removing {asked} of {num_heads} query heads is not reachable: every layer keeps the same "
        "number of query heads and every KV group the same share of them"
    )
    if not shapes:
        return f"{head}; no reshape of this model removes a head (mask mode can remove {asked})"
    below = [s for s in shapes if s.fraction < wanted][-1:]
    above = [s for s in shapes if s.fraction > wanted][:1]
    nearest = [_entry(s, long=True) for s in below + above]
    closest = min(below + above, key=lambda s: abs(s.fraction - wanted))
    return (
        f"{head}; nearest: {' or '.join(nearest)}; reachable: {_listing(shapes, notes=False)}; "
        f"ask for {_decimal(closest.fraction, num_heads)}, or use mask mode for {asked}"
    )


def fractions_text(geoms: Sequence[TypeGeometry]) -> str:
    """`0.333 (6 heads kept), 0.556 (4; drops KV groups), 0.667 (3), ...`: the reachable
    fractions removed, for the CLI and the TUI; `none` where no head can go."""
    return _listing(reachable(geoms), notes=True)


def _listing(shapes: list[Shape], notes: bool) -> str:
    return ", ".join(_entry(s, long=i == 0, notes=notes) for i, s in enumerate(shapes)) or "none"


def _entry(shape: Shape, long: bool, notes: bool = True) -> str:
    said = f"{shape.heads} heads kept" if long else str(shape.heads)
    drops = shape.group_drops()
    if drops and notes:
        some = len(drops) < len(shape.types)
        said += "; drops KV groups" + (" in " + "/".join(str(t.geometry.layer_type) for t in drops) if some else "")
    return f"{_decimal(shape.fraction, shape.num_heads)} ({said})"


def _decimal(fraction: Fraction, num_heads: int) -> str:
    """3 decimals, or as many as keep k/num_heads apart, without trailing zeros: 0.333, 0.25."""
    digits = max(3, math.ceil(math.log10(num_heads)) + 1)
    return f"{float(fraction):.{digits}f}".rstrip("0").rstrip(".")
