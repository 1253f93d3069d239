"""Per-layer prune results on disk, so a killed run resumes at the next layer.

The folder holds a fingerprint of the inputs and options, one result per finished layer
(`layers/NNNNN.json` and `.safetensors`) and the activation stream entering the next layer
(`stream.safetensors` + `stream.json`). Every file is written atomically; nothing is pickled.

The folder is the user's: surgeon deletes only the files it writes there, by their exact
names, never a whole folder. `--workdir proj` once deleted proj/layers/attention.py and the
user's proj/stream.json; a folder holding anything else, or surgeon's names without the
fingerprint that marks surgeon's work, is now refused before any work (check_workdir).

The folder is read as untrusted, like a checkpoint: it may be damaged (a disk, a person, a
tool), and the user names it. Every file is read with the project's bounded readers, which
never open a FIFO or a device (surgeon.jsonfile, surgeon.format.safetensors), and every value
is checked before use. A damaged entry is DamagedEntry: the engine says so and runs the
saved layers again, never a hang, a MemoryError or a traceback.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import stat
from pathlib import Path
from typing import TypeGuard

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from surgeon.atomic import atomic_output, output_errors, remove_entry, resolved_output, sweep, write_text_atomic
from surgeon.errors import SurgeonError, first_line
from surgeon.format.replacing import refuse_cwd
from surgeon.format.safetensors import ShardHeader, TensorInfo, read_header
from surgeon.format.writer import TensorSource
from surgeon.jsonfile import read_json_file

STAMP = "fingerprint.json"
OWN_FILES = ("stream.safetensors", "stream.json", STAMP)  # and the folder layers/, of LAYER_FILE only
LAYER_FILE = re.compile(r"\d{5,}\.(json|safetensors)")  # f"{index:05d}.json": save_layer's names
# atomic_output's temporary name for one of the names above (surgeon.atomic.temp_sibling)
TEMP_FILE = re.compile(r"\.(?P<name>.+)\.surgeon-tmp-[0-9a-f]{8}-\d+-\d+-[0-9a-f]+")
MAX_ENTRIES = 10_000  # two files a layer: a model of 5000 layers; bounds a hostile folder's scan
MAX_NAMED = 3  # foreign entries named in the refusal
# A layer's record is a score per head and a few numbers (a few kB for 128 heads); the
# fingerprint holds the options and a hash per shard. 16 MiB is far above both.
MAX_RECORD_BYTES = 16 << 20
_GEOMETRY = ("layer", "layer_type", "num_heads", "num_kv_heads", "head_dim", "pruned", "ffn_width")


class DamagedEntry(SurgeonError):
    """A workdir file that is there but cannot be used; its message names it and says why."""


class Workdir:
    def __init__(self, path: Path, fingerprint: dict):
        self.path = Path(path)
        self.fingerprint = fingerprint

    def open(self) -> str | None:
        """Prepare the folder; returns a message when earlier work was discarded."""
        for folder in (self.path, self.path / "layers"):
            sweep(folder)  # files a killed run was writing
        stale = self._stale()
        if stale is None and (self.path / "layers").is_dir():
            return None
        self.reset()
        return None if stale is None else f"{stale}; starting fresh"

    def reset(self) -> None:
        """Delete the earlier work and only that: the files surgeon writes, by their names
        (the folder is the user's: --workdir), then stamp it with this run's fingerprint.
        A folder that came to hold anything else since the check is refused, not emptied."""
        refuse_foreign(self.path, self.path)
        layers = self.path / "layers"
        mine = [self.path / n for n in OWN_FILES]
        if os.path.isdir(layers) and not os.path.islink(layers):
            mine += [layers / n for n in _names(layers) if LAYER_FILE.fullmatch(n)]
        for path in mine:
            if not _is_folder(path):  # a link or a FIFO under surgeon's name is unlinked, never followed
                remove_entry(path)
        with output_errors(self.path):
            (self.path / "layers").mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.path / "fingerprint.json", json.dumps(self.fingerprint, indent=2, sort_keys=True))

    def _stale(self) -> str | None:
        """Why the earlier work here cannot be resumed, naming the folder or file; None when
        there is none or it can be."""
        stamp = self.path / STAMP
        if not os.path.lexists(stamp):
            return None  # check_workdir refused any file of surgeon's names without it
        try:
            previous = read_json_file(stamp, MAX_RECORD_BYTES)
        except SurgeonError as exc:
            return str(exc)
        if previous != self.fingerprint:
            known = previous if isinstance(previous, dict) else {}
            changed = sorted(k for k in self.fingerprint if known.get(k) != self.fingerprint[k])
            return f"{self.path}: inputs or options changed ({', '.join(changed)})"
        layers = self.path / "layers"
        if os.path.lexists(layers) and (layers.is_symlink() or not layers.is_dir()):
            return f"{layers}: not a folder"
        return None

    def save_layer(self, index: int, record: dict, tensors: dict[str, torch.Tensor]) -> None:
        base = self.path / "layers" / f"{index:05d}"
        with output_errors(self.path):
            with atomic_output(base.with_suffix(".safetensors")) as handle:
                handle.write(_safetensors_bytes(tensors))
            write_text_atomic(base.with_suffix(".json"), json.dumps(record, indent=2))

    def layer_record(self, index: int) -> dict | None:
        """A finished layer's record (its values unchecked: see record_problem), or None if
        the layer has not finished; DamagedEntry if its files are there but unreadable."""
        base = self.path / "layers" / f"{index:05d}"
        if not (os.path.lexists(base.with_suffix(".json")) and os.path.lexists(base.with_suffix(".safetensors"))):
            return None
        record = _read_json(base.with_suffix(".json"))
        if not isinstance(record, dict):
            raise DamagedEntry(f"{base.with_suffix('.json')}: not a layer record")
        return record

    def layer_sources(self, index: int, expected: dict[str, TensorInfo]) -> dict:
        """The layer's new tensors as byte ranges of its file, for the writer to copy from:
        the pruned tensors of every layer never have to be in memory together. The file must
        hold exactly `expected`, the base tensors this layer's pruning writes (none for a
        layer only run), each in its dtype and shape: a file that also held another layer's
        tensor once changed that layer in the output. DamagedEntry otherwise."""
        path = self.path / "layers" / f"{index:05d}.safetensors"
        header = _read_header(path)
        for name, info in header.tensors.items():
            base = expected.get(name)
            if base is None or (base.dtype, base.shape) != (info.dtype, info.shape):
                raise DamagedEntry(f"{path}: holds {name!r}, which is no tensor this layer's pruning writes")
        missing = sorted(set(expected) - set(header.tensors))
        if missing:
            raise DamagedEntry(f"{path}: lacks {missing[0]!r}")
        return {name: TensorSource(path, info.start, info.end) for name, info in header.tensors.items()}

    def save_stream(self, next_layer: int, hidden: list[torch.Tensor]) -> None:
        tensors = {f"batch.{k}": h.detach().contiguous().cpu() for k, h in enumerate(hidden)}
        with output_errors(self.path):
            with atomic_output(self.path / "stream.safetensors") as handle:
                handle.write(_safetensors_bytes(tensors))
            write_text_atomic(self.path / "stream.json", json.dumps({"next_layer": next_layer}))

    def load_stream(self) -> tuple[int, list[torch.Tensor]] | None:
        """(the layer the saved stream enters, its batches), or None if none was saved;
        DamagedEntry for files that are there but unusable."""
        meta, data = self.path / "stream.json", self.path / "stream.safetensors"
        if not (os.path.lexists(meta) and os.path.lexists(data)):
            return None
        record = _read_json(meta)
        next_layer = record.get("next_layer") if isinstance(record, dict) else None
        if not _is_int(next_layer) or next_layer < 1:
            raise DamagedEntry(f"{meta}: no layer number")
        count = len(_read_header(data).tensors)  # a regular safetensors file: checked before torch maps it
        try:
            tensors = load_file(data)
            return next_layer, [tensors[f"batch.{k}"] for k in range(count)]
        except (SafetensorError, OSError, KeyError) as exc:
            raise DamagedEntry(f"{data}: not a saved stream ({first_line(exc)})") from None


def check_workdir(workdir: Path, output: Path, inputs: list) -> None:
    """Refuse, before any work, a --workdir that surgeon may not use: over or inside an input
    (checked by the caller's output guard), the current folder or one holding it, the output
    folder (`output`, resolved) or one inside or around it (the output's publish would fail
    after the whole run), a file or a link, or a folder holding what surgeon did not write."""
    target = resolved_output(workdir)
    refuse_cwd(target, workdir)
    if target == output or target.is_relative_to(output) or output.is_relative_to(target):
        raise SurgeonError(f"{workdir}: the workdir may not be the output folder, nor inside it or around it")
    if not os.path.lexists(target):
        return
    if not _is_folder(target):
        raise SurgeonError(f"{workdir}: not a folder (a link or a file); choose an empty or new folder")
    refuse_foreign(target, workdir)


def refuse_foreign(folder: Path, shown: str | os.PathLike) -> None:
    """SurgeonError naming what in `folder` surgeon did not write: anything but its own files
    and layers/ folder, and even those when fingerprint.json, which every workdir of surgeon
    holds from its start, is not there (a stream.json of the user's would be deleted)."""
    foreign = _foreign(folder)
    if foreign:
        named = ", ".join(foreign[:MAX_NAMED]) + (", ..." if len(foreign) > MAX_NAMED else "")
        raise SurgeonError(f"{shown}: holds files surgeon did not write ({named}): choose an empty or new folder")


def _foreign(folder: Path) -> list[str]:
    if not os.path.lexists(folder):
        return []
    names = _names(folder)
    stamped = STAMP in names
    found = []
    for name in sorted(names):
        path = folder / name
        if name == "layers" and _is_folder(path):
            found += [f"layers/{n}" for n in sorted(_names(path)) if not (stamped and _is_own(path / n, LAYER_FILE))]
        elif name == "layers" or not _is_own(path, OWN_FILES) or not (stamped or TEMP_FILE.fullmatch(name)):
            found.append(name)  # without the stamp, only a killed run's temporary file is surgeon's
    return found


def _is_own(path: Path, own) -> bool:
    """A name surgeon writes there (or atomic_output's temporary name for one), not a folder."""
    temp = TEMP_FILE.fullmatch(path.name)
    name = temp.group("name") if temp else path.name
    known = own.fullmatch(name) is not None if isinstance(own, re.Pattern) else name in own
    return known and not _is_folder(path)


def _names(folder: Path) -> set[str]:
    with output_errors(folder), os.scandir(folder) as scan:
        names = {entry.name for entry in itertools.islice(scan, MAX_ENTRIES + 1)}
    if len(names) > MAX_ENTRIES:
        raise SurgeonError(f"{folder}: more than {MAX_ENTRIES} entries, which no workdir of surgeon holds")
    return names


def _is_folder(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def record_problem(record: dict, fresh: dict) -> str | None:
    """What makes a saved layer record unusable, or None. `fresh` is the record this run
    starts the layer with: the saved one must have its keys and geometry (the layer, its
    heads, whether it is pruned), and values of the types the manifest and summary read."""
    if set(record) != set(fresh):
        return "not a layer record of this version"
    for key in _GEOMETRY:
        if type(record[key]) is not type(fresh[key]) or record[key] != fresh[key]:
            return f"{key} is not this layer's"
    heads, num_heads = record["pruned_heads"], fresh["num_heads"]
    if not (isinstance(heads, list) and all(_is_int(h) and 0 <= h < num_heads for h in heads)):
        return "pruned_heads are not head numbers"
    if len(set(heads)) != len(heads):
        return "pruned_heads has a head twice"
    if not isinstance(record["scores"], list) or not all(map(_is_number, record["scores"])):
        return "scores are not numbers"
    channels, width = record["ffn_pruned_channels"], fresh["ffn_width"]
    if not (isinstance(channels, list) and all(_is_int(c) and 0 <= c < width for c in channels)):
        return "ffn_pruned_channels are not channel numbers"
    if len(set(channels)) != len(channels):
        return "ffn_pruned_channels has a channel twice"
    if record["ffn_bias"] not in (None, "refit", "compensated", "absent"):
        return "ffn_bias is not a known word"
    for key in ("refit", "ffn_refit"):
        refit = record[key]
        if refit is not None and not (isinstance(refit, dict) and all(map(_refit_value, refit.items()))):
            return f"{key} is not a record of numbers"
    if not (_is_int(record["tokens"]) and _is_number(record["seconds"])):
        return "tokens or seconds are not numbers"
    return None


def _read_json(path: Path) -> object:
    try:
        return read_json_file(path, MAX_RECORD_BYTES)
    except SurgeonError as exc:
        raise DamagedEntry(str(exc)) from None


def _read_header(path: Path) -> ShardHeader:
    try:
        return read_header(path)
    except SurgeonError as exc:
        raise DamagedEntry(str(exc)) from None


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    """An int, or a finite float: a record's `NaN` or `Infinity` (which Python's json reads)
    once went into prune_manifest.json as non-standard JSON."""
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, int) and not isinstance(value, bool)


def _refit_value(item: tuple) -> bool:
    key, value = item
    return isinstance(value, str) if key == "solver" else _is_number(value)


def _safetensors_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    return save({k: v.contiguous() for k, v in tensors.items()})
