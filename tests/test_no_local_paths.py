"""What is published beside the weights names no path of the machine that wrote it.

A manifest and the model-card sections go up to the Hub with the weights: a path in them
(`/home/me/models/base`) leaks where the author keeps things and points nowhere on anyone
else's machine. They name a base by its Hub id and commit where it is one (a Hub id given,
or a folder of the Hugging Face cache), otherwise by its folder's name and its hashes; the
calibration and evaluation texts and the tokenizer by their names. `verify` then finds the
base given with --base, or a recorded Hub base in the local cache, and still reads older
manifests that record absolute paths. The demo's artifacts are checked in
tests/recover/test_recover.py's demo test, which runs it anyway.
"""

from __future__ import annotations

import json
import os
import shutil

from click.testing import CliRunner

from surgeon.cli.main import main
from surgeon.demo import DEMO_CANDIDATE, DEMO_MODEL, DEMO_TEXT
from surgeon.recover.verify import verify
from tests.helpers import local_path_leaks

MANIFEST = "prune_manifest.json"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def invoke(*args, codes=(0,)):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code in codes, result.output
    return result


def test_prune_salvage_and_card_name_no_local_path(tmp_path):
    """Every input named by an absolute path (base, candidate, corpus, eval text, tokenizer,
    a --workdir whose earlier work is discarded): the manifests and the card hold none."""
    base = shutil.copytree(DEMO_MODEL, tmp_path / "models" / "my-base")
    corpus = shutil.copy(DEMO_TEXT, tmp_path / "private-corpus.txt")
    workdir, short = tmp_path / "work", ["--device", "cpu", "--calib", corpus, "--calib-tokens", "256", "-q"]
    invoke("prune", base, "-o", tmp_path / "first", "--layers", "0", "--workdir", workdir, *short)
    measured = ["--eval", "--eval-text", DEMO_TEXT.resolve(), "--eval-tokens", "64"]
    tokenizer = ["--tokenizer", base.resolve()]
    invoke(
        "prune",
        base.resolve(),
        "-o",
        tmp_path / "pruned",
        "--layers",
        "0-1",
        "--workdir",
        workdir,
        *short,
        *tokenizer,
        *measured,
    )
    manifest = json.loads((tmp_path / "pruned" / MANIFEST).read_text())
    assert manifest["base"] | {"shards": None} == {
        "source": "my-base",
        "kind": "folder",
        "revision": None,
        "shards": None,
    }
    assert manifest["options"]["tokenizer"] == "my-base" and manifest["calibration"]["source"] == "private-corpus.txt"
    assert any("work: inputs or options changed" in m for m in manifest["messages"])  # the workdir, by name

    out = tmp_path / "salvaged"
    invoke("salvage", tmp_path / "pruned", "--base", base, "--keep", "0", "-o", out)
    salvaged = json.loads((out / MANIFEST).read_text())["salvage"]
    assert (salvaged["base"]["source"], salvaged["candidate"]["source"]) == ("my-base", "pruned")
    card = tmp_path / "card" / "CARD.md"
    card.parent.mkdir()
    invoke("diff", base.resolve(), out.resolve(), "--markdown", "-o", card, codes=(1,))
    assert "of `salvaged` against `my-base`." in card.read_text()
    for folder in (tmp_path / "first", tmp_path / "pruned", out, card.parent):
        assert local_path_leaks(folder, tmp_path) == {}, folder

    # verify: the base given is found and checked; a base named only is not looked for
    given = invoke("verify", out, "--base", base)
    assert "ok   the manifest's claims hold against the base" in given.output
    alone = verify(out)
    assert not alone.claims_checked and not alone.ok  # claims unchecked: not verified (exit 1)
    assert any("recorded by its name (my-base)" in note and "--base" in note for note in alone.discrepancies)


def test_an_older_manifests_paths_are_read_and_not_carried_forward(tmp_path):
    """A manifest an older surgeon wrote names its base by absolute path: verify still finds
    the base there, and a salvage of that candidate carries the record forward by name."""
    candidate = shutil.copytree(DEMO_CANDIDATE, tmp_path / "candidate")
    manifest = json.loads((candidate / MANIFEST).read_text())
    legacy = {"source": str(DEMO_MODEL.resolve()), "path": str(DEMO_MODEL.resolve()), "revision": None}
    manifest["base"] = legacy | {"shards": manifest["base"]["shards"]}
    manifest["options"]["tokenizer"] = str(DEMO_MODEL.resolve())
    (candidate / MANIFEST).write_text(json.dumps(manifest))
    report = verify(candidate)
    assert report.ok and report.claims_checked, report.notes  # found at the recorded path
    out = tmp_path / "out"
    invoke("salvage", candidate, "--base", DEMO_MODEL, "--keep", "0-3", "-o", out)
    carried = json.loads((out / MANIFEST).read_text())
    assert carried["base"] | {"shards": None} == {"source": "model", "kind": "folder", "revision": None, "shards": None}
    assert carried["options"]["tokenizer"] == "model"
    assert local_path_leaks(out, tmp_path) == {}


def hub_cache(tmp_path, monkeypatch):
    """DEMO_MODEL as `acme/tiny` at COMMIT in a Hugging Face cache of the test's own."""
    from huggingface_hub import constants

    repo = tmp_path / "hub" / "models--acme--tiny"
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    (repo / "blobs").mkdir()
    for file in DEMO_MODEL.iterdir():
        blob = repo / "blobs" / f"blob-{file.name}"
        shutil.copyfile(file, blob)
        os.symlink(f"../../blobs/{blob.name}", snapshot / file.name)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return snapshot


def test_a_hub_base_is_recorded_by_id_and_commit_and_verify_finds_it_in_the_cache(tmp_path, monkeypatch):
    """Given as a Hub id or as its snapshot folder, the base is `acme/tiny` at its commit;
    verify, given no base, opens that snapshot from the local cache, never a local folder
    that happens to be called `acme/tiny`."""
    snapshot = hub_cache(tmp_path, monkeypatch)
    monkeypatch.chdir(tmp_path)
    for given, out in (("acme/tiny", "by-id"), (snapshot, "by-folder")):
        invoke("salvage", DEMO_CANDIDATE, "--base", given, "--keep", "0-3", "-o", tmp_path / out)
        record = json.loads((tmp_path / out / MANIFEST).read_text())["salvage"]["base"]
        assert (record["source"], record["kind"], record["revision"]) == ("acme/tiny", "hub", COMMIT)
        assert local_path_leaks(tmp_path / out, tmp_path) == {}
    card = invoke("diff", "acme/tiny", tmp_path / "by-id", "--markdown", codes=(1,)).stdout
    assert f"of `by-id` against `acme/tiny@{COMMIT}`." in card
    shutil.copytree(DEMO_CANDIDATE, tmp_path / "acme" / "tiny")  # a folder named like the id: not the base
    report = verify(tmp_path / "by-id")
    assert report.ok and report.claims_checked, report.notes + report.discrepancies
    assert report.base == f"acme/tiny@{COMMIT}"
    shutil.rmtree(tmp_path / "hub" / "models--acme--tiny" / "snapshots")
    gone = verify(tmp_path / "by-id")
    assert not gone.claims_checked and not gone.ok
    assert any(f"acme/tiny@{COMMIT}: not in the local Hugging Face cache" in n for n in gone.discrepancies)


def test_a_recorded_hub_revision_must_be_a_commit(tmp_path, monkeypatch):
    """surgeon records the commit it read; a manifest naming a branch or a path there (an
    edited or hostile one) is not looked up, and verify says why."""
    hub_cache(tmp_path, monkeypatch)
    out = tmp_path / "out"
    invoke("salvage", DEMO_CANDIDATE, "--base", "acme/tiny", "--keep", "0-3", "-o", out)
    manifest = json.loads((out / MANIFEST).read_text())
    for revision in ("main", "../../../../etc"):
        manifest["salvage"]["base"]["revision"] = revision
        (out / MANIFEST).write_text(json.dumps(manifest))
        report = verify(out)
        assert not report.claims_checked and not report.ok
        assert any("the recorded revision is not a commit hash" in note for note in report.discrepancies), report.notes
