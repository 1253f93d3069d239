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


BUNDLED_NAME = "the bundled held-out text"


def text_label(text: dict | None, tokens: object = None) -> str:
    """What a quality figure was measured on, as every report says it (issue 19: a figure
    without its text reads as a claim about the model): the text (the bundled held-out text
    or a file's name), the first 12 digits of its SHA256, the tokens scored in how many
    windows of what size, and whether each window starts with a BOS. A record from a
    manifest is a file from elsewhere: a field that is missing or of the wrong type is left
    out, never guessed; the result still needs inert() or md escaping where it is shown."""
    text = text if isinstance(text, dict) else {}
    source = text.get("source")
    name = BUNDLED_NAME if source == "bundled:heldout" else source if isinstance(source, str) else "an unnamed text"
    details = []
    digest = text.get("file_sha256")
    if isinstance(digest, str) and digest:
        details.append(f"sha256 {digest[:12]}")
    windows, window = _count(text.get("windows")), _count(text.get("window"))
    scored = _count(tokens)
    if scored is not None:
        per_document = " per-document" if text.get("packing") == "per-document" else ""
        details.append(
            f"{scored:,} tokens scored" + (f" in {windows}{per_document} windows" if windows is not None else "")
        )
        if window is not None:
            details[-1] += f" of up to {window:,}"
    if "bos_token_id" in text:
        details.append("each window starts with BOS" if _count(text["bos_token_id"]) is not None else "no BOS")
    if text.get("held_out") is True:
        details.append("the part a budget search did not see")
    elif text.get("held_out") is False:
        details.append("the text a budget search chose the plan on, so the figures are biased low")
    return f"{name} ({'; '.join(details)})" if details else name


def measured_text(record: dict) -> dict:
    """The text record of the figure a quality record shows (`eval`): a budget search's
    confirmation was scored on the part of the text the search did not see, its own windows
    (`split.confirm_windows`), which text_label then names as such."""
    text = record.get("text")
    text = dict(text) if isinstance(text, dict) else {}
    split = record.get("split")
    if isinstance(split, dict) and "search" in record:
        text["windows"] = _count(split.get("confirm_windows"))
        text["held_out"] = True
    elif isinstance(record.get("budget"), dict):  # the TUI's, the demo's, or a salvage before the split
        text["held_out"] = False
    return text


def _count(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def recorded_quality(report) -> tuple[dict, dict] | None:
    """(summary, text record) from the OTHER checkpoint's manifest, when it holds a valid
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
    return summary, measured_text(record)


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
