"""`surgeon prune --ffn-frac`: MLP channels removed in mask mode and down_proj healed, on
the tiny trained Gemma 4 and tiny random models of other families."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from surgeon.demo import DEMO_MODEL, DEMO_TEXT
from surgeon.format.checkpoint import open_checkpoint
from surgeon.model.families import model_layout
from surgeon.prune.engine import prune
from surgeon.quality.evaluate import corpus_nll
from tests.helpers import sha, tiny_prune_options
from tests.tiny_models import save_tiny


def _tensors(folder) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for shard in sorted(folder.glob("*.safetensors")):
        out.update(load_file(shard))
    return out


def test_channels_only_zero_gate_up_rows_and_down_columns(tmp_path):
    result = prune(DEMO_MODEL, tmp_path / "out", tiny_prune_options(ffn_frac=0.25, prune_frac=0.0, layers="0-1"))
    base, out = _tensors(DEMO_MODEL), _tensors(tmp_path / "out")
    for layer in result.manifest["layers"]:
        prefix = f"model.layers.{layer['layer']}.mlp."
        removed = layer["ffn_pruned_channels"]
        assert layer["ffn_width"] == 128 and len(removed) == 32 and layer["pruned_heads"] == []
        for name in ("gate_proj", "up_proj"):
            weight = out[prefix + name + ".weight"]
            assert torch.all(weight[removed] == 0)
            kept = [j for j in range(128) if j not in removed]
            assert torch.equal(weight[kept], base[prefix + name + ".weight"][kept])  # kept rows: the base's bytes
        down = out[prefix + "down_proj.weight"]
        assert torch.all(down[:, removed] == 0) and not torch.equal(down, base[prefix + "down_proj.weight"])
        assert layer["ffn_refit"]["rel_residual"] > 0 and layer["ffn_bias"] == "absent"
    changed = {n for n in out if not torch.equal(out[n], base[n])}
    assert changed == {f"model.layers.{i}.mlp.{p}_proj.weight" for i in (0, 1) for p in ("gate", "up", "down")}
    assert result.manifest["layer_passes"] == 2 * 2  # capture and propagate, per pruned layer


def test_heads_and_channels_take_three_passes_a_layer(tmp_path):
    result = prune(DEMO_MODEL, tmp_path / "out", tiny_prune_options(ffn_frac=0.1, prune_frac=0.25, layers="0-1"))
    assert result.manifest["layer_passes"] == 3 * 2
    for layer in result.manifest["layers"]:
        assert len(layer["pruned_heads"]) == 2 and len(layer["ffn_pruned_channels"]) == 13
    names = set(result.manifest["written"]["tensors"])
    assert "model.layers.0.self_attn.o_proj.weight" in names and "model.layers.0.mlp.down_proj.weight" in names


def test_no_channel_removed_is_the_identity(tmp_path):
    """A fraction that rounds to no channel: every byte of the base, through capture and heal."""
    result = prune(DEMO_MODEL, tmp_path / "out", tiny_prune_options(ffn_frac=0.001, prune_frac=0.0, layers="2"))
    assert result.manifest["layers"][0]["ffn_pruned_channels"] == []
    for shard in DEMO_MODEL.glob("*.safetensors"):
        assert sha(tmp_path / "out" / shard.name) == sha(shard)


def _kl(base_path, pruned_path, text) -> float:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_path)
    ids = tokenizer(text.read_text()[:4000], return_tensors="pt").input_ids[:, :512]
    with torch.no_grad():
        p = torch.log_softmax(AutoModelForCausalLM.from_pretrained(base_path)(ids).logits.double(), -1)
        q = torch.log_softmax(AutoModelForCausalLM.from_pretrained(pruned_path)(ids).logits.double(), -1)
    return float((p.exp() * (p - q)).sum(-1).mean())


def test_the_heal_lowers_kl_at_a_quarter_of_the_channels(tmp_path):
    options = dict(ffn_frac=0.25, prune_frac=0.0, layers="all", calib=str(DEMO_TEXT))
    healed = prune(DEMO_MODEL, tmp_path / "healed", tiny_prune_options(**options)).output
    zeroed = prune(DEMO_MODEL, tmp_path / "zeroed", tiny_prune_options(heal="none", **options)).output
    kl_healed, kl_zeroed = _kl(DEMO_MODEL, healed, DEMO_TEXT), _kl(DEMO_MODEL, zeroed, DEMO_TEXT)
    assert 0 < kl_healed < kl_zeroed
    nll = [corpus_nll(m, DEMO_TEXT) for m in (DEMO_MODEL, healed, zeroed)]
    assert nll[0] < nll[1] < nll[2]


@pytest.mark.parametrize("importance", ["wanda", "flap", "obs"])
def test_every_importance_prunes(tmp_path, importance):
    result = prune(
        DEMO_MODEL,
        tmp_path / "out",
        tiny_prune_options(ffn_frac=0.25, prune_frac=0.0, layers="3", ffn_importance=importance),
    )
    assert len(result.manifest["layers"][0]["ffn_pruned_channels"]) == 32
    assert result.manifest["options"]["ffn_importance"] == importance


def test_a_llama_mlp_bias_is_refit_and_the_removed_rows_biases_zeroed(tmp_path):
    base = _with_tokenizer(save_tiny("llama", tmp_path / "base", mlp_bias=True, vocab_size=512))
    result = prune(base, tmp_path / "out", tiny_prune_options(ffn_frac=0.25, prune_frac=0.0, layers="0"))
    before, after = _tensors(base), _tensors(tmp_path / "out")
    layer = result.manifest["layers"][0]
    removed, prefix = layer["ffn_pruned_channels"], "model.layers.0.mlp."
    assert layer["ffn_bias"] == "refit" and len(removed) == 16
    for name in ("gate_proj.bias", "up_proj.bias"):
        assert torch.all(after[prefix + name][removed] == 0)
    assert not torch.equal(after[prefix + "down_proj.bias"], before[prefix + "down_proj.bias"])


def test_cli_ffn_frac_alone_prunes_no_head(tmp_path):
    from surgeon.cli.main import main

    out = tmp_path / "out"
    calib = ["--calib", str(DEMO_TEXT), "--layers", "0"]
    result = CliRunner().invoke(main, ["prune", str(DEMO_MODEL), "-o", str(out), "--ffn-frac", "0.1", *calib])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "prune_manifest.json").read_text())
    assert manifest["options"]["prune_frac"] == 0.0 and manifest["options"]["ffn_frac"] == 0.1
    assert manifest["layers"][0]["pruned_heads"] == [] and len(manifest["layers"][0]["ffn_pruned_channels"]) == 13
    both = CliRunner().invoke(
        main, ["prune", str(DEMO_MODEL), "-o", str(tmp_path / "b"), "--ffn-frac", "0.1", "--prune-frac", "0.25", *calib]
    )
    assert both.exit_code == 0, both.output
    assert len(json.loads((tmp_path / "b" / "prune_manifest.json").read_text())["layers"][0]["pruned_heads"]) == 2


@pytest.mark.parametrize("frac", ["1", "-0.1", "nan"])
def test_cli_refuses_a_fraction_out_of_range(tmp_path, frac):
    from surgeon.cli.main import main

    result = CliRunner().invoke(main, ["prune", str(DEMO_MODEL), "-o", str(tmp_path / "o"), "--ffn-frac", frac])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert not (tmp_path / "o").exists()


def _with_tokenizer(base):
    for name in ("tokenizer.json", "tokenizer_config.json"):  # any tokenizer will do for calibration
        shutil.copy(DEMO_MODEL / name, base)
    return base


def _tiny_gemma4(path, **overrides):
    from transformers import AutoModelForCausalLM, Gemma4TextConfig

    config = Gemma4TextConfig(
        vocab_size=512,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        global_head_dim=16,
        layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
        sliding_window=4,
        max_position_embeddings=64,
        **overrides,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    return _with_tokenizer(path)


def test_a_mixture_of_experts_is_refused_in_one_line(tmp_path):
    base = _tiny_gemma4(
        tmp_path / "moe", enable_moe_block=True, num_experts=2, top_k_experts=1, moe_intermediate_size=16
    )
    assert model_layout(open_checkpoint(base)).layers[0].experts
    with pytest.raises(Exception, match=r"mixture of experts .* dense MLPs only"):
        prune(base, tmp_path / "out", tiny_prune_options(ffn_frac=0.1))
    assert not (tmp_path / "out").exists()


def test_diff_reports_the_channels_removed_per_layer(channels_0_1):
    from surgeon.cli.main import main

    result = CliRunner().invoke(main, ["diff", str(DEMO_MODEL), str(channels_0_1)], terminal_width=120)
    assert result.exit_code == 1, result.output
    assert "MLP channels removed 32 of 128 in each of layers 0-1" in result.output
    assert "zeroed 32 of 128 channels" in result.output
    data = json.loads(CliRunner().invoke(main, ["diff", str(DEMO_MODEL), str(channels_0_1), "--json"]).output)
    rows = data["summary"]["ffn_channels_removed"]
    manifest = json.loads((channels_0_1 / "prune_manifest.json").read_text())
    assert [(r["layer"], r["removed"], r["rows_kept"]) for r in rows] == [
        (layer["layer"], layer["ffn_pruned_channels"], []) for layer in manifest["layers"]
    ]
    down = next(t for t in data["tensors"] if t["name"] == "model.layers.0.mlp.down_proj.weight")
    assert down["channels"]["zeroed"] == manifest["layers"][0]["ffn_pruned_channels"]
    markdown = CliRunner().invoke(main, ["diff", str(DEMO_MODEL), str(channels_0_1), "--markdown"]).output
    assert "MLP channels removed (`down_proj` input columns zeroed): 32 of 128 in layers 0-1." in markdown


def test_verify_holds_the_channel_claims_to_the_bytes(channels_0_1, tmp_path):
    from surgeon.recover.verify import verify

    assert verify(channels_0_1, DEMO_MODEL).ok
    lying = tmp_path / "lying"
    shutil.copytree(channels_0_1, lying)
    manifest = json.loads((lying / "prune_manifest.json").read_text())
    claimed = manifest["layers"][1]["ffn_pruned_channels"]
    other = next(c for c in range(128) if c not in claimed)
    manifest["layers"][1]["ffn_pruned_channels"] = sorted([*claimed[1:], other])  # one channel swapped
    (lying / "prune_manifest.json").write_text(json.dumps(manifest))
    report = verify(lying, DEMO_MODEL)
    assert not report.ok
    assert any("layer 1: manifest says 32 MLP channels were removed" in d for d in report.discrepancies)


def test_salvage_rolls_back_a_channel_pruned_layer_and_eval_measures_it(channels_0_1, tmp_path):
    from surgeon.cli.main import main
    from surgeon.recover.verify import verify

    out = tmp_path / "kept"
    runner = CliRunner()
    result = runner.invoke(
        main, ["salvage", str(channels_0_1), "--base", str(DEMO_MODEL), "--keep", "0", "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    report = verify(out, DEMO_MODEL)
    assert report.ok, report.discrepancies
    base, kept = _tensors(DEMO_MODEL), _tensors(out)
    assert torch.equal(kept["model.layers.1.mlp.down_proj.weight"], base["model.layers.1.mlp.down_proj.weight"])
    args = ["eval", str(out), "--base", str(DEMO_MODEL), "--eval-text", str(DEMO_TEXT), "--json", "--no-progress"]
    measured = runner.invoke(main, args)
    assert measured.exit_code == 0, measured.output
    assert json.loads(measured.stdout)["totals"]["kl_mean"] > 0


def _logits(folder, ids):
    from transformers import AutoModelForCausalLM

    with torch.no_grad():
        return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)(ids).logits


@pytest.mark.parametrize("heads", [0.0, 0.25])
def test_reshape_slices_the_channels_and_equals_the_mask_build(tmp_path, heads):
    """--mode reshape: the channels sliced out, intermediate_size one number, the same logits
    as the mask build of the same channels, parameters down by exactly the slices."""
    from transformers import AutoModelForCausalLM

    from surgeon.prune.reshape import reshape
    from surgeon.recover.verify import verify

    options = dict(ffn_frac=0.25, prune_frac=heads, layers="all")
    masked = prune(DEMO_MODEL, tmp_path / "mask", tiny_prune_options(**options)).output
    result = prune(DEMO_MODEL, tmp_path / "reshape", tiny_prune_options(mode="reshape", **options))
    out = result.output
    config = json.loads((out / "config.json").read_text())
    assert config["intermediate_size"] == 96
    assert "reshaped:" in result.reshape_line and "32 of 128 MLP channels" in result.reshape_line
    model = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    info = model[1]
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    ids = torch.arange(40)[None] % 500
    if heads == 0.0:  # the mask build of the same channels: the same model
        torch.testing.assert_close(_logits(out, ids), _logits(masked, ids), rtol=0, atol=1e-5)
    if heads == 0.0:  # the mask build reshaped by `surgeon reshape` (with heads, mask mode's are not balanced)
        again = reshape(masked, tmp_path / "again")
        torch.testing.assert_close(_logits(again.output, ids), _logits(masked, ids), rtol=0, atol=1e-5)
    count = lambda folder: sum(t.numel for t in open_checkpoint(folder).tensors.values())  # noqa: E731
    layers, hidden = 8, 64
    assert count(DEMO_MODEL) - count(out) == result.manifest["reshape"]["parameters_removed"]
    if heads == 0.0:
        assert result.manifest["reshape"]["parameters_removed"] == layers * 3 * 32 * hidden
    record = result.manifest["reshape"]["layers"][0]
    assert record["ffn_width"] == 128 and len(record["ffn_removed_channels"]) == 32
    report = verify(out, DEMO_MODEL)
    assert report.ok, report.discrepancies


@pytest.fixture(scope="module")
def channels_reshaped(tmp_path_factory):
    out = tmp_path_factory.mktemp("ffn-reshape") / "out"
    prune(DEMO_MODEL, out, tiny_prune_options(ffn_frac=0.25, prune_frac=0.0, layers="all", mode="reshape"))
    return out


@pytest.mark.parametrize("lie", ["channel swapped", "layer left out", "width", "malformed"])
def test_verify_refuses_a_reshape_block_that_lies_about_channels(channels_reshaped, tmp_path, lie):
    from surgeon.recover.verify import verify

    lying = shutil.copytree(channels_reshaped, tmp_path / "lying")
    manifest = json.loads((lying / "prune_manifest.json").read_text())
    entry = manifest["reshape"]["layers"][3]
    if lie == "channel swapped":
        other = next(c for c in range(128) if c not in entry["ffn_removed_channels"])
        entry["ffn_removed_channels"] = sorted([*entry["ffn_removed_channels"][1:], other])
    elif lie == "layer left out":
        del entry["ffn_width"], entry["ffn_removed_channels"]
    elif lie == "width":
        entry["ffn_width"] = 129
    else:
        entry["ffn_removed_channels"] = ["1"]
    (lying / "prune_manifest.json").write_text(json.dumps(manifest))
    if lie == "malformed":
        from surgeon.cli.main import main

        result = CliRunner().invoke(main, ["verify", str(lying), "--base", str(DEMO_MODEL)])
        assert result.exit_code == 2 and "Traceback" not in result.output
        assert "ffn_removed_channels are not channels in order" in result.output
        return
    report = verify(lying, DEMO_MODEL)
    assert not report.ok
    assert any("layer 3" in d for d in report.discrepancies), report.discrepancies


def test_reshape_of_a_llama_with_mlp_biases(tmp_path):
    from transformers import AutoModelForCausalLM

    from surgeon.recover.verify import verify

    base = _with_tokenizer(save_tiny("llama", tmp_path / "base", mlp_bias=True, vocab_size=512))
    result = prune(base, tmp_path / "out", tiny_prune_options(ffn_frac=0.25, prune_frac=0.0, mode="reshape"))
    out = _tensors(result.output)
    assert out["model.layers.0.mlp.gate_proj.bias"].shape == (48,) and out[
        "model.layers.0.mlp.down_proj.bias"
    ].shape == (32,)
    _, info = AutoModelForCausalLM.from_pretrained(result.output, output_loading_info=True)
    assert not any(info.values())
    assert verify(result.output, base).ok


def test_reshape_refuses_channels_removed_in_some_layers_only(channels_0_1, tmp_path):
    from surgeon.cli.main import main

    result = CliRunner().invoke(main, ["reshape", str(channels_0_1), "-o", str(tmp_path / "out")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "MLP channels are removed in layers 0-1 only, none in layers 2-7" in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("manifest", [True, False])
def test_diff_of_a_channel_reshape_names_the_channels_removed(channels_reshaped, tmp_path, manifest):
    """With the manifest, and without it (the kept channels matched by their gate rows)."""
    from surgeon.cli.main import main

    other = channels_reshaped
    if not manifest:
        other = shutil.copytree(channels_reshaped, tmp_path / "bare")
        (other / "prune_manifest.json").unlink()
    data = json.loads(CliRunner().invoke(main, ["diff", str(DEMO_MODEL), str(other), "--json"]).output)
    claimed = json.loads((channels_reshaped / "prune_manifest.json").read_text())["reshape"]["layers"]
    rows = data["summary"]["ffn_channels_removed"]
    assert [(r["layer"], r["removed"], r["sliced"]) for r in rows] == [
        (layer["layer"], layer["ffn_removed_channels"], True) for layer in claimed
    ]
    gate = next(t for t in data["tensors"] if t["name"] == "model.layers.2.mlp.gate_proj.weight")
    assert gate["status"] == "reshaped" and gate["channels"]["changed"] == 0  # the kept rows are the base's
    text = CliRunner().invoke(main, ["diff", str(DEMO_MODEL), str(other)], terminal_width=120).output
    assert "MLP channels removed 32 of 128 in each of layers 0-7" in text and "removed 32 of 128 channels" in text


def test_a_killed_channel_prune_resumes_to_the_same_bytes(channels_0_1, tmp_path):
    class Killed(Exception):
        pass

    def kill_after_layer_0(result):
        if result.layer == 0:
            raise Killed()

    options = tiny_prune_options(ffn_frac=0.25, prune_frac=0.0, layers="0-1")
    with pytest.raises(Killed):
        prune(DEMO_MODEL, tmp_path / "out", options, workdir=tmp_path / "work", on_layer_done=kill_after_layer_0)
    resumed = prune(DEMO_MODEL, tmp_path / "out", options, workdir=tmp_path / "work")
    assert resumed.resumed_at == 1
    for shard in channels_0_1.glob("*.safetensors"):
        assert sha(tmp_path / "out" / shard.name) == sha(shard)


def test_the_reshape_preview_counts_the_channels(channels_0_1):
    from surgeon.prune.reshape import preview

    ckpt = open_checkpoint(channels_0_1)
    manifest = json.loads((channels_0_1 / "prune_manifest.json").read_text())
    removed = {layer["layer"]: layer["ffn_pruned_channels"] for layer in manifest["layers"]}
    some = preview(ckpt, {}, {}, removed)
    assert some.kept is None and some.problem == "MLP channels are removed in layers 0-1 only, none in layers 2-7"
    every = preview(ckpt, {}, {}, {layer: list(range(32)) for layer in range(8)})
    assert every.kept == 8 and every.parameters_removed == 8 * 3 * 32 * 64
    assert preview(ckpt, {}, {}, {}).problem == "no head is removed"


def test_a_reshape_of_heads_and_channels_compares_the_kept_heads_too(tmp_path):
    from surgeon.diff.engine import DiffOptions, diff_checkpoints
    from surgeon.diff.report import channel_rows, reshape_rows

    options = tiny_prune_options(ffn_frac=0.25, prune_frac=0.25, layers="all", mode="reshape")
    out = prune(DEMO_MODEL, tmp_path / "out", options).output
    report = diff_checkpoints(open_checkpoint(DEMO_MODEL), open_checkpoint(out), DiffOptions())
    assert {row.kept for row in reshape_rows(report)} == {"identical"}  # the MLP's rows are not the heads'
    assert [len(row.removed) for row in channel_rows(report)] == [32] * 8
