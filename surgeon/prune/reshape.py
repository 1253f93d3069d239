"""Reshape mode (issue 21): take the heads a mask-mode prune zeroed out of the shapes.

Mask mode zeroes a removed head's q_proj rows and o_proj input columns and keeps every
shape, so the pruned model is as large as its base. Reshape slices them out: q_proj rows
(and q bias), o_proj input columns, and the k/v rows of a KV group that lost all its query
heads; config.json gets the new head counts. Every other tensor is copied byte for byte.

What stock transformers can load decides what can be reshaped:
- `num_attention_heads` is one number for the whole stack: every layer must keep the same
  number of query heads;
- query head i reads KV head i // (heads / kv heads): every KV group left must keep the same
  number of query heads, or lose all of them (then its k/v rows go too).
The removed heads are read from the bytes (q rows and o columns all zero), not from the
manifest: a salvage rolls layers back to the base and its manifest still lists their
heads. Torch-free: numpy slices raw elements, whatever the float type.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from surgeon.atomic import remove_entry, temp_sibling
from surgeon.errors import SurgeonError
from surgeon.format.checkpoint import Checkpoint, open_checkpoint, source_record
from surgeon.format.dtypes import raw_view, to_float64
from surgeon.format.manifest import (
    MANIFEST_NAME,
    SCHEMA,
    created_now,
    is_surgeon_manifest,
    portable_prune_record,
    read_manifest,
    tool_record,
    written_record,
)
from surgeon.format.reshaped import NewTensor, index_bytes, write_reshaped
from surgeon.format.safetensors import TensorInfo
from surgeon.format.writer import WriteReport, check_output_folder
from surgeon.model.geometry import (
    ATTENTION_PROJ,
    AttentionGeometry,
    _layer_index,
    config_geometry,
    config_int,
    geometry_by_layer,
    text_config,
)
from surgeon.model.names import parse_name
from surgeon.progress import ProgressSink
from surgeon.prune.reshape_ffn import (
    LayerChannels,
    any_removed,
    channel_record,
    channels_problem,
    check_channels,
    find_channels,
    planned_channels,
    set_intermediate_size,
    sliced_channels,
)
from surgeon.text import layer_ranges

MASK_MODE = "mask mode (zeroed heads, every shape kept) is what it stays"


@dataclass
class LayerHeads:
    """One decoder layer's attention: its geometry, projection tensors and removed heads."""

    layer: int
    geometry: AttentionGeometry
    tensors: dict[str, TensorInfo]  # "q", "k", "v", "o" weights and "q_bias", "k_bias", "v_bias"
    removed: list[int] = field(default_factory=list)  # q rows and o columns all zero
    ghosts: list[int] = field(default_factory=list)  # q rows zero, o columns not: uniform attention

    @property
    def group(self) -> int:
        return self.geometry.num_heads // self.kv_heads

    @property
    def kv_heads(self) -> int:
        return self.geometry.num_kv_heads or self.geometry.num_heads

    def kept_heads(self) -> list[int]:
        return [h for h in range(self.geometry.num_heads) if h not in set(self.removed)]

    def kept_kv_heads(self) -> list[int]:
        """KV heads with a query head left: a group whose query heads all went goes too."""
        kept = set(self.kept_heads())
        return [j for j in range(self.kv_heads) if kept & set(range(j * self.group, (j + 1) * self.group))]


@dataclass
class ReshapeResult:
    output: Path
    layers: list[LayerHeads]
    num_heads: tuple[int, int]  # query heads per layer, before and after
    parameters_removed: int
    bytes_removed: int
    manifest: dict
    channels: list[LayerChannels] = field(default_factory=list)  # each layer's MLP channels removed


# ---------- which heads were removed ----------


def find_heads(ckpt: Checkpoint) -> list[LayerHeads]:
    """Every layer of the decoder stack with its removed heads read from the bytes; a
    removed head in another stack (a vision tower) is refused: only the text stack's config
    is rewritten."""
    geometry = geometry_by_layer(ckpt.config, ckpt.tensors)
    stacks = _stacks(ckpt, geometry)
    layers = []
    for stack, layer in sorted(k for k in geometry):
        heads = _layer_heads(ckpt, stack, layer, geometry[(stack, layer)])
        if stack == stacks[0]:
            _check_unsliced(ckpt, stack, layer, heads.geometry, heads.tensors)
            layers.append(heads)
        elif heads.removed:
            raise SurgeonError(
                f"{ckpt.source}: heads removed in {stack}.{layer}: reshape handles the text decoder only"
            )
    return layers


def text_stack(ckpt: Checkpoint) -> str:
    """The decoder stack reshape slices (find_heads' choice): the largest that is not a vision or audio tower."""
    return _stacks(ckpt, geometry_by_layer(ckpt.config, ckpt.tensors))[0]


def _stacks(ckpt: Checkpoint, geometry: dict) -> list[str]:
    stacks = sorted({s for s, _ in geometry}, key=lambda s: ("vision" in s or "audio" in s, -_count(geometry, s)))
    if not stacks:
        raise SurgeonError(f"{ckpt.source}: no attention projections found: nothing to reshape")
    return stacks


def _count(geometry: dict, stack: str) -> int:
    return sum(1 for s, _ in geometry if s == stack)


def _layer_heads(ckpt: Checkpoint, stack: str, layer: int, geometry: AttentionGeometry) -> LayerHeads:
    tensors = _projections(ckpt, stack, layer)
    where = f"{stack}.{layer}"
    if "q" not in tensors or "o" not in tensors:
        raise SurgeonError(f"{ckpt.source}: layer {where} has no separate q_proj and o_proj: cannot reshape it")
    q_zero = _zero_heads(ckpt, tensors["q"], geometry, axis=0)
    o_zero = _zero_heads(ckpt, tensors["o"], geometry, axis=1)
    heads = LayerHeads(layer, geometry, tensors)
    heads.removed = [h for h in range(geometry.num_heads) if q_zero[h] and o_zero[h]]
    heads.ghosts = [h for h in range(geometry.num_heads) if q_zero[h] and not o_zero[h]]
    return heads


def _check_unsliced(
    ckpt: Checkpoint, stack: str, layer: int, geometry: AttentionGeometry, tensors: dict[str, TensorInfo]
) -> None:
    """Every other tensor of the layer's attention is copied as it is: refused where one is
    sized by the heads (OLMo 2's q_norm spans every head and normalizes over all of them,
    gpt-oss's sinks hold one value a head), which slicing q/k/v/o leaves the old size or,
    sliced, another model. A q_norm/k_norm of one head's width is shared by all: kept."""
    sliced = {info.name for info in tensors.values()}
    kv = geometry.num_kv_heads or geometry.num_heads
    sizes = {geometry.num_heads, kv, geometry.num_heads * geometry.head_dim, kv * geometry.head_dim}
    for name, info in ckpt.tensors.items():
        parsed = parse_name(name)
        if parsed.stack != stack or parsed.layer != layer or "attn" not in parsed.family or name in sliced:
            continue
        if parsed.family.endswith("o_proj.bias"):  # the output side: hidden size, no heads
            continue
        if parsed.family.endswith(("q_norm.weight", "k_norm.weight")) and info.shape == (geometry.head_dim,):
            continue
        if sizes & set(info.shape):
            raise SurgeonError(
                f"{ckpt.source}: {name} (shape {list(info.shape)}) is sized by the attention heads, and reshape "
                f"slices only q/k/v/o_proj and their biases: cannot reshape; {MASK_MODE}"
            )


def _projections(ckpt: Checkpoint, stack: str, layer: int) -> dict[str, TensorInfo]:
    """The layer's q/k/v/o weights and biases, keyed "q" ... "o", "q_bias" ... "v_bias"."""
    found = {}
    for name, info in ckpt.tensors.items():
        parsed = parse_name(name)
        if parsed.stack != stack or parsed.layer != layer or "attn" not in parsed.family:
            continue
        match = ATTENTION_PROJ.search(parsed.family)
        if match:
            found[match["proj"]] = info
        elif parsed.family.endswith(("q_proj.bias", "k_proj.bias", "v_proj.bias")):
            found[parsed.family[-11] + "_bias"] = info
    return found


def _zero_heads(ckpt: Checkpoint, info: TensorInfo, geometry: AttentionGeometry, axis: int) -> list[bool]:
    """Whether each query head's rows (axis 0, q_proj) or columns (axis 1, o_proj) are all
    zero; -0.0 is zero too (decoded, not compared as bits)."""
    values = _split_heads(_read_raw(ckpt, info), geometry, axis)
    return [bool(np.all(to_float64(head, info.dtype) == 0)) for head in values]


def _split_heads(raw: np.ndarray, geometry: AttentionGeometry, axis: int) -> list[np.ndarray]:
    width = geometry.num_heads * geometry.head_dim
    if raw.ndim != 2 or raw.shape[axis] != width:
        raise SurgeonError(f"a projection of shape {list(raw.shape)} does not hold {geometry.num_heads} heads")
    return np.split(raw, geometry.num_heads, axis=axis)


def _read_raw(ckpt: Checkpoint, info: TensorInfo) -> np.ndarray:
    """The tensor's raw elements (integers of its dtype's width), in its shape."""
    if info.dtype.raw is None or not info.dtype.name.startswith(("F", "BF")):
        raise SurgeonError(f"{info.name}: {info.dtype.name} tensors are not sliced by reshape (a float type is)")
    fd = os.open(ckpt.shard_path(info.file), os.O_RDONLY)
    try:
        data = os.pread(fd, info.nbytes, info.start)
    finally:
        os.close(fd)
    if len(data) != info.nbytes:
        raise SurgeonError(f"{info.file}: shorter than its header says (tensor {info.name})")
    return raw_view(data, info.dtype).reshape(info.shape)


# ---------- whether stock transformers can load the result ----------


def check_reshapable(source: str, layers: list[LayerHeads], channels: bool = False) -> int:
    """SurgeonError, one line naming the layers, unless the removal can be reshaped; returns
    the query heads every layer keeps. `channels`: MLP channels are removed too, so no
    removed head is a reshape of the channels alone (every head kept)."""
    ghosts = [h.layer for h in layers if h.ghosts]
    if ghosts:
        raise SurgeonError(
            f"{source}: layers {layer_ranges(ghosts)} have heads with zeroed q_proj rows but live o_proj columns "
            "(uniform attention, not removed): slicing them would change the output; cannot reshape"
        )
    pruned = [h.layer for h in layers if h.removed]
    if not pruned and channels:
        return layers[0].geometry.num_heads
    if not pruned:
        raise SurgeonError(
            f"{source}: no removed head (q_proj rows and o_proj columns all zero) and no removed MLP channel "
            "(gate_proj and up_proj rows and the down_proj column all zero): nothing to reshape"
        )
    if len(pruned) < len(layers):
        untouched = sorted({h.layer for h in layers} - set(pruned))
        raise SurgeonError(
            f"{source}: heads are removed in layers {layer_ranges(pruned)} only, none in layers "
            f"{layer_ranges(untouched)}: stock transformers needs every layer to keep the same number of query heads, "
            f"so this cannot be reshaped; {MASK_MODE}"
        )
    _check_same_count(source, layers)
    _check_groups(source, layers)
    return layers[0].geometry.num_heads - len(layers[0].removed)


def _check_same_count(source: str, layers: list[LayerHeads]) -> None:
    kept: dict[int, list[int]] = {}
    for heads in layers:
        kept.setdefault(heads.geometry.num_heads - len(heads.removed), []).append(heads.layer)
    if len(kept) > 1:
        said = "; ".join(f"{count} in layers {layer_ranges(where)}" for count, where in sorted(kept.items()))
        raise SurgeonError(
            f"{source}: layers keep different numbers of query heads ({said}): stock transformers needs every "
            f"layer to keep the same number; {MASK_MODE}"
        )
    if 0 in kept:
        raise SurgeonError(f"{source}: layers {layer_ranges(kept[0])} have every query head removed: cannot reshape")


def _check_groups(source: str, layers: list[LayerHeads]) -> None:
    """Every KV group left keeps the same number of query heads: query head i reads KV head
    i // group, so after slicing a group with more heads than another would hand its last
    heads to the next group's KV head."""
    unbalanced = []
    for heads in layers:
        left = {
            len(set(heads.kept_heads()) & set(range(j * heads.group, (j + 1) * heads.group)))
            for j in range(heads.kv_heads)
        }
        if len(left - {0}) > 1:
            unbalanced.append(heads.layer)
    if unbalanced:
        raise SurgeonError(
            f"{source}: in layers {layer_ranges(unbalanced)} the KV groups lose different numbers of query heads: "
            "after slicing, heads would read the wrong KV head; each group must lose the same number, or all of its "
            f"heads; {MASK_MODE}"
        )


# ---------- the new config ----------


def reshaped_config(config: dict, stack_layers: list[LayerHeads], num_heads: int, source: str) -> dict:
    """config.json with the new head counts: `num_attention_heads`, `head_dim` stated (it
    no longer is hidden_size / heads), and the KV head count in the key each layer reads it
    from (top level, Gemma 4's per_layer_config entry or num_global_key_value_heads). The
    result is checked by reading it back as diff and prune do (config_geometry)."""
    new = copy.deepcopy(config)
    cfg = text_config(new, None)
    old = text_config(config, None)
    default_layer = next((h for h in stack_layers if not _kv_override(old, h.layer)), stack_layers[0])
    cfg["head_dim"] = config_geometry(old, default_layer.layer)[1]
    cfg["num_attention_heads"] = num_heads
    cfg["num_key_value_heads"] = len(default_layer.kept_kv_heads())
    for heads in stack_layers:
        _set_kv_heads(cfg, old, heads)
    _check_config(cfg, stack_layers, num_heads, source)
    return new


def _kv_override(cfg: dict, layer: int) -> bool:
    """Whether the layer reads its KV head count from somewhere other than the top level."""
    heads, _, kv, _ = config_geometry(cfg, layer)
    return kv != (config_int(cfg, "num_key_value_heads") or heads)


def _set_kv_heads(cfg: dict, old: dict, heads: LayerHeads) -> None:
    want = len(heads.kept_kv_heads())
    if config_geometry(cfg, heads.layer)[2] == want:
        return
    overrides = cfg.get("per_layer_config")
    if isinstance(overrides, dict):
        # the layer's own key: transformers 5 pads them to the widest index ("05"), and a
        # second key "5" would be the same layer twice, one entry without the head_dim
        key = next((k for k in overrides if _layer_index(k) == heads.layer), str(heads.layer))
        entry = overrides.get(key)
        overrides[key] = {**(entry if isinstance(entry, dict) else {}), "num_key_value_heads": want}
    elif _kv_override(old, heads.layer) and config_int(cfg, "num_global_key_value_heads"):
        cfg["num_global_key_value_heads"] = want


def _check_config(cfg: dict, layers: list[LayerHeads], num_heads: int, source: str) -> None:
    wrong = []
    for heads in layers:
        want = (num_heads, heads.geometry.head_dim, len(heads.kept_kv_heads()))
        if config_geometry(cfg, heads.layer)[:3] != want:
            wrong.append(heads.layer)
    if wrong:
        raise SurgeonError(
            f"{source}: layers {layer_ranges(wrong)} would keep a KV head count that this config cannot state "
            f"(its KV heads are one number for these layers): cannot reshape; {MASK_MODE}"
        )
    if cfg.get("num_kv_shared_layers") and any(len(h.kept_kv_heads()) != h.kv_heads for h in layers):
        raise SurgeonError(f"{source}: whole KV groups removed in a model whose layers share KV caches: cannot reshape")


# ---------- the new tensors ----------


def sliced_tensors(ckpt: Checkpoint, layers: list[LayerHeads]) -> dict[str, NewTensor]:
    """Each projection that loses rows or columns: its new shape and how to make its bytes."""
    out = {}
    for heads in layers:
        q_rows = _rows(heads.kept_heads(), heads.geometry.head_dim)
        kv_rows = _rows(heads.kept_kv_heads(), heads.geometry.head_dim)
        keep_kv = len(heads.kept_kv_heads()) < heads.kv_heads
        plan = {"q": (q_rows, 0), "q_bias": (q_rows, 0), "o": (q_rows, 1)}
        if keep_kv:
            plan |= {key: (kv_rows, 0) for key in ("k", "v", "k_bias", "v_bias")}
        for key, (index, axis) in plan.items():
            info = heads.tensors.get(key)
            if info is not None:
                out[info.name] = _slice(ckpt, info, index, axis)
    return out


def _rows(heads: list[int], head_dim: int) -> np.ndarray:
    return np.concatenate([np.arange(h * head_dim, (h + 1) * head_dim) for h in heads])


def _slice(ckpt: Checkpoint, info: TensorInfo, index: np.ndarray, axis: int) -> NewTensor:
    shape = list(info.shape)
    shape[axis] = len(index)

    def make() -> bytes:
        return np.ascontiguousarray(np.take(_read_raw(ckpt, info), index, axis=axis)).tobytes()

    return NewTensor(tuple(shape), make)


# ---------- the whole operation ----------


def reshape(
    masked: str | os.PathLike,
    output: str | os.PathLike,
    *,
    force: bool = False,
    config_problem: Callable[[dict], str | None] | None = None,
    cancel: threading.Event | None = None,
    progress: ProgressSink | None = None,
) -> ReshapeResult:
    """Write `masked` (a mask-mode checkpoint) with its removed heads sliced out to `output`.
    `config_problem(config)` says why the model's own library would refuse the new config
    (surgeon.prune.reshape_check: transformers), checked before anything is written."""
    ckpt = open_checkpoint(masked)
    check_output_folder(Path(output), [ckpt], force)  # before any tensor is read
    if ckpt.config is None:
        raise SurgeonError(f"{ckpt.source}: no config.json: the reshaped head counts go there")
    layers = find_heads(ckpt)
    channels = find_channels(ckpt, text_stack(ckpt), [h.layer for h in layers], _read_raw)
    num_heads = check_reshapable(ckpt.source, layers, channels=any_removed(channels))
    check_channels(ckpt.source, channels, text_config(ckpt.config, None))
    heads_removed = any(h.removed for h in layers)
    config = (
        reshaped_config(ckpt.config, layers, num_heads, ckpt.source) if heads_removed else copy.deepcopy(ckpt.config)
    )
    set_intermediate_size(text_config(config, None), channels)
    problem = config_problem(config) if config_problem is not None else None
    if problem is not None:
        raise SurgeonError(
            f"{ckpt.source}: transformers refuses the reshaped config ({problem}): cannot reshape; {MASK_MODE}"
        )
    tensors = sliced_tensors(ckpt, layers) if heads_removed else {}
    tensors |= sliced_channels(ckpt, channels, _slice)
    files = {"config.json": (json.dumps(config, indent=2) + "\n").encode("utf-8")}
    index = index_bytes(ckpt, tensors)
    if index is not None and ckpt.index_name is not None:
        files[ckpt.index_name] = index
    saved = _saved(ckpt, tensors)
    record = _reshape_record(ckpt, layers, num_heads, config, saved, channels)
    previous = _previous_manifest(ckpt)
    holder: dict = {}

    def manifest(report: WriteReport) -> dict:
        holder.update(_manifest(previous, record, report))
        return holder

    write_reshaped(ckpt, Path(output), tensors, files, manifest=manifest, force=force, cancel=cancel, progress=progress)
    before = layers[0].geometry.num_heads
    return ReshapeResult(Path(output), layers, (before, num_heads), saved[0], saved[1], holder, channels)


@contextlib.contextmanager
def mask_build_beside(output: str | os.PathLike) -> Iterator[Path]:
    """The name for the mask-mode build that prune --mode reshape and the TUI slice into
    `output`: beside it (on its disk), a temporary name of this process (a kill -9 leaves it
    to the next run's sweep, a repeated PID finds no folder in its way), removed at the end.
    An error naming the build names `output`: the user never asked for the build."""
    output = Path(output)
    masked = temp_sibling(output)
    try:
        yield masked
    except SurgeonError as exc:
        if exc.args and isinstance(exc.args[0], str) and str(masked) in exc.args[0]:
            exc.args = (exc.args[0].replace(str(masked), str(output)), *exc.args[1:])
        raise
    finally:
        remove_entry(masked)


def _saved(ckpt: Checkpoint, tensors: dict[str, NewTensor]) -> tuple[int, int]:
    """(parameters, bytes) the slicing removes."""
    params = bytes_ = 0
    for name, new in tensors.items():
        info = ckpt.tensors[name]
        count = int(np.prod(new.shape))
        params += info.numel - count
        bytes_ += info.nbytes - count * info.dtype.bits // 8
    return params, bytes_


def _previous_manifest(ckpt: Checkpoint) -> dict:
    """The masked checkpoint's surgeon manifest, carried forward (its prune record describes
    the heads removed); another tool's manifest is not ours to restate."""
    previous = read_manifest(ckpt.root / MANIFEST_NAME)
    return portable_prune_record(previous) if previous is not None and is_surgeon_manifest(previous) else {}


def _reshape_record(
    ckpt, layers: list[LayerHeads], num_heads: int, config: dict, saved: tuple[int, int], channels: list
) -> dict:
    params_before = sum(info.numel for info in ckpt.tensors.values())
    by_layer = {c.layer: c for c in channels if c.removed}
    return {
        "tool": tool_record(),
        "created": created_now(),
        "masked": source_record(ckpt),
        "num_heads_before": layers[0].geometry.num_heads,
        "num_heads_after": num_heads,
        "config": _config_changes(ckpt.config, config),
        "layers": [_layer_record(h) | (channel_record(by_layer[h.layer]) if by_layer else {}) for h in layers],
        "parameters_before": params_before,
        "parameters_after": params_before - saved[0],
        "parameters_removed": saved[0],
        "bytes_removed": saved[1],
    }


def _layer_record(heads: LayerHeads) -> dict:
    return {
        "layer": heads.layer,
        "layer_type": heads.geometry.layer_type,
        "head_dim": heads.geometry.head_dim,
        "removed_heads": heads.removed,
        "kept_heads": heads.kept_heads(),
        "kept_kv_heads": heads.kept_kv_heads(),
    }


def _config_changes(old: dict | None, new: dict, prefix: str = "") -> dict:
    """The config keys reshape set, as dotted paths -> their new value."""
    changes: dict = {}
    for key, value in new.items():
        before = (old or {}).get(key)
        if isinstance(value, dict) and isinstance(before, dict):
            changes |= _config_changes(before, value, f"{prefix}{key}.")
        elif value != before:
            changes[f"{prefix}{key}"] = value
    return changes


def _manifest(previous: dict, record: dict, report: WriteReport) -> dict:
    manifest = dict(previous)
    manifest["schema"] = SCHEMA
    manifest["written"] = _against_base(dict(written_record(report, lambda name: parse_name(name).layer)), previous)
    manifest["reshape"] = record | {"masked": record["masked"] | {"shards": report.base_shards}}
    return manifest


def _against_base(written: dict, previous: dict) -> dict:
    """The `written` block against the mask build's own base, not the mask build: a tensor
    the prune changed and the reshape copied (down_proj's refit bias) is still written, with
    the base's hash; a shard the reshape copied is the base's file only where the prune
    copied it too. Without the prune's record, the block stays against the mask build."""
    before = previous.get("written")
    if not isinstance(before, dict) or not isinstance(before.get("tensors"), dict):
        return written
    earlier: dict = before["tensors"]
    tensors = {name: entry for name, entry in earlier.items() if isinstance(entry, dict)}
    for name, entry in written["tensors"].items():
        base_sha = tensors[name].get("base_sha256") if name in tensors else entry.get("base_sha256")
        tensors[name] = {**entry, "base_sha256": base_sha}
    layers = sorted({layer for name in tensors if (layer := parse_name(name).layer) is not None})
    copied = set(before.get("copied_shards") or [])
    return written | {
        "layers": layers,
        "layers_text": layer_ranges(layers),
        "tensors": dict(sorted(tensors.items())),
        "copied_shards": [name for name in written["copied_shards"] if name in copied],
    }


def summary(result: ReshapeResult) -> str:
    """The CLI's one line: what was removed and what it saved."""
    before, after = result.num_heads
    kv = [h.layer for h in result.layers if len(h.kept_kv_heads()) < h.kv_heads]
    kv_text = f", and whole KV groups in layers {layer_ranges(kv)}" if kv else ""
    removed = [c for c in result.channels if c.removed]
    channels = f"{len(removed[0].removed)} of {removed[0].width} MLP channels" if removed else ""
    heads = f"{before - after} of {before} query heads" if before != after else ""
    return (
        f"reshaped: {' and '.join(filter(None, (heads, channels)))} removed in each of layers "
        f"{layer_ranges([h.layer for h in result.layers])}{kv_text}; {result.parameters_removed:,} parameters "
        f"({_size(result.bytes_removed)}) fewer; wrote {result.output}"
    )


def _size(count: int) -> str:
    scaled = float(count)
    for unit in ("bytes", "KiB", "MiB"):
        if scaled < 1024:
            return f"{count:,} bytes" if unit == "bytes" else f"{scaled:.1f} {unit}"
        scaled /= 1024
    return f"{scaled:.1f} GiB"


# ---------- what a reshape would make of a plan, from headers alone ----------


@dataclass(frozen=True)
class ReshapePreview:
    """What reshape would make of a checkpoint with some heads removed: either `kept` query
    heads per layer and what the slicing saves, or `problem`, a short reason it cannot."""

    num_heads: int  # query heads per layer now (the first layer's)
    kept: int | None  # query heads every layer keeps, None where it cannot be reshaped
    parameters_removed: int = 0
    bytes_removed: int = 0
    problem: str | None = None

    def text(self) -> str:
        """`reshape: possible, 6 of 8 query heads kept, saves 1,536 parameters (6.0 KiB)`."""
        if self.problem is not None:
            return f"reshape: not possible: {self.problem}"
        return (
            f"reshape: possible, {self.kept} of {self.num_heads} query heads kept, saves "
            f"{self.parameters_removed:,} parameters ({_size(self.bytes_removed)})"
        )


def preview(
    ckpt: Checkpoint,
    removed: dict[int, list[int]],
    ghosts: dict[int, list[int]] | None = None,
    channels: dict[int, list[int]] | None = None,
) -> ReshapePreview:
    """Whether `ckpt` (a mask-mode checkpoint's config and headers: no tensor is read) with the
    query heads `removed` (layer -> heads, q rows and o columns zero) can be reshaped, by the
    rules check_reshapable applies to the bytes, and what it would save. `ghosts`: heads whose
    q rows are zero and o columns are not (uniform attention, not removed). A TUI's plan
    line: the reasons are short, not check_reshapable's sentences."""
    ghosts = ghosts or {}
    layers = _planned_layers(ckpt, removed)
    num_heads = layers[0].geometry.num_heads if layers else 0
    mlp = planned_channels(ckpt, text_stack(ckpt), [h.layer for h in layers], channels or {})
    heads_removed = any(h.removed for h in layers)
    problem = _short_problem(layers, ghosts) if heads_removed or not any_removed(mlp) else None
    if problem is None:
        problem = channels_problem(mlp, text_config(ckpt.config, None))
    if problem is None and heads_removed:
        try:
            reshaped_config(ckpt.config or {}, layers, num_heads - len(layers[0].removed), ckpt.source)
        except SurgeonError:
            problem = "this config cannot state the KV heads each layer would keep"
    if problem is not None:
        return ReshapePreview(num_heads, None, problem=problem)
    tensors = (sliced_tensors(ckpt, layers) if heads_removed else {}) | sliced_channels(ckpt, mlp, _slice)
    params, bytes_ = _saved(ckpt, tensors)
    return ReshapePreview(num_heads, num_heads - len(layers[0].removed), params, bytes_)


def _planned_layers(ckpt: Checkpoint, removed: dict[int, list[int]]) -> list[LayerHeads]:
    """The text stack's layers (find_heads' choice of stack) with their projections, in one
    pass over the tensor names, and the heads `removed` says."""
    geometry = geometry_by_layer(ckpt.config, ckpt.tensors)
    stack = _stacks(ckpt, geometry)[0]
    found: dict[int, dict[str, TensorInfo]] = {}
    for name, info in ckpt.tensors.items():
        parsed = parse_name(name)
        if parsed.stack != stack or parsed.layer is None or "attn" not in parsed.family:
            continue
        match = ATTENTION_PROJ.search(parsed.family)
        if match:
            found.setdefault(parsed.layer, {})[match["proj"]] = info
        elif parsed.family.endswith(("q_proj.bias", "k_proj.bias", "v_proj.bias")):
            found.setdefault(parsed.layer, {})[parsed.family[-11] + "_bias"] = info
    return [
        LayerHeads(layer, geo, found.get(layer, {}), sorted(set(removed.get(layer, []))))
        for (s, layer), geo in sorted(geometry.items())
        if s == stack
    ]


def _short_problem(layers: list[LayerHeads], ghosts: dict[int, list[int]]) -> str | None:
    """Why these removals cannot be reshaped, in a few words naming the layers; None if they can."""
    ghosted = [h.layer for h in layers if ghosts.get(h.layer)]
    if ghosted:
        return f"{_layers(ghosted, 'have')} zeroed q_proj rows with live o_proj columns (uniform attention)"
    separate = [h.layer for h in layers if "q" not in h.tensors or "o" not in h.tensors]
    if separate:
        return f"{_layers(separate, 'have')} no separate q_proj and o_proj"
    pruned = [h.layer for h in layers if h.removed]
    if not pruned:
        return "no head is removed"
    if len(pruned) < len(layers):
        untouched = sorted({h.layer for h in layers} - set(pruned))
        return f"{_layers(untouched, 'keep')} all heads (every layer must keep the same number)"
    kept: dict[int, list[int]] = {}
    for heads in layers:
        kept.setdefault(heads.geometry.num_heads - len(heads.removed), []).append(heads.layer)
    if 0 in kept:
        return f"{_layers(kept[0], 'remove')} every query head"
    if len(kept) > 1:
        said = "; ".join(f"{count} in {layer_ranges(where)}" for count, where in sorted(kept.items()))
        return f"layers keep different numbers of query heads ({said})"
    unbalanced = [h.layer for h in layers if _unbalanced(h)]
    if unbalanced:
        return f"in {_layers(unbalanced)} the KV groups lose different numbers of heads"
    return None


def _layers(layers: list[int], verb: str = "") -> str:
    """`layer 3 has`, `layers 4-7 keep`: the layers named, the verb (plural) agreeing."""
    if len(layers) == 1:
        singular = {"have": "has", "keep": "keeps", "remove": "removes"}.get(verb, verb)
        return f"layer {layers[0]} {singular}".rstrip()
    return f"layers {layer_ranges(layers)} {verb}".rstrip()


def _unbalanced(heads: LayerHeads) -> bool:
    kept = set(heads.kept_heads())
    left = {len(kept & set(range(j * heads.group, (j + 1) * heads.group))) for j in range(heads.kv_heads)}
    return len(left - {0}) > 1
