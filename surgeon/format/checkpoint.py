"""A checkpoint as surgeon sees it: shard headers, tensor byte ranges and config, no data.

A checkpoint is a local directory (one `model.safetensors`, or shards plus an index), a
single `.safetensors` file, or a Hub repo id taken from the local Hugging Face cache (and
downloaded only when asked: hub.py).

A folder is read through the files transformers' `from_pretrained` would load, in its order
(modeling_utils._get_resolved_checkpoint_files, transformers 5.25, the same for a local folder
and a Hub repo): the file config.json's `transformers_weights` names, else `model.safetensors`,
else `model.safetensors.index.json` and its shards. So a `model.safetensors` beside an index
is what is read, and the index and its shards are ignored, as transformers ignores them (the
checkpoint's `note` says so): reading the index instead called two folders identical whose
loaded weights differ. Where transformers would find nothing (an index of another name, shards
without an index), surgeon still reads what there is.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from surgeon.errors import SurgeonError
from surgeon.format.hub import (
    cached_snapshot,
    resolve_hub_repo,
    snapshot_of,
)
from surgeon.format.safetensors import ShardHeader, TensorInfo, read_header
from surgeon.jsonfile import read_json_file, read_json_object
from surgeon.text import shown

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
INDEX_SUFFIX = ".safetensors.index.json"
SIDE_FILE_LIMIT = 256 << 20  # a side file larger than this is no config or tokenizer: not compared


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
    ignored: list[str] = field(default_factory=list)  # weight files here that transformers would not load
    note: str | None = None  # why they are not read, one line, when there are any
    file: str | None = None  # the single .safetensors file named, None for a folder or Hub id

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
    config = _read_config(root)
    weights = _Weights.of(root, only_file, config)
    shards = {name: read_header(root / name, name) for name in weights.shards}
    tensors = _merge_shards(shards, weights.weight_map, weights.index_name)
    return Checkpoint(
        source=source,
        root=root,
        shards=shards,
        tensors=tensors,
        index_name=weights.index_name,
        config=config,
        revision=revision,
        metadata=weights.metadata,
        ignored=weights.ignored,
        note=weights.note,
        file=only_file,
    )


def source_record(ckpt: Checkpoint) -> dict:
    """How a manifest names `ckpt`, with no path of this machine in it (a manifest is
    published beside the weights): a Hugging Face cache snapshot (a Hub id given, or its
    folder) as its repo id and commit, a folder or a single .safetensors file by its name.
    The shard hashes recorded beside this say which bytes were read."""
    hub = snapshot_of(ckpt.root)
    if hub is not None:
        return {"source": hub[0], "kind": "hub", "revision": hub[1]}
    if ckpt.file is not None:
        return {"source": ckpt.file, "kind": "file", "revision": None}
    return {"source": ckpt.root.name or ckpt.root.anchor, "kind": "folder", "revision": None}


def public_name(ckpt: Checkpoint) -> str:
    """`ckpt` as a model card names it: `org/name@commit`, or the folder's or file's name."""
    record = source_record(ckpt)
    return f"{record['source']}@{record['revision']}" if record["kind"] == "hub" else record["source"]


def side_files(ckpt: Checkpoint) -> set[str]:
    """The files besides the weights that a diff compares: every regular, not hidden file of
    the folder up to SIDE_FILE_LIMIT (config, index, tokenizer); none for a .safetensors file
    named alone (its folder's files are not what was asked about) or beside a lone one, whose
    folder is no checkpoint (one whose index is ignored is one)."""
    if ckpt.file is not None:
        return set()
    lone = len(ckpt.shards) == 1 and ckpt.index_name is None and not ckpt.ignored
    if lone and not (ckpt.root / "config.json").exists():
        return set()
    return {
        p.name
        for p in ckpt.root.iterdir()
        if p.is_file()
        and not p.name.startswith(".")
        and p.suffix != ".safetensors"
        and p.stat().st_size <= SIDE_FILE_LIMIT
    }


def few_names(names: list[str], limit: int = 3) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


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
        # the folder it is in, the name as given: a link (every file of a Hub cache snapshot is one,
        # to blobs/<sha256>) is opened through, its folder's side files are the link's
        return path.parent.resolve(), path.name
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


SINGLE_FILE = "model.safetensors"  # transformers' SAFE_WEIGHTS_NAME
INDEX_FILE = "model.safetensors.index.json"  # its SAFE_WEIGHTS_INDEX_NAME


@dataclass
class _Weights:
    """Which files of a folder hold its weights: what transformers would load (the module's
    docstring), else what there is."""

    shards: list[str]
    index_name: str | None = None
    weight_map: dict[str, str] | None = None
    metadata: dict = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)
    note: str | None = None

    @classmethod
    def of(cls, root: Path, only_file: str | None, config: dict | None) -> _Weights:
        if only_file is not None:
            return cls([only_file])
        named = _named_weights(root, config)
        if named is not None:
            why = "config.json's transformers_weights names it"
        elif (root / SINGLE_FILE).is_file() and any(root.glob("*" + INDEX_SUFFIX)):
            named, why = SINGLE_FILE, "transformers loads it before any index"
        weights = cls._read(root, named)
        if named is not None:
            weights._ignore(root, why)
        elif weights.index_name is not None:
            weights._ignore(root, "the index names its shards")
        elif weights.shards == [SINGLE_FILE]:
            # transformers reads model.safetensors alone; a loader that reads every
            # .safetensors file of the folder (vLLM's) reads the others too: say so.
            weights._ignore(root, "transformers loads it and no other weight file beside it")
            if weights.note:
                them = "it" if len(weights.ignored) == 1 else "them"
                weights.note += f" (a loader that reads every .safetensors file, as vLLM's does, reads {them} too)"
        return weights

    @classmethod
    def _read(cls, root: Path, named: str | None) -> _Weights:
        if named is not None and not named.endswith(INDEX_SUFFIX):
            return cls([named])
        index_name, weight_map, meta = _read_index(root, named)
        return cls(_shard_names(root, weight_map), index_name, weight_map, meta)

    def _ignore(self, root: Path, why: str) -> None:
        """The other weight files and indexes at the top of the folder, which transformers
        does not read once it has found its file, and the note saying so."""
        read = set(self.shards) | {self.index_name}
        self.ignored = sorted(
            p.name
            for p in root.iterdir()
            if p.name.endswith((".safetensors", INDEX_SUFFIX)) and p.name not in read and p.is_file()
        )
        if self.ignored:
            one = len(self.ignored) == 1
            self.note = (
                f"{self.index_name or self.shards[0]} is read, as {why}: {_files(self.ignored)} "
                f"{'is' if one else 'are'} ignored, as transformers ignores {'it' if one else 'them'}"
            )


def _files(names: list[str]) -> str:
    """ "model.safetensors.index.json and 2 other .safetensors files": indexes by name, weight
    files by name when one, else counted."""
    indexes = [name for name in names if name.endswith(INDEX_SUFFIX)]
    weights = [name for name in names if name not in indexes]
    counted = [] if not weights else weights if len(weights) == 1 else [f"{len(weights)} other .safetensors files"]
    return " and ".join(filter(None, [few_names(indexes), *counted]))


def _named_weights(root: Path, config: dict | None) -> str | None:
    """The file config.json's `transformers_weights` names (transformers loads it and nothing
    else: from_pretrained's transformers_explicit_filename), checked as transformers checks it;
    a file in a subfolder is refused, as surgeon reads only the folder's own files."""
    name = (config or {}).get("transformers_weights")
    if name is None:
        return None
    where = f"{root / 'config.json'}: transformers_weights"
    if not isinstance(name, str) or not name.endswith((".safetensors", INDEX_SUFFIX)):
        raise SurgeonError(f"{where} is {shown(name)}, not a .safetensors file or a .safetensors.index.json")
    if Path(name).name != name or name in (".", ".."):
        raise SurgeonError(f"{where} names {shown(name)}, which is not a file at the top of the folder")
    path = root / name
    if not os.path.lexists(path):
        raise SurgeonError(f"{where} names {shown(name)}, which is missing")
    if not path.is_file():  # a FIFO, a device, a folder, a link to /dev/zero or a dangling one
        raise SurgeonError(f"{where} names {shown(name)}, which is not a regular file")
    return name


def _read_index(root: Path, name: str | None = None) -> tuple[str | None, dict[str, str] | None, dict]:
    """The index `name`, else the folder's one index (model.safetensors.index.json first)."""
    candidates = [name] if name is not None else sorted(p.name for p in root.glob("*" + INDEX_SUFFIX))
    if not candidates:
        return None, None, {}
    name = INDEX_FILE if INDEX_FILE in candidates else None
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


def _shard_names(root: Path, weight_map: dict | None) -> list[str]:
    if weight_map is not None:
        names = sorted(set(weight_map.values()))
        for name in names:
            if not (root / name).is_file():
                raise SurgeonError(f"{root}: the index names shard {name} which is missing")
        return names
    if (root / SINGLE_FILE).is_file():
        return [SINGLE_FILE]
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


def weight_files(root: Path) -> list[str]:
    """The .safetensors files open_checkpoint would read in folder `root` (transformers' order:
    hub_pair's stand-in asks, instead of a copy of the rule)."""
    return _Weights.of(root, None, _read_config(root)).shards


def _read_config(root: Path) -> dict | None:
    path = root / "config.json"
    if not os.path.lexists(path):
        return None
    return read_json_object(path)  # a FIFO, a device or a dangling link here is an error, not "no config"
