"""Compare two checkpoints tensor by tensor: statuses, hashes, stats, heads, shards, layers."""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

from threadpoolctl import threadpool_limits

from surgeon.diff import stats_cache
from surgeon.diff.bytes import Pair, compare_bytes
from surgeon.diff.reshape import ReshapeFindings, Sliced, find_reshape
from surgeon.diff.reshape_ffn import find_channel_slices
from surgeon.diff.reshape_rows import KeptHeads, compare_cols, compare_rows, readable
from surgeon.diff.stats import HeadLayout, HeadScan, TensorStats, tensor_stats, zero_heads
from surgeon.diff.statuses import FileStatus, ShardStatus, TensorStatus
from surgeon.format.checkpoint import Checkpoint, public_name, side_files
from surgeon.format.hashcache import HashCache
from surgeon.format.hashing import bytes_to_hash, default_workers, file_sha256, hash_shards
from surgeon.format.safetensors import ShardHeader, TensorInfo
from surgeon.model.geometry import AttentionGeometry, geometry_by_layer, head_axis
from surgeon.model.names import fused_experts, main_stack, parse_name
from surgeon.parallel import check_stop, map_cancellable
from surgeon.progress import NoProgress, ProgressSink


@dataclass
class TensorSide:
    dtype: str
    shape: list[int]
    shard: str
    sha256: str | None


@dataclass
class HeadReport:
    projection: str  # q_proj, k_proj, v_proj, o_proj
    axis: str  # rows or cols
    num_heads: int
    head_dim: int
    statuses: list[str]
    other_zero: list[bool]  # heads that are all zeros in OTHER, whatever BASE had
    uniform_attention: list[int] = field(default_factory=list)

    def heads_with(self, status: str) -> list[int]:
        return [i for i, s in enumerate(self.statuses) if s == status]


@dataclass
class TensorDiff:
    name: str
    status: TensorStatus
    base: TensorSide | None
    other: TensorSide | None
    stack: str | None
    layer: int | None
    family: str
    stats: TensorStats | None = None
    heads: HeadReport | None = None
    # an MLP's gate/up_proj rows or down_proj columns, one "head" of width 1 per channel
    channels: HeadReport | None = None


@dataclass
class ShardDiff:
    name: str
    status: ShardStatus
    sha256: list[str | None]
    size: list[int | None]
    tensors: int
    tensors_differing: int
    header_differences: list[str]
    # Where each sha256 came from: "bytes", "cache" (hashed earlier, same stat key) or
    # "hub-blob-name" (a hub cache blob's name, not hashed: not evidence); None: not hashed.
    sha256_source: list[str | None] = field(default_factory=lambda: [None, None])
    # OTHER's file where its name is not `name` (BASE's): two single files named on the command
    # line are one pair whatever their names; None when both sides share the name
    other_name: str | None = None

    @property
    def label(self) -> str:
        """The shard as a report names it: `a.safetensors → b.safetensors` for a renamed pair."""
        return self.name if self.other_name is None else f"{self.name} → {self.other_name}"


@dataclass
class FileDiff:
    """A non-weight file beside the shards (config, index, tokenizer)."""

    name: str
    status: FileStatus
    sha256: list[str | None]


@dataclass
class SideSummary:
    source: str
    path: str
    revision: str | None
    tensors: int
    shards: int
    bytes: int
    name: str  # as a model card names it, with no local path (format.checkpoint.public_name)
    ignored: list[str] = field(default_factory=list)  # weight files transformers would not load: not read
    note: str | None = None  # why, in one line (Checkpoint.note)


@dataclass
class DiffReport:
    base: SideSummary
    other: SideSummary
    hashed: bool
    tensors: list[TensorDiff]
    shards: list[ShardDiff]
    files: list[FileDiff]
    main_stack: str | None
    num_layers: int  # distinct layer numbers in the main stack (max+1 only when they are 0..n-1)
    reshape: ReshapeFindings | None = None  # OTHER's attention lost whole heads (diff/reshape.py)

    def count(self, status: str) -> int:
        return sum(1 for t in self.tensors if t.status == status)

    @property
    def identical(self) -> bool:
        parts = (self.tensors, self.shards, self.files)
        return all(item.status == "identical" for part in parts for item in part)

    def layers_changed(self, stack: str | None = None) -> list[int]:
        stack = stack or self.main_stack
        return sorted(
            {t.layer for t in self.tensors if t.stack == stack and t.layer is not None and t.status != "identical"}
        )

    def layer_numbers(self, stack: str | None = None) -> list[int]:
        """The layers the stack has, sparse ones included: a list as long as the distinct
        numbers the tensors carry, never one slot per number up to the largest."""
        return _layer_numbers(self.tensors, stack or self.main_stack)


@dataclass(frozen=True)
class DiffOptions:
    hash: bool = True
    cache_dir: Path | None = None  # None: no persistent cache
    stats: bool = True
    workers: int | None = None
    trust_cache: bool = True  # a stat-keyed cache entry may stand for a file's bytes
    trust_blob_names: bool = True  # a real hub cache blob's name may stand for its SHA256
    files: bool = True  # compare the side files (verify checks them against its manifest instead)


def diff_checkpoints(
    base: Checkpoint,
    other: Checkpoint,
    options: DiffOptions = DiffOptions(),
    *,
    progress: ProgressSink | None = None,
    cancel: threading.Event | None = None,
) -> DiffReport:
    progress = progress or NoProgress()
    if options.hash:
        sha_b, sha_o, shard_sha = _hash_both(base, other, options, progress, cancel)
        equal = {n: sha_b[n] == sha_o[n] for n in _same_layout(base, other)}
    else:
        sha_b, sha_o, shard_sha = {}, {}, ({}, {})
        equal = _bytes_equal(base, other, options, progress, cancel)
    tensors = _tensor_statuses(base, other, sha_b, sha_o, equal)
    reshape = _add_reshape(base, other, tensors, options.stats, cancel)
    _add_channel_reshape(base, other, tensors, options.stats, cancel)
    if options.stats:
        _add_stats(base, other, tensors, options, cancel)
    return DiffReport(
        base=_side(base),
        other=_side(other),
        hashed=options.hash,
        tensors=tensors,
        shards=_shard_diffs(base, other, tensors, shard_sha),
        files=_file_diffs(base, other) if options.files else [],
        main_stack=_main_stack(tensors),
        num_layers=_num_layers(tensors),
        reshape=reshape,
    )


def _side(ckpt: Checkpoint) -> SideSummary:
    return SideSummary(
        ckpt.source,
        str(ckpt.root),
        ckpt.revision,
        len(ckpt.tensors),
        len(ckpt.shards),
        ckpt.total_bytes,
        public_name(ckpt),
        list(ckpt.ignored),
        ckpt.note,
    )


def _same_layout(base: Checkpoint, other: Checkpoint) -> list[str]:
    """Tensors in both checkpoints with the same dtype and shape: their bytes decide."""
    return [
        name
        for name, info in base.tensors.items()
        if (o := other.tensors.get(name)) is not None and o.dtype == info.dtype and o.shape == info.shape
    ]


def _hash_both(base, other, options, progress, cancel):
    cache = HashCache(options.cache_dir)
    shards = list(base.shards.values()) + list(other.shards.values())
    trust = {"trust_cache": options.trust_cache, "trust_blob_names": options.trust_blob_names}
    progress.start("hashing", bytes_to_hash(shards, cache, **trust))
    try:
        hashes = hash_shards(shards, cache, progress=progress.advance, cancel=cancel, workers=options.workers, **trust)
    finally:
        progress.stop()

    def per_tensor(ckpt: Checkpoint) -> dict[str, str]:
        out = {}
        for shard in ckpt.shards.values():
            out.update(hashes[os.path.realpath(shard.path)].tensors)
        return out

    def per_shard(ckpt: Checkpoint) -> dict[str, tuple[str, str]]:
        found = {n: hashes[os.path.realpath(s.path)] for n, s in ckpt.shards.items()}
        return {n: (h.file_sha256, h.source) for n, h in found.items()}

    return per_tensor(base), per_tensor(other), (per_shard(base), per_shard(other))


def _bytes_equal(base, other, options, progress, cancel) -> dict[str, bool]:
    pairs = [
        Pair(
            n,
            base.shard_path(base.tensors[n].file),
            base.tensors[n],
            other.shard_path(other.tensors[n].file),
            other.tensors[n],
        )
        for n in _same_layout(base, other)
    ]
    progress.start("comparing", sum(p.base.nbytes for p in pairs))
    try:
        return compare_bytes(pairs, progress.advance, cancel, options.workers)
    finally:
        progress.stop()


def _tensor_statuses(base, other, sha_b, sha_o, equal) -> list[TensorDiff]:
    names = list(base.tensors) + [n for n in other.tensors if n not in base.tensors]
    result = []
    for name in sorted(names, key=natural_key):
        b, o = base.tensors.get(name), other.tensors.get(name)
        status: TensorStatus
        if b is None:
            status = "added"
        elif o is None:
            status = "removed"
        elif name not in equal:
            status = "retyped"
        else:
            status = "identical" if equal[name] else "changed"
        parsed = parse_name(name)
        result.append(
            TensorDiff(
                name,
                status,
                _tensor_side(b, sha_b.get(name)),
                _tensor_side(o, sha_o.get(name)),
                parsed.stack,
                parsed.layer,
                parsed.family,
            )
        )
    return result


_DIGITS = re.compile("([0-9]+)")


def natural_key(name: str) -> tuple:
    """The one sort key for tensor, shard and file names (the CLI, JSON and the TUI use it):
    layer 2 before layer 10, expert 2 before expert 10. Names sort by stack, layer number,
    then the rest with digit runs compared as numbers; the name itself breaks ties (`01`, `1`).
    Not cached: ~700 B a key (45 MB for 64k names, measured); a key costs 5-20 us on the
    shared 2-core dev box, so a caller that sorts 100k names often should keep the keys."""
    parsed = parse_name(name)
    layer = parsed.layer if parsed.layer is not None else -1
    return (_natural(parsed.stack or ""), layer, _natural(parsed.family), name)


def _natural(text: str) -> tuple:
    """Digit runs as (length, digits) without leading zeros: numeric order without int(),
    which refuses runs over 4300 digits (names are data from files)."""
    parts: list = _DIGITS.split(text)
    parts[1::2] = [(len(d), d) for d in [p.lstrip("0") for p in parts[1::2]]]
    return tuple(parts)


def _tensor_side(info: TensorInfo | None, sha: str | None) -> TensorSide | None:
    if info is None:
        return None
    return TensorSide(info.dtype.name, list(info.shape), info.file, sha)


def _geometry(base: Checkpoint, other: Checkpoint) -> dict[tuple[str, int], AttentionGeometry]:
    config = other.config if other.config is not None else base.config
    return geometry_by_layer(config, other.tensors)


_MLP_PROJ = re.compile(r"(?:^|\.)mlp\.(gate|up|down)_proj\.weight$")


def channel_layout(family: str, shape) -> tuple[str, HeadLayout] | None:
    """For a dense MLP's gate/up/down_proj, its channels as heads of one row (gate, up) or
    one column (down): FFN pruning zeroes whole channels, and the head scan finds them."""
    match = _MLP_PROJ.search(family)
    if match is None or len(shape) != 2 or "experts" in family:
        return None
    down = match[1] == "down"
    return f"{match[1]}_proj", HeadLayout("cols" if down else "rows", shape[1] if down else shape[0], 1)


def _layout(diff: TensorDiff, geometry) -> tuple[str, HeadLayout] | None:
    floats = diff.base is not None and diff.base.dtype.startswith(("F", "BF"))  # not a packed quant's bytes
    if floats and diff.base is not None and (channels := channel_layout(diff.family, diff.base.shape)) is not None:
        return channels
    axis = head_axis(diff.family)
    geo = geometry.get((diff.stack, diff.layer)) if diff.stack is not None else None
    if axis is None or geo is None:
        return None
    side, proj = axis
    heads = geo.num_heads if proj in ("q", "o") else geo.num_kv_heads
    return (f"{proj}_proj", HeadLayout(side, heads, geo.head_dim)) if heads else None


_CHANNEL_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")


def _add_stats(base, other, tensors: list[TensorDiff], options: DiffOptions, cancel) -> None:
    geometry = _geometry(base, other)
    todo = [t for t in tensors if _has_stats(t, base, other)]
    # Stats keyed by both tensors' SHA256s (stats_cache.py): only where those came from the
    # hash cache's trust in the first place, never for a card's evidence (trust_cache off)
    cache = HashCache(options.cache_dir) if options.hash and options.cache_dir is not None else None

    def work(diff: TensorDiff, should_stop) -> None:
        check_stop(should_stop)
        layout = _layout(diff, geometry)
        b, o = base.tensors[diff.name], other.tensors[diff.name]
        experts = fused_experts(diff.family, b.shape)  # which experts changed, from the same pass
        head = layout[1] if layout else None
        shas = (diff.base.sha256 if diff.base else None, diff.other.sha256 if diff.other else None)
        key = stats_cache.stats_key(*shas, b, o, head, experts) if cache else None
        found = stats_cache.load(cache, key, b, o, head, experts) if cache and key and options.trust_cache else None
        if found is None:
            found = tensor_stats(base.shard_path(b.file), b, other.shard_path(o.file), o, head, experts)
            if cache and key:
                stats_cache.store(cache, key, *found)
        stats, scan = found
        diff.stats = stats
        if scan is not None and layout is not None:  # there is a scan only with a layout
            if layout[0] in _CHANNEL_PROJECTIONS:
                diff.channels = _head_report(layout[0], scan)
            else:
                diff.heads = _head_report(layout[0], scan)

    # Tensors are already spread over the cores: a multi-threaded BLAS inside each np.dot
    # would only oversubscribe them (measured: 1.6x slower on 2 cores).
    with threadpool_limits(limits=1, user_api="blas"):
        map_cancellable(work, todo, options.workers or default_workers(), cancel)
    _flag_uniform_attention(other, tensors, geometry)


def _add_reshape(base, other, tensors: list[TensorDiff], stats: bool, cancel) -> ReshapeFindings | None:
    """Mark the projections a reshape sliced `reshaped`, and compare each kept head with
    BASE's head it stands for (heads, and stats of the kept heads when `stats`). Runs with
    or without --no-stats: which heads went is what the status means."""
    findings = find_reshape(base, other, tensors)
    if findings is None:
        return None
    for diff in tensors:
        sliced = findings.tensors.get(diff.name)
        if sliced is None or diff.status != "retyped":
            continue
        # which heads OTHER's are may not be established: the layer's note then says so
        kept = _mark_reshaped(base, other, diff, (sliced.axis, sliced.kept, sliced.layer.head_dim), stats, cancel)
        if kept is not None:
            diff.heads = _reshaped_heads(sliced, kept)
    return findings


def _add_channel_reshape(base, other, tensors: list[TensorDiff], stats: bool, cancel) -> None:
    """Mark the MLP projections a reshape sliced channels out of `reshaped`, and compare each
    kept channel with BASE's channel it stands for (diff.channels, and stats of the kept ones)."""
    found = find_channel_slices(base, other, tensors)
    for diff in tensors:
        sliced = found.get(diff.name)
        if sliced is None or diff.status != "retyped":
            continue
        kept = _mark_reshaped(base, other, diff, (sliced.axis, sliced.kept, 1), stats, cancel)
        if kept is not None:
            diff.channels = _kept_report(sliced.projection, sliced.axis, sliced.width, sliced.kept or [], kept)


def _mark_reshaped(base, other, diff: TensorDiff, slicing: tuple, stats: bool, cancel) -> KeptHeads | None:
    """Mark `diff` reshaped and compare OTHER's kept heads or channels (`slicing`: the axis,
    BASE's head of each of OTHER's, and the head size) with BASE's, the stats of the kept
    ones going to diff.stats; None where which are kept is not established."""
    axis, kept, dim = slicing
    check_stop(cancel.is_set if cancel is not None else None)
    diff.status = "reshaped"
    b, o = base.tensors[diff.name], other.tensors[diff.name]
    if kept is None or not (readable(b) and readable(o)):
        return None
    compare = compare_cols if axis == "cols" else compare_rows
    found = compare((base.shard_path(b.file), other.shard_path(o.file)), (b, o), kept, dim, stats)
    diff.stats = found.stats
    return found


def _reshaped_heads(sliced: Sliced, kept: KeptHeads) -> HeadReport:
    return _kept_report(
        sliced.projection, sliced.axis, sliced.num_heads, sliced.kept or [], kept, sliced.layer.head_dim
    )


def _kept_report(projection: str, axis: str, count: int, positions: list[int], kept: KeptHeads, dim: int = 1):
    """The per-head (or per-channel) view over BASE's: `removed` where OTHER has no such
    head, else as for a same-shape pair (zeroed, changed, unchanged)."""
    statuses = ["removed"] * count
    other_zero = [False] * count  # a removed head has no values in OTHER
    for position, head in enumerate(positions):
        zeroed = kept.other_zero[position] and not kept.base_zero[position]
        statuses[head] = "zeroed" if zeroed else "changed" if kept.changed[position] else "unchanged"
        other_zero[head] = kept.other_zero[position]
    return HeadReport(projection, axis, count, dim, statuses, other_zero)


def _has_stats(diff: TensorDiff, base: Checkpoint, other: Checkpoint) -> bool:
    """Changed numeric tensors, and retyped ones whose shape stayed (bf16 -> f16: "how
    much did the conversion lose" is the usual question)."""
    if diff.status not in ("changed", "retyped") or diff.base is None or diff.other is None:
        return False
    b, o = base.tensors[diff.name], other.tensors[diff.name]
    return b.dtype.numeric and o.dtype.numeric and b.shape == o.shape


def _head_report(projection: str, scan: HeadScan) -> HeadReport:
    layout = scan.layout
    return HeadReport(projection, layout.axis, layout.num_heads, layout.head_dim, scan.statuses(), scan.other_zero)


def _flag_uniform_attention(other: Checkpoint, tensors: list[TensorDiff], geometry) -> None:
    """A head whose q_proj rows are zero but whose o_proj columns are not still attends
    (uniformly) and adds the mean of V: it is not removed. Flag it on the q_proj entry."""
    by_layer: dict[tuple[str | None, int | None, str], TensorDiff] = {
        (t.stack, t.layer, t.family): t for t in tensors if t.layer is not None
    }
    for diff in tensors:
        if diff.heads is None or diff.heads.projection != "q_proj":
            continue
        q_zero = [s == "zeroed" for s in diff.heads.statuses]
        if not any(q_zero):
            continue
        o_family = diff.family.replace("q_proj", "o_proj")
        o_diff = by_layer.get((diff.stack, diff.layer, o_family))
        if o_diff is None or o_diff.status in ("removed", "retyped"):
            continue
        o_zero = _o_zero_heads(other, o_diff, geometry)
        if o_zero is None or len(o_zero) != len(q_zero):
            continue
        diff.heads.uniform_attention = [h for h, (q, o) in enumerate(zip(q_zero, o_zero, strict=True)) if q and not o]


def _o_zero_heads(other: Checkpoint, o_diff: TensorDiff, geometry) -> list[bool] | None:
    if o_diff.heads is not None:
        return o_diff.heads.other_zero
    layout = _layout(o_diff, geometry)
    if layout is None:
        return None
    info = other.tensors[o_diff.name]
    return zero_heads(other.shard_path(info.file), info, layout[1])


def _shard_pairs(base: Checkpoint, other: Checkpoint) -> list[tuple[str | None, str | None]]:
    """Which shard file of BASE is compared with which of OTHER: the same name, or None where
    a side lacks it; two single .safetensors files named on the command line are one pair
    whatever their names (`diff a.safetensors b.safetensors` compares a with b)."""
    if base.file is not None and other.file is not None:
        return [(base.file, other.file)]
    names = sorted(set(base.shards) | set(other.shards), key=natural_key)
    return [(n if n in base.shards else None, n if n in other.shards else None) for n in names]


def _shard_diffs(base, other, tensors: list[TensorDiff], shard_sha) -> list[ShardDiff]:
    status_of = {t.name: t.status for t in tensors}
    sha_b, sha_o = shard_sha
    result = []
    for base_name, other_name in _shard_pairs(base, other):
        name = base_name or other_name or ""  # one of them is set
        renamed = other_name if base_name is not None and other_name not in (None, base_name) else None
        b, o = base.shards.get(base_name), other.shards.get(other_name)
        found = [sha_b.get(base_name, (None, None)), sha_o.get(other_name, (None, None))]
        sha, source = [found[0][0], found[1][0]], [found[0][1], found[1][1]]
        size = [b.file_size if b else None, o.file_size if o else None]
        status: ShardStatus
        if b is None or o is None:
            status = "added" if b is None else "removed"
            count = len((o or b).tensors)
            result.append(ShardDiff(name, status, sha, size, count, count, [], source))
            continue
        names = set(b.tensors) | set(o.tensors)  # the count covers removed tensors too: never "2 of 1"
        differing = sum(1 for n in names if status_of[n] != "identical")
        same_set = b.tensors.keys() == o.tensors.keys()
        header_diff = header_differences(b, o)
        if differing or not same_set:
            status = "changed"
        elif sha[0] is not None:
            status = "identical" if sha[0] == sha[1] else "header-only"
        else:
            status = "identical" if not header_diff else "header-only"
        result.append(ShardDiff(name, status, sha, size, len(names), differing, header_diff, source, renamed))
    return result


def header_differences(base: ShardHeader, other: ShardHeader) -> list[str]:
    """What differs between two shard headers, in words: metadata keys, layout, padding."""
    if base.header_sha256 == other.header_sha256:
        return []
    found = []
    meta_b, meta_o = base.metadata or {}, other.metadata or {}
    for key in sorted(set(meta_b) | set(meta_o)):
        if key not in meta_b:
            found.append(f"__metadata__.{key} added")
        elif key not in meta_o:
            found.append(f"__metadata__.{key} removed")
        elif meta_b[key] != meta_o[key]:
            found.append(f"__metadata__.{key} changed")
    common = [n for n in base.tensors if n in other.tensors]
    if [n for n in other.tensors if n in base.tensors] != common:
        found.append("tensor order")
    if any(_relative(base, n) != _relative(other, n) for n in common):
        found.append("data_offsets")
    if any(
        base.tensors[n].dtype != other.tensors[n].dtype or base.tensors[n].shape != other.tensors[n].shape
        for n in common
    ):
        found.append("dtype/shape")
    if base.tensors.keys() != other.tensors.keys():
        found.append("tensor names")
    if not found:
        found.append(f"header bytes ({base.header_len} vs {other.header_len} bytes: spacing or padding)")
    return found


def _relative(shard: ShardHeader, name: str) -> tuple[int, int]:
    info = shard.tensors[name]
    return info.start - shard.data_start, info.end - shard.data_start


def _file_diffs(base: Checkpoint, other: Checkpoint) -> list[FileDiff]:
    """Config, index and tokenizer files: compared by SHA256 (they are small). None where a
    side is a single .safetensors file: that compares weights, not the folders they sit in."""
    if base.file is not None or other.file is not None:
        return []
    names_b, names_o = side_files(base), side_files(other)  # the rule diff --download also applies
    result = []
    for name in sorted(set(names_b) | set(names_o), key=natural_key):
        sha = [
            file_sha256(base.root / name) if name in names_b else None,
            file_sha256(other.root / name) if name in names_o else None,
        ]
        status: FileStatus
        if sha[0] is None or sha[1] is None:
            status = "added" if sha[0] is None else "removed"
        else:
            status = "identical" if sha[0] == sha[1] else "changed"
        result.append(FileDiff(name, status, sha))
    return result


def _main_stack(tensors: list[TensorDiff]) -> str | None:
    return main_stack(t.stack for t in tensors)


def _layer_numbers(tensors: list[TensorDiff], stack: str | None) -> list[int]:
    return sorted({t.layer for t in tensors if t.stack == stack and t.layer is not None})


def _num_layers(tensors: list[TensorDiff]) -> int:
    """How many layers, not the largest number plus one: one tensor named
    `model.layers.999999999.x` makes a one-layer stack, not a billion-layer one."""
    return len(_layer_numbers(tensors, _main_stack(tensors)))
