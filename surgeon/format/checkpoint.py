"""A checkpoint as surgeon sees it: shard headers, tensor byte ranges and config, no data.

A checkpoint is a local directory (one `model.safetensors`, or shards plus an index), a
single `.safetensors` file, or a Hub repo id taken from the local Hugging Face cache (and
downloaded only when asked: hub.py).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from surgeon.errors import SurgeonError
from surgeon.format.hashcache import HashCache
from surgeon.format.hashing import bytes_to_hash, hash_shards
from surgeon.format.hub import (
    cached_snapshot,
    compare_remote,
    describe_comparison,
    download_remote,
    fetch_remote,
    resolve_hub_repo,
)
from surgeon.format.safetensors import ShardHeader, TensorInfo, read_header
from surgeon.jsonfile import read_json_file, read_json_object
from surgeon.progress import NoProgress, ProgressSink

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


@dataclass
class Checkpoint:
    source: str  # what the user named: a path or a repo id
    root: Path
    shards: dict[str, ShardHeader]
    tensors: dict[str, TensorInfo]
    index_name: str | None = None
    config: dict | None = None
    revision: str | None = None
    metadata: dict = field(default_factory=dict)  # the index's "metadata" block

    def shard_path(self, name: str) -> Path:
        return self.root / name

    @property
    def total_bytes(self) -> int:
        return sum(shard.file_size for shard in self.shards.values())


def open_checkpoint(spec: str | os.PathLike, revision: str | None = None, *, download: bool = False) -> Checkpoint:
    """Resolve `spec` and read every shard header, validating the shard map. A Hub repo id
    comes from the local Hugging Face cache; only `download` lets it be fetched (see hub.py)."""
    source = str(spec)
    root, only_file = _resolve(source, revision, download)
    index_name, weight_map, index_meta = _read_index(root) if only_file is None else (None, None, {})
    shard_names = _shard_names(root, only_file, weight_map)
    shards = {name: read_header(root / name, name) for name in shard_names}
    tensors = _merge_shards(shards, weight_map, index_name)
    return Checkpoint(
        source=source,
        root=root,
        shards=shards,
        tensors=tensors,
        index_name=index_name,
        config=_read_config(root),
        revision=revision,
        metadata=index_meta,
    )


def open_pair(
    base: str | os.PathLike,
    other: str | os.PathLike,
    base_revision: str | None = None,
    other_revision: str | None = None,
    *,
    download: bool = False,
    cache_dir: Path | None = None,
    say: Callable[[str], None] | None = None,
    progress: ProgressSink | None = None,
) -> tuple[Checkpoint, Checkpoint]:
    """Open both sides of a diff. With `download`, a side that is a Hub id missing from the
    cache while the other side is here is first compared with it from the Hub's LFS hashes
    and headers alone (`say` gets that comparison, one line, before any weight byte is
    downloaded; the local side is hashed through the hash cache in `cache_dir`, which the
    diff then reuses, with its bytes shown on `progress`); then it is downloaded."""
    sides = [(str(base), base_revision), (str(other), other_revision)]
    missing = [i for i, side in enumerate(sides) if download and _not_here(*side)]
    if len(missing) == 1:
        here = open_checkpoint(*sides[1 - missing[0]])
        remote = fetch_remote(*sides[missing[0]])
        comparison = compare_remote(remote, here, _file_hashes(here, cache_dir, progress or NoProgress()))
        if say is not None:
            say(describe_comparison(remote, comparison, "BASE" if missing[0] == 1 else "OTHER"))
        download_remote(remote)
    return open_checkpoint(base, base_revision, download=download), open_checkpoint(
        other, other_revision, download=download
    )


def _not_here(source: str, revision: str | None) -> bool:
    """A Hub id that is neither a local path nor in the local cache."""
    return (
        bool(REPO_ID.match(source)) and not Path(source).expanduser().exists() and not cached_snapshot(source, revision)
    )


def _file_hashes(ckpt: Checkpoint, cache_dir: Path | None, progress: ProgressSink) -> dict[str, str]:
    shards, cache = list(ckpt.shards.values()), HashCache(cache_dir)
    progress.start(f"hashing {ckpt.source}", bytes_to_hash(shards, cache))
    try:
        hashes = hash_shards(shards, cache, progress=progress.advance)
    finally:
        progress.stop()
    return {shard.name: hashes[os.path.realpath(shard.path)].file_sha256 for shard in shards}


def fetch_missing(spec: str | os.PathLike, revision: str | None = None) -> None:
    """Download `spec` when it is a Hub id that names no local path and is not cached, so that
    a later `open_checkpoint(spec)` finds it; anything else is left to `open_checkpoint`. For
    engines that open their checkpoints themselves and report what fails (verify)."""
    source = str(spec)
    if REPO_ID.match(source) and not Path(source).expanduser().exists():
        resolve_hub_repo(source, revision, download_missing=True)


def _resolve(source: str, revision: str | None, download: bool) -> tuple[Path, str | None]:
    path = Path(source).expanduser()
    if path.is_file():
        if path.suffix != ".safetensors":
            raise SurgeonError(f"{source}: not a .safetensors file or a checkpoint directory")
        return path.resolve().parent, path.name
    if path.is_dir():
        return path.resolve(), None
    if not REPO_ID.match(source):  # which no path starting with ".", "/" or "~" does
        raise SurgeonError(f"{source}: no such checkpoint directory, file or Hub repo id")
    if path.parent.is_dir() and not download:  # `fixtures/prunedd`: a mistyped path, not an org on the Hub
        cached = cached_snapshot(source, revision)
        if cached is None:
            raise SurgeonError(f"{source}: no such folder, and not in the local Hugging Face cache")
        return cached, None
    return resolve_hub_repo(source, revision, download_missing=download), None


def _load_json(path: Path) -> object:
    """A side file of an untrusted folder: a regular file of bounded size (a FIFO would
    hang the read, a link to /dev/zero would fill memory), parsed with deep nesting as one
    "not valid JSON" error."""
    return read_json_file(path)


def _read_index(root: Path) -> tuple[str | None, dict[str, str] | None, dict]:
    candidates = sorted(p.name for p in root.glob("*.safetensors.index.json"))
    if not candidates:
        return None, None, {}
    name = "model.safetensors.index.json" if "model.safetensors.index.json" in candidates else None
    if name is None:
        if len(candidates) > 1:
            raise SurgeonError(f"{root}: several shard indexes ({', '.join(candidates)})")
        name = candidates[0]
    index = _load_json(root / name)
    if not isinstance(index, dict):
        index = {}  # no weight_map, which the check below rejects
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
    ):
        raise SurgeonError(f"{root / name}: has no weight_map of tensor names to shard files")
    if not weight_map:  # else the folder's shards would be silently ignored: an empty checkpoint
        raise SurgeonError(f"{root / name}: its weight_map lists no tensors")
    for shard in set(weight_map.values()):
        if Path(shard).name != shard or shard in ("", ".", ".."):
            raise SurgeonError(f"{root / name}: shard name {shard!r} is not a plain file name")
    meta = index.get("metadata")
    return name, weight_map, meta if isinstance(meta, dict) else {}


def _shard_names(root: Path, only_file: str | None, weight_map: dict | None) -> list[str]:
    if only_file is not None:
        return [only_file]
    if weight_map is not None:
        names = sorted(set(weight_map.values()))
        for name in names:
            if not (root / name).is_file():
                raise SurgeonError(f"{root}: the index names shard {name} which is missing")
        return names
    if (root / "model.safetensors").is_file():
        return ["model.safetensors"]
    names = sorted(p.name for p in root.glob("*.safetensors"))
    if names:
        return names
    pickles = sorted(p.name for p in root.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise SurgeonError(
            f"{root}: only pickle weights ({pickles[0]}); surgeon never unpickles, convert to safetensors first"
        )
    raise SurgeonError(f"{root}: no .safetensors files")


def _merge_shards(
    shards: dict[str, ShardHeader], weight_map: dict[str, str] | None, index_name: str | None
) -> dict[str, TensorInfo]:
    tensors: dict[str, TensorInfo] = {}
    for shard in shards.values():
        for name, info in shard.tensors.items():
            if name in tensors:
                raise SurgeonError(
                    f"{shard.path.parent}: tensor {name!r} is in both {tensors[name].file} and {shard.name}"
                )
            tensors[name] = info
    if weight_map is None:
        return tensors
    for name, shard_name in weight_map.items():
        listed = tensors.get(name)
        if listed is None or listed.file != shard_name:
            raise SurgeonError(f"{index_name}: places tensor {name!r} in {shard_name}, whose header lacks it")
    unlisted = sorted(set(tensors) - set(weight_map))
    if unlisted:
        raise SurgeonError(
            f"{index_name}: does not list tensor {unlisted[0]!r} of {tensors[unlisted[0]].file}"
            + (f" (and {len(unlisted) - 1} more)" if len(unlisted) > 1 else "")
        )
    return tensors


def _read_config(root: Path) -> dict | None:
    path = root / "config.json"
    if not os.path.lexists(path):
        return None
    return read_json_object(path)  # a FIFO, a device or a dangling link here is an error, not "no config"
