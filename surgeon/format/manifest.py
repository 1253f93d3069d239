"""prune_manifest.json, schema surgeon.prune_manifest/1 (docs/prune-manifest.md): the one
module that builds its shared blocks and reads it back.

prune writes a manifest and salvage rewrites one; both build the `tool`, `created` and
`written` blocks here, from the writer's own hashes. Every reader (verify, salvage reading
its candidate's, the quality record, the TUI) goes through read_manifest, which checks a
surgeon manifest's shape (keys and types) before any value is used. The records below name
the blocks' keys and types; a field is added within a version, never renamed or removed.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypedDict, cast

from surgeon import __version__
from surgeon.errors import SurgeonError
from surgeon.format.hashcache import is_sha256
from surgeon.format.hub import snapshot_of
from surgeon.jsonfile import read_json_file
from surgeon.text import layer_ranges

MANIFEST_NAME = "prune_manifest.json"  # beside the weights of every checkpoint surgeon writes

SCHEMA = "surgeon.prune_manifest/1"


def manifest_json(manifest: Any) -> str:
    """The manifest's text as it is written: standard JSON only. Python's json writes a NaN
    or an infinity as `NaN`/`Infinity`, which JSON has not (a forged workdir's scores once
    went into a published manifest so); SurgeonError instead."""
    try:
        return json.dumps(manifest, indent=2, allow_nan=False) + "\n"
    except ValueError:
        raise SurgeonError("the manifest holds a number that is not finite (NaN or infinity): not written") from None


class ToolRecord(TypedDict):
    name: str  # "surgeon"
    version: str


class BaseRecord(TypedDict, total=False):
    source: str  # a Hub repo id, else the folder's or file's name (never a path)
    kind: str  # "hub", "folder" or "file" (format.checkpoint.source_record)
    revision: str | None  # "hub": the commit of the snapshot read; else None
    shards: dict[str, str]  # base shard file -> SHA256, from the same read
    path: str  # older manifests only: the folder read, a path of the machine that wrote it


class WrittenRecord(TypedDict):
    layers: list[int]  # decoder layers whose weights differ from the base's
    layers_text: str  # the same as ranges, "0-3,7"
    tensors: dict[str, dict[str, str]]  # each rewritten tensor -> {"base_sha256", "sha256"}
    shards: dict[str, str]  # output shard -> SHA256
    copied_shards: list[str]  # shards written byte-identical to the base's file
    files: dict[str, str]  # side files (config, index, tokenizer) -> SHA256, hashed as copied
    skipped_files: dict[str, str]  # the base's side files not copied -> why (a link out of it, too large)


class PruneManifest(TypedDict, total=False):
    """The whole file. prune writes every key but `salvage`; salvage keeps its candidate's
    keys, rewrites `written` and adds `salvage`; --eval and the quality budget add `quality`."""

    schema: str
    tool: ToolRecord
    created: str
    base: BaseRecord
    options: dict[str, Any]  # PruneOptions' fields
    device: str
    compute_dtype: str
    calibration: dict[str, Any]
    head_counts: list[dict[str, Any]]  # heads pruned per layer, asked and effective, by geometry
    layers: list[dict[str, Any]]  # one per pruned layer: heads, scores, refit
    written: WrittenRecord
    forward_calls: int
    resumed_at_layer: int
    layer_passes: int
    messages: list[str]
    timings: dict[str, float]
    salvage: dict[str, Any]
    quality: dict[str, Any]


def tool_record() -> ToolRecord:
    return {"name": "surgeon", "version": __version__}


def created_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def written_record(report, layer_of: Callable[[str], int | None]) -> WrittenRecord:
    """The `written` block from the writer's report (surgeon.format.writer.WriteReport):
    what its own hashes say was written, and the layers whose tensors changed."""
    changed = report.changed_tensors()
    layers = sorted({layer for layer in map(layer_of, changed) if layer is not None})
    return {
        "layers": layers,
        "layers_text": layer_ranges(layers),
        "tensors": {name: report.tensors[name] for name in changed},
        "shards": report.shards,
        "copied_shards": report.copied_shards,
        "files": report.files,
        "skipped_files": report.skipped_files,
    }


def portable_record(record: dict) -> dict:
    """A base or candidate record of an older manifest (`source` as the user typed it, `path`
    the folder it resolved to) in today's form (format.checkpoint.source_record): a Hub
    snapshot by repo id and commit, anything else by its name; the hashes stay."""
    if "kind" in record or not isinstance(record.get("path", record.get("source")), str):
        return record
    folder = Path(record.get("path") or record["source"])
    kept = {key: value for key, value in record.items() if key not in ("source", "path", "revision")}
    hub = snapshot_of(folder)
    if hub is not None:
        return {"source": hub[0], "kind": "hub", "revision": hub[1], **kept}
    kind = "file" if folder.suffix == ".safetensors" else "folder"
    return {"source": folder.name or str(folder), "kind": kind, "revision": None, **kept}


def portable_prune_record(manifest: Mapping[str, Any]) -> dict:
    """A candidate's surgeon manifest as salvage carries it forward: with no local path in
    its base record or tokenizer option (an older surgeon recorded them as given)."""
    out = dict(manifest)
    if isinstance(out.get("base"), dict):
        out["base"] = portable_record(out["base"])
    options = out.get("options")
    if isinstance(options, dict) and isinstance(options.get("tokenizer"), str):
        out["options"] = options | {"tokenizer": Path(options["tokenizer"]).name}
    return out


def is_surgeon_manifest(manifest: object) -> bool:
    schema = manifest.get("schema") if isinstance(manifest, dict) else None
    return isinstance(schema, str) and schema.startswith("surgeon.")


# ---------- reading: a surgeon manifest's shape, checked before any value is used ----------


def read_manifest(path: Path) -> PruneManifest | None:
    """The manifest at `path`, None if there is none; a file that is not a readable JSON
    object, or a surgeon manifest with missing keys or wrong types, is one SurgeonError:
    "<path>: manifest is malformed (<what>)". A foreign manifest (no surgeon schema) is
    returned as read: every key of PruneManifest is optional, and callers look for the
    schema (is_surgeon_manifest) before they rely on one."""
    if not os.path.lexists(path):
        return None
    manifest = read_json_file(path)
    problem = manifest_problem(manifest)
    if problem is not None or not isinstance(manifest, dict):  # manifest_problem says why
        raise SurgeonError(f"{path}: manifest is malformed ({problem})")
    return cast(PruneManifest, manifest)  # its shape checked above


def manifest_problem(manifest: object) -> str | None:
    """What is wrong with a manifest's shape, or None. Only a surgeon manifest's keys are
    checked here; a foreign one's are surgeon.diff.foreign_manifest's to read."""
    if not isinstance(manifest, dict):
        return f"{_kind(manifest)}, not an object"
    if "schema" in manifest and not isinstance(manifest["schema"], str):
        return f"schema is {_kind(manifest['schema'])}, not a string"
    if not is_surgeon_manifest(manifest):
        return None
    try:
        _check_shape(manifest)
    except _Malformed as exc:
        return str(exc)
    return None


class _Malformed(Exception):
    pass


def _check_shape(m: dict) -> None:
    written = _need(m, "written", dict, "written")
    _sha_map(written, "shards", "written.shards", required=True)
    _sha_map(written, "files", "written.files", required=False)
    tensors = _need(written, "tensors", dict, "written.tensors")
    for name, entry in tensors.items():
        where = f"written.tensors[{_short_name(name)}]"
        _need(entry if isinstance(entry, dict) else _bad(where, entry, "an object"), "sha256", "sha", where + ".sha256")
        if "base_sha256" in entry:
            _need(entry, "base_sha256", "sha", where + ".base_sha256")
    _int_list(written, "layers", "written.layers", required=True)
    copied = _need(written, "copied_shards", list, "written.copied_shards")
    if not all(isinstance(name, str) for name in copied):
        raise _Malformed("written.copied_shards: not a list of names")
    layers = m.get("layers")
    if layers is not None:
        for i, layer in enumerate(layers if isinstance(layers, list) else _bad("layers", layers, "a list")):
            entry = layer if isinstance(layer, dict) else _bad(f"layers[{i}]", layer, "an object")
            _need(entry, "layer", int, f"layers[{i}].layer")
            if entry.get("pruned_heads") is not None:
                _int_list(entry, "pruned_heads", f"layers[{i}].pruned_heads", required=True)
            if entry.get("ffn_pruned_channels") is not None:
                _int_list(entry, "ffn_pruned_channels", f"layers[{i}].ffn_pruned_channels", required=True)
    for key, record in (("base", m.get("base")), ("salvage", m.get("salvage"))):
        if record is not None and not isinstance(record, dict):
            _bad(key, record, "an object")
    salvage = m.get("salvage") or {}
    _int_list(salvage, "rolled_back_layers", "salvage.rolled_back_layers", required=False)
    _int_list(salvage, "kept_layers", "salvage.kept_layers", required=False)
    for where, record in (("base", m.get("base")), ("salvage.base", salvage.get("base"))):
        if record is None:
            continue
        if not isinstance(record, dict):
            _bad(where, record, "an object")
        for key in ("source", "path", "kind", "revision"):
            if record.get(key) is not None and not isinstance(record[key], str):
                _bad(f"{where}.{key}", record[key], "a string")
        _sha_map(record, "shards", f"{where}.shards", required=False)
    candidate = salvage.get("candidate")
    if candidate is not None:
        _sha_map(
            candidate if isinstance(candidate, dict) else _bad("salvage.candidate", candidate, "an object"),
            "shards",
            "salvage.candidate.shards",
            required=False,
        )


def _need(record: dict, key: str, kind, where: str):
    if key not in record:
        raise _Malformed(f"{where} is missing")
    value = record[key]
    if kind == "sha":
        if not is_sha256(value):
            raise _Malformed(f"{where}: not a SHA256")
    elif kind is int:
        if not _is_int(value):
            _bad(where, value, "an integer")
    elif not isinstance(value, kind):
        _bad(where, value, {dict: "an object", list: "a list"}[kind])
    return value


def _bad(where: str, value: object, wanted: str):
    raise _Malformed(f"{where} is {_kind(value)}, not {wanted}")


def _sha_map(record: dict, key: str, where: str, required: bool) -> None:
    if key not in record and not required:
        return
    mapping = _need(record, key, dict, where)
    for name, sha in mapping.items():
        if not _plain_name(name):
            raise _Malformed(f"{where}: {_short_name(name)} is not a file name in the folder")
        if not is_sha256(sha):
            raise _Malformed(f"{where}[{_short_name(name)}]: not a SHA256")


def _int_list(record: dict, key: str, where: str, required: bool) -> None:
    if key not in record and not required:
        return
    values = _need(record, key, list, where)
    if not all(_is_int(v) for v in values):
        raise _Malformed(f"{where}: not a list of integers")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _plain_name(name: str) -> bool:
    return name not in ("", ".", "..") and "/" not in name and "\\" not in name and "\0" not in name


def _kind(value: object) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def _short_name(name: str, limit: int = 60) -> str:
    text = repr(name)
    return text if len(text) <= limit else text[: limit - 1] + "…"
