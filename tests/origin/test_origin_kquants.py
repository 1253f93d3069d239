"""surgeon origin's tier 2 on K-quants: gguf-py cannot write them, so the GGUF is made of valid
random K-quant blocks (tests/format/test_gguf_codes.py builds them) and the base is what they
decode to, in Hugging Face order (q and k rows un-permuted here, independently of
crossnames.py). The base then rounds to every stored code with the quant's own scales; a copy
with one head zeroed and its o_proj moved does not, in exactly those layers and heads."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from gguf import GGUFWriter
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize
from safetensors.numpy import save_file

from surgeon.cli.main import main
from tests.format.test_gguf_codes import _valid_blocks
from tests.gguf_fixtures import converted, hf_tensors, model_metadata, permute

Q = GGMLQuantizationType
HEADS, KV_HEADS, WIDTH = 8, 4, 256  # rows of 256: one K-quant super-block
HEAD_DIM = WIDTH // HEADS


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """The inverse of llama.cpp's LlamaModel.permute (gguf_fixtures.permute), on rows."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@pytest.fixture(scope="module")
def config():
    return dict(
        model_type="llama",
        architectures=["LlamaForCausalLM"],
        vocab_size=128,
        hidden_size=WIDTH,
        intermediate_size=WIDTH,
        num_hidden_layers=2,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        max_position_embeddings=64,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
    )


def random_blocks(qtype: Q):
    """An encoder for quant_pair: random valid `qtype` blocks, the source their decoded values."""

    def encode(values: np.ndarray, seed: int) -> tuple[np.ndarray, Q, np.ndarray]:
        block, _ = GGML_QUANT_SIZES[qtype]
        raw = _valid_blocks(qtype, values.shape[0], values.shape[1] // block, seed=seed)
        return raw, qtype, dequantize(raw, qtype).reshape(values.shape)

    return encode


def searched_q4_0(values: np.ndarray, seed: int) -> tuple[np.ndarray, Q, np.ndarray]:
    """Q4_0 blocks of `values` with a scale 7% over gguf-py's max / -8, as llama-quantize's
    importance-matrix search picks another scale than the reference encoder: the codes are
    the values rounded with the stored scale, the bytes are not gguf-py's."""
    blocks = values.reshape(-1, 32)
    peak = blocks[np.arange(len(blocks)), np.abs(blocks).argmax(axis=1)]
    d = (peak / -8 * 1.07).astype(np.float16)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.clip(np.rint(blocks / d.astype(np.float32)[:, None]), -8, 7).astype(np.int16) + 8
    q = np.where(d[:, None] == 0, 8, q).astype(np.uint8)
    packed = q[:, :16] | (q[:, 16:] << 4)
    raw = np.concatenate([d.view(np.uint8).reshape(-1, 2), packed], axis=1)
    return raw.reshape(values.shape[0], -1), Q.Q4_0, values


def quant_pair(root, config, encode, name: str):
    """(base folder, GGUF): the GGUF's 2-D tensors encoded by `encode` from the converted
    values of a random model, the base the values `encode` says they came from; 1-D tensors
    F32 on both sides."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**config)).save_pretrained(root / "shapes")
    hf = hf_tensors(root / "shapes")
    gguf_values = converted(hf, config, "llama")
    names = dict(zip(gguf_values, hf, strict=True))  # GGUF name -> HF name, in the same order
    writer = GGUFWriter(root / f"{name}.gguf", "llama")
    for key, value in model_metadata("llama", config).items():
        adds = {str: writer.add_string, float: writer.add_float32, int: writer.add_uint32}
        adds[type(value)](key, value)
    base = {}
    for i, (tensor, values) in enumerate(gguf_values.items()):
        hf_name = names[tensor]
        if values.ndim == 1:
            writer.add_tensor(tensor, values)
            base[hf_name] = values
            continue
        raw, qtype, source = encode(values, i)
        writer.add_tensor(tensor, raw, raw_dtype=qtype)
        if hf_name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = HEADS if "q_proj" in hf_name else KV_HEADS
            unpermuted = unpermute(source, heads)
            assert np.array_equal(permute(unpermuted, heads, None), source)
            source = unpermuted
        base[hf_name] = source
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return save(root / "base", base, config), root / f"{name}.gguf"


def save(folder, tensors, config):
    folder.mkdir()
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def pruned(base_folder, out, config, head: int, layers=(0, 1)):
    from safetensors.numpy import load_file

    tensors = load_file(base_folder / "model.safetensors")
    rng = np.random.default_rng(1)
    for layer in layers:
        q, o = (tensors[f"model.layers.{layer}.self_attn.{p}_proj.weight"].copy() for p in "qo")
        rows = slice(head * HEAD_DIM, (head + 1) * HEAD_DIM)
        q[rows] = 0
        o += 0.3 * o.std() * rng.standard_normal(o.shape).astype(np.float32)  # healed
        o[:, rows] = 0
        tensors[f"model.layers.{layer}.self_attn.q_proj.weight"] = q
        tensors[f"model.layers.{layer}.self_attn.o_proj.weight"] = o
    return save(out, tensors, config)


@pytest.mark.parametrize("qtype", [Q.Q4_K, Q.Q6_K, Q.Q2_K], ids=lambda t: t.name)
def test_a_k_quant_is_attributed_by_its_own_scales(tmp_path, config, qtype):
    base, gguf = quant_pair(tmp_path, config, random_blocks(qtype), f"base.{qtype.name}")
    cut = pruned(base, tmp_path / "pruned", config, head=5)
    result = CliRunner().invoke(main, ["origin", str(gguf), str(cut), str(base), "--json", "--no-progress"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["best"] == str(base)
    first, second = report["candidates"]
    assert first["source"] == str(base) and first["score"] == 1.0
    assert first["tiers"] == {"1": 5, "2": 16}  # the F32 norms re-encode; every 2-D tensor by its codes
    assert second["layers_differing"] == [0, 1]
    differing = {t["name"]: t for t in second["differing"]}
    assert set(differing) == {f"model.layers.{i}.self_attn.{p}_proj.weight" for i in (0, 1) for p in "qo"}
    assert differing["model.layers.0.self_attn.q_proj.weight"]["heads"] == [5]
    assert differing["model.layers.0.self_attn.q_proj.weight"]["tier"] == 2


def test_a_legacy_quant_whose_scales_are_not_gguf_pys_is_only_consistent(tmp_path, config):
    """Scales no reference encoder picks (an importance matrix's): the source's codes agree
    under them, and so would a light fine-tune's. "consistent with", exit 1, never "made from"."""
    base, gguf = quant_pair(tmp_path, config, searched_q4_0, "base.Q4_0-searched")
    cut = pruned(base, tmp_path / "pruned", config, head=2, layers=(1,))
    result = CliRunner().invoke(main, ["origin", str(gguf), str(base), str(cut), "--json", "--no-progress"])
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    first, second = report["candidates"]
    assert report["best"] is None and report["consistent"] == str(base)
    assert report["answer"].startswith("consistent with base, not reproduced: 16 of 21 tensors")
    assert first["tiers"] == {"1": 5, "2": 16} and first["consistent"] and not first["matched"]
    assert second["layers_differing"] == [1]
    q1 = next(t for t in second["differing"] if t["name"] == "model.layers.1.self_attn.q_proj.weight")
    assert q1["heads"] == [2] and q1["tier"] == 2 and q1["note"].startswith("re-encoded, ")
