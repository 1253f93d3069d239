import errno
import json
import os
import shutil
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
    (tmp_path / "out" / "README.md").write_text("old")
    with pytest.raises(SurgeonError, match="already exists"):
        write_checkpoint(base, tmp_path / "out", {})
    write_checkpoint(base, tmp_path / "out", {}, force=True)
    assert not (tmp_path / "out" / "README.md").exists()
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


# ---------------------------------------------------------------------------- side files


def test_a_side_file_that_links_out_of_the_base_is_not_copied_nor_vouched_for(tmp_path):
    """A README.md linking anywhere was copied into the output (whole, unbounded), and verify
    then vouched for it. Now a link may lead only inside the base's folder; what is left out
    is recorded with its reason, and the salvage command says it on stderr."""
    from click.testing import CliRunner

    from surgeon.cli.main import main
    from surgeon.demo import DEMO_CANDIDATE
    from surgeon.recover.verify import verify

    secret = tmp_path / "id_rsa"
    secret.write_text("PRIVATE KEY")
    base = shutil.copytree(TRAINED, tmp_path / "base")
    (base / "README.md").symlink_to(secret)
    (base / "chat_template.jinja").symlink_to("/dev/zero")  # unbounded: was read until memory ran out
    (base / "docs").mkdir()
    (base / "docs" / "template.jinja").write_text("{{ messages }}")
    (base / "template.jinja").symlink_to("docs/template.jinja")  # a link inside the folder is followed
    out = tmp_path / "out"
    args = ["salvage", DEMO_CANDIDATE, "--base", base, "--keep", "0", "-o", out]
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    out_of_it = "a link that leads out of the checkpoint's folder"
    written = json.loads((out / "prune_manifest.json").read_text())["written"]
    assert written["skipped_files"] == {"README.md": out_of_it, "chat_template.jinja": out_of_it}
    assert f"warning: README.md of the base was not copied: {out_of_it}" in result.stderr
    assert not (out / "README.md").exists() and not (out / "chat_template.jinja").exists()
    assert (out / "template.jinja").read_text() == "{{ messages }}" and "template.jinja" in written["files"]
    assert "PRIVATE KEY" not in "".join(p.read_text(errors="replace") for p in out.iterdir() if p.is_file())
    assert verify(out, base).ok


def test_a_side_file_past_the_size_bound_or_not_a_regular_file_is_skipped_with_its_reason(tmp_path):
    from surgeon.format.writer import SIDE_FILE_MAX

    base = shutil.copytree(TRAINED, tmp_path / "base")
    with open(base / "model.gguf", "wb") as big:  # sparse: the size is what counts
        big.truncate(SIDE_FILE_MAX + 1)
    os.mkfifo(base / "special_tokens_map.json")  # would block a plain open forever
    report = write_checkpoint(open_checkpoint(base), tmp_path / "out", {})
    assert report.skipped_files == {
        "model.gguf": f"{SIDE_FILE_MAX + 1} bytes, more than the 64 MiB a side file may have",
        "special_tokens_map.json": "not a regular file",
    }
    assert sorted(report.files) == sorted(p.name for p in TRAINED.iterdir() if p.suffix != ".safetensors")


@pytest.mark.parametrize("cache", ["default", "--cache-dir"])
def test_a_hub_cache_snapshot_keeps_its_side_files(tmp_path, monkeypatch, cache):
    """A snapshot's files are links into ../../blobs of its repo folder: inside, so copied,
    in the default cache or any other; a link out of the repo folder is not."""
    from huggingface_hub import constants

    from tests.format.test_checkpoint import make_hub_cache

    snapshot = make_hub_cache(tmp_path / "hub", src=TRAINED)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / ("hub" if cache == "default" else "other")))
    (tmp_path / "secret.txt").write_text("mine")
    (snapshot / "README.md").symlink_to(tmp_path / "secret.txt")
    report = write_checkpoint(open_checkpoint(snapshot), tmp_path / "out", {})
    side = sorted(p.name for p in TRAINED.iterdir() if p.suffix != ".safetensors")
    assert sorted(report.files) == side and list(report.skipped_files) == ["README.md"]
    assert all(sha(tmp_path / "out" / name) == sha(TRAINED / name) for name in side)


def test_a_side_file_linking_to_a_folder_is_skipped_not_an_internal_error(tmp_path):
    """`ln -s . base/notes`: the link leads inside the base, os.open opens the folder, and
    open(fd) raised IsADirectoryError naming the descriptor (an int), which the error line
    then failed to decode: "internal error: TypeError". Now it is a skipped side file."""
    from click.testing import CliRunner

    from surgeon.cli.main import main
    from surgeon.demo import DEMO_CANDIDATE

    base = shutil.copytree(TRAINED, tmp_path / "base")
    (base / "notes").symlink_to(".")
    out = tmp_path / "out"
    args = ["salvage", DEMO_CANDIDATE, "--base", base, "--keep", "0", "-o", out]
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    written = json.loads((out / "prune_manifest.json").read_text())["written"]
    assert written["skipped_files"] == {"notes": "not a regular file"}


def test_an_os_error_naming_a_descriptor_is_described_without_a_type_error():
    from surgeon.atomic import describe_os_error

    exc = IsADirectoryError(21, "Is a directory", 7)
    assert describe_os_error(exc, "out") == "out: cannot write (Is a directory)"
    assert describe_os_error(exc, None) == "Is a directory"


def test_a_base_made_of_links_out_of_its_folder_is_refused_before_any_work(tmp_path):
    """`for f in snapshot/*; do ln -s $f lm/; done`: surgeon followed the links to read the
    base, but copied no config.json nor index (links out of the folder), so salvage exited 0
    with an output transformers cannot load. Now one line, exit 2, saying what to do."""
    from click.testing import CliRunner

    from surgeon.cli.main import main
    from surgeon.demo import DEMO_CANDIDATE

    links = tmp_path / "lm"
    links.mkdir()
    for file in TRAINED.iterdir():
        (links / file.name).symlink_to(file)
    for command in (
        ["salvage", DEMO_CANDIDATE, "--base", links, "--keep", "0", "-o", tmp_path / "olm"],
        ["prune", links, "-o", tmp_path / "olm", "-q", "--layers", "0"],
    ):
        result = CliRunner().invoke(main, [str(a) for a in command])
        assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
        assert "config.json is a link out of the folder" in result.stderr and "cp -L" in result.stderr
        assert sorted(p.name for p in tmp_path.iterdir()) == ["lm"]


def test_verify_does_not_vouch_for_an_output_that_cannot_load(tmp_path):
    """An output whose manifest records its config.json and index as not copied (what the
    base of links gave) was "verified": every file present matched its hash."""
    from surgeon.demo import DEMO_CANDIDATE
    from surgeon.recover.salvage import salvage
    from surgeon.recover.verify import verify

    out = tmp_path / "olm"
    salvage(DEMO_CANDIDATE, TRAINED, [0], out)
    path = out / "prune_manifest.json"
    manifest = json.loads(path.read_text())
    for name in ("config.json", "model.safetensors.index.json"):
        del manifest["written"]["files"][name]
        manifest["written"]["skipped_files"][name] = "a link that leads out of the checkpoint's folder"
        (out / name).unlink()
    path.write_text(json.dumps(manifest))
    report = verify(out, TRAINED)
    assert not report.ok
    assert any(d.startswith("file config.json: the base's was not copied") for d in report.discrepancies)
    assert "no index for its shards: the output cannot be loaded without one" in report.discrepancies
