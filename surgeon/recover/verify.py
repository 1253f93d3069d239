"""`surgeon verify`: do the files match the index, the bytes match the manifest, and the
manifest's claims match the actual difference with the base?

What a "verified" means (docs/reliability.md):
- every shard was hashed from its bytes (not the stat cache unless `--trust-cache`, never a
  Hugging Face blob's name) and matches the SHA256 the writer recorded, as does every
  tensor the manifest lists as written;
- every side file the writer copied (config, index, tokenizer, templates) matches its
  recorded SHA256; any other file is reported, and one a loader could read fails, as does
  remote code anywhere in the folder (a `.py` file, an `auto_map`);
- the base, given or recorded, is the one the manifest records (its shard hashes), and the
  layers, tensors and heads that differ from it are the ones the manifest claims.
A manifest that surgeon did not write is checked by surgeon.diff.foreign_manifest, claim by
claim, and never "verified" on its own word. Without a manifest nothing vouches for the
weights: verify fails unless `--integrity-only` asks for the file checks alone.

`checks` holds what was checked and held, `discrepancies` what failed, `notes` what was not
checked and warnings that do not fail. Exit: 0 verified, 1 a check failed or there was
nothing to verify (a manifest whose claims could not be checked, as no base was given and
the recorded one cannot be opened, is not verified: `--integrity-only` checks the files
alone), 2 the input is unusable (a malformed manifest, a base given that cannot be opened):
the CLI's one-line error.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from surgeon.diff.engine import DiffOptions, DiffReport, diff_checkpoints
from surgeon.diff.foreign_manifest import is_omnimergekit_manifest, verify_foreign
from surgeon.errors import SurgeonError
from surgeon.format.checkpoint import INDEX_SUFFIX, Checkpoint, open_checkpoint
from surgeon.format.hashcache import HashCache, hash_cache_dir, hf_blob_sha256, refusal
from surgeon.format.hashing import FileHashes, bytes_to_hash, file_sha256, hash_shards
from surgeon.format.hub import cached_snapshot, is_commit
from surgeon.format.manifest import MANIFEST_NAME, PruneManifest, WrittenRecord, is_surgeon_manifest, read_manifest
from surgeon.jsonfile import read_json_file
from surgeon.model.names import layers_phrase
from surgeon.progress import NoProgress, ProgressSink
from surgeon.recover.verify_reshape import check_reshape, record_layers
from surgeon.recover.verify_reshape_ffn import ffn_layers
from surgeon.text import layer_ranges

REMOTE_CODE_KEYS = ("auto_map", "custom_pipelines")  # transformers imports the code they name
# Files a model card or a Hub repo carries that no loader reads: reported, never a failure.
_DOCUMENTATION = re.compile(r"(?i)(readme|license|licence|notice|copying|citation)([.-].*)?|.*\.(md|png|jpe?g|gif|svg)")
_WALK_LIMIT = 100_000  # folder entries searched for Python files


@dataclass
class VerifyReport:
    checkpoint: str
    base: str | None
    manifest: bool
    checks: list[str] = field(default_factory=list)  # checked, and it held
    discrepancies: list[str] = field(default_factory=list)  # checked, and it failed
    notes: list[str] = field(default_factory=list)  # not checked, or a warning that does not fail
    integrity_only: bool = False  # --integrity-only: the files alone, no manifest
    claims_checked: bool = False  # the manifest's claims were checked against a base
    foreign: bool = False  # the manifest was not written by surgeon (it records no hashes)
    shard_sha256: dict[str, str] = field(default_factory=dict)  # each shard's SHA256, from its bytes

    @property
    def ok(self) -> bool:
        return not self.discrepancies

    @property
    def verdict(self) -> str:
        if not self.ok:
            return "not verified"
        if self.integrity_only:
            return "integrity only"
        # A foreign manifest's claims can be proven from the bytes, but it records no hashes,
        # so nothing says these are the files its producer wrote: never "verified".
        return "claims hold (manifest not written by surgeon)" if self.foreign else "verified"

    def to_json(self) -> dict:
        return {"schema": "surgeon.verify/1", "ok": self.ok, "verdict": self.verdict} | vars(self)


def verify(
    checkpoint: str | Path,
    base: str | Path | None = None,
    *,
    cache_dir: Path | None = None,
    trust_cache: bool = False,
    integrity_only: bool = False,
    progress: ProgressSink | None = None,
) -> VerifyReport:
    """Verify `checkpoint` (see the module's docstring). `trust_cache` takes a shard's
    hashes from the stat-keyed hash cache in `cache_dir` where it has them, instead of
    reading the bytes; `integrity_only` checks the files against the index and hashes
    them, without a manifest. `progress` sees the bytes hashed."""
    progress = progress or NoProgress()
    report = VerifyReport(str(checkpoint), str(base) if base else None, False, integrity_only=integrity_only)
    try:
        ckpt = open_checkpoint(checkpoint)
    except SurgeonError as exc:
        report.discrepancies.append(f"integrity: {exc}")
        return report
    report.checks.append(f"{len(ckpt.shards)} shard files agree with the index ({len(ckpt.tensors)} tensors)")
    if ckpt.note:  # a model.safetensors beside an index: what transformers loads is what is checked
        report.notes.append(ckpt.note)
    folder = not Path(checkpoint).expanduser().is_file()  # a lone .safetensors file has no folder of its own
    if folder:
        _check_remote_code(ckpt.root, report)
    manifest = None if integrity_only else read_manifest(ckpt.root / MANIFEST_NAME)
    with _hash_cache(cache_dir, trust_cache) as cache:
        if manifest is None:
            _without_manifest(ckpt, base, cache, report, progress)
        elif is_surgeon_manifest(manifest):
            report.manifest = True
            _verify_surgeon(ckpt, manifest, base, cache, report, trust_cache, folder, progress)
        else:
            report.manifest = report.foreign = True
            _verify_foreign(ckpt, dict(manifest), base, cache, report, progress)  # not surgeon's: any object
    refused = refusal(cache_dir if cache_dir is not None else hash_cache_dir()) if trust_cache else None
    if refused:
        report.notes.append(f"{refused}; the shards were hashed from their bytes")
    elif trust_cache:
        report.notes.append("cache trusted: shard hashes came from the hash cache where it had them, not the bytes")
    return report


# ---------- reading the manifest: an untrusted file ----------


# ---------- hashing: the bytes, read once ----------


@contextlib.contextmanager
def _hash_cache(cache_dir: Path | None, trust_cache: bool) -> Iterator[HashCache]:
    """Where this run's hashes live. Without --trust-cache a folder of the run's own, so the
    diff against the base reads the hashes verify just computed from the bytes instead of
    the files again, and no entry from an earlier run is taken."""
    if trust_cache:
        yield HashCache(cache_dir if cache_dir is not None else hash_cache_dir())
        return
    with tempfile.TemporaryDirectory(prefix="surgeon-verify-") as run_cache:
        yield HashCache(Path(run_cache))


def _hash(ckpts: list[Checkpoint], cache: HashCache, report: VerifyReport, progress) -> dict[str, FileHashes]:
    """Every shard's hashes; a Hugging Face blob's name is never taken for its SHA256 here,
    but it is compared with the bytes' (a blob edited in place keeps its name)."""
    shards = [shard for ckpt in ckpts for shard in ckpt.shards.values()]
    progress.start("hashing", bytes_to_hash(shards, cache, trust_blob_names=False))
    try:
        hashes = hash_shards(shards, cache, trust_blob_names=False, progress=progress.advance)
    finally:
        progress.stop()
    checked = 0
    for ckpt in ckpts:
        for name, shard in ckpt.shards.items():
            named = hf_blob_sha256(shard.path)
            if named is None:
                continue
            checked += 1
            if hashes[os.path.realpath(shard.path)].file_sha256 != named:
                report.discrepancies.append(
                    f"shard {name} of {ckpt.source}: its bytes do not match the SHA256 its Hugging Face cache "
                    "blob is named by (changed after it was downloaded)"
                )
    if checked:
        report.checks.append(f"{checked} Hugging Face cache blobs hashed: their names are checked against their bytes")
    return hashes


def _shard_sha(ckpt: Checkpoint, hashes: dict[str, FileHashes]) -> dict[str, str]:
    return {name: hashes[os.path.realpath(shard.path)].file_sha256 for name, shard in ckpt.shards.items()}


# ---------- no manifest ----------


def _without_manifest(ckpt: Checkpoint, base, cache: HashCache, report: VerifyReport, progress) -> None:
    if base:
        report.notes.append("a base was given, but there is no manifest: no claims to check against it")
    if not report.integrity_only:
        report.discrepancies.append(
            f"no manifest ({MANIFEST_NAME}): nothing records what these weights should be; "
            "an integrity-only check looks at the files alone"
        )
        return
    if os.path.lexists(ckpt.root / MANIFEST_NAME):
        report.notes.append(f"{MANIFEST_NAME} was not read (integrity only)")
    report.shard_sha256 = _shard_sha(ckpt, _hash([ckpt], cache, report, progress))
    report.checks.append(f"{len(ckpt.shards)} shards read to the end and hashed (SHA256s in the JSON report)")
    report.notes.append("integrity only: no manifest was checked, so nothing vouches for what the weights are")


# ---------- a manifest surgeon wrote ----------


def _verify_surgeon(
    ckpt, manifest: PruneManifest, base, cache: HashCache, report: VerifyReport, trusted, folder, progress
) -> None:
    given = base is not None
    record = _base_record(manifest)
    if not record.get("shards"):  # surgeon always records them: an edited manifest, tied to no base
        report.discrepancies.append(
            "the manifest records no base shard hashes: the base cannot be confirmed as the one it was written against"
        )
    base_ckpt, base_spec = _open_base(base, record, report.discrepancies)
    hashes = _hash([ckpt] + ([base_ckpt] if base_ckpt else []), cache, report, progress)
    report.shard_sha256 = _shard_sha(ckpt, hashes)
    _check_bytes(ckpt, report.shard_sha256, hashes, manifest["written"], report, trusted)
    if folder:
        _check_files(ckpt, manifest["written"], report)
    if base_ckpt is None:
        return
    report.base = base_spec
    if base_ckpt.note:
        report.notes.append(f"base: {base_ckpt.note}")
    if not _base_matches(_shard_sha(base_ckpt, hashes), record, given, report):
        return
    # The cache holds this run's hashes; side files are checked against the manifest, not hashed again here.
    options = DiffOptions(cache_dir=cache.root, trust_blob_names=False, files=False)
    _check_claims(manifest, diff_checkpoints(base_ckpt, ckpt, options), report)
    reshape = manifest.get("reshape")
    if isinstance(reshape, dict):  # the heads sliced out: the kept rows are the base's (verify_reshape)
        checks, problems = check_reshape(reshape, base_ckpt, ckpt)
        report.checks += checks
        report.discrepancies += problems
    report.claims_checked = True


def _base_record(manifest: Mapping[str, Any]) -> dict:
    """The base the claims are about: salvage's (it wrote the file) over prune's."""
    return (manifest.get("salvage") or {}).get("base") or manifest.get("base") or {}


_NOT_CHECKED = (
    "the manifest's claims against the base were not checked; name the base with --base, or check the files "
    "alone with --integrity-only"
)


def _open_base(base, record: dict, unchecked: list[str]) -> tuple[Checkpoint | None, str | None]:
    """The base given (an error if it cannot be opened), else the recorded one where this
    machine has it: a recorded Hub id is looked up in the local cache, never downloaded.
    Without one, why goes to `unchecked`: a surgeon manifest's discrepancies (its claims
    unchecked, it is not verified), or a foreign one's notes (which fail on their own)."""
    if base is not None:
        return open_checkpoint(base), str(base)
    if record.get("kind") is not None:
        return _open_recorded(record, unchecked)
    # an older manifest: the base as the user named it, and the folder it resolved to
    path, source = record.get("path"), record.get("source")
    spec = path if path and Path(path).is_dir() else source
    if not spec:
        unchecked.append(f"no base given or recorded: {_NOT_CHECKED}")
        return None, None
    try:
        revision = record.get("revision")  # a recorded Hub id resolves from the local cache only
        return open_checkpoint(spec, revision if isinstance(revision, str) else None), spec
    except SurgeonError as exc:
        unchecked.append(f"the recorded base cannot be opened ({exc}): {_NOT_CHECKED}")
        return None, None


def _open_recorded(record: dict, unchecked: list[str]) -> tuple[Checkpoint | None, str | None]:
    """The base a manifest names by Hub id and commit, from the local Hugging Face cache
    (never downloaded, never a local folder that happens to share the id's name); a base
    named by its folder's name alone is not looked for: only --base says where it is."""
    source, revision = record.get("source"), record.get("revision")
    if record.get("kind") != "hub" or not source:
        unchecked.append(
            f"the base is recorded by its name ({source}) and its shard hashes, not by where it is: {_NOT_CHECKED}"
        )
        return None, None
    spec = f"{source}@{revision}" if revision else source
    try:
        if revision is not None and not is_commit(revision):  # surgeon records the commit it read, nothing else
            raise SurgeonError(f"{source}: the recorded revision is not a commit hash")
        folder = cached_snapshot(source, revision)
        if folder is None:
            raise SurgeonError(f"{spec}: not in the local Hugging Face cache")
        return open_checkpoint(folder), spec
    except SurgeonError as exc:
        unchecked.append(f"the recorded base cannot be opened ({exc}): {_NOT_CHECKED}")
        return None, None


def _check_bytes(ckpt, actual: dict[str, str], hashes, written: WrittenRecord, report: VerifyReport, trusted) -> None:
    claimed = written["shards"]
    ok = 0
    for name in sorted(set(claimed) | set(actual)):
        if name not in actual:
            report.discrepancies.append(f"shard {name}: listed in the manifest but missing")
        elif name not in claimed:
            report.discrepancies.append(f"shard {name}: in the index but not in the manifest")
        elif actual[name] != claimed[name]:
            report.discrepancies.append(
                f"shard {name}: SHA256 {actual[name][:12]} does not match the manifest's {claimed[name][:12]}"
            )
        else:
            ok += 1
    tensor_sha = {}
    for shard in ckpt.shards.values():
        tensor_sha.update(hashes[os.path.realpath(shard.path)].tensors)
    listed = written["tensors"]
    bad = sorted(n for n, h in listed.items() if tensor_sha.get(n) != h["sha256"])
    for name in bad:
        report.discrepancies.append(f"tensor {name}: bytes do not match the manifest's SHA256")
    if not claimed:
        report.discrepancies.append("the manifest records no shard SHA256: nothing vouches for the weights")
        return
    how = "the stat cache where it had them" if trusted else "the bytes"
    if ok:
        report.checks.append(
            f"{ok} shard and {len(listed) - len(bad)} tensor SHA256s, hashed from {how}, match the manifest"
        )


def _check_files(ckpt: Checkpoint, written: WrittenRecord, report: VerifyReport) -> None:
    """The side files against their recorded SHA256s; every other entry of the folder is
    reported, and fails unless it is documentation or hidden (no loader reads those)."""
    files = written.get("files")
    if files is None:
        report.discrepancies.append(
            "the manifest records no side-file SHA256s (an older surgeon wrote it): the config, index and "
            "tokenizer files cannot be verified"
        )
        files = {}
    ok = 0
    for name, claimed in sorted(files.items()):
        actual = _file_sha256(ckpt.root / name)
        if actual is None:
            report.discrepancies.append(f"file {name}: listed in the manifest but missing (or not a regular file)")
        elif actual != claimed:
            report.discrepancies.append(
                f"file {name}: SHA256 {actual[:12]} does not match the manifest's {claimed[:12]} "
                "(changed since it was written)"
            )
        else:
            ok += 1
    if ok:
        report.checks.append(f"{ok} side files (config, index, tokenizer) match their SHA256s in the manifest")
    _check_loadable(ckpt, written, report)
    known = set(ckpt.shards) | set(files) | {MANIFEST_NAME}
    for entry in sorted(os.scandir(ckpt.root), key=lambda e: e.name):
        if entry.name in known:
            continue
        if entry.name.startswith(".") or _DOCUMENTATION.fullmatch(entry.name):
            report.notes.append(f"{entry.name}: not in the manifest, not checked (no loader reads it)")
        elif entry.is_dir(follow_symlinks=False):
            readable = _subfolder_files(Path(entry.path), ckpt.root)
            for name in readable:
                report.discrepancies.append(
                    f"file {name}: in a folder the manifest does not know, and a loader could read it"
                )
            if not readable:
                report.notes.append(f"{entry.name}/: holds no file a loader reads, not checked")
        else:
            report.discrepancies.append(
                f"file {entry.name}: not in the manifest (added after it was written?), and a loader could read it"
            )


def _check_loadable(ckpt: Checkpoint, written: WrittenRecord, report: VerifyReport) -> None:
    """The files a loader needs: a config.json, and an index for shards. A base made of
    links out of its folder once gave an output with neither, which transformers cannot
    load, and verify said "verified" (every file present matched its hash)."""
    skipped = written.get("skipped_files")
    skipped = skipped if isinstance(skipped, dict) else {}
    for name, why in sorted(skipped.items()):
        if name == "config.json" or str(name).endswith(INDEX_SUFFIX):
            report.discrepancies.append(
                f"file {name}: the base's was not copied ({why}), and the output cannot be loaded without it"
            )
    if len(ckpt.shards) > 1 and ckpt.index_name is None:
        report.discrepancies.append("no index for its shards: the output cannot be loaded without one")


def _file_sha256(path: Path) -> str | None:
    """A regular file's SHA256 (following a hub snapshot's links), None if there is none."""
    try:
        return file_sha256(path)
    except SurgeonError:
        return None


def _base_matches(actual: dict[str, str], record: dict, given: bool, report: VerifyReport) -> bool:
    """Is this the base the manifest was written against? One line from the recorded base
    shard hashes, instead of a discrepancy for every tensor of a wrong base."""
    recorded = record.get("shards") or {}
    if not recorded:  # already a discrepancy (_verify_surgeon): the claims are still worth checking
        return True
    matching = sum(actual.get(name) == sha for name, sha in recorded.items())
    if matching == len(recorded):
        report.checks.append(f"the base is the one recorded ({matching} shard SHA256s match)")
        return True
    # Without --base the base is the one the manifest names, read now: it changed since.
    which = (
        "the base given does not match the one recorded"
        if given
        else ("the base the manifest names no longer matches its recorded hashes")
    )
    report.discrepancies.append(
        f"{which} ({matching} of {len(recorded)} shard hashes match): the manifest's claims were not checked against it"
    )
    return False


def _claimed_layers(manifest: PruneManifest) -> tuple[list[int], str]:
    if not manifest.get("layers"):  # no prune record (a salvage of an arbitrary candidate)
        return list(manifest["written"]["layers"]), "written"
    pruned = sorted(
        layer["layer"] for layer in manifest["layers"] if layer.get("pruned_heads") or layer.get("ffn_pruned_channels")
    )
    rolled_back = set((manifest.get("salvage") or {}).get("rolled_back_layers", []))
    return [i for i in pruned if i not in rolled_back], "pruned" if not rolled_back else "kept pruned"


def _check_claims(manifest: PruneManifest, diff: DiffReport, report: VerifyReport) -> None:
    actual = diff.layers_changed()
    claimed, word = _claimed_layers(manifest)
    identical = sorted(set(diff.layer_numbers()) - set(actual))
    failures = len(report.discrepancies)
    if claimed != actual:
        report.discrepancies.append(
            f"manifest lists {len(claimed)} {word} layers ({layer_ranges(claimed) or 'none'}); weights differ "
            f"from base in {len(actual)} ({layer_ranges(actual) or 'none'}); "
            f"{layer_ranges(identical) or 'none'} are byte-identical to base"
        )
    written = manifest["written"]
    if written["layers"] != actual:
        report.discrepancies.append(
            f"manifest says layers {layer_ranges(written['layers']) or 'none'} were written; "
            f"the weights differ from base in {layer_ranges(actual) or 'none'}"
        )
    changed = sorted(t.name for t in diff.tensors if t.status != "identical")
    claimed_tensors = sorted(written["tensors"])
    for name in sorted(set(changed) - set(claimed_tensors)):
        report.discrepancies.append(f"tensor {name}: differs from base but the manifest does not list it")
    for name in sorted(set(claimed_tensors) - set(changed)):
        report.discrepancies.append(f"tensor {name}: listed as written but byte-identical to base")
    _check_heads(manifest, diff, report, set(actual))
    _check_channels(manifest, diff, report, set(actual))
    _check_copied(written, diff, report)
    non_layer = sorted(t.name for t in diff.tensors if t.status != "identical" and t.layer is None)
    _check_salvage_record(manifest.get("salvage"), set(actual), diff.layer_numbers(), non_layer, report)
    if len(report.discrepancies) == failures:
        report.checks.append(f"the manifest's claims hold against the base: weights differ in {layers_phrase(actual)}")


def _check_salvage_record(
    salvage: dict | None, actual: set[int], layers: list[int], non_layer_changed: list[str], report: VerifyReport
) -> None:
    """A salvage's record of which layers it kept and which it rolled back must agree with
    the weights: every layer that differs from the base was kept, none rolled back differs."""
    if not salvage:
        return
    kept, rolled_back = salvage.get("kept_layers"), salvage.get("rolled_back_layers")
    if kept is None or rolled_back is None:
        report.discrepancies.append("the salvage record lacks kept_layers or rolled_back_layers")
        return
    both = set(kept) & set(rolled_back)
    not_kept = actual - set(kept)
    restored_but_differ = actual & set(rolled_back)
    missing = sorted((set(kept) | set(rolled_back)) - set(layers))
    if missing or len(set(kept)) != len(kept) or len(set(rolled_back)) != len(rolled_back):
        shown = ", ".join(str(n) for n in missing[:5]) + (" …" if len(missing) > 5 else "")
        report.discrepancies.append(
            f"the salvage record names layers the model does not have ({shown})"
            if missing
            else "the salvage record names a layer twice"
        )
    if salvage.get("keep_non_layer") is False and non_layer_changed:
        report.discrepancies.append(
            f"tensor {non_layer_changed[0]}"
            + (f" (and {len(non_layer_changed) - 1} more)" if len(non_layer_changed) > 1 else "")
            + ": outside any layer, differs from base, but the salvage record says non-layer tensors stayed the base's"
        )
    if both:
        report.discrepancies.append(
            f"the salvage record says layers {layer_ranges(both)} were both kept and rolled back"
        )
    if not_kept:
        report.discrepancies.append(
            f"weights differ from base in {layers_phrase(not_kept)}, which the salvage record does not list as kept"
        )
    if restored_but_differ:
        report.discrepancies.append(
            f"the salvage record says {layers_phrase(restored_but_differ)} were rolled back to base, "
            "but the weights differ from it"
        )


def _check_copied(written: WrittenRecord, diff: DiffReport, report: VerifyReport) -> None:
    """Shards the manifest calls byte-identical to the base must be, by the files' hashes."""
    status = {s.name: s.status for s in diff.shards}
    for name in written["copied_shards"]:
        if status.get(name) != "identical":
            report.discrepancies.append(
                f"shard {name}: the manifest says it is the base's file, but it is {status.get(name, 'missing')}"
            )


def _check_heads(manifest: PruneManifest, diff: DiffReport, report: VerifyReport, actual: set[int]) -> None:
    o_proj = {t.layer: t for t in diff.tensors if t.family.endswith("o_proj.weight") and t.stack == diff.main_stack}
    reshape = manifest.get("reshape")
    # a reshaped layer's removed heads are gone, not zero: verify_reshape holds the reshape
    # block's kept heads to the bytes, and the prune record must name the others
    sliced = {e["layer"]: e["kept_heads"] for e in record_layers(reshape)} if isinstance(reshape, dict) else {}
    for layer in manifest.get("layers") or []:
        index, heads = layer["layer"], layer.get("pruned_heads") or []
        entry = o_proj.get(index)
        if index in sliced and entry is not None and entry.heads is not None:
            gone = [h for h in range(entry.heads.num_heads) if h not in set(sliced[index])]
            if sorted(heads) != gone:
                report.discrepancies.append(
                    f"layer {index}: manifest says heads {heads} were removed; its reshape block sliced {gone}"
                )
        if index not in actual or index in sliced or entry is None or entry.heads is None:
            continue
        zeroed = [h for h, zero in enumerate(entry.heads.other_zero) if zero]
        if zeroed != sorted(heads):
            report.discrepancies.append(
                f"layer {index}: manifest says heads {heads} were removed; o_proj has zero columns for {zeroed}"
            )


def _check_channels(manifest: PruneManifest, diff: DiffReport, report: VerifyReport, actual: set[int]) -> None:
    """The MLP channels a layer says it removed are the ones whose down_proj columns and
    gate/up_proj rows are zero, and no other channel's down_proj column or gate/up_proj row
    is newly zero (a zero gate or up row alone silences the channel: removed, unclaimed)."""
    mlp = {
        (t.layer, t.channels.projection): t.channels
        for t in diff.tensors
        if t.channels is not None and t.stack == diff.main_stack
    }
    reshape = manifest.get("reshape")
    # a reshaped layer's removed channels are gone, not zero: verify_reshape_ffn holds the reshape
    # block's to the bytes, and the prune record must name the same ones
    sliced = (
        {e["layer"]: e["ffn_removed_channels"] for e in ffn_layers(record_layers(reshape))}
        if isinstance(reshape, dict)
        else {}
    )
    for layer in manifest.get("layers") or []:
        index, claimed = layer["layer"], sorted(layer.get("ffn_pruned_channels") or [])
        down = mlp.get((index, "down_proj"))
        if len(set(claimed)) != len(claimed):
            twice = next(c for c, d in itertools.pairwise(claimed) if c == d)
            report.discrepancies.append(f"layer {index}: the manifest names MLP channel {twice} removed twice")
            continue
        if index in sliced and claimed != sliced[index]:
            report.discrepancies.append(
                f"layer {index}: the manifest says {len(claimed)} MLP channels were removed, its reshape block "
                f"sliced {len(sliced[index])}"
                + (
                    f" (first differing: {_first_differing(claimed, sliced[index])})"
                    if claimed or sliced[index]
                    else ""
                )
            )
        if index in sliced and down is not None and (dead := down.heads_with("zeroed")):
            report.discrepancies.append(
                f"layer {index}: {len(dead)} MLP channels the reshape keeps have a newly zero down_proj column "
                f"(first: {dead[0]}): removed, but the manifest does not say so"
            )
        if index not in actual or index in sliced:
            continue
        _check_unclaimed_rows(index, claimed, mlp, report)
        if down is None and not claimed:
            continue
        zeroed = down.heads_with("zeroed") if down is not None else []
        if zeroed != claimed:
            report.discrepancies.append(
                f"layer {index}: manifest says {len(claimed)} MLP channels were removed; "
                f"down_proj has {len(zeroed)} newly zero columns"
                + (f" (first differing: {_first_differing(claimed, zeroed)})" if claimed or zeroed else "")
            )
            continue
        for proj in ("gate_proj", "up_proj"):
            rows = mlp.get((index, proj))
            live = [c for c in claimed if rows is None or c >= len(rows.other_zero) or not rows.other_zero[c]]
            if live:
                report.discrepancies.append(
                    f"layer {index}: {len(live)} removed MLP channels keep a non-zero {proj} row (first: {live[0]})"
                )


def _check_unclaimed_rows(index: int, claimed: list[int], mlp: dict, report: VerifyReport) -> None:
    for proj in ("gate_proj", "up_proj"):
        rows = mlp.get((index, proj))
        unclaimed = sorted(set(rows.heads_with("zeroed")) - set(claimed)) if rows is not None else []
        if unclaimed:
            report.discrepancies.append(
                f"layer {index}: {len(unclaimed)} MLP channels have a newly zero {proj} row (first: {unclaimed[0]}) "
                "but the manifest does not say they were removed"
            )


def _first_differing(a: list[int], b: list[int]) -> int:
    return min(set(a) ^ set(b))


# ---------- remote code: a failure in any folder ----------


def _check_remote_code(root: Path, report: VerifyReport) -> None:
    """A `.py` file anywhere in the folder, or a config naming code to import (`auto_map`),
    is code transformers runs under trust_remote_code: never part of a verified checkpoint."""
    found = len(report.discrepancies)
    seen = 0
    for folder, dirs, files in os.walk(root):  # links are not followed
        dirs.sort()
        seen += len(dirs) + len(files)
        for name in dirs:
            if os.path.islink(os.path.join(folder, name)):  # transformers follows it (subfolder=); we do not
                where = os.path.relpath(os.path.join(folder, name), root)
                report.discrepancies.append(f"{where}: a link to a folder, not searched: remote code not ruled out")
        for name in sorted(files):
            path = Path(folder, name)
            if name.endswith(".py"):
                where = os.path.relpath(path, root)
                report.discrepancies.append(f"file {where}: Python code in the checkpoint folder (remote code)")
            elif name.endswith("config.json"):  # a subfolder's too: transformers loads it with subfolder=
                _check_auto_map(path, root, report)
        if seen > _WALK_LIMIT:
            report.discrepancies.append(
                f"more than {_WALK_LIMIT} folder entries: the search for remote code stopped, so it is not ruled out"
            )
            break
    if len(report.discrepancies) == found:
        report.checks.append("no remote code: no .py file, no auto_map in the configs")


def _check_auto_map(path: Path, root: Path, report: VerifyReport) -> None:
    try:
        config = read_json_file(path)  # a link is read (a Hub snapshot's config is one); a FIFO is refused
    except SurgeonError as exc:
        report.discrepancies.append(f"{exc}: cannot be checked for auto_map")
        return
    where = os.path.relpath(path, root)
    for key in _remote_code_keys(config):
        report.discrepancies.append(f"file {where}: {key} names code for transformers to import (remote code)")


def _remote_code_keys(value: object) -> Iterator[str]:
    """Where auto_map / custom_pipelines keys are, at any depth (sub-configs have their own).

    Every key and item is visited: the file was read with a size bound, so this is bounded
    too, and a budget would let padding before the key hide it. An explicit stack, not
    recursion: nesting as deep as the JSON parser allows must not raise here."""
    stack: list[tuple[object, str]] = [(value, "")]
    while stack:
        item, where = stack.pop()
        if isinstance(item, dict):
            for key, child in item.items():
                path = f"{where}.{key}" if where else str(key)
                if key in REMOTE_CODE_KEYS:
                    yield path
                else:
                    stack.append((child, path))
        elif isinstance(item, list):
            stack.extend((child, where) for child in item)


# ---------- a manifest surgeon did not write ----------


def _verify_foreign(ckpt: Checkpoint, manifest: dict, base, cache: HashCache, report: VerifyReport, progress) -> None:
    """surgeon.diff.foreign_manifest checks the claims of a format it knows against the diff with
    the base (given, else the `source` the manifest names, if this machine has it)."""
    given = base is not None
    source = manifest.get("source")
    record = {"source": source} if isinstance(source, str) and source else {}
    known = is_omnimergekit_manifest(manifest)
    opened = _open_base(base, record, report.notes) if known and (given or record) else (None, None)
    base_ckpt, base_spec = opened
    hashes = _hash([ckpt] + ([base_ckpt] if base_ckpt else []), cache, report, progress)
    report.shard_sha256 = _shard_sha(ckpt, hashes)
    diff = None
    if base_ckpt is not None:
        report.base = base_spec
        if base_ckpt.note:
            report.notes.append(f"base: {base_ckpt.note}")
        options = DiffOptions(cache_dir=cache.root, trust_blob_names=False, files=False)  # files: below
        diff = diff_checkpoints(base_ckpt, ckpt, options)
    failures = len(report.discrepancies)
    verify_foreign(manifest, report, diff, given)
    report.claims_checked = diff is not None
    if len(report.discrepancies) == failures and diff is None:
        report.discrepancies.append(f"{MANIFEST_NAME} was not written by surgeon: its claims were not checked")
    if base_ckpt is not None and is_omnimergekit_manifest(manifest):
        _check_files_against_base(ckpt, base_ckpt, report)
    else:
        report.notes.append("side files not checked: a manifest surgeon did not write records no SHA256s for them")


def _check_files_against_base(ckpt: Checkpoint, base: Checkpoint, report: VerifyReport) -> None:
    """A foreign manifest records no files, and claims nothing about them: every entry of the
    folder beside the weights (its shards and index: the tensor diff covers them) must be the
    base's file of that name, byte for byte, and every such file of the base must be here. As
    with a surgeon manifest's record, a file added (an adapter, a chat template, more weights),
    changed or gone fails where a loader could read it; documentation and hidden files are
    noted, never compared. A lone .safetensors file on either side has no folder to compare."""
    if any(Path(c.source).expanduser().is_file() for c in (ckpt, base)):
        report.notes.append("side files not compared: a lone .safetensors file has no folder of its own")
        return
    ours, theirs = _loadable_files(ckpt, report), _loadable_files(base, None)
    same = 0
    for name in sorted(ours):
        if name not in theirs:
            report.discrepancies.append(f"file {name}: not in the base, and a loader could read it")
            continue
        sha = _file_sha256(ours[name])
        if sha is None or sha != _file_sha256(theirs[name]):
            report.discrepancies.append(
                f"file {name}: differs from the base's, and the manifest claims no change to it"
            )
        else:
            same += 1
    # the base's weights are the tensor diff's: its shards, index and the weight files it ignores
    for name in sorted(set(theirs) - set(ours) - set(ckpt.shards) - set(base.ignored) - {ckpt.index_name}):
        report.discrepancies.append(f"file {name}: in the base but not here, and the manifest claims no change to it")
    if same:
        files = f"{same} side files (config, tokenizer) are" if same > 1 else "1 side file (config, tokenizer) is"
        report.checks.append(f"{files} the base's, byte for byte")


def _loadable_files(ckpt: Checkpoint, report: VerifyReport | None) -> dict[str, Path]:
    """The folder's entries a loader could read besides its shards and index, by name; the
    others (documentation, hidden files, folders) noted on `report` when it is given."""
    read = set(ckpt.shards) | {ckpt.index_name, MANIFEST_NAME}
    found: dict[str, Path] = {}
    for entry in sorted(os.scandir(ckpt.root), key=lambda e: e.name):
        if entry.name in read:
            continue
        if entry.name.startswith(".") or _DOCUMENTATION.fullmatch(entry.name):
            if report is not None:
                report.notes.append(f"{entry.name}: not compared with the base (no loader reads it)")
        elif entry.is_dir(follow_symlinks=False):
            readable = _subfolder_files(Path(entry.path), ckpt.root)
            found |= readable
            if not readable and report is not None:
                report.notes.append(f"{entry.name}/: holds no file a loader reads, not compared with the base")
        else:
            found[entry.name] = Path(entry.path)
    return found


def _subfolder_files(folder: Path, root: Path) -> dict[str, Path]:
    """The files under a subfolder that a loader could read, by their path from `root`.
    transformers' tokenizer reads additional_chat_templates/*.jinja, and `subfolder=` loads
    a config, weights or tokenizer from any folder, so every file but documentation and
    hidden ones counts. Links to folders are not followed (the remote-code check reports
    them); the walk stops at _WALK_LIMIT entries, as that check's does."""
    found: dict[str, Path] = {}
    seen = 0
    for here, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        seen += len(dirs) + len(files)
        for name in sorted(files):
            if not (name.startswith(".") or _DOCUMENTATION.fullmatch(name)):
                path = Path(here, name)
                found[path.relative_to(root).as_posix()] = path
        if seen > _WALK_LIMIT:
            break
    return found
