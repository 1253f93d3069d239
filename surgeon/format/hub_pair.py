"""A diff whose one side is a Hub id not in the local cache (`diff --download`): what the
Hub's LFS SHA256s and headers say a download would change, told before any weight byte is
downloaded, and the download skipped when the folder it would make is identical to the local
side file by file (`HubMatch`). hub.py says on what evidence a file counts as the same; the
stand-in here lays out the folder the download would make, so that checkpoint.py's own
open_checkpoint and side_files say how it would be read. Its own module: it needs both the
checkpoint and the Hub, which need nothing of each other."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath

from surgeon.errors import SurgeonError
from surgeon.format.checkpoint import (
    INDEX_SUFFIX,
    REPO_ID,
    Checkpoint,
    few_names,
    open_checkpoint,
    side_files,
    weight_files,
)
from surgeon.format.hashcache import HashCache
from surgeon.format.hashing import FileHashes, bytes_to_hash, file_sha256, hash_shards
from surgeon.format.hub import (
    RemoteCheckpoint,
    RemoteFile,
    RemoteTensor,
    cache_reuse,
    cached_snapshot,
    download_remote,
    fetch_files,
    fetch_headers,
    fetch_remote,
    progress_bars,
)
from surgeon.format.safetensors import ShardHeader, read_header
from surgeon.progress import NoProgress, ProgressSink


@dataclass
class RemoteComparison:
    """A local checkpoint against a remote one, from hashes and headers only. Files compare
    by SHA256 (the Hub's LFS hash against the local file's), tensors by dtype and shape."""

    same_files: list[str]  # safetensors files whose bytes are identical on both sides
    changed_files: list[str]
    only_remote_files: list[str]
    only_local_files: list[str]
    only_remote_tensors: list[str]
    only_local_tensors: list[str]
    reshaped_tensors: list[str]  # same name, another dtype or shape

    @property
    def identical(self) -> bool:
        """Every weight byte is already here: a download would add nothing to a diff."""
        return not (self.changed_files or self.only_remote_files or self.only_local_files)


def compare_remote(remote: RemoteCheckpoint, local: Checkpoint, local_sha256: dict[str, str]) -> RemoteComparison:
    """Compare `remote` (from `fetch_remote`, no weights downloaded) with `local`, whose
    safetensors files hash to `local_sha256` (file name -> SHA256, as the hash cache gives)."""
    remote_files, local_files = set(remote.safetensors_files), set(local.shards)
    both = sorted(remote_files & local_files)
    same = [name for name in both if _same_bytes(remote.files.get(name), local_sha256.get(name))]
    shared = sorted(set(remote.tensors) & set(local.tensors))
    return RemoteComparison(
        same_files=same,
        changed_files=[name for name in both if name not in same],
        only_remote_files=sorted(remote_files - local_files),
        only_local_files=sorted(local_files - remote_files),
        only_remote_tensors=sorted(set(remote.tensors) - set(local.tensors)),
        only_local_tensors=sorted(set(local.tensors) - set(remote.tensors)),
        reshaped_tensors=[
            name
            for name in shared
            if (remote.tensors[name].dtype, remote.tensors[name].shape)
            != (local.tensors[name].dtype.name, local.tensors[name].shape)
        ],
    )


def describe_comparison(remote: RemoteCheckpoint, comparison: RemoteComparison, local_name: str) -> str:
    """One line: what a download of `remote` would bring, against the local `local_name`."""
    if remote.layout_error is not None:
        return (
            f"{remote.repo_id} at {remote.commit[:12]}, from the Hub's file list (no weights downloaded yet): "
            f"not compared before downloading: {remote.layout_error}"
        )
    files = len(remote.safetensors_files)
    size = sum(remote.files[n].size or 0 for n in remote.safetensors_files if n in remote.files)
    changes = [
        f"{len(names)} {what}"
        for names, what in (
            (comparison.changed_files, "changed"),
            (comparison.only_remote_files, "only on the Hub"),
            (comparison.only_local_files, f"only in {local_name}"),
        )
        if names
    ]
    tensors = [
        f"{len(names)} {what}"
        for names, what in (
            (comparison.only_remote_tensors, "only on the Hub"),
            (comparison.only_local_tensors, f"only in {local_name}"),
            (comparison.reshaped_tensors, "retyped or reshaped"),
        )
        if names
    ]
    return (
        f"{remote.repo_id} at {remote.commit[:12]}, from the Hub's hashes and headers (no weights downloaded yet): "
        f"{len(comparison.same_files)} of {files} safetensors files ({size / 1e9:.2f} GB) identical to "
        f"{local_name}'s"
        + (f", {', '.join(changes)}" if changes else "")
        + "; tensors: "
        + (", ".join(tensors) if tensors else "same names, dtypes and shapes")
    )


def _same_bytes(remote: RemoteFile | None, local_sha256: str | None) -> bool:
    """Equal SHA256s; a file the Hub gave no LFS hash for never counts as the same."""
    return remote is not None and remote.sha256 is not None and remote.sha256 == local_sha256


@dataclass(frozen=True)
class FileMatch:
    name: str
    size: int
    sha256: str  # the same on both sides
    compared_by: str  # one of COMPARED_BY


@dataclass
class HubMatch:
    """`diff --download` found every file the diff compares identical on the Hub and here,
    so it downloaded no weights: the diff's answer (identical, exit 0) without a per-tensor
    report, and the evidence it rests on."""

    remote: RemoteCheckpoint
    hub_side: str  # "base" or "other": which argument was the Hub id
    local: Checkpoint  # the other argument, opened
    files: list[FileMatch]  # the safetensors files, then the side files

    @property
    def local_name(self) -> str:
        return "OTHER" if self.hub_side == "base" else "BASE"

    def summary(self) -> str:
        """One line, saying what was compared how, and that the weights stayed on the Hub."""
        by_lfs = [f for f in self.files if f.compared_by == "hub-lfs-sha256"]
        by_bytes = [f.name for f in self.files if f.compared_by == "bytes"]
        size = sum(f.size for f in by_lfs) / 1e9
        text = (
            f"identical: {self.remote.repo_id} at {self.remote.commit[:12]} and {self.local_name} "
            f"({self.local.source}): {len(by_lfs)} files ({size:.2f} GB) by the Hub's LFS SHA256 against "
            f"{self.local_name}'s bytes hashed here"
        )
        if by_bytes:
            text += f", {len(by_bytes)} small files ({_names(by_bytes)}) fetched and compared by their bytes"
        return text + "; the weights were not downloaded"

    def to_json(self) -> dict:
        """Schema surgeon.diff-hub-match/1 (docs/diff-json.md)."""
        return {
            "schema": "surgeon.diff-hub-match/1",
            "summary": {"identical": True, "text": self.summary()},
            "downloaded": False,
            "hub": {
                "side": self.hub_side,
                "repo_id": self.remote.repo_id,
                "revision": self.remote.revision,
                "commit": self.remote.commit,
            },
            "local": {
                "side": "other" if self.hub_side == "base" else "base",
                "source": self.local.source,
                "path": str(self.local.root),
            },
            "files": [
                {"name": f.name, "size": f.size, "sha256": f.sha256, "compared_by": f.compared_by} for f in self.files
            ],
        }


def _names(names: list[str], limit: int = 4) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


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
            names = weight_files(self.folder)
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
            return f"{few_names(unseen)} on the Hub not compared without downloading"
        if set(hub.shards) != set(self.here.shards):
            return f"the Hub's folder would be read through {few_names(sorted(hub.shards))}"
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


def _not_here(source: str, revision: str | None) -> bool:
    """A Hub id that is neither a local path nor in the local cache."""
    return (
        bool(REPO_ID.match(source)) and not Path(source).expanduser().exists() and not cached_snapshot(source, revision)
    )


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
