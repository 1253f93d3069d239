"""surgeon.format.gguf: the header against gguf-py's GGUFReader, decoding of every ggml type
against gguf.quants.dequantize (whole, by rows, by chunks), split sets, and hostile files:
one SurgeonError each, with bounded memory."""

from __future__ import annotations

import os
import shutil
import struct
import tracemalloc

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize

from surgeon.errors import SurgeonError
from surgeon.format.gguf import GGUFStrings, can_decode, open_gguf
from tests.gguf_fixtures import WRITABLE

Q = GGMLQuantizationType
RNG = np.random.default_rng(0)
# Every ggml type gguf-py 0.19.0 dequantizes, and numpy's plain ones; the rest are refused.
DECODED = [t for t in Q if can_decode(t)]
REFUSED = [t for t in Q if not can_decode(t)]


def test_the_decodable_types_are_those_issue_20_names():
    names = {t.name for t in DECODED}
    for expected in ("F32", "F16", "BF16", "Q4_0", "Q8_0", "Q2_K", "Q4_K", "Q6_K", "IQ2_XXS", "IQ4_XS"):
        assert expected in names
    assert {"TQ1_0", "TQ2_0", "MXFP4", "NVFP4", "I8", "F64"} <= names
    assert {t.name for t in REFUSED} == {"Q8_1", "Q8_K", "Q1_0"}


def _random_rows(qtype: Q, rows: int, blocks_per_row: int) -> np.ndarray:
    """Random block rows of a type: random bytes, so every code and scale bit is exercised
    (the fp16 scales come out NaN or infinite in about 1 block of 32; compared as equal)."""
    _, type_size = GGML_QUANT_SIZES[qtype]
    return RNG.integers(0, 256, size=(rows, blocks_per_row * type_size), dtype=np.uint8)


def _write_raw(path, tensors: dict[str, tuple[np.ndarray, Q]], **kwargs):
    from gguf import GGUFWriter

    writer = GGUFWriter(path, "llama", **kwargs)
    writer.add_uint32("llama.block_count", 1)
    for name, (raw, qtype) in tensors.items():
        writer.add_tensor(name, raw, raw_dtype=qtype)
    writer.write_header_to_file(path)
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize(
    "qtype", [t for t in DECODED if GGML_QUANT_SIZES[t][0] > 1 or t == Q.BF16], ids=lambda t: t.name
)
def test_block_types_decode_by_rows_as_the_whole_tensor(tmp_path, qtype):
    raw = _random_rows(qtype, rows=24, blocks_per_row=2)
    model = open_gguf(_write_raw(tmp_path / "q.gguf", {"w": (raw, qtype)}))
    info = model.tensor("w")
    block = GGML_QUANT_SIZES[qtype][0]
    assert (info.type_name, info.shape, info.nbytes) == (qtype.name, (24, 2 * block), raw.nbytes)
    with np.errstate(all="ignore"):
        whole = dequantize(raw, qtype)
    assert np.isfinite(whole).mean() > 0.8  # random bytes decode mostly to numbers
    np.testing.assert_array_equal(model.decode_rows("w", 0, 24), whole)
    np.testing.assert_array_equal(model.decode_rows("w", 5, 11), whole[5:11])
    chunks = list(model.iter_rows("w", budget=5 * 2 * block, multiple=2))
    assert [start for start, _ in chunks] == [0, 4, 8, 12, 16, 20]
    np.testing.assert_array_equal(np.concatenate([rows for _, rows in chunks]), whole)


@pytest.mark.parametrize(
    ("qtype", "dtype"), [(Q.I8, np.int8), (Q.I16, np.int16), (Q.I32, np.int32), (Q.I64, np.int64), (Q.F64, np.float64)]
)
def test_plain_types_decode_with_numpy(tmp_path, qtype, dtype):
    values = np.arange(-6, 6, dtype=dtype).reshape(3, 4)
    from gguf import GGUFWriter

    path = tmp_path / "plain.gguf"
    writer = GGUFWriter(path, "llama")
    writer.add_tensor("t", values)
    writer.write_header_to_file(path)
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    model = open_gguf(path)
    assert model.tensor("t").type_name == qtype.name
    np.testing.assert_array_equal(model.decode_rows("t", 0, 3), values.astype(np.float32))


@pytest.mark.parametrize("qtype", REFUSED, ids=lambda t: t.name)
def test_a_type_gguf_py_cannot_decode_is_one_error_naming_tensor_and_type(tmp_path, qtype):
    raw = _random_rows(qtype, rows=2, blocks_per_row=1)
    model = open_gguf(_write_raw(tmp_path / "q.gguf", {"blk.0.ffn_up.weight": (raw, qtype)}))
    with pytest.raises(SurgeonError, match=rf"tensor 'blk\.0\.ffn_up\.weight'.* is {qtype.name}, which gguf-py cannot"):
        model.decode_rows("blk.0.ffn_up.weight", 0, 1)


def _mixed_model(tmp_path, **kwargs):
    """A file with a tensor of each writable type, 1-D, 2-D and 3-D ones, a vocabulary and
    per-layer metadata arrays; the same values at every call."""
    rng = np.random.default_rng(1)
    values = {
        f"t.{qtype}": rng.standard_normal((3, 4, 64) if qtype == "Q8_0" else (8, 64)).astype(np.float32)
        for qtype in WRITABLE
    }
    values["norm.weight"] = rng.standard_normal(64).astype(np.float32)
    from gguf import GGUFWriter
    from gguf.quants import quantize

    path = tmp_path / "mixed.gguf"
    writer = GGUFWriter(path, "gemma4", **kwargs)
    writer.add_block_count(3)
    writer.add_head_count(8)
    writer.add_head_count_kv([4, 4, 2])
    writer.add_token_list(["<pad>", "a", "bé", "ccc"])
    writer.add_string("general.name", "mixed")
    writer.add_float32("gemma4.attention.layer_norm_rms_epsilon", 1e-6)
    for name, data in values.items():
        qtype = name.removeprefix("t.")
        if qtype in ("F32", "norm.weight"):
            writer.add_tensor(name, data)
        elif qtype == "F16":
            writer.add_tensor(name, data.astype(np.float16))
        else:
            writer.add_tensor(name, quantize(data, Q[qtype]), raw_dtype=Q[qtype])
    writer.write_header_to_file(path)
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path, values


def test_the_header_reads_as_gguf_readers(tmp_path):
    path, _ = _mixed_model(tmp_path)
    model, reader = open_gguf(path), GGUFReader(path)
    assert list(model.tensors) == [t.name for t in reader.tensors]
    for tensor in reader.tensors:
        ours = model.tensors[tensor.name]
        assert ours.qtype == tensor.tensor_type
        assert ours.shape == tuple(int(d) for d in reversed(tensor.shape.tolist()))
        assert (ours.offset, ours.nbytes) == (tensor.data_offset, tensor.n_bytes)
        np.testing.assert_array_equal(
            model.raw_rows(tensor.name, 0, ours.rows).reshape(-1), tensor.data.view(np.uint8).reshape(-1)
        )
    assert model.parts[0].data_start == reader.data_offset
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        ours = model.metadata[key]
        if isinstance(ours, GGUFStrings):
            assert ours.count == len(field.data)
        elif isinstance(ours, np.ndarray):
            assert ours.tolist() == field.contents()
        else:
            assert ours == pytest.approx(field.contents())
    assert (model.architecture, model.block_count, model.head_count, model.head_count_kv) == ("gemma4", 3, 8, [4, 4, 2])
    assert model.vocab_tokens == 4


def test_float_types_decode_to_their_values(tmp_path):
    path, values = _mixed_model(tmp_path)
    model = open_gguf(path)
    np.testing.assert_array_equal(model.decode_rows("t.F32", 0, 8), values["t.F32"])
    np.testing.assert_array_equal(
        model.decode_rows("t.F16", 0, 8), values["t.F16"].astype(np.float16).astype(np.float32)
    )
    bf16 = (values["t.BF16"].view(np.uint32) + 0x7FFF + ((values["t.BF16"].view(np.uint32) >> 16) & 1)) >> 16 << 16
    np.testing.assert_array_equal(model.decode_rows("t.BF16", 0, 8), bf16.astype(np.uint32).view(np.float32))
    q8 = model.tensor("t.Q8_0")
    assert (q8.shape, q8.rows, q8.row_len) == ((3, 4, 64), 12, 64)
    assert np.abs(model.decode_rows("t.Q8_0", 0, 12) - values["t.Q8_0"].reshape(12, 64)).max() < 0.03
    norm = model.decode_rows("norm.weight", 0, 1)
    np.testing.assert_array_equal(norm, values["norm.weight"][None])
    norm[0, 0] = 5.0  # every answer is the caller's own, F32 included (not a view of the map)
    assert model.decode_rows("norm.weight", 0, 1)[0, 0] == values["norm.weight"][0]


def test_row_chunks_keep_to_the_element_budget(tmp_path):
    raw = _random_rows(Q.Q4_K, rows=1000, blocks_per_row=4)
    model = open_gguf(_write_raw(tmp_path / "big.gguf", {"w": (raw, Q.Q4_K)}))
    budget = 64 * 1024
    sizes = [rows.size for _, rows in model.iter_rows("w", budget=budget)]
    assert sum(sizes) == 1000 * 1024 and max(sizes) <= budget and len(sizes) == 16
    tracemalloc.start()
    try:
        for _ in model.iter_rows("w", budget=budget):
            pass
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # a chunk is 256 KiB of float32 and its decode peaks near 1 MiB (gguf-py's K-quant
    # intermediates, measured 0.96 MB); the whole tensor would be 4 MiB
    assert peak < 1000 * 1024 * 4 // 2, peak


# ---------------------------------------------------------------------------------------------
# Split sets


def test_a_split_set_reads_as_one_model(tmp_path):
    whole, values = _mixed_model(tmp_path)
    (tmp_path / "split").mkdir()
    _mixed_model(tmp_path / "split", split_max_tensors=3)
    parts = sorted(p.name for p in (tmp_path / "split").iterdir())
    assert parts == [f"mixed-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    one, single = open_gguf(tmp_path / "split" / parts[0]), open_gguf(whole)
    assert len(one.parts) == 3 and list(one.tensors) == list(single.tensors)
    assert {t.part for t in one.tensors.values()} == {0, 1, 2}
    for name in values:
        rows = single.tensor(name).rows
        np.testing.assert_array_equal(one.decode_rows(name, 0, rows), single.decode_rows(name, 0, rows))
    assert one.metadata["general.name"] == "mixed" and one.head_count_kv == [4, 4, 2]
    assert list(open_gguf(tmp_path / "split").tensors) == list(one.tensors)  # the folder names it


def _split(tmp_path):
    folder = tmp_path / "split"
    folder.mkdir()
    _mixed_model(folder, split_max_tensors=3)
    return folder, [folder / f"mixed-0000{i}-of-00003.gguf" for i in (1, 2, 3)]


def test_a_missing_part_is_named(tmp_path):
    _, parts = _split(tmp_path)
    parts[2].unlink()
    with pytest.raises(SurgeonError, match=r"part 3 of 3 \(mixed-00003-of-00003\.gguf\) is missing"):
        open_gguf(parts[0])


def test_a_part_of_another_count_is_refused(tmp_path):
    folder, parts = _split(tmp_path)
    shutil.copy(parts[2], folder / "mixed-00004-of-00004.gguf")
    with pytest.raises(SurgeonError, match=r"mixed-00004-of-00004.gguf does not belong to the 3-part set"):
        open_gguf(parts[0])


def test_a_part_renamed_into_another_place_is_refused(tmp_path):
    _, parts = _split(tmp_path)
    parts[1].rename(tmp_path / "two")
    parts[2].rename(parts[1])
    (tmp_path / "two").rename(parts[2])
    with pytest.raises(SurgeonError, match="says it is part 3 of 3, expected part 2 of 3"):
        open_gguf(parts[0])


def test_a_later_part_named_alone_points_at_the_first(tmp_path):
    _, parts = _split(tmp_path)
    with pytest.raises(SurgeonError, match="is part 2 of a split model; name its first part, mixed-00001-of-00003"):
        open_gguf(parts[1])


def test_a_folder_of_two_models_asks_for_one(tmp_path):
    folder, parts = _split(tmp_path)
    shutil.copy(parts[0].parent.parent / "split" / parts[0].name, folder / "other.gguf")
    with pytest.raises(SurgeonError, match="holds several GGUF models"):
        open_gguf(folder)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SurgeonError, match=r"holds no .gguf file"):
        open_gguf(empty)


# ---------------------------------------------------------------------------------------------
# Hostile files: one SurgeonError, bounded memory


def _header(n_tensors: int, n_kv: int, version: int = 3) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv)


def _string(text: bytes, length: int | None = None) -> bytes:
    return struct.pack("<Q", len(text) if length is None else length) + text


def _kv(key: bytes, kind: int, payload: bytes) -> bytes:
    return _string(key) + struct.pack("<I", kind) + payload


def _tensor_info(name: bytes, dims: tuple[int, ...], qtype: int, offset: int) -> bytes:
    return (
        _string(name)
        + struct.pack("<I", len(dims))
        + struct.pack(f"<{len(dims)}Q", *dims)
        + struct.pack("<IQ", qtype, offset)
    )


PAD = b"\0" * 64
HOSTILE = {
    "bad magic": (b"GGML" + PAD, "not a GGUF file"),
    "too short": (b"GGUF\3\0\0\0", "too short to be a GGUF file"),
    "version 1": (_header(0, 0, version=1) + PAD, "GGUF version 1"),
    "version 99": (_header(0, 0, version=99) + PAD, "GGUF version 99"),
    "big-endian": (b"GGUF" + struct.pack(">IQQ", 3, 0, 0) + PAD, "big-endian"),
    "2**40 tensors": (_header(2**40, 0) + PAD, "claims 1099511627776 tensors, more than the 262144"),
    "100k tensors": (_header(100_000, 0) + PAD, "claims 100000 tensors, more than its 88 bytes can hold"),
    "2**40 key/values": (_header(0, 2**40) + PAD, "claims 1099511627776 key/values"),
    # the file that keeps gguf-py's GGUFReader looping until memory runs out
    "2**40-element array": (_header(0, 1) + _kv(b"x", 9, struct.pack("<IQ", 0, 2**40)) + PAD, "ends inside its header"),
    "2**40 strings": (_header(0, 1) + _kv(b"x", 9, struct.pack("<IQ", 8, 2**40)) + PAD, "ends inside its header"),
    "2**40-byte string": (_header(0, 1) + _kv(b"x", 8, struct.pack("<Q", 2**40)) + PAD, "ends inside its header"),
    "nested arrays": (
        _header(0, 1)
        + _kv(b"x", 9, struct.pack("<IQ", 9, 1) + struct.pack("<IQ", 9, 1) * 3 + struct.pack("<IQ", 0, 0))
        + PAD,
        "nested more than 3 deep",
    ),
    "unknown value type": (_header(0, 1) + _kv(b"x", 77, b"") + PAD, "unknown metadata value type 77"),
    "duplicate key": (_header(0, 2) + _kv(b"k", 4, b"\1\0\0\0") * 2 + PAD, "metadata key 'k' is listed twice"),
    "bad alignment": (_header(0, 1) + _kv(b"general.alignment", 4, struct.pack("<I", 24)) + PAD, "not a power of two"),
    "non-UTF-8 name": (_header(1, 0) + _tensor_info(b"\xff\xfe", (32,), 0, 0) + PAD, "tensor name is not valid UTF-8"),
    "five dimensions": (_header(1, 0) + _tensor_info(b"t", (1, 1, 1, 1, 1), 0, 0) + PAD, "has 5 dimensions"),
    "giant shape": (
        _header(1, 0) + _tensor_info(b"t", (2**40, 2**40, 2**63), 0, 0) + PAD * 2,
        "run past the end of the file",
    ),
    "unknown ggml type": (
        _header(1, 0) + _tensor_info(b"t", (32,), 99, 0) + PAD,
        "ggml type 99, which gguf-py does not know",
    ),
    "partial block": (
        _header(1, 0) + _tensor_info(b"t", (33,), 8, 0) + PAD * 2,
        "rows of 33 elements are not whole Q8_0 blocks",
    ),
    "misaligned offset": (_header(1, 0) + _tensor_info(b"t", (4,), 0, 8) + PAD * 2, "offset 8 is not a multiple"),
    "duplicate tensor": (_header(2, 0) + _tensor_info(b"t", (4,), 0, 0) * 2 + PAD * 2, "tensor 't' is listed twice"),
    "overlap": (
        _header(2, 0) + _tensor_info(b"a", (16,), 0, 0) + _tensor_info(b"b", (16,), 0, 32) + PAD * 3,
        "tensors 'a' and 'b' overlap",
    ),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_hostile_file_is_one_error_with_bounded_memory(tmp_path, case):
    data, message = HOSTILE[case]
    path = tmp_path / "hostile.gguf"
    path.write_bytes(data)
    tracemalloc.start()
    try:
        with pytest.raises(SurgeonError, match=message) as caught:
            open_gguf(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, peak
    assert "\n" not in str(caught.value) and str(path) in str(caught.value)


def test_a_truncated_file_is_one_error_wherever_it_is_cut(tmp_path):
    path, _ = _mixed_model(tmp_path)
    data = path.read_bytes()
    start = open_gguf(path).parts[0].data_start
    cut = tmp_path / "cut.gguf"
    for size in (0, 3, 30, 100, start // 2, start - 1, start + 10, len(data) - 1):
        cut.write_bytes(data[:size])
        with pytest.raises(SurgeonError) as caught:
            open_gguf(cut)
        assert "\n" not in str(caught.value), size


def test_a_fifo_or_a_wrong_suffix_is_refused(tmp_path):
    fifo = tmp_path / "pipe.gguf"
    os.mkfifo(fifo)
    with pytest.raises(SurgeonError, match="not a regular file"):
        open_gguf(fifo)
    other = tmp_path / "model.bin"
    other.write_bytes(b"GGUF")
    with pytest.raises(SurgeonError, match=r"not a .gguf file"):
        open_gguf(other)
    with pytest.raises(SurgeonError, match="no such file"):
        open_gguf(tmp_path / "absent.gguf")


def test_rows_outside_the_tensor_are_refused(tmp_path):
    path, _ = _mixed_model(tmp_path)
    model = open_gguf(path)
    with pytest.raises(SurgeonError, match=r"rows 6:9 of 't.F32', which has 8"):
        model.decode_rows("t.F32", 6, 9)
    with pytest.raises(SurgeonError, match="has no tensor 'absent'"):
        model.tensor("absent")
