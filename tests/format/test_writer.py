import errno
import os
import threading

import pytest

from surgeon.demo import DEMO_MODEL
from surgeon.errors import Cancelled, SurgeonError
from surgeon.format.checkpoint import open_checkpoint
from surgeon.format.writer import write_checkpoint
from tests.helpers import sha

TRAINED = DEMO_MODEL
Q0 = "model.layers.0.self_attn.q_proj.weight"


def zeros_like(ckpt, name):
    return bytes(ckpt.tensors[name].nbytes)


def test_falls_back_to_plain_copies_across_filesystems(tmp_path, monkeypatch):
    def cross_device(*args):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "copy_file_range", cross_device)
    base = open_checkpoint(TRAINED)
    report = write_checkpoint(base, tmp_path / "out", {Q0: zeros_like(base, Q0)})
    out = open_checkpoint(tmp_path / "out")
    shard = out.tensors[Q0].file
    assert sha(tmp_path / "out" / shard) == report.shards[shard]
    other = next(n for n in base.shards if n != shard)
    assert sha(tmp_path / "out" / other) == sha(TRAINED / other)


def test_cancel_during_the_write_leaves_no_output(tmp_path, monkeypatch):
    from surgeon.format import writer

    cancel = threading.Event()
    real = writer._kernel_copy_range

    def cancel_midway(*args):
        cancel.set()
        return real(*args)

    monkeypatch.setattr(writer, "COPY_CHUNK", 4096)
    monkeypatch.setattr(writer, "_kernel_copy_range", cancel_midway)
    base = open_checkpoint(TRAINED)
    with pytest.raises(Cancelled):
        write_checkpoint(base, tmp_path / "out", {Q0: zeros_like(base, Q0)}, cancel=cancel)
    assert list(tmp_path.iterdir()) == [] or [p.name for p in tmp_path.iterdir()] == ["surgeon-cache"]


def test_a_base_file_changed_during_the_write_is_an_error(tmp_path, monkeypatch):
    import shutil

    from surgeon.format import writer

    src = shutil.copytree(TRAINED, tmp_path / "base")
    base = open_checkpoint(src)
    real = writer._kernel_copy_range
    touched = []

    def edit_base(src_fd, out, offset, count, path):
        if not touched:
            touched.append(path)
            os.utime(path, ns=(1, 1))  # a new identity, as an in-place edit would give
        return real(src_fd, out, offset, count, path)

    monkeypatch.setattr(writer, "_kernel_copy_range", edit_base)
    with pytest.raises(SurgeonError, match="changed while it was being copied"):
        write_checkpoint(base, tmp_path / "out", {Q0: zeros_like(base, Q0)}, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "out").exists()


def test_zero_byte_tensor_sharing_an_offset(tmp_path):
    import json
    import struct

    folder = tmp_path / "base"
    folder.mkdir()
    header = {  # "a" is listed first, and the empty tensor starts where "a" does
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "empty": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]},
    }
    raw = json.dumps(header).encode()
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + b"\x01" * 8 + b"\x02" * 8)
    base = open_checkpoint(folder)
    write_checkpoint(base, tmp_path / "out", {"a": b"\x03" * 8, "empty": b""})
    out = open_checkpoint(tmp_path / "out")
    data = (tmp_path / "out" / "model.safetensors").read_bytes()
    assert data[out.tensors["a"].start : out.tensors["a"].end] == b"\x03" * 8
    assert data[out.tensors["b"].start : out.tensors["b"].end] == b"\x02" * 8
    assert len(data) == (folder / "model.safetensors").stat().st_size


def test_force_replaces_an_existing_output(tmp_path):
    base = open_checkpoint(TRAINED)
    write_checkpoint(base, tmp_path / "out", {})  # a checkpoint: what --force may replace
    (tmp_path / "out" / "old.txt").write_text("old")
    with pytest.raises(SurgeonError, match="already exists"):
        write_checkpoint(base, tmp_path / "out", {})
    write_checkpoint(base, tmp_path / "out", {}, force=True)
    assert not (tmp_path / "out" / "old.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "surgeon-cache") == ["out"]


def test_a_truncated_replacement_source_is_an_error(tmp_path):
    from surgeon.format.writer import TensorSource

    base = open_checkpoint(TRAINED)
    short = tmp_path / "short.bin"
    short.write_bytes(b"\0" * 10)
    size = base.tensors[Q0].nbytes
    with pytest.raises(SurgeonError, match="too short"):
        write_checkpoint(base, tmp_path / "out", {Q0: TensorSource(short, 0, size)})
    assert not (tmp_path / "out").exists()
