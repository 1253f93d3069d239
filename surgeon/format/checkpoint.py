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

import contextlib
import os
import re
import sys
import tempfile
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath

from surgeon.errors import SurgeonError
from surgeon.format.hashcache import HashCache
from surgeon.format.hashing import FileHashes, bytes_to_hash, file_sha256, hash_shards
from surgeon.format.hub import (
    FileMatch,
    HubMatch,
    RemoteCheckpoint,
    RemoteTensor,
    cache_reuse,
    cached_snapshot,
    compare_remote,
    describe_comparison,
    download_remote,
    fetch_files,
    fetch_headers,
    fetch_remote,
    progress_bars,
    resolve_hub_repo,
    snapshot_of,
)
from surgeon.format.safetensors import ShardHeader, TensorInfo, read_header
from surgeon.jsonfile import read_json_file, read_json_object
from surgeon.progress import NoProgress, ProgressSink

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
    skip_identical: bool = False,
    bars: bool | None = None,
) -> tuple[Checkpoint, Checkpoint] | HubMatch:
    """Open both sides of a diff. With `download`, a side that is a Hub id missing from the
    cache while the other side is here is first compared with it from the Hub's LFS hashes
    and headers alone (the local side's bytes are hashed, shown on `progress`, and stored in
    the hash cache in `cache_dir`, which the diff then reuses). With `skip_identical` (the
    CLI's diff, not its --markdown, whose SHA256s must come from both sides' bytes), when the
    folder the download would make is found identical to the local side file by file (the
    stand-in below; hub.py says on what evidence), nothing is downloaded and a HubMatch is
    returned instead of the pair. Otherwise `say` gets that comparison, one line, before any
    weight byte is downloaded; then it is downloaded. `bars`: huggingface_hub's own download
    bars (None: on a terminal only)."""
    sides = [(str(base), base_revision), (str(other), other_revision)]
    missing = [i for i, side in enumerate(sides) if download and _not_here(*side)]
    bars = sys.stderr.isatty() if bars is None else bars
    # only where a download may start: huggingface_hub costs 300 ms to import, a local diff none
    with progress_bars(bars) if missing else contextlib.nullcontext():
        if len(missing) == 1:
            match = _compare_then_download(sides, missing[0], cache_dir, say, progress, skip_identical, bars)
            if match is not None:
                return match
        return open_checkpoint(base, base_revision, download=download), open_checkpoint(
            other, other_revision, download=download
        )


def _compare_then_download(
    sides: list[tuple[str, str | None]],
    hub_side: int,
    cache_dir: Path | None,
    say: Callable[[str], None] | None,
    progress: ProgressSink | None,
    skip_identical: bool,
    bars: bool,
) -> HubMatch | None:
    """open_pair's Hub side `hub_side`, not cached, against the other, local: the comparison
    from hashes and headers, then the HubMatch where all is the same, else the download."""
    here = open_checkpoint(*sides[1 - hub_side])
    remote = fetch_remote(*sides[hub_side])
    local_name = "BASE" if hub_side == 1 else "OTHER"
    progress = progress or NoProgress()
    # the hash cache may answer here: this line and the stand-in's links only steer; what
    # may skip the download is hashed again from the bytes below (`fresh`), and only then
    hashes = _file_hashes(list(here.shards.values()), cache_dir, progress, here.source, fresh=False)
    with tempfile.TemporaryDirectory(prefix="surgeon-hub-") as tmp:
        stand_in = _StandIn.build(remote, Path(tmp), here, {n: h.file_sha256 for n, h in hashes.items()}, bars)
        comparison = compare_remote(remote, here, stand_in.local_sha256)
        doubt = ""  # why a download that changes nothing is done all the same
        if comparison.identical and remote.layout_error is None and not skip_identical:
            doubt = "downloading all the same: this report's SHA256s are hashed from both sides' bytes"
        elif comparison.identical and remote.layout_error is None:
            stale = [here.shards[n] for n, h in hashes.items() if h.source != "bytes"]
            if stale:  # only now, when all else says identical: no second read of what will be downloaded
                fresh = _file_hashes(stale, cache_dir, progress, here.source, fresh=True)
                stand_in.local_sha256.update({n: h.file_sha256 for n, h in fresh.items()})
                comparison = compare_remote(remote, here, stand_in.local_sha256)
            found = stand_in.doubt(local_name) if comparison.identical else ""
            if found is None:
                return HubMatch(remote=remote, hub_side=("base", "other")[hub_side], local=here, files=stand_in.files)
            doubt = found
    line = describe_comparison(remote, comparison, local_name) + (f"; {doubt}" if doubt else "")
    if say is not None:
        say(line)
    download_remote(remote, bars=bars)
    return None


@dataclass
class _StandIn:
    """The folder `download_remote` would make, laid out in a temporary folder without a
    weight byte downloaded, so that surgeon's own open_checkpoint and side_files say how it
    would be read, instead of a copy of their rules: the files the download would bring at the
    top (huggingface_hub's listing and pattern rule), each one either real or a placeholder.
    Real: a file outside LFS, fetched (small); a file in LFS whose LFS SHA256 equals the local
    same-named file's, a link to it; an index or config.json in LFS that differs, fetched
    (open_checkpoint parses them). Placeholder: any other, an empty sparse file of its size,
    known only by its LFS SHA256, which counts as not compared wherever the stand-in reads it.
    Folders the download would create are there, empty (a folder named *.safetensors breaks
    the open as it would after a download)."""

    remote: RemoteCheckpoint
    folder: Path
    here: Checkpoint
    local_sha256: dict[str, str]  # the local shards', by name
    local_side: dict[str, str]  # the local side files' SHA256s, hashed now
    evidence: dict[str, FileMatch]  # each real file: how it is known to be the same
    files: list[FileMatch] = field(default_factory=list)  # what a HubMatch rests on, once found

    @classmethod
    def build(
        cls, remote: RemoteCheckpoint, folder: Path, here: Checkpoint, local_sha256: dict[str, str], bars: bool
    ) -> _StandIn:
        downloaded = remote.downloaded
        top = [name for name in downloaded if "/" not in name]
        local_side = {name: file_sha256(here.root / name) for name in side_files(here)}
        stand_in = cls(remote, folder, here, dict(local_sha256), local_side, {})
        refused = _unplaceable(downloaded)
        if refused is not None:  # nothing is laid out: no stand-in, so no match; the download decides
            remote.layout_error = refused
            return stand_in
        for name in downloaded:
            if "/" in name:
                (folder / name.split("/")[0]).mkdir(exist_ok=True)
        linked = [
            name
            for name in top
            if remote.files[name].sha256 is not None and stand_in._local_sha256(name) == remote.files[name].sha256
        ]
        fetched = [
            name
            for name in top
            if name not in linked
            and (remote.files[name].sha256 is None or name == "config.json" or name.endswith(INDEX_SUFFIX))
        ]
        if fetched:
            fetch_files(remote, fetched, folder, bars=bars)
        for name in fetched:
            stand_in.evidence[name] = FileMatch(
                name, (folder / name).stat().st_size, file_sha256(folder / name), "bytes"
            )
        try:
            stand_in._lay_out([name for name in top if name not in stand_in.evidence and name not in linked], linked)
        except OSError as exc:  # a size or name this file system refuses, no symbolic links: the download decides
            remote.layout_error = (
                f"{Path(exc.filename or '?').name} cannot be laid out here to compare it: {exc.strerror}"
            )
            return stand_in
        stand_in._read_headers()
        return stand_in

    def _lay_out(self, placeholders: list[str], linked: list[str]) -> None:
        """The placeholders first, each created new ("x": O_CREAT|O_EXCL, never opened through
        a link to a local file, whatever the file system), then the links to the local files
        whose bytes the Hub's LFS SHA256 names; an OSError leaves the stand-in unfinished."""
        for name in placeholders:
            try:
                with open(self.folder / name, "xb") as placeholder:
                    placeholder.truncate(self.remote.files[name].size or 0)
            except OSError as exc:  # truncate's error names no file: this one does
                raise OSError(exc.errno, exc.strerror, name) from exc
        for name in linked:
            os.symlink(self.here.root / name, self.folder / name)
            lfs_sha256 = self.remote.files[name].sha256 or ""  # not None: `linked` holds files in LFS only
            size = (self.here.root / name).stat().st_size
            self.evidence[name] = FileMatch(name, size, lfs_sha256, "hub-lfs-sha256")

    def _local_sha256(self, name: str) -> str | None:
        """The SHA256 of the local file `name`, if the diff reads it (a shard or a side file)."""
        return self.local_sha256.get(name) if name in self.here.shards else self.local_side.get(name)

    def _known_sha256(self, name: str) -> str | None:
        """What the Hub's file `name` is known to hash to: from its bytes or its LFS SHA256."""
        return self.evidence[name].sha256 if name in self.evidence else self.remote.files[name].sha256

    def _read_headers(self) -> None:
        """Which shards the downloaded folder would be opened through, by open_checkpoint's
        own rules (_Weights: what transformers would load), and their headers: a linked shard's from the
        local file, the others' read from the Hub."""
        try:
            names = _Weights.of(self.folder, None, _read_config(self.folder)).shards
        except SurgeonError as exc:
            self.remote.layout_error = self._hub_words(exc)
            return
        if odd := [name for name in names if name not in self.remote.files]:
            self.remote.layout_error = f"{odd[0]} is a folder on the Hub, not a safetensors file"
            return
        for name in (n for n in names if n in self.evidence):
            try:
                shard = read_header(self.folder / name, name)
            except SurgeonError as exc:  # an index may name any file: the download would not open either
                self.remote.layout_error = self._hub_words(exc)
                return
            tensors = {
                t.name: RemoteTensor(
                    t.dtype.name, t.shape, (t.start - shard.data_start, t.end - shard.data_start), name
                )
                for t in shard.tensors.values()
            }
            self.remote.add_shard(name, tensors, dict(shard.metadata or {}))
        fetch_headers(self.remote, [n for n in names if n not in self.evidence])

    def doubt(self, local_name: str) -> str | None:
        """None when the downloaded folder would be opened and compared as identical to the
        local side, file by file (then `files` is the evidence); else why a download is due.
        Called once the shards compare identical (compare_remote, from bytes hashed now)."""
        reused = cache_reuse(self.remote, [name for name in self.remote.downloaded if "/" not in name])
        if reused is not None:  # what the download would take from the cache, not from the Hub
            return reused
        try:
            hub = open_checkpoint(self.folder)  # exactly as open_checkpoint will open the download
        except SurgeonError as exc:
            return f"the Hub's files would not open ({self._hub_words(exc)})"
        hub_side = side_files(hub)
        read = set(hub.shards) | hub_side | ({hub.index_name} if hub.index_name else set())
        read |= {"config.json"} if os.path.lexists(self.folder / "config.json") else set()
        differs = self._side_differences(hub_side, local_name)
        if differs:
            return f"other files: {differs}"
        unseen = sorted(name for name in read if name not in self.evidence)
        if unseen:  # a placeholder it would read: not compared, so not known to be the same
            return f"{_few(unseen)} on the Hub not compared without downloading"
        if set(hub.shards) != set(self.here.shards):
            return f"the Hub's folder would be read through {_few(sorted(hub.shards))}"
        shards = [
            FileMatch(n, self.here.shards[n].file_size, self.local_sha256[n], "hub-lfs-sha256")
            for n in sorted(hub.shards)
        ]
        self.files = shards + [self.evidence[n] for n in sorted(hub_side)]
        return None

    def _side_differences(self, hub_side: set[str], local_name: str) -> str:
        """What the diff's files[] would show differing, in words ("" when nothing)."""
        both = sorted(hub_side & set(self.local_side))
        return ", ".join(
            [f"{n} changed" for n in both if self._known_sha256(n) != self.local_side[n]]
            + [f"{n} only on the Hub" for n in sorted(hub_side - set(self.local_side))]
            + [f"{n} only in {local_name}" for n in sorted(set(self.local_side) - hub_side)]
        )

    def _hub_words(self, exc: SurgeonError) -> str:
        """An error about the stand-in, naming the repo instead of the temporary folder."""
        text = str(exc).replace(f"{self.folder.resolve()}{os.sep}", "").replace(f"{self.folder}{os.sep}", "")
        return text.replace(str(self.folder.resolve()), self.remote.repo_id).replace(
            str(self.folder), self.remote.repo_id
        )


def _unplaceable(names: list[str]) -> str | None:
    """Why the files `names` cannot be laid out as plain files of one folder, or None. A name
    huggingface_hub would refuse for a local folder (a `..` segment, an absolute, drive or UNC
    path under POSIX or Windows rules: `C:x`, `..\\x`) would lead a stand-in file outside its
    folder; two names one file system may take for one (case, Unicode normalization: macOS,
    Windows) would open one file through the other's link, a link to a local file."""
    seen: dict[str, str] = {}
    for name in names:
        parts = name.replace("\\", "/").split("/")
        if (
            "\0" in name
            or any(p in ("", ".", "..") for p in parts)
            or any(PureWindowsPath(p).drive or PureWindowsPath(p).root or ":" in p for p in parts)
        ):
            return f"the Hub lists {name!r}, which is no plain relative file name"
        for depth in range(1, len(parts) + 1):
            path = "/".join(parts[:depth]) + ("" if depth == len(parts) else "/")  # a folder ends with "/"
            key = unicodedata.normalize("NFC", path.rstrip("/")).casefold()
            if seen.setdefault(key, path) != path:
                return (
                    f"the Hub lists {seen[key]!r} and {path!r}: one path where case or accents fold, or file and folder"
                )
    return None


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


def _not_here(source: str, revision: str | None) -> bool:
    """A Hub id that is neither a local path nor in the local cache."""
    return (
        bool(REPO_ID.match(source)) and not Path(source).expanduser().exists() and not cached_snapshot(source, revision)
    )


def _few(names: list[str], limit: int = 3) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _file_hashes(
    shards: list[ShardHeader], cache_dir: Path | None, progress: ProgressSink, source: str, *, fresh: bool
) -> dict[str, FileHashes]:
    """Each shard's hashes, by name. Not `fresh`: as the diff gets them (the hash cache may
    answer, at no cost when it does). `fresh`: from the bytes, read now, for what may skip a
    download is evidence, so neither a stat-cache entry nor a Hub blob's name stands for
    them; they go to the cache, where the diff that may follow finds them."""
    cache = HashCache(cache_dir)
    progress.start(f"hashing {source}", bytes_to_hash(shards, cache, trust_cache=not fresh, trust_blob_names=not fresh))
    try:
        hashes = hash_shards(
            shards, cache, progress=progress.advance, trust_cache=not fresh, trust_blob_names=not fresh
        )
    finally:
        progress.stop()
    return {shard.name: hashes[os.path.realpath(shard.path)] for shard in shards}


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
    return " and ".join(filter(None, [_few(indexes), *counted]))


def _named_weights(root: Path, config: dict | None) -> str | None:
    """The file config.json's `transformers_weights` names (transformers loads it and nothing
    else: from_pretrained's transformers_explicit_filename), checked as transformers checks it;
    a file in a subfolder is refused, as surgeon reads only the folder's own files."""
    name = (config or {}).get("transformers_weights")
    if name is None:
        return None
    where = f"{root / 'config.json'}: transformers_weights"
    if not isinstance(name, str) or not name.endswith((".safetensors", INDEX_SUFFIX)):
        raise SurgeonError(f"{where} is {name!r}, not a .safetensors file or a .safetensors.index.json")
    if Path(name).name != name or name in (".", ".."):
        raise SurgeonError(f"{where} names {name!r}, which is not a file at the top of the folder")
    if not (root / name).is_file():
        raise SurgeonError(f"{where} names {name}, which is missing")
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


def _read_config(root: Path) -> dict | None:
    path = root / "config.json"
    if not os.path.lexists(path):
        return None
    return read_json_object(path)  # a FIFO, a device or a dangling link here is an error, not "no config"
