"""Per-layer prune results on disk, so a killed run resumes at the next layer.

The folder holds a fingerprint of the inputs and options, one result per finished layer
(`layers/NNNNN.json` and `.safetensors`) and the activation stream entering the next layer
(`stream.safetensors` + `stream.json`). Every file is written atomically; nothing is pickled.

The folder is read as untrusted, like a checkpoint: it may be damaged (a disk, a person, a
tool), and the user names it. Every file is read with the project's bounded readers, which
never open a FIFO or a device (surgeon.jsonfile, surgeon.format.safetensors), and every value
is checked before use. A damaged entry is DamagedEntry: the engine says so and runs the
saved layers again, never a hang, a MemoryError or a traceback.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TypeGuard

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from surgeon.atomic import atomic_output, output_errors, remove_entry, sweep, write_text_atomic
from surgeon.errors import SurgeonError, first_line
from surgeon.format.safetensors import ShardHeader, TensorInfo, read_header
from surgeon.format.writer import TensorSource
from surgeon.jsonfile import read_json_file

OWN_FILES = ("layers", "stream.safetensors", "stream.json", "fingerprint.json")
# A layer's record is a score per head and a few numbers (a few kB for 128 heads); the
# fingerprint holds the options and a hash per shard. 16 MiB is far above both.
MAX_RECORD_BYTES = 16 << 20
_GEOMETRY = ("layer", "layer_type", "num_heads", "num_kv_heads", "head_dim", "pruned")


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
        """Delete the earlier work and only that (the folder is the user's: --workdir), then
        stamp the folder with this run's fingerprint."""
        for name in OWN_FILES:
            remove_entry(self.path / name)
        with output_errors(self.path):
            (self.path / "layers").mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.path / "fingerprint.json", json.dumps(self.fingerprint, indent=2, sort_keys=True))

    def _stale(self) -> str | None:
        """Why the earlier work here cannot be resumed, naming the folder or file; None when
        there is none or it can be."""
        stamp = self.path / "fingerprint.json"
        if not os.path.lexists(stamp):
            earlier = [n for n in OWN_FILES[1:] if os.path.lexists(self.path / n)]
            return f"{self.path}: {earlier[0]} without fingerprint.json" if earlier else None
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

    def layer_sources(self, index: int, base_tensors: dict[str, TensorInfo]) -> dict:
        """The layer's new tensors as byte ranges of its file, for the writer to copy from:
        the pruned tensors of every layer never have to be in memory together. Each must be
        a tensor of the base with its dtype and shape; DamagedEntry otherwise."""
        path = self.path / "layers" / f"{index:05d}.safetensors"
        header = _read_header(path)
        for name, info in header.tensors.items():
            base = base_tensors.get(name)
            if base is None or (base.dtype, base.shape) != (info.dtype, info.shape):
                raise DamagedEntry(f"{path}: holds {name!r}, which is no tensor of the base in that dtype and shape")
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
    refit = record["refit"]
    if refit is not None and not (isinstance(refit, dict) and all(map(_refit_value, refit.items()))):
        return "refit is not a record of numbers"
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
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _refit_value(item: tuple) -> bool:
    key, value = item
    return isinstance(value, str) if key == "solver" else _is_number(value)


def _safetensors_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    return save({k: v.contiguous() for k, v in tensors.items()})
