"""Build checkpoint variants for tests by rewriting the committed fixture's shards."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np

from surgeon.demo import DEMO_TEXT
from surgeon.format.checkpoint import open_checkpoint
from surgeon.format.dtypes import float32_to_bf16_bits, raw_view, to_float64
from surgeon.format.safetensors import TensorBytes, write_safetensors

ROOT = Path(__file__).resolve().parent.parent  # the repository
FIXTURES = ROOT / "fixtures"
BASE = FIXTURES / "gemma4-tiny" / "base"
PRUNED = FIXTURES / "gemma4-tiny" / "pruned"


def read_tensor(ckpt_dir: Path, name: str) -> np.ndarray:
    ckpt = open_checkpoint(ckpt_dir)
    info = ckpt.tensors[name]
    with open(ckpt.shard_path(info.file), "rb") as handle:
        handle.seek(info.start)
        raw = raw_view(handle.read(info.nbytes), info.dtype)
    return to_float64(raw, info.dtype).astype(np.float32).reshape(info.shape)


def make_variant(
    dst: Path,
    src: Path = BASE,
    replace: dict[str, np.ndarray] | None = None,
    add: dict[str, tuple[str, np.ndarray]] | None = None,
    drop: tuple[str, ...] = (),
    retype: dict[str, tuple[str, np.ndarray]] | None = None,
    shard_metadata: dict[str, dict[str, str]] | None = None,
) -> Path:
    """Copy `src` to `dst`, replacing (bf16), adding, dropping or retyping tensors.

    `add` maps a new tensor name to (shard file, float32 values); `retype` maps a name to
    (dtype, values) with dtype "F32" or "BF16".
    """
    replace, add, retype = replace or {}, add or {}, retype or {}
    ckpt = open_checkpoint(src)
    shutil.copytree(src, dst)
    weight_map = {}
    for shard_name, shard in ckpt.shards.items():
        data = (src / shard_name).read_bytes()
        tensors = []
        for name, info in shard.tensors.items():
            if name in drop:
                continue
            if name in replace:
                tensors.append(encode(name, "BF16", replace[name]))
            elif name in retype:
                tensors.append(encode(name, *retype[name]))
            else:
                tensors.append(TensorBytes(name, info.dtype.name, info.shape, data[info.start : info.end]))
        tensors += [encode(n, "BF16", values) for n, (s, values) in add.items() if s == shard_name]
        metadata = dict(shard.metadata or {}) | (shard_metadata or {}).get(shard_name, {})
        write_safetensors(dst / shard_name, tensors, metadata)
        weight_map.update({t.name: shard_name for t in tensors})
    index = json.loads((src / "model.safetensors.index.json").read_text())
    index["weight_map"] = dict(sorted(weight_map.items()))
    (dst / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return dst


def merged_file(src: Path, path: Path) -> Path:
    """Every tensor of the checkpoint `src`, as it reads, in one safetensors file at `path`."""
    ckpt = open_checkpoint(src)
    tensors = []
    for shard_name, shard in ckpt.shards.items():
        data = (ckpt.root / shard_name).read_bytes()
        tensors += [TensorBytes(n, t.dtype.name, t.shape, data[t.start : t.end]) for n, t in shard.tensors.items()]
    write_safetensors(path, tensors, {"format": "pt"})
    return path


def encode(name: str, dtype: str, values: np.ndarray) -> TensorBytes:
    values = np.ascontiguousarray(values, dtype=np.float32)
    if dtype == "BF16":
        raw = float32_to_bf16_bits(values).tobytes()
    elif dtype == "F32":
        raw = values.tobytes()
    else:
        raise ValueError(dtype)
    return TensorBytes(name, dtype, tuple(values.shape), raw)


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def count_reads(monkeypatch) -> list[str]:
    """The shard files hash_one_file reads from now on, by name, in order."""
    from surgeon.format import hashing

    calls = []
    real = hashing.hash_one_file

    def counting(shard, *args, **kwargs):
        calls.append(shard.path.name)
        return real(shard, *args, **kwargs)

    monkeypatch.setattr(hashing, "hash_one_file", counting)
    return calls


TINY_CORPUS = DEMO_TEXT  # what the tiny trained model learned: ~1k tokens


def tiny_prune_options(**options):
    """PruneOptions for the tiny fixtures, calibrated on their own training text (~1k
    tokens) unless a test says otherwise: the bundled corpus (8192 tokens taken) is meant for
    real models, makes each prune 8x slower here, and is noise to a model that knows only its
    training sentences."""
    from surgeon.prune.engine import PruneOptions

    return PruneOptions(**({"calib": str(TINY_CORPUS)} | options))


def local_path_leaks(folder: Path, tmp_path: Path) -> dict[str, str]:
    """Each artifact written under `folder` (manifest JSON, model-card Markdown: what is
    published beside the weights) that names a path of this machine: the test's tmp folder,
    the repository (the demo model's folder) or the home folder, as given or resolved, raw
    or as JSON escapes it. {file: the path it names}."""
    import os

    places = {str(tmp_path), os.path.realpath(tmp_path), str(ROOT), os.path.realpath(ROOT)}
    home = os.path.expanduser("~")
    if home not in ("", "/", "~"):
        places |= {home, os.path.realpath(home)}
    found = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix in (".json", ".md"):
            text = path.read_text(encoding="utf-8")
            hits = [p for p in places if p in text or json.dumps(p)[1:-1] in text]
            if hits:
                found[str(path.relative_to(folder))] = hits[0]
    return found
