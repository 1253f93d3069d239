import json
import math
import shutil

import pytest
import torch
from click.testing import CliRunner

from surgeon.demo import DEMO_MODEL, DEMO_TEXT
from surgeon.diff.engine import DiffOptions, diff_checkpoints
from surgeon.format.checkpoint import open_checkpoint
from surgeon.model.families import model_layout
from surgeon.prune.engine import prune
from surgeon.prune.heads import heads_to_prune
from surgeon.prune.heal import head_columns, heal_o_proj
from surgeon.prune.importance import mask_heads_hook, select_heads
from surgeon.quality.evaluate import corpus_nll
from surgeon.runtime.stream import Batch, LayerStream
from tests.helpers import make_variant, merged_file, read_tensor, sha, tiny_prune_options

TRAINED = DEMO_MODEL
SHARD1, SHARD2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"


def test_heal_from_gram_equals_least_squares_on_activations():
    torch.manual_seed(0)
    tokens, heads, dim, out = 400, 4, 8, 12
    x = torch.randn(tokens, heads * dim, dtype=torch.float64) @ torch.randn(
        heads * dim, heads * dim, dtype=torch.float64
    )
    w = torch.randn(out, heads * dim, dtype=torch.float64)
    healed, stats = heal_o_proj(w, x.T @ x, [2], dim, ridge_rel=0.0, tokens=tokens)
    kept = head_columns([0, 1, 3], dim)
    expected = torch.linalg.lstsq(x[:, kept], x @ w.T).solution.T
    torch.testing.assert_close(healed[:, kept], expected, rtol=1e-9, atol=1e-9)
    assert torch.all(healed[:, head_columns([2], dim)] == 0)
    residual = (x @ w.T - x[:, kept] @ expected.T).norm() / (x @ w.T).norm()
    assert stats.rel_residual == pytest.approx(float(residual), rel=1e-6)
    assert stats.target_rms == pytest.approx(float((x @ w.T).pow(2).mean().sqrt()), rel=1e-9)


def test_ridge_heal_matches_the_closed_form():
    torch.manual_seed(1)
    x = torch.randn(200, 16, dtype=torch.float64)
    w = torch.randn(5, 16, dtype=torch.float64)
    g = x.T @ x
    healed, stats = heal_o_proj(w, g, [0], 4, ridge_rel=0.1)
    kept = head_columns([1, 2, 3], 4)
    lam = 0.1 * float(torch.diagonal(g[kept][:, kept]).mean())
    system = g[kept][:, kept] + lam * torch.eye(12, dtype=torch.float64)
    expected = (torch.linalg.solve(system, g[kept] @ w.T)).T
    torch.testing.assert_close(healed[:, kept], expected)
    assert stats.ridge == pytest.approx(lam)


def test_anchored_heal_is_ridge_regression_toward_the_kept_columns():
    """min ||X W^T - X_K B||^2 + lambda ||B - W_K^T||^2, checked as the least-squares solution
    of the stacked system [X_K; sqrt(lambda) I] B = [X W^T; sqrt(lambda) W_K^T]."""
    torch.manual_seed(2)
    x = torch.randn(300, 16, dtype=torch.float64) @ torch.randn(16, 16, dtype=torch.float64)
    w = torch.randn(6, 16, dtype=torch.float64)
    g = x.T @ x
    kept = head_columns([0, 2, 3], 4)
    for ridge_rel in (0.0, 0.05, 1.0):
        healed, stats = heal_o_proj(w, g, [1], 4, ridge_rel=ridge_rel, tokens=300, anchored=True)
        lam = ridge_rel * float(torch.diagonal(g[kept][:, kept]).mean())
        stacked = torch.cat([x[:, kept], math.sqrt(lam) * torch.eye(12, dtype=torch.float64)])
        target = torch.cat([x @ w.T, math.sqrt(lam) * w[:, kept].T])
        expected = torch.linalg.lstsq(stacked, target).solution.T
        torch.testing.assert_close(healed[:, kept], expected, rtol=1e-8, atol=1e-8)
        assert torch.all(healed[:, head_columns([1], 4)] == 0)
        residual = (x @ w.T - x[:, kept] @ expected.T).norm() / (x @ w.T).norm()
        assert stats.rel_residual == pytest.approx(float(residual), rel=1e-6)
    plain, _ = heal_o_proj(w, g, [1], 4, ridge_rel=0.0)  # no ridge: the two heals agree
    torch.testing.assert_close(heal_o_proj(w, g, [1], 4, ridge_rel=0.0, anchored=True)[0], plain)
    frozen, _ = heal_o_proj(w, g, [1], 4, ridge_rel=1e9, anchored=True)  # a huge ridge: no heal
    torch.testing.assert_close(frozen[:, kept], w[:, kept], rtol=1e-6, atol=1e-6)


def one_layer(path=TRAINED, index=0):
    ckpt = open_checkpoint(path)
    stream = LayerStream(ckpt, model_layout(ckpt), torch.device("cpu"), torch.float32)
    batch = Batch(torch.tensor([[2, 100, 200, 300, 400, 50]]), torch.ones(1, 6, dtype=torch.long))
    stream.trace(batch)
    return stream, batch


def test_masking_o_proj_input_equals_zeroing_o_proj_columns():
    stream, batch = one_layer()
    spec = stream.layout.layers[0]
    layer = stream.load_layer(0)
    handle = mask_heads_hook(layer.self_attn.o_proj, [1, 6], spec.head_dim)
    masked = stream.run_layer(layer, 0, batch)
    handle.remove()
    with torch.no_grad():
        layer.self_attn.o_proj.weight[:, head_columns([1, 6], spec.head_dim)] = 0
    zeroed = stream.run_layer(layer, 0, batch)
    torch.testing.assert_close(masked, zeroed, rtol=0, atol=0)


def test_select_heads_keeps_one_query_head_per_kv_head():
    spec = model_layout(open_checkpoint(TRAINED)).layers[5]  # 8 heads over 2 kv heads
    scores = [0, 1, 2, 3, 9, 9, 9, 9]  # the four cheapest heads all share kv head 0
    assert select_heads(scores, spec, 0.5) == [0, 1, 2, 4]
    assert select_heads(scores, spec, 0.125) == [0]
    assert select_heads(scores, spec, 0.99) == [0, 1, 2, 4, 5, 6]  # never a whole kv group
    for fraction in (0.0, 0.1, 0.125, 0.3, 0.5, 0.8, 0.99):  # as many as the manifest and the CLI report
        assert len(select_heads(scores, spec, fraction)) == heads_to_prune(fraction, 8, 2)


@pytest.fixture(scope="module")
def pruned_0_3(tmp_path_factory):
    out = tmp_path_factory.mktemp("p") / "out"
    result = prune(TRAINED, out, tiny_prune_options(prune_frac=0.25, layers="0-3"))
    return out, result


def test_written_checkpoint_is_truthful(pruned_0_3):
    out, _ = pruned_0_3
    assert sha(out / SHARD2) == sha(TRAINED / SHARD2)  # layers 4-7 live here: untouched
    manifest = json.loads((out / "prune_manifest.json").read_text())
    assert manifest["written"]["layers"] == [0, 1, 2, 3]
    assert manifest["written"]["copied_shards"] == [SHARD2]
    assert manifest["base"]["shards"][SHARD2] == sha(TRAINED / SHARD2)
    assert manifest["layer_passes"] <= 2 * 8
    report = diff_checkpoints(open_checkpoint(TRAINED), open_checkpoint(out), DiffOptions())
    assert report.layers_changed() == manifest["written"]["layers"]
    tensors = {t.name: t for t in report.tensors}
    for name, hashes in manifest["written"]["tensors"].items():
        assert [tensors[name].base.sha256, tensors[name].other.sha256] == [
            hashes["base_sha256"],
            hashes["sha256"],
        ]
    for layer in manifest["layers"]:
        o = tensors[f"model.layers.{layer['layer']}.self_attn.o_proj.weight"].heads
        assert o.heads_with("zeroed") == layer["pruned_heads"]
        assert len(layer["pruned_heads"]) == 2
        assert tensors[f"model.layers.{layer['layer']}.self_attn.q_proj.weight"].heads.uniform_attention == []


def test_written_checkpoint_loads_in_transformers(pruned_0_3):
    from transformers import AutoModelForCausalLM

    out, result = pruned_0_3
    model = AutoModelForCausalLM.from_pretrained(out)
    heads = result.layers[0].pruned_heads
    columns = head_columns(heads, 8)
    assert torch.all(model.model.layers[0].self_attn.o_proj.weight[:, columns] == 0)
    assert torch.all(model.model.layers[0].self_attn.q_proj.weight[columns] == 0)
    assert model.config.num_attention_heads == 8  # mask mode: config unchanged


def test_heal_lowers_calibration_nll(tmp_path):
    # the tiny model knows only its training text: calibrate and score on that
    corpus = DEMO_TEXT
    options = dict(prune_frac=0.25, layers="all", importance="recon", calib=str(corpus))
    healed = prune(TRAINED, tmp_path / "healed", tiny_prune_options(heal="lstsq", **options)).output
    unhealed = prune(TRAINED, tmp_path / "unhealed", tiny_prune_options(heal="none", **options)).output
    base_nll, healed_nll, unhealed_nll = (corpus_nll(m, corpus) for m in (TRAINED, healed, unhealed))
    assert base_nll < healed_nll < unhealed_nll


def test_killed_run_resumes_with_byte_identical_output(tmp_path, pruned_0_3):
    class Killed(Exception):
        pass

    def kill_after_layer_1(result):
        if result.layer == 1:
            raise Killed()

    options = tiny_prune_options(prune_frac=0.25, layers="0-3")
    with pytest.raises(Killed):
        prune(TRAINED, tmp_path / "out", options, workdir=tmp_path / "work", on_layer_done=kill_after_layer_1)
    assert not (tmp_path / "out").exists()
    resumed = prune(TRAINED, tmp_path / "out", options, workdir=tmp_path / "work")
    assert resumed.resumed_at == 2
    reference, _ = pruned_0_3
    for name in (SHARD1, SHARD2):
        assert sha(tmp_path / "out" / name) == sha(reference / name)


def test_changed_options_start_fresh(tmp_path):
    work = tmp_path / "work"
    prune(TRAINED, tmp_path / "a", tiny_prune_options(layers="7"), workdir=work)
    again = prune(TRAINED, tmp_path / "b", tiny_prune_options(layers="7"), workdir=work)
    assert again.resumed_at == 8 and again.manifest["messages"] == []
    changed = prune(TRAINED, tmp_path / "c", tiny_prune_options(layers="7", ridge_rel=0.1), workdir=work)
    assert changed.resumed_at == 0
    assert "options changed" in " ".join(changed.manifest["messages"])
    assert sha(tmp_path / "a" / SHARD2) == sha(tmp_path / "b" / SHARD2)


def test_the_manifest_and_the_workdir_keep_flat_run_options(tmp_path):
    """options.device, .dtype and .tokenizer stay flat keys of the manifest (its schema) and
    of the workdir's fingerprint (a workdir of the release before still resumes), now that
    they come from one nested record, PruneOptions.run."""
    from surgeon.runtime.settings import RunSettings
    from tests.runtime.test_settings import PRUNE_OPTION_KEYS

    run = RunSettings(device="cpu", dtype="fp32", tokenizer=str(TRAINED))
    result = prune(TRAINED, tmp_path / "out", tiny_prune_options(layers="7", run=run), workdir=tmp_path / "work")
    options = result.manifest["options"]
    assert list(options) == PRUNE_OPTION_KEYS
    assert (options["device"], options["dtype"], options["tokenizer"]) == ("cpu", "fp32", TRAINED.name)
    fingerprint = json.loads((tmp_path / "work" / "fingerprint.json").read_text())["options"]
    assert sorted(fingerprint) == sorted(PRUNE_OPTION_KEYS) and fingerprint["device"] == "cpu"


def test_loo_nll_on_nf4_weights_scores_every_head(tmp_path):
    result = prune(
        TRAINED,
        tmp_path / "o",
        tiny_prune_options(layers="7", importance="loo-nll", importance_quant="nf4", prune_frac=0.25),
    )
    scores = result.layers[7].scores
    assert len(scores) == 8 and all(map(lambda s: s == s, scores))
    assert result.layers[7].pruned_heads == sorted(sorted(range(8), key=lambda h: (scores[h], h))[:2])


def test_qwen2_bias_of_pruned_heads_is_zeroed(tmp_path):
    from safetensors.torch import load_file

    from tests.tiny_models import save_tiny

    base = save_tiny("qwen2", tmp_path / "qwen2", vocab_size=512)
    shutil.copy(TRAINED / "tokenizer.json", base)  # any tokenizer will do for calibration
    shutil.copy(TRAINED / "tokenizer_config.json", base)
    out = prune(base, tmp_path / "out", tiny_prune_options(prune_frac=0.5, layers="0")).output
    pruned = model_layout(open_checkpoint(out)).layers[0]
    weights = load_file(out / "model.safetensors")
    heads = json.loads((out / "prune_manifest.json").read_text())["layers"][0]["pruned_heads"]
    rows = head_columns(heads, pruned.head_dim)
    assert len(heads) == 2
    assert torch.all(weights[pruned.q_bias][rows] == 0)
    assert torch.all(weights[pruned.q_proj][rows] == 0)


def test_prune_reads_a_model_safetensors_beside_an_index_as_transformers_does(tmp_path):
    """Issue 18: the base's index and shards are the trained model's, its model.safetensors
    holds other weights (layer 5's MLP doubled): transformers loads model.safetensors, so the
    prune reads and writes those, says so in its messages, and copies no index naming shards
    the output lacks."""
    mlp = "model.layers.5.mlp.down_proj.weight"
    other = make_variant(tmp_path / "other", src=TRAINED, replace={mlp: read_tensor(TRAINED, mlp) * 2})
    base = shutil.copytree(TRAINED, tmp_path / "base")
    merged_file(other, base / "model.safetensors")
    warnings = []
    result = prune(base, tmp_path / "out", tiny_prune_options(layers="0"), on_warning=warnings.append)
    assert (read_tensor(result.output, mlp) == read_tensor(other, mlp)).all()
    note = open_checkpoint(base).note
    assert note.startswith("model.safetensors is read") and warnings == [note] and note in result.manifest["messages"]
    assert not (result.output / "model.safetensors.index.json").exists()
    assert sorted(p.name for p in result.output.glob("*.safetensors")) == ["model.safetensors"]


def test_cli_prune_and_its_errors(tmp_path):
    from surgeon.cli.main import main

    runner = CliRunner()
    result = runner.invoke(main, ["prune", str(TRAINED), "-o", str(tmp_path / "o"), "--layers", "2", "-q"])
    assert result.exit_code == 0, result.output
    assert "wrote" in result.stdout and "layers 2 changed" in result.stdout
    again = runner.invoke(main, ["prune", str(TRAINED), "-o", str(tmp_path / "o"), "--layers", "2"])
    assert again.exit_code == 2 and "already exists" in again.stderr
    bad = runner.invoke(main, ["prune", str(TRAINED), "-o", str(tmp_path / "p"), "--layers", "9"])
    assert bad.exit_code == 2 and "layer 9 does not exist" in bad.stderr
    inside = runner.invoke(main, ["prune", str(TRAINED), "-o", str(TRAINED / "x")])
    assert inside.exit_code == 2 and "input checkpoint" in inside.stderr


def test_cli_says_the_heads_a_fraction_comes_to(tmp_path):
    """Issue 19: 12.5% of 4 heads is half a head. prune takes 1 of 4 (25%), and says so: a
    warning as it starts, a line in the summary, and the manifest's head_counts."""
    from surgeon.cli.main import main
    from tests.tiny_models import save_tiny

    base = save_tiny("llama", tmp_path / "llama", vocab_size=512)  # 4 query heads over 2 kv heads
    for name in ("tokenizer.json", "tokenizer_config.json"):  # any tokenizer will do for calibration
        shutil.copy(TRAINED / name, base)
    out = tmp_path / "out"
    args = ["prune", str(base), "-o", str(out), "--layers", "0", "--calib", str(DEMO_TEXT)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    said = "1 of 4 query heads in layer 0 (25%; asked 12.5%)"
    assert result.stderr == f"surgeon: warning: pruning other than the fraction asked: {said}\n"
    assert f"pruned {said}\n" in result.stdout
    manifest = json.loads((out / "prune_manifest.json").read_text())
    assert manifest["options"]["prune_frac"] == 0.125  # the fraction asked, as before
    assert manifest["head_counts"] == [
        {"layers": [0], "num_heads": 4, "heads_pruned": 1, "asked_frac": 0.125, "effective_frac": 0.25}
    ]
    assert len(manifest["layers"][0]["pruned_heads"]) == 1
    assert manifest["messages"] == [f"pruning other than the fraction asked: {said}"]


def test_an_empty_calibration_name_is_an_error_not_the_bundled_corpus(tmp_path):
    """`--calib-dataset ''` calibrated on the bundled corpus without a word."""
    from surgeon.cli.main import main
    from surgeon.errors import SurgeonError
    from surgeon.prune.options import PruneOptions

    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["prune", str(TRAINED), "-o", str(out), "--calib-dataset", "", "-q"])
    assert result.exit_code == 2 and not out.exists()
    assert result.stderr == "surgeon: error: calibration dataset '': use NAME, NAME:CONFIG or NAME:CONFIG:SPLIT\n"
    for options in (PruneOptions(calib_dataset=" "), PruneOptions(calib_dataset=":train")):
        with pytest.raises(SurgeonError, match="use NAME"):
            options.validate()
    with pytest.raises(SurgeonError, match="the calibration file's name is empty"):
        PruneOptions(calib="").validate()
    with pytest.raises(SurgeonError, match="not both"):
        PruneOptions(calib="", calib_dataset="").validate()


def test_tokenizer_larger_than_the_embedding_is_refused(tmp_path):
    from surgeon.errors import SurgeonError
    from tests.tiny_models import save_tiny

    base = save_tiny("llama", tmp_path / "llama")  # 128 embedding rows, 512-token tokenizer
    shutil.copy(TRAINED / "tokenizer.json", base)
    shutil.copy(TRAINED / "tokenizer_config.json", base)
    with pytest.raises(SurgeonError, match="embedding has 128 rows"):
        prune(base, tmp_path / "out", tiny_prune_options(layers="0"))


def test_recon_scores_equal_refitting_without_each_head():
    import math

    from surgeon.prune.heal import recon_scores, ridge_objective

    torch.manual_seed(2)
    heads, dim = 6, 8
    x = torch.randn(500, heads * dim, dtype=torch.float64) @ torch.randn(heads * dim, heads * dim, dtype=torch.float64)
    w, g = torch.randn(10, heads * dim, dtype=torch.float64), None
    g = x.T @ x
    ridge = 0.05 * float(torch.diagonal(g).mean())
    target = float((w.T * (g @ w.T)).sum())
    direct = [
        math.sqrt(ridge_objective(w, g, head_columns([k for k in range(heads) if k != h], dim), ridge) / target)
        for h in range(heads)
    ]
    assert recon_scores(w, g, dim, 0.05) == pytest.approx(direct, rel=1e-9)


def test_gram_excludes_padding_tokens():
    from surgeon.prune.engine import _Gram

    torch.manual_seed(3)
    x = torch.randn(2, 5, 16)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
    gram = _Gram(16, torch.device("cpu"))
    gram.mask = mask
    gram.hook(None, (x,))
    rows = torch.cat([x[0], x[1, :3]]).double()
    torch.testing.assert_close(gram.matrix, rows.T @ rows)
    assert gram.tokens == 8


def test_propagate_base_and_offloaded_activations(tmp_path):
    options = dict(prune_frac=0.25, layers="0-3")
    pruned_stream = prune(TRAINED, tmp_path / "a", tiny_prune_options(**options))
    base_stream = prune(TRAINED, tmp_path / "b", tiny_prune_options(propagate="base", **options))
    prune(TRAINED, tmp_path / "c", tiny_prune_options(offload_activations=True, **options))
    # Layer 0 sees the same input either way; later layers see different streams.
    assert base_stream.layers[0].scores == pruned_stream.layers[0].scores
    assert base_stream.layers[3].scores != pruned_stream.layers[3].scores
    # one pass per pruned layer (the base output is reused), none after the last pruned layer
    assert base_stream.manifest["layer_passes"] == 4
    assert sha(tmp_path / "c" / SHARD1) == sha(tmp_path / "a" / SHARD1)  # offloading changes nothing
