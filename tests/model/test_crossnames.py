"""surgeon.model.crossnames: Hugging Face names onto GGUF rows, with llama.cpp's transforms
undone. Tiny real models are converted as llama.cpp converts them (tests/gguf_fixtures.py),
and every mapped tensor is checked against transformers' GGUF loader, an independent
implementation, and against the Hugging Face source."""

from __future__ import annotations

import numpy as np
import pytest

from surgeon.errors import SurgeonError
from surgeon.format.gguf import open_gguf
from surgeon.model.crossnames import (
    NormShift,
    TensorMap,
    Unpermute,
    build_crossmap,
    iter_hf_rows,
)
from tests.gguf_fixtures import FAMILIES, convert_checkpoint, hf_tensors, permute, save_hf, stack_experts, write_gguf
from tests.helpers import ROOT

GEMMA4 = ROOT / "fixtures" / "gemma4-tiny" / "base"


def assembled(model, entry: TensorMap, shape, budget=1 << 24) -> np.ndarray:
    """The Hugging Face tensor's rows that `entry` maps, from the GGUF, in chunks; rows it
    does not map (a trimmed vocabulary) stay NaN."""
    rows = int(np.prod(shape[:-1]))
    out = np.full((rows, shape[-1] if shape else 1), np.nan, dtype=np.float32)
    for start, block in iter_hf_rows(model, entry, budget=budget):
        assert np.isnan(out[start : start + len(block)]).all()  # no row is written twice
        out[start : start + len(block)] = block
    return out


def transformers_tensors(gguf_path, hf_folder, family: str) -> dict[str, np.ndarray]:
    """What transformers' GGUF loader reads, by Hugging Face name. Its name table comes from
    the model's model_type, which gguf-py lacks for mistral: a Llama of the same geometry,
    whose parameter names are Mistral's, stands in."""
    import transformers
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    transformers.logging.set_verbosity_error()
    if family == "mistral":
        model = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in FAMILIES[family][2].items() if k != "sliding_window"}))
    else:
        model = AutoModelForCausalLM.from_pretrained(hf_folder)
    loaded = load_gguf_checkpoint(str(gguf_path), return_tensors=True, model_to_load=model)["tensors"]
    return {name: tensor.float().numpy() for name, tensor in loaded.items()}


def check_against_sources(model, cross, hf: dict, loaded: dict, exact: bool) -> set[str]:
    """Every entry decoded equals transformers' tensor bit for bit and, for a float32 GGUF,
    the source (the norm-shifted ones to a float32 rounding of 1 + w). Returns the entries
    transformers does not load."""
    for name, entry in cross.entries.items():
        ours = assembled(model, entry, hf[name].shape)
        kept = ~np.isnan(ours).all(axis=1)
        if name in loaded:
            theirs = loaded[name].reshape(-1, ours.shape[1])
            np.testing.assert_array_equal(ours[kept], theirs[: kept.sum()], err_msg=name)
        if exact:
            source = hf[name].reshape(ours.shape)[kept]
            shifted = any(isinstance(t, NormShift) for t in entry.transforms)
            tolerance = np.spacing(np.abs(source) + 1, dtype=np.float32) if shifted else 0
            assert (np.abs(ours[kept] - source) <= tolerance).all(), name
    return set(cross.entries) - set(loaded)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {family: save_hf(family, root / family) for family in FAMILIES}


# (family, GGUF type): every family in float32, where the roundtrip must be exact, and the
# quantized types on the two families with transforms (GQA Llama's permutation, Gemma's shift).
CASES = [(family, "F32") for family in FAMILIES] + [
    (family, qtype) for family in ("llama", "gemma3") for qtype in ("F16", "BF16", "Q8_0", "Q4_0", "MXFP4")
]
TRANSFORMS = {
    "llama": {"rotary-unpermute": 8},  # q and k weights and biases of 2 layers
    "mistral": {"rotary-unpermute": 4},
    "qwen2": {},
    "qwen3": {},
    "gemma2": {"norm-shift": 9},  # 4 norms per layer, and the final one
    "gemma3": {"norm-shift": 13},  # and q_norm, k_norm
}


@pytest.mark.parametrize(("family", "qtype"), CASES)
def test_every_tensor_maps_and_matches_transformers_and_the_source(tmp_path, checkpoints, family, qtype):
    arch = FAMILIES[family][0]
    gguf_path = convert_checkpoint(checkpoints[family], tmp_path / "m.gguf", arch, qtype)
    hf = hf_tensors(checkpoints[family])
    model = open_gguf(gguf_path)
    cross = build_crossmap({name: value.shape for name, value in hf.items()}, model)
    assert (cross.hf_only, cross.gguf_only, cross.mismatched) == ({}, {}, {})
    assert set(cross.entries) == set(hf) and cross.transform_counts() == TRANSFORMS[family]
    loaded = transformers_tensors(gguf_path, checkpoints[family], family)
    assert check_against_sources(model, cross, hf, loaded, exact=qtype == "F32") == set()


def test_gemma4_maps_with_its_per_layer_heads_trim_and_rope_factors(tmp_path):
    hf = hf_tensors(GEMMA4)
    for qtype in ("BF16", "Q8_0"):
        gguf_path = convert_checkpoint(GEMMA4, tmp_path / f"{qtype}.gguf", "gemma4", qtype, n_vocab=500)
        model = open_gguf(gguf_path)
        assert model.head_count_kv == [4, 4, 4, 4, 4, 2, 4, 2]
        cross = build_crossmap({name: value.shape for name, value in hf.items()}, model)
        assert (cross.hf_only, cross.mismatched) == ({}, {})
        assert list(cross.gguf_only) == ["rope_freqs.weight"] and "RoPE" in cross.gguf_only["rope_freqs.weight"]
        assert cross.transform_counts() == {"vocab-trim": 1}  # no norm shift, no permutation
        (trim,) = cross.entries["model.embed_tokens.weight"].transforms
        assert trim.detail.startswith("12 of 512 rows are not in the GGUF")
        loaded = transformers_tensors(gguf_path, GEMMA4, "gemma4")
        # transformers maps layer_scalar to blk.N.layer_output_scale, without the .weight
        # Gemma 4's converter appends, so it never loads them: checked against the source here
        unloaded = check_against_sources(model, cross, hf, loaded, exact=qtype == "BF16")
        assert unloaded == {f"model.layers.{i}.layer_scalar" for i in range(8)}


def test_a_multimodal_checkpoint_maps_through_its_text_prefix(tmp_path):
    from tests.tiny_models import as_multimodal_gemma4

    model = open_gguf(convert_checkpoint(GEMMA4, tmp_path / "m.gguf", "gemma4"))
    shapes = {n: v.shape for n, v in hf_tensors(as_multimodal_gemma4(GEMMA4, tmp_path / "mm")).items()}
    shapes["model.vision_tower.encoder.layers.0.mlp.fc1.weight"] = (8, 4)
    cross = build_crossmap(shapes, model)
    assert len(cross.entries) == len(shapes) - 1 and all(n.startswith("model.language_model.") for n in cross.entries)
    assert list(cross.hf_only) == ["model.vision_tower.encoder.layers.0.mlp.fc1.weight"]
    assert "mmproj" in cross.hf_only["model.vision_tower.encoder.layers.0.mlp.fc1.weight"]


@pytest.mark.parametrize("along_row", [False, True])
@pytest.mark.parametrize(("n_head", "n_kv"), [(8, 8), (8, 4), (8, 1)])
def test_unpermute_inverts_llama_cpps_permute(n_head, n_kv, along_row):
    head_dim = 8
    shape = (n_kv * head_dim,) if along_row else (n_kv * head_dim, 12)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    permuted = permute(x, n_head, n_kv)
    assert not np.array_equal(permuted, x)
    undo = Unpermute("rotary-unpermute", "", n_kv, head_dim, along_row)
    rows = permuted.reshape(1, -1) if along_row else permuted
    np.testing.assert_array_equal(undo.from_gguf(rows).reshape(shape), x)
    np.testing.assert_array_equal(undo.to_gguf(x.reshape(rows.shape)).reshape(shape), permuted)


def test_permuted_rows_decode_whole_heads_at_a_time(tmp_path, checkpoints):
    """A chunk budget smaller than a head still decodes whole heads: the permutation spans one."""
    model = open_gguf(convert_checkpoint(checkpoints["llama"], tmp_path / "m.gguf", "llama", "Q8_0"))
    hf = hf_tensors(checkpoints["llama"])
    cross = build_crossmap({n: v.shape for n, v in hf.items()}, model)
    entry = cross.entries["model.layers.1.self_attn.k_proj.weight"]
    assert entry.row_multiple == 8
    starts = [start for start, _ in iter_hf_rows(model, entry, budget=10)]
    assert starts == [0, 8, 16, 24]
    np.testing.assert_array_equal(
        assembled(model, entry, (32, 64), budget=10), assembled(model, entry, (32, 64), budget=1 << 20)
    )


def test_gemma_norm_shift_is_declared_and_undone(tmp_path, checkpoints):
    model = open_gguf(convert_checkpoint(checkpoints["gemma3"], tmp_path / "m.gguf", "gemma3"))
    hf = hf_tensors(checkpoints["gemma3"])
    cross = build_crossmap({n: v.shape for n, v in hf.items()}, model)
    entry = cross.entries["model.layers.0.self_attn.q_norm.weight"]
    assert [t.kind for t in entry.transforms] == ["norm-shift"]
    raw = model.decode_rows("blk.0.attn_q_norm.weight", 0, 1)
    np.testing.assert_array_equal(raw, hf["model.layers.0.self_attn.q_norm.weight"][None] + np.float32(1))
    assert not cross.entries["model.layers.0.self_attn.q_proj.weight"].transforms


# ---------------------------------------------------------------------------------------------
# Experts


def _moe(tmp_path, arch: str, pattern: str, layers=2, experts=4, ff=8, hidden=32, fuse=False):
    """Per-expert Hugging Face tensors and a GGUF holding them stacked (gate and up fused into
    ffn_gate_up_exps when `fuse`)."""
    rng = np.random.default_rng(0)
    hf = {}
    for layer in range(layers):
        for e in range(experts):
            for proj, shape in (("gate", (ff, hidden)), ("up", (ff, hidden)), ("down", (hidden, ff))):
                hf[pattern.format(layer=layer, expert=e, proj=proj)] = rng.standard_normal(shape).astype(np.float32)
    stacked = stack_experts(hf, layers, experts, pattern)
    if fuse:
        for layer in range(layers):
            gate, up = (stacked.pop(f"blk.{layer}.ffn_{p}_exps.weight") for p in ("gate", "up"))
            stacked[f"blk.{layer}.ffn_gate_up_exps.weight"] = np.concatenate([gate, up], axis=1)
    return hf, open_gguf(write_gguf(tmp_path / "moe.gguf", arch, stacked, "Q8_0" if hidden % 32 == 0 else "F32"))


@pytest.mark.parametrize(
    ("arch", "pattern"),
    [
        ("qwen3moe", "model.layers.{layer}.mlp.experts.{expert}.{proj}_proj.weight"),
        ("qwen2moe", "model.language_model.layers.{layer}.mlp.experts.{expert}.{proj}_proj.weight"),
    ],
)
@pytest.mark.parametrize("fuse", [False, True])
def test_per_expert_tensors_map_to_slices_of_the_stack(tmp_path, arch, pattern, fuse):
    hf, model = _moe(tmp_path, arch, pattern, fuse=fuse)
    cross = build_crossmap({n: v.shape for n, v in hf.items()}, model)
    assert (cross.hf_only, cross.gguf_only, cross.mismatched) == ({}, {}, {})
    assert cross.transform_counts() == {"expert-stack": len(hf)}
    up = cross.entries[pattern.format(layer=1, expert=2, proj="up")]
    target = "blk.1.ffn_gate_up_exps.weight" if fuse else "blk.1.ffn_up_exps.weight"
    assert up.pieces[0].gguf == target and up.pieces[0].gguf_rows == (range(40, 48) if fuse else range(16, 24))
    for name, entry in cross.entries.items():
        reference = model.decode_rows(
            entry.pieces[0].gguf, entry.pieces[0].gguf_rows.start, entry.pieces[0].gguf_rows.stop
        )
        np.testing.assert_array_equal(assembled(model, entry, hf[name].shape, budget=40), reference)
        assert np.abs(reference - hf[name].reshape(reference.shape)).max() < 0.05  # Q8_0 of the source


def test_mixtral_expert_names_map_too(tmp_path):
    hf, model = _moe(tmp_path, "llama", "model.layers.{layer}.block_sparse_moe.experts.{expert}.{proj}.weight")
    renamed = {n.replace(".gate.", ".w1.").replace(".up.", ".w3.").replace(".down.", ".w2."): v for n, v in hf.items()}
    cross = build_crossmap({n: v.shape for n, v in renamed.items()}, model)
    assert set(cross.entries) == set(renamed) and not cross.gguf_only
    assert (
        cross.entries["model.layers.0.block_sparse_moe.experts.3.w2.weight"].pieces[0].gguf
        == "blk.0.ffn_down_exps.weight"
    )


@pytest.mark.parametrize("split", [False, True])
def test_fused_gate_up_maps_whole_or_to_gate_and_up_halves(tmp_path, split):
    """Gemma 4's fused experts.gate_up_proj [experts, 2*ff, hidden]: the same tensor in a GGUF
    that keeps it fused, two pieces per expert in one that stacks gate and up apart."""
    rng = np.random.default_rng(0)
    experts, ff, hidden = 4, 8, 32
    gate_up = rng.standard_normal((experts, 2 * ff, hidden)).astype(np.float32)
    down = rng.standard_normal((experts, hidden, ff)).astype(np.float32)
    hf = {
        "model.language_model.layers.0.experts.gate_up_proj": gate_up,
        "model.language_model.layers.0.experts.down_proj": down,
    }
    if split:
        tensors = {"blk.0.ffn_gate_exps.weight": gate_up[:, :ff], "blk.0.ffn_up_exps.weight": gate_up[:, ff:]}
    else:
        tensors = {"blk.0.ffn_gate_up_exps.weight": gate_up}
    model = open_gguf(write_gguf(tmp_path / "g.gguf", "gemma4", {**tensors, "blk.0.ffn_down_exps.weight": down}))
    cross = build_crossmap({n: v.shape for n, v in hf.items()}, model)
    assert (cross.hf_only, cross.gguf_only, cross.mismatched) == ({}, {}, {})
    entry = cross.entries["model.language_model.layers.0.experts.gate_up_proj"]
    assert len(entry.pieces) == (2 * experts if split else 1)
    for name, value in hf.items():
        np.testing.assert_array_equal(
            assembled(model, cross.entries[name], value.shape, budget=64), value.reshape(-1, value.shape[-1])
        )


# ---------------------------------------------------------------------------------------------
# What maps to nothing, and what cannot be mapped


def test_unmatched_and_mismatched_tensors_are_listed_with_reasons(tmp_path, checkpoints):
    model = open_gguf(convert_checkpoint(checkpoints["qwen2"], tmp_path / "m.gguf", "qwen2"))
    shapes = {n: v.shape for n, v in hf_tensors(checkpoints["qwen2"]).items()}
    shapes["model.layers.0.mlp.up_proj.weight"] = (64, 32)  # rows of another length
    shapes["model.layers.1.self_attn.o_proj.weight"] = (48, 64)  # fewer rows, not a vocabulary
    shapes["model.layers.0.mystery.weight"] = (4, 4)
    shapes["model.layers.7.mlp.up_proj.weight"] = (64, 64)  # a layer the GGUF does not have
    del shapes["model.layers.1.mlp.down_proj.weight"]
    cross = build_crossmap(shapes, model)
    assert set(cross.mismatched) == {"model.layers.0.mlp.up_proj.weight", "model.layers.1.self_attn.o_proj.weight"}
    assert "rows of 32 here, 64 in blk.0.ffn_up.weight" in cross.mismatched["model.layers.0.mlp.up_proj.weight"]
    assert set(cross.hf_only) == {"model.layers.0.mystery.weight", "model.layers.7.mlp.up_proj.weight"}
    assert cross.gguf_only == {
        "blk.0.ffn_up.weight": "no Hugging Face tensor maps to it",
        "blk.1.attn_output.weight": "no Hugging Face tensor maps to it",
        "blk.1.ffn_down.weight": "no Hugging Face tensor maps to it",
    }


def test_a_tied_output_is_explained(tmp_path, checkpoints):
    model = open_gguf(convert_checkpoint(checkpoints["gemma3"], tmp_path / "m.gguf", "gemma3"))
    shapes = {n: v.shape for n, v in hf_tensors(checkpoints["gemma3"]).items()}
    shapes["lm_head.weight"] = shapes["model.embed_tokens.weight"]
    cross = build_crossmap(shapes, model)
    assert "ties the output to token_embd.weight" in cross.hf_only["lm_head.weight"]


def test_an_architecture_without_declared_transforms_is_refused(tmp_path):
    model = open_gguf(write_gguf(tmp_path / "p.gguf", "phi3", {"token_embd.weight": np.zeros((4, 32), np.float32)}))
    with pytest.raises(SurgeonError, match="GGUF architecture 'phi3'; the converter's transforms are known for llama"):
        build_crossmap({}, model)


def test_a_block_number_past_the_tensor_count_does_not_size_the_name_table(tmp_path):
    """gguf-py's table holds every name of every block: 10**9 blocks would never finish."""
    tensors = {"blk.999999999.attn_q.weight": np.zeros((4, 32), np.float32)}
    model = open_gguf(write_gguf(tmp_path / "b.gguf", "llama", tensors, metadata={"llama.block_count": 2**31}))
    with pytest.raises(SurgeonError, match="a tensor of block 999999999, but only 1 tensors"):
        build_crossmap({}, model)
