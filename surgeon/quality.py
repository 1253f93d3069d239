"""A checkpoint's quality against its base, as its manifest records it: measured when prune
or salvage writes it (`--eval`, or a salvage quality budget), and read back by
`diff --markdown` for the model card's "Quality against base" section.

The record is a claim in a file that came with the checkpoint, so the card shows it only
when the manifest's shard hashes are those of the bytes the diff just hashed, on both
sides: then it was measured on exactly this pair. Every value is type-checked first.
"""

from __future__ import annotations

import math
from pathlib import Path

SUMMARY_KEYS = ("tokens", "ppl_base", "ppl", "ppl_ratio", "kl_mean", "kl_p99", "top1")


def measure(model: str | Path, base: str | Path, options, progress=None, cancel=None) -> dict:
    """The manifest record of MODEL against BASE: the eval text and the summary numbers."""
    from surgeon.evaluate import EvalSession  # deferred: torch, only when a measure is asked for

    session = EvalSession(base, model, options, progress, cancel)
    return {"text": session.text, "eval": session.evaluate_model().summary()}


def recorded_quality(report) -> tuple[dict, str] | None:
    """(summary, text source) from the OTHER checkpoint's manifest, when it holds a valid
    quality record measured against exactly these bytes; None otherwise."""
    from surgeon.errors import SurgeonError
    from surgeon.verify import read_manifest
    from surgeon.writer import MANIFEST_NAME

    root = report.other.path  # the folder whose shards were just hashed
    try:
        manifest = read_manifest(Path(root) / MANIFEST_NAME)
    except SurgeonError:
        return None  # a malformed manifest is verify's business; the card just says nothing
    if not isinstance(manifest, dict) or not _same_bytes(manifest, report):
        return None
    record = manifest.get("quality")
    summary = record.get("eval") if isinstance(record, dict) else None
    if not _valid_summary(summary):
        return None
    text = record.get("text")
    source = text.get("source") if isinstance(text, dict) else None
    return summary, source if isinstance(source, str) else None


def _same_bytes(manifest: dict, report) -> bool:
    base = (manifest.get("base") or {}).get("shards") if isinstance(manifest.get("base"), dict) else None
    written = (manifest.get("written") or {}).get("shards") if isinstance(manifest.get("written"), dict) else None
    if not isinstance(base, dict) or not isinstance(written, dict) or not report.shards:
        return False
    for shard in report.shards:
        base_sha, other_sha = shard.sha256
        if base_sha is None or other_sha is None or "hub-blob-name" in shard.sha256_source:
            return False  # not hashed from the bytes: nothing to match a claim against
        if base.get(shard.name) != base_sha or written.get(shard.name) != other_sha:
            return False
    return len(base) == len(written) == len(report.shards)


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
    import json

    from surgeon.atomic import output_errors, write_text_atomic
    from surgeon.verify import read_manifest
    from surgeon.writer import MANIFEST_NAME

    path = Path(folder) / MANIFEST_NAME
    manifest = read_manifest(path) or {}
    manifest["quality"] = record
    with output_errors(Path(folder)):
        write_text_atomic(path, json.dumps(manifest, indent=2) + "\n")
    return manifest
