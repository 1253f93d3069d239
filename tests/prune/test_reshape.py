"""Reshape mode (issue 21): a mask-mode checkpoint's zeroed heads sliced out of the shapes.

Each masked checkpoint here is what mask mode leaves (the chosen heads' q_proj rows, q bias
and o_proj input columns zeroed, every other byte the base's), made from a small real model
(a GQA Llama with q/k/v biases off, a Qwen3 with q_norm/k_norm and q/k/v biases on, the
demo Gemma 4 with two head sizes and k_eq_v full layers). The reshaped model must give the
masked model's logits, load with no missing or unexpected key, and have exactly the
parameters reshape says it removed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from surgeon.cli.main import main
from surgeon.format.checkpoint import open_checkpoint
from surgeon.format.dtypes import raw_view
from surgeon.format.safetensors import TensorBytes, write_safetensors
from surgeon.prune.reshape import reshape
from surgeon.prune.reshape_check import transformers_problem
from tests.helpers import BASE

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOKENS = [[2, 17, 99, 5, 42, 7, 300 % 128, 64, 3, 11]]


def tiny(tmp_path: Path, family: str, layers: int = 4, hidden: int = 96) -> Path:
    """A random small model of `family` saved in fp32: 8 query heads, 4 KV heads. Llama's
    config wants hidden_size a multiple of the heads: 96 holds 8, 6 and 4 of them."""
    common = dict(
        vocab_size=128,
        hidden_size=hidden,
        intermediate_size=96,
        num_hidden_layers=layers,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=64,
    )
    if family == "llama":
        config = transformers.LlamaConfig(**common)  # head_dim unstated: hidden_size / heads
    else:
        config = transformers.Qwen3Config(**common, head_dim=16, attention_bias=True)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # biases start at zero: make them matter
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.normal_()
    path = tmp_path / family
    model.save_pretrained(path)
    return path


def mask(src: Path, dst: Path, removed: dict[int, list[int]], ghost: bool = False) -> Path:
    """`src` with the heads in `removed` (layer -> query heads) zeroed as mask mode zeroes
    them: q_proj rows (and bias) and o_proj columns; with `ghost`, the q rows only."""
    ckpt = open_checkpoint(src)
    dst.mkdir()
    for side in src.iterdir():
        if not side.name.endswith(".safetensors"):
            (dst / side.name).write_bytes(side.read_bytes())
    for shard_name, shard in ckpt.shards.items():
        data = (src / shard_name).read_bytes()
        out = []
        for name, info in sorted(shard.tensors.items(), key=lambda item: item[1].start):
            raw = raw_view(bytearray(data[info.start : info.end]), info.dtype).reshape(info.shape)
            _zero(name, raw, removed, ghost, head_dim=_head_dim(ckpt, name))
            out.append(TensorBytes(name, info.dtype.name, info.shape, raw.tobytes()))
        write_safetensors(dst / shard_name, out, shard.metadata)
    return dst


def _head_dim(ckpt, name: str) -> int:
    prefix = name.rsplit(".self_attn.", 1)[0]
    norm = ckpt.tensors.get(f"{prefix}.self_attn.q_norm.weight")
    if norm is not None:
        return norm.shape[0]
    return ckpt.config["hidden_size"] // ckpt.config["num_attention_heads"]


def _zero(name: str, raw: np.ndarray, removed: dict[int, list[int]], ghost: bool, head_dim: int) -> None:
    parts = name.split(".")
    if "layers" not in parts or "self_attn" not in parts:
        return
    layer = int(parts[parts.index("layers") + 1])
    for head in removed.get(layer, []):
        span = slice(head * head_dim, (head + 1) * head_dim)
        if name.endswith(("q_proj.weight", "q_proj.bias")):
            raw[span] = 0
        elif name.endswith("o_proj.weight") and not ghost:
            raw[:, span] = 0


def load(path: Path):
    model, info = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, output_loading_info=True)
    return model.eval(), info


def logits(model) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor(TOKENS)).logits.numpy()


def parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def check_reshaped(masked: Path, out: Path) -> dict:
    """Reshape `masked` into `out` and check the result against it; returns the manifest."""
    result = reshape(masked, out, config_problem=transformers_problem)
    before, _ = load(masked)
    after, info = load(out)
    assert {k: v for k, v in info.items() if v and k != "error_msgs"} == {}, info
    np.testing.assert_allclose(logits(after), logits(before), atol=1e-5, rtol=0)
    assert parameters(before) - parameters(after) == result.parameters_removed > 0
    assert _untouched_identical(masked, out, set(result.manifest["written"]["tensors"]))
    return result.manifest


def _untouched_identical(masked: Path, out: Path, changed: set[str]) -> bool:
    a, b = open_checkpoint(masked), open_checkpoint(out)
    assert set(a.tensors) == set(b.tensors)
    for name, info in a.tensors.items():
        other = b.tensors[name]
        same = _bytes(a, info) == _bytes(b, other)
        if (name in changed) == same:
            raise AssertionError(f"{name}: {'listed as changed but identical' if same else 'changed, not listed'}")
    return True


def _bytes(ckpt, info) -> bytes:
    with open(ckpt.shard_path(info.file), "rb") as handle:
        handle.seek(info.start)
        return handle.read(info.nbytes)


def every_layer(heads: list[int], layers: int = 4) -> dict[int, list[int]]:
    return {layer: heads for layer in range(layers)}


# ---------- reshaped models give the masked model's logits ----------


def test_llama_one_head_per_group(tmp_path):
    masked = mask(tiny(tmp_path, "llama"), tmp_path / "masked", every_layer([1, 3, 5, 7]))
    manifest = check_reshaped(masked, tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]) == (4, 4, 12)
    assert manifest["reshape"]["layers"][0]["kept_heads"] == [0, 2, 4, 6]
    assert manifest["reshape"]["layers"][0]["kept_kv_heads"] == [0, 1, 2, 3]
    shapes = open_checkpoint(tmp_path / "out").tensors
    assert shapes["model.layers.0.self_attn.q_proj.weight"].shape == (48, 96)
    assert shapes["model.layers.0.self_attn.o_proj.weight"].shape == (96, 48)
    assert shapes["model.layers.0.self_attn.k_proj.weight"].shape == (48, 96)  # every group kept


def test_llama_whole_kv_group_goes_with_its_k_v_rows(tmp_path):
    masked = mask(tiny(tmp_path, "llama"), tmp_path / "masked", every_layer([2, 3]))
    manifest = check_reshaped(masked, tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (6, 3)
    assert manifest["reshape"]["layers"][2]["kept_kv_heads"] == [0, 2, 3]
    shapes = open_checkpoint(tmp_path / "out").tensors
    assert shapes["model.layers.3.self_attn.k_proj.weight"].shape == (36, 96)
    assert shapes["model.layers.3.self_attn.v_proj.weight"].shape == (36, 96)
    # 4 layers x (q 24 rows + o 24 columns + k 12 rows + v 12 rows) x 96, 4 bytes each
    assert manifest["reshape"]["parameters_removed"] == 4 * 72 * 96 == 27_648
    assert manifest["reshape"]["bytes_removed"] == 27_648 * 4


def test_qwen3_with_q_norm_and_biases(tmp_path):
    masked = mask(tiny(tmp_path, "qwen3"), tmp_path / "masked", every_layer([0, 3, 4, 7]))
    check_reshaped(masked, tmp_path / "out")
    shapes = open_checkpoint(tmp_path / "out").tensors
    assert shapes["model.layers.0.self_attn.q_proj.bias"].shape == (64,)  # 4 heads x 16
    assert shapes["model.layers.0.self_attn.q_norm.weight"].shape == (16,)  # per head_dim: shared, kept


def test_gemma4_two_head_sizes_and_k_eq_v(tmp_path):
    """Sliding layers (8 q, 4 kv, head_dim 8) lose KV group 1 whole; full layers (8 q, 2 kv,
    head_dim 16, k_proj doubling as v) one head of each group: both keep 6 query heads."""
    removed = {layer: ([3, 7] if layer in (5, 7) else [2, 3]) for layer in range(8)}
    masked = mask(BASE, tmp_path / "masked", removed)
    manifest = check_reshaped(masked, tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]) == (6, 3, 8)
    assert config["per_layer_config"]["5"] == {"head_dim": 16, "num_key_value_heads": 2}
    assert manifest["reshape"]["config"] == {"num_attention_heads": 6, "num_key_value_heads": 3}
    shapes = open_checkpoint(tmp_path / "out").tensors
    assert shapes["model.layers.5.self_attn.k_proj.weight"].shape == (32, 64)  # both groups kept
    assert shapes["model.layers.0.self_attn.k_proj.weight"].shape == (24, 64)


def test_the_cli_prints_one_line(tmp_path):
    masked = mask(tiny(tmp_path, "llama"), tmp_path / "masked", every_layer([2, 3]))
    result = CliRunner().invoke(main, ["reshape", str(masked), "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert result.output.count("\n") == 1
    assert "2 of 8 query heads removed in each of layers 0-3, and whole KV groups in layers 0-3" in result.output
    assert "27,648 parameters (108.0 KiB) fewer" in result.output


# ---------- refusals: one line, exit 2, nothing written ----------


def refused(tmp_path: Path, masked: Path, *extra: str, out: Path | None = None) -> str:
    out = out or tmp_path / "out"
    result = CliRunner().invoke(main, ["reshape", str(masked), "-o", str(out), *extra])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("surgeon: error: ") and result.output.count("\n") == 1
    return result.output


def test_refuses_a_prune_of_some_layers_only(tmp_path):
    masked = mask(tiny(tmp_path, "llama", layers=6), tmp_path / "masked", every_layer([1, 3]))
    said = refused(tmp_path, masked)
    assert "heads are removed in layers 0-3 only, none in layers 4-5" in said
    assert "every layer to keep the same number of query heads" in said and "mask mode" in said
    assert not (tmp_path / "out").exists()


def test_refuses_unbalanced_groups(tmp_path):
    masked = mask(tiny(tmp_path, "llama"), tmp_path / "masked", every_layer([0, 2]))
    said = refused(tmp_path, masked)
    assert "in layers 0-3 the KV groups lose different numbers of query heads" in said


def test_refuses_different_counts_per_layer(tmp_path):
    removed = every_layer([1, 3]) | {2: [1, 3, 5, 7]}
    masked = mask(tiny(tmp_path, "llama"), tmp_path / "masked", removed)
    assert "(4 in layers 2; 6 in layers 0-1, 3)" in refused(tmp_path, masked)


def test_refuses_a_ghost_head(tmp_path):
    masked = mask(tiny(tmp_path, "llama"), tmp_path / "masked", {1: [3]}, ghost=True)
    said = refused(tmp_path, masked)
    assert "layers 1 have heads with zeroed q_proj rows but live o_proj columns" in said


def test_refuses_an_output_over_or_inside_the_input(tmp_path):
    masked = mask(tiny(tmp_path, "llama"), tmp_path / "masked", every_layer([2, 3]))
    before = sorted((p.name, p.stat().st_size) for p in masked.iterdir())
    refused(tmp_path, masked, "--force", out=masked)
    refused(tmp_path, masked, out=masked / "inside")
    assert sorted((p.name, p.stat().st_size) for p in masked.iterdir()) == before


def test_refuses_what_transformers_would_not_load(tmp_path):
    """Llama's config class wants hidden_size (64) a multiple of the heads left (6)."""
    masked = mask(tiny(tmp_path, "llama", hidden=64), tmp_path / "masked", every_layer([2, 3]))
    said = refused(tmp_path, masked)
    assert "transformers refuses the reshaped config (The hidden size (64) is not a multiple" in said


def test_refuses_a_model_with_nothing_removed(tmp_path):
    assert "no removed head" in refused(tmp_path, tiny(tmp_path, "llama"))
