"""Hub ids: the local cache by default, `--download` only when asked (issue 12, section 5).

This machine has no Hub access, so the network side is tested against huggingface_hub's own
behaviour: HF_HUB_OFFLINE=1, an endpoint that refuses connections, and, for the contract of
`fetch_remote`, huggingface_hub's own dataclasses built from the fixture's real headers."""

import json
import os
import struct
import subprocess
import sys

import pytest
from huggingface_hub import constants

from surgeon.errors import SurgeonError
from surgeon.format.checkpoint import open_checkpoint, open_pair
from surgeon.format.hub import RemoteCheckpoint, compare_remote, download_remote, fetch_remote
from tests.format.test_checkpoint import make_hub_cache
from tests.helpers import BASE, PRUNED, ROOT, sha

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


def hub_answers(folder, monkeypatch, commit=COMMIT):
    """Make model_info and get_safetensors_metadata answer for `folder` as the Hub would:
    real ModelInfo and SafetensorsRepoMetadata objects built from its files and headers.
    Returns the calls made, to check what was asked for."""
    import huggingface_hub
    from huggingface_hub.hf_api import ModelInfo
    from huggingface_hub.utils import SafetensorsFileMetadata, SafetensorsRepoMetadata, TensorInfo

    calls = []
    names = sorted(p.name for p in folder.iterdir())
    siblings = [{"rfilename": name, "size": (folder / name).stat().st_size} for name in names]
    for sibling in siblings:
        if sibling["rfilename"].endswith(".safetensors"):
            lfs = {"size": sibling["size"], "sha256": sha(folder / sibling["rfilename"]), "pointerSize": 134}
            sibling["lfs"] = lfs

    def model_info(self, repo_id, *, revision=None, files_metadata=False, **kw):
        calls.append(("model_info", repo_id, revision, files_metadata))
        return ModelInfo(id=repo_id, sha=commit, siblings=siblings)

    def headers(repo_id, *, revision=None, **kw):
        calls.append(("headers", repo_id, revision))
        files, weight_map = {}, {}
        for name in (n for n in names if n.endswith(".safetensors")):
            data = (folder / name).read_bytes()
            header = json.loads(data[8 : 8 + struct.unpack("<Q", data[:8])[0]])
            meta = header.pop("__metadata__", {})
            tensors = {k: TensorInfo(v["dtype"], v["shape"], tuple(v["data_offsets"])) for k, v in header.items()}
            files[name] = SafetensorsFileMetadata(metadata=meta, tensors=tensors)
            weight_map.update(dict.fromkeys(tensors, name))
        return SafetensorsRepoMetadata(metadata=None, sharded=True, weight_map=weight_map, files_metadata=files)

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", model_info)
    monkeypatch.setattr(huggingface_hub, "get_safetensors_metadata", headers)
    return calls


def test_fetch_remote_reads_hashes_and_headers_of_one_commit(monkeypatch):
    calls = hub_answers(PRUNED, monkeypatch)
    remote = fetch_remote("acme/pruned", "main")
    # the file list with hashes first; then the headers, pinned to the commit it named
    assert calls == [("model_info", "acme/pruned", "main", True), ("headers", "acme/pruned", COMMIT)]
    assert remote.commit == COMMIT and remote.revision == "main"
    local = open_checkpoint(PRUNED)
    assert remote.safetensors_files == sorted(local.shards)
    for name, info in local.tensors.items():
        got = remote.tensors[name]
        assert (got.dtype, got.shape, got.file) == (info.dtype.name, info.shape, info.file)
        assert got.data_offsets[1] - got.data_offsets[0] == info.nbytes
    assert remote.files["config.json"].sha256 is None  # not in LFS: no hash to compare
    assert {remote.files[n].sha256 for n in local.shards} == {sha(PRUNED / n) for n in local.shards}


def test_compare_remote_tells_which_files_a_download_would_change(monkeypatch):
    hub_answers(PRUNED, monkeypatch)
    remote = fetch_remote("acme/pruned")
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


def test_fetch_remote_without_safetensors_is_one_line(monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import NotASafetensorsRepoError

    hub_answers(PRUNED, monkeypatch)

    def headers(repo_id, **kw):
        raise NotASafetensorsRepoError(f"'{repo_id}' is not a safetensors repo. Couldn't find 'model.safetensors'")

    monkeypatch.setattr(huggingface_hub, "get_safetensors_metadata", headers)
    with pytest.raises(SurgeonError, match=r"^acme/x: has no \.safetensors files on the Hub$"):
        fetch_remote("acme/x")


# ---------- diff --download: hashes and headers first ----------


def test_hub_diff_download_compares_hashes_and_headers_before_downloading(hub_cache, monkeypatch, tmp_path):
    calls = hub_answers(PRUNED, monkeypatch)
    said = []

    def say(line):
        said.append(line)
        assert len(calls) == 2  # file list and headers fetched; the download has not started

    # offline, the download itself then fails: the comparison came before any weight byte
    with pytest.raises(SurgeonError, match=r"^acme/pruned: cannot reach the Hub, HF_HUB_OFFLINE is set$"):
        open_pair(BASE, "acme/pruned", download=True, cache_dir=tmp_path / "hashes", say=say)
    assert said == [
        "acme/pruned at 0123456789ab, from the Hub's hashes and headers (nothing downloaded yet): 0 of 2 "
        "safetensors files (0.00 GB) identical to BASE's, 2 changed; tensors: same names, dtypes and shapes"
    ]
    said.clear()
    with pytest.raises(SurgeonError):
        open_pair("acme/pruned", PRUNED, download=True, cache_dir=tmp_path / "hashes", say=said.append)
    assert "2 of 2 safetensors files (0.00 GB) identical to OTHER's; tensors: same" in said[0]


def test_hub_diff_download_of_cached_ids_asks_the_hub_nothing(hub_cache, monkeypatch):
    calls = hub_answers(PRUNED, monkeypatch)
    base, other = open_pair(BASE, "acme/tiny", download=True, say=pytest.fail)
    assert other.root.name == COMMIT and base.tensors.keys() == other.tensors.keys()
    assert calls == []


def test_cli_hub_hint_only_where_the_command_has_download(hub_cache):
    """`surgeon tui` has no --download: its error must not tell the user to pass one."""
    proc = run_cli("tui", "acme/absent", str(BASE))
    assert_one_line(proc, NOT_CACHED)
    assert "--download" not in proc.stderr
