"""A checkpoint's quality against its base, as its manifest records it: measured when prune
or salvage writes it (`--eval`, or a salvage quality budget), and read back by
`diff --markdown` for the model card's "Quality against base" section.

The record is a claim in a file that came with the checkpoint, so the card shows it only
when the manifest's shard hashes are those of the bytes the diff just hashed, on both
sides: then it was measured on exactly this pair. Every value is type-checked first.

Torch-free: measuring is surgeon.quality.evaluate.measure's; this module reads and writes
the record, so `diff --markdown` can show it with the light install.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from surgeon.atomic import output_errors, write_text_atomic
from surgeon.errors import SurgeonError
from surgeon.format.manifest import MANIFEST_NAME, PruneManifest, read_manifest

SUMMARY_KEYS = ("tokens", "ppl_base", "ppl", "ppl_ratio", "kl_mean", "kl_p99", "top1")


def recorded_quality(report) -> tuple[dict, str | None] | None:
    """(summary, text source) from the OTHER checkpoint's manifest, when it holds a valid
    quality record measured against exactly these bytes; None otherwise."""
    root = report.other.path  # the folder whose shards were just hashed
    try:
        manifest = read_manifest(Path(root) / MANIFEST_NAME)
    except SurgeonError:
        return None  # a malformed manifest is verify's business; the card just says nothing
    if not isinstance(manifest, dict) or not _same_bytes(manifest, report):
        return None
    record = manifest.get("quality")
    summary = record.get("eval") if isinstance(record, dict) else None
    if not isinstance(record, dict) or not isinstance(summary, dict) or not _valid_summary(summary):
        return None
    text = record.get("text")
    source = text.get("source") if isinstance(text, dict) else None
    return summary, source if isinstance(source, str) else None


def _same_bytes(manifest: PruneManifest, report) -> bool:
    """The weights on both sides and the files the model is read with (config, tokenizer,
    index) are the ones the manifest records: a config edited afterwards (a softcap, a
    rope scale) changes what the weights compute, so it voids the record too."""
    base_record, written_record = manifest.get("base"), manifest.get("written")
    base = base_record.get("shards") if isinstance(base_record, dict) else None
    written = written_record.get("shards") if isinstance(written_record, dict) else None
    files = written_record.get("files") if isinstance(written_record, dict) else None
    if not isinstance(base, dict) or not isinstance(written, dict) or not isinstance(files, dict) or not report.shards:
        return False
    for shard in report.shards:
        base_sha, other_sha = shard.sha256
        if base_sha is None or other_sha is None or shard.sha256_source != ["bytes", "bytes"]:
            return False  # not hashed from the bytes by this diff: nothing to match a claim against
        if base.get(shard.name) != base_sha or written.get(shard.name) != other_sha:
            return False
    return len(base) == len(written) == len(report.shards) and _same_side_files(files, report.files)


def _same_side_files(recorded: dict, files) -> bool:
    """Every side file the writer recorded is there with that SHA256, and config.json is
    the base's own (a prune or salvage never changes it)."""
    other = {f.name: f.sha256[1] for f in files}
    if not recorded or any(other.get(name) != sha for name, sha in recorded.items()):
        return False
    config = next((f for f in files if f.name == "config.json"), None)
    return config is not None and config.status == "identical"


def _valid_summary(summary) -> bool:
    if not isinstance(summary, dict) or set(summary) != set(SUMMARY_KEYS):
        return False
    tokens = summary["tokens"]
    if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 1:
        return False
    return all(
        value is None or (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value))
        for key, value in summary.items()
        if key != "tokens"
    )


def attach(folder: Path, record: dict) -> dict:
    """Put `record` under "quality" in FOLDER's manifest (rewritten atomically); the manifest."""
    path = Path(folder) / MANIFEST_NAME
    manifest = dict(read_manifest(path) or {})
    manifest["quality"] = record
    with output_errors(Path(folder)):
        write_text_atomic(path, json.dumps(manifest, indent=2) + "\n")
    return manifest
