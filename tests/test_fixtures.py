import hashlib
import json
import re

import torch
from transformers import AutoModelForCausalLM

from fixtures.build_fixtures import build
from surgeon.demo import DEMO_MODEL
from tests.helpers import BASE, FIXTURES, PRUNED


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_build_is_deterministic_and_matches_the_committed_fixtures(tmp_path):
    build(tmp_path)
    for variant in ("base", "pruned"):
        committed = FIXTURES / "gemma4-tiny" / variant
        fresh = tmp_path / "gemma4-tiny" / variant
        assert sorted(p.name for p in fresh.iterdir()) == sorted(p.name for p in committed.iterdir())
        for path in committed.glob("*.safetensors"):
            assert digest(fresh / path.name) == digest(path), path
        assert json.loads((fresh / "model.safetensors.index.json").read_text()) == json.loads(
            (committed / "model.safetensors.index.json").read_text()
        )


def test_fixtures_load_in_stock_transformers():
    for path in (BASE, PRUNED):
        model = AutoModelForCausalLM.from_pretrained(path)
        assert model.dtype == torch.bfloat16
        layer5 = model.model.layers[5].self_attn
        assert layer5.head_dim == 16 and layer5.v_proj is None
        assert model.model.layers[0].self_attn.head_dim == 8
        with torch.no_grad():
            logits = model(torch.tensor([[2, 10, 20, 30]])).logits
        assert logits.shape == (1, 4, 512) and torch.isfinite(logits).all()


def test_demo_candidate_is_the_trained_model_pruned_and_verifies():
    """`surgeon tui`'s demo pair: every layer pruned, the manifest true to the bytes, and
    the base named by its folder's name and hashes (not by the machine that built it)."""
    from surgeon.demo import DEMO_CANDIDATE as candidate
    from surgeon.demo import DEMO_MODEL as base
    from surgeon.recover.verify import verify

    manifest = json.loads((candidate / "prune_manifest.json").read_text())
    assert manifest["base"]["source"] == "model" and "path" not in manifest["base"]
    assert manifest["written"]["layers"] == list(range(8))
    report = verify(candidate, base)
    assert report.ok, report.discrepancies


# Folders of a machine, never of a repository: a committed file naming one leaks where it
# was built and points nowhere on anyone else's machine. JSON writes C:\ as C:\\.
MACHINE_PATH = re.compile(rb"(?<![\w.~-])/(?:work|home|root|tmp|Users|private/var)/|\b[A-Za-z]:\\\\?[\w$]")


DATA = FIXTURES.parent / "surgeon" / "_data" / "demo"  # the demo checkpoints ship as package data


def committed_files():
    for path in sorted([*FIXTURES.rglob("*"), *DATA.rglob("*")]):
        if path.is_file() and "__pycache__" not in path.parts:
            yield path


def test_no_committed_fixture_names_a_machine_path():
    files = list(committed_files())
    assert any(p.name == "prune_manifest.json" for p in files) and any(p.suffix == ".safetensors" for p in files)
    leaks = {str(p.relative_to(FIXTURES.parent)): m[0] for p in files if (m := MACHINE_PATH.search(p.read_bytes()))}
    assert leaks == {}
    assert MACHINE_PATH.search(b'"source": "/work/main/fixtures/calibration.txt"')  # what it caught
    assert MACHINE_PATH.search(b'"path": "C:\\\\Users\\\\me\\\\corpus.txt"')
    assert not MACHINE_PATH.search(b'"source": "fixtures/gemma4-tiny-trained", "unit": "tok/s"')


def test_prune_manifest_names_the_corpus_by_name_and_hash_not_path(tmp_path):
    """A user's corpus is recorded by its file name, the SHA256 of its bytes and the token
    count: the folder it sits in (often the user's home) stays out of the manifest."""
    from surgeon.prune.engine import PruneOptions, prune
    from surgeon.runtime.settings import RunSettings
    from tests.helpers import sha

    corpus = tmp_path / "private" / "corpus.txt"
    corpus.parent.mkdir()
    corpus.write_text("The sun rises in the east.\nWater boils at one hundred degrees.\n")
    options = PruneOptions(layers="0", run=RunSettings(device="cpu", dtype="float32"), calib=str(corpus))
    manifest = prune(DEMO_MODEL, tmp_path / "out", options).manifest
    calibration = manifest["calibration"]
    assert calibration["source"] == "corpus.txt" and manifest["options"]["calib"] == "corpus.txt"
    assert calibration["file_sha256"] == sha(corpus)
    assert calibration["samples"] == 2 and calibration["tokens"] > 2
    assert str(tmp_path) not in json.dumps(manifest)
