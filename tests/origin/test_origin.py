"""`surgeon origin QUANT CANDIDATE...`: a GGUF written from one of base / pruned / salvaged is
attributed to that one and no other, in every type gguf-py writes, for the tiny GQA Llama
(q and k permuted) and Gemma 4 (per-layer heads, trimmed vocabulary); the per-layer evidence
names the layers where a wrong candidate disagrees; none, several, unrelated and bad inputs
each get their answer and exit code."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import load_file

from surgeon.cli.main import main
from tests.diff.test_quant_diff import pruned_copy, write_folder
from tests.gguf_fixtures import convert_checkpoint, save_hf
from tests.quantized_fixtures import write_quantized

ROOT = Path(__file__).resolve().parents[2]
GEMMA4 = ROOT / "fixtures" / "gemma4-tiny"


@pytest.fixture(scope="module")
def trio(tmp_path_factory):
    """base; pruned (head 5 out of layers 0 and 1, o_proj healed); salvaged (the pruned layer 0
    kept, layer 1 rolled back): the three a user publishes quants of."""
    root = tmp_path_factory.mktemp("origin")
    base = save_hf("llama", root / "base", seed=0)
    pruned = pruned_copy(base, root / "pruned", head=5, layers=(0, 1), seed=3)
    salvaged = pruned_copy(base, root / "salvaged", head=5, layers=(0,), seed=3)
    return {"base": base, "pruned": pruned, "salvaged": salvaged}


def run_origin(*args, codes=(0, 1)) -> tuple[int, dict]:
    result = CliRunner().invoke(main, ["origin", *map(str, args), "--json", "--no-progress"])
    assert result.exit_code in codes, result.output
    return result.exit_code, json.loads(result.stdout)


def by_source(report: dict) -> dict[str, dict]:
    return {c["source"]: c for c in report["candidates"]}


@pytest.mark.parametrize("qtype", ["F32", "BF16", "Q8_0", "Q4_0", "MXFP4"])
@pytest.mark.parametrize("made_from", ["base", "pruned", "salvaged"])
def test_a_quant_is_attributed_to_the_checkpoint_it_was_made_from(tmp_path, trio, qtype, made_from):
    gguf = convert_checkpoint(trio[made_from], tmp_path / f"{made_from}.{qtype}.gguf", "llama", qtype)
    candidates = [str(trio[name]) for name in ("base", "pruned", "salvaged")]
    code, report = run_origin(gguf, *candidates)
    assert code == 0 and report["best"] == str(trio[made_from])
    assert report["answer"].startswith(f"made from {made_from}: 29 of 29 tensors agree (29 by re-encoded bytes)")
    found = by_source(report)
    assert report["candidates"][0]["source"] == str(trio[made_from])  # ranked first
    assert found[str(trio[made_from])]["score"] == 1.0 and found[str(trio[made_from])]["tiers"] == {"1": 29}
    differing = {"base": [], "pruned": [0, 1], "salvaged": [0]}
    for name, candidate in found.items():
        other = Path(name).name
        # each wrong candidate disagrees in exactly the layers where it differs from the source
        expected = sorted(set(differing[other]) ^ set(differing[made_from]))
        assert candidate["layers_differing"] == expected, (other, candidate["differing"])
        assert candidate["matched"] is (other == made_from)


@pytest.mark.parametrize("scheme", ["modelopt-nvfp4", "ct-nvfp4", "ct-fp8-channel", "hf-fp8-block"])
@pytest.mark.parametrize("made_from", ["base", "pruned", "salvaged"])
def test_an_nvfp4_or_fp8_checkpoint_is_attributed_by_its_own_scales(tmp_path, trio, scheme, made_from):
    quant = tmp_path / f"{made_from}-{scheme}"
    write_quantized(trio[made_from], quant, scheme)
    code, report = run_origin(quant, trio["base"], trio["pruned"], trio["salvaged"])
    assert code == 0 and report["best"] == str(trio[made_from]), report["answer"]
    found = by_source(report)
    source = found[str(trio[made_from])]
    assert source["score"] == 1.0 and source["tiers"]["2"] == 14  # the 14 linear weights, by their codes
    differing = {"base": [], "pruned": [0, 1], "salvaged": [0]}
    for name, candidate in found.items():
        expected = sorted(set(differing[Path(name).name]) ^ set(differing[made_from]))
        assert candidate["layers_differing"] == expected


def test_the_evidence_names_the_pruned_head_and_the_healed_projection(tmp_path, trio):
    gguf = convert_checkpoint(trio["base"], tmp_path / "base.Q8_0.gguf", "llama", "Q8_0")
    _, report = run_origin(gguf, trio["base"], trio["pruned"])
    pruned = by_source(report)[str(trio["pruned"])]
    differing = {t["name"]: t for t in pruned["differing"]}
    assert set(differing) == {f"model.layers.{i}.self_attn.{p}_proj.weight" for i in (0, 1) for p in "qo"}
    q0 = differing["model.layers.0.self_attn.q_proj.weight"]
    # the reference encoder's scales: no fallback to the codes, the bytes decide
    assert q0["tier"] == 1 and "bear the reference encoder's scales" in q0["note"]
    assert q0["heads"] == [5] and 0.8 < q0["agree"] < 0.9  # 7 of 8 heads agree
    o0 = differing["model.layers.0.self_attn.o_proj.weight"]
    assert o0["heads"] == list(range(8)) and o0["agree"] < 0.1  # healed: every head moved
    rows = {r["layer"]: r for r in pruned["layers"]}
    assert rows[0]["agreeing"] == rows[0]["tensors"] - 2 and rows[None]["agreeing"] == rows[None]["tensors"]


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0", "MXFP4"])
def test_gemma4_quants_are_attributed_through_its_trimmed_vocabulary(tmp_path, qtype):
    base, pruned = GEMMA4 / "base", GEMMA4 / "pruned"
    for made_from in (base, pruned):
        gguf = convert_checkpoint(made_from, tmp_path / f"{made_from.name}.{qtype}.gguf", "gemma4", qtype, n_vocab=500)
        code, report = run_origin(gguf, base, pruned)
        assert code == 0 and report["best"] == str(made_from), report["answer"]
        wrong = next(c for c in report["candidates"] if c["source"] != str(made_from))
        assert wrong["matched"] is False and wrong["layers_differing"]


def test_a_quant_of_none_of_them_names_the_closest(tmp_path, trio):
    tensors = load_file(trio["base"] / "model.safetensors")
    rng = np.random.default_rng(7)
    name = "model.layers.1.mlp.down_proj.weight"
    tensors[name] = tensors[name] + 0.2 * tensors[name].std() * rng.standard_normal(tensors[name].shape).astype(
        np.float32
    )
    other = write_folder(trio["base"], tmp_path / "finetuned", tensors)
    gguf = convert_checkpoint(other, tmp_path / "finetuned.Q8_0.gguf", "llama", "Q8_0")
    code, report = run_origin(gguf, trio["base"], trio["pruned"])
    assert code == 1 and report["best"] is None
    assert report["answer"] == "made from none of them; closest base: 1 of 29 tensors disagree in layer 1"


def test_two_identical_candidates_cannot_be_told_apart(tmp_path, trio):
    copy = shutil.copytree(trio["base"], tmp_path / "copy")
    gguf = convert_checkpoint(trio["base"], tmp_path / "base.Q4_0.gguf", "llama", "Q4_0")
    code, report = run_origin(gguf, trio["base"], copy, trio["pruned"])
    assert code == 1 and report["best"] is None
    assert report["answer"].startswith("cannot tell base and copy apart")


def test_a_candidate_of_another_architecture_is_unrelated_not_trouble(tmp_path, trio):
    qwen = save_hf("qwen2", tmp_path / "qwen")
    gguf = convert_checkpoint(trio["salvaged"], tmp_path / "salvaged.Q8_0.gguf", "llama", "Q8_0")
    code, report = run_origin(gguf, qwen, trio["salvaged"])
    assert code == 0 and report["best"] == str(trio["salvaged"])
    unrelated = by_source(report)[str(qwen)]
    assert unrelated["matched"] is False and "qwen2" in unrelated["unrelated"]


def test_the_terminal_report_fits_80_columns_and_keeps_names_inert(tmp_path, trio):
    hostile = shutil.copytree(trio["pruned"], tmp_path / "[bold]pruned\x1b[31m-with-a-very-long-name")
    gguf = convert_checkpoint(trio["pruned"], tmp_path / "p.Q4_0.gguf", "llama", "Q4_0")
    result = CliRunner().invoke(main, ["origin", str(gguf), str(trio["base"]), str(hostile), "-v", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.stdout and max(map(len, result.stdout.splitlines())) <= 80
    assert "[bold]pruned" in result.stdout  # shown as text, not markup
    assert "\nlayer " in result.stdout and "x " in result.stdout  # -v: each layer; base crossed in 0-1


@pytest.mark.parametrize(
    "args, words",
    [
        (["missing.gguf", "{base}"], "missing.gguf"),
        (["{base}", "{base}"], "not a quant"),
        (["{gguf}", "{gguf}"], "a GGUF as CANDIDATE"),
        (["{gguf}", "{base}", "{base}"], "the same checkpoint"),
        (["{gguf}", "{nowhere}"], "nowhere"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, trio, args, words):
    gguf = convert_checkpoint(trio["base"], tmp_path / "b.Q8_0.gguf", "llama", "Q8_0")
    paths = {"base": trio["base"], "gguf": gguf, "nowhere": tmp_path / "nowhere"}
    result = CliRunner().invoke(main, ["origin", *(a.format(**paths) for a in args)])
    assert result.exit_code == 2 and words in result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output


def test_the_json_page_lists_every_field(tmp_path, trio):
    from tests.test_schema_docs import assert_matches_page

    qwen = save_hf("qwen2", tmp_path / "qwen")
    gguf = convert_checkpoint(trio["base"], tmp_path / "b.Q8_0.gguf", "llama", "Q8_0")
    _, report = run_origin(gguf, trio["base"], trio["pruned"], qwen)
    assert_matches_page("surgeon.origin/1", [report])


def test_origin_and_the_quant_diff_never_import_torch(tmp_path, trio):
    """The light install's promise at run time (the import contract holds it statically): a
    GGUF and an NVFP4 folder, through origin and through diff."""
    import subprocess
    import sys

    gguf = convert_checkpoint(trio["base"], tmp_path / "b.Q4_0.gguf", "llama", "Q4_0")
    nvfp4 = tmp_path / "nvfp4"
    write_quantized(trio["base"], nvfp4, "modelopt-nvfp4")
    code = (
        "import sys\n"
        "from surgeon.cli.main import main\n"
        "g, n, b, p = sys.argv[1:]\n"
        "for args in (['origin', g, b, p, '--json'], ['origin', n, b, p], ['diff', b, g, '--json'], ['diff', b, n]):\n"
        "    try:\n"
        "        main(args)\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code == 0, (args, exc.code)\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'textual', 'accelerate') if m in sys.modules)\n"
        "sys.stderr.write('HEAVY=' + ','.join(heavy) + '\\n')\n"
    )
    args = [str(gguf), str(nvfp4), str(trio["base"]), str(trio["pruned"])]
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT)
    assert "HEAVY=\n" in proc.stderr, proc.stderr[-2000:]


@pytest.mark.parametrize("qtype", ["Q4_0", "Q8_0"])
def test_a_light_fine_tune_is_not_the_source_even_alone(tmp_path, trio, qtype):
    """base + 0.1% of each weight's std (a light fine-tune) keeps 99.7% of base's Q4_0 codes,
    but not its bytes. The quant's blocks bear the reference encoder's scales, so its source
    re-encodes to its bytes: the fine-tune is not the source, with base offered or without
    (the second reader's finding: alone, it was "made from tuned", exit 0)."""
    tensors = load_file(trio["base"] / "model.safetensors")
    rng = np.random.default_rng(11)
    for name, value in tensors.items():
        if value.ndim == 2:
            tensors[name] = value + 0.001 * value.std() * rng.standard_normal(value.shape).astype(np.float32)
    tuned = write_folder(trio["base"], tmp_path / "tuned", tensors)
    gguf = convert_checkpoint(trio["base"], tmp_path / f"base.{qtype}.gguf", "llama", qtype)
    code, report = run_origin(gguf, tuned, trio["pruned"])
    assert code == 1 and report["best"] is None and report["consistent"] is None, report["answer"]
    assert report["answer"].startswith("made from none of them; closest ")
    assert not by_source(report)[str(tuned)]["consistent"]  # bytes reproduce or not
    code, report = run_origin(gguf, trio["base"], tuned)
    assert code == 0 and report["best"] == str(trio["base"]), report["answer"]
    differing = by_source(report)[str(tuned)]["differing"]
    assert differing and all("reference encoder's scales" in t["note"] for t in differing)


def test_an_f16_gemma_is_the_source_of_its_norms_shifted_in_f16(tmp_path):
    """The converter keeps an F16 checkpoint's tensors in float16 through modify_tensors, so
    Gemma's 1 + w is rounded to f16 before the F32 norm is written; float32 arithmetic
    refused the true source on every norm."""
    from tests.gguf_fixtures import converted, model_metadata, write_gguf

    base = save_hf("gemma2", tmp_path / "b32")
    tensors = {k: v.astype(np.float16) for k, v in load_file(base / "model.safetensors").items()}
    f16 = write_folder(base, tmp_path / "f16", tensors)
    config = json.loads((base / "config.json").read_text())
    shifted = {
        k: (v + np.float16(1)).astype(np.float32) - np.float32(1) if k.endswith("norm.weight") else v
        for k, v in tensors.items()
    }  # converted() adds 1 back in float32, exactly
    gguf = write_gguf(
        tmp_path / "f16.gguf",
        "gemma2",
        converted(shifted, config, "gemma2"),
        "F16",
        metadata=model_metadata("gemma2", config),
    )
    code, report = run_origin(gguf, f16)
    assert code == 0 and report["best"] == str(f16), report["answer"]
