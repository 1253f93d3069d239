"""Hub repo ids: the local Hugging Face cache by default, the network only when asked.

A repo id resolves from the local cache alone (`local_files_only=True`): surgeon never starts
a multi-GB download on its own. `download=True` (the CLI's `--download`) first fetches what
the Hub says about the repo without any weight bytes: the commit and its file list with each
file's LFS SHA256 (`fetch_remote`), then the headers of the shards surgeon would open
(`fetch_headers`); then it downloads the safetensors, index, config and tokenizer files, and
checks the snapshot it got is the commit those came from. When the other side of a diff is
here, `compare_remote` tells from those alone which files a download would change, before it
starts (hub_pair.open_pair). When every file is identical, the download is skipped: the
diff's answer is already known (`HubMatch`).

What "identical" rests on here: a file the Hub keeps in LFS (the safetensors) is the same when
the Hub's LFS SHA256 of it equals the SHA256 of the local file's bytes, hashed in this run
(never a stat-cache entry or a blob's name). That LFS SHA256 is the Hub's own content address:
the oid of the file's git-lfs pointer, by which the Hub stores and serves the bytes and after
which huggingface_hub names the cached blob; trusting it is trusting the Hub to serve what it
lists, as any download does. A file outside LFS (config.json, the shard index, most tokenizer
files) has no such hash in the listing, only a git SHA-1; it is small (the Hub refuses files
over 10 MB outside LFS), so it is fetched into a temporary folder and compared by its bytes:
it is never taken as the same unseen. Which files a download would bring, and how surgeon
would open them, is not guessed: the listing is the one snapshot_download uses
(`list_repo_tree` at the commit), filtered by its own rule (`filter_repo_objects`), and the
folder that download would make is opened by surgeon's own `open_checkpoint` (the stand-in in
hub_pair.py). Nothing of this is written to the Hugging Face cache, where a snapshot folder
means "downloaded"; and what the cache already holds of the repo, which a download would reuse
unread, is a reason to download (`cache_reuse`).

huggingface_hub's own download bars are off when surgeon's progress is (`--no-progress`,
`-q`, stderr not a terminal): `progress_bars`.

huggingface_hub is imported inside the functions: it costs 300 ms to import (measured), and
only a repo id needs it.
"""

from __future__ import annotations

import contextlib
import glob
import re
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from surgeon.errors import SurgeonError, first_line

if TYPE_CHECKING:
    pass

# What a checkpoint needs: weights, their index, config and tokenizer files. Never `*.bin` or
# `*.pt` (surgeon never unpickles them) nor the other formats repos often carry (GGUF, ONNX).
DOWNLOAD_PATTERNS = ["*.safetensors", "*.safetensors.index.json", "*.json", "*.jinja", "*.model", "*.txt"]
# A file with one of these suffixes makes a cached snapshot a checkpoint's (pickles included, so
# that a pickle-only repo is reported as such, not as missing from the cache)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl")


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
    blob_id: str | None = None  # its git oid: what huggingface_hub names the cached blob of a file outside LFS


@dataclass
class RemoteCheckpoint:
    """What the Hub says about one commit of a repo, read without downloading weights."""

    repo_id: str
    revision: str | None  # as asked: a branch, tag, commit or None for the default branch
    commit: str  # the commit it resolved to: every field below is of this commit
    files: dict[str, RemoteFile]  # every file of the commit, as snapshot_download lists them
    tensors: dict[str, RemoteTensor]  # of the shards surgeon would open (fetch_headers)
    weight_map: dict[str, str]  # tensor name -> safetensors file
    shard_metadata: dict[str, dict[str, str]] = field(default_factory=dict)  # each file's __metadata__
    layout_error: str | None = None  # why the downloaded folder cannot be compared before the download

    @property
    def safetensors_files(self) -> list[str]:
        return sorted(set(self.weight_map.values()))

    @property
    def downloaded(self) -> list[str]:
        """The files `download_remote` would bring: DOWNLOAD_PATTERNS applied by huggingface_hub's
        own rule (fnmatchcase, and `*` crosses `/`), not a look-alike: a shard it would not fetch
        must not count as fetched."""
        from huggingface_hub.utils import filter_repo_objects

        return list(filter_repo_objects(sorted(self.files), allow_patterns=DOWNLOAD_PATTERNS))

    def add_shard(self, name: str, tensors: dict[str, RemoteTensor], metadata: dict[str, str]) -> None:
        self.tensors.update(tensors)
        self.weight_map.update(dict.fromkeys(tensors, name))
        self.shard_metadata[name] = metadata


# How a file was found identical: "hub-lfs-sha256", the Hub's LFS SHA256 of its file equals the
# SHA256 of the local file's bytes hashed in this run; "bytes", a small file outside LFS fetched
# from the Hub into a temporary folder and hashed here, like the local one.
COMPARED_BY = ("hub-lfs-sha256", "bytes")


def fetch_files(remote: RemoteCheckpoint, names: list[str], folder: Path, *, bars: bool) -> None:
    """Fetch the files `names` of `remote`, at its commit, into `folder` (not the cache)."""
    from huggingface_hub import snapshot_download

    patterns = [glob.escape(name) for name in names]  # the names as they are: "[" is no pattern here
    with progress_bars(bars):
        _call(
            remote.repo_id,
            remote.revision,
            lambda: snapshot_download(
                remote.repo_id, revision=remote.commit, allow_patterns=patterns, local_dir=folder
            ),
        )
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        raise SurgeonError(f"{remote.repo_id}: the Hub listed {missing[0]} but did not serve it")


def cached_snapshot(repo_id: str, revision: str | None) -> Path | None:
    """The snapshot folder of `repo_id` at `revision` in the local Hugging Face cache, or
    None when it is not there. Never touches the network."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
    except LocalEntryNotFoundError:
        return None
    except ValueError as exc:  # HFValidationError: "a--b" and other names the Hub refuses
        raise SurgeonError(f"{repo_id}: not a valid Hub repo id ({first_line(exc)})") from None
    # A snapshot holding no weights is no download of a checkpoint: what another tool left (an
    # index alone, as get_safetensors_metadata's hf_hub_download leaves it, or a config), which
    # would otherwise pass for the cached repo and never be downloaded
    return folder if any(p.suffix in WEIGHT_SUFFIXES for p in folder.iterdir()) else None


_COMMIT = re.compile(r"[0-9a-f]{40}")


def is_commit(value: object) -> bool:
    """A full commit hash, as a snapshot folder is named (never a branch or a path)."""
    return isinstance(value, str) and _COMMIT.fullmatch(value) is not None


def snapshot_of(folder: Path) -> tuple[str, str] | None:
    """(repo id, commit) when `folder` is a snapshot of a Hugging Face cache,
    `models--org--name/snapshots/<commit>`, else None. By the folder's shape alone (no
    huggingface_hub, no network): it names a record, and the hashes recorded beside the
    name say which bytes were read. The Hub refuses `--` in a repo id, so the folder's name
    splits back into the id as huggingface_hub's repo_folder_name joined it."""
    snapshots = folder.parent
    repo = snapshots.parent.name
    if snapshots.name != "snapshots" or not repo.startswith("models--") or not is_commit(folder.name):
        return None
    parts = repo.split("--")[1:]
    if not parts or not all(parts):
        return None
    return "/".join(parts), folder.name


def cache_reuse(remote: RemoteCheckpoint, names: list[str]) -> str | None:
    """What of `remote` the local cache already holds that a download would reuse unread, in
    words, or None: its snapshots/<commit>/ folder (with or without a ref; whatever else it
    holds ends up in the folder opened), or the blob of one of the files `names` (found by its
    name, the LFS SHA256 or the git oid, and linked without a byte read: its bytes, not the
    Hub's, are what the diff after a download reads). Either way the download costs little."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    folder = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=remote.repo_id, repo_type="model")
    if (folder / "snapshots" / remote.commit).exists():
        return f"the cache already holds a snapshot of {remote.commit[:12]}, which the download reuses"
    blobs = folder / "blobs"
    for name in names if blobs.is_dir() else []:
        file = remote.files[name]
        if any(blob and (blobs / blob).exists() for blob in (file.sha256, file.blob_id)):
            return f"the cache already holds {name}'s blob, which the download reuses"
    return None


def fetch_remote(repo_id: str, revision: str | None = None) -> RemoteCheckpoint:
    """Fetch the commit `revision` resolves to and its file list with LFS SHA256s, without
    downloading anything: `model_info`, then `list_repo_tree` at that commit, the listing
    snapshot_download itself uses (model_info's `siblings` may come back short: huggingface_hub
    PR #3565). Headers come later (`fetch_headers`), for the shards surgeon would open. Any Hub
    or network failure is one SurgeonError line."""
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    api = HfApi()
    info = _call(repo_id, revision, lambda: api.model_info(repo_id, revision=revision))
    commit = info.sha
    if not commit:
        raise SurgeonError(f"{repo_id}: the Hub did not say which commit it serves")
    entries = _call(repo_id, revision, lambda: list(api.list_repo_tree(repo_id, revision=commit, recursive=True)))
    files = {
        e.path: RemoteFile(e.path, e.lfs.size if e.lfs else e.size, e.lfs.sha256 if e.lfs else None, e.blob_id)
        for e in entries
        if isinstance(e, RepoFile)
    }
    return RemoteCheckpoint(repo_id=repo_id, revision=revision, commit=commit, files=files, tensors={}, weight_map={})


def fetch_headers(remote: RemoteCheckpoint, names: list[str]) -> None:
    """Read the safetensors headers of the files `names` of `remote`, at its commit (a range
    read of each file's first bytes, nothing written to the cache), into `remote`."""
    from huggingface_hub import HfApi

    api = HfApi()
    for name in names:
        meta = _call(
            remote.repo_id,
            remote.revision,
            lambda name=name: api.parse_safetensors_file_metadata(remote.repo_id, name, revision=remote.commit),
        )
        tensors = {
            tensor: RemoteTensor(t.dtype, tuple(t.shape), tuple(t.data_offsets), name)
            for tensor, t in meta.tensors.items()
        }
        remote.add_shard(name, tensors, dict(meta.metadata or {}))


def download_remote(remote: RemoteCheckpoint, *, bars: bool | None = None) -> Path:
    """Download the checkpoint files of `remote` into the local cache and return the snapshot
    folder. Asks for the revision the user named, not the commit, so that the cache's
    `refs/<branch>` is written and a later run without download finds it; a snapshot of
    another commit (the branch moved after `fetch_remote`) is an error, not a silent mix.
    `bars`: huggingface_hub's own progress bars (None: only on a terminal, like surgeon's)."""
    from huggingface_hub import snapshot_download

    with progress_bars(sys.stderr.isatty() if bars is None else bars):
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


@contextlib.contextmanager
def progress_bars(show: bool) -> Iterator[None]:
    """huggingface_hub's own download bars (tqdm, on stderr whether or not it is a terminal)
    off for the block when `show` is false, then as they were: its documented switch,
    `disable_progress_bars`, and `enable_progress_bars` only if they were on before. `show`
    never turns them on: HF_HUB_DISABLE_PROGRESS_BARS=1 or a caller's choice stays. Where
    HF_HUB_DISABLE_PROGRESS_BARS=0 forces them on, that wins, without a warning printed."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    if show or are_progress_bars_disabled():
        yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        disable_progress_bars()
    try:
        yield
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            enable_progress_bars()


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
