"""Persistent SHA256 cache, so a second diff against the same base hashes only the other side.

Two levels, both JSON files written atomically:
- `files/<key>.json`: a file's SHA256, keyed by its real path, size, mtime, ctime, inode and
  device. Any change to the file gives a new key, so a stale entry is never used: putting
  the mtime back (`touch -r`, os.utime) still moves the ctime, which only the kernel sets.
- `content/<sha256>.json`: the per-tensor SHA256s of a file with that content. A file in the
  Hugging Face cache is named by its SHA256 (`models--*/blobs/<sha256>`), so it needs no
  file hash, and its tensor hashes are found here if any copy of that content was hashed.
- `stats/<key>.json`: a changed tensor pair's numeric stats (surgeon/diff/stats_cache.py
  makes the key from both tensors' SHA256s and what else the stats depend on), so a warm
  diff reads no tensor bytes. The same rules as the other entries; diff reads them only
  where it trusts the cache (never for a Markdown card's evidence).

What this trusts, and where (docs/reliability.md): the stat key stands for "same bytes as
when hashed", and a hub blob's name for its SHA256, in `diff` and the writer's base-side
records, for speed only. `verify` hashes the bytes unless told `--trust-cache`, and never
takes a blob's name; Markdown evidence says when a hash is a blob's name.

Entries are read as untrusted files: regular files of bounded size, every hash a 64-hex
string; anything else is a miss (the file is hashed again), never an error.

A cache is trusted only where nobody else can write it (`private`, the rule the canary's
cache of base outputs follows too): the folder, its `files/` and `content/` folders and each
entry must belong to this user and be writable by nobody else, else nothing in it is read or
written (a poisoned entry would give "identical"). Folders are created 0700 and entries 0600,
whatever the umask, so that a cache this user made passes. `refusal` says why a folder fails,
for the one line the CLI shows.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from surgeon.atomic import atomic_output
from surgeon.errors import SurgeonError
from surgeon.jsonfile import parse_json, read_bounded

VERSION = 2  # 2: the key has st_ctime_ns; version-1 entries (no ctime) are not read
_HEX64 = re.compile(r"[0-9a-f]{64}")
FILE_ENTRY_MAX = 64 << 10
# A stats entry: a few numbers, three flags per head and the changed experts' numbers.
STATS_ENTRY_MAX = 4 << 20
# A content entry is ~150 bytes a tensor; the largest shards we know hold ~10k tensors.
CONTENT_ENTRY_MAX = 64 << 20


def is_sha256(value: object) -> bool:
    return isinstance(value, str) and _HEX64.fullmatch(value) is not None


def user_cache_dir(name: str, override_env: str) -> Path:
    """$override_env if set, else $XDG_CACHE_HOME/surgeon/NAME (~/.cache by default)."""
    if os.environ.get(override_env):
        return Path(os.environ[override_env])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "surgeon" / name


def private(path: Path) -> bool:
    """Owned by this user and writable by nobody else (no group or other write bit). Not
    followed if it is a link (the link is not private: anyone could have pointed it)."""
    try:
        info = path.lstat()
    except OSError:
        return False
    return info.st_uid == os.getuid() and not info.st_mode & 0o022


def private_folder(folder: Path) -> bool:
    """`private` for a cache's own folder, through the links in the path the user named (a
    cache folder linked to another disk is common, and a link points where its owner chose:
    the folder it leads to is what must be private)."""
    return private(Path(os.path.realpath(folder)))


def refusal(folder: Path) -> str | None:
    """Why the cache `folder` is not used, in words, or None (it is private, or not made yet)."""
    real = Path(os.path.realpath(folder))
    if not os.path.lexists(real) or private(real):
        return None
    try:
        info = real.lstat()
    except OSError as exc:
        return f"the cache {folder} cannot be read ({exc.strerror}): it is not used"
    if info.st_uid != os.getuid():
        return f"the cache {folder} is not used: it is owned by another user, so an entry in it could be anyone's"
    return (
        f"the cache {folder} is not used: it is writable by its group or others, so an entry in it could be "
        "anyone's (chmod go-w fixes it)"
    )


def write_private(path: Path, data: bytes, durable: bool = False) -> None:
    """Write a cache entry atomically, 0600 in a folder made 0700, whatever the umask (a
    group-writable entry would not be read back). An OSError (read-only, full) is the caller's."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with atomic_output(path, durable=durable) as handle:
        os.fchmod(handle.fileno(), 0o600)
        handle.write(data)


def hash_cache_dir() -> Path:
    """The hash cache's folder (SURGEON_CACHE_DIR overrides it)."""
    return user_cache_dir("hashes", "SURGEON_CACHE_DIR")


def hf_blob_sha256(path: Path) -> str | None:
    """The SHA256 a Hugging Face cache blob is named by, or None for any other file.

    Only `<hub cache>/models--*/blobs/<64 hex>` counts, with both sides resolved: a folder
    that merely happens to be called `blobs` holds files named by anyone. Inside the real
    cache, huggingface_hub names a blob by the SHA256 it verified on download; trusting
    that name (not re-reading the file) is a speed-up for diff and the writer's base-side
    records only. A blob edited in place keeps its name, so verify never uses this.
    """
    real = Path(os.path.realpath(path))
    if real.parent.name != "blobs" or not _HEX64.fullmatch(real.name):
        return None  # the common case decides without importing huggingface_hub
    repo = real.parent.parent
    if not repo.name.startswith("models--") or repo.parent != _hub_cache_dir():
        return None
    return real.name


def hub_snapshot_repo(folder: Path) -> Path | None:
    """The repo folder (`models--org--name`) of a Hugging Face cache snapshot folder
    (`models--org--name/snapshots/REV`), or None: a snapshot's files are links into that
    repo's `blobs/`. Any cache counts, not only the default one (`--cache-dir` makes the same
    layout), unlike hf_blob_sha256's rule: this one trusts no name, it only says how far a
    link of the snapshot may lead, and the repo folder came with the snapshot."""
    snapshots = Path(os.path.realpath(folder)).parent
    repo = snapshots.parent
    return repo if snapshots.name == "snapshots" and repo.name.startswith("models--") else None


def _hub_cache_dir() -> Path | None:
    try:
        from huggingface_hub import constants  # deferred: ~6 ms, only for blob-shaped paths
    except ImportError:
        return None
    return Path(os.path.realpath(constants.HF_HUB_CACHE))


@dataclass(frozen=True)
class FileIdentity:
    real_path: str
    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    device: int

    @classmethod
    def of(cls, path: Path) -> FileIdentity:
        real = os.path.realpath(path)
        st = os.stat(real)
        return cls(real, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)

    @property
    def key(self) -> str:
        fields = (self.real_path, self.size, self.mtime_ns, self.ctime_ns, self.inode, self.device)
        return hashlib.sha256("\0".join(map(str, fields)).encode()).hexdigest()


class HashCache:
    def __init__(self, root: Path | None):
        self.root = Path(root) if root is not None else None
        self._private: dict[Path, bool] = {}  # folder -> private, checked once per cache

    def file_sha256(self, ident: FileIdentity) -> str | None:
        entry = self._read(self._file_entry(ident), FILE_ENTRY_MAX)
        if entry is None or entry.get("size") != ident.size or entry.get("path") != ident.real_path:
            return None
        sha = entry.get("sha256")
        return sha if is_sha256(sha) else None

    def tensor_sha256(self, file_sha256: str) -> dict[str, str] | None:
        entry = self._read(self._content_entry(file_sha256), CONTENT_ENTRY_MAX)
        tensors = entry.get("tensors") if entry else None
        if not isinstance(tensors, dict) or not all(isinstance(n, str) and is_sha256(h) for n, h in tensors.items()):
            return None  # one damaged hash spoils the entry: every tensor is hashed again
        return tensors

    def store_tensors(self, file_sha256: str, tensors: dict[str, str]) -> None:
        self._write(self._content_entry(file_sha256), {"version": VERSION, "tensors": tensors})

    def store_file(self, ident: FileIdentity, file_sha256: str) -> None:
        record = {"version": VERSION, "path": ident.real_path, "size": ident.size}
        self._write(self._file_entry(ident), record | {"sha256": file_sha256})

    def stats(self, key: str) -> dict | None:
        """The stats entry stored under `key` (a SHA256), unchecked beyond being a JSON object
        of this version from a private file: the caller checks its fields."""
        return self._read(self._stats_entry(key), STATS_ENTRY_MAX)

    def store_stats(self, key: str, record: dict) -> None:
        self._write(self._stats_entry(key), {"version": VERSION} | record)

    def _stats_entry(self, key: str) -> Path | None:
        return self.root / "stats" / f"{key}.json" if self.root and is_sha256(key) else None

    def _file_entry(self, ident: FileIdentity) -> Path | None:
        return self.root / "files" / f"{ident.key}.json" if self.root else None

    def _content_entry(self, sha: str) -> Path | None:
        return self.root / "content" / f"{sha}.json" if self.root and is_sha256(sha) else None

    def _folders_private(self, folder: Path, *, made: bool) -> bool:
        """The cache's root and the entry's `folder` are this user's alone (`made`: a folder
        that does not exist yet passes, as this user is about to make it 0700)."""
        assert self.root is not None
        for path, check in ((self.root, private_folder), (folder, private)):
            if made and not os.path.lexists(path):
                continue
            if path not in self._private:
                self._private[path] = check(path)
            if not self._private[path]:
                return False
        return True

    def _read(self, path: Path | None, max_bytes: int) -> dict | None:
        if path is None or not path.exists() or not self._folders_private(path.parent, made=False):
            return None
        if not private(path):  # an entry anyone else could have written is no evidence
            return None
        try:
            entry = parse_json(read_bounded(path, max_bytes), str(path))
        except SurgeonError:
            return None  # a damaged, oversized or non-regular entry only costs a re-hash
        return entry if isinstance(entry, dict) and entry.get("version") == VERSION else None

    def _write(self, path: Path | None, entry: dict) -> None:
        if path is None or self.root is None or not self._folders_private(path.parent, made=True):
            return  # not into a folder others can write: their entries would sit beside ours
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)  # its parents as the umask says
            write_private(path, json.dumps(entry, sort_keys=True).encode())
        except OSError:
            pass  # a read-only or full cache only costs speed next time
