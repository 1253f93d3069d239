"""Issue 9, sections 2, 3 and 7: no unchecked hash is reported as checked, verify checks
everything it vouches for, and the manifest tells the whole truth.

Each test builds its checkpoints here (copies or variants of the committed tiny fixtures),
attacks them the way the review did, and checks what surgeon now says.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from surgeon.cli.main import main
from surgeon.demo import DEMO_MODEL
from surgeon.diff.engine import DiffOptions, diff_checkpoints
from surgeon.format import hashing
from surgeon.format.checkpoint import open_checkpoint
from surgeon.format.hashcache import FileIdentity, HashCache, hf_blob_sha256
from surgeon.format.hashing import hash_shards
from surgeon.recover.salvage import salvage
from surgeon.recover.verify import verify
from tests.helpers import BASE, PRUNED, count_reads, make_variant, merged_file, read_tensor, sha, tiny_prune_options

TRAINED = DEMO_MODEL
SHARD1, SHARD2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
MANIFEST = "prune_manifest.json"


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def flip_in_place(path: Path, offset: int = -3, keep_times: bool = True) -> None:
    """Change one byte without changing the size or the inode; put atime/mtime back (touch -r)."""
    before = os.stat(path)
    with open(path, "r+b") as handle:
        handle.seek(offset, os.SEEK_END)
        byte = handle.read(1)
        handle.seek(offset, os.SEEK_END)
        handle.write(bytes([byte[0] ^ 0x01]))
    if keep_times:
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_size, after.st_ino) == (before.st_size, before.st_ino)
    if keep_times:
        assert after.st_mtime_ns == before.st_mtime_ns  # only the ctime tells


@pytest.fixture(scope="module")
def candidate(tmp_path_factory):
    """TRAINED with layers 0-3 changed (slightly scaled norms): a healthy partial prune."""
    norm = "model.layers.{}.post_feedforward_layernorm.weight"
    replace = {norm.format(i): read_tensor(TRAINED, norm.format(i)) * 1.02 for i in range(4)}
    return make_variant(tmp_path_factory.mktemp("cand") / "candidate", src=TRAINED, replace=replace)


@pytest.fixture
def salvaged(candidate, tmp_path):
    salvage(candidate, TRAINED, [0, 1], tmp_path / "out")
    return tmp_path / "out"


def lines_of(result) -> list[str]:
    return [line for line in result.output.splitlines() if line.strip()]


# ---------- 2. cache key, damaged cache entries ----------


def test_touch_r_attack_is_seen_by_diff(tmp_path):
    a, b = shutil.copytree(BASE, tmp_path / "a"), shutil.copytree(BASE, tmp_path / "b")
    cache = tmp_path / "cache"
    assert invoke("diff", a, b, "--quiet", "--cache-dir", cache).exit_code == 0  # warms the cache
    ctime = os.stat(b / SHARD2).st_ctime_ns
    flip_in_place(b / SHARD2)  # changed in place, mtime put back
    assert os.stat(b / SHARD2).st_ctime_ns != ctime
    result = invoke("diff", a, b, "--json", "--cache-dir", cache)
    assert result.exit_code == 1, result.output
    data = json.loads(result.stdout)
    shard = next(s for s in data["shards"] if s["name"] == SHARD2)
    assert shard["status"] == "changed"
    assert shard["sha256"][1] == sha(b / SHARD2)


def test_file_identity_has_ctime_and_device(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"x")
    ident = FileIdentity.of(path)
    st = os.stat(path)
    assert (ident.ctime_ns, ident.device) == (st.st_ctime_ns, st.st_dev)
    time.sleep(0.02)  # past the filesystem's timestamp tick
    os.chmod(path, 0o600)  # metadata only: the ctime moves, so does the key
    st = os.stat(path)
    assert st.st_ctime_ns != ident.ctime_ns and st.st_mtime_ns == ident.mtime_ns
    fields = (os.path.realpath(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)
    assert FileIdentity.of(path).key == hashlib.sha256("\0".join(map(str, fields)).encode()).hexdigest()


@pytest.mark.parametrize(
    "file_sha",
    ["0" * 63, "G" * 64, "A" * 64, "a" * 64 + "\n", 12345, None, ["a" * 64], {"sha": "a" * 64}, "../../x"],
)
def test_damaged_file_entry_is_a_miss(tmp_path, monkeypatch, file_sha):
    shard = open_checkpoint(BASE).shards[SHARD2]
    cache = HashCache(tmp_path / "cache")
    truth = hash_shards([shard], cache)[os.path.realpath(shard.path)]
    entry = cache._file_entry(FileIdentity.of(shard.path))
    record = json.loads(entry.read_text())
    entry.write_text(json.dumps(record | {"sha256": file_sha}))
    calls = count_reads(monkeypatch)
    again = hash_shards([shard], cache)[os.path.realpath(shard.path)]
    assert calls == [SHARD2] and again.file_sha256 == truth.file_sha256 and again.source == "bytes"


@pytest.mark.parametrize("damage", ["short", "upper", "number", "list", "not a dict", "null"])
def test_damaged_content_entry_is_a_miss(tmp_path, monkeypatch, damage):
    shard = open_checkpoint(BASE).shards[SHARD2]
    cache = HashCache(tmp_path / "cache")
    truth = hash_shards([shard], cache)[os.path.realpath(shard.path)]
    entry = cache._content_entry(truth.file_sha256)
    record = json.loads(entry.read_text())
    name = next(iter(record["tensors"]))
    bad = {"short": "ab", "upper": truth.tensors[name].upper(), "number": 7, "list": [1]}
    if damage in bad:
        record["tensors"][name] = bad[damage]
    else:
        record["tensors"] = [] if damage == "not a dict" else None
    entry.write_text(json.dumps(record))
    calls = count_reads(monkeypatch)
    again = hash_shards([shard], cache)[os.path.realpath(shard.path)]
    assert calls == [SHARD2] and again.tensors == truth.tensors


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "huge", "deep", "directory"])
def test_cache_entries_must_be_regular_and_bounded(tmp_path, monkeypatch, kind):
    from surgeon.format import hashcache

    shard = open_checkpoint(BASE).shards[SHARD2]
    cache = HashCache(tmp_path / "cache")
    hash_shards([shard], cache)
    entry = cache._file_entry(FileIdentity.of(shard.path))
    entry.unlink()
    if kind == "fifo":
        os.mkfifo(entry)  # reading it would wait for a writer forever
    elif kind == "dev-zero":
        os.symlink("/dev/zero", entry)  # reading it would never end
    elif kind == "huge":
        monkeypatch.setattr(hashcache, "FILE_ENTRY_MAX", 64)
        entry.write_text(json.dumps({"version": hashcache.VERSION, "pad": "x" * 100}))
    elif kind == "deep":
        entry.write_text("[" * 100_000 + "]" * 100_000)
    else:
        entry.mkdir()
    calls = count_reads(monkeypatch)
    hash_shards([shard], cache)
    assert calls == [SHARD2]


# ---------- 2. Hugging Face blob names ----------


def blob_checkpoint(folder: Path, src: Path) -> Path:
    """A folder whose shards are links into a folder named `blobs`, named by a fake SHA256
    (all zeros), the same for every copy: not a Hugging Face cache."""
    (folder / "store" / "blobs").mkdir(parents=True)
    for file in src.iterdir():
        if file.suffix == ".safetensors":
            name = hashlib.sha256(file.name.encode()).hexdigest()  # the same fake name in every copy
            shutil.copyfile(file, folder / "store" / "blobs" / name)
            os.symlink(folder / "store" / "blobs" / name, folder / file.name)
        else:
            shutil.copyfile(file, folder / file.name)
    return folder


def test_a_folder_named_blobs_is_not_a_hub_cache(tmp_path):
    a, b = blob_checkpoint(tmp_path / "a", BASE), blob_checkpoint(tmp_path / "b", PRUNED)
    blob = os.path.realpath(a / SHARD1)
    assert Path(blob).parent.name == "blobs" and hf_blob_sha256(Path(blob)) is None
    result = invoke("diff", a, b, "--json", "--cache-dir", tmp_path / "cache")
    data = json.loads(result.stdout)
    by_name = {s["name"]: s for s in data["shards"]}
    assert by_name[SHARD1]["status"] != "identical"  # different bytes under the same fake name
    assert by_name[SHARD1]["sha256"] == [sha(a / SHARD1), sha(b / SHARD1)]
    assert by_name[SHARD1]["sha256_source"] == ["bytes", "bytes"]


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A real Hugging Face cache layout under a temporary HF_HUB_CACHE."""
    from huggingface_hub import constants

    from tests.format.test_checkpoint import make_hub_cache

    root = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(root))
    return root, make_hub_cache(root, "acme/base", BASE), make_hub_cache(root, "acme/pruned", PRUNED)


def test_blob_names_count_only_in_a_real_hub_cache(hub, tmp_path):
    root, base, _ = hub
    real = Path(os.path.realpath(base / SHARD1))
    assert hf_blob_sha256(real) == real.name == sha(real)
    outside = tmp_path / "elsewhere" / "models--acme--base" / "blobs" / real.name  # the same layout, not the cache
    outside.parent.mkdir(parents=True)
    shutil.copyfile(real, outside)
    assert hf_blob_sha256(outside) is None
    datasets = root / "datasets--acme--x" / "blobs" / real.name  # not a model repo
    datasets.parent.mkdir(parents=True)
    shutil.copyfile(real, datasets)
    assert hf_blob_sha256(datasets) is None


def test_a_tampered_hub_blob_is_caught_by_verify_and_not_shown_as_evidence(hub, tmp_path):
    _, base, pruned = hub
    blob = Path(os.path.realpath(pruned / SHARD1))
    named = blob.name
    flip_in_place(blob)  # edited in place: the name no longer is its SHA256
    # diff trusts the name for speed, and says so in the data and the Markdown
    report = diff_checkpoints(open_checkpoint(base), open_checkpoint(pruned), DiffOptions(cache_dir=None))
    shard = next(s for s in report.shards if s.name == SHARD1)
    assert shard.sha256[1] == named and shard.sha256_source[1] == "hub-blob-name"
    from surgeon.diff.render_markdown import render_markdown

    assert "not evidence" in render_markdown(report)
    # `diff --markdown` hashes the bytes: the evidence is the real SHA256, never the name
    result = invoke("diff", base, pruned, "--markdown", "--cache-dir", tmp_path / "cache")
    assert sha(blob) in result.stdout and named not in result.stdout  # full SHA256s, as sha256sum prints
    assert "not evidence" not in result.stdout
    # verify never takes the name: the blob's bytes are checked against it
    checked = verify(pruned, integrity_only=True)
    assert not checked.ok
    assert any("do not match the SHA256 its Hugging Face cache blob is named by" in d for d in checked.discrepancies)
    assert verify(base, integrity_only=True).ok  # the untouched ones hash to their names


# ---------- 2/3. verify hashes the bytes ----------


def test_verify_reads_the_bytes_not_a_warm_cache(salvaged, tmp_path):
    cache = tmp_path / "surgeon-cache"
    assert verify(salvaged, TRAINED, cache_dir=cache, trust_cache=True).ok  # warms the cache
    assert invoke("diff", TRAINED, salvaged, "--quiet", "--cache-dir", cache).exit_code == 1
    tensors = hash_shards(list(open_checkpoint(salvaged).shards.values()), HashCache(cache))
    truth = tensors[os.path.realpath(salvaged / SHARD2)]
    flip_in_place(salvaged / SHARD2)
    # A poisoned entry for the tampered file's new identity: only a reader of the cache is fooled.
    store = HashCache(cache)
    store.store_file(FileIdentity.of(salvaged / SHARD2), truth.file_sha256)
    store.store_tensors(truth.file_sha256, truth.tensors)
    result = invoke("verify", salvaged, "--base", TRAINED)
    assert result.exit_code == 1 and lines_of(result)[-1].startswith("not verified")
    assert f"shard {SHARD2}: SHA256" in result.output
    assert verify(salvaged, TRAINED, cache_dir=cache, trust_cache=True).ok  # what --trust-cache opts into


def test_trust_cache_is_an_explicit_flag(salvaged):
    result = invoke("verify", salvaged, "--base", TRAINED, "--trust-cache")
    assert result.exit_code == 0 and "cache trusted" in result.output


# ---------- 2. manifests record the bytes written ----------


def poison_cache_for(path: Path, fake: str) -> None:
    """The hash cache says `path` (and its tensors) hash to `fake`: what a stale or
    tampered cache would say."""
    cache = HashCache(Path(os.environ["SURGEON_CACHE_DIR"]))
    shard = open_checkpoint(path.parent).shards[path.name]
    cache.store_file(FileIdentity.of(path), fake)
    cache.store_tensors(fake, hashing.hash_one_file(shard).tensors)


@pytest.mark.parametrize("kernel_copy", [True, False])
def test_manifest_hashes_are_of_the_output_bytes(candidate, tmp_path, monkeypatch, kernel_copy):
    if not kernel_copy:  # another filesystem: the user-space copy
        import errno

        def no_copy(*args):
            raise OSError(errno.EXDEV, "cross-device")

        monkeypatch.setattr(os, "copy_file_range", no_copy)
    poison_cache_for(TRAINED / SHARD2, "f" * 64)  # SHARD2 is copied whole: the cache must not decide its hash
    _, manifest = salvage(candidate, TRAINED, [0, 1], tmp_path / "out")
    out = tmp_path / "out"
    written = manifest["written"]
    assert written["shards"] == {SHARD1: sha(out / SHARD1), SHARD2: sha(out / SHARD2)}
    assert written["copied_shards"] == [SHARD2] and sha(out / SHARD2) == sha(TRAINED / SHARD2)
    assert manifest["salvage"]["base"]["shards"][SHARD2] == sha(TRAINED / SHARD2)
    on_disk = {p.name: sha(p) for p in out.iterdir() if p.suffix != ".safetensors" and p.name != MANIFEST}
    assert written["files"] == on_disk and "config.json" in on_disk and "tokenizer.json" in on_disk
    assert verify(out, TRAINED).ok


# ---------- 3. side files, unknown files, remote code ----------


def edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


def test_side_file_attacks_fail(salvaged):
    assert verify(salvaged, TRAINED).ok
    (salvaged / "tokenizer.json").write_bytes((salvaged / "tokenizer.json").read_bytes() + b" ")
    edit_json(salvaged / "config.json", auto_map={"AutoModelForCausalLM": "modeling_evil.EvilModel"})
    (salvaged / "modeling_evil.py").write_text("import os\n")
    result = invoke("verify", salvaged, "--base", TRAINED)
    assert result.exit_code == 1
    fails = [line for line in lines_of(result) if line.startswith("FAIL")]
    assert any("tokenizer.json" in line and "does not match" in line for line in fails)
    assert any("config.json" in line and "does not match" in line for line in fails)
    assert any("modeling_evil.py" in line and "remote code" in line for line in fails)
    assert any("config.json" in line and "auto_map" in line for line in fails)
    assert lines_of(result)[-1].startswith("not verified")


def test_edited_generation_config_fails(salvaged):
    edit_json(salvaged / "generation_config.json", temperature=9.0)
    problems = verify(salvaged, TRAINED).discrepancies
    assert any(p.startswith("file generation_config.json: SHA256") for p in problems)


def test_unknown_files_are_reported(salvaged):
    (salvaged / "README.md").write_text("# my model\n")
    report = verify(salvaged, TRAINED)
    assert report.ok and any("README.md" in n for n in report.notes)
    (salvaged / "chat_template.jinja").write_text("{{ evil }}")  # a loader would read it
    (salvaged / "extra").mkdir()
    report = verify(salvaged, TRAINED)
    assert not report.ok
    assert any(d.startswith("file chat_template.jinja: not in the manifest") for d in report.discrepancies)
    assert any("extra/" in n for n in report.notes)


def test_a_template_in_a_subfolder_fails(salvaged, tmp_path):
    """Issue 18 re-test: transformers' tokenizer reads additional_chat_templates/*.jinja
    (AutoTokenizer.from_pretrained(OUT).chat_template became '{{x}}'), and verify said
    "verified" with only a note. A loader-readable file in any subfolder fails; a folder
    of documentation is still a note."""
    (salvaged / "docs").mkdir()
    (salvaged / "docs" / "README.md").write_text("# notes\n")
    (salvaged / "docs" / "diagram.png").write_bytes(b"")
    report = verify(salvaged, TRAINED)
    assert report.ok and "docs/: holds no file a loader reads, not checked" in report.notes
    (salvaged / "additional_chat_templates").mkdir()
    (salvaged / "additional_chat_templates" / "default.jinja").write_text("{{x}}\n")
    report = verify(salvaged, TRAINED)
    assert report.discrepancies == [
        "file additional_chat_templates/default.jinja: in a folder the manifest does not know, "
        "and a loader could read it"
    ]
    result = invoke("verify", salvaged, "--base", TRAINED)
    assert result.exit_code == 1 and lines_of(result)[-1] == "not verified: 1 problem"


def test_python_in_a_subfolder_and_auto_map_in_tokenizer_config_fail(salvaged):
    (salvaged / "extra").mkdir()
    (salvaged / "extra" / "hook.py").write_text("")
    edit_json(salvaged / "tokenizer_config.json", auto_map={"AutoTokenizer": ["tok.T", None]})
    problems = verify(salvaged, TRAINED).discrepancies
    assert any("extra/hook.py" in p and "remote code" in p for p in problems)
    assert any("tokenizer_config.json" in p and "auto_map" in p for p in problems)


# ---------- 3. missing manifest, --integrity-only, --base with nothing to compare ----------


def test_no_manifest_is_not_verified(tmp_path):
    plain = shutil.copytree(TRAINED, tmp_path / "plain")
    result = invoke("verify", plain)
    assert result.exit_code == 1
    assert "no manifest" in result.output and lines_of(result)[-1].startswith("not verified")
    result = invoke("verify", plain, "--integrity-only")
    assert result.exit_code == 0, result.output
    assert lines_of(result)[-1].startswith("integrity only")
    assert not any("verified" in line for line in lines_of(result)[1:])  # line 0 names the folder
    data = json.loads(invoke("verify", plain, "--integrity-only", "--json").stdout)
    assert data["verdict"] == "integrity only" and data["shard_sha256"][SHARD1] == sha(plain / SHARD1)
    result = invoke("verify", plain, "--base", TRAINED)
    said = [line for line in lines_of(result) if "a base was given" in line]
    assert result.exit_code == 1 and len(said) == 1 and "no manifest" in said[0]


def test_integrity_only_still_fails_on_remote_code_and_broken_files(tmp_path):
    plain = shutil.copytree(TRAINED, tmp_path / "plain")
    (plain / "modeling_x.py").write_text("")
    assert invoke("verify", plain, "--integrity-only").exit_code == 1
    (plain / "modeling_x.py").unlink()
    with open(plain / SHARD2, "r+b") as handle:
        handle.truncate(os.path.getsize(plain / SHARD2) - 1)
    result = invoke("verify", plain, "--integrity-only")
    assert result.exit_code == 1 and "integrity:" in result.output


# ---------- 3. output: ok only for what held; wrong base in one line ----------


def test_ok_lines_are_only_checks_that_held(salvaged, tmp_path):
    """Issue 18: a recorded base that cannot be opened leaves the claims unchecked: not
    verified (exit 1; it was "verified (the claims against the base were not checked)", exit
    0), unless --integrity-only asks for the files alone."""
    moved = tmp_path / "elsewhere"
    manifest = json.loads((salvaged / MANIFEST).read_text())
    shards = manifest["salvage"]["base"]["shards"]  # recorded as an older surgeon did, at a folder now gone
    manifest["salvage"]["base"] = {"path": str(moved), "source": str(moved), "shards": shards}
    (salvaged / MANIFEST).write_text(json.dumps(manifest))
    result = invoke("verify", salvaged)
    assert result.exit_code == 1
    ok_lines = [line for line in lines_of(result) if line.startswith("ok")]
    failed = [line for line in lines_of(result) if line.startswith("FAIL")]
    assert all("not checked" not in line for line in ok_lines)
    assert failed == [
        f"FAIL the recorded base cannot be opened ({moved}: no such checkpoint directory, file or Hub repo id): the "
        "manifest's claims against the base were not checked; name the base with --base, or check the files alone "
        "with --integrity-only"
    ]
    assert lines_of(result)[-1] == "not verified: 1 problem"
    assert json.loads(invoke("verify", salvaged, "--json").stdout)["verdict"] == "not verified"
    assert invoke("verify", salvaged, "--base", TRAINED).exit_code == 0
    assert invoke("verify", salvaged, "--integrity-only").exit_code == 0


def test_a_model_safetensors_dropped_beside_the_index_fails(salvaged):
    """Issue 18: transformers loads a model.safetensors before the index, so one added beside
    a verified output (here the base's weights) is what would run: verify reads it too, and
    fails (it verified the index's shards, which nothing loads)."""
    merged_file(TRAINED, salvaged / "model.safetensors")
    result = invoke("verify", salvaged, "--base", TRAINED)
    assert result.exit_code == 1, result.output
    assert "FAIL shard model.safetensors: in the index but not in the manifest" in lines_of(result)
    assert "note model.safetensors is read, as transformers loads it before any index" in result.output


def test_a_manifest_with_no_hash_fails(salvaged):
    manifest = json.loads((salvaged / MANIFEST).read_text())
    manifest["written"] |= {"shards": {}, "tensors": {}}
    (salvaged / MANIFEST).write_text(json.dumps(manifest))
    result = invoke("verify", salvaged, "--base", TRAINED)
    assert result.exit_code == 1
    assert "0 shard" not in result.output
    assert "records no shard SHA256" in result.output


def test_a_wrong_base_is_one_line(salvaged):
    result = invoke("verify", salvaged, "--base", BASE)  # another model entirely
    fails = [line for line in lines_of(result) if line.startswith("FAIL")]
    assert result.exit_code == 1
    assert fails == [
        "FAIL the base given does not match the one recorded (0 of 2 shard hashes match): the manifest's claims "
        "were not checked against it"
    ]


def test_a_changed_recorded_base_is_named_as_such():
    """Issue 18 re-test: where verify found the base from the manifest (a Hub repo, no
    --base) the line read "the base recorded does not match the one recorded"."""
    from surgeon.recover.verify import VerifyReport, _base_matches

    report = VerifyReport("out", "repo", False)
    assert not _base_matches(
        {"model.safetensors": "b" * 64}, {"shards": {"model.safetensors": "a" * 64}}, False, report
    )
    assert report.discrepancies == [
        "the base the manifest names no longer matches its recorded hashes (0 of 1 shard hashes match): "
        "the manifest's claims were not checked against it"
    ]


def test_recorded_base_hashes_come_from_a_prune_too(tmp_path):
    from surgeon.prune.engine import prune

    out = prune(TRAINED, tmp_path / "p", tiny_prune_options(layers="0-1")).output
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["base"]["shards"] == {SHARD1: sha(TRAINED / SHARD1), SHARD2: sha(TRAINED / SHARD2)}
    assert set(manifest["written"]["files"]) >= {"config.json", "tokenizer.json", "model.safetensors.index.json"}
    assert verify(out, TRAINED).ok
    assert "0 of 2 shard hashes match" in verify(out, BASE).discrepancies[0]


# ---------- 3. malformed manifests: one line, exit 2 ----------

SHA = "a" * 64
MALFORMED = {
    "a list": [],
    "a string": "surgeon",
    "null": None,
    "schema a number": {"schema": 1},
    "no written": {"schema": "surgeon.prune_manifest/1"},
    "written a list": {"schema": "surgeon.prune_manifest/1", "written": []},
    "shards null": {"written": {"shards": None}},
    "shard hash a number": {"written": {"shards": {SHARD1: 5}}},
    "shard name a path": {"written": {"shards": {"../x.safetensors": SHA}}},
    "tensor entry null": {"written": {"tensors": {"x": None}}},
    "tensor hash missing": {"written": {"tensors": {"x": {"base_sha256": SHA}}}},
    "layers of strings": {"written": {"layers": ["0"]}},
    "copied shards numbers": {"written": {"copied_shards": [1]}},
    "file hash bad": {"written": {"files": {"config.json": "zz"}}},
    "prune layers a string": {"layers": "0-3"},
    "prune layer a string": {"layers": [{"layer": "3", "pruned_heads": [1]}]},
    "pruned heads a dict": {"layers": [{"layer": 3, "pruned_heads": {"1": 1}}]},
    "salvage a list": {"salvage": []},
    "rolled back an object": {"salvage": {"rolled_back_layers": {"a": 1}}},
    "base path a number": {"salvage": {"base": {"path": 5}}},
    "base shards null hash": {"base": {"shards": {SHARD1: None}}},
    "layer a bool": {"written": {"layers": [True]}},
}


def malformed(manifest_file: Path, variant) -> None:
    good = json.loads(manifest_file.read_text())
    if isinstance(variant, dict) and "schema" not in variant and variant:
        value = json.loads(json.dumps(good))
        for key, part in variant.items():
            value[key] = (
                part if not isinstance(part, dict) or not isinstance(value.get(key), dict) else value[key] | part
            )
        variant = value
    manifest_file.write_text(json.dumps(variant))


@pytest.mark.parametrize("what", sorted(MALFORMED))
def test_malformed_manifest_is_one_line(salvaged, what):
    malformed(salvaged / MANIFEST, MALFORMED[what])
    result = invoke("verify", salvaged, "--base", TRAINED)
    assert result.exit_code == 2, (what, result.output)
    assert len(lines_of(result)) == 1 and "Traceback" not in result.output
    assert f"{MANIFEST}: manifest is malformed (" in result.output


@pytest.mark.parametrize("text", ["{", "[" * 100_000, '{"schema": "surgeon.x", "written": ' + "[" * 50_000])
def test_manifest_that_is_not_json_is_one_line(salvaged, text):
    (salvaged / MANIFEST).write_text(text)
    result = invoke("verify", salvaged, "--base", TRAINED)
    assert result.exit_code == 2 and len(lines_of(result)) == 1 and "not valid JSON" in result.output


def test_manifest_that_is_a_fifo_is_one_line(salvaged):
    (salvaged / MANIFEST).unlink()
    os.mkfifo(salvaged / MANIFEST)
    result = invoke("verify", salvaged, "--base", TRAINED)
    assert result.exit_code == 2 and "not a regular file" in result.output


@pytest.mark.parametrize("what", ["a list", "shards null", "prune layer a string"])
def test_salvage_of_a_candidate_with_a_malformed_manifest_is_one_line(salvaged, tmp_path, what):
    malformed(salvaged / MANIFEST, MALFORMED[what])
    result = invoke("salvage", salvaged, "--base", TRAINED, "--keep", "0", "-o", tmp_path / "again")
    assert result.exit_code == 2 and len(lines_of(result)) == 1, result.output
    assert "manifest is malformed" in result.output and not (tmp_path / "again").exists()


# ---------- 3. foreign manifests ----------


def test_an_unknown_foreign_manifest_is_not_verified(tmp_path):
    plain = shutil.copytree(TRAINED, tmp_path / "plain")
    (plain / MANIFEST).write_text(json.dumps({"model": "mine", "layers_pruned": 60}))
    for args in ([], ["--base", TRAINED]):
        result = invoke("verify", plain, *args)
        assert result.exit_code == 1 and lines_of(result)[-1].startswith("not verified"), result.output


def test_a_recipe_manifest_is_checked_against_the_base(tmp_path):
    pytest.importorskip("surgeon.diff.foreign_manifest")
    o_proj = "model.layers.{}.self_attn.o_proj.weight"
    replace = {}
    for i in range(2):
        weights = read_tensor(TRAINED, o_proj.format(i))
        weights[:, 16:24] = 0  # head 2 (head_dim 8) removed in layers 0-1 only
        replace[o_proj.format(i)] = weights
    folder = make_variant(tmp_path / "omk", src=TRAINED, replace=replace)
    claims = {
        "pruned_layers": [[i, "sliding_attention"] for i in range(8)],  # the card's claim: every layer
        "prune_mode": "mask",
        "canary_failed": True,
        "keep_q_per_layer": {str(i): [h for h in range(8) if h != 2] for i in range(8)},
    }
    (folder / MANIFEST).write_text(json.dumps(claims))
    result = invoke("verify", folder, "--base", TRAINED, "--json")
    data = json.loads(result.stdout)
    assert result.exit_code == 1 and data["verdict"] == "not verified"
    assert any("8 pruned layers" in d for d in data["discrepancies"])
    assert any("canary_failed" in n for n in data["notes"])


# ---------- 7. the record: rolled-back layers, the candidate's hashes ----------


def test_rolled_back_layers_are_the_changed_ones_restored(candidate, tmp_path):
    _, manifest = salvage(candidate, TRAINED, [0, 1], tmp_path / "out")
    assert manifest["salvage"]["rolled_back_layers"] == [2, 3]  # 4-7 never differed
    assert manifest["salvage"]["candidate"]["shards"] == {n: sha(candidate / n) for n in (SHARD1, SHARD2)}
    _, manifest = salvage(candidate, TRAINED, [0, 1, 2, 3, 5], tmp_path / "all")
    assert manifest["salvage"]["rolled_back_layers"] == []
    assert verify(tmp_path / "out", TRAINED).ok and verify(tmp_path / "all", TRAINED).ok


def test_a_foreign_candidate_manifest_is_kept_as_a_record(candidate, tmp_path):
    foreign = shutil.copytree(candidate, tmp_path / "foreign")
    (foreign / MANIFEST).write_text(json.dumps({"pruned_layers": [[0, "x"]], "prune_mode": "mask"}))
    _, manifest = salvage(foreign, TRAINED, [0, 1], tmp_path / "out")
    assert manifest["candidate_manifest"] == {"pruned_layers": [[0, "x"]], "prune_mode": "mask"}
    assert "pruned_layers" not in manifest and manifest["schema"].startswith("surgeon.")
    assert verify(tmp_path / "out", TRAINED).ok


def test_markdown_evidence_is_hashed_from_the_bytes_not_a_poisoned_cache(tmp_path):
    """A stat-cache entry naming the base's hash for a changed shard must not reach the card."""
    a, b = shutil.copytree(BASE, tmp_path / "a"), shutil.copytree(BASE, tmp_path / "b")
    flip_in_place(b / SHARD2, keep_times=False)
    assert invoke("diff", a, b, "-q").exit_code == 1  # caches b's real identity
    poison_cache_for(b / SHARD2, sha(a / SHARD2))
    assert invoke("diff", a, b, "-q").exit_code == 0  # the plain diff trusts the cache: for speed only
    card = invoke("diff", a, b, "--no-progress", "--markdown")
    assert (
        card.exit_code == 1
        and sha(b / SHARD2) in card.output
        and "byte-identical" not in card.output.split(f"`{SHARD2}`")[1].splitlines()[0]
    )


@pytest.mark.parametrize(
    "edit",
    [
        {"kept_layers": [2, 3], "rolled_back_layers": [0, 1]},
        {"kept_layers": []},
        {"rolled_back_layers": [0, 1, 2, 3], "kept_layers": [0, 1]},
        {"kept_layers": None},
    ],
    ids=["swapped", "nothing-kept", "kept-and-rolled-back", "no-kept-record"],
)
def test_the_salvage_record_must_agree_with_the_weights(salvaged, edit):
    manifest = json.loads((salvaged / MANIFEST).read_text())
    for key, value in edit.items():
        if value is None:
            del manifest["salvage"][key]
        else:
            manifest["salvage"][key] = value
    (salvaged / MANIFEST).write_text(json.dumps(manifest))
    result = invoke("verify", salvaged, "--base", TRAINED)
    assert result.exit_code == 1 and lines_of(result)[-1].startswith("not verified"), result.output
    assert any("salvage record" in line for line in lines_of(result) if line.startswith("FAIL"))


def test_a_manifest_without_base_hashes_is_not_verified(salvaged):
    manifest = json.loads((salvaged / MANIFEST).read_text())
    manifest["salvage"]["base"]["shards"] = {}
    (salvaged / MANIFEST).write_text(json.dumps(manifest))
    result = invoke("verify", salvaged, "--base", TRAINED)
    assert result.exit_code == 1 and any("records no base shard hashes" in line for line in lines_of(result))


def test_auto_map_in_a_subfolders_config_fails(salvaged):
    """transformers loads `sub/config.json` with subfolder="sub": its auto_map is remote code too."""
    (salvaged / "sub").mkdir()
    (salvaged / "sub" / "config.json").write_text('{"nested": {"auto_map": {"AutoModel": "evil.M"}}}')
    result = invoke("verify", salvaged, "--base", TRAINED)
    assert result.exit_code == 1
    assert any("sub/config.json" in line and "auto_map" in line for line in lines_of(result) if "FAIL" in line)
    assert not any(line.startswith("ok   no remote code") for line in lines_of(result))


# ---------- found by a second hostile review ----------


def test_padding_cannot_hide_auto_map(salvaged):
    """Every key of a config is looked at: 100k list items before `auto_map` do not hide it."""
    (salvaged / "sub").mkdir()
    (salvaged / "sub" / "config.json").write_text(json.dumps({"pad": [0] * 100_001, "auto_map": {"A": "x--m.M"}}))
    result = invoke("verify", salvaged, "--integrity-only")
    assert result.exit_code == 1 and any("auto_map" in line for line in lines_of(result) if "FAIL" in line)


def test_a_linked_subfolder_is_not_called_free_of_remote_code(salvaged, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "config.json").write_text('{"auto_map": {"AutoModel": "evil--m.M"}}')
    (salvaged / "sub").symlink_to(outside)
    result = invoke("verify", salvaged, "--integrity-only")
    assert result.exit_code == 1 and any("sub: a link to a folder" in line for line in lines_of(result))
    assert not any(line.startswith("ok   no remote code") for line in lines_of(result))


def test_a_manifest_with_no_base_record_is_not_verified(salvaged):
    """Deleting the base record must not turn a check against the base into "not checked"."""
    manifest = json.loads((salvaged / MANIFEST).read_text())
    del manifest["salvage"]
    manifest.pop("base", None)
    (salvaged / MANIFEST).write_text(json.dumps(manifest))
    result = invoke("verify", salvaged, "--base", TRAINED)
    assert result.exit_code == 1 and any("records no base shard hashes" in line for line in lines_of(result))


@pytest.mark.parametrize(
    "edit",
    [{"kept_layers": [0, 1, 99]}, {"rolled_back_layers": [2, 1_000_000_000]}, {"kept_layers": [0, 1, 1]}],
    ids=["kept-missing-layer", "rolled-back-missing-layer", "duplicate"],
)
def test_the_salvage_record_names_only_layers_the_model_has(salvaged, edit):
    manifest = json.loads((salvaged / MANIFEST).read_text())
    manifest["salvage"].update(edit)
    (salvaged / MANIFEST).write_text(json.dumps(manifest))
    result = invoke("verify", salvaged, "--base", TRAINED)
    assert result.exit_code == 1 and any("salvage record names" in line for line in lines_of(result))


def test_a_non_layer_change_needs_keep_non_layer(tmp_path):
    norm = "model.norm.weight"
    changed = make_variant(tmp_path / "cand", src=TRAINED, replace={norm: read_tensor(TRAINED, norm) * 1.5})
    _, manifest = salvage(changed, TRAINED, [0], tmp_path / "out", keep_non_layer=True)
    assert manifest["salvage"]["keep_non_layer"] is True
    assert invoke("verify", tmp_path / "out", "--base", TRAINED).exit_code == 0
    manifest["salvage"]["keep_non_layer"] = False
    (tmp_path / "out" / MANIFEST).write_text(json.dumps(manifest))
    result = invoke("verify", tmp_path / "out", "--base", TRAINED)
    assert result.exit_code == 1 and any(f"tensor {norm}: outside any layer" in line for line in lines_of(result))


def test_a_card_built_from_cached_hashes_says_they_are_not_evidence(tmp_path):
    """render_markdown guards every caller, not only the CLI: a hash the stat cache supplied
    is marked as not computed from the bytes in this run."""
    from surgeon.diff.render_markdown import render_markdown

    a, b = shutil.copytree(BASE, tmp_path / "a"), shutil.copytree(PRUNED, tmp_path / "b")
    options = DiffOptions(cache_dir=tmp_path / "cache")
    diff_checkpoints(open_checkpoint(a), open_checkpoint(b), options)  # fills the cache
    cached = render_markdown(diff_checkpoints(open_checkpoint(a), open_checkpoint(b), options))
    assert "from surgeon's hash cache, not hashed from the bytes in this run: not evidence" in cached
    fresh = DiffOptions(cache_dir=tmp_path / "cache", trust_cache=False, trust_blob_names=False)
    assert "not evidence" not in render_markdown(diff_checkpoints(open_checkpoint(a), open_checkpoint(b), fresh))


# ---------- issue 18: a hash cache others can write is not trusted ----------


def poisoned_pair(tmp_path) -> tuple[Path, Path]:
    """a and b differ in SHARD2; the default hash cache holds an entry naming a's hash for b's."""
    a, b = shutil.copytree(BASE, tmp_path / "a"), shutil.copytree(BASE, tmp_path / "b")
    flip_in_place(b / SHARD2, keep_times=False)
    assert invoke("diff", a, b, "-q").exit_code == 1
    poison_cache_for(b / SHARD2, sha(a / SHARD2))
    return a, b


@pytest.mark.parametrize("opened", ["folder", "files", "entry"])
def test_a_poisoned_entry_in_a_cache_others_can_write_is_not_read(tmp_path, opened):
    """Issue 18: the canary cache's rule for the hash cache. Where anyone else could have
    written an entry (a folder or an entry writable by its group or others), none is read:
    the diff hashes the bytes, and says once why the cache was not used."""
    a, b = poisoned_pair(tmp_path)
    cache = Path(os.environ["SURGEON_CACHE_DIR"])
    assert invoke("diff", a, b, "-q").exit_code == 0  # a private cache is trusted, for speed
    target = {
        "folder": cache,
        "files": cache / "files",
        "entry": HashCache(cache)._file_entry(FileIdentity.of(b / SHARD2)),
    }
    target[opened].chmod(0o777 if opened != "entry" else 0o666)
    assert invoke("diff", a, b, "-q").exit_code == 1
    result = invoke("diff", a, b, "--no-stats")
    assert result.exit_code == 1 and "identical" not in result.stdout.splitlines()[0]
    said = [line for line in result.stderr.splitlines() if "is not used" in line]
    assert said == (
        [
            f"surgeon: warning: the cache {cache} is not used: it is writable by its group or others, so an "
            "entry in it could be anyone's (chmod go-w fixes it)"
        ]
        if opened == "folder"
        else []
    )


def test_a_cache_owned_by_another_user_is_not_read(tmp_path, monkeypatch):
    a, b = poisoned_pair(tmp_path)
    monkeypatch.setattr(os, "getuid", lambda: os.geteuid() + 1)  # every file here is now someone else's
    result = invoke("diff", a, b, "--no-stats")
    assert result.exit_code == 1 and "owned by another user" in result.stderr
    report = verify(b, trust_cache=True, integrity_only=True)
    assert report.shard_sha256[SHARD2] == sha(b / SHARD2)  # from the bytes, not the poisoned entry
    assert report.notes[-1] == (
        f"the cache {os.environ['SURGEON_CACHE_DIR']} is not used: it is owned by another user, so an entry in it "
        "could be anyone's; the shards were hashed from their bytes"
    )


def test_the_cache_is_private_whatever_the_umask(tmp_path, monkeypatch):
    """Folders 0700 and entries 0600 even under umask 002 (a group-writable entry of its own
    would never be read back), and a linked cache folder leads to the folder that must be private."""
    cache = tmp_path / "made" / "hashes"
    old = os.umask(0o002)
    try:
        hash_shards(list(open_checkpoint(BASE).shards.values()), HashCache(cache))
    finally:
        os.umask(old)
    modes = {p.relative_to(cache).as_posix(): p.stat().st_mode & 0o777 for p in [cache, *cache.rglob("*")]}
    assert set(modes.values()) == {0o700, 0o600} and modes["."] == modes["files"] == modes["content"] == 0o700
    link = tmp_path / "link"
    link.symlink_to(cache)
    calls = count_reads(monkeypatch)
    hashes = hash_shards(list(open_checkpoint(BASE).shards.values()), HashCache(link))
    assert calls == [] and {h.source for h in hashes.values()} == {"cache"}
