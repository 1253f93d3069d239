"""`surgeon prune --mode reshape` (issue 21.3): the fraction solved for every layer type, the
heads chosen whole-group-balanced, healed in mask geometry, then sliced. End to end on the
demo Gemma 4 (two head sizes, k_eq_v full layers, KV groups dropped in the sliding layers):
the reshaped model gives the logits of the mask-mode model it was sliced from (rebuilt here
from the base and the reshaped o_proj, independently of the slicer), loads in stock
transformers with no missing key, and is smaller by what the manifest says."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import save_file

from surgeon.cli.main import main
from surgeon.demo import DEMO_MODEL
from surgeon.model.geometry import config_geometry, text_config
from tests.prune.test_reshape import load, logits, parameters

SHORT = ["--calib-tokens", "512", "--sample-tokens", "128", "-q"]


@pytest.fixture(scope="module")
def reshaped(tmp_path_factory):
    out = tmp_path_factory.mktemp("reshape") / "out"
    result = CliRunner().invoke(
        main, ["prune", str(DEMO_MODEL), "-o", str(out), "--mode", "reshape", "--prune-frac", "0.25", *SHORT]
    )
    assert result.exit_code == 0, result.output
    return out, result.output


def as_float32(folder) -> dict[str, np.ndarray]:
    """Every tensor of a folder as float32 (the demo is bf16, which float32 holds exactly)."""
    from safetensors.torch import load_file

    tensors = {}
    for shard in sorted(folder.glob("*.safetensors")):
        tensors.update({k: v.float().numpy() for k, v in load_file(shard).items()})
    return tensors


def masked_equivalent(base, out, tmp_path):
    """The mask-mode model the reshape stands for: the base, each removed head's q rows zeroed,
    and o_proj the reshaped one put back with zero columns where the removed heads were."""
    tensors, sliced = as_float32(base), as_float32(out)
    manifest = json.loads((out / "prune_manifest.json").read_text())
    for layer in manifest["reshape"]["layers"]:
        dim, kept = layer["head_dim"], layer["kept_heads"]
        q = next(n for n in tensors if n.endswith(f"layers.{layer['layer']}.self_attn.q_proj.weight"))
        o = q.replace("q_proj", "o_proj")
        for head in layer["removed_heads"]:
            tensors[q][head * dim : (head + 1) * dim] = 0
        full = np.zeros_like(tensors[o])
        columns = np.concatenate([np.arange(h * dim, (h + 1) * dim) for h in kept])
        full[:, columns] = sliced[o]
        tensors[o] = full
    folder = tmp_path / "masked"
    shutil.copytree(base, folder, ignore=shutil.ignore_patterns("*.safetensors", "*.index.json", "prune_manifest.json"))
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    return folder, manifest


def test_the_reshaped_model_is_the_mask_mode_model_made_smaller(reshaped, tmp_path):
    out, printed = reshaped
    assert "reshaped: 2 of 8 query heads removed in each of layers 0-7" in printed
    masked, manifest = masked_equivalent(DEMO_MODEL, out, tmp_path)
    layers = manifest["reshape"]["layers"]
    assert all(len(layer["removed_heads"]) == 2 for layer in layers)
    config = text_config(json.loads((DEMO_MODEL / "config.json").read_text()), None)
    for layer in layers:  # balanced: every kept KV group keeps the same number of query heads
        size = 8 // config_geometry(config, layer["layer"])[2]
        per_group = [sum(1 for h in layer["kept_heads"] if h // size == g) for g in layer["kept_kv_heads"]]
        assert len(set(per_group)) == 1 and per_group[0] > 0, layer
    before, _ = load(masked)
    after, info = load(out)
    assert {k: v for k, v in info.items() if v and k != "error_msgs"} == {}, info
    np.testing.assert_allclose(logits(after), logits(before), atol=1e-5, rtol=0)
    assert parameters(before) - parameters(after) == manifest["reshape"]["parameters_removed"] > 0
    assert manifest["options"]["mode"] == "reshape" and manifest["head_counts"][0]["heads_pruned"] == 2


@pytest.mark.parametrize(
    "args, words",
    [
        (["--prune-frac", "0.125"], "nearest: 0.25"),
        (["--prune-frac", "0.25", "--layers", "0-3"], "a reshape prunes every layer"),
        (["--prune-frac", "0.25", "--layer-frac", "1=0.5"], "no per-layer fraction"),
    ],
)
def test_a_reshape_that_cannot_be_made_is_one_line_before_any_work(tmp_path, args, words):
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["prune", str(DEMO_MODEL), "-o", str(out), "--mode", "reshape", *args, "-q"])
    assert result.exit_code == 2 and words in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and not out.exists()
    assert not any(p.name.startswith(".out.") for p in tmp_path.iterdir())


def test_verify_holds_the_reshape_against_the_base_and_catches_a_false_claim(reshaped, tmp_path):
    out, _ = reshaped
    result = CliRunner().invoke(main, ["verify", str(out), "--base", str(DEMO_MODEL)])
    assert result.exit_code == 0, result.output
    assert "the reshape's claims hold: layers 0-7 keep the base's q, k and v rows" in result.output
    tampered = shutil.copytree(out, tmp_path / "tampered")
    manifest = json.loads((tampered / "prune_manifest.json").read_text())
    layer = manifest["reshape"]["layers"][3]
    kept, removed = layer["kept_heads"], layer["removed_heads"]
    kept[0], removed[0] = removed[0], kept[0]  # claims another head was kept
    (tampered / "prune_manifest.json").write_text(json.dumps(manifest))
    result = CliRunner().invoke(main, ["verify", str(tampered), "--base", str(DEMO_MODEL)])
    assert result.exit_code == 1 and "layer 3: q_proj's rows for head" in result.output, result.output


def test_salvage_of_a_reshaped_candidate_says_to_salvage_the_mask_mode_build(reshaped, tmp_path):
    out, _ = reshaped
    args = ["salvage", str(out), "--base", str(DEMO_MODEL), "--keep", "0-3", "-o", str(tmp_path / "s")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "salvage works on the mask-mode build, before the reshape" in result.output
