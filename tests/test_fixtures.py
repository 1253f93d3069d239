import hashlib
import json

import torch
from transformers import AutoModelForCausalLM

from fixtures.build_fixtures import build
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
    the base named relative to the repository (not the machine that built it)."""
    from surgeon.demo import DEMO_CANDIDATE as candidate
    from surgeon.demo import FIXTURE as base
    from surgeon.verify import verify

    manifest = json.loads((candidate / "prune_manifest.json").read_text())
    assert manifest["base"]["path"] == "fixtures/gemma4-tiny-trained"
    assert manifest["written"]["layers"] == list(range(8))
    report = verify(candidate, base)
    assert report.ok, report.discrepancies
