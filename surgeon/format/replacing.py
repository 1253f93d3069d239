"""What an output folder may replace: the one rule of `--force` for every writer of a folder
(prune, salvage, demo) and for the TUI's write dialog, which asks before it replaces.

`--force` once replaced whatever had the output's name: `salvage ... -o project --force`
deleted a user's project/src/thesis.tex, `-o . --force` emptied the current folder, and a
checkpoint with the user's notes.md beside it, or a folder with a forged `surgeon.x`
manifest, went too. It now replaces a folder only when EVERY entry in it is one a
checkpoint or surgeon writes:
- files whose names are on CHECKPOINT_FILES: what Hugging Face model repos hold beside
  their weights (weights, index, config, tokenizer, template, processor, card, licence,
  .gitattributes) and what surgeon writes (prune_manifest.json, the demo's card);
- `.cache/huggingface/` as `huggingface-cli download --local-dir` leaves it (its
  .gitignore, and download/ records: *.metadata, *.lock, *.incomplete), nothing else
  under .cache;
- in the folder `surgeon demo` writes, its pruned/ and salvaged/ folders, each itself
  replaceable by this rule;
and only when the folder is empty, a checkpoint (open_checkpoint opens it), an earlier
surgeon output (a prune_manifest.json of surgeon's schema that passes the manifest's shape
check) or the demo's folder. Any other entry refuses the whole folder, naming it. So does
a folder in a Hugging Face cache (a `models--org--name` folder or anything in it): a
snapshot replaced in place makes its commit load other weights. A file, a link, the
current folder or a folder holding it are refused too, in one line naming the folder and why.
"""

from __future__ import annotations

import fnmatch
import itertools
import os
import stat
from pathlib import Path

from surgeon.errors import SurgeonError
from surgeon.format.checkpoint import open_checkpoint
from surgeon.format.manifest import MANIFEST_NAME, SCHEMA, manifest_problem
from surgeon.jsonfile import read_json_object

DEMO_CARD = "MODEL_CARD_SECTIONS.md"  # the card `surgeon demo` writes beside its two outputs
DEMO_FOLDERS = ("pruned", "salvaged")  # the two outputs `surgeon demo` writes
LOCAL_DIR_RECORD = ".cache"  # `huggingface-cli download --local-dir` keeps its metadata here
# The files of a Hugging Face model repo (weights, config, tokenizer, template, processor,
# card, licence) and of surgeon's outputs. Judged against the repos of Llama 3, Gemma 3,
# Qwen 2.5/3, Mistral and Phi: an `original/` folder or *.bin/*.pth weights are refused
# (someone's own copy is not replaced on a guess); so is any name not here.
CHECKPOINT_FILES = (
    "*.safetensors",
    "*.safetensors.index.json",
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.*",
    "merges.txt",
    "*.jinja",
    "chat_template.json",
    "preprocessor_config.json",
    "processor_config.json",
    "video_preprocessor_config.json",
    MANIFEST_NAME,
    DEMO_CARD,
    "README.md",
    "LICENSE*",
    "NOTICE*",
    "USE_POLICY.md",
    ".gitattributes",
)
LOCAL_DIR_FILES = ("*.metadata", "*.lock", "*.incomplete")  # under .cache/huggingface/download/
HUB_CACHE_PREFIXES = ("models--", "datasets--", "spaces--")
MAX_ENTRIES = 10_000  # a checkpoint or output holds tens of entries; this bounds a hostile folder
MAX_MANIFEST_BYTES = 64 << 20  # what is read to recognise a manifest (a big one is ~10 MB)


class _Refused(Exception):
    """Why a folder may not be replaced, in words."""


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
    cache = _hub_cache_folder(folder)
    if cache is not None:
        return False, f"it is in a Hugging Face cache ({cache}), where other programs read it by commit"
    try:
        return True, _replaceable_kind(folder, demo=True)
    except _Refused as exc:
        return False, str(exc)


def _hub_cache_folder(folder: Path) -> str | None:
    """The `models--org--name` folder (or datasets--, spaces--) `folder` is or is in, by
    its resolved path: a snapshot is `models--org--name/snapshots/<rev>`."""
    real = Path(os.path.realpath(folder))
    return next((part for part in real.parts if part.startswith(HUB_CACHE_PREFIXES)), None)


def _replaceable_kind(folder: Path, demo: bool) -> str:
    """What `folder` is, when every entry is one a checkpoint or surgeon writes; _Refused
    naming the first unknown entries otherwise. `demo`: the demo's subfolders may be there."""
    files, folders = _entries(folder)
    if not files and not folders:
        return "an empty folder"
    unknown = sorted(name for name in files if not _is_checkpoint_file(name))
    subfolders = [name for name in folders if name != LOCAL_DIR_RECORD]
    unknown += sorted(name + "/" for name in subfolders if not (demo and name in DEMO_FOLDERS))
    if unknown:
        shown = ", ".join(unknown[:3]) + (f" and {len(unknown) - 3} more" if len(unknown) > 3 else "")
        raise _Refused(f"it holds {shown}, which no checkpoint or surgeon output has")
    if LOCAL_DIR_RECORD in folders:
        _check_local_dir_record(folder / LOCAL_DIR_RECORD)
    if subfolders:  # the demo's pruned/ and salvaged/, each an output of its own
        if files - {DEMO_CARD}:
            raise _Refused(
                f"it holds {sorted(files - {DEMO_CARD})[0]} beside {subfolders[0]}/, not as surgeon demo writes"
            )
        for name in subfolders:
            try:
                _replaceable_kind(folder / name, demo=False)
            except _Refused as exc:
                raise _Refused(f"its {name}/: {exc}") from None
        return "the folder surgeon demo writes"
    return _kind(folder)


def _kind(folder: Path) -> str:
    manifest = folder / MANIFEST_NAME
    if os.path.lexists(manifest):
        problem = _manifest_problem(manifest)
        if problem is not None:
            raise _Refused(f"its {MANIFEST_NAME} is not one surgeon writes ({problem})")
        return "an earlier surgeon output"
    if _is_checkpoint(folder):
        return "a checkpoint"
    raise _Refused("it is not empty, and it is neither a checkpoint nor an earlier surgeon output")


def _manifest_problem(path: Path) -> str | None:
    """Why `path` is not a manifest surgeon writes: a JSON object of surgeon's schema whose
    shape passes the reader's check (a `{"schema": "surgeon.x"}` is not one)."""
    if os.path.islink(path) or not os.path.isfile(path):
        return "not a file"
    try:
        manifest = read_json_object(path, MAX_MANIFEST_BYTES)
    except SurgeonError:
        return "not a readable JSON object"
    if manifest.get("schema") != SCHEMA:
        return f"its schema is not {SCHEMA}"
    return manifest_problem(manifest)


def _check_local_dir_record(cache: Path) -> None:
    """`.cache` as `download --local-dir` leaves it: huggingface/ with a .gitignore and
    download/ records; anything else is someone's."""
    files, folders = _entries(cache)
    if files or folders - {"huggingface"}:
        raise _Refused(
            f"its {LOCAL_DIR_RECORD}/ holds {sorted(files | folders - {'huggingface'})[0]}, not a download record"
        )
    if not folders:
        return
    files, folders = _entries(cache / "huggingface")
    if files - {".gitignore"} or folders - {"download"}:
        name = sorted((files - {".gitignore"}) | (folders - {"download"}))[0]
        raise _Refused(f"its {LOCAL_DIR_RECORD}/huggingface/ holds {name}, not a download record")
    if folders:
        _check_download_records(cache / "huggingface" / "download", budget=[MAX_ENTRIES])


def _check_download_records(folder: Path, budget: list[int]) -> None:
    """download/ mirrors the repo's paths: records only, in folders as deep as the repo's."""
    files, folders = _entries(folder)
    budget[0] -= len(files) + len(folders)
    if budget[0] < 0:
        raise _Refused(f"its {LOCAL_DIR_RECORD}/ holds more than {MAX_ENTRIES} entries")
    other = sorted(name for name in files if not any(fnmatch.fnmatchcase(name, p) for p in LOCAL_DIR_FILES))
    if other:
        raise _Refused(f"its {LOCAL_DIR_RECORD}/huggingface/download/ holds {other[0]}, not a download record")
    for name in sorted(folders):
        _check_download_records(folder / name, budget)


def _is_checkpoint_file(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in CHECKPOINT_FILES)


def _entries(folder: Path) -> tuple[set[str], set[str]]:
    """(file names, subfolder names) of `folder`, a link counting as a file; _Refused past MAX_ENTRIES."""
    files: set[str] = set()
    folders: set[str] = set()
    with os.scandir(folder) as scan:
        for entry in itertools.islice(scan, MAX_ENTRIES + 1):
            (folders if entry.is_dir(follow_symlinks=False) else files).add(entry.name)
    if len(files) + len(folders) > MAX_ENTRIES:
        raise _Refused(f"it holds more than {MAX_ENTRIES} entries")
    return files, folders


def _is_checkpoint(folder: Path) -> bool:
    """Safetensors weights and a config.json, as open_checkpoint opens them."""
    try:
        return open_checkpoint(str(folder)).config is not None
    except (SurgeonError, OSError):
        return False
