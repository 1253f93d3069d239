"""A changed tensor pair's numeric stats, kept in the hash cache (`stats/<key>.json`).

A warm diff finds both tensors' SHA256s in the hash cache without reading their bytes; with
the stats found here too it reads no tensor bytes at all. bench_startup.py's pair (8 changed
2048x2048 bf16 tensors, 2 cores, load ~2-3): computing their stats took 0.25-0.55 s of a
0.5-0.9 s warm diff; reading eight entries takes about 2 ms.

The key is a SHA256 over STATS_VERSION, both tensors' SHA256s, dtypes and shape, the head
layout and the experts count: everything tensor_stats's answer depends on. The entry is
trusted exactly as far as the SHA256s it is keyed by (HashCache's `private` rules, and
only where the diff trusts the cache: a Markdown card's evidence computes its stats from
the bytes). Its fields are checked like any file's: a value of the wrong type or out of
range makes the entry a miss (the stats are computed again), never an error.

Bump STATS_VERSION whenever tensor_stats would answer differently for the same bytes.
"""

from __future__ import annotations

import hashlib
import math

from surgeon.diff.stats import HeadLayout, HeadScan, TensorStats, scanned_layout
from surgeon.format.hashcache import HashCache, is_sha256
from surgeon.format.safetensors import TensorInfo

STATS_VERSION = 1


def stats_key(
    sha_b: str | None,
    sha_o: str | None,
    base: TensorInfo,
    other: TensorInfo,
    layout: HeadLayout | None,
    experts: int | None,
) -> str | None:
    """The entry's key, or None where a side has no SHA256 (nothing to key it by)."""
    if not (is_sha256(sha_b) and is_sha256(sha_o)):
        return None
    head = (layout.axis, layout.num_heads, layout.head_dim) if layout else None
    fields = (STATS_VERSION, sha_b, sha_o, base.dtype.name, other.dtype.name, list(base.shape), head, experts)
    return hashlib.sha256(repr(fields).encode()).hexdigest()


def load(
    cache: HashCache, key: str, base: TensorInfo, other: TensorInfo, layout: HeadLayout | None, experts: int | None
) -> tuple[TensorStats, HeadScan | None] | None:
    """The stats stored under `key`, or None if there are none or any field is out of place."""
    entry = cache.stats(key)
    if entry is None or entry.get("stats_version") != STATS_VERSION or entry.get("key") != key:
        return None
    stats = _stats(entry.get("stats"), base.numel, experts)
    scan = _scan(entry.get("heads"), scanned_layout(base, other, layout, experts))
    if stats is None or scan is False:
        return None
    return stats, scan if isinstance(scan, HeadScan) else None


def store(cache: HashCache, key: str, stats: TensorStats, scan: HeadScan | None) -> None:
    """Keep finite stats only (JSON has no inf or NaN; those tensors are rare and recomputed)."""
    numbers = (stats.max_abs_delta, stats.rel_frobenius, stats.cosine)
    if not all(v is None or math.isfinite(v) for v in numbers):
        return
    record = {
        "stats_version": STATS_VERSION,
        "key": key,
        "stats": {
            "max_abs_delta": stats.max_abs_delta,
            "rel_frobenius": stats.rel_frobenius,
            "cosine": stats.cosine,
            "elements_changed": stats.elements_changed,
            "experts_changed": stats.experts_changed,
        },
        "heads": None if scan is None else [scan.base_zero, scan.other_zero, scan.changed],
    }
    cache.store_stats(key, record)


def _number(value: object, low: float = 0.0, high: float = math.inf) -> bool:
    """A finite float in [low, high] (JSON gives int for a whole number: never for these)."""
    return isinstance(value, float) and math.isfinite(value) and low <= value <= high


def _stats(found: object, numel: int, experts: int | None) -> TensorStats | None:
    if not isinstance(found, dict):
        return None
    peak, rel, cosine = found.get("max_abs_delta"), found.get("rel_frobenius"), found.get("cosine")
    changed, changed_experts = found.get("elements_changed"), found.get("experts_changed")
    if not (peak is None or _number(peak)) or not (rel is None or _number(rel)):
        return None
    if not (cosine is None or _number(cosine, -1.0, 1.0)):
        return None
    if type(changed) is not int or not 0 <= changed <= numel:
        return None
    if changed_experts is not None and not _expert_list(changed_experts, experts):
        return None
    return TensorStats(peak, rel, cosine, changed / numel if numel else 0.0, changed, changed_experts)


def _expert_list(found: object, experts: int | None) -> bool:
    if not experts or not isinstance(found, list) or not all(type(e) is int for e in found):
        return False
    return found == sorted(set(found)) and all(0 <= e < experts for e in found)


def _scan(found: object, layout: HeadLayout | None) -> HeadScan | bool | None:
    """The head scan, None where tensor_stats makes none, False where the entry is wrong."""
    if layout is None:
        return None if found is None else False
    if not isinstance(found, list) or len(found) != 3:
        return False
    if not all(isinstance(flags, list) and len(flags) == layout.num_heads for flags in found):
        return False
    if not all(type(flag) is bool for flags in found for flag in flags):
        return False
    return HeadScan(layout, base_zero=found[0], other_zero=found[1], changed=found[2])
