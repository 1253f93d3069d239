"""Hub ids: the local cache by default, `--download` only when asked (issue 12, section 5).

This machine has no Hub access, so the network side is tested against huggingface_hub's own
behaviour: HF_HUB_OFFLINE=1, an endpoint that refuses connections, and, for what the Hub
answers, huggingface_hub's own dataclasses built from real files (hub_answers), served as
huggingface_hub serves them: its pattern rule, its cache layout, blobs reused unread
(hub_downloads), and its get_safetensors_metadata's habits (hf_like_headers)."""

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from huggingface_hub import constants

from surgeon.cli.main import main
from surgeon.errors import SurgeonError
from surgeon.format.checkpoint import open_checkpoint
from surgeon.format.hub import RemoteCheckpoint, download_remote, fetch_headers, fetch_remote
from surgeon.format.hub_pair import HubMatch, compare_remote, open_pair
from tests.format.test_checkpoint import make_hub_cache
from tests.helpers import BASE, PRUNED, ROOT, count_reads, sha

COMMIT = "0123456789abcdef0123456789abcdef01234567"  # make_hub_cache's
NOT_CACHED = "acme/absent: no such folder, and not in the local Hugging Face cache"
REFUSING = "http://127.0.0.1:9"  # the discard port: nothing listens, the connection is refused at once


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """A real cache layout holding `acme/tiny` (the base fixture), used by this process
    (huggingface_hub read HF_HUB_CACHE at import) and by the CLI runs (through the env)."""
    cache = tmp_path / "hub"
    make_hub_cache(cache)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def run_cli(*args, **env):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **env}
    return subprocess.run(
        [sys.executable, "-m", "surgeon.cli.main", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )


def assert_one_line(proc, message):
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


# ---------- the local cache, no network ----------


def test_cached_hub_id_resolves_by_branch_and_commit(hub_cache):
    for revision in (None, "main", COMMIT):
        ckpt = open_checkpoint("acme/tiny", revision)
        assert ckpt.root.name == COMMIT and len(ckpt.tensors) == 112


def test_not_cached_hub_id_is_one_error_naming_the_download_option(hub_cache):
    with pytest.raises(SurgeonError) as caught:
        open_checkpoint("acme/absent")
    assert str(caught.value) == NOT_CACHED and caught.value.option == "download"
    with pytest.raises(SurgeonError, match="not in the local Hugging Face cache"):
        open_checkpoint("acme/tiny", "no-such-branch")


def test_mistyped_local_path_is_not_a_hub_fetch(hub_cache, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where `gemma4-tiny/` does not exist: it looks like an org/name
    with pytest.raises(SurgeonError) as caught:
        open_checkpoint("gemma4-tiny/pruned")
    assert str(caught.value) == "gemma4-tiny/pruned: no such folder, and not in the local Hugging Face cache"
    (tmp_path / "fixtures").mkdir()  # its first part is a local folder: a path, so no hint to download it
    with pytest.raises(SurgeonError) as caught:
        open_checkpoint("fixtures/prunedd")
    assert "no such folder" in str(caught.value) and caught.value.option is None


def test_cli_reads_hub_ids_from_the_cache(hub_cache):
    proc = run_cli("diff", str(BASE), "acme/tiny", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["summary"]["identical"] is True
    proc = run_cli("inspect", "acme/tiny", "--revision", "main", "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["revision"] == "main"


@pytest.mark.parametrize("command", [["inspect"], ["diff", str(BASE)], ["verify"]])
def test_cli_hub_id_not_cached_says_pass_download(hub_cache, command):
    proc = run_cli(*command, "acme/absent")
    if command == ["verify"]:  # verify reports what it cannot open as a failed check (exit 1)
        assert proc.returncode == 1 and NOT_CACHED in proc.stdout
        return
    assert_one_line(proc, NOT_CACHED + "; pass --download")


# ---------- --download, against huggingface_hub's offline and error behaviour ----------


@pytest.mark.parametrize("command", [["inspect"], ["diff", str(BASE)], ["verify"]])
def test_cli_hub_download_offline_is_one_line(hub_cache, command):
    assert_one_line(
        run_cli(*command, "acme/absent", "--download"), "acme/absent: cannot reach the Hub, HF_HUB_OFFLINE is set"
    )


def test_cli_hub_download_unreachable_is_one_line(hub_cache):
    proc = run_cli("inspect", "acme/absent", "--download", HF_HUB_OFFLINE="0", HF_ENDPOINT=REFUSING)
    assert_one_line(proc, "acme/absent: cannot reach the Hub (")


def test_cached_hub_id_needs_no_network_even_with_download(hub_cache):
    proc = run_cli("inspect", "acme/tiny", "--download", "--json", HF_HUB_OFFLINE="0", HF_ENDPOINT=REFUSING)
    assert proc.returncode == 0, proc.stderr


def test_download_returns_the_snapshot_of_the_fetched_commit(hub_cache):
    """Offline, snapshot_download falls back to the cached snapshot of the revision: the
    commit check runs against huggingface_hub's real answer."""
    remote = RemoteCheckpoint("acme/tiny", None, COMMIT, {}, {}, {})
    assert download_remote(remote).name == COMMIT
    with pytest.raises(SurgeonError, match="the Hub moved from commit fedcba987654 to 0123456789ab"):
        download_remote(RemoteCheckpoint("acme/tiny", None, "fedcba9876543210" * 2 + "fedcba98", {}, {}, {}))
    with pytest.raises(SurgeonError, match=r"^acme/absent: cannot reach the Hub, HF_HUB_OFFLINE is set$"):
        download_remote(RemoteCheckpoint("acme/absent", None, COMMIT, {}, {}, {}))


# ---------- fetch_remote's contract, with huggingface_hub's own dataclasses ----------


def hub_answers(folder, monkeypatch, commit=COMMIT, in_lfs=(".safetensors",), siblings_of=None):
    """Make HfApi answer for `folder` as the Hub does, with huggingface_hub's own dataclasses
    built from its files and headers: `model_info` (the commit), `list_repo_tree` (every file,
    those whose names end with one of `in_lfs` in LFS with their SHA256) and
    `parse_safetensors_file_metadata` (a file's header). `model_info`'s `siblings` list the
    files of `siblings_of` (default `folder`): they may come back short on the real Hub, and
    fetch_remote must not rest on them. `get_safetensors_metadata` is hf_like_headers, so a
    return to it shows. Returns the calls made, to check what was asked for."""
    import huggingface_hub
    from huggingface_hub.hf_api import ModelInfo, RepoFile

    calls = []
    hf_like_headers(folder, monkeypatch, commit, calls)

    def listing(root):
        return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())

    def lfs(root, name):
        size = (root / name).stat().st_size
        return {"size": size, "oid": sha(root / name), "pointerSize": 134} if name.endswith(in_lfs) else None

    def model_info(self, repo_id, *, revision=None, files_metadata=False, **kw):
        calls.append(("model_info", repo_id, revision))
        root = siblings_of or folder
        siblings = [{"rfilename": name} for name in listing(root)]
        for sibling in siblings if files_metadata else []:
            name = sibling["rfilename"]
            sibling["size"] = (root / name).stat().st_size
            if lfs(root, name):
                sibling["lfs"] = {**lfs(root, name), "sha256": sha(root / name)}
        return ModelInfo(id=repo_id, sha=commit, siblings=siblings)

    def list_repo_tree(self, repo_id, path_in_repo=None, *, recursive=False, revision=None, **kw):
        calls.append(("tree", repo_id, revision))
        assert recursive and revision == commit  # snapshot_download's listing: every file of that commit
        for name in listing(folder):
            yield RepoFile(path=name, size=(folder / name).stat().st_size, oid=f"git-{name}", lfs=lfs(folder, name))

    def parse_safetensors_file_metadata(self, repo_id, filename, *, revision=None, **kw):
        calls.append(("header", repo_id, filename, revision))
        return parsed_header(folder / filename)

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", model_info)
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_tree", list_repo_tree)
    monkeypatch.setattr(huggingface_hub.HfApi, "parse_safetensors_file_metadata", parse_safetensors_file_metadata)
    return calls


def parsed_header(path):
    """A safetensors file's header as huggingface_hub parses it from a range read."""
    from huggingface_hub.utils import SafetensorsFileMetadata, TensorInfo

    data = path.read_bytes()
    header = json.loads(data[8 : 8 + struct.unpack("<Q", data[:8])[0]])
    meta = header.pop("__metadata__", {})
    tensors = {k: TensorInfo(v["dtype"], v["shape"], tuple(v["data_offsets"])) for k, v in header.items()}
    return SafetensorsFileMetadata(metadata=meta, tensors=tensors)


def hf_like_headers(folder, monkeypatch, commit, calls):
    """get_safetensors_metadata as huggingface_hub 2.4 implements it: model.safetensors FIRST
    (single file), else model.safetensors.index.json, which it hf_hub_downloads into the cache
    (a snapshots/<commit>/ folder holding the index alone, and no ref), else
    NotASafetensorsRepoError. surgeon must not rest on it: it picks other shards than
    open_checkpoint, and what it leaves in the cache would pass for a download."""
    import huggingface_hub
    from huggingface_hub.errors import NotASafetensorsRepoError
    from huggingface_hub.utils import SafetensorsRepoMetadata

    def headers(repo_id, *, revision=None, **kw):
        calls.append(("get_safetensors_metadata", repo_id, revision))
        if (folder / "model.safetensors").exists():
            meta = parsed_header(folder / "model.safetensors")
            weight_map = dict.fromkeys(meta.tensors, "model.safetensors")
            return SafetensorsRepoMetadata(None, False, weight_map, {"model.safetensors": meta})
        if not (folder / "model.safetensors.index.json").exists():
            raise NotASafetensorsRepoError(f"'{repo_id}' is not a safetensors repo")
        lay_out_in_cache(repo_id, folder, ["model.safetensors.index.json"], revision or commit, ref=None)
        index = json.loads((folder / "model.safetensors.index.json").read_text())
        weight_map = index.get("weight_map", {})
        files = {name: parsed_header(folder / name) for name in set(weight_map.values())}
        return SafetensorsRepoMetadata(index.get("metadata"), True, weight_map, files)

    monkeypatch.setattr(huggingface_hub, "get_safetensors_metadata", headers)


def lay_out_in_cache(repo_id, folder, names, commit, ref):
    """Put the files `names` of `folder` in the Hugging Face cache as huggingface_hub does:
    blobs named by SHA256 (one already there is reused unread), links in snapshots/<commit>/
    (a folder already there is reused, whatever it holds), and refs/<ref> unless `ref` is
    None. Returns the snapshot folder."""
    repo = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "blobs").mkdir(exist_ok=True)
    if ref is not None:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    for name in names:
        data = (folder / name).read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        if not blob.exists():
            blob.write_bytes(data)
        (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
        if not os.path.lexists(snapshot / name):
            os.symlink(os.path.relpath(blob, (snapshot / name).parent), snapshot / name)
    return snapshot


def test_fetch_remote_lists_the_commit_as_the_download_does(monkeypatch):
    calls = hub_answers(PRUNED, monkeypatch)
    remote = fetch_remote("acme/pruned", "main")
    # the commit first; then snapshot_download's own listing, pinned to that commit; no header yet
    assert calls == [("model_info", "acme/pruned", "main"), ("tree", "acme/pruned", COMMIT)]
    assert remote.commit == COMMIT and remote.revision == "main"
    local = open_checkpoint(PRUNED)
    assert remote.files["config.json"].sha256 is None  # not in LFS: no hash to compare
    assert {remote.files[n].sha256 for n in local.shards} == {sha(PRUNED / n) for n in local.shards}
    assert remote.downloaded == sorted(p.name for p in PRUNED.iterdir())
    fetch_headers(remote, sorted(local.shards))
    assert calls[2:] == [("header", "acme/pruned", n, COMMIT) for n in sorted(local.shards)]
    assert remote.safetensors_files == sorted(local.shards)
    for name, info in local.tensors.items():
        got = remote.tensors[name]
        assert (got.dtype, got.shape, got.file) == (info.dtype.name, info.shape, info.file)
        assert got.data_offsets[1] - got.data_offsets[0] == info.nbytes


def test_compare_remote_tells_which_files_a_download_would_change(monkeypatch):
    hub_answers(PRUNED, monkeypatch)
    remote = fetch_remote("acme/pruned")
    fetch_headers(remote, sorted(open_checkpoint(PRUNED).shards))
    base = open_checkpoint(BASE)
    comparison = compare_remote(remote, base, {name: sha(BASE / name) for name in base.shards})
    # the fixtures differ in both shards (changed layers 0-3, and header metadata), same tensors
    assert comparison.changed_files == sorted(base.shards) and not comparison.same_files
    assert not (comparison.only_remote_tensors or comparison.only_local_tensors or comparison.reshaped_tensors)
    assert not comparison.identical
    pruned = open_checkpoint(PRUNED)
    same = compare_remote(remote, pruned, {name: sha(PRUNED / name) for name in pruned.shards})
    assert same.identical and same.same_files == sorted(pruned.shards)
    assert not compare_remote(remote, pruned, {}).identical  # no local hash: never taken as the same


@pytest.mark.parametrize(
    "error, message",
    [
        ("RepositoryNotFoundError", "no such repo on the Hub, or it is private"),
        ("GatedRepoError", "gated on the Hub"),
        ("RevisionNotFoundError", "no revision v9 on the Hub"),
    ],
)
def test_fetch_remote_hub_errors_are_one_line(monkeypatch, error, message):
    import httpx2
    import huggingface_hub
    from huggingface_hub import errors

    def model_info(self, repo_id, **kw):
        response = httpx2.Response(404, request=httpx2.Request("GET", "https://huggingface.co/api/models/acme/x"))
        raise getattr(errors, error)("404 Client Error", response=response)

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", model_info)
    with pytest.raises(SurgeonError) as caught:
        fetch_remote("acme/x", "v9")
    assert str(caught.value).startswith("acme/x: ") and message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_fetch_headers_malformed_is_one_line(monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import SafetensorsParsingError

    hub_answers(PRUNED, monkeypatch)

    def parse(self, repo_id, filename, **kw):
        raise SafetensorsParsingError(f"Failed to parse safetensors header for '{filename}'\nmore")

    monkeypatch.setattr(huggingface_hub.HfApi, "parse_safetensors_file_metadata", parse)
    with pytest.raises(SurgeonError, match=r"^acme/x: a safetensors header on the Hub is malformed \(Failed to"):
        fetch_headers(fetch_remote("acme/x"), ["model-00001-of-00002.safetensors"])


# ---------- diff --download: hashes and headers first ----------


def test_hub_diff_download_compares_hashes_and_headers_before_downloading(hub_cache, monkeypatch, tmp_path):
    calls = hub_answers(PRUNED, monkeypatch)
    transfers, said = hub_downloads(PRUNED, monkeypatch), []

    def say(line):
        said.append(line)
        # the commit, its files, the small files and the headers fetched; the download has not started
        assert [c[0] for c in calls] == ["model_info", "tree", "header", "header"]
        assert [t[0] for t in transfers] == ["fetch"]

    _, other = open_pair(
        BASE, "acme/pruned", download=True, cache_dir=tmp_path / "hashes", say=say, bars=False, skip_identical=True
    )
    assert said == [
        "acme/pruned at 0123456789ab, from the Hub's hashes and headers (no weights downloaded yet): 0 of 2 "
        "safetensors files (0.00 GB) identical to BASE's, 2 changed; tensors: same names, dtypes and shapes"
    ]
    assert [t[0] for t in transfers] == ["fetch", "download"] and other.root.name == COMMIT
    assert "get_safetensors_metadata" not in [c[0] for c in calls]


def test_hub_diff_download_offline_is_one_line(hub_cache, tmp_path):
    """huggingface_hub's real offline answer, for the listing and for the fetch of small files."""
    for pair in ((BASE, "acme/pruned"), ("acme/pruned", PRUNED)):
        with pytest.raises(SurgeonError, match=r"^acme/pruned: cannot reach the Hub, HF_HUB_OFFLINE is set$"):
            open_pair(*pair, download=True, cache_dir=tmp_path / "hashes", say=pytest.fail, skip_identical=True)


def test_hub_diff_download_of_cached_ids_asks_the_hub_nothing(hub_cache, monkeypatch):
    calls = hub_answers(PRUNED, monkeypatch)
    base, other = open_pair(BASE, "acme/tiny", download=True, say=pytest.fail)
    assert other.root.name == COMMIT and base.tensors.keys() == other.tensors.keys()
    assert calls == []


# ---------- diff --download: nothing downloaded when every file is already the same ----------

SIDE_FILES = ["config.json", "model.safetensors.index.json"]  # the fixtures' files outside LFS
BAR = "Fetching"  # what hub_downloads' huggingface_hub progress bar prints


def hub_downloads(folder, monkeypatch, commit=COMMIT):
    """Make snapshot_download serve `folder` as huggingface_hub does: only the files
    `allow_patterns` match by its own rule (filter_repo_objects: fnmatchcase, `*` crossing
    `/`); a download into the cache lays them out there (lay_out_in_cache: a snapshot folder
    already there is reused) and returns the snapshot, a fetch into a `local_dir` copies them
    there; cache look-ups (local_files_only) go to the real function. Each transfer shows
    huggingface_hub's own progress bar, as the real one does. Returns the transfers,
    ("download" or "fetch", repo id, revision, file names)."""
    import huggingface_hub
    from huggingface_hub.utils import filter_repo_objects, tqdm

    real, calls = huggingface_hub.snapshot_download, []

    def snapshot_download(repo_id, *, revision=None, local_files_only=False, allow_patterns=None, local_dir=None, **kw):
        if local_files_only:
            return real(repo_id, revision=revision, local_files_only=True, **kw)
        files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        names = list(filter_repo_objects(files, allow_patterns=allow_patterns))
        calls.append(("fetch" if local_dir else "download", repo_id, revision, names))
        with tqdm(total=len(names), desc=f"{BAR} {len(names)} files") as bar:
            bar.update(len(names))
        if local_dir is None:
            return str(lay_out_in_cache(repo_id, folder, names, commit, ref=revision or "main"))
        for name in names:
            (Path(local_dir) / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(folder / name, Path(local_dir) / name)
        return str(Path(local_dir).resolve())

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return calls


def skipping_pair(base, other, **kwargs):
    """open_pair as `surgeon diff --download` calls it: no bars, the download skipped when identical."""
    return open_pair(base, other, download=True, bars=False, skip_identical=True, **kwargs)


def test_identical_on_the_hub_downloads_no_weights(hub_cache, monkeypatch, tmp_path):
    asked, transfers = hub_answers(PRUNED, monkeypatch), hub_downloads(PRUNED, monkeypatch)
    match = skipping_pair(PRUNED, "acme/pruned", cache_dir=tmp_path / "hashes", say=pytest.fail)
    assert isinstance(match, HubMatch) and match.hub_side == "other" and match.local.root == PRUNED.resolve()
    # the commit and its files; no header read: the shards matched, and theirs are the local files'
    assert [call[0] for call in asked] == ["model_info", "tree"]
    # only the small files outside LFS were fetched, at the commit the hashes came from, and not into the cache
    assert transfers == [("fetch", "acme/pruned", COMMIT, SIDE_FILES)]
    assert not (hub_cache / "models--acme--pruned").exists()
    shards = sorted(open_checkpoint(PRUNED).shards)
    assert [(f.name, f.compared_by) for f in match.files] == [(n, "hub-lfs-sha256") for n in shards] + [
        (n, "bytes") for n in SIDE_FILES
    ]
    assert all(f.sha256 == sha(PRUNED / f.name) and f.size == (PRUNED / f.name).stat().st_size for f in match.files)
    assert match.summary() == (
        f"identical: acme/pruned at 0123456789ab and BASE ({PRUNED}): 2 files (0.00 GB) by the Hub's LFS SHA256 "
        "against BASE's bytes hashed here, 2 small files (config.json, model.safetensors.index.json) fetched and "
        "compared by their bytes; the weights were not downloaded"
    )
    swapped = open_pair("acme/pruned", PRUNED, download=True, say=pytest.fail, bars=False, skip_identical=True)
    assert swapped.hub_side == "base" and "and OTHER (" in swapped.summary()


def test_identical_needs_the_local_bytes_not_a_cached_hash(hub_cache, monkeypatch, tmp_path):
    """A stat-cache entry claiming the Hub's hash must not stand for the bytes: a local file
    whose cache entry says "same" but whose bytes differ is downloaded."""
    from surgeon.format.hashcache import FileIdentity, HashCache
    from surgeon.format.hashing import hash_shards

    local = tmp_path / "local"
    shutil.copytree(PRUNED, local)
    flip_last_byte(local)
    cache, name = HashCache(tmp_path / "hashes"), "model-00002-of-00002.safetensors"
    hash_shards([open_checkpoint(PRUNED).shards[name]], cache)  # the true file's hashes, in the cache
    cache.store_file(FileIdentity.of(local / name), sha(PRUNED / name))  # the edited file's stat key claims them
    hub_answers(PRUNED, monkeypatch)
    transfers, said = hub_downloads(PRUNED, monkeypatch), []
    skipping_pair(local, "acme/pruned", cache_dir=tmp_path / "hashes", say=said.append)
    # the cache said "same", so the bytes were read again before skipping: they differ, and the line says so
    assert [call[0] for call in transfers] == ["fetch", "download"] and "1 of 2 safetensors files" in said[0]


def flip_last_byte(folder):
    shard = folder / "model-00002-of-00002.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 1  # the last tensor's data: the header and every other file stay the same
    shard.write_bytes(bytes(data))


def edit_config(folder):
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "note": "edited"}))


@pytest.mark.parametrize(
    "change, said, transfers",
    [
        (
            flip_last_byte,
            "1 of 2 safetensors files (0.00 GB) identical to BASE's, 1 changed; tensors:",
            ["fetch", "download"],
        ),
        (edit_config, "2 of 2 safetensors files (0.00 GB) identical", ["fetch", "download"]),
        (lambda f: (f / "config.json").unlink(), "; other files: config.json only on the Hub", ["fetch", "download"]),
        (
            lambda f: (f / "chat_template.jinja").write_text("{{ x }}"),
            "chat_template.jinja only in BASE",
            ["fetch", "download"],
        ),
    ],
    ids=["one-shard-byte", "config", "file-missing-here", "file-only-here"],
)
def test_one_file_differing_still_downloads(hub_cache, monkeypatch, tmp_path, change, said, transfers):
    local = tmp_path / "local"
    shutil.copytree(PRUNED, local)
    change(local)
    hub_answers(PRUNED, monkeypatch)
    done, lines = hub_downloads(PRUNED, monkeypatch), []
    base, other = open_pair(
        local,
        "acme/pruned",
        download=True,
        cache_dir=tmp_path / "hashes",
        say=lines.append,
        bars=False,
        skip_identical=True,
    )
    assert [call[0] for call in done] == transfers and other.root.name == COMMIT and base.root == local.resolve()
    assert len(lines) == 1 and said in lines[0], lines
    if change is edit_config:
        assert lines[0].endswith("; other files: config.json changed")


def test_a_file_in_lfs_is_compared_by_its_hash_not_fetched(hub_cache, monkeypatch, tmp_path):
    remote, local = tmp_path / "remote", tmp_path / "local"
    shutil.copytree(PRUNED, remote)
    (remote / "tokenizer.json").write_text('{"model": {"type": "BPE"}}')
    shutil.copytree(remote, local)
    hub_answers(remote, monkeypatch, in_lfs=(".safetensors", "tokenizer.json"))
    transfers = hub_downloads(remote, monkeypatch)
    match = open_pair(local, "acme/x", download=True, say=pytest.fail, bars=False, skip_identical=True)
    assert transfers == [("fetch", "acme/x", COMMIT, SIDE_FILES)]  # not tokenizer.json
    assert ("tokenizer.json", "hub-lfs-sha256") in [(f.name, f.compared_by) for f in match.files]
    (local / "tokenizer.json").write_text('{"model": {"type": "Unigram"}}')
    lines = []
    open_pair(local, "acme/x", download=True, say=lines.append, bars=False, skip_identical=True)
    assert lines[0].endswith("; other files: tokenizer.json changed") and transfers[-1][0] == "download"


def test_a_report_of_hashed_bytes_downloads_all_the_same(hub_cache, monkeypatch, tmp_path):
    hub_answers(PRUNED, monkeypatch)
    transfers, lines = hub_downloads(PRUNED, monkeypatch), []
    _, other = open_pair(PRUNED, "acme/pruned", download=True, say=lines.append, bars=False)
    assert [call[0] for call in transfers] == ["fetch", "download"] and other.root.name == COMMIT
    assert lines[0].endswith("; downloading all the same: this report's SHA256s are hashed from both sides' bytes")


# ---------- huggingface_hub's own progress bars follow surgeon's ----------


def test_download_bars_off_when_progress_is_off_then_as_they_were(hub_cache, monkeypatch, tmp_path, capsys):
    import warnings

    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    with warnings.catch_warnings():  # bars on to start with: an earlier canary in this process turned them off
        warnings.simplefilter("ignore")
        enable_progress_bars()
    local = tmp_path / "local"
    shutil.copytree(PRUNED, local)
    flip_last_byte(local)  # so that a download happens
    hub_answers(PRUNED, monkeypatch)
    transfers = hub_downloads(PRUNED, monkeypatch)
    open_pair(local, "acme/a", download=True, bars=False)
    assert transfers[-1][0] == "download" and BAR not in capsys.readouterr().err
    assert not are_progress_bars_disabled()  # back on for whoever comes next
    open_pair(local, "acme/b", download=True, bars=True)
    assert transfers[-1][0] == "download" and BAR in capsys.readouterr().err  # the bar the check looks for
    disable_progress_bars()
    try:  # off before: still off after, and never turned on by surgeon
        open_pair(local, "acme/c", download=True, bars=True)
        assert are_progress_bars_disabled() and BAR not in capsys.readouterr().err
    finally:
        enable_progress_bars()
    # inspect/verify --download: no progress option, so bars on a terminal only (capsys is none)
    download_remote(RemoteCheckpoint("acme/d", None, COMMIT, {}, {}, {}))
    assert transfers[-1][:2] == ("download", "acme/d") and BAR not in capsys.readouterr().err


# ---------- the CLI: one line, its JSON, -q ----------


def run_diff(*args):
    return CliRunner().invoke(main, ["diff", *map(str, args), "--download", "--no-cache"])


def test_cli_diff_identical_on_the_hub(hub_cache, monkeypatch):
    hub_answers(PRUNED, monkeypatch)
    transfers = hub_downloads(PRUNED, monkeypatch)
    result = run_diff(PRUNED, "acme/pruned")
    assert result.exit_code == 0, result.output
    assert result.stderr == "" and result.stdout.count("\n") == 1
    assert result.stdout.startswith("identical: acme/pruned at 0123456789ab and BASE (")
    assert "by the Hub's LFS SHA256" in result.stdout and result.stdout.endswith("the weights were not downloaded\n")
    data = json.loads(run_diff(PRUNED, "acme/pruned", "--json").stdout)
    assert data["schema"] == "surgeon.diff-hub-match/1" and data["summary"]["identical"] is True
    assert data["downloaded"] is False and data["hub"] == {
        "side": "other",
        "repo_id": "acme/pruned",
        "revision": None,
        "commit": COMMIT,
    }
    assert data["local"]["side"] == "base" and data["local"]["source"] == str(PRUNED)
    assert {f["name"]: f["compared_by"] for f in data["files"]}["config.json"] == "bytes"
    quiet = run_diff(PRUNED, "acme/pruned", "-q")
    assert quiet.exit_code == 0 and quiet.stdout == quiet.stderr == ""
    assert {call[0] for call in transfers} == {"fetch"}  # three runs, no download


def test_cli_diff_downloads_what_differs_without_bars_off_a_terminal(hub_cache, monkeypatch, tmp_path):
    local = tmp_path / "local"
    shutil.copytree(PRUNED, local)
    edit_config(local)
    hub_answers(PRUNED, monkeypatch)
    transfers = hub_downloads(PRUNED, monkeypatch)
    result = run_diff(local, "acme/pruned", "--json")
    assert result.exit_code == 1 and [call[0] for call in transfers] == ["fetch", "download"], result.output
    assert result.stderr.count("\n") == 1 and "other files: config.json changed" in result.stderr
    assert BAR not in result.stderr  # CliRunner's stderr is no terminal
    files = {f["name"]: f["status"] for f in json.loads(result.stdout)["files"]}
    assert files["config.json"] == "changed"


def test_cli_diff_markdown_downloads_even_when_identical(hub_cache, monkeypatch):
    hub_answers(PRUNED, monkeypatch)
    transfers = hub_downloads(PRUNED, monkeypatch)
    result = run_diff(PRUNED, "acme/pruned", "--markdown")
    assert result.exit_code == 0 and [call[0] for call in transfers] == ["fetch", "download"], result.output
    assert "downloading all the same" in result.stderr


def test_cli_hub_hint_only_where_the_command_has_download(hub_cache):
    """`surgeon tui` has no --download: its error must not tell the user to pass one."""
    proc = run_cli("tui", "acme/absent", str(BASE))
    assert_one_line(proc, NOT_CACHED)
    assert "--download" not in proc.stderr


# ---------- diff --download says "identical" only when download-then-diff would ----------
# Each case from a hostile review of the no-download path: the Hub's files are served by the
# realistic fakes above (huggingface_hub's listing, pattern rule and cache layout), and the
# answer with --download must be the exit code of the full diff once downloaded.


def write_safetensors(path, tensors, meta=None):
    """tensors: name -> (dtype, shape, raw bytes)."""
    header, blobs, pos = dict({"__metadata__": meta} if meta else {}), [], 0
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [pos, pos + len(raw)]}
        blobs.append(raw)
        pos += len(raw)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def tensors_of(path):
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + n])
    header.pop("__metadata__", None)
    return {
        k: (v["dtype"], v["shape"], data[8 + n + v["data_offsets"][0] : 8 + n + v["data_offsets"][1]])
        for k, v in header.items()
    }


def merged_into_one(src, path):
    """All the tensors of `src`'s shards in one model.safetensors at `path`."""
    merged = {}
    for shard in sorted(src.glob("model-*.safetensors")):
        merged.update(tensors_of(shard))
    write_safetensors(path, merged, {"format": "pt"})


def diff_download(*args):
    return CliRunner().invoke(main, ["diff", *map(str, args), "--download", "--no-cache"])


def downloaded_diff(remote, local_arg, tmp_path, *extra):
    """The exit code of the diff of `local_arg` against what a download of `remote` brings
    (the files DOWNLOAD_PATTERNS picks, by huggingface_hub's rule), in a folder of its own."""
    from huggingface_hub.utils import filter_repo_objects

    from surgeon.format.hub import DOWNLOAD_PATTERNS

    folder = tmp_path / "downloaded"
    files = sorted(p.relative_to(remote).as_posix() for p in remote.rglob("*") if p.is_file())
    for name in filter_repo_objects(files, allow_patterns=DOWNLOAD_PATTERNS):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(remote / name, folder / name)
    return CliRunner().invoke(main, ["diff", str(local_arg), str(folder), "--no-cache", *extra]).exit_code


def test_hub_single_file_beside_an_index_is_what_a_download_opens(hub_cache, monkeypatch, tmp_path):
    """The Hub has shards, their index and a model.safetensors holding the same tensors: the
    download is opened through model.safetensors, as transformers loads it, so a local copy of
    that one file is identical to it; without that file on the Hub, the download is opened
    through the index, and the lone local file is compared as that one file."""
    remote, local = tmp_path / "remote", tmp_path / "local"
    shutil.copytree(PRUNED, remote)
    merged_into_one(remote, remote / "model.safetensors")
    shutil.copytree(remote, local)  # an exact copy of the repo
    hub_answers(remote, monkeypatch)
    hub_downloads(remote, monkeypatch)
    result = diff_download(local / "model.safetensors", "acme/x")
    assert result.exit_code == downloaded_diff(remote, local / "model.safetensors", tmp_path) == 0, result.output
    # the whole folder against the whole repo: the same files, read the same way
    assert diff_download(local, "acme/y").exit_code == 0
    sharded = tmp_path / "sharded"
    shutil.copytree(PRUNED, sharded)
    hub_answers(sharded, monkeypatch)
    hub_downloads(sharded, monkeypatch)
    result = diff_download(local / "model.safetensors", "acme/w")
    assert result.exit_code == downloaded_diff(sharded, local / "model.safetensors", tmp_path / "w") == 1


def test_hub_model_safetensors_beside_an_index_is_what_is_compared(hub_cache, monkeypatch, tmp_path):
    """Issue 18: the Hub's model.safetensors (what a download opens, as transformers loads it)
    holds PRUNED's weights, its shards and index BASE's. A local folder with the same shards and
    index but BASE's weights in its model.safetensors is not identical to it, and the download
    is not skipped (it was: both sides were read through their identical index)."""
    remote, local = tmp_path / "remote", tmp_path / "local"
    shutil.copytree(BASE, remote)
    merged_into_one(PRUNED, remote / "model.safetensors")
    shutil.copytree(BASE, local)
    merged_into_one(BASE, local / "model.safetensors")
    hub_answers(remote, monkeypatch)
    transfers = hub_downloads(remote, monkeypatch)
    result = diff_download(local, "acme/z", "--json")
    assert result.exit_code == downloaded_diff(remote, local, tmp_path) == 1, result.output
    assert transfers[-1][0] == "download" and "1 changed" in result.stderr
    report = json.loads(result.stdout)
    assert report["schema"] == "surgeon.diff/1" and [s["name"] for s in report["shards"]] == ["model.safetensors"]
    for side in ("base", "other"):
        assert report[side]["ignored"] == [*sorted(open_checkpoint(BASE).shards), "model.safetensors.index.json"]
        assert report[side]["note"].startswith("model.safetensors is read, as transformers loads it before any index")


def test_hub_index_that_would_not_open_is_no_match(hub_cache, monkeypatch, tmp_path):
    """The Hub's index names a tensor its shard lacks: the downloaded folder does not open
    (exit 2), so a local copy of the shard given alone is not "identical"."""
    remote, local = tmp_path / "remote", tmp_path / "local"
    remote.mkdir()
    shutil.copy(PRUNED / "config.json", remote / "config.json")
    shard = "model-00001-of-00001.safetensors"
    shutil.copy(PRUNED / "model-00001-of-00002.safetensors", remote / shard)
    weight_map = dict.fromkeys([*tensors_of(remote / shard), "ghost.weight"], shard)
    (remote / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    shutil.copytree(remote, local)
    hub_answers(remote, monkeypatch)
    hub_downloads(remote, monkeypatch)
    result = diff_download(local / shard, "acme/y")
    assert result.exit_code == downloaded_diff(remote, local / shard, tmp_path) == 2, result.output
    assert "ghost.weight" in result.stderr


def test_hub_shards_the_download_patterns_never_fetch(hub_cache, monkeypatch, tmp_path):
    """An index naming shards "*.SAFETENSORS": their LFS hashes match, but DOWNLOAD_PATTERNS
    ("*.safetensors", matched case-sensitively by huggingface_hub) never fetches them, so the
    downloaded folder does not open. SIDE_FILE_LIMIT is lowered to stand for real-size shards."""
    import surgeon.format.checkpoint as checkpoint

    monkeypatch.setattr(checkpoint, "SIDE_FILE_LIMIT", 64 << 10)
    remote, local = tmp_path / "remote", tmp_path / "local"
    remote.mkdir()
    shutil.copy(PRUNED / "config.json", remote / "config.json")
    index = json.loads((PRUNED / "model.safetensors.index.json").read_text())
    rename = {n: n.upper() for n in set(index["weight_map"].values())}
    for old, new in rename.items():
        shutil.copy(PRUNED / old, remote / new)
    index["weight_map"] = {k: rename[v] for k, v in index["weight_map"].items()}
    (remote / "model.safetensors.index.json").write_text(json.dumps(index))
    shutil.copytree(remote, local)
    hub_answers(remote, monkeypatch, in_lfs=(".SAFETENSORS",))
    transfers = hub_downloads(remote, monkeypatch)
    result = diff_download(local, "acme/u")
    assert result.exit_code == downloaded_diff(remote, local, tmp_path) == 2, result.output
    assert "which is missing" in result.stderr and transfers[-1][0] == "download"


def test_hub_match_leaves_nothing_in_the_cache(hub_cache, monkeypatch):
    """No weightless snapshot is left behind (huggingface_hub's get_safetensors_metadata would
    leave the index in snapshots/<commit>/), so the repo stays "not cached" and the same run
    answers the same the second time."""
    calls = hub_answers(PRUNED, monkeypatch)
    transfers = hub_downloads(PRUNED, monkeypatch)
    for _ in range(2):
        result = diff_download(PRUNED, "acme/pin", "--other-revision", COMMIT)
        assert result.exit_code == 0 and result.stdout.startswith("identical: "), result.output
    assert not (hub_cache / "models--acme--pin").exists() and {t[0] for t in transfers} == {"fetch"}
    assert "get_safetensors_metadata" not in [c[0] for c in calls]
    inspect = CliRunner().invoke(main, ["inspect", "acme/pin", "--revision", COMMIT])
    assert inspect.exit_code == 2 and "not in the local Hugging Face cache" in inspect.stderr


def test_weightless_snapshot_in_the_cache_is_not_a_cached_checkpoint(hub_cache, monkeypatch, tmp_path):
    """What get_safetensors_metadata (or `hf download REPO config.json`) leaves, an index or a
    config alone in snapshots/<commit>/, is not the repo: it is fetched with --download."""
    lay_out_in_cache("acme/idx", PRUNED, ["model.safetensors.index.json", "config.json"], COMMIT, ref="main")
    with pytest.raises(SurgeonError, match="acme/idx: no such folder, and not in the local Hugging Face cache"):
        open_checkpoint("acme/idx")
    hub_answers(PRUNED, monkeypatch)
    transfers = hub_downloads(PRUNED, monkeypatch)
    ckpt = open_checkpoint("acme/idx", download=True)
    assert transfers[-1][0] == "download" and sorted(ckpt.shards) == sorted(open_checkpoint(PRUNED).shards)


def test_hub_snapshot_of_the_commit_already_in_the_cache(hub_cache, monkeypatch, tmp_path):
    """An earlier pinned download of the commit (every file, no refs/main) left README.md in
    snapshots/<commit>/; the download reuses that folder, so the full diff sees README.md."""
    remote, local = tmp_path / "remote", tmp_path / "local"
    shutil.copytree(PRUNED, remote)
    (remote / "README.md").write_text("# card\n")
    lay_out_in_cache("acme/w", remote, sorted(p.name for p in remote.iterdir()), COMMIT, ref=None)
    shutil.copytree(PRUNED, local)
    hub_answers(remote, monkeypatch)
    transfers = hub_downloads(remote, monkeypatch)
    result = diff_download(local, "acme/w", "--json")
    assert result.exit_code == 1 and transfers[-1][0] == "download", result.output
    files = {f["name"]: f["status"] for f in json.loads(result.stdout)["files"]}
    assert files["README.md"] == "added"
    assert "the cache already holds a snapshot of 0123456789ab" in result.stderr


def test_hub_blob_already_in_the_cache_is_what_the_download_reads(hub_cache, monkeypatch, tmp_path):
    """A blob of an older commit, edited since through its snapshot's link, has the name of the
    Hub's shard: the download links it unread, so the full diff reads the edited bytes."""
    older, name = tmp_path / "older", "model-00002-of-00002.safetensors"
    shutil.copytree(PRUNED, older)
    flip_last_byte(older)
    snapshot = lay_out_in_cache("acme/b", older, [name], "fedcba9876543210" * 2 + "fedcba98", ref=None)
    (snapshot / name).resolve().rename(snapshot.parents[1] / "blobs" / sha(PRUNED / name))  # named as the Hub's
    (snapshot / name).unlink()
    hub_answers(PRUNED, monkeypatch)
    transfers = hub_downloads(PRUNED, monkeypatch)
    result = diff_download(PRUNED, "acme/b")
    assert result.exit_code == 1 and transfers[-1][0] == "download", result.output
    assert f"the cache already holds {name}'s blob, which the download reuses" in result.stderr


def test_hub_listing_is_the_downloads_not_model_infos_siblings(hub_cache, monkeypatch, tmp_path):
    """model_info's `siblings` may come back short (huggingface_hub PR #3565); the download
    lists the commit with list_repo_tree, and so must the comparison."""
    remote, listed = tmp_path / "remote", tmp_path / "listed"
    shutil.copytree(PRUNED, remote)
    (remote / "tokenizer.json").write_text('{"model": {}}')
    shutil.copytree(PRUNED, listed)  # the same commit, as a truncated siblings list shows it
    hub_answers(remote, monkeypatch, siblings_of=listed)
    hub_downloads(remote, monkeypatch)
    result = diff_download(PRUNED, "acme/t")
    assert result.exit_code == downloaded_diff(remote, PRUNED, tmp_path) == 1, result.output
    assert "tokenizer.json only on the Hub" in result.stderr


def test_hub_file_outside_the_patterns_or_in_a_folder_is_not_compared(hub_cache, monkeypatch, tmp_path):
    """What the download leaves out (README.md, *.bin) or puts in a subfolder, the diff never
    sees: files like these on the Hub alone still make "identical", as the full diff says."""
    remote = tmp_path / "remote"
    shutil.copytree(PRUNED, remote)
    (remote / "README.md").write_text("# card\n")
    (remote / "pytorch_model.bin").write_bytes(b"\0" * 64)
    (remote / "extra").mkdir()
    (remote / "extra" / "notes.json").write_text("{}")
    hub_answers(remote, monkeypatch, in_lfs=(".safetensors", ".bin"))
    hub_downloads(remote, monkeypatch)
    result = diff_download(PRUNED, "acme/v")
    assert result.exit_code == downloaded_diff(remote, PRUNED, tmp_path) == 0, result.output


def test_hub_comparison_reads_the_local_bytes_once_when_they_differ(hub_cache, monkeypatch, tmp_path):
    """When the hash cache already says a shard differs, a download is due: the local bytes
    are not read again (they are re-read from the bytes only before saying identical)."""
    local = tmp_path / "local"
    shutil.copytree(PRUNED, local)
    flip_last_byte(local)
    hub_answers(PRUNED, monkeypatch)
    hub_downloads(PRUNED, monkeypatch)
    options = {"download": True, "cache_dir": tmp_path / "hashes", "bars": False, "skip_identical": True}
    open_pair(local, "acme/r1", **options)  # the local shards' hashes now in the cache
    reads = count_reads(monkeypatch)
    open_pair(local, "acme/r2", **options)
    assert reads == []
    open_pair(PRUNED, "acme/r3", **options)  # identical: read from the bytes, whatever the cache says
    open_pair(PRUNED, "acme/r4", **options)
    assert sorted(reads) == sorted(2 * list(open_checkpoint(PRUNED).shards))


def test_download_patterns_match_as_huggingface_hub_matches(monkeypatch):
    """What a download brings is picked by huggingface_hub's own rule (filter_repo_objects,
    fnmatchcase, `*` crossing `/`), not by fnmatch, which folds case where os.path.normcase
    does (Windows, emulated here)."""
    import ntpath

    from surgeon.format.hub import RemoteFile

    names = ["MODEL.SAFETENSORS", "Config.JSON", "README.md", "model.safetensors", "sub/config.json", "x.bin"]
    remote = RemoteCheckpoint("acme/x", None, COMMIT, {n: RemoteFile(n, 1, None) for n in names}, {}, {})
    monkeypatch.setattr(os.path, "normcase", ntpath.normcase)
    assert remote.downloaded == ["model.safetensors", "sub/config.json"]


# --- hostile listings: the stand-in never writes outside its folder nor through its links ---


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """tempfile's folder inside tmp_path, to see what the stand-in leaves there."""
    import tempfile

    tmp = tmp_path / "tmpdir"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    return tmp


def extra_listing(monkeypatch, entries):
    """Add files (path, size, LFS SHA256 or None) to hub_answers' list_repo_tree."""
    import huggingface_hub
    from huggingface_hub.hf_api import RepoFile

    real = huggingface_hub.HfApi.list_repo_tree

    def tree(self, *args, **kw):
        yield from real(self, *args, **kw)
        for path, size, sha256 in entries:
            lfs = {"size": size, "oid": sha256, "pointerSize": 134} if sha256 else None
            yield RepoFile(path=path, size=size, oid="0" * 40, lfs=lfs)

    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_tree", tree)


def test_a_name_that_folds_onto_a_linked_shard_never_writes_through_the_link(hub_cache, monkeypatch, tmp_path):
    """On a file system that ignores case (macOS, Windows), `Model-...` is `model-...`: the
    placeholder of the one opened the link to the user's shard and filled it with zeros.
    Emulated with an `open` that finds names as such a file system does."""
    import builtins

    import surgeon.format.hub_pair as hub_pair  # the stand-in opens its placeholders there

    local = tmp_path / "local"
    shutil.copytree(PRUNED, local)
    shard = "model-00001-of-00002.safetensors"
    before = sha(local / shard)
    hub_answers(PRUNED, monkeypatch)
    extra_listing(monkeypatch, [("M" + shard[1:], 1 << 20, "ab" * 32)])
    hub_downloads(PRUNED, monkeypatch)

    def case_insensitive_open(path, mode="r", *args, **kwargs):
        path = Path(path)
        if path.parent.is_dir():
            path = next(
                (path.parent / e for e in os.listdir(path.parent) if e.casefold() == path.name.casefold()), path
            )
        return builtins.open(path, mode, *args, **kwargs)

    monkeypatch.setattr(hub_pair, "open", case_insensitive_open, raising=False)
    said: list[str] = []
    pair = open_pair(local, "acme/ci", download=True, bars=False, skip_identical=True, say=said.append)
    assert not isinstance(pair, HubMatch)  # two names for one file here: compared after the download
    assert "one path where case or accents fold" in said[0]
    assert sha(local / shard) == before


@pytest.mark.parametrize(
    "name", ["../escape.json", "/abs/escape.json", "a\nb.json", "..\\escape.json", "C:escape.json", "a/../../e.json"]
)
def test_hostile_names_in_the_listing_write_nothing_outside_the_stand_in(
    hub_cache, monkeypatch, tmp_path, private_tmp, name
):
    hub_answers(PRUNED, monkeypatch)
    extra_listing(monkeypatch, [(name, 10, "cd" * 32)])
    hub_downloads(PRUNED, monkeypatch)
    result = CliRunner().invoke(main, ["diff", str(PRUNED), "acme/h", "--download", "--no-cache"])
    assert result.exit_code in (0, 1, 2) and "internal error" not in result.output
    assert list(private_tmp.iterdir()) == []  # the stand-in is gone
    assert not (tmp_path / "escape.json").exists() and not (tmp_path.parent / "escape.json").exists()
    assert not Path("/abs").exists()


@pytest.mark.parametrize("entry", [("x" * 300 + ".json", 10), ("huge.json", 10**15)])
def test_a_file_this_disk_cannot_hold_is_not_compared_first_and_named(hub_cache, monkeypatch, entry):
    """A name too long or a listed size too large for this file system: one line naming the
    file, then the download decides, as it would without the comparison."""
    name, size = entry
    hub_answers(PRUNED, monkeypatch)
    extra_listing(monkeypatch, [(name, size, "cd" * 32)])
    hub_downloads(PRUNED, monkeypatch)
    result = CliRunner().invoke(main, ["diff", str(PRUNED), "acme/big", "--download", "--no-cache"])
    assert "internal error" not in result.output
    assert f"not compared before downloading: {name} cannot be laid out here" in result.stderr
