import json
import struct

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from surgeon.errors import SurgeonError
from surgeon.format.safetensors import MAX_HEADER_SIZE, TensorBytes, read_header, write_safetensors


def raw_file(path, header: dict | str | bytes | None, data: bytes = b"", length: int | None = None):
    if header is None:
        path.write_bytes(data)
        return path
    if isinstance(header, dict):
        header = json.dumps(header)
    if isinstance(header, str):
        header = header.encode()
    n = len(header) if length is None else length
    path.write_bytes(struct.pack("<Q", n) + header + data)
    return path


def entry(dtype="F32", shape=(2,), offsets=(0, 8)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


def test_reads_a_file_written_by_safetensors(tmp_path):
    tensors = {
        "a": torch.arange(6, dtype=torch.bfloat16).reshape(2, 3),
        "b": torch.ones(4, dtype=torch.float32),
        "c": torch.zeros(0, dtype=torch.float16),
    }
    save_file(tensors, tmp_path / "x.safetensors", metadata={"format": "pt"})
    shard = read_header(tmp_path / "x.safetensors")
    assert shard.metadata == {"format": "pt"}
    assert shard.tensors["a"].dtype.name == "BF16" and shard.tensors["a"].shape == (2, 3)
    data = (tmp_path / "x.safetensors").read_bytes()
    a = shard.tensors["a"]
    assert data[a.start : a.end] == tensors["a"].view(torch.uint8).numpy().tobytes()
    assert shard.tensors["c"].nbytes == 0


def test_written_file_loads_in_safetensors(tmp_path):
    values = np.arange(12, dtype=np.float32).reshape(3, 4)
    write_safetensors(
        tmp_path / "w.safetensors",
        [
            TensorBytes("x", "F32", (3, 4), values.tobytes()),
            TensorBytes("y", "I64", (1,), b"\x07" + b"\0" * 7),
        ],
        {"k": "v"},
    )
    loaded = load_file(tmp_path / "w.safetensors")
    assert torch.equal(loaded["x"], torch.from_numpy(values))
    assert loaded["y"].item() == 7
    assert read_header(tmp_path / "w.safetensors").metadata == {"k": "v"}


def test_write_is_atomic_on_failure(tmp_path):
    target = tmp_path / "keep.safetensors"
    target.write_bytes(b"old")

    class Unreadable:
        nbytes = 4  # passes the header step, fails when the data is written

    good = TensorBytes("x", "F32", (1,), b"\0\0\0\0")
    with pytest.raises(TypeError):
        write_safetensors(target, [good, TensorBytes("y", "F32", (1,), Unreadable())])
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.safetensors"]


@pytest.mark.parametrize(
    "header, data, length, message",
    [
        (None, b"\x01\x02", None, "too short"),
        ({"a": entry()}, b"\0" * 8, 10_000, "runs past the end"),
        ({"a": entry()}, b"\0" * 8, MAX_HEADER_SIZE + 1, "exceeds"),
        ('{"a": ', b"", None, "not valid JSON"),
        ("[1, 2]", b"", None, "does not start with"),
        (b"{\xff}", b"", None, "not valid UTF-8"),
        (
            '{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, '
            '"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}',
            b"\0" * 16,
            None,
            "duplicate key",
        ),
        ({"a": entry(dtype="F12")}, b"\0" * 8, None, "unknown dtype"),
        ({"a": entry(shape=(3,))}, b"\0" * 8, None, "needs 12"),
        ({"a": entry(offsets=(0, 8)), "b": entry(offsets=(4, 12))}, b"\0" * 12, None, "overlaps"),
        ({"a": entry(offsets=(0, 8)), "b": entry(offsets=(12, 20))}, b"\0" * 20, None, "leaves a hole"),
        ({"a": entry(offsets=(0, 8))}, b"\0" * 12, None, "file holds 12"),
        ({"a": entry(offsets=(8, 16))}, b"\0" * 16, None, "leaves a hole"),
        ({"a": entry(offsets=(8, 0))}, b"\0" * 8, None, "ends before"),
        ({"a": {"dtype": "F32", "shape": [2]}}, b"\0" * 8, None, "needs dtype, shape and data_offsets"),
        ({"a": entry(shape=(-1,))}, b"\0" * 8, None, "invalid shape"),
        ({"__metadata__": {"k": 1}, "a": entry()}, b"\0" * 8, None, "__metadata__"),
    ],
)
def test_rejects_malformed_headers(tmp_path, header, data, length, message):
    path = raw_file(tmp_path / "bad.safetensors", header, data, length)
    with pytest.raises(SurgeonError, match=message) as info:
        read_header(path)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_header_may_be_padded_with_spaces(tmp_path):
    header = json.dumps({"a": entry()}) + "    "
    shard = read_header(raw_file(tmp_path / "ok.safetensors", header, b"\0" * 8))
    assert shard.tensors["a"].start == 8 + len(header)


def test_sub_byte_dtype_size_must_be_whole_bytes(tmp_path):
    ok = read_header(raw_file(tmp_path / "f4.safetensors", {"a": entry("F4", (4,), (0, 2))}, b"\0\0"))
    assert ok.tensors["a"].nbytes == 2
    with pytest.raises(SurgeonError):
        read_header(raw_file(tmp_path / "f4b.safetensors", {"a": entry("F4", (3,), (0, 2))}, b"\0\0"))
