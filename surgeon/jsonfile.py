"""Reading JSON side files (index, config, manifest, cache entries) from untrusted folders.

A checkpoint folder comes from the internet, so the file is checked before it is read:
- it must be a regular file (a FIFO would block forever, `/dev/zero` would never end);
- it is read up to a bound, whatever its size claims, so memory follows the real bytes;
- nesting deep enough to exhaust Python's recursion, or any other bad JSON, is one
  "not valid JSON" SurgeonError, never a RecursionError.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

from surgeon.errors import SurgeonError

# The largest real index we know of (a 400B MoE, ~100k tensors) is about 12 MB; a manifest
# with per-tensor records is of the same order. 256 MiB leaves room and still bounds memory.
MAX_JSON_BYTES = 256 << 20


@contextlib.contextmanager
def open_regular(
    path: Path, where: str | None = None, *, follow_link: bool = True
) -> Iterator[tuple[int, os.stat_result]]:
    """(fd, stat) of a regular file, closed afterwards; SurgeonError naming `where` (default
    the path) for anything else. O_NONBLOCK: opening a FIFO must not wait for a writer; it is
    refused just after, like a device (`/dev/zero` would never end). `follow_link=False`
    (O_NOFOLLOW): a path its caller resolved and checked is not a link swapped in since."""
    where = where or str(path)
    nofollow = 0 if follow_link else os.O_NOFOLLOW
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | nofollow | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise SurgeonError(f"{where}: cannot read ({exc.strerror})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SurgeonError(f"{where}: not a regular file")
        yield fd, info
    except OSError as exc:
        raise SurgeonError(f"{where}: cannot read ({exc.strerror})") from None
    finally:
        os.close(fd)


def read_bounded(path: Path, max_bytes: int = MAX_JSON_BYTES) -> bytes:
    """The bytes of a regular file of at most `max_bytes`; SurgeonError otherwise."""
    with open_regular(path) as (fd, info):
        if info.st_size > max_bytes:
            raise SurgeonError(f"{path}: {info.st_size} bytes, more than the {max_bytes} allowed for this file")
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:
                raise SurgeonError(f"{path}: grew past the {max_bytes} bytes allowed for this file while read")
        return b"".join(chunks)


def parse_json(raw: bytes | str, where: str, object_pairs_hook: Callable | None = None) -> object:
    """json.loads with every failure (bad UTF-8, syntax, nesting too deep) as one SurgeonError."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        return json.loads(text, object_pairs_hook=object_pairs_hook)
    except UnicodeDecodeError:
        raise SurgeonError(f"{where}: not valid JSON (not UTF-8)") from None
    except RecursionError:
        raise SurgeonError(f"{where}: not valid JSON (nested too deeply)") from None
    except ValueError as exc:
        raise SurgeonError(f"{where}: not valid JSON ({exc})") from None


def read_json_file(path: Path, max_bytes: int = MAX_JSON_BYTES) -> object:
    """A bounded regular file parsed as JSON; any problem is one SurgeonError naming the file."""
    return parse_json(read_bounded(Path(path), max_bytes), str(path))


def read_json_object(path: Path, max_bytes: int = MAX_JSON_BYTES) -> dict:
    """read_json_file that also requires a JSON object at the top."""
    value = read_json_file(path, max_bytes)
    if not isinstance(value, dict):
        raise SurgeonError(f"{path}: not a JSON object")
    return value
