"""Outputs: checked against the inputs, written under a hidden temporary name, then moved into
place by one rename that never replaces anything by accident and never leaves the output absent.

Guard. check_output() compares fully resolved paths: the output's parent folder with every
link resolved, plus its own name (a link at that name is replaced, never followed), against
each input's real path. An output reached through a linked folder is caught.

Renames (Linux renameat2, called through libc):
- a new output: RENAME_NOREPLACE. Of two writers racing for the same name exactly one wins;
  the other gets "already exists", even if the name appeared after every check.
- a replacement (--force): RENAME_EXCHANGE swaps the new output with the old one in one step;
  the old one, now under the temporary name, is deleted afterwards.
Where renameat2 or its flag is missing (another OS, an old kernel, NFS, some FUSE filesystems),
a file is published with link(), which fails if the name exists, and a folder under an
exclusive lock (`.NAME.surgeon-lock`, flock: released by the kernel when its holder dies, so it
never goes stale). A replacement there first renames the old output aside, to
`.NAME.surgeon-old-OWNER-RANDOM`; if the process dies between that rename and the next, the
next run into the same folder puts it back (or deletes it, if the new output made it).

Temporary names (`.NAME.surgeon-tmp-OWNER-RANDOM`) carry their owner: a hash of the boot id
and PID namespace, the PID, and the process's start time from /proc (a reused PID is not the
owner). sweep() deletes those whose owner is gone, which is how a kill -9 is cleaned up; an
entry from another boot, machine or container is left alone, since its owner cannot be checked
from here. SIGINT and SIGTERM clean up at once (the CLI turns both into KeyboardInterrupt).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import hashlib
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from surgeon.errors import SurgeonError

AT_FDCWD = -100
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2
_UNSUPPORTED = {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP}
_OWNED = re.compile(r"\.surgeon-(tmp|old)-([0-9a-f]{8})-(\d+)-(\d+)-[0-9a-f]+$")
NAME_KEPT = 96  # of an output's name in its temporary name: room for the suffix within NAME_MAX

# Errors of the environment (not of surgeon) that can hit any write.
ENVIRONMENT_ERRNOS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.EFBIG,
    errno.EIO,
    errno.ENAMETOOLONG,
    errno.EMLINK,
}


class OutputExists(SurgeonError):
    """The output is already there and replacing it was not asked for."""

    option = "force"


# ---------------------------------------------------------------------------- the guard


def resolved_output(output: str | os.PathLike) -> Path:
    """Where `output` really is: its parent with every link resolved, plus its own name.

    The path is not normalised first: `via/../x` means the parent of via's target, as the
    kernel reads it, not `x`."""
    path = os.path.join(os.getcwd(), os.fspath(output)).rstrip("/") or "/"
    head, name = os.path.split(path)
    if name in ("", ".", ".."):
        return Path(os.path.realpath(path))
    return Path(os.path.realpath(head)) / name


def refuse_inputs(output: str | os.PathLike, inputs: Iterable[str | os.PathLike]) -> Path:
    """The resolved output, unless it is over or inside an input: the half of check_output
    that may run before the output's parent folder exists (nothing is created first)."""
    target = resolved_output(output)
    for given in inputs:
        real = Path(os.path.realpath(given))
        # the input as named counts too: a link (a Hub cache snapshot's file) replaced by the
        # output would leave its target intact but the input gone
        if target in (real, resolved_output(given)) or real.is_relative_to(target):
            raise SurgeonError(f"{output}: refusing to write over the input checkpoint {given}")
        if target.is_relative_to(real):
            raise SurgeonError(f"{output}: refusing to write inside the input checkpoint {given}")
    return target


def check_output(output: str | os.PathLike, inputs: Iterable[str | os.PathLike], force: bool) -> Path:
    """Refuse an output over or inside an input, or one that exists unless `force`; returns
    the resolved output, the path to write (the one that was checked)."""
    target = refuse_inputs(output, inputs)
    if os.path.lexists(target) and not force:
        raise OutputExists(f"{output}: already exists")
    if not target.parent.is_dir():
        raise SurgeonError(f"{output}: folder {Path(output).parent} does not exist")
    return target


# ---------------------------------------------------------------------------- errors


@contextlib.contextmanager
def output_errors(output: str | os.PathLike) -> Iterator[None]:
    """An OSError while writing `output` (disk full, read-only filesystem, no permission)
    becomes one line that names `output` as the user gave it, never a temporary path."""
    try:
        yield
    except OSError as exc:
        raise SurgeonError(describe_os_error(exc, output)) from None


def describe_os_error(exc: OSError, output: str | os.PathLike | None) -> str:
    reason = exc.strerror or str(exc)
    named = exc.filename
    if isinstance(named, int):  # open(fd) names the descriptor, not a path: no file to name
        named = None
    if named is not None and not _is_output_side(os.fsdecode(named), output):
        return f"{os.fsdecode(named)}: {reason}"  # another file: an input that cannot be read
    if output is None:
        return reason
    return f"{output}: cannot write ({reason})"


def _is_output_side(name: str, output) -> bool:
    if ".surgeon-tmp-" in name or ".surgeon-old-" in name or ".surgeon-lock" in name:
        return True
    if output is None:
        return False
    target = resolved_output(output)
    path = resolved_output(name)
    return path == target or path.is_relative_to(target) or path == target.parent


# ---------------------------------------------------------------------------- owners


@functools.cache
def _space() -> str:
    """This boot's PID space: a PID is only meaningful inside it."""
    parts = []
    for source in ("/proc/sys/kernel/random/boot_id", "/proc/self/ns/pid"):
        try:
            parts.append(os.readlink(source) if source.endswith("/pid") else Path(source).read_text().strip())
        except OSError:
            import socket  # deferred: only without /proc (not Linux); 3.5 ms measured

            parts.append(socket.gethostname())
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:8]


def _start_time(pid: int) -> int:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat), 0 if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return 0


def _owner() -> str:
    pid = os.getpid()
    return f"{_space()}-{pid}-{_start_time(pid)}"


def _alive(pid: int, start: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    now = _start_time(pid)
    return not (start and now and now != start)


def temp_sibling(target: Path, kind: str = "tmp") -> Path:
    """A hidden name next to `target` that says who made it (see sweep)."""
    name = target.name[:NAME_KEPT] if kind == "tmp" else target.name  # an aside must name its output in full
    return target.parent / f".{name}.surgeon-{kind}-{_owner()}-{os.urandom(4).hex()}"


def sweep(parent: Path) -> None:
    """Remove what dead surgeon processes left in `parent`: temporary outputs are deleted, an
    old output moved aside is put back if its name is free (the replacement never happened)
    and deleted otherwise. Entries of live owners, and of owners that cannot be checked from
    here (another boot, machine or container), are left alone."""
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        found = _OWNED.search(name) if name.startswith(".") else None
        if found is None:
            continue
        kind, space, pid, start = found.group(1), found.group(2), int(found.group(3)), int(found.group(4))
        if space != _space() or pid <= 0 or _alive(pid, start):
            continue
        path = Path(parent) / name
        if kind == "tmp":
            remove_entry(path)
        else:
            _settle_aside(path, Path(parent) / name[1 : found.start()])


def _settle_aside(aside: Path, target: Path) -> None:
    with _lock(target):
        if not os.path.lexists(aside):
            return  # another run settled it
        if os.path.lexists(target):
            remove_entry(aside)
        else:
            os.rename(aside, target)


def remove_entry(path: Path) -> None:
    """Delete a file, link or folder; a link is removed, never followed."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


# ---------------------------------------------------------------------------- renames


@functools.cache
def _libc_renameat2():
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None  # not Linux, or a libc older than glibc 2.28
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


def renameat2(source: Path, target: Path, flags: int) -> bool:
    """rename(2) with flags; False where the OS or the filesystem does not have them."""
    function = _libc_renameat2()
    if function is None:
        return False
    if function(AT_FDCWD, os.fsencode(source), AT_FDCWD, os.fsencode(target), flags) == 0:
        return True
    code = ctypes.get_errno()
    if code in _UNSUPPORTED:
        return False
    raise OSError(code, os.strerror(code), os.fspath(source), None, os.fspath(target))


def publish(tmp: Path, target: Path, replace: bool, shown: str | os.PathLike | None = None) -> None:
    """Move the finished `tmp` (a file or folder) to `target`. Without `replace`, a target that
    exists, even one that appeared a moment ago, is OutputExists; with it, the target is
    never absent: readers see the old output or the new one."""
    shown = target if shown is None else shown
    if replace:
        _replace(tmp, target)
    else:
        _create(tmp, target, shown)


def _create(tmp: Path, target: Path, shown) -> None:
    try:
        if renameat2(tmp, target, RENAME_NOREPLACE):
            return
        if not os.path.isdir(tmp):
            try:
                os.link(tmp, target)  # fails if the name exists, like RENAME_NOREPLACE
            except OSError as exc:
                if isinstance(exc, FileExistsError) or exc.errno not in (errno.EPERM, errno.EOPNOTSUPP):
                    raise
            else:
                os.unlink(tmp)
                return
        with _lock(target):
            if os.path.lexists(target):
                raise FileExistsError(errno.EEXIST, "exists", os.fspath(target))
            os.rename(tmp, target)
    except FileExistsError:
        raise OutputExists(f"{shown}: already exists") from None


def _replace(tmp: Path, target: Path) -> None:
    for _ in range(8):  # the target may come and go meanwhile; every step is atomic
        try:
            if not renameat2(tmp, target, RENAME_EXCHANGE):
                break
            remove_entry(tmp)  # the old output, swapped under the temporary name
            return
        except FileNotFoundError:
            pass  # nothing to exchange with: create it
        try:
            if not renameat2(tmp, target, RENAME_NOREPLACE):
                break
            return
        except FileExistsError:
            continue
    _replace_aside(tmp, target)


def _replace_aside(tmp: Path, target: Path) -> None:
    """Replacement without RENAME_EXCHANGE: the old output is renamed aside first. If the
    process dies between the two renames, sweep() puts it back."""
    aside = None
    with _lock(target):
        if os.path.lexists(target):
            aside = temp_sibling(target, "old")
            os.rename(target, aside)
        try:
            os.rename(tmp, target)
        except BaseException:
            if aside is not None:
                os.rename(aside, target)  # the previous output stays where it was
            raise
    if aside is not None:
        remove_entry(aside)


@contextlib.contextmanager
def _lock(target: Path) -> Iterator[None]:
    """Hold `.NAME.surgeon-lock` next to target. The file is unlinked by its holder before
    the lock is released; a waiter that then holds a lock on an unlinked file tries again."""
    path = target.parent / f".{target.name}.surgeon-lock"
    while True:
        fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # held around one or two renames: a short wait
            if _same_file(fd, path):
                break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (on_disk.st_dev, on_disk.st_ino)


# ---------------------------------------------------------------------------- files and folders


@contextlib.contextmanager
def temp_dir(target: Path) -> Iterator[Path]:
    """A new hidden folder next to `target` (after sweeping what dead runs left there), for
    the block to fill and publish(); whatever is still under its name at the end is deleted:
    a failed or interrupted output, or the old output a replacement swapped out."""
    sweep(target.parent)
    tmp = temp_sibling(target)
    os.mkdir(tmp, 0o777)  # the umask applies, as for any folder the user creates
    try:
        yield tmp
    finally:
        remove_entry(tmp)


@contextlib.contextmanager
def atomic_output(path: Path, durable: bool = True, replace: bool = True) -> Iterator[BinaryIO]:
    """Yield a binary file that becomes `path` only if the block finishes without error.

    `replace` lets it replace an existing file (caches, files inside a folder being written);
    without it an existing `path` is OutputExists. `durable` fsyncs before the rename;
    caches that can be rebuilt skip that cost.
    """
    path = Path(path)
    tmp = temp_sibling(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)  # mode: the umask's
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        if replace:
            os.replace(tmp, path)  # one file over another: rename(2) is atomic
        else:
            publish(tmp, path, replace=False)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text_atomic(path: Path, text: str, replace: bool = True) -> None:
    with atomic_output(path, replace=replace) as handle:
        handle.write(text.encode("utf-8"))


def write_output_text(output: str | os.PathLike, text: str, force: bool) -> None:
    """A report file the user asked for (`-o FILE`): created exclusively, or replaced with
    `force`; errors name `output`."""
    with output_errors(output):
        target = resolved_output(output)
        sweep(target.parent)
        try:
            write_text_atomic(target, text, replace=force)
        except OutputExists:
            raise OutputExists(f"{output}: already exists") from None
