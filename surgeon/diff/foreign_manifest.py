"""A `prune_manifest.json` that surgeon did not write: recognised, and its claims checked
against the bytes, never taken on trust.

The one foreign format recognised is the one the OmniMergeKit recipe
(`recipes/gemma4_31b/prune_local_heal.py`) writes beside its output. Its claims, as the
recipe writes them (read from the recipe's source, not guessed):

- `pruned_layers`: a list of `[layer, layer_type]` pairs (Python tuples dumped to JSON);
  plain layer numbers are accepted too.
- `keep_q_per_layer` / `keep_kv_per_layer`: `{"<layer>": [kept head numbers, sorted]}`. In
  mask mode the recipe zeroes the q_proj rows of the other q heads and its lstsq/LoRA heal
  writes zeros into their o_proj columns (`heal: noheal` leaves o_proj as it was, so the
  head still adds the mean of V: reported as not removed). `keep_kv_per_layer` lists every
  kv head unless kv heads were dropped (`drop_kv_groups`, or group-aware mode), whose
  k/v_proj rows are then zeroed. A count instead of a list ("7 heads kept") is accepted as
  the other plausible shape.
- `prune_mode` (`mask`, `group-aware`, `auto` with the outcome in `resolved_mode`): only mask
  mode keeps head positions, so only there can heads be checked against the base's rows.
- `canary_failed`: the recipe's own AR canary verdict.

The reference card's manifest lists 60 pruned layers while 4 were written: the layer check
below is the one that says so. The claims are about attention heads in the listed layers, so
any other tensor that differs from the base (an embedding, a norm, an MLP in a listed layer, a
tensor added or removed) is outside them and fails (`_check_unclaimed`), and so, in mask
mode, does any q/k/v head whose rows differ from the base's without being zeroed (only the
heal's o_proj refit may change a whole projection); the files beside the
weights are compared with the base's by verify (surgeon.recover.verify).

Everything read from the manifest is untrusted: strings go through `inert`, lists and dicts
are bounded, and layer numbers are compared against the layers the checkpoint has, never used
to size anything.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TypeGuard

from surgeon.diff.engine import DiffReport, TensorDiff
from surgeon.model.geometry import head_axis
from surgeon.model.names import few_ranges, layers_phrase
from surgeon.text import inert, layer_ranges

UNKNOWN = "prune_manifest.json was not written by surgeon and its format is unknown: none of its claims were checked"
NEEDS_BASE = "an OmniMergeKit manifest's claims can only be checked against the base: name the base"
RECIPE = "prune_manifest.json was written by the OmniMergeKit recipe, not surgeon"

# What identifies the recipe's manifest: `pruned_layers` and at least one of the others.
_OMK_SIGNATURE = ("keep_q_per_layer", "keep_kv_per_layer", "prune_mode", "canary_failed", "refit_stats")
# No model has this many layers or heads; a longer list is not a claim worth iterating.
MAX_ENTRIES = 1 << 16
HUGE = 10**9  # no layer or head index reaches it (surgeon.model.names: at most 9 digits)
_LAYER_KEY = re.compile(r"0|[1-9][0-9]{0,17}")
_PROJ_PART = {"q": "q_proj rows", "o": "o_proj columns", "k": "k_proj rows", "v": "v_proj rows"}
_PARTS = {"keep_q_per_layer": "q_proj rows and o_proj columns", "keep_kv_per_layer": "k_proj and v_proj rows"}
_GROUPS_SHOWN = 4  # per message: more distinct findings than this are counted, not listed


class _Malformed(Exception):
    """A manifest value of the wrong type or shape; its message names the field."""


@dataclass
class _Claims:
    pruned: set[int]
    keep_q: dict[int, list[int] | int]
    keep_kv: dict[int, list[int] | int]
    mode: str | None
    canary_failed: bool
    drop_kv_groups: bool
    first_kv_shared: int | None
    source: str | None


@dataclass
class _Findings:
    """Problems keyed by (claim field, kind); each holds {layer: detail}, so a problem that
    repeats over 60 layers is still one line."""

    problems: dict[tuple[str, str], dict[int, str]] = field(default_factory=dict)
    skipped: dict[str, set[int]] = field(default_factory=dict)  # why -> layers
    checked: dict[str, set[int]] = field(default_factory=dict)  # claim field -> layers
    untouched: dict[str, set[int]] = field(default_factory=dict)  # claim removes nothing, tensors as base

    def add(self, key: tuple[str, str], layer: int, detail: str = "") -> None:
        self.problems.setdefault(key, {})[layer] = detail


def is_omnimergekit_manifest(manifest: dict) -> bool:
    return isinstance(manifest, dict) and "pruned_layers" in manifest and any(key in manifest for key in _OMK_SIGNATURE)


def verify_foreign(manifest: dict, report, diff: DiffReport | None, base_given: bool) -> None:
    """Check a foreign manifest's claims against `diff` (base vs checkpoint, hashed, with
    head stats); add facts to report.checks, failures to report.discrepancies and
    warnings to report.notes. Never raises on what the manifest contains."""
    if not is_omnimergekit_manifest(manifest):
        report.discrepancies.append(UNKNOWN)
        return
    try:
        claims = _parse(manifest)
    except _Malformed as exc:
        report.discrepancies.append(
            f"prune_manifest.json (OmniMergeKit format) is malformed: {exc}: none of its claims were checked"
        )
        return
    report.notes.append(f"{RECIPE}: it records no SHA256s, so its claims are checked against the base only")
    if claims.canary_failed:
        report.notes.append("the manifest records that the canary failed (canary_failed: true)")
    if diff is None:
        named = f" (it names its source as {_quote(claims.source)})" if claims.source else ""
        report.discrepancies.append(NEEDS_BASE + named)
        return
    if not base_given:
        report.notes.append(
            f"no base given: the claims were checked against the manifest's source, {_quote(diff.base.source, 200)}"
        )
    changed = _check_layers(claims, diff, report)
    _check_unclaimed(claims, diff, report)
    _check_heads(claims, diff, report, changed)


# ---------- parsing: types and bounds, never trust ----------


def _parse(m: dict) -> _Claims:
    return _Claims(
        pruned=_pruned_layers(m.get("pruned_layers")),
        keep_q=_keep_map(m, "keep_q_per_layer"),
        keep_kv=_keep_map(m, "keep_kv_per_layer"),
        mode=_mode(m),
        canary_failed=bool(_optional(m, "canary_failed", bool)),
        drop_kv_groups=bool(_optional(m, "drop_kv_groups", bool)),
        first_kv_shared=_optional_index(m, "first_kv_shared_idx"),
        source=m.get("source") if isinstance(m.get("source"), str) else None,
    )


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _optional(m: dict, key: str, kind: type):
    value = m.get(key)
    if value is not None and not isinstance(value, kind):
        raise _Malformed(f"{key} is {_type(value)}, not {kind.__name__}")
    return value


def _optional_index(m: dict, key: str) -> int | None:
    value = m.get(key)
    if value is not None and not (_is_int(value) and value >= 0):
        raise _Malformed(f"{key} is {_type(value)}, not a layer number")
    return value


def _mode(m: dict) -> str | None:
    mode = _optional(m, "prune_mode", str)
    resolved = _optional(m, "resolved_mode", str)
    return resolved if mode == "auto" and resolved else mode  # auto records its outcome


def _pruned_layers(value: object) -> set[int]:
    if not isinstance(value, list):
        raise _Malformed(f"pruned_layers is {_type(value)}, not a list")
    _bounded("pruned_layers", value)
    layers = set()
    for entry in value:
        # The recipe appends (layer, layer_type) tuples; JSON makes them lists.
        number = entry[0] if isinstance(entry, list) and entry else entry
        if not (_is_int(number) and number >= 0):
            raise _Malformed(f"pruned_layers holds {_type(entry)}, not a layer number or [layer, type] pair")
        layers.add(number)
    return layers


def _keep_map(m: dict, key: str) -> dict[int, list[int] | int]:
    value = m.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _Malformed(f"{key} is {_type(value)}, not an object keyed by layer")
    _bounded(key, value)
    result = {}
    for layer_key, heads in value.items():
        if not (isinstance(layer_key, str) and _LAYER_KEY.fullmatch(layer_key)):
            raise _Malformed(f"{key} has the key {_quote(str(layer_key))}, which is not a layer number")
        result[int(layer_key)] = _heads(f"{key}[{layer_key}]", heads)
    return result


def _heads(where: str, value: object) -> list[int] | int:
    if _is_int(value) and value >= 0:
        return value  # a count of kept heads
    if not isinstance(value, list):
        raise _Malformed(f"{where} is {_type(value)}, not a list of head numbers or a count")
    _bounded(where, value)
    if not all(_is_int(h) and h >= 0 for h in value):
        bad = next(h for h in value if not (_is_int(h) and h >= 0))
        raise _Malformed(f"{where} holds {_type(bad)}, not a head number")
    return sorted(set(value))


def _bounded(where: str, value: list | dict) -> None:
    if len(value) > MAX_ENTRIES:
        raise _Malformed(f"{where} has {len(value)} entries, more than any model has layers or heads")


def _type(value: object) -> str:
    if value is None:
        return "null"
    if _is_int(value) and value < 0:
        return f"the negative number {value}"
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list", dict: "an object"}
    return names.get(type(value), type(value).__name__)


def _quote(text: str, limit: int = 60) -> str:
    return "'" + inert(text if len(text) <= limit else text[:limit] + "...") + "'"


# ---------- layers ----------


def _check_layers(claims: _Claims, diff: DiffReport, report) -> set[int]:
    """The layers the manifest lists as pruned differ from the base, and no others do."""
    present = set(diff.layer_numbers())
    named = claims.pruned | set(claims.keep_q) | set(claims.keep_kv)
    absent = sorted(n for n in named if n not in present)  # bounded by the manifest's size
    if absent:
        report.discrepancies.append(
            f"manifest names {_few_layers(absent)} that the model does not have "
            f"(its layers: {few_ranges(sorted(present)) or 'none'})"
        )
    claimed = sorted(claims.pruned & present)
    actual = diff.layers_changed()
    if claimed == actual:
        report.checks.append(
            f"the {len(claimed)} layers the OmniMergeKit manifest lists as pruned "
            f"({layer_ranges(claimed) or 'none'}) are exactly those whose weights differ from base"
        )
        return set(actual)
    identical = sorted(set(claimed) - set(actual))
    unlisted = sorted(set(actual) - set(claimed))
    text = (
        f"manifest lists {len(claimed)} pruned layers ({layer_ranges(claimed) or 'none'}); "
        f"weights differ from base in {len(actual)} ({layer_ranges(actual) or 'none'})"
    )
    if identical:
        text += f"; {layer_ranges(identical)} {'is' if len(identical) == 1 else 'are'} byte-identical to base"
    if unlisted:
        text += f"; {layer_ranges(unlisted)} {'differs' if len(unlisted) == 1 else 'differ'} but not listed"
    report.discrepancies.append(text)
    return set(actual)


def _check_unclaimed(claims: _Claims, diff: DiffReport, report) -> None:
    """Every tensor that differs from the base outside the claims: what is not an attention
    projection of a listed layer. A changed layer the manifest does not list is the layer
    line's finding already; its tensors are not named again here."""
    unclaimed = []
    for t in diff.tensors:
        in_stack = t.stack == diff.main_stack and t.layer is not None
        if t.status == "identical" or (in_stack and t.layer not in claims.pruned):
            continue
        axis = head_axis(t.family) if in_stack and "self_attn" in t.family else None
        if axis is None:
            unclaimed.append(f"{inert(t.name)} ({t.status})")
        elif (why := _unclaimed_heads(claims, t, axis[1])) is not None:
            unclaimed.append(f"{inert(t.name)} ({why})")
    if unclaimed:
        shown = ", ".join(unclaimed[:_GROUPS_SHOWN]) + (
            f", ... and {len(unclaimed) - _GROUPS_SHOWN} more" if len(unclaimed) > _GROUPS_SHOWN else ""
        )
        report.discrepancies.append(
            f"{len(unclaimed)} tensor{'s' if len(unclaimed) > 1 else ''} outside the manifest's claims "
            f"(the attention heads of the layers it lists) {'differ' if len(unclaimed) > 1 else 'differs'} "
            f"from base: {shown}"
        )
    else:
        report.checks.append("no tensor outside the manifest's claims differs from base")


def _unclaimed_heads(claims: _Claims, t: TensorDiff, proj: str) -> str | None:
    """What in a listed layer's attention projection the claims do not cover, or None.

    In mask mode the recipe only zeroes: the q_proj rows of the heads it removes (and the
    k/v_proj rows of dropped kv groups); every other row stays the base's bytes. Its heal
    (lstsq/LoRA) refits the whole o_proj, so o_proj may differ anywhere. A q/k/v head whose
    bytes differ without being zeroed is a change no claim makes (the per-head view is the
    diff's own numpy comparison of the decoded bytes, as for surgeon's manifests). In the
    reshaping modes heads move, so rows cannot be compared with the base's."""
    if claims.mode not in (None, "mask"):
        return None
    if t.status != "changed":
        return t.status  # mask mode keeps every shape and dtype: added, removed or retyped is no claim
    if proj == "o":
        return None
    if t.heads is None:
        return "changed; its heads could not be told apart, so the change is not shown to be a head removal"
    edited = t.heads.heads_with("changed")
    if not edited:
        return None
    return f"{_heads_text(edited)} changed without being zeroed"


def _few_layers(numbers: list[int]) -> str:
    """`layers 8, 12` or `layer 9 and 2 numbers of 10 or more digits`: no layer index has
    more than 9 digits, and a 4000-digit number is not worth printing."""
    small = [n for n in numbers if n < HUGE]
    text = f"layer{'s' if len(small) > 1 else ''} {few_ranges(small)}" if small else ""
    huge = len(numbers) - len(small)
    if huge:
        text += (" and " if text else "") + f"{huge} layer number{'s' if huge > 1 else ''} of 10 or more digits"
    return text


# ---------- heads ----------


def _check_heads(claims: _Claims, diff: DiffReport, report, changed: set[int]) -> None:
    if claims.mode not in (None, "mask"):
        report.notes.append(
            f"head claims not checked: prune_mode {_quote(claims.mode)} is not mask mode, so heads may have been "
            "moved or removed by a reshape and no longer line up with the base's rows and columns"
        )
        return
    # A claim on a layer that is byte-identical to base is already the layer line's finding.
    layers = sorted(n for n in set(claims.keep_q) | set(claims.keep_kv) if n in changed)
    projections = _projections(diff, set(layers))
    findings = _Findings()
    for layer in layers:
        projs = projections.get(layer, {})
        head_dim = next((t.heads.head_dim for t in projs.values() if t.heads is not None), None)
        n_q = _num_heads(projs, ("q", "o"), head_dim)
        if layer in claims.keep_q:
            _check_claim(findings, "keep_q_per_layer", layer, claims.keep_q[layer], projs, ("q", "o"), n_q)
        if layer in claims.keep_kv and not _kv_shared(claims, layer):
            n_kv = _num_heads(projs, ("k", "v"), head_dim)
            keep = _expected_kv(claims, layer, n_q, n_kv)
            _check_claim(findings, "keep_kv_per_layer", layer, keep, projs, ("k", "v"), n_kv)
    _report_heads(findings, report)


def _projections(diff: DiffReport, layers: set[int]) -> dict[int, dict[str, TensorDiff]]:
    """{layer: {"q"/"k"/"v"/"o": its diff}} for the main stack's self-attention projections."""
    result: dict[int, dict[str, TensorDiff]] = {}
    for t in diff.tensors:
        if t.stack != diff.main_stack or t.layer not in layers or "self_attn" not in t.family:
            continue
        axis = head_axis(t.family)
        if axis is not None:
            result.setdefault(t.layer, {})[axis[1]] = t
    return result


def _num_heads(projs: dict[str, TensorDiff], which: tuple[str, str], head_dim: int | None) -> int | None:
    """From a head scan where one exists, else from the shape and the layer's head size
    (an unchanged tensor has no scan, but its shape says how many heads it holds)."""
    for proj in which:
        t = projs.get(proj)
        if t is not None and t.heads is not None:
            return t.heads.num_heads
    for proj in which:
        t = projs.get(proj)
        side = t.other if t is not None else None
        if head_dim and side is not None and len(side.shape) == 2:
            size = side.shape[1] if proj == "o" else side.shape[0]
            if size % head_dim == 0:
                return size // head_dim
    return None


def _kv_shared(claims: _Claims, layer: int) -> bool:
    """Layers that reuse an earlier layer's KV cache: the recipe leaves their k/v untouched."""
    return claims.first_kv_shared is not None and layer >= claims.first_kv_shared


def _expected_kv(claims: _Claims, layer: int, n_q: int | None, n_kv: int | None) -> list[int] | int:
    """Mask mode with drop_kv_groups zeroes every kv head none of whose q heads is kept,
    while keep_kv_per_layer still lists all of them: the recipe's own rule decides."""
    keep_kv, keep_q = claims.keep_kv[layer], claims.keep_q.get(layer)
    if not (claims.drop_kv_groups and isinstance(keep_kv, list) and isinstance(keep_q, list) and n_q and n_kv):
        return keep_kv
    group = max(1, n_q // n_kv)
    return [g for g in keep_kv if g in {h // group for h in keep_q}]


def _check_claim(findings, fieldname, layer, keep, projs, which, num_heads) -> None:
    if isinstance(keep, list) and num_heads is not None and keep and keep[-1] >= num_heads:
        outside = [h for h in keep if h >= num_heads]
        findings.add((fieldname, "outside"), layer, f"{_heads_text(outside)} (it has {num_heads})")
        return
    per_kind: dict[str, dict[str, list[int] | str]] = {}
    compared = untouched = False
    for proj in which:
        t = projs.get(proj)
        if t is None:
            continue  # no such projection here (Gemma 4 full-attention layers have no v_proj)
        if t.status in ("added", "removed", "retyped"):
            findings.skipped.setdefault(f"{proj}_proj changed shape or dtype", set()).add(layer)
        elif t.status == "identical":
            if _removes_heads(keep, num_heads):
                per_kind.setdefault("removed_live", {})[proj] = "byte-identical to base"
            untouched = True
        elif t.heads is None:
            findings.skipped.setdefault(f"the head layout of {proj}_proj is unknown", set()).add(layer)
        else:
            _compare(per_kind, proj, keep, t.heads.other_zero)
            compared = True
    for kind, by_proj in per_kind.items():
        findings.add((fieldname, kind), layer, _detail(by_proj))
    if per_kind:
        return
    if compared:
        findings.checked.setdefault(fieldname, set()).add(layer)
    elif untouched:
        findings.untouched.setdefault(fieldname, set()).add(layer)


def _removes_heads(keep: list[int] | int, num_heads: int | None) -> bool:
    """Whether the claim removes any head; unknown counts as yes (the recipe always does)."""
    if num_heads is None:
        return True
    return (len(keep) if isinstance(keep, list) else keep) < num_heads


def _compare(per_kind: dict, proj: str, keep: list[int] | int, zero: list[bool]) -> None:
    if isinstance(keep, int):
        live = sum(1 for z in zero if not z)
        if live != keep:
            per_kind.setdefault("count", {})[proj] = f"{keep} claimed, {live} non-zero"
        return
    outside = [h for h in keep if h >= len(zero)]
    if outside:  # this projection has fewer heads than its sibling said
        per_kind.setdefault("outside", {})[proj] = outside
    kept = set(keep)
    kept_zero = [h for h in keep if h < len(zero) and zero[h]]
    removed_live = [h for h, z in enumerate(zero) if h not in kept and not z]
    if kept_zero:
        per_kind.setdefault("kept_zero", {})[proj] = kept_zero
    if removed_live:
        per_kind.setdefault("removed_live", {})[proj] = removed_live


def _detail(by_proj: dict[str, list[int] | str]) -> str:
    """`head 2 (q_proj rows, o_proj columns)`: projections with the same finding share it."""
    same: dict[str, tuple[list[int] | str, list[str]]] = {}
    for proj, value in by_proj.items():
        same.setdefault(repr(value), (value, []))[1].append(_PROJ_PART[proj])
    parts = []
    for value, where in same.values():
        joined = ", ".join(where)
        parts.append(f"{joined}: {value}" if isinstance(value, str) else f"{_heads_text(value)} ({joined})")
    return "; ".join(parts)


def _heads_text(value: list[int]) -> str:
    shown = ", ".join(str(h) if h < HUGE else "a number of 10 or more digits" for h in value[:8]) + (
        f", ... {len(value) - 8} more" if len(value) > 8 else ""
    )
    return f"head{'s' if len(value) > 1 else ''} {shown}"


_MESSAGES = {
    "outside": "{field} names heads the layer does not have",
    "kept_zero": "{field} lists heads as kept that are all zero",
    "removed_live": "heads {field} leaves out (removed) are not zeroed",
    "count": "{field} counts kept heads that the weights do not have",
}


def _report_heads(findings: _Findings, report) -> None:
    for (fieldname, kind), by_layer in sorted(findings.problems.items()):
        prefix = _MESSAGES[kind].format(field=fieldname)
        report.discrepancies.append(f"{prefix}: {_grouped(by_layer)}")
    for why, layers in sorted(findings.skipped.items()):
        report.notes.append(f"head claims not checked in {layers_phrase(layers)}: {why}")
    for fieldname, layers in sorted(findings.checked.items()):
        report.checks.append(
            f"{fieldname} holds in {layers_phrase(layers)}: kept heads are non-zero and the others zero "
            f"in {_PARTS[fieldname]}"
        )
    for fieldname, layers in sorted(findings.untouched.items()):
        report.checks.append(
            f"{fieldname} keeps every head in {layers_phrase(layers)}, where {_PARTS[fieldname]} "
            "are byte-identical to base"
        )


def _grouped(by_layer: dict[int, str]) -> str:
    """`layers 0-3: head 2 (q_proj rows); layer 6: heads 1, 4 (q_proj rows)`."""
    groups: dict[str, list[int]] = {}
    for layer, detail in sorted(by_layer.items()):
        groups.setdefault(detail, []).append(layer)
    parts = [f"{layers_phrase(layers)}" + (f": {detail}" if detail else "") for detail, layers in groups.items()]
    more = len(parts) - _GROUPS_SHOWN
    return "; ".join(parts[:_GROUPS_SHOWN]) + (f"; ... and {more} more" if more > 0 else "")
