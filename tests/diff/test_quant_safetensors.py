"""`surgeon diff BASE QUANT` with QUANT a quantized safetensors checkpoint (NVFP4, FP8) or a
Hub id of one or of a GGUF repo: a tiny Llama against its own quants is within every bound
(exit 0); a quant of a pruned copy differs in exactly the pruned layers' q and o projections,
the pruned head named (exit 1); swapped sides, damaged scales and Hub names that pick no
model are one line and exit 2. Quants are written by tests/quantized_fixtures.py (numpy, the
exporters' layouts), GGUFs by tests/gguf_fixtures.py, the Hub cache laid out as
huggingface_hub lays it out (tests/format/test_checkpoint.make_hub_cache)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from huggingface_hub import constants

from surgeon.cli.main import main
from surgeon.format.checkpoint import open_checkpoint
from surgeon.format.safetensors import TensorBytes, write_safetensors
from tests.diff.test_quant_diff import ATTN, pruned_copy, run_diff, trouble, verdicts
from tests.format.test_checkpoint import make_hub_cache
from tests.gguf_fixtures import convert_checkpoint, save_hf
from tests.quantized_fixtures import SCHEMES, write_quantized

STORAGE = {
    "modelopt-nvfp4": "NVFP4",
    "ct-nvfp4": "NVFP4",
    "modelopt-fp8": "FP8_E4M3 per-tensor",
    "ct-fp8-channel": "FP8_E4M3 per-channel",
    "ct-fp8-block": "FP8_E4M3 block 32x32",
    "hf-fp8-block": "FP8_E4M3 block 32x32",
}
LINEAR = 14  # q, k, v, o, gate, up, down in each of the 2 layers


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return save_hf("llama", tmp_path_factory.mktemp("qst") / "base", seed=0)


@pytest.fixture(scope="module")
def nvfp4(base, tmp_path_factory):
    out = tmp_path_factory.mktemp("nvfp4") / "tiny-NVFP4"
    write_quantized(base, out, "modelopt-nvfp4")
    return out


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_base_against_its_own_quant_is_within_every_bound(tmp_path, base, scheme):
    write_quantized(base, tmp_path / scheme, scheme)
    code, report = run_diff(base, tmp_path / scheme)
    assert code == 0 and report["quant"]["made_from"] is True
    assert report["quant"]["format"] == "safetensors" and report["quant"]["architecture"] == "llama"
    assert report["quant"]["storage"] == {STORAGE[scheme]: LINEAR, "F32": 15}  # norms, biases, embeddings
    compared = [t for t in report["tensors"] if t["quant"]["storage"] is not None]
    assert {t["quant"]["verdict"] for t in compared} == {"within"} and len(compared) == 29
    assert all(t["quant"]["rows_compared"] == t["quant"]["rows"] for t in compared)
    q = next(t for t in report["tensors"] if t["name"] == ATTN.format(0, "q"))
    assert q["quant"]["heads"]["num_heads"] == 8 and q["quant"]["heads"]["beyond"] == []
    assert len(q["quant"]["stored"]) in (2, 3) and q["quant"]["gguf"] == [] and q["shard"][1] == "model.safetensors"
    # the activations' scales: listed, never compared, never deciding the exit code
    listed = [t for t in report["tensors"] if t["quant"]["verdict"] == "quant-only"]
    assert all(not t["quant"]["counts"] and ".input_" in t["name"] for t in listed)
    assert len(listed) == (0 if scheme == "hf-fp8-block" else LINEAR)


@pytest.mark.parametrize("scheme", ["modelopt-nvfp4", "ct-nvfp4", "ct-fp8-channel"])
def test_a_quant_of_a_pruned_copy_differs_in_exactly_the_pruned_heads(tmp_path, base, scheme):
    pruned = pruned_copy(base, tmp_path / "pruned", head=5)
    write_quantized(pruned, tmp_path / "quant", scheme)
    code, report = run_diff(base, tmp_path / "quant")
    assert code == 1 and report["quant"]["made_from"] is False
    differing = {name for name, v in verdicts(report).items() if v not in ("within", "quant-only")}
    assert differing == {ATTN.format(layer, p) for layer in (0, 1) for p in "qo"}
    assert report["summary"]["layers_changed"] == [0, 1]
    assert report["summary"]["text"].startswith("differs beyond quantization error in layers 0-1 (q_proj, o_proj)")
    by_name = {t["name"]: t["quant"] for t in report["tensors"]}
    for layer in (0, 1):
        q, o = by_name[ATTN.format(layer, "q")]["heads"], by_name[ATTN.format(layer, "o")]["heads"]
        assert q["beyond"] == [5] and q["nmse"][5] == pytest.approx(1.0)
        assert o["nmse"][5] == pytest.approx(1.0) and 5 in o["beyond"]


def test_the_terminal_report_names_the_scheme_and_wraps_its_summary_at_80(base, nvfp4):
    result = CliRunner().invoke(main, ["diff", str(base), str(nvfp4)])
    assert result.exit_code == 0, result.output
    summary, sides = result.stdout.split("\nbase:", 1)
    assert all(len(line) <= 80 for line in summary.splitlines()) and len(summary.splitlines()) == 2
    assert " ".join(summary.split()) == (
        "made from base: 29 of 29 tensors within their F32 and NVFP4 bounds; 14 listed, not compared as expected"
    )
    assert "(modelopt NVFP4 safetensors, llama, 1 file," in sides


def test_the_card_hashes_the_quants_shards(base, nvfp4):
    result = CliRunner().invoke(main, ["diff", str(base), str(nvfp4), "--markdown"])
    assert result.exit_code == 0, result.output
    assert "(safetensors, modelopt NVFP4, llama, 1 file)" in result.stdout
    assert "llama.cpp" not in result.stdout
    assert "| `model.safetensors` | quant | `" in result.stdout and "| `model.safetensors` | base | `" in result.stdout


def test_a_quantized_base_is_one_line_naming_the_order(tmp_path, base, nvfp4):
    line = trouble(nvfp4, base)
    assert "a quantized checkpoint (modelopt NVFP4) as BASE; name the float checkpoint first" in line
    gguf = convert_checkpoint(base, tmp_path / "m.gguf", "llama", "Q8_0")
    assert "name the float checkpoint first" in trouble(nvfp4, gguf)


def test_two_quants_compare_byte_for_byte(base, nvfp4):
    code, report = run_diff(nvfp4, nvfp4)
    assert code == 0 and "quant" not in report


@pytest.mark.parametrize("method", ["bitsandbytes", "gptq", "awq"])
def test_a_method_surgeon_does_not_decode_is_compared_byte_for_byte(tmp_path, base, method):
    """A checkpoint that declares bitsandbytes, GPTQ or AWQ is diffed as it always was, never
    refused because surgeon cannot dequantize it."""
    import json
    import shutil

    other = shutil.copytree(base, tmp_path / method)
    config = json.loads((other / "config.json").read_text())
    config["quantization_config"] = {"quant_method": method, "bits": 4}
    (other / "config.json").write_text(json.dumps(config))
    for left, right in ((base, other), (other, base), (other, other)):
        code, report = run_diff(left, right)  # 1: the config.json files differ
        assert code == (0 if left == right else 1) and "quant" not in report
        assert report["summary"]["layers_changed"] == []


def cut_tensor(folder, name: str, rows: int) -> None:
    """Rewrite the shard with tensor `name` cut to its first `rows` rows."""
    ckpt = open_checkpoint(folder)
    data = (folder / "model.safetensors").read_bytes()
    tensors = []
    for tname, info in ckpt.shards["model.safetensors"].tensors.items():
        raw, shape = data[info.start : info.end], info.shape
        if tname == name:
            raw, shape = raw[: rows * (len(raw) // shape[0])], (rows, *shape[1:])
        tensors.append(TensorBytes(tname, info.dtype.name, shape, raw))
    write_safetensors(folder / "model.safetensors", tensors, {"format": "pt"})


def test_a_truncated_scale_tensor_is_one_line(tmp_path, base):
    write_quantized(base, tmp_path / "q", "modelopt-nvfp4")
    name = "model.layers.1.self_attn.o_proj.weight_scale"
    cut_tensor(tmp_path / "q", name, 10)
    line = trouble(base, tmp_path / "q")
    assert name in line and "has shape [10, 4]" in line


# ---------------------------------------------------------------------------------------------
# Hub ids, from the local cache


@pytest.fixture
def hub(tmp_path, monkeypatch, base, nvfp4):
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    ggufs = tmp_path / "ggufs"
    ggufs.mkdir()
    for qtype in ("Q8_0", "Q4_0"):
        convert_checkpoint(base, ggufs / f"tiny-{qtype}.gguf", "llama", qtype)
    make_hub_cache(cache, "acme/tiny-GGUF", ggufs)
    (ggufs / "tiny-Q4_0.gguf").unlink()
    make_hub_cache(cache, "acme/tiny-Q8-GGUF", ggufs)
    make_hub_cache(cache, "acme/tiny-NVFP4", nvfp4)
    return cache


@pytest.mark.parametrize("tag", ["Q8_0", "q8_0"])
def test_a_hub_gguf_is_picked_by_its_quant_tag(hub, base, tag):
    code, report = run_diff(base, f"acme/tiny-GGUF:{tag}")
    assert code == 0 and report["other"]["source"] == f"acme/tiny-GGUF:{tag}"
    assert report["other"]["name"] == "tiny-Q8_0.gguf" and report["quant"]["format"] == "gguf"


def test_a_hub_repo_of_one_gguf_needs_no_tag(hub, base):
    code, report = run_diff(base, "acme/tiny-Q8-GGUF")
    assert code == 0 and report["quant"]["storage"] == {"Q8_0": 16, "F32": 13}


def test_a_hub_quantized_safetensors_repo_is_a_quant(hub, base):
    code, report = run_diff(base, "acme/tiny-NVFP4")
    assert code == 0 and report["quant"]["format"] == "safetensors" and report["quant"]["scheme"] == "modelopt NVFP4"


def test_several_ggufs_and_no_tag_is_one_line_listing_the_tags(hub, base):
    line = trouble(base, "acme/tiny-GGUF")
    assert "holds 2 GGUF models; name one as acme/tiny-GGUF:TAG, TAG one of Q4_0, Q8_0" in line


@pytest.mark.parametrize("tag", ["Q5_K_M", "Q8"])  # not a word of any name: Q8 is no Q8_0
def test_a_tag_that_matches_nothing_is_one_line(hub, base, tag):
    line = trouble(base, f"acme/tiny-GGUF:{tag}")
    assert f"no GGUF of acme/tiny-GGUF matches '{tag}'; its tags: Q4_0, Q8_0" in line


def test_a_tagged_repo_not_in_the_cache_says_how_to_fetch_it(hub, base):
    line = trouble(base, "acme/absent-GGUF:Q4_K_M")
    assert "not in the local Hugging Face cache" in line or "no GGUF of acme/absent-GGUF" in line
    assert "hf download acme/absent-GGUF --include '*Q4_K_M*.gguf'" in line


def test_rows_decoded_on_many_threads_are_the_rows_decoded_on_one(base, nvfp4):
    """The quant diff decodes tensors on several threads through one reader: each thread's
    rows must be its own (a shared read buffer once turned one tensor's scales into another's
    bytes, a NaN scale the file does not hold)."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    from surgeon.format.quantized import open_quantized
    from surgeon.format.quantized_rows import QuantizedRows

    reader = open_quantized(open_checkpoint(nvfp4))
    assert reader is not None
    rows = QuantizedRows(reader)
    names = [n for n in rows.tensors if rows.tensors[n].storage == "NVFP4"]
    expected = {n: rows.read_rows(n, 0, rows.tensors[n].rows) for n in names}

    def decoded(name: str) -> bool:
        return all(np.array_equal(r, expected[name][s : s + len(r)]) for s, r in rows.iter_rows(name, budget=64))

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(decoded, names * 20))
