"""`surgeon verify`: do the files match the index, the bytes match the manifest, and the
manifest's claims match the actual difference with the base?"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from surgeon.checkpoint import Checkpoint, open_checkpoint
from surgeon.diff import DiffOptions, DiffReport, diff_checkpoints
from surgeon.errors import SurgeonError
from surgeon.hashcache import HashCache, default_cache_dir
from surgeon.hashing import hash_shards
from surgeon.layers import layer_ranges, layers_phrase
from surgeon.writer import MANIFEST_NAME


@dataclass
class VerifyReport:
    checkpoint: str
    base: str | None
    manifest: bool
    checks: list[str] = field(default_factory=list)  # what was checked and held
    discrepancies: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.discrepancies

    def to_json(self) -> dict:
        return {"schema": "surgeon.verify/1", "ok": self.ok} | vars(self)


def verify(checkpoint: str | Path, base: str | Path | None = None, cache_dir: Path | None = None) -> VerifyReport:
    report = VerifyReport(str(checkpoint), str(base) if base else None, False)
    try:
        ckpt = open_checkpoint(checkpoint)
    except SurgeonError as exc:
        report.discrepancies.append(f"integrity: {exc}")
        return report
    report.checks.append(f"{len(ckpt.shards)} shard files agree with the index ({len(ckpt.tensors)} tensors)")
    cache = HashCache(cache_dir if cache_dir is not None else default_cache_dir())
    hashes = hash_shards(list(ckpt.shards.values()), cache)
    manifest = _read_manifest(ckpt)
    if manifest is None:
        report.checks.append("no manifest: integrity only")
        return report
    report.manifest = True
    _check_bytes(ckpt, hashes, manifest, report)
    base_spec = base or _manifest_base(manifest)
    if base_spec is None:
        report.checks.append("no base given or recorded: claims against the base not checked")
        return report
    report.base = str(base_spec)
    diff = diff_checkpoints(open_checkpoint(base_spec), ckpt, DiffOptions(cache_dir=cache.root))
    _check_claims(manifest, diff, report)
    return report


def _read_manifest(ckpt: Checkpoint) -> dict | None:
    path = ckpt.root / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        raise SurgeonError(f"{path}: not valid JSON") from None


def _manifest_base(manifest: dict) -> str | None:
    base = (manifest.get("salvage") or {}).get("base") or manifest.get("base") or {}
    path = base.get("path")
    if path and Path(path).is_dir():
        return path
    return base.get("source")


def _check_bytes(ckpt: Checkpoint, hashes, manifest: dict, report: VerifyReport) -> None:
    written = manifest.get("written", {})
    for name, claimed in sorted(written.get("shards", {}).items()):
        shard = ckpt.shards.get(name)
        if shard is None:
            report.discrepancies.append(f"shard {name}: listed in the manifest but missing")
            continue
        actual = hashes[os.path.realpath(shard.path)].file_sha256
        if actual != claimed:
            report.discrepancies.append(
                f"shard {name}: SHA256 {actual[:12]} does not match the manifest's {claimed[:12]}"
            )
    tensor_sha = {}
    for shard in ckpt.shards.values():
        tensor_sha.update(hashes[os.path.realpath(shard.path)].tensors)
    bad = [n for n, h in written.get("tensors", {}).items() if tensor_sha.get(n) != h.get("sha256")]
    for name in sorted(bad):
        report.discrepancies.append(f"tensor {name}: bytes do not match the manifest's SHA256")
    report.checks.append(
        f"{len(written.get('shards', {}))} shard and {len(written.get('tensors', {}))} tensor SHA256s checked "
        "against the manifest"
    )


def _claimed_layers(manifest: dict) -> tuple[list[int], str]:
    if not manifest.get("layers"):  # no prune record (a salvage of an arbitrary candidate)
        return list(manifest.get("written", {}).get("layers", [])), "written"
    pruned = sorted(layer["layer"] for layer in manifest.get("layers", []) if layer.get("pruned_heads"))
    rolled_back = set((manifest.get("salvage") or {}).get("rolled_back_layers", []))
    return [i for i in pruned if i not in rolled_back], "pruned" if not rolled_back else "kept pruned"


def _check_claims(manifest: dict, diff: DiffReport, report: VerifyReport) -> None:
    actual = diff.layers_changed()
    claimed, word = _claimed_layers(manifest)
    total = diff.num_layers
    identical = sorted(set(range(total)) - set(actual))
    if claimed != actual:
        report.discrepancies.append(
            f"manifest lists {len(claimed)} {word} layers ({layer_ranges(claimed) or 'none'}); weights differ "
            f"from base in {len(actual)} ({layer_ranges(actual) or 'none'}); "
            f"{layer_ranges(identical) or 'none'} are byte-identical to base"
        )
    written = manifest.get("written", {})
    if written.get("layers") != actual:
        report.discrepancies.append(
            f"manifest says layers {layer_ranges(written.get('layers', [])) or 'none'} were written; "
            f"the weights differ from base in {layer_ranges(actual) or 'none'}"
        )
    changed = sorted(t.name for t in diff.tensors if t.status != "identical")
    claimed_tensors = sorted(written.get("tensors", {}))
    for name in sorted(set(changed) - set(claimed_tensors)):
        report.discrepancies.append(f"tensor {name}: differs from base but the manifest does not list it")
    for name in sorted(set(claimed_tensors) - set(changed)):
        report.discrepancies.append(f"tensor {name}: listed as written but byte-identical to base")
    _check_heads(manifest, diff, report, set(actual))
    _check_copied(written, diff, report)
    report.checks.append(f"claims checked against the base: weights differ in {layers_phrase(actual)}")


def _check_copied(written: dict, diff: DiffReport, report: VerifyReport) -> None:
    """Shards the manifest calls byte-identical to the base must be, by the files' hashes."""
    status = {s.name: s.status for s in diff.shards}
    for name in written.get("copied_shards", []):
        if status.get(name) != "identical":
            report.discrepancies.append(
                f"shard {name}: the manifest says it is the base's file, but it is {status.get(name, 'missing')}"
            )


def _check_heads(manifest: dict, diff: DiffReport, report: VerifyReport, actual: set[int]) -> None:
    o_proj = {t.layer: t for t in diff.tensors if t.family.endswith("o_proj.weight") and t.stack == diff.main_stack}
    for layer in manifest.get("layers", []):
        index, heads = layer["layer"], layer.get("pruned_heads") or []
        entry = o_proj.get(index)
        if index not in actual or entry is None or entry.heads is None:
            continue
        zeroed = [h for h, zero in enumerate(entry.heads.other_zero) if zero]
        if zeroed != sorted(heads):
            report.discrepancies.append(
                f"layer {index}: manifest says heads {heads} were removed; o_proj has zero columns for {zeroed}"
            )
