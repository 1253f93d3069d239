"""What an output folder may replace: the one rule of `--force` for every writer of a folder
(prune, salvage, demo) and for the TUI's write dialog, which asks before it replaces.

`--force` once replaced whatever had the output's name: `salvage ... -o project --force`
deleted a user's project/src/thesis.tex, and `-o . --force` emptied the current folder. It
now replaces only
- an empty folder;
- a checkpoint: safetensors weights and a config.json that open_checkpoint opens;
- an earlier surgeon output: a folder with surgeon's own manifest (prune_manifest.json of a
  `surgeon.*` schema), or the folder `surgeon demo` writes (surgeon outputs and its card);
and a checkpoint or a surgeon output only while it holds no subfolder but `.cache`
(huggingface_hub's record of a `--local-dir` download): a checkpoint is flat, so a subfolder
(src/, .git/) is someone's work. A file, a link, the current folder or a folder holding it,
and any other folder are refused in one line naming the folder and why.
"""

from __future__ import annotations

import itertools
import os
import stat
from pathlib import Path

from surgeon.errors import SurgeonError
from surgeon.format.checkpoint import open_checkpoint
from surgeon.format.manifest import MANIFEST_NAME, is_surgeon_manifest
from surgeon.jsonfile import read_json_object

DEMO_CARD = "MODEL_CARD_SECTIONS.md"  # the card `surgeon demo` writes beside its two outputs
LOCAL_DIR_RECORD = ".cache"  # `huggingface-cli download --local-dir` keeps its metadata here
MAX_ENTRIES = 10_000  # a checkpoint or output holds tens of entries; this bounds a hostile folder
MAX_MANIFEST_BYTES = 64 << 20  # what is read to recognise a manifest (a big one is ~10 MB)


def check_replaceable(target: Path, shown: str | os.PathLike) -> None:
    """SurgeonError, naming `shown` (the output as the user gave it), unless what is at
    `target` (a resolved output path) may be replaced; nothing there may always be written."""
    if not os.path.lexists(target):
        return
    replaceable, words = what_is_there(target)
    if not replaceable:
        raise SurgeonError(f"{shown}: not replacing it: {words}; choose another output folder")


def refuse_cwd(target: Path, shown: str | os.PathLike) -> None:
    """An output folder over the current folder, or over one that holds it, is refused
    whatever the options: replacing it would delete the place the user works in."""
    cwd = Path(os.path.realpath(os.getcwd()))
    real = Path(os.path.realpath(target))
    if real == cwd:
        raise SurgeonError(f"{shown}: refusing to write over the current folder")
    if cwd.is_relative_to(real):
        raise SurgeonError(f"{shown}: refusing to write over a folder that holds the current folder ({cwd})")


def what_is_there(folder: Path) -> tuple[bool, str]:
    """(whether an existing `folder` may be replaced, what it is in words): "a checkpoint",
    or why not ("it is a file, not a folder"). The TUI's question quotes the words."""
    info = os.lstat(folder)
    if stat.S_ISLNK(info.st_mode):
        return False, "it is a link, not a folder"  # replacing it would not touch its target, but it is no output
    if not stat.S_ISDIR(info.st_mode):
        return False, "it is a file, not a folder"
    found = _entries(folder)
    if found is None:
        return False, f"it holds more than {MAX_ENTRIES} entries"
    files, folders = found
    if not files and not folders:
        return True, "an empty folder"
    if files <= {DEMO_CARD} and folders and all(_is_flat_output(folder / name) for name in folders):
        return True, "the folder surgeon demo writes"  # pruned/, salvaged/ and the card
    kind = _kind(folder)
    if kind is None:
        return False, "it is not empty, and it is neither a checkpoint nor an earlier surgeon output"
    extra = sorted(folders - {LOCAL_DIR_RECORD})
    if extra:
        return False, f"it holds a subfolder, {extra[0]}, which no checkpoint or surgeon output has"
    return True, kind


def _kind(folder: Path) -> str | None:
    if _is_surgeon_output(folder):
        return "an earlier surgeon output"
    return "a checkpoint" if _is_checkpoint(folder) else None


def _entries(folder: Path) -> tuple[set[str], set[str]] | None:
    """(file names, subfolder names) of `folder`, a link counting as a file; None past MAX_ENTRIES."""
    files: set[str] = set()
    folders: set[str] = set()
    with os.scandir(folder) as scan:
        for entry in itertools.islice(scan, MAX_ENTRIES + 1):
            (folders if entry.is_dir(follow_symlinks=False) else files).add(entry.name)
    return None if len(files) + len(folders) > MAX_ENTRIES else (files, folders)


def _is_flat_output(folder: Path) -> bool:
    """An earlier surgeon output with no subfolder of its own (the demo's pruned/ and salvaged/)."""
    found = _entries(folder) if os.path.isdir(folder) and not os.path.islink(folder) else None
    return found is not None and not found[1] and _is_surgeon_output(folder)


def _is_surgeon_output(folder: Path) -> bool:
    """A folder with a manifest surgeon wrote: a JSON object whose schema is one of surgeon's."""
    path = folder / MANIFEST_NAME
    if not os.path.lexists(path):
        return False
    try:
        return is_surgeon_manifest(read_json_object(path, MAX_MANIFEST_BYTES))
    except SurgeonError:
        return False


def _is_checkpoint(folder: Path) -> bool:
    """Safetensors weights and a config.json, as open_checkpoint opens them."""
    try:
        return open_checkpoint(str(folder)).config is not None
    except (SurgeonError, OSError):
        return False
