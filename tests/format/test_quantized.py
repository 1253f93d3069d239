"""Quantized safetensors (NVFP4, FP8): the reference quantizers, the declarations, the
decoders against hand-written bytes and against written checkpoints, and hostile files."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest

from surgeon.errors import SurgeonError
from surgeon.format.checkpoint import open_checkpoint
from surgeon.format.quantized import QuantizedReader, open_quantized
from surgeon.format.requantize import (
    E2M1_VALUES,
    e2m1_encode,
    e4m3_decode,
    e4m3_encode,
    pack_e2m1,
    quantize_fp8,
    quantize_nvfp4,
)
from surgeon.format.safetensors import TensorBytes, write_safetensors
from tests.helpers import BASE
from tests.quantized_fixtures import SCHEMES, ignored, write_quantized

E4M3_ONE = 0x38  # 1.0: exponent 7 (the bias), mantissa 0


# --- the number formats -------------------------------------------------------------


def test_e2m1_table_is_the_ocp_fp4_set():
    assert E2M1_VALUES[:8].tolist() == [0, 0.5, 1, 1.5, 2, 3, 4, 6]
    assert E2M1_VALUES[8:].tolist() == [-0.0, -0.5, -1, -1.5, -2, -3, -4, -6]
    assert np.signbit(E2M1_VALUES[8])  # code 8 is negative zero


def test_e2m1_rounds_to_nearest_with_ties_to_the_even_code():
    # the midpoints between neighbours, as ModelOpt's _cast_fp4 rounds them, then saturation
    halfway = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 7.0, 1e9]
    assert e2m1_encode(np.array(halfway)).tolist() == [0, 2, 2, 4, 4, 6, 6, 7, 7]
    assert e2m1_encode(np.array([-0.26, -0.74, -5.01])).tolist() == [9, 9, 15]


def test_e4m3_encoding_matches_torch_cast():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(50_000) * 30, rng.standard_normal(20_000) * 1e-3, [0.0, -0.0, 448.0]])
    x = x.astype(np.float32)
    theirs = torch.from_numpy(x).to(torch.float8_e4m3fn).view(torch.uint8).numpy()
    np.testing.assert_array_equal(e4m3_encode(x), theirs)


def test_e4m3_decoding_uses_the_fp8_table():
    assert e4m3_decode(np.array([E4M3_ONE, 0x7E, 0x01, 0xB8], dtype=np.uint8)).tolist() == [1, 448, 2.0**-9, -1]
    assert np.isnan(e4m3_decode(np.array([0x7F], dtype=np.uint8))[0])


def test_packing_puts_the_even_column_in_the_low_nibble():
    assert pack_e2m1(np.array([[1, 2, 7, 15]], dtype=np.uint8)).tolist() == [[0x21, 0xF7]]


# --- hand-written bytes -------------------------------------------------------------


def _write_nvfp4(folder, packed: bytes, scale: bytes, second: float, convention: str = "modelopt", **extra):
    """A one-module NVFP4 checkpoint of 1 row x 16 columns, written byte by byte."""
    folder.mkdir()
    module = "model.layers.0.self_attn.q_proj"
    data_name = "weight" if convention == "modelopt" else "weight_packed"
    second_name = "weight_scale_2" if convention == "modelopt" else "weight_global_scale"
    tensors = [
        TensorBytes(f"{module}.{data_name}", "U8", (1, len(packed)), packed),
        TensorBytes(f"{module}.weight_scale", "F8_E4M3", (1, len(scale)), scale),
        TensorBytes(f"{module}.{second_name}", "F32", (), np.float32(second).tobytes()),
    ]
    tensors += [TensorBytes(f"{module}.{k}", *v) for k, v in extra.items()]
    write_safetensors(folder / "model.safetensors", tensors)
    if convention == "modelopt":
        declared = {"quant_method": "modelopt", "quant_algo": "NVFP4"}
    else:
        declared = {"quant_method": "compressed-tensors", "format": "nvfp4-pack-quantized"}
    (folder / "config.json").write_text(json.dumps({"quantization_config": declared}))
    return f"{module}.weight"


def test_byte_0x21_decodes_to_half_then_one(tmp_path):
    name = _write_nvfp4(tmp_path / "q", bytes([0x21, 0xF7]) + bytes(6), bytes([E4M3_ONE]), 1.0)
    with open_quantized(open_checkpoint(tmp_path / "q")) as reader:
        row = reader.decode_rows(name, 0, 1)[0]
        assert reader.weights[name].shape == (1, 16)
    assert row[:4].tolist() == [0.5, 1.0, 6.0, -6.0]
    assert not row[4:].any()


def test_both_scales_multiply_in_modelopt_and_the_global_one_divides_in_compressed_tensors(tmp_path):
    scale = bytes([0x40])  # E4M3 2.0
    modelopt = _write_nvfp4(tmp_path / "m", bytes([0x21]) + bytes(7), scale, 0.25)
    ct = _write_nvfp4(tmp_path / "c", bytes([0x21]) + bytes(7), scale, 4.0, convention="compressed-tensors")
    for folder, name in (("m", modelopt), ("c", ct)):
        with open_quantized(open_checkpoint(tmp_path / folder)) as reader:
            assert reader.decode_rows(name, 0, 1)[0, :2].tolist() == [0.25, 0.5]  # e2m1 * 2 * 0.25, e2m1 * 2 / 4


def test_a_last_block_shorter_than_16_columns_takes_its_own_scale(tmp_path):
    """40 columns: blocks of 16, 16 and 8, each row with its own three scales."""
    rng = np.random.default_rng(5)
    codes = rng.integers(0, 16, size=(3, 40), dtype=np.uint8)
    scales = np.array([[0x38, 0x40, 0x30], [0x48, 0x28, 0x3C], [0x38, 0x38, 0x50]], dtype=np.uint8)
    folder = tmp_path / "q"
    folder.mkdir()
    module = "m"
    write_safetensors(
        folder / "model.safetensors",
        [
            TensorBytes(f"{module}.weight_packed", "U8", (3, 20), pack_e2m1(codes).tobytes()),
            TensorBytes(f"{module}.weight_scale", "F8_E4M3", (3, 3), scales.tobytes()),
            TensorBytes(f"{module}.weight_global_scale", "F32", (1,), np.float32(0.5).tobytes()),
        ],
    )
    declared = {"quant_method": "compressed-tensors", "format": "nvfp4-pack-quantized"}
    (folder / "config.json").write_text(json.dumps({"quantization_config": declared}))
    column_scale = e4m3_decode(scales)[:, np.arange(40) // 16] / np.float32(0.5)
    expected = E2M1_VALUES[codes] * column_scale
    with open_quantized(open_checkpoint(folder)) as reader:
        np.testing.assert_array_equal(reader.decode_rows("m.weight", 0, 3), expected)
        np.testing.assert_array_equal(reader.decode_rows("m.weight", 1, 3), expected[1:])


# --- written checkpoints ------------------------------------------------------------


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("quantized")
    return {scheme: (root / scheme, write_quantized(BASE, root / scheme, scheme)) for scheme in SCHEMES}


STORAGE = {
    "modelopt-nvfp4": "NVFP4",
    "ct-nvfp4": "NVFP4",
    "modelopt-fp8": "FP8_E4M3 per-tensor",
    "ct-fp8-channel": "FP8_E4M3 per-channel",
    "ct-fp8-block": "FP8_E4M3 block 32x32",
    "hf-fp8-block": "FP8_E4M3 block 32x32",
}


@pytest.mark.parametrize("scheme", SCHEMES)
def test_decoding_reproduces_the_reference_quantizer_exactly(written, scheme):
    folder, expected = written[scheme]
    with open_quantized(open_checkpoint(folder)) as reader:
        assert set(reader.weights) == set(expected)
        for name, values in expected.items():
            weight = reader.weights[name]
            assert (weight.storage, weight.shape) == (STORAGE[scheme], values.shape)
            decoded = reader.decode_rows(name, 0, values.shape[0])
            assert decoded.dtype == np.float32
            np.testing.assert_array_equal(decoded, values, err_msg=name)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_ignored_modules_stay_plain_and_activation_scales_are_auxiliary(written, scheme):
    folder, expected = written[scheme]
    with open_quantized(open_checkpoint(folder)) as reader:
        ignored_names = [n for n in reader.plain if n.endswith("proj.weight")]
        assert ignored_names and all(ignored(n.rpartition(".")[0]) for n in ignored_names)
        assert all(reader.plain[n].dtype.name == "BF16" for n in ignored_names)
        assert "model.embed_tokens.weight" in reader.plain
        assert all(n.rpartition(".")[2] in ("input_scale", "input_global_scale") for n in reader.auxiliary)
        assert len(reader.auxiliary) == (0 if scheme == "hf-fp8-block" else len(expected))
        assert not set(reader.plain) & set(reader.auxiliary)


@pytest.mark.parametrize("scheme", ["modelopt-nvfp4", "ct-fp8-block"])
def test_chunked_decode_equals_whole_decode(written, scheme):
    folder, expected = written[scheme]
    name = "model.layers.1.mlp.gate_proj.weight"  # 128 x 64
    with open_quantized(open_checkpoint(folder)) as reader:
        whole = reader.decode_rows(name, 0, 128)
        np.testing.assert_array_equal(whole, expected[name])
        np.testing.assert_array_equal(reader.decode_rows(name, 37, 101), whole[37:101])
        chunks = list(reader.iter_rows(name, max_elements=64 * 24, row_multiple=8))
        assert [first for first, _ in chunks] == list(range(0, 128, 24))
        np.testing.assert_array_equal(np.concatenate([rows for _, rows in chunks]), whole)
        assert len(list(reader.iter_rows(name, max_elements=1))) == 128  # one row at a time at least


def test_hf_quant_config_alone_declares_modelopt(tmp_path):
    expected = write_quantized(BASE, tmp_path / "q", "modelopt-nvfp4", config_json=False)
    with open_quantized(open_checkpoint(tmp_path / "q")) as reader:
        assert reader.scheme.method == "modelopt" and reader.scheme.where.endswith("hf_quant_config.json")
        name = next(iter(expected))
        np.testing.assert_array_equal(reader.decode_rows(name, 0, expected[name].shape[0]), expected[name])


def test_an_unquantized_checkpoint_has_no_reader():
    assert open_quantized(open_checkpoint(BASE)) is None


def test_chunks_bound_the_memory_of_a_large_weight(tmp_path):
    """A 2048 x 2048 NVFP4 weight decodes to 16 MiB of float32; chunks of 64k elements
    must keep the peak to a small multiple of one chunk (256 KiB of output)."""
    w = np.random.default_rng(3).standard_normal((2048, 2048)).astype(np.float32)
    q = quantize_nvfp4(w)
    module = "big"
    folder = tmp_path / "big"
    folder.mkdir()
    write_safetensors(
        folder / "model.safetensors",
        [
            TensorBytes(f"{module}.weight", "U8", q.packed.shape, q.packed.tobytes()),
            TensorBytes(f"{module}.weight_scale", "F8_E4M3", q.scale.shape, q.scale.tobytes()),
            TensorBytes(f"{module}.weight_scale_2", "F32", (), q.second.tobytes()),
        ],
    )
    (folder / "config.json").write_text(
        json.dumps({"quantization_config": {"quant_method": "modelopt", "quant_algo": "NVFP4"}})
    )
    del w
    with open_quantized(open_checkpoint(folder)) as reader:
        tracemalloc.start()
        total = 0.0
        for first, rows in reader.iter_rows("big.weight", max_elements=1 << 16):
            total += float(np.abs(rows - q.dequantized[first : first + len(rows)]).max())
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert total == 0.0
    assert peak < 8 * (1 << 16) * 4, peak  # 2 MiB, against 16 MiB for the whole weight


# --- hostile files ------------------------------------------------------------------


def _replace(folder, name: str, tensor: TensorBytes | None) -> None:
    """Put `tensor` in place of `name` (None: remove it), in the shard that holds `name`, or
    for a new name the shard of its module's first tensor."""
    ckpt = open_checkpoint(folder)
    module = name.rpartition(".")[0]
    holder = ckpt.tensors.get(name) or next(i for n, i in ckpt.tensors.items() if n.startswith(module + "."))
    shard = ckpt.shards[holder.file]
    data = (folder / shard.name).read_bytes()
    tensors = {n: TensorBytes(n, i.dtype.name, i.shape, data[i.start : i.end]) for n, i in shard.tensors.items()}
    tensors.pop(name, None)
    if tensor is not None:
        tensors[name] = tensor
    (folder / shard.name).unlink()
    write_safetensors(folder / shard.name, list(tensors.values()), shard.metadata)
    index = folder / "model.safetensors.index.json"
    if index.exists():
        mapping = json.loads(index.read_text())
        mapping["weight_map"].pop(name, None)
        if tensor is not None:
            mapping["weight_map"][name] = shard.name
        index.write_text(json.dumps(mapping))


def _one_line_error(folder, decode: str | None = None) -> str:
    with pytest.raises(SurgeonError) as caught:
        reader = open_quantized(open_checkpoint(folder))
        if decode is not None:
            assert reader is not None
            reader.decode_rows(decode, 0, reader.weights[decode].shape[0])
    message = str(caught.value)
    assert "\n" not in message
    return message


Q = "model.layers.0.self_attn.q_proj"


def _fresh(tmp_path, scheme: str):
    folder = tmp_path / scheme
    write_quantized(BASE, folder, scheme)
    return folder


def test_a_scale_of_the_wrong_shape_is_named(tmp_path):
    folder = _fresh(tmp_path, "modelopt-nvfp4")
    _replace(folder, f"{Q}.weight_scale", TensorBytes(f"{Q}.weight_scale", "F8_E4M3", (64, 2), bytes(128)))
    message = _one_line_error(folder)
    assert f"{Q}.weight_scale" in message and "[64, 2]" in message and "[64, 4]" in message


def test_a_scale_of_the_wrong_dtype_is_named(tmp_path):
    folder = _fresh(tmp_path, "ct-nvfp4")
    _replace(folder, f"{Q}.weight_scale", TensorBytes(f"{Q}.weight_scale", "BF16", (64, 2), bytes(256)))
    message = _one_line_error(folder)
    assert f"{Q}.weight_scale" in message and "BF16" in message and "F8_E4M3" in message


def test_a_missing_weight_scale_2_is_named(tmp_path):
    folder = _fresh(tmp_path, "modelopt-nvfp4")
    _replace(folder, f"{Q}.weight_scale_2", None)
    message = _one_line_error(folder)
    assert f"{Q}.weight'" in message and "weight_scale_2" in message


def test_a_nan_block_scale_is_named_with_its_row(tmp_path):
    folder = _fresh(tmp_path, "modelopt-nvfp4")

    info = open_checkpoint(folder).tensors[f"{Q}.weight_scale"]
    scale = bytearray((folder / info.file).read_bytes()[info.start : info.end])
    scale[5 * 4 + 1] = 0x7F  # row 5: E4M3's NaN
    _replace(folder, f"{Q}.weight_scale", TensorBytes(f"{Q}.weight_scale", "F8_E4M3", (64, 4), bytes(scale)))
    message = _one_line_error(folder, decode=f"{Q}.weight")
    assert f"{Q}.weight_scale" in message and "row 5" in message


@pytest.mark.parametrize(
    ("scheme", "name", "value"),
    [
        ("modelopt-nvfp4", "weight_scale_2", np.inf),
        ("ct-nvfp4", "weight_global_scale", 0.0),
        ("ct-nvfp4", "weight_global_scale", np.nan),
    ],
)
def test_an_unusable_second_scale_is_named(tmp_path, scheme, name, value):
    folder = _fresh(tmp_path, scheme)
    shape = () if name == "weight_scale_2" else (1,)
    bad = np.full(shape, value, dtype="<f4")
    _replace(folder, f"{Q}.{name}", TensorBytes(f"{Q}.{name}", "F32", shape, bad.tobytes()))
    message = _one_line_error(folder, decode=f"{Q}.weight")
    assert f"{Q}.{name}" in message and "not a usable scale" in message


def test_an_inf_fp8_scale_is_named(tmp_path):
    folder = _fresh(tmp_path, "ct-fp8-channel")
    scales = np.full((64, 1), 0.01, dtype="<f4")
    scales[9] = np.inf
    _replace(folder, f"{Q}.weight_scale", TensorBytes(f"{Q}.weight_scale", "F32", (64, 1), scales.tobytes()))
    message = _one_line_error(folder, decode=f"{Q}.weight")
    assert f"{Q}.weight_scale" in message and "row 9" in message


def test_an_fp8_scale_that_fits_no_layout_is_named(tmp_path):
    folder = _fresh(tmp_path, "ct-fp8-channel")
    _replace(folder, f"{Q}.weight_scale", TensorBytes(f"{Q}.weight_scale", "F32", (3, 5), bytes(60)))
    message = _one_line_error(folder)
    assert f"{Q}.weight_scale" in message and "[3, 5]" in message


def _declare(folder, change) -> None:
    config = json.loads((folder / "config.json").read_text())
    change(config["quantization_config"])
    (folder / "config.json").write_text(json.dumps(config))


def test_an_unknown_compressed_tensors_format_is_named_with_a_tensor(tmp_path):
    folder = _fresh(tmp_path, "ct-nvfp4")
    _declare(folder, lambda q: q.update(format="pack-quantized") or q["config_groups"]["group_0"].update(format=None))
    message = _one_line_error(folder)
    assert "pack-quantized" in message and "weight_packed" in message


def test_an_unknown_quant_method_is_refused(tmp_path):
    folder = _fresh(tmp_path, "ct-fp8-channel")
    _declare(folder, lambda q: q.update(quant_method="gptq"))
    assert "'gptq'" in _one_line_error(folder)


def test_a_quantized_module_on_the_ignore_list_is_named(tmp_path):
    folder = _fresh(tmp_path, "modelopt-fp8")
    _declare(folder, lambda q: q["ignore"].append("model.layers.0.self_attn.*"))
    message = _one_line_error(folder)
    assert "ignored" in message and "model.layers.0.self_attn." in message


def test_a_layout_the_declaration_does_not_allow_is_named(tmp_path):
    folder = _fresh(tmp_path, "ct-fp8-channel")
    _declare(folder, lambda q: q.update(format="nvfp4-pack-quantized") or q["config_groups"]["group_0"].pop("format"))
    message = _one_line_error(folder)
    assert "FP8_E4M3 per-channel" in message and "nvfp4" in message


def test_a_zero_point_is_refused(tmp_path):
    folder = _fresh(tmp_path, "ct-fp8-channel")
    zero = TensorBytes(f"{Q}.weight_zero_point", "F32", (64, 1), bytes(256))
    _replace(folder, f"{Q}.weight_zero_point", zero)
    assert f"{Q}.weight_zero_point" in _one_line_error(folder)


@pytest.mark.parametrize(
    "declared",
    [
        "NVFP4",
        {"quant_method": "compressed-tensors", "format": ["x"]},
        {"quant_method": "compressed-tensors", "config_groups": []},
        {"quant_method": "compressed-tensors", "format": "float-quantized", "ignore": ["re:("]},
        {"quant_method": "fp8", "weight_block_size": [128, 0]},
        {"quant_method": "modelopt", "quant_algo": "NVFP4_AWQ"},
        {"quant_method": "modelopt", "quant_algo": "MIXED_PRECISION"},
    ],
)
def test_hostile_declarations_are_one_line_errors(tmp_path, declared):
    folder = _fresh(tmp_path, "ct-fp8-channel")
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"] = declared
    (folder / "config.json").write_text(json.dumps(config))
    assert "quantization_config" in _one_line_error(folder)


def test_an_int8_weight_beside_its_scales_is_refused_not_read_as_plain(tmp_path):
    folder = _fresh(tmp_path, "ct-fp8-channel")
    _replace(folder, f"{Q}.weight", TensorBytes(f"{Q}.weight", "I8", (64, 64), bytes(4096)))
    message = _one_line_error(folder)
    assert f"{Q}.weight'" in message and "I8" in message


def test_a_name_that_is_no_quantized_weight_is_an_error(written):
    folder, _ = written["modelopt-fp8"]
    with open_quantized(open_checkpoint(folder)) as reader, pytest.raises(SurgeonError, match="no quantized weight"):
        next(reader.iter_rows("model.embed_tokens.weight"))


def test_rows_outside_the_weight_are_refused(written):
    folder, _ = written["ct-fp8-block"]
    with open_quantized(open_checkpoint(folder)) as reader, pytest.raises(SurgeonError, match="outside"):
        reader.decode_rows(f"{Q}.weight", 60, 65)


def test_a_file_that_shrinks_after_opening_is_an_error_not_a_crash(tmp_path):
    folder = _fresh(tmp_path, "modelopt-nvfp4")
    reader = open_quantized(open_checkpoint(folder))
    assert isinstance(reader, QuantizedReader)
    shard = reader.weights[f"{Q}.weight"].data.file
    with open(folder / shard, "r+b") as handle:
        handle.truncate(1000)
    with pytest.raises(SurgeonError, match="changed while it was being read"):
        reader.decode_rows(f"{Q}.weight", 0, 64)
    reader.close()


# --- the quantizers against the exporters' own code, where installed -------------------


def test_quantizers_match_modelopt():
    """ModelOpt's NVFP4 and FP8 quantizers (nvidia-modelopt, torch) give the same bytes."""
    torch = pytest.importorskip("torch")
    nvfp4 = pytest.importorskip("modelopt.torch.quantization.qtensor.nvfp4_tensor")
    fp8 = pytest.importorskip("modelopt.torch.quantization.qtensor.fp8_tensor")
    rng = np.random.default_rng(1)
    for w in (rng.standard_normal((64, 256)) * 0.02, rng.standard_t(3, (64, 256)) * 0.02):
        w = w.astype(np.float32)
        packed, scale, scale_2 = nvfp4.NVFP4QTensor.quantize(torch.from_numpy(w.copy()), 16)
        ours = quantize_nvfp4(w, "modelopt")
        np.testing.assert_array_equal(packed._quantized_data.numpy(), ours.packed)
        np.testing.assert_array_equal(scale.view(torch.uint8).numpy(), ours.scale)
        assert float(scale_2) == float(ours.second)
        theirs = packed.dequantize(dtype=torch.float32, scale=scale, double_scale=scale_2, block_sizes={-1: 16})
        np.testing.assert_array_equal(theirs.numpy(), ours.dequantized)
        for kwargs, granularity in (
            ({}, "tensor"),
            ({"axis": 0}, "channel"),
            ({"block_sizes": {-1: 32, -2: 32}}, (32, 32)),
        ):
            codes, scales = fp8.FP8QTensor.quantize(torch.from_numpy(w.copy()), **kwargs)
            ours8 = quantize_fp8(w, granularity)
            np.testing.assert_array_equal(codes._quantized_data.view(torch.uint8).numpy(), ours8.codes)
            np.testing.assert_array_equal(scales.numpy().reshape(ours8.scale.shape), ours8.scale)


@pytest.mark.parametrize("scheme", ["ct-nvfp4", "ct-fp8-channel"])
def test_compressed_tensors_own_decompressor_agrees(written, scheme):
    """compressed-tensors' decompressors (bfloat16 output) on the written tensors give our
    float32 values rounded to bfloat16."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("compressed_tensors")
    from compressed_tensors.compressors.naive_quantized.base import FloatQuantizationCompressor
    from compressed_tensors.compressors.nvfp4.base import NVFP4PackedCompressor
    from compressed_tensors.quantization import QuantizationScheme
    from safetensors.torch import load_file

    folder, expected = written[scheme]
    config = json.loads((folder / "config.json").read_text())["quantization_config"]
    group = dict(config["config_groups"]["group_0"])
    group.pop("format")
    quant_scheme = QuantizationScheme.model_validate(group)
    compressor = NVFP4PackedCompressor if scheme == "ct-nvfp4" else FloatQuantizationCompressor
    tensors = {}
    for shard in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(shard))
    for name, values in expected.items():
        module = name.rpartition(".")[0]
        local = {k.rpartition(".")[2]: v for k, v in tensors.items() if k.rpartition(".")[0] == module}
        theirs = compressor.decompress(local, quant_scheme)["weight"]
        ours = torch.from_numpy(values).to(theirs.dtype)
        assert torch.equal(theirs, ours), name


def test_compressed_tensors_quantizer_matches_ours():
    """compressed-tensors' own qparams and NVFP4 compressor give our bytes and global scale."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("compressed_tensors")
    from compressed_tensors.compressors.nvfp4.base import NVFP4PackedCompressor
    from compressed_tensors.quantization import QuantizationScheme
    from compressed_tensors.quantization.utils.helpers import calculate_qparams, generate_gparam

    from tests.quantized_fixtures import quantization_config

    group = dict(quantization_config("ct-nvfp4")["config_groups"]["group_0"])
    group.pop("format")
    scheme = QuantizationScheme.model_validate(group)
    rng = np.random.default_rng(1)
    for w in (rng.standard_normal((64, 256)) * 0.02, rng.standard_t(3, (64, 256)) * 0.02):
        w = w.astype(np.float32)
        t = torch.from_numpy(w.copy())
        global_scale = generate_gparam(t.min(), t.max())
        blocks = t.reshape(64, 16, 16)
        scale, _ = calculate_qparams(blocks.amin(-1), blocks.amax(-1), scheme.weights, global_scale=global_scale)
        state = {"weight": t, "weight_scale": scale, "weight_global_scale": global_scale}
        theirs = NVFP4PackedCompressor.compress(state, scheme)
        ours = quantize_nvfp4(w, "compressed-tensors")
        assert float(global_scale) == float(ours.second)
        np.testing.assert_array_equal(theirs["weight_scale"].view(torch.uint8).numpy(), ours.scale)
        np.testing.assert_array_equal(theirs["weight_packed"].numpy(), ours.packed)
