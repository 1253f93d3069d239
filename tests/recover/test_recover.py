import hashlib
import json
import shutil

import pytest
from click.testing import CliRunner

from surgeon.demo import DEMO_MODEL
from surgeon.recover.canary.checks import CanaryOptions, Prompt, cache_key, prompt_ids, read_prompts
from surgeon.recover.canary.runner import ComposedCanary, run_canary
from surgeon.recover.salvage import canary_search, salvage
from surgeon.recover.verify import verify
from surgeon.runtime.settings import RunSettings
from tests.helpers import (
    BASE,
    FIXTURES,
    PRUNED,
    local_path_leaks,
    make_variant,
    merged_file,
    read_tensor,
    sha,
    tiny_prune_options,
)

TRAINED = DEMO_MODEL
SHARD1, SHARD2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
PROMPTS = read_prompts(None)


def tokenizer_variant(add_bos: bool):
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_file=str(TRAINED / "tokenizer.json"), bos_token="<bos>", eos_token="<eos>")
    if add_bos:
        tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single="<bos> $A", special_tokens=[("<bos>", tok.bos_token_id)]
        )
    return tok


@pytest.mark.parametrize("add_bos", [True, False])
def test_exactly_one_bos_whatever_the_tokenizer_does(add_bos):
    tok = tokenizer_variant(add_bos)
    assert (tok("Water")["input_ids"][0] == tok.bos_token_id) == add_bos  # the variants differ
    ids = prompt_ids(tok, Prompt(text="Water boils at"), "auto")
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    assert prompt_ids(tok, Prompt(text="<bos>Water"), "auto").count(tok.bos_token_id) == 1
    assert tok.bos_token_id not in prompt_ids(tok, Prompt(text="Water"), "none")


def test_chat_prompt_is_formatted_once_and_bos_not_doubled():
    tok = tokenizer_variant(add_bos=False)
    tok.chat_template = "{{ bos_token }}{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
    ids = prompt_ids(tok, Prompt(messages=[{"role": "user", "content": "Hi"}]), "auto")
    assert ids.count(tok.bos_token_id) == 1 and ids[0] == tok.bos_token_id
    assert tok.decode(ids).count("<user>") == 1


def scaled(names, factor, tmp_path, label):
    return make_variant(tmp_path / label, src=TRAINED, replace={n: read_tensor(TRAINED, n) * factor for n in names})


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """Layers 0-3 barely changed (healthy), layers 4-7 broken (their MLP output blown up past
    what the residual stream survives; each alone fails): the boundary --auto must find."""
    tmp = tmp_path_factory.mktemp("planted")
    norm = "model.layers.{}.post_feedforward_layernorm.weight"
    replace = {norm.format(i): read_tensor(TRAINED, norm.format(i)) * (1.02 if i < 4 else 30.0) for i in range(8)}
    return make_variant(tmp / "candidate", src=TRAINED, replace=replace)


@pytest.fixture(scope="module")
def all_heads_masked(tmp_path_factory):
    o_proj = "model.layers.{}.self_attn.o_proj.weight"
    replace = {o_proj.format(i): read_tensor(TRAINED, o_proj.format(i)) * 0 for i in range(8)}
    return make_variant(tmp_path_factory.mktemp("masked") / "candidate", src=TRAINED, replace=replace)


@pytest.fixture(scope="module")
def composed(planted, tmp_path_factory):
    return ComposedCanary(TRAINED, planted, PROMPTS, cache_dir=tmp_path_factory.mktemp("cache"))


@pytest.mark.slow
def test_base_passes_and_a_broken_model_fails_on_shape_and_drift(all_heads_masked, tmp_path):
    assert run_canary(TRAINED, TRAINED, PROMPTS, cache_dir=tmp_path).passed
    broken = run_canary(all_heads_masked, TRAINED, PROMPTS, cache_dir=tmp_path)
    assert not broken.passed and broken.base_cache_hit
    failures = " ".join(f for p in broken.prompts for f in p.failures)
    assert "drift" in failures
    assert "repetition" in failures  # the shape check: it loops


@pytest.mark.slow
def test_auto_finds_the_planted_boundary(composed):
    runs_before = composed.runs
    plan = canary_search(list(range(8)), lambda layers: composed.run(layers).passed)
    assert plan.keep == [0, 1, 2, 3]
    assert composed.runs - runs_before == len(plan.steps) <= 2 * 4 + 8 + 2
    assert [s.how for s in plan.steps][:1] == ["prefix"] and plan.steps[0].passed is False


def test_salvage_takes_kept_layers_from_the_candidate_and_the_rest_from_base(planted, tmp_path):
    out = tmp_path / "out"
    report, manifest = salvage(planted, TRAINED, [0, 1, 2, 3], out)
    assert sha(out / SHARD2) == sha(TRAINED / SHARD2)  # layers 4-7: rolled back, the base's file
    assert sha(out / SHARD1) == sha(planted / SHARD1)  # layers 0-3 (and the embedding, same in both)
    assert manifest["written"]["layers"] == [0, 1, 2, 3]
    assert manifest["salvage"]["rolled_back_layers"] == [4, 5, 6, 7]
    assert report.copied_shards == [SHARD2]
    assert verify(out, TRAINED).ok


def test_durable_salvage_writes_the_same_bytes(planted, tmp_path):
    salvage(planted, TRAINED, [0, 1, 2, 3], tmp_path / "plain")
    salvage(planted, TRAINED, [0, 1, 2, 3], tmp_path / "durable", durable=True)
    for name in (SHARD1, SHARD2):
        assert sha(tmp_path / "plain" / name) == sha(tmp_path / "durable" / name)


def test_verify_flags_a_forged_manifest_and_a_flipped_byte(tmp_path):
    from surgeon.prune.engine import prune

    out = prune(TRAINED, tmp_path / "p", tiny_prune_options(layers="0-3")).output
    assert verify(out, TRAINED).ok
    forged = json.loads((out / "prune_manifest.json").read_text())
    forged["layers"] += [dict(forged["layers"][0], layer=i) for i in range(4, 8)]  # claims all 8 layers
    (out / "prune_manifest.json").write_text(json.dumps(forged))
    forged["written"]["copied_shards"] = [SHARD1, SHARD2]  # and that shard 1 is the base's file
    (out / "prune_manifest.json").write_text(json.dumps(forged))
    problems = verify(out, TRAINED).discrepancies
    assert problems == [
        "manifest lists 8 pruned layers (0-7); weights differ from base in 4 (0-3); 4-7 are byte-identical to base",
        f"shard {SHARD1}: the manifest says it is the base's file, but it is changed",
    ]
    from surgeon.format.checkpoint import open_checkpoint

    o_proj = "model.layers.2.self_attn.o_proj.weight"
    data = bytearray((out / SHARD1).read_bytes())
    data[open_checkpoint(out).tensors[o_proj].start + 5] ^= 0x01
    data[-3] ^= 0x01  # in layer 3's v_proj, which the prune never wrote
    (out / SHARD1).write_bytes(bytes(data))
    problems = verify(out, TRAINED).discrepancies
    assert any(p.startswith(f"shard {SHARD1}: SHA256") for p in problems)
    assert f"tensor {o_proj}: bytes do not match the manifest's SHA256" in problems
    assert (
        "tensor model.layers.3.self_attn.v_proj.weight: differs from base but the manifest does not list it" in problems
    )


def test_killed_salvage_leaves_nothing_and_the_base_untouched(planted, tmp_path, monkeypatch):
    from surgeon.format import writer

    before = {p.name: sha(p) for p in TRAINED.iterdir()}
    calls = []
    real = writer.write_all  # every write of the changed shard goes through it

    def dying(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt()
        return real(*args)

    monkeypatch.setattr(writer, "write_all", dying)
    with pytest.raises(KeyboardInterrupt):
        salvage(planted, TRAINED, [0], tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name != "surgeon-cache"] == []  # no temp folder left
    assert {p.name: sha(p) for p in TRAINED.iterdir()} == before


def test_base_cache_misses_when_any_part_changes(tmp_path):
    cache = tmp_path / "cache"
    first = run_canary(TRAINED, TRAINED, PROMPTS[:2], cache_dir=cache)
    again = run_canary(TRAINED, TRAINED, PROMPTS[:2], cache_dir=cache)
    assert first.passed and not first.base_cache_hit and again.base_cache_hit
    longer = run_canary(TRAINED, TRAINED, PROMPTS[:2], CanaryOptions(max_new_tokens=10), cache_dir=cache)
    assert not longer.base_cache_hit
    no_bos = run_canary(TRAINED, TRAINED, PROMPTS[:2], CanaryOptions(bos="none"), cache_dir=cache)
    assert not no_bos.base_cache_hit
    other_weights = make_variant(
        tmp_path / "w", src=TRAINED, replace={"model.norm.weight": read_tensor(TRAINED, "model.norm.weight") * 1.01}
    )
    assert not run_canary(TRAINED, other_weights, PROMPTS[:2], cache_dir=cache).base_cache_hit
    tok_dir = shutil.copytree(TRAINED, tmp_path / "tok")
    config = json.loads((tok_dir / "tokenizer_config.json").read_text())
    config["model_max_length"] = 77
    (tok_dir / "tokenizer_config.json").write_text(json.dumps(config))
    assert not run_canary(
        TRAINED, TRAINED, PROMPTS[:2], cache_dir=cache, run=RunSettings(tokenizer=str(tok_dir))
    ).base_cache_hit


def test_cache_key_is_the_sha256_of_the_parts_as_sorted_json():
    """The same parts in any order name the same entry: the bytes hashed are the JSON with
    sorted keys, pinned here against hashlib on those bytes."""
    expected = hashlib.sha256(b'{"bos": "auto", "prompt": "a"}').hexdigest()
    assert cache_key({"prompt": "a", "bos": "auto"}) == cache_key({"bos": "auto", "prompt": "a"}) == expected


@pytest.mark.slow
def test_missing_bos_reproduces_the_gotcha():
    """Without BOS the trained fixture collapses, as the reference card describes."""
    report = run_canary(TRAINED, TRAINED, PROMPTS, CanaryOptions(bos="none"), cache_dir=None)
    base_texts = [p.base_text for p in report.prompts]
    with_bos = run_canary(TRAINED, TRAINED, PROMPTS, cache_dir=None)
    assert [p.base_text for p in with_bos.prompts] != base_texts
    assert with_bos.prompts[0].base_text.startswith(" Paris")


@pytest.mark.slow
@pytest.mark.usefixtures("shared_canary_cache")
def test_cli_canary_salvage_verify(planted, tmp_path):
    from surgeon.cli.main import main

    runner = CliRunner()
    result = runner.invoke(main, ["canary", str(planted), "--base", str(TRAINED)])
    assert result.exit_code == 3 and "canary FAILED" in result.stdout
    assert runner.invoke(main, ["canary", str(TRAINED), "--base", str(TRAINED)]).exit_code == 0
    out = tmp_path / "salvaged"
    result = runner.invoke(main, ["salvage", str(planted), "--base", str(TRAINED), "--keep", "0-3", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "kept layers 0-3, rolled back 4-7" in result.stdout
    result = runner.invoke(main, ["verify", str(out), "--base", str(TRAINED)])
    assert result.exit_code == 0 and "verified" in result.stdout
    both = runner.invoke(main, ["salvage", str(planted), "--base", str(TRAINED), "-o", str(tmp_path / "x")])
    assert both.exit_code == 2 and "exactly one of --keep" in both.stderr


def test_salvage_reads_a_model_safetensors_beside_an_index_as_transformers_does(tmp_path):
    """Issue 18: inputs holding a model.safetensors beside an index and its shards are read
    through model.safetensors, as transformers loads them (the candidate's index and shards
    are BASE's, its model.safetensors PRUNED's), each said once; the output holds no index
    naming shards it lacks, and verifies."""
    from surgeon.cli.main import main

    base, candidate, out = (
        shutil.copytree(BASE, tmp_path / "base"),
        shutil.copytree(BASE, tmp_path / "cand"),
        tmp_path / "out",
    )
    merged_file(BASE, base / "model.safetensors")
    merged_file(PRUNED, candidate / "model.safetensors")
    runner = CliRunner()
    result = runner.invoke(main, ["salvage", str(candidate), "--base", str(base), "--keep", "0-1", "-o", str(out)])
    assert result.exit_code == 0 and "kept layers 0-1, rolled back 2-3" in result.stdout, result.output
    warnings = [line for line in result.stderr.splitlines() if "model.safetensors is read" in line]
    assert [line.split(": ")[2] for line in warnings] == ["--base", "CANDIDATE"]
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "prune_manifest.json"]
    q = "model.layers.1.self_attn.q_proj.weight"
    assert (read_tensor(out, q) == read_tensor(PRUNED, q)).all() and (read_tensor(out, q) != read_tensor(BASE, q)).any()
    checked = runner.invoke(main, ["verify", str(out), "--base", str(base)])
    assert checked.exit_code == 0 and "verified" in checked.stdout, checked.output


@pytest.mark.slow
def test_demo_tells_the_whole_story(tmp_path):
    from surgeon.demo import run_demo

    lines, verdicts, canaries = [], [], []
    summary = run_demo(tmp_path / "demo", say=lines.append, show_canary=canaries.append, show_verify=verdicts.append)
    assert not canaries[0].passed  # the full prune fails the canary
    assert summary["kept"] and summary["kept"] != list(range(8))
    assert all(v.ok for v in verdicts)
    salvaged = json.loads((tmp_path / "demo" / "salvaged" / "prune_manifest.json").read_text())
    assert salvaged["salvage"]["canary_after"]["passed"] is True
    assert salvaged["written"]["layers"] == summary["kept"]
    card = (tmp_path / "demo" / "MODEL_CARD_SECTIONS.md").read_text()
    assert card.startswith("## What's actually different") and "## Quality against base" in card
    assert "of `salvaged` against `model`." in card
    assert local_path_leaks(tmp_path / "demo", tmp_path) == {}  # the manifests and the card name no path
    assert any("steps; keeping layers" in line for line in lines)
    assert salvaged["quality"]["eval"]["kl_mean"] <= 0.05  # the budget the demo searched under


def test_nf4_canary_through_bitsandbytes(tmp_path):
    full = run_canary(TRAINED, TRAINED, PROMPTS[:2], cache_dir=tmp_path)
    nf4 = run_canary(TRAINED, TRAINED, PROMPTS[:2], run=RunSettings(device="cpu", quant="nf4"), cache_dir=tmp_path)
    assert nf4.passed
    assert not nf4.base_cache_hit  # nf4 base outputs are their own cache entries
    assert [p.base_text for p in nf4.prompts] != [p.base_text for p in full.prompts]  # really quantized


def test_canary_without_a_tokenizer_says_so_in_one_line():
    from surgeon.cli.main import main

    random_pair = FIXTURES / "gemma4-tiny"  # built for diff: weights only, no tokenizer
    result = CliRunner().invoke(main, ["canary", str(random_pair / "pruned"), "--base", str(random_pair / "base")])
    assert result.exit_code == 2
    assert "has no tokenizer files" in result.output and "pass --tokenizer" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_verify_finds_a_recorded_hub_base_in_the_local_cache_only(planted, tmp_path, monkeypatch):
    """A manifest whose base is a Hub id is checked against that id's snapshot in the local
    Hugging Face cache; absent there, verify says so in checkpoint's own words and checks
    what it can, never downloading: not verified, as its claims were not checked."""
    import os

    from huggingface_hub import constants

    out = tmp_path / "salvaged"
    salvage(planted, TRAINED, [0, 1, 2, 3], out)
    manifest = json.loads((out / "prune_manifest.json").read_text())
    shards = manifest["salvage"]["base"]["shards"]  # recorded as an older surgeon did: as given, and its folder
    manifest["salvage"]["base"] = {"source": "acme/trained", "path": str(tmp_path / "gone"), "shards": shards}
    (out / "prune_manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    absent = verify(out)
    assert not absent.ok and len(absent.discrepancies) == 1
    assert "acme/trained: no such folder, and not in the local Hugging Face cache" in absent.discrepancies[0]
    assert not any("differ from base" in c for c in absent.checks)
    repo = tmp_path / "hub" / "models--acme--trained"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    for file in TRAINED.iterdir():
        blob = repo / "blobs" / sha(file)
        blob.parent.mkdir(exist_ok=True)
        shutil.copyfile(file, blob)
        os.symlink(f"../../blobs/{blob.name}", repo / "snapshots" / commit / file.name)
    cached = verify(out)
    assert cached.ok and not any("recorded base" in n for n in cached.notes)
    assert len(cached.checks) > len(absent.checks)  # the claims against the base were checked too
