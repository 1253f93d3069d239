"""Per-layer prune results on disk, so a killed run resumes at the next layer.

The folder holds a fingerprint of the inputs and options, one result per finished layer
(`layers/NNNNN.json` and `.safetensors`) and the activation stream entering the next layer
(`stream.safetensors` + `stream.json`). Every file is written atomically; nothing is pickled.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from surgeon.atomic import atomic_output, output_errors, remove_entry, sweep, write_text_atomic
from surgeon.format.safetensors import read_header
from surgeon.format.writer import TensorSource

OWN_FILES = ("layers", "stream.safetensors", "stream.json", "fingerprint.json")


class Workdir:
    def __init__(self, path: Path, fingerprint: dict):
        self.path = Path(path)
        self.fingerprint = fingerprint

    def open(self) -> str | None:
        """Prepare the folder; returns a message when earlier work was discarded."""
        stamp = self.path / "fingerprint.json"
        message = None
        for folder in (self.path, self.path / "layers"):
            sweep(folder)  # files a killed run was writing
        if stamp.exists():
            try:
                previous = json.loads(stamp.read_text())
            except ValueError:
                previous = None
            if previous == self.fingerprint:
                return None
            changed = sorted(k for k in self.fingerprint if (previous or {}).get(k) != self.fingerprint[k])
            message = f"{self.path}: inputs or options changed ({', '.join(changed)}); starting fresh"
            self._discard()
        with output_errors(self.path):
            (self.path / "layers").mkdir(parents=True, exist_ok=True)
            write_text_atomic(stamp, json.dumps(self.fingerprint, indent=2, sort_keys=True))
        return message

    def _discard(self) -> None:
        """Delete the earlier work, and only that: the folder is the user's (--workdir)."""
        for name in OWN_FILES:
            remove_entry(self.path / name)

    def save_layer(self, index: int, record: dict, tensors: dict[str, torch.Tensor]) -> None:
        base = self.path / "layers" / f"{index:05d}"
        with output_errors(self.path):
            with atomic_output(base.with_suffix(".safetensors")) as handle:
                handle.write(_safetensors_bytes(tensors))
            write_text_atomic(base.with_suffix(".json"), json.dumps(record, indent=2))

    def layer_record(self, index: int) -> dict | None:
        """A finished layer's record, or None if the layer has not finished."""
        base = self.path / "layers" / f"{index:05d}"
        if not (base.with_suffix(".json").exists() and base.with_suffix(".safetensors").exists()):
            return None
        return json.loads(base.with_suffix(".json").read_text())

    def layer_sources(self, index: int) -> dict:
        """The layer's new tensors as byte ranges of its file, for the writer to copy from:
        the pruned tensors of every layer never have to be in memory together."""
        path = self.path / "layers" / f"{index:05d}.safetensors"
        header = read_header(path)
        return {name: TensorSource(path, info.start, info.end) for name, info in header.tensors.items()}

    def save_stream(self, next_layer: int, hidden: list[torch.Tensor]) -> None:
        tensors = {f"batch.{k}": h.detach().contiguous().cpu() for k, h in enumerate(hidden)}
        with output_errors(self.path):
            with atomic_output(self.path / "stream.safetensors") as handle:
                handle.write(_safetensors_bytes(tensors))
            write_text_atomic(self.path / "stream.json", json.dumps({"next_layer": next_layer}))

    def load_stream(self) -> tuple[int, list[torch.Tensor]] | None:
        meta, data = self.path / "stream.json", self.path / "stream.safetensors"
        if not (meta.exists() and data.exists()):
            return None
        tensors = load_file(data)
        hidden = [tensors[f"batch.{k}"] for k in range(len(tensors))]
        return json.loads(meta.read_text())["next_layer"], hidden


def _safetensors_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    return save({k: v.contiguous() for k, v in tensors.items()})
