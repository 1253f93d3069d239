"""Persistent SHA256 cache, so a second diff against the same base hashes only the other side.

Two levels, both JSON files written atomically:
- `files/<key>.json`: a file's SHA256, keyed by its real path, size, mtime, inode and device;
  any change to the file gives a new key, so a stale entry is never used.
- `content/<sha256>.json`: the per-tensor SHA256s of a file with that content. A file in the
  Hugging Face cache is named by its SHA256 (`blobs/<sha256>`), so it needs no file hash,
  and its tensor hashes are found here if any copy of that content was hashed before.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from surgeon.atomic import atomic_output

VERSION = 1
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def user_cache_dir(name: str, override_env: str) -> Path:
    """$override_env if set, else $XDG_CACHE_HOME/surgeon/NAME (~/.cache by default)."""
    if os.environ.get(override_env):
        return Path(os.environ[override_env])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "surgeon" / name


def default_cache_dir() -> Path:
    return user_cache_dir("hashes", "SURGEON_CACHE_DIR")


def hf_blob_sha256(path: Path) -> str | None:
    """The SHA256 a Hugging Face cache blob is named by, or None for any other file."""
    real = Path(os.path.realpath(path))
    if real.parent.name == "blobs" and _HEX64.match(real.name):
        return real.name
    return None


@dataclass(frozen=True)
class FileIdentity:
    real_path: str
    size: int
    mtime_ns: int
    inode: int
    device: int

    @classmethod
    def of(cls, path: Path) -> FileIdentity:
        real = os.path.realpath(path)
        st = os.stat(real)
        return cls(real, st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)

    @property
    def key(self) -> str:
        text = f"{self.real_path}\0{self.size}\0{self.mtime_ns}\0{self.inode}\0{self.device}"
        return hashlib.sha256(text.encode()).hexdigest()


class HashCache:
    def __init__(self, root: Path | None):
        self.root = Path(root) if root is not None else None

    def file_sha256(self, ident: FileIdentity) -> str | None:
        entry = self._read(self._file_entry(ident))
        if entry and entry.get("size") == ident.size and _HEX64.match(str(entry.get("sha256"))):
            return entry["sha256"]
        return None

    def tensor_sha256(self, file_sha256: str) -> dict[str, str] | None:
        entry = self._read(self._content_entry(file_sha256))
        tensors = entry.get("tensors") if entry else None
        return tensors if isinstance(tensors, dict) else None

    def store_tensors(self, file_sha256: str, tensors: dict[str, str]) -> None:
        self._write(self._content_entry(file_sha256), {"version": VERSION, "tensors": tensors})

    def store_file(self, ident: FileIdentity, file_sha256: str) -> None:
        record = {"version": VERSION, "path": ident.real_path, "size": ident.size}
        self._write(self._file_entry(ident), record | {"sha256": file_sha256})

    def _file_entry(self, ident: FileIdentity) -> Path | None:
        return self.root / "files" / f"{ident.key}.json" if self.root else None

    def _content_entry(self, sha: str) -> Path | None:
        return self.root / "content" / f"{sha}.json" if self.root else None

    @staticmethod
    def _read(path: Path | None) -> dict | None:
        if path is None:
            return None
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return entry if isinstance(entry, dict) and entry.get("version") == VERSION else None

    @staticmethod
    def _write(path: Path | None, entry: dict) -> None:
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_output(path, durable=False) as handle:
                handle.write(json.dumps(entry, sort_keys=True).encode())
        except OSError:
            pass  # a read-only or full cache only costs speed next time
