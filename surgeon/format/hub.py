"""Hub repo ids: the local Hugging Face cache by default, the network only when asked.

A repo id resolves from the local cache alone (`local_files_only=True`): surgeon never starts
a multi-GB download on its own. `download=True` (the CLI's `--download`) first fetches what
the Hub says about the repo without any weight bytes, the safetensors headers and each file's
LFS SHA256 (`fetch_remote`), then downloads the safetensors, index, config and tokenizer
files, and checks the snapshot it got is the commit those headers came from. When the other
side of a diff is here, `compare_remote` tells from those alone which files a download would
change, before it starts (checkpoint.open_pair).

huggingface_hub is imported inside the functions: it costs 300 ms to import (measured), and
only a repo id needs it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from surgeon.errors import SurgeonError, first_line

if TYPE_CHECKING:
    from surgeon.format.checkpoint import Checkpoint

# What a checkpoint needs: weights, their index, config and tokenizer files. Never `*.bin` or
# `*.pt` (surgeon never unpickles them) nor the other formats repos often carry (GGUF, ONNX).
DOWNLOAD_PATTERNS = ["*.safetensors", "*.safetensors.index.json", "*.json", "*.jinja", "*.model", "*.txt"]


@dataclass(frozen=True)
class RemoteTensor:
    dtype: str  # the safetensors dtype string, "BF16"
    shape: tuple[int, ...]
    data_offsets: tuple[int, int]  # byte range inside its file's data section
    file: str


@dataclass(frozen=True)
class RemoteFile:
    name: str  # path inside the repo
    size: int | None
    sha256: str | None  # the LFS SHA256 of the file's bytes; None for a file not stored in LFS


@dataclass
class RemoteCheckpoint:
    """What the Hub says about one commit of a repo, read without downloading weights."""

    repo_id: str
    revision: str | None  # as asked: a branch, tag, commit or None for the default branch
    commit: str  # the commit it resolved to: every field below is of this commit
    files: dict[str, RemoteFile]  # every file of the commit, safetensors or not
    tensors: dict[str, RemoteTensor]
    weight_map: dict[str, str]  # tensor name -> safetensors file
    shard_metadata: dict[str, dict[str, str]] = field(default_factory=dict)  # each file's __metadata__

    @property
    def safetensors_files(self) -> list[str]:
        return sorted(set(self.weight_map.values()))


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
        f"{remote.repo_id} at {remote.commit[:12]}, from the Hub's hashes and headers (nothing downloaded yet): "
        f"{len(comparison.same_files)} of {files} safetensors files ({size / 1e9:.2f} GB) identical to "
        f"{local_name}'s"
        + (f", {', '.join(changes)}" if changes else "")
        + "; tensors: "
        + (", ".join(tensors) if tensors else "same names, dtypes and shapes")
    )


def _same_bytes(remote: RemoteFile | None, local_sha256: str | None) -> bool:
    """Equal SHA256s; a file the Hub gave no LFS hash for never counts as the same."""
    return remote is not None and remote.sha256 is not None and remote.sha256 == local_sha256


def cached_snapshot(repo_id: str, revision: str | None) -> Path | None:
    """The snapshot folder of `repo_id` at `revision` in the local Hugging Face cache, or
    None when it is not there. Never touches the network."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
    except LocalEntryNotFoundError:
        return None
    except ValueError as exc:  # HFValidationError: "a--b" and other names the Hub refuses
        raise SurgeonError(f"{repo_id}: not a valid Hub repo id ({first_line(exc)})") from None


def fetch_remote(repo_id: str, revision: str | None = None) -> RemoteCheckpoint:
    """Fetch the file list with LFS SHA256s and every safetensors header of `repo_id` at
    `revision`, without downloading weights: one `model_info(files_metadata=True)` request,
    then the headers (the index and a range read of each shard's first bytes). The headers
    are read at the commit `model_info` resolved, so both describe the same commit even if
    the branch moves meanwhile. Any Hub or network failure is one SurgeonError line."""
    from huggingface_hub import HfApi, get_safetensors_metadata

    info = _call(repo_id, revision, lambda: HfApi().model_info(repo_id, revision=revision, files_metadata=True))
    commit = info.sha
    if not commit:
        raise SurgeonError(f"{repo_id}: the Hub did not say which commit it serves")
    files = {s.rfilename: RemoteFile(s.rfilename, s.size, s.lfs.sha256 if s.lfs else None) for s in info.siblings or []}
    meta = _call(repo_id, revision, lambda: get_safetensors_metadata(repo_id, revision=commit))
    tensors = {
        name: RemoteTensor(t.dtype, tuple(t.shape), tuple(t.data_offsets), file)  # where the header is
        for file, file_meta in meta.files_metadata.items()
        for name, t in file_meta.tensors.items()
    }
    return RemoteCheckpoint(
        repo_id=repo_id,
        revision=revision,
        commit=commit,
        files=files,
        tensors=tensors,
        weight_map=dict(meta.weight_map),
        shard_metadata={name: dict(m.metadata or {}) for name, m in meta.files_metadata.items()},
    )


def download_remote(remote: RemoteCheckpoint) -> Path:
    """Download the checkpoint files of `remote` into the local cache and return the snapshot
    folder. Asks for the revision the user named, not the commit, so that the cache's
    `refs/<branch>` is written and a later run without download finds it; a snapshot of
    another commit (the branch moved after `fetch_remote`) is an error, not a silent mix."""
    from huggingface_hub import snapshot_download

    folder = Path(
        _call(
            remote.repo_id,
            remote.revision,
            lambda: snapshot_download(remote.repo_id, revision=remote.revision, allow_patterns=DOWNLOAD_PATTERNS),
        )
    )
    if folder.name != remote.commit:
        raise SurgeonError(
            f"{remote.repo_id}: the Hub moved from commit {remote.commit[:12]} to {folder.name[:12]} during the "
            "download; run again"
        )
    return folder


def resolve_hub_repo(repo_id: str, revision: str | None, *, download_missing: bool = False) -> Path:
    """The local snapshot folder of a Hub repo: from the cache, else (only when
    `download_missing`) fetched after its headers and hashes. Not cached and no download:
    a SurgeonError whose `option` is "download"."""
    cached = cached_snapshot(repo_id, revision)
    if cached is not None:
        return cached
    if not download_missing:
        error = SurgeonError(f"{repo_id}: no such folder, and not in the local Hugging Face cache")
        error.option = "download"
        raise error
    return download_remote(fetch_remote(repo_id, revision))


def _call(repo_id: str, revision: str | None, func):
    """Run one huggingface_hub call; what can go wrong on the network becomes one line."""
    try:
        return func()
    except Exception as exc:
        problem = _problem(exc, revision)
        if problem is None:
            raise
        raise SurgeonError(f"{repo_id}: {problem}") from None


def _problem(exc: Exception, revision: str | None) -> str | None:
    """What went wrong, in a few words; None for what is no Hub or network trouble (a bug)."""
    from huggingface_hub import errors

    at = f"at revision {revision} " if revision else ""
    if isinstance(exc, errors.LocalEntryNotFoundError) and isinstance(exc.__cause__, Exception):
        # snapshot_download's word for "the network failed" (huggingface_hub 2.4): the cause says why
        return _problem(exc.__cause__, revision)
    if isinstance(exc, errors.OfflineModeIsEnabled):
        return "cannot reach the Hub, HF_HUB_OFFLINE is set"
    if isinstance(exc, errors.GatedRepoError):
        return "gated on the Hub; accept its terms there and log in (hf auth login)"
    if isinstance(exc, errors.RepositoryNotFoundError):
        return "no such repo on the Hub, or it is private and you are not logged in"
    if isinstance(exc, errors.RevisionNotFoundError):
        return f"no revision {revision} on the Hub"
    if isinstance(exc, errors.NotASafetensorsRepoError):
        return f"{at}has no .safetensors files on the Hub"
    if isinstance(exc, errors.SafetensorsParsingError):
        return f"{at}a safetensors header on the Hub is malformed ({first_line(exc)})"
    if _is_network_error(exc):
        return f"cannot reach the Hub ({first_line(exc)})"
    if isinstance(exc, (OSError, ValueError)):  # HTTP errors, a full disk, a name the Hub refuses
        return f"cannot fetch from the Hub ({first_line(exc)})"
    return None


def _is_network_error(exc: Exception) -> bool:
    """huggingface_hub 1.x+ raises its HTTP client's transport errors (httpx's, or the
    `httpx2` fork's) as they are; they are not OSErrors. Matched by module so neither
    client has to be importable."""
    return any(k.__module__.partition(".")[0] in ("httpx", "httpx2") for k in type(exc).__mro__)
